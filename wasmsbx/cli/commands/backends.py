"""``wasmsbx backends``: which runtimes are here, what they can do, which one wins."""

from __future__ import annotations

from typing import Any, Optional

import typer

from ... import capabilities as caps
from .. import output
from ..boundary import boundary


def register(app: typer.Typer) -> None:
    @app.command("backends")
    @boundary
    def backends(
        module: Optional[str] = typer.Argument(
            None, metavar="[MODULE]", help="Explain the choice for this module."
        ),
        explain: bool = typer.Option(False, "--explain", help="Show the scoring table."),
        policy: Optional[str] = typer.Option(
            None, "--policy", "-p", metavar="PATH", help="Policy file (default ./sandbox.toml)."
        ),
        kind: str = typer.Option(
            "auto",
            "--kind",
            metavar="call|command|auto",
            help="Invocation to score for (auto: command if the module has _start).",
        ),
        backend: Optional[str] = typer.Option(
            None, "--backend", "-b", metavar="NAME", help="Score only this backend[:compiler]."
        ),
        json_output: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> int:
        """List backends and compilers: version, availability, capability matrix."""
        from ...backends import survey

        selection = None
        if module:
            _check_component(module, policy)
        if explain or module:
            selection = survey.explain(module, policy, kind, backend)
        else:  # they only shape the explanation, but were ignored with exit 0 when wrong
            survey.check_options(policy, kind, backend)
        report = survey.survey()
        if json_output:
            data = {"backends": report}
            if selection is not None:
                data["explain"] = selection.to_dict()
            output.emit_json(data)
            return 0
        _render(report)
        if selection is not None:
            from ..explain import render

            output.out("")
            render(selection)
        return 0


def _check_component(module: str, policy_path: Any = None) -> None:
    """A component's sections, scanned as `run`, `audit` and `compile` scan them: a
    truncated one was scored, exit 0 (red team 106). A core module is checked by the
    survey's own read of its facts."""
    from ... import policy as policy_mod
    from ...components.binary import ComponentFormatError, ComponentUnsupported, scan
    from ...errors import ModuleError
    from ...wasm.source import read_module

    wasm = read_module(module, policy_mod.discover(policy_path))
    if bytes(wasm[4:8]) != b"\x0d\x00\x01\x00":  # (a component's version and layer)
        return
    try:
        scan(wasm)
    except ComponentUnsupported:
        pass  # (well formed; what it instantiates is refused when it runs)
    except ComponentFormatError as err:
        raise ModuleError(f"{module}: {err}", hint=err.hint) from None


def _render(report: list) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = output.console()
    table = Table(title="backends")
    for column in ("backend", "version", "available", "about"):
        table.add_column(column, overflow="fold")
    shared: dict = {}  # backend -> notes common to all its compilers
    for entry in report:
        avail = entry["availability"]
        status = "[green]yes[/]" if avail["available"] else f"[red]no[/]: {escape(avail['reason'])}"
        if not avail["available"] and avail.get("fix"):
            status += f" (fix: {escape(avail['fix'])})"
        notes = entry["capabilities"]["notes"] if entry["capabilities"] else []
        shared.setdefault(entry["backend"], notes[1:])
        table.add_row(
            entry["label"], avail.get("version") or "-", status, escape(notes[0] if notes else "")
        )
    console.print(table)
    for backend, notes in shared.items():
        for note in notes:
            console.print(f"  {backend}: {escape(note)}")
    _render_matrix(console, report)


def _render_matrix(console, report: list) -> None:
    """Capabilities by backend:compiler; a column in brackets is not available here."""
    from rich.markup import escape
    from rich.table import Table

    matrix = Table(title=escape("capabilities (declared; [not available here] in brackets)"))
    matrix.add_column("capability", overflow="fold")
    for entry in report:
        label = f"{entry['backend']}\n{entry['compiler'] or ''}".strip()
        if not entry["availability"]["available"]:
            label = f"[{label}]"
        matrix.add_column(escape(label), justify="center")
    groups = (
        ("wasm", caps.WASM_FEATURES, "features"),
        ("security", caps.SECURITY, "security"),
        ("performance", caps.PERFORMANCE, "performance"),
        ("debugging", caps.DEBUGGING, "debugging"),
    )
    for title, names, field in groups:
        matrix.add_row(f"[bold]{title}[/]", *["" for _ in report])
        for name in names:
            marks = [
                "[green]✓[/]" if name in e["capabilities"][field] else "[red]✗[/]" for e in report
            ]
            matrix.add_row(f"  {name}", *marks)
    speeds = [e["capabilities"] for e in report]
    matrix.add_row("[bold]measured, 0..1[/]", *["" for _ in report])
    matrix.add_row("  compile speed", *[f"{c['compile_speed']:.2f}" for c in speeds])
    matrix.add_row("  run speed", *[f"{c['run_speed']:.2f}" for c in speeds])
    console.print(matrix)
