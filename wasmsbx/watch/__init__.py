"""``wasmsbx watch``: re-run a module on every change, with a compatibility report.

The core of the watch command, usable from Python. A :class:`Watcher` keeps a module
under watch (with its source, its policy file and any extra paths), and on every change
rebuilds the source, reloads the policy, reloads the module, compares its interface with
the last good version (:func:`compare`, built on :mod:`wasmsbx.wasm.facts`) and runs it again.
Each step is reported as an :class:`Event` (plain data); ``wasmsbx/cli/commands/watch.py``
renders events as rich text or as one JSON object per line.

Runs happen in a worker thread so that Ctrl-C stops watching at once, even while a guest
spins until its timeout; the main thread only waits on watchfiles and the stop flag.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

from .. import errors
from ..wasm.model import signature_text

SCHEMA_VERSION = 1
PAGE = 65536  # bytes per wasm page

# ---------------------------------------------------------------------------- interface diff


from .report import Change, CompatReport  # noqa: E402, F401 - re-exported


def wasi_need(module: str, name: str) -> Optional[str]:
    """The capability group a WASI import asks for (wasmsbx.wasm.wasi's table), e.g.
    "filesystem"; None when the sandbox cannot link the import at all."""
    from ..wasm import wasi

    function = wasi.BY_NAME.get(name) if wasi.is_wasi_module(module) else None
    return None if function is None else function.group


def _limits_text(limits: Any) -> str:
    top = "none" if limits.max is None else str(limits.max)
    flags = "".join((" shared" if limits.shared else "", " memory64" if limits.memory64 else ""))
    return f"min {limits.min}, max {top}{flags}"


def _import_type(imp: Any, cut: bool = True) -> str:
    """What an import is, as a change shows it (``cut``: signatures cut after 32 types a
    side, wasm.model.signature_text: a valid module's 990 exports of 999 parameters made
    6 MB of change report, red team 126), or whole, as changes are found."""
    if imp.kind in ("func", "tag"):
        if imp.type is None:
            return imp.kind
        return signature_text(imp.type) if cut else str(imp.type)
    if imp.kind == "memory":
        return f"memory ({_limits_text(imp.limits)} pages)"
    if imp.kind == "table":
        return f"table {imp.elem} ({_limits_text(imp.limits)})"
    return f"global {'mut ' if imp.mutable else ''}{imp.global_type}"


def _export_type(exp: Any, facts: Any, cut: bool = True) -> str:
    """What an export is (``cut``: as _import_type)."""
    if exp.kind in ("func", "tag"):
        if exp.type is None:
            return exp.kind
        return signature_text(exp.type) if cut else str(exp.type)
    if exp.kind == "global":
        match = [g for g in facts.globals if g.index == exp.index]
        if match:
            return f"global {'mut ' if match[0].mutable else ''}{match[0].type}"
    return exp.kind


def _past_cut(was: str, now: str, old: Any, new: Any) -> str:
    """Where two signatures differ, when both show the same cut (red team 127: a change
    of the 40th parameter showed the same text on both sides)."""
    if was != now or old is None or new is None:
        return ""
    for side in ("params", "results"):
        a, b = getattr(old, side), getattr(new, side)
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f" ({side[:-1]} {i + 1}: {x} -> {y})"
        if len(a) != len(b):
            return f" ({len(a)} -> {len(b)} {side})"
    return ""


def _export_changes(old: Any, new: Any) -> list:
    before = {e.name: e for e in old.exports}
    after = {e.name: e for e in new.exports}
    out = []
    for name, exp in after.items():
        if name not in before:
            out.append(Change("export", name, "added", None, _export_type(exp, new), False))
    for name, exp in before.items():
        was = _export_type(exp, old)
        if name not in after:
            out.append(Change("export", name, "removed", was, None, True, "callers lose it"))
            continue
        now = _export_type(after[name], new)
        if exp.kind != after[name].kind:
            out.append(Change("export", name, "kind", was, now, True, "a different kind of export"))
        elif _export_type(exp, old, False) != _export_type(after[name], new, False):
            note = "callers must change" + _past_cut(was, now, exp.type, after[name].type)
            out.append(Change("export", name, "signature", was, now, True, note))
    return out


def _import_changes(old: Any, new: Any) -> list:
    before = {(i.module, i.name): i for i in old.imports}
    after = {(i.module, i.name): i for i in new.imports}
    out = []
    for key, imp in after.items():
        name = f"{key[0]}.{key[1]}"
        if key not in before:
            breaking, note = _import_need(*key)
            out.append(Change("import", name, "added", None, _import_type(imp), breaking, note))
        elif _import_type(before[key], False) != _import_type(imp, False):
            was, now = _import_type(before[key]), _import_type(imp)
            note = "the host must change" + _past_cut(was, now, before[key].type, imp.type)
            out.append(Change("import", name, "signature", was, now, True, note))
    for key, imp in before.items():
        if key not in after:
            name = f"{key[0]}.{key[1]}"
            out.append(Change("import", name, "removed", _import_type(imp), None, False))
    return out


def _import_need(module: str, name: str) -> tuple:
    """(breaking, note) for a new import: what it needs, or why it will not link."""
    from ..wasm import wasi

    group = wasi_need(module, name)
    if group is None:
        return True, "the sandbox does not provide it: the module will not link"
    title, meaning = wasi.GROUPS[group]
    return False, f"new capability need: {title} ({meaning})"


def _memory_changes(old: Any, new: Any, memory_limit: Optional[int]) -> list:
    before = {m.index: m.limits for m in old.memories if not m.imported}
    after = {m.index: m.limits for m in new.memories if not m.imported}
    out = []
    for index in sorted(set(before) | set(after)):
        name = f"memory {index}"
        was, now = before.get(index), after.get(index)
        if was is None:
            out.append(Change("memory", name, "added", None, _limits_text(now), False))
        elif now is None:
            out.append(Change("memory", name, "removed", _limits_text(was), None, True))
        elif was != now:
            breaking, note = _memory_verdict(was, now, memory_limit)
            texts = (_limits_text(was), _limits_text(now))
            out.append(Change("memory", name, "limits", *texts, breaking, note))
    return out


def _memory_verdict(was: Any, now: Any, memory_limit: Optional[int]) -> tuple:
    """Breaking when the module can no longer start under the policy, or can grow less."""
    if (was.shared, was.memory64) != (now.shared, now.memory64):
        return True, "sharing or index type changed"
    if memory_limit is not None and now.min * PAGE > memory_limit:
        return True, f"needs {now.min * PAGE} bytes at start, over limits.memory ({memory_limit})"
    if now.max is not None and (was.max is None or now.max < was.max):
        return True, "can grow less than before"
    if now.min > was.min:
        return False, "starts larger (within limits.memory)"
    return False, ""


def compare(old: Any, new: Any, memory_limit: Optional[int] = None) -> CompatReport:
    """The interface diff of two :class:`wasmsbx.wasm.facts.ModuleFacts`.

    Exports removed, changed in kind or signature are breaking; exports added are not.
    Imports added are breaking when the sandbox cannot provide them (non-WASI), otherwise
    they name the new capability need; imports removed are not breaking. Memory limits are
    breaking when the module can no longer start under ``memory_limit`` or can grow less.
    """
    changes = (_export_changes(old, new) + _import_changes(old, new)) + _memory_changes(
        old, new, memory_limit
    )
    return CompatReport(old.sha256, new.sha256, tuple(changes))


# ---------------------------------------------------------------------------- policy diff


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def policy_changes(old: Any, new: Any) -> list:
    """The keys whose values differ between two policies, as ``{key, old, new}``."""
    keys = sorted(set(old.values) | set(new.values))
    return [
        {"key": k, "old": _plain(old.values.get(k)), "new": _plain(new.values.get(k))}
        for k in keys
        if old.values.get(k) != new.values.get(k)
    ]


# ---------------------------------------------------------------------------- source builds
#
# Sources are built by wasmsbx.native.build, the same builder as `wasmsbx compile`.

SOURCE_KINDS = ("c", "rust")  # a MODULE of these kinds is a source to build
BUILDABLE_KINDS = ("wat", "c", "rust")  # what --source accepts


def source_kind(path: Any) -> str:
    """wasm, wat, c, rust (a .rs file) or cargo (a Cargo project)."""
    from ..native import build

    return build.source_kind(path)


def build_source(
    source: Path, output: Path, export: Optional[str] = None, policy: Any = None
) -> dict:
    """Build ``source`` into ``output`` (replaced atomically, so a failed build keeps the
    last good module); returns the build facts for the build event.

    C is built for wasm32-wasi with clang: as a reactor exporting ``export`` when one is
    given (a library function to call), else as a command (a program with ``main``).
    """
    from ..native import build

    # (text converted within the policy's compile timeout: red team 127)
    result = build.build(source, [export] if export else [], out=output, policy=policy)
    return {
        "kind": result.kind,
        "command": list(result.command),
        "messages": result.output,
        "duration_ms": round(result.seconds * 1e3, 3),
    }


# ---------------------------------------------------------------------------- events


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


@dataclass
class Event:
    """One thing that happened: start, policy, build, interface, run or stop.

    ``to_dict()`` is the JSON view: ``{"event", "cycle", "time", ...data}``.
    """

    kind: str
    data: dict
    cycle: int = 0
    time: str = field(default_factory=_now)

    def to_dict(self) -> dict:
        return {"event": self.kind, "cycle": self.cycle, "time": self.time, **self.data}


class Stop:
    """The stop flag watchfiles polls (all it asks of one is ``is_set()``); ``reason``
    says who set it first. A plain attribute, set without a lock: SIGINT's handler sets
    it, and a ``threading.Event`` takes a lock to be set, which a second signal arriving
    while the first handler held it waited for, for ever, in the same thread (two
    Ctrl-Cs at once hung `wasmsbx watch` until SIGKILL, red team round 64)."""

    reason = "stopped"
    _set = False

    def stop(self, reason: str = "stopped") -> None:
        if not self._set:
            self.reason = reason
        self._set = True

    def set(self) -> None:
        self.stop()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Whether it was set within ``timeout`` seconds (polled: nothing waits on a
        lock that a signal handler would need)."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self._set and (end is None or time.monotonic() < end):
            time.sleep(0.01)
        return self._set


@contextmanager
def stop_on_signals(stop: Stop):
    """SIGINT and SIGTERM set ``stop`` (for a clean exit) instead of raising."""

    def handler(signum: int, frame: Any) -> None:
        stop.stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------- the watcher


def _digest(path: Path, cap: Optional[int] = None) -> Optional[str]:
    """What the file at ``path`` holds, to tell a real change from a touch: the SHA-256
    of a regular file of at most ``cap`` bytes (default: an artifact's cap), read a
    chunk at a time; of anything else (a FIFO, a device, a folder, a file past the cap,
    which the loader refuses anyway) its kind, identity, size and time, nothing read.
    Before, any changed file was read whole up to 1 GiB (`./sandbox.toml` swapped for a
    link to /dev/zero took 1.1 GB at each change), and a FIFO with a writer that wrote
    nothing held the watch's worker for as long (red team 129). None: nothing there."""
    from ..inputs import ARTIFACT_MAX_BYTES

    cap = ARTIFACT_MAX_BYTES if cap is None else cap
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > cap:
            return _stat_digest(info)
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    except OSError:
        return None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or opened.st_size > cap:
            return _stat_digest(opened)  # (swapped since the stat)
        digest, left = hashlib.sha256(), cap + 1
        while left > 0:
            chunk = os.read(fd, min(DIGEST_CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        return digest.hexdigest() if left > 0 else _stat_digest(os.fstat(fd))
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat_digest(info: os.stat_result) -> str:
    return (
        f"{stat.S_IFMT(info.st_mode)}:{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"
    )


DIGEST_CHUNK = 1 << 20
_EMPTY = hashlib.sha256(b"").hexdigest()  # _digest of an empty file
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _norm(path: Any) -> str:
    return os.path.normpath(os.path.abspath(str(path)))


@dataclass
class WatchConfig:
    """What to watch and how to run it.

    ``target`` is a .wasm/.wat module or a source (.c, .rs) to build; ``source`` names the
    source of a module instead (rebuilt into ``target``). ``policy_loader`` returns the
    policy with command-line overrides applied; ``policy_path`` is the file to watch.
    """

    target: str
    func: Optional[str] = None
    args: list = field(default_factory=list)
    argv: list = field(default_factory=list)
    source: Optional[str] = None
    also: list = field(default_factory=list)
    policy_loader: Optional[Callable[[], Any]] = None
    policy_path: Optional[str] = None
    use_cache: Optional[bool] = None
    capture: bool = False  # capture the guest's stdout/stderr into run events
    debounce: float = 0.1  # seconds of quiet that end a burst of changes
    poll: bool = False  # poll the file system instead of using notifications
    tick: float = 0.1  # how often the loop wakes without changes


class Watcher:
    """Watch, rebuild, reload, compare and re-run; report every step to ``on_event``."""

    def __init__(self, config: WatchConfig, on_event: Callable[[Event], None]) -> None:
        self.config = config
        self.on_event = on_event
        self._lock = threading.Lock()
        self._closed = False
        self.cycle = 0
        self.box: Any = None
        self.box_key: Optional[tuple] = None
        self.facts: Any = None  # the last good module's facts
        self.tmpdir: Optional[str] = None
        self.policy_version = 0
        self._stop = Stop()
        try:
            self._plan()
            self.policy = self._load_policy()  # broken at start: an error (no last good one)
        except BaseException:
            self._cleanup(False)
            raise
        self.digests = {p: self._digest_of(p) for p in self._tracked()}

    # --------------------------------------------------------------- setup
    def _plan(self) -> None:
        """Which file is run, which is built, which are watched; fail fast on typos."""
        c = self.config
        self.source: Optional[str] = None
        self.module = _norm(c.target)
        self.module_watched = True
        if c.source:
            self.source = _norm(c.source)
            self._check_exists(self.source, "source")
            self._check_source(self.source, BUILDABLE_KINDS)
            if source_kind(self.module) in SOURCE_KINDS:
                raise errors.UsageError(
                    f"{c.target} is a source already; --source names the source of a module",
                    hint="use either `watch SOURCE ...` or `watch MODULE --source SOURCE ...`",
                )
            parent = Path(self.module).parent
            if not parent.is_dir():
                raise errors.InputError(f"{parent}: no such directory for the built module")
        else:
            self._check_exists(self.module, "module")
            if self._module_kind(self.module) in SOURCE_KINDS:
                import tempfile

                self.source, self.module_watched = self.module, False
                self.tmpdir = tempfile.mkdtemp(prefix="wasmsbx-watch-")
                self.module = _norm(Path(self.tmpdir) / (Path(c.target).stem + ".wasm"))
        self.also = [_norm(p) for p in c.also]
        for path in self.also:
            self._check_exists(path, "--also path")
        self.policy_file = _norm(c.policy_path or "sandbox.toml")

    @staticmethod
    def _check_exists(path: str, what: str) -> None:
        if not os.path.exists(path):
            from ..inputs import broken_link

            why = broken_link(path)
            if why is not None:
                raise errors.InputError(
                    f"{path}: {why} ({what})", hint="check where the link points", path=path
                )
            raise errors.InputError(
                f"{path}: no such file ({what})", hint="check the path", path=path
            )

    @classmethod
    def _module_kind(cls, path: str) -> str:
        """Like ``run``, any other file is a module (read_module judges it by content)."""
        try:
            kind = source_kind(path)
        except errors.UsageError:
            return "wasm"
        return cls._check_source(path, ("wasm", "wat") + SOURCE_KINDS, kind)

    @staticmethod
    def _check_source(path: str, allowed: tuple, kind: Optional[str] = None) -> str:
        kind = kind or source_kind(path)
        if kind == "cargo":
            raise errors.UsageError(
                f"{path}: watch does not build Cargo projects",
                hint="run cargo yourself and watch the .wasm it builds, with --also src/",
            )
        if kind not in allowed:
            raise errors.UsageError(
                f"{path}: a {kind} file cannot be built into a module",
                hint="--source takes a .wat, .c or .rs file",
            )
        return kind

    def _load_policy(self) -> Any:
        if self.config.policy_loader is not None:
            return self.config.policy_loader()
        from .. import policy as policy_mod

        if self.config.policy_path:
            return policy_mod.load(self.config.policy_path)
        return policy_mod.discover()

    def _tracked(self) -> list:
        """Files whose content decides whether a change matters (digest-checked)."""
        paths = [self.module] if self.module_watched else []
        if self.source:
            paths.append(self.source)
        paths.append(self.policy_file)
        return paths

    def watched_paths(self) -> list:
        return self._tracked() + list(self.also)

    def _digest_of(self, path: str) -> Optional[str]:
        """``_digest``, a policy's read only up to a policy's cap (the loader's)."""
        from ..inputs import POLICY_MAX_BYTES

        return _digest(Path(path), POLICY_MAX_BYTES if path == self.policy_file else None)

    def _aliases(self) -> dict:
        """The file a tracked path leads to through links -> that path, where they
        differ: an edit of the file a linked policy names is an edit of the policy
        (red team 129: `--policy pol.toml`, a link into conf/, missed every edit made in
        conf/ and ran on under the old limits). Taken when the watch starts."""
        found = {}
        for path in self._tracked():
            real = os.path.realpath(path)
            if real != path:
                found[real] = path
        return found

    def _roots(self) -> tuple:
        """Directories handed to watchfiles (parents, so editors' rename-saves are seen;
        also those of the files tracked paths lead to through links)."""
        roots = {str(Path(p).parent) for p in (*self._tracked(), *self._aliases())}
        roots |= {p if os.path.isdir(p) else str(Path(p).parent) for p in self.also}
        recursive = any(os.path.isdir(p) for p in self.also)
        return sorted(roots), recursive

    def _filter(self) -> Callable[[Any, str], bool]:
        import watchfiles

        files = set(self._tracked()) | {p for p in self.also if not os.path.isdir(p)}
        files |= set(self._aliases())
        dirs = tuple(p.rstrip(os.sep) + os.sep for p in self.also if os.path.isdir(p))
        default = watchfiles.DefaultFilter()

        def wanted(change: Any, path: str) -> bool:
            path = os.path.normpath(path)
            if path in files:
                return True
            return bool(dirs) and path.startswith(dirs) and default(change, path)

        return wanted

    # --------------------------------------------------------------- events
    def emit(self, kind: str, data: dict) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self.on_event(Event(kind, data, self.cycle))
            except BrokenPipeError:  # the reader went away (| head): stop watching
                self._closed = True
                self._stop.stop("output closed")

    @staticmethod
    def show(path: Optional[str]) -> Optional[str]:
        """A path as the user would write it: relative to the cwd when inside it."""
        if path is None:
            return None
        cwd = os.getcwd()
        return os.path.relpath(path, cwd) if path.startswith(cwd + os.sep) else path

    def _start_data(self) -> dict:
        c = self.config
        return {
            "schema": SCHEMA_VERSION,
            "module": self.show(self.module),
            "source": self.show(self.source),
            "policy": self.show(self.policy.source) if self.policy.source else None,
            "policy_watched": self.show(self.policy_file),
            "watching": [self.show(p) for p in self.watched_paths()],
            "mode": "call" if c.func else "command",
            "function": c.func,
            "args": list(c.args),
            "argv": list(c.argv),
            "debounce_ms": round(c.debounce * 1e3, 3),
        }

    # --------------------------------------------------------------- the loop
    def serve(self, stop: Optional[Stop] = None) -> dict:
        """Run once, then watch until ``stop`` is set; returns a summary (plain data)."""
        import watchfiles

        stop = self._stop = stop or Stop()
        roots, recursive = self._roots()
        wanted = self._filter()
        aliases = self._aliases()
        step = max(1, int(self.config.debounce * 1e3 / 2))  # quiet for 1-2 steps: a burst ends
        worker: Optional[threading.Thread] = None
        pending: set = set()
        started = False
        try:
            for changes in watchfiles.watch(
                *roots,
                watch_filter=None,  # filtered below, so every wake-up reaches this loop
                debounce=max(1600, step * 10),
                step=step,
                stop_event=stop,
                rust_timeout=max(1, int(self.config.tick * 1e3)),
                yield_on_timeout=True,
                raise_interrupt=False,
                force_polling=True if self.config.poll else None,
                poll_delay_ms=max(10, min(step, 300)),
                recursive=recursive,
            ):
                if stop.is_set():
                    break
                if not started:  # the first wake-up: the watch is live, run once
                    started = True
                    self.emit("start", self._start_data())
                    worker = self._launch(None)
                    continue
                seen = (_norm(p) for change, p in changes if wanted(change, p))
                pending.update(aliases.get(path, path) for path in seen)
                if pending and not (worker and worker.is_alive()):
                    worker = self._launch(pending)
                    pending = set()
        except OSError as exc:  # (the watcher's, as it walks the folders: not a bug)
            stop.stop("error")
            raise errors.InputError(
                f"cannot watch {', '.join(roots)}: {errors.inert(_first_line(exc))}",
                hint="watch folders you can read (--also); /proc and /sys cannot be watched",
            ) from None
        finally:
            in_flight = bool(worker and worker.is_alive())
            summary = {"reason": stop.reason, "cycles": self.cycle, "interrupted_run": in_flight}
            self.emit("stop", summary)
            with self._lock:
                self._closed = True
            self._cleanup(in_flight)
        return summary

    def _cleanup(self, in_flight: bool) -> None:
        if self.tmpdir:
            import shutil

            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self.box is not None and not in_flight:  # never under a running guest
            self.box.close()

    def _launch(self, changed: Optional[set]) -> threading.Thread:
        worker = threading.Thread(
            target=self._guarded_cycle, args=(changed,), name="wasmsbx-watch", daemon=True
        )
        from ..backends.deadline import quiet_threads

        with quiet_threads():  # (Ctrl-C is for the main thread, which stops the watch)
            worker.start()
        return worker

    def _guarded_cycle(self, changed: Optional[set]) -> None:
        try:
            self.run_cycle(changed)
        except Exception as exc:  # a bug must not end the watch; say so and go on
            if os.environ.get("WASMSBX_DEBUG"):
                import traceback

                traceback.print_exc()
            error = {
                "kind": "internal",
                "message": f"internal error: {type(exc).__name__}: {exc}",
                "hint": "this is a bug in wasmsbx; rerun with WASMSBX_DEBUG=1 for a traceback",
                "exit_code": int(errors.ExitCode.INTERNAL),
            }
            self.emit("run", {"ok": False, "phase": "internal", "error": error})

    # --------------------------------------------------------------- one cycle
    def _effective(self, changed: set) -> set:
        """The changed paths whose content really changed (our own writes, touches and
        repeated events of one save are dropped here)."""
        effective = set()
        for path in changed:
            if path in self.digests:
                digest = self._digest_of(path)
                if digest == _EMPTY and path != self.policy_file:
                    # (a module or source emptied is one being written: an editor, or
                    # `>`, truncates first, and on a busy machine a save's two steps
                    # can be further apart than the debounce; it runs once written.
                    # An empty policy is a policy: its change counts)
                    continue
                if digest != self.digests[path]:
                    self.digests[path] = digest
                    effective.add(path)
            else:
                effective.add(path)
        return effective

    def run_cycle(self, changed: Optional[set] = None) -> None:
        """One pass: reload the policy, rebuild, reload and run, as the changes require.
        ``changed=None`` is the first run."""
        initial = changed is None
        if not initial:
            changed = self._effective(changed)
            if not changed:
                return
        self.cycle += 1
        trigger = "start" if initial else sorted(self.show(p) for p in changed)
        if not initial and self.policy_file in changed:
            reloaded = self._reload_policy()
            if not reloaded and changed == {self.policy_file}:
                return  # only a broken policy changed: nothing new to run
        rebuild = self.source and (initial or changed - {self.policy_file, self.module})
        if rebuild and not self._build():
            return  # a failed build keeps the last good module; nothing new to run
        self._load_and_run(trigger)

    def _reload_policy(self) -> bool:
        shown = self.show(self.policy_file)
        try:
            new = self._load_policy()
        except errors.WasmsbxError as exc:
            kept = self.show(self.policy.source) if self.policy.source else "defaults"
            self.emit("policy", {"ok": False, "path": shown, "error": exc.to_dict(), "kept": kept})
            return False
        changes = policy_changes(self.policy, new)
        self.policy = new
        self.policy_version += 1
        self.emit("policy", {"ok": True, "path": shown, "changes": changes})
        return True

    def _build(self) -> bool:
        data = {"source": self.show(self.source), "module": self.show(self.module)}
        try:
            policy = getattr(self, "policy", None)
            facts = build_source(Path(self.source), Path(self.module), self.config.func, policy)
        except errors.WasmsbxError as exc:
            self.emit("build", {"ok": False, **data, "error": exc.to_dict()})
            return False
        if self.module in self.digests:  # our own write is not a change to react to
            self.digests[self.module] = _digest(Path(self.module))
        self.emit("build", {"ok": True, **data, **facts})
        return True

    def _sandbox(self) -> Any:
        """The module under the current policy; reused when neither changed."""
        key = (_digest(Path(self.module)), self.policy_version)
        if self.box is not None and key == self.box_key:
            return self.box
        from ..runner import Sandbox

        kind = "call" if self.config.func else "command"
        box = Sandbox(
            self.show(self.module), self.policy, kind=kind, use_cache=self.config.use_cache
        )
        if self.box is not None:
            self.box.close()
        self.box, self.box_key = box, key
        return box

    def _compare(self, box: Any) -> None:
        from ..wasm.facts import FactsError, read_facts

        if getattr(box, "is_component", False):
            self._compare_component(box)
            return
        from ..wasm.source import bounded_reads

        try:
            # (the interface alone, read within limits.compile_timeout as the sandbox's
            # own read was: a module of millions of items is not read without the clock)
            with bounded_reads(self.policy, None, self.show(self.module)):
                facts = read_facts(box.wasm, scan_code=False)
        except (FactsError, errors.WasmsbxError):
            return  # the runtime accepted it; the reader cannot describe it (in time)
        if self.facts is not None and facts.sha256 != self.facts.sha256:
            report = compare(self.facts, facts, self.policy.values.get("limits.memory"))
            self.emit("interface", report.to_dict())
        self.facts = facts

    def _compare_component(self, box: Any) -> None:
        """A component's WIT-level report (wasmsbx.components.watch)."""
        from ..components.watch import compare as compare_wit
        from ..components.watch import interface_of

        now = interface_of(box)
        was = self.facts
        if was is not None and was.sha256 != now.sha256 and hasattr(was, "imports"):
            self.emit("interface", compare_wit(was, now).to_dict())
        self.facts = now

    def _load_and_run(self, trigger: Any) -> None:
        c = self.config
        data: dict = {"trigger": trigger, "started": _now()}
        data.update({"function": c.func, "args": list(c.args)} if c.func else {"argv": c.argv})
        started = time.perf_counter()
        phase = "load"
        try:
            if self.policy.confined:  # (a found policy: its paths where they were checked)
                from .. import policy as policy_mod

                policy_mod.recheck_confined(self.policy)
            box = self._sandbox()
            self._compare(box)
            phase = "run"
            data.update(self._invoke(box))
        except errors.WasmsbxError as exc:
            data.update({"ok": False, "phase": phase, "error": exc.to_dict()})
            if phase == "run" and c.func and c.capture:  # what it printed before failing
                data.update(_captured(*box.output()))
            elif exc.stdout is not None or exc.stderr is not None:  # (a command's)
                data.update(_captured(exc.stdout, exc.stderr))
        data["duration_ms"] = round((time.perf_counter() - started) * 1e3, 3)
        self.emit("run", data)

    def _invoke(self, box: Any) -> dict:
        c = self.config
        if c.func:
            wasi = box.wasi_setup(capture=c.capture) if c.capture else None
            result = box.invoke(c.func, c.args, fresh=True, wasi=wasi)
            data = {"ok": True, "phase": "run", **result.to_dict()}
            if c.capture:
                data.update(_captured(*box.output()))
            return data
        # A watched command does not read the terminal unless the policy says so.
        stdin = None if "stdio.stdin" in self.policy.explicit else "null"
        result = box.run_command(c.argv, stdin=stdin, capture=c.capture)
        data = {"ok": result.exit_code == 0, "phase": "run", **result.to_dict()}
        if c.capture:
            data.update(_captured(result.stdout, result.stderr))
        return data


def _captured(stdout: Optional[bytes], stderr: Optional[bytes]) -> dict:
    from ..runner.captured import as_json  # (as run --json: red team 108)

    return {"stdout": as_json(stdout), "stderr": as_json(stderr)}


__all__ = [
    "Change",
    "CompatReport",
    "Event",
    "Stop",
    "WatchConfig",
    "Watcher",
    "build_source",
    "compare",
    "policy_changes",
    "stop_on_signals",
]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
