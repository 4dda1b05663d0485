"""``wasmsbx cache list|stats|clear|prune|verify|path``: inspect and clean the native-code cache."""

from __future__ import annotations

from typing import Any, Optional

import typer

from .. import output
from ..boundary import boundary

POLICY = typer.Option(
    None, "--policy", "-p", metavar="PATH", help="Policy file (runtime.cache_dir, cache_size)."
)
CACHE_DIR = typer.Option(
    None, "--cache-dir", metavar="PATH", help="Cache directory (overrides policy and env)."
)
JSON = typer.Option(False, "--json", help="Print JSON.")


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Inspect and clean the cache of compiled native code.",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    for command in (list_, stats, clear, prune, verify, path):
        group.command(command.__name__.rstrip("_"))(boundary(command))
    app.add_typer(group, name="cache")


class Opened:
    """The cache directory and, if it exists, the open store."""

    def __init__(self, policy: Optional[str], cache_dir: Optional[str]) -> None:
        from ... import policy as policy_mod
        from ...native import cache

        self.policy = policy_mod.discover(policy)
        self.root, self.source = cache.resolve_dir(self.policy, cache_dir)
        try:
            self.store = cache.open_store(self.policy, cache_dir, create=False)
        except cache.cache_errors() as exc:
            from ...errors import InputError

            why = cache.reason(exc)
            hint = "`wasmsbx cache clear` deletes a damaged cache; or choose another --cache-dir"
            if "is not a wasmsbx cache" in why:  # (clear leaves such a folder alone too)
                hint = "choose another --cache-dir: wasmsbx touches no folder but its caches"
            elif "another user" in why.lower():
                # (nothing is damaged: red team 137 was told to clear a cache it could
                # not even open)
                hint = "choose another --cache-dir (or XDG_CACHE_HOME): not yours to change"
            elif any(
                word in why.lower()
                for word in (
                    "permission denied",
                    "read-only",
                    "readonly",
                    "operation not permitted",
                    "unable to open database file",
                )
            ):
                hint = (
                    "check the permissions of the folder and those on its way (a cache "
                    "folder is yours, 0700), or choose another --cache-dir"
                )
            raise InputError(f"cache unavailable at {self.root}: {why}", hint=hint) from None
        if self.store is None:
            self._check_absent()

    def _check_absent(self) -> None:
        """A folder that holds no cache: say so only if one could be there. A file, a
        device or a FIFO, or the trust folder (or a folder around or in it), is refused
        as ``compile --cache-dir`` refuses it (red team round 40: `cache clear` on the
        trust folder said "empty cache" and exited 0)."""
        import os

        from ...errors import InputError
        from ...native import cache

        text = str(self.root)
        if os.path.lexists(text) and not os.path.isdir(text):
            raise InputError(
                f"{text} is not a folder, so not a cache",
                hint="--cache-dir names the folder a cache is kept in",
            )
        try:
            cache._refuse_trust(self.root)
        except cache.CacheUnavailable as exc:
            raise InputError(
                f"cache unavailable at {text}: {cache.reason(exc)}",
                hint="choose another --cache-dir: the trust folder holds your keys",
            ) from None

    def missing(self, json_output: bool, **empty: Any) -> bool:
        """Say so (once) and return True when there is no cache yet."""
        if self.store is not None:
            return False
        if json_output:
            output.emit_json({"cache_dir": str(self.root), "exists": False, **empty})
        else:
            output.out(output.line(f"no cache at {self.root} yet: nothing has been cached"))
            output.err(
                "hint: `wasmsbx run` caches modules of runtime.cache_min_size and up; "
                "`wasmsbx compile MODULE` caches any module"
            )
        return True

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def list_(
    policy: Optional[str] = POLICY, cache_dir: Optional[str] = CACHE_DIR, json_output: bool = JSON
) -> int:
    """List cached entries: module, backend/compiler, size, age, hits."""
    from ...native import cache

    opened = Opened(policy, cache_dir)
    if opened.missing(json_output, entries=[]):
        return 0
    try:
        rows = cache.entries(opened.store)
    finally:
        opened.close()
    if json_output:
        output.emit_json({"cache_dir": str(opened.root), "exists": True, "entries": rows})
    elif not rows:
        output.out(output.line(f"the cache at {opened.root} is empty"))
    else:
        _render_list(rows, opened.root)
    return 0


def _render_list(rows: list, root: Any) -> None:
    from rich import box
    from rich.table import Table

    from ...units import format_size

    output.out(output.line(f"cache: {root}"))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("module", "sha256", "backend", "opt", "size", "age", "idle", "hits"):
        right = column in ("size", "age", "idle", "hits")
        table.add_column(column, justify="right" if right else "left", overflow="fold")

    for row in rows:
        module = row.get("module", {})
        table.add_row(
            # A file name is data: not markup, and its control characters escaped (an
            # ESC in a module's name drove the terminal from the listing: round 52).
            output.markup(module.get("name") or "-"),
            (module.get("sha256") or "")[:10],
            f"{row.get('label') or '-'} {row.get('version') or ''}".strip(),
            row.get("optimize") or "-",
            format_size(int(row.get("size", 0))),
            format_age(row["age"]),
            format_age(row["idle"]),
            str(row.get("hits", 0)),
        )
    output.console().print(table)


def stats(
    policy: Optional[str] = POLICY, cache_dir: Optional[str] = CACHE_DIR, json_output: bool = JSON
) -> int:
    """Entries, total size, hit rate, per backend."""
    from ...native import cache

    opened = Opened(policy, cache_dir)
    if opened.missing(json_output, entries=0):
        return 0
    try:
        data = cache.stats(opened.store)
    finally:
        opened.close()
    data = {"cache_dir": str(opened.root), "exists": True, **data}
    data["min_module_size"] = opened.policy.values["runtime.cache_min_size"]
    if json_output:
        output.emit_json(data)
        return 0
    _render_stats(data)
    return 0


def _render_stats(data: dict) -> None:
    from ...units import format_limit, format_size

    rate = "-" if data["hit_rate"] is None else f"{100 * data['hit_rate']:.1f}%"
    lines = [
        ("cache", data["cache_dir"]),
        ("entries", str(data["entries"])),
        ("total size", f"{format_size(data['total_size'])} of {format_limit(data['size_limit'])}"),
        ("disk usage", format_size(data["disk_usage"])),
        ("hits", str(data["hits"])),
        ("misses", str(data["misses"])),
        ("hit rate", rate),
        ("cached from", f"{format_size(data['min_module_size'])} (runtime.cache_min_size)"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        output.out(output.line(f"{key.ljust(width)}  {value}"))
    if not data["backends"]:
        output.out("the cache is empty")
        return
    from rich.table import Table

    table = Table(title="per backend")
    for column in ("backend", "entries", "size", "hits", "misses", "hit rate"):
        table.add_column(
            column, justify="left" if column == "backend" else "right", overflow="fold"
        )
    for label, slot in data["backends"].items():
        slot_rate = "-" if slot["hit_rate"] is None else f"{100 * slot['hit_rate']:.1f}%"
        table.add_row(
            label,
            str(slot["entries"]),
            format_size(slot["size"]),
            str(slot["hits"]),
            str(slot["misses"]),
            slot_rate,
        )
    output.console().print(table)


def clear(
    module: Optional[str] = typer.Option(
        None, "--module", "-m", metavar="FILE", help="Only entries compiled from this module."
    ),
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", metavar="NAME", help="Only entries of this backend."
    ),
    policy: Optional[str] = POLICY,
    cache_dir: Optional[str] = CACHE_DIR,
    json_output: bool = JSON,
) -> int:
    """Remove all entries, or those of one module and/or backend."""
    from ...native import artifact as aot
    from ...native import cache
    from ...runner.sandbox import read_module

    if backend is not None:  # (one not known matched nothing: "no matching entries", exit 0)
        from ...backends.select import _check_spec

        _check_spec(backend)
    from ... import policy as policy_mod

    # (its text converted within the policy's compile timeout: red team 126)
    module_sha = aot.sha256(read_module(module, policy_mod.discover(policy))) if module else None
    if not (module or backend):
        loaded = policy_mod.discover(policy)  # (once for both repairs)
        _unlink_planted(loaded, cache_dir, json_output)
        if _wipe_damaged(loaded, cache_dir, json_output):
            return 0
    opened = Opened(policy, cache_dir)
    if opened.missing(json_output, removed=0, freed=0):
        return 0
    try:
        result = cache.clear(opened.store, module_sha, backend)
    except cache.cache_errors() as exc:
        raise _unusable(opened.root, exc) from None
    finally:
        opened.close()
    if json_output:
        output.emit_json({"cache_dir": str(opened.root), "exists": True, **result})
        return 0
    from ...units import format_size

    if not result["removed"]:
        what = " matching" if module or backend else ""
        output.out(output.line(f"no{what} entries to remove in {opened.root}"))
    else:
        plural = "y" if result["removed"] == 1 else "ies"
        output.out(
            output.line(
                f"removed {result['removed']} entr{plural} ({format_size(result['freed'])}) "
                f"from {opened.root}"
            )
        )
    return 0


def _unusable(root: Any, exc: BaseException) -> Exception:
    """An error of the cache's files met by clear, prune or verify (a folder without
    permissions, a file that cannot be removed): exit 105 with a hint, never an
    internal error."""
    from ...errors import InputError
    from ...native import cache

    return InputError(
        f"cannot clean the cache at {root}: {cache.reason(exc)}",
        hint="fix the permissions of the cache's folders, unmount what is mounted in them "
        "(never entered), or delete the cache folder",
    )


def _unlink_planted(loaded: Any, cache_dir: Optional[str], json_output: bool) -> None:
    """``cache clear`` of a cache holding a symbolic link where wasmsbx writes (every
    other command refuses such a cache and says this repairs it): the links go.
    ``loaded``: the policy in force."""
    from ...native import cache

    root, source = cache.resolve_dir(loaded, cache_dir)
    try:
        removed = cache.unlink_planted(root, cache._confined(loaded, source))
    except OSError as exc:
        raise _unusable(root, exc) from None
    if removed and not json_output:
        names = ", ".join(output.line(name) for name in removed)
        output.err(f"removed symbolic links planted in {root}: {names}")


def _wipe_damaged(loaded: Any, cache_dir: Optional[str], json_output: bool) -> bool:
    """``cache clear`` of a cache whose database cannot be opened: delete the directory.
    ``loaded``: the policy in force."""
    import sqlite3

    from ...native import cache

    try:
        store = cache.open_store(loaded, cache_dir, create=False)
    except sqlite3.DatabaseError as exc:
        root = cache.resolve_dir(loaded, cache_dir)[0]
        from ...errors import InputError

        where = getattr(exc, "cache_where", None)  # (the folder whose database failed)
        try:  # (never the name looked up again: Store.open)
            if where is None:
                raise cache.CacheUnavailable(f"{root}: which folder failed is not known")
            cache.wipe(root, where)
        except (cache.CacheUnavailable, OSError) as problem:
            raise InputError(
                f"cannot delete the damaged cache: {cache.reason(problem)}",
                hint=f"delete the folder {root} yourself",
            ) from None
        if json_output:
            output.emit_json({"cache_dir": str(root), "exists": False, "removed": "all"})
        else:
            output.out(output.line(f"deleted the damaged cache at {root} ({exc})"))
        return True
    except cache.cache_errors():
        return False  # Opened reports it
    if store is not None:
        store.close()
    return False


def prune(
    older_than: Optional[str] = typer.Option(
        None, "--older-than", metavar="DURATION", help="Remove entries unused for this long (7d)."
    ),
    max_size: Optional[str] = typer.Option(
        None, "--max-size", metavar="SIZE", help="Evict least recently used entries to fit."
    ),
    policy: Optional[str] = POLICY,
    cache_dir: Optional[str] = CACHE_DIR,
    json_output: bool = JSON,
) -> int:
    """Remove old entries and shrink to a size (default: runtime.cache_size)."""
    from ... import units
    from ...errors import UsageError
    from ...native import cache

    try:
        # An entry may sit unused for years: up to a century here, not the 366 days of limits.
        age = units.parse_duration(older_than, 100 * 366 * 86400.0) if older_than else None
        size = units.parse_size(max_size) if max_size is not None else None
    except ValueError as exc:
        raise UsageError(str(exc), hint="e.g. --older-than 7d --max-size 500MiB") from None
    opened = Opened(policy, cache_dir)
    if opened.missing(json_output, removed=0, freed=0):
        return 0
    try:
        result = cache.prune(opened.store, age, size)
    except cache.cache_errors() as exc:
        raise _unusable(opened.root, exc) from None
    finally:
        opened.close()
    if json_output:
        output.emit_json({"cache_dir": str(opened.root), "exists": True, **result})
        return 0
    from ...units import format_size

    plural = "y" if result["removed"] == 1 else "ies"
    output.out(
        output.line(
            f"removed {result['removed']} entr{plural} ({format_size(result['freed'])}); "
            f"{result['entries']} left ({format_size(result['total_size'])}) in {opened.root}"
        )
    )
    if result["orphans"]:
        output.out(f"removed {result['orphans']} incomplete entries")
    return 0


def verify(
    keep: bool = typer.Option(False, "--keep", help="Only report bad entries; do not remove."),
    policy: Optional[str] = POLICY,
    cache_dir: Optional[str] = CACHE_DIR,
    json_output: bool = JSON,
) -> int:
    """Check every entry's integrity (size and digest); remove bad ones."""
    from ...native import cache

    opened = Opened(policy, cache_dir)
    if opened.missing(json_output, checked=0, ok=0, bad=[]):
        return 0
    try:
        result = cache.verify(opened.store, remove=not keep)
    except cache.cache_errors() as exc:
        raise _unusable(opened.root, exc) from None
    finally:
        opened.close()
    if json_output:
        output.emit_json({"cache_dir": str(opened.root), "exists": True, **result})
        return 0
    if not result["checked"]:
        output.out(output.line(f"the cache at {opened.root} is empty: nothing to verify"))
        return 0
    for bad in result["bad"]:
        action = "kept" if keep else "removed"
        name = output.line(bad["module"]) if bad["module"] else bad["key"][:12]
        output.out(output.line(f"bad: {name}: {bad['reason']} ({action})"))
    output.out(f"verified {result['checked']} entries: {result['ok']} ok, {len(result['bad'])} bad")
    return 0


def path(
    policy: Optional[str] = POLICY, cache_dir: Optional[str] = CACHE_DIR, json_output: bool = JSON
) -> int:
    """Print the cache directory (and where that choice came from, with --json)."""
    from ... import policy as policy_mod
    from ...native import cache

    root, source = cache.resolve_dir(policy_mod.discover(policy), cache_dir)
    if json_output:
        output.emit_json({"cache_dir": str(root), "source": source, "exists": cache.exists(root)})
    else:
        output.out(str(root))
    return 0


def format_age(seconds: float) -> str:
    """3 s, 5 min, 2 h, 4 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"
