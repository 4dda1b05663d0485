"""``wasmsbx watch MODULE [FUNC [ARGS...]] [-- ARGS...]``: re-run on every change.

Parses the options, hands a WatchConfig to the core watcher (wasmsbx/watch.py) and
renders its events: rich text, or one JSON object per line with ``--json``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ... import errors
from ...native import flush_hits
from .. import options as run_options
from .. import output
from ..app import RUN_OPTS, FuncArgsCommand, run_opt, split_passthrough
from ..boundary import boundary


def register(app: typer.Typer) -> None:
    @app.command(
        "watch",
        cls=FuncArgsCommand,
    )
    @boundary
    def watch(
        module: str = typer.Argument(
            ..., metavar="MODULE", help="A .wasm/.wat module, or a .c source to build."
        ),
        func_and_args: Optional[list[str]] = typer.Argument(
            None,
            metavar="[FUNC [ARGS...]] [-- ARGS...]",
            help="An export to call and its arguments, or, after --, a WASI command's argv.",
        ),
        source: Optional[str] = typer.Option(
            None, "--source", metavar="PATH", help="The source of MODULE: rebuild it on change."
        ),
        also: Optional[list[str]] = typer.Option(
            None, "--also", metavar="PATH", help="Also re-run when PATH changes (repeatable)."
        ),
        policy: Optional[str] = run_opt("policy"),
        backend: Optional[str] = run_opt("backend"),
        memory: Optional[str] = run_opt("memory"),
        fuel: Optional[str] = run_opt("fuel"),
        timeout: Optional[str] = run_opt("timeout"),
        stack: Optional[str] = run_opt("stack"),
        dir: Optional[list[str]] = run_opt("dir"),
        dir_ro: Optional[list[str]] = run_opt("dir_ro"),
        env: Optional[list[str]] = run_opt("env"),
        debounce: str = typer.Option(
            "100ms",
            "--debounce",
            metavar="DURATION",
            help="Quiet time that ends a burst of changes (one save runs once).",
        ),
        clear: bool = typer.Option(False, "--clear", help="Clear the screen before each run."),
        poll: bool = typer.Option(
            False,
            "--poll",
            help="Poll the file system instead of notifications (network drives, some "
            "containers); sees changes at 1-second mtime granularity.",
        ),
        no_cache: bool = typer.Option(False, "--no-cache", help="Do not use the compile cache."),
        json_output: bool = typer.Option(
            False, "--json", help="One JSON object per event (schema in the README)."
        ),
    ) -> int:
        """Re-run MODULE on every change, with a compatibility report of its interface.

        Runs once, then again whenever the module, its source, the policy or an --also
        path changes. Ctrl-C stops (exit 0).

        Examples: wasmsbx watch add.wat add 5 3;  wasmsbx watch src/add.c add 5 3;
        wasmsbx watch build/tool.wasm --source tool.c -- --flag input"""
        from ... import watch as core
        from .run import build_policy

        words, argv = split_passthrough(list(func_and_args or []))
        func = words[0] if words else None
        options = {
            "policy": policy,
            "backend": backend,
            "memory": memory,
            "fuel": None if fuel is None else run_options._value(RUN_OPTS["fuel"], fuel),
            "timeout": timeout,
            "stack": stack,
            "dir": dir or [],
            "dir_ro": dir_ro or [],
            "env": env or [],
        }
        _refuse_crossed(module, source, policy, also or [], options, capture=json_output)

        def load_policy() -> Any:
            # Every policy the watch loads, not only the first: one edited to send the
            # guest's output into a watched folder is refused like a broken one (the
            # last good one is kept), or each run's write would start the next.
            loaded = build_policy(options)
            _refuse_crossed(module, source, policy, also or [], options, loaded, json_output)
            return loaded

        config = core.WatchConfig(
            target=module,
            func=func,
            args=words[1:] + (argv if func else []),
            argv=[] if func else argv,
            source=source,
            also=_also(also or []),
            policy_loader=load_policy,
            policy_path=policy,
            use_cache=False if no_cache else None,
            capture=json_output,
            debounce=_debounce(debounce),
            poll=poll,
        )
        stop = core.Stop()
        with core.stop_on_signals(stop):
            watcher = core.Watcher(config, Renderer(json_output, clear))
            watcher.serve(stop)
        _exit_now(0)
        return 0  # not reached


def _exit_now(code: int) -> None:
    """Flush and leave without interpreter finalization.

    Two things may still run once watching stops: a guest cut short by Ctrl-C (in its
    worker thread), and wasmtime's tokio threads, which hold the Python stdio callbacks of
    WASI guests; at finalization such a thread is force-unwound and prints a Rust panic
    ("panic in a function that cannot unwind"), reproducible with wasmtime-py 50 alone.
    serve() has already closed everything watch owns, so there is nothing left to finalize.
    """
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    flush_hits()  # (cache hits kept in memory: os._exit skips atexit)
    os._exit(code)


def _debounce(text: str) -> float:
    from ...errors import UsageError
    from ...units import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--debounce: {exc}", hint="e.g. --debounce 100ms") from None
    if not 0.001 <= seconds <= 10:
        raise UsageError(f"--debounce: {text} is out of range", hint="use 1ms .. 10s")
    return seconds


# ---------------------------------------------------------------------------- rendering


class Renderer:
    """Events to stdout: one JSON object per line, or short rich blocks."""

    def __init__(self, json_mode: bool, clear: bool) -> None:
        self.json_mode = json_mode
        self.clear = clear
        self.cycle = 0
        self.console = None if json_mode else output.console()

    def __call__(self, event: Any) -> None:
        if self.json_mode:
            import json

            sys.stdout.write(json.dumps(event.to_dict(), default=str) + "\n")
            sys.stdout.flush()
            return
        try:
            if self.clear and event.cycle > self.cycle and event.kind != "stop":
                self.console.clear()
            self.cycle = max(self.cycle, event.cycle)
            getattr(self, f"_{event.kind}")(event)
            sys.stdout.flush()
        except SystemExit:  # rich's answer to a closed pipe: let the watcher stop instead
            raise BrokenPipeError("stdout closed") from None

    # ------------------------------------------------------------ one per kind
    def _print(self, text: str, **kw: Any) -> None:
        self.console.print(text, **kw)

    def _head(self, event: Any) -> str:
        return f"[dim]{event.time[11:23]}[/]"

    def _start(self, event: Any) -> None:
        d = event.data
        what = _call_text(d) if d["mode"] == "call" else _argv_text(d["argv"])
        paths = ", ".join(d["watching"])
        policy = d["policy"] or "defaults"
        self._print(
            f"[bold]watching[/] {_shown(paths)}  [dim]run:[/] {_shown(what)}  "
            f"[dim]policy:[/] {_shown(policy)}  [dim](Ctrl-C to stop)[/]"
        )

    def _policy(self, event: Any) -> None:
        d = event.data
        if not d["ok"]:
            err = d["error"]
            self._print(f"{self._head(event)} [red]✗ policy[/] {_shown(err['message'])}")
            if err.get("hint"):
                self._print(f"  [dim]hint: {_shown(err['hint'])}[/]")
            self._print(f"  [yellow]keeping the last good policy ({_shown(d['kept'])})[/]")
            return
        if not d["changes"]:
            self._print(f"{self._head(event)} policy reloaded: no effective change")
            return
        self._print(f"{self._head(event)} policy reloaded ({_shown(d['path'])}):")
        for change in d["changes"]:
            old, new = (
                _policy_value(change["key"], change["old"]),
                _policy_value(change["key"], change["new"]),
            )
            self._print(f"  {change['key']}: {_shown(old)} → {_shown(new)}")

    def _build(self, event: Any) -> None:
        d = event.data
        if d["ok"]:
            tool = Path(d["command"][0]).name if d["command"] else d["kind"]
            self._print(
                f"{self._head(event)} built {_shown(d['module'])} from {_shown(d['source'])} "
                f"[dim]({_shown(tool)}, {_ms(d['duration_ms'])})[/]"
            )
            lines = d["messages"].splitlines()  # warnings
        else:
            err = d["error"]
            self._print(f"{self._head(event)} [red]✗ build failed[/]: {_shown(err['message'])}")
            if err.get("hint"):
                self._print(f"  [dim]hint: {_shown(err['hint'])}[/]")
            lines = (err.get("output") or "").splitlines()
        for line in lines[:30]:
            self._print(f"  {_shown(line)}", style="dim")
        if len(lines) > 30:
            self._print(f"  ... {len(lines) - 30} more lines", style="dim")

    def _interface(self, event: Any) -> None:
        from rich.panel import Panel
        from rich.table import Table

        changes = event.data["changes"]
        if not changes:
            self._print(f"{self._head(event)} interface unchanged")
            return
        breaking = sum(1 for c in changes if c["breaking"])
        grid = Table.grid(padding=(0, 1))
        for _ in range(4):
            grid.add_column(overflow="fold")
        signs = {"added": "[green]+[/]", "removed": "[red]-[/]"}
        for c in changes:
            detail = c["new"] if c["change"] == "added" else c["old"]
            if c["change"] not in ("added", "removed"):
                detail = f"{c['old']} → {c['new']}"
            verdict = "[bold red]breaking[/]" if c["breaking"] else "[dim]ok[/]"
            note = f" [dim]({_shown(c['note'])})[/]" if c["note"] else ""
            grid.add_row(
                signs.get(c["change"], "[yellow]~[/]"),
                f"{c['kind']} [bold]{_shown(c['name'])}[/]",
                _shown(detail or "") + note,
                verdict,
            )
        count = f"{len(changes)} change{'s' if len(changes) != 1 else ''}"
        title = f"{self._head(event)} interface: {count}, " + (
            f"[bold red]{breaking} breaking[/]" if breaking else "[green]none breaking[/]"
        )
        self._print(Panel(grid, title=title, title_align="left", expand=False))

    def _run(self, event: Any) -> None:
        d = event.data
        took = f"[dim]{_ms(d.get('duration_ms'))}[/]"
        head = f"{self._head(event)} [bold]#{event.cycle}[/]"
        trigger = d.get("trigger")
        cause = "" if trigger in (None, "start") else f" [dim]({_shown(', '.join(trigger))})[/]"
        if not d["ok"] and "error" in d:
            err = d["error"]
            label = "load failed" if d["phase"] == "load" else err["kind"]
            self._print(f"{head} [red]✗ {label}[/]: {_shown(err['message'])}  {took}{cause}")
            if err.get("hint"):
                self._print(f"  [dim]hint: {_shown(err['hint'])}[/]")
            for frame in err.get("backtrace", [])[:5]:
                self._print(f"  [dim]at {_shown(frame)}[/]")
            return
        if "exit_code" in d:
            mark = "[green]✓[/]" if d["ok"] else "[red]✗[/]"
            self._print(f"{head} {mark} exit {d['exit_code']}  {took}{cause}")
            return
        results = ", ".join(_result_text(r) for r in d["results"])
        shown = f" = {results}" if results else ""
        self._print(f"{head} [green]✓[/] {_shown(_call_text(d) + shown)}  {took}{cause}")

    def _stop(self, event: Any) -> None:
        d = event.data
        runs = f"{d['cycles']} cycle{'s' if d['cycles'] != 1 else ''}"
        note = " (a run was cut short)" if d["interrupted_run"] else ""
        self._print(f"[dim]stopped ({d['reason']}) after {runs}{note}[/]")


def _call_text(d: dict) -> str:
    return f"{d['function']}({', '.join(str(a) for a in d['args'])})"


def _argv_text(argv: list) -> str:
    return "_start " + " ".join(argv) if argv else "_start"


def _result_text(result: dict) -> str:
    from ...runner.sandbox import format_value

    if "wave" in result:  # a component's result: its WAVE text
        return result["wave"]
    value = result["value"]
    return value if isinstance(value, str) else format_value(value, result["type"])


def _ms(value: Optional[float]) -> str:
    from ...units import format_duration

    return format_duration(value / 1e3) if value is not None else ""


def _policy_value(key: str, value: Any) -> str:
    from ...policy import KEYS
    from ...units import format_duration, format_size

    if value is None:
        return "unset"
    kind = KEYS[key].kind if key in KEYS else ""
    if kind == "size" and isinstance(value, int):
        return format_size(value)
    if kind == "duration" and isinstance(value, (int, float)):
        return format_duration(value)
    return str(value)


_UNREAD = object()  # (_refuse_crossed: no policy given, read it)


def _refuse_crossed(
    module: str,
    source: Any,
    policy: Any,
    also: list,
    options: dict,
    loaded: Any = _UNREAD,
    capture: bool = False,
) -> None:
    """What watch writes (its reports on stdout and stderr, the guest's stdio files) is
    none of what it watches: each write would be a change, and the next run another
    (red team round 54: `watch t.wat f 1 >> t.wat` ran 75 times in 8 s, the module
    growing). Checked at the start, with the policy as it is then, and again with each
    policy loaded (``loaded``) when the policy file changes (cli/crossed.py). ``capture``:
    the guest's output goes into --json events, not to the files its policy names."""
    from ... import policy as policy_mod
    from ...native.trustdir import within
    from ..crossed import guest_writes, refuse, refuse_in_grants, standard_writes, write_path
    from .run import apply_flags

    if loaded is _UNREAD:
        try:
            loaded = apply_flags(policy_mod.discover(policy), options)
        except errors.WasmsbxError:
            loaded = None  # (the watcher reports it, and runs once it is mended)
    # (with --json the guest's output is captured into the events: its files are unused)
    guest = guest_writes(loaded) if loaded is not None and not capture else []
    writes = standard_writes() + guest
    the_policy = ("the policy", policy or policy_mod.POLICY_FILENAME)
    reads = [("the module", module), ("the source", source), the_policy]
    reads += [("an --also path", path) for path in also]
    refuse(reads, [], writes)
    if loaded is not None:
        # Nor may the guest write what is watched (red team round 58: `--dir out --also
        # out`, or a guest rewriting ./sandbox.toml, ran 60-70 times in 8 s): each write
        # would start the next run, and a policy it rewrote would be the next run's
        # (nor through a second name of it: red team 130).
        refuse_in_grants(loaded, reads, one_name=False)
        refuse_in_grants(loaded, [the_policy])
    if not also:
        return
    # Nor in an --also folder: a write there, or a folder the guest may write there
    targets = [(what, write_path(where)) for what, where in writes]
    for grant in loaded.grants if loaded is not None else ():
        if grant.writable:
            host = os.fspath(grant.host)
            targets.append((f"filesystem.read_write {errors.inert(host)}", errors.real_path(host)))
    for folder in also:
        if not os.path.isdir(folder):
            continue
        real = errors.real_path(folder)
        for what, target in targets:
            if target and within(target, real):
                raise errors.InputError(
                    f"{what} is in the --also folder {errors.inert(folder)}: each write "
                    "would start another run; nothing was run",
                    hint="write the output outside the folders watch watches",
                )


def _also(paths: list) -> list:
    """--also paths; an empty one is refused: it was the current folder, watched whole."""
    if "" in paths:
        raise errors.UsageError("--also '': an empty path", hint="give a file or folder to watch")
    return list(paths)


# What an event carries (a module's names in a trap's frames, a file's name, an error's
# message) as rich text: control characters escaped, markup inert.
_shown = output.markup
