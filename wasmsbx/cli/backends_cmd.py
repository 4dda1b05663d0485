"""``wasmsbx backends``: which runtimes are here, what they can do, which one wins."""

from __future__ import annotations

from typing import Optional

import typer

from .. import capabilities as caps
from . import output
from .app import boundary


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
        json_output: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> int:
        """List backends and compilers: version, availability, capability matrix."""
        from ..backends import survey

        report = survey.survey()
        selection = None
        if explain or module:
            selection = survey.explain(module, policy, kind)
        if json_output:
            data = {"backends": report}
            if selection is not None:
                data["explain"] = selection.to_dict()
            output.emit_json(data)
            return 0
        _render(report)
        if selection is not None:
            from .explain import render

            output.out("")
            render(selection)
        return 0


def _render(report: list) -> None:
    from rich.table import Table

    console = output.console()
    table = Table(title="backends")
    for column in ("backend", "version", "available", "notes"):
        table.add_column(column)
    for entry in report:
        avail = entry["availability"]
        status = "[green]yes[/]" if avail["available"] else f"[red]no[/]: {avail['reason']}"
        if not avail["available"] and avail.get("fix"):
            status += f" (fix: {avail['fix']})"
        notes = "; ".join(entry["capabilities"]["notes"]) if entry["capabilities"] else ""
        table.add_row(entry["label"], avail.get("version") or "-", status, notes)
    console.print(table)
    available = [e for e in report if e["capabilities"]]
    if not available:
        return
    matrix = Table(title="capabilities")
    matrix.add_column("capability")
    for entry in available:
        matrix.add_column(entry["label"], justify="center")
    groups = (
        ("wasm", caps.WASM_FEATURES, "features"),
        ("security", caps.SECURITY, "security"),
        ("performance", caps.PERFORMANCE, "performance"),
        ("debugging", caps.DEBUGGING, "debugging"),
    )
    for title, names, field in groups:
        matrix.add_row(f"[bold]{title}[/]", *["" for _ in available])
        for name in names:
            marks = [
                "[green]✓[/]" if name in e["capabilities"][field] else "[red]✗[/]"
                for e in available
            ]
            matrix.add_row(f"  {name}", *marks)
    console.print(matrix)
