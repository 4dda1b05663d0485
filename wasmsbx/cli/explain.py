"""The scoring table behind a backend choice (``--explain``)."""

from __future__ import annotations

from typing import Any

from . import output


def render(selection: Any, stderr: bool = False) -> None:
    from rich.table import Table

    console = output.console(stderr=stderr)
    needs = ", ".join(cap for cap, _ in selection.requirements) or "none"
    console.print(f"requirements: {needs}")
    weights = "  ".join(f"{k} x{v:g}" for k, v in selection.weights.items())
    console.print(f"weights: {weights}")
    table = Table(show_lines=False)
    for column in (
        "backend",
        "version",
        "features",
        "security",
        "performance",
        "debugging",
        "bonus",
        "total",
        "verdict",
    ):
        table.add_column(
            column, justify="right" if column not in ("backend", "verdict") else "left"
        )
    for cand in selection.candidates:
        scores = [
            f"{cand.scores[c]:.2f}" if cand.scores else "-"
            for c in ("features", "security", "performance", "debugging")
        ]
        if cand is selection.winner:
            verdict = "[bold green]chosen[/]"
        elif cand.eligible:
            verdict = "eligible"
        else:
            verdict = "[red]excluded[/]: " + "; ".join(cand.excluded)
        table.add_row(
            cand.label,
            cand.version or "-",
            *scores,
            f"{cand.bonus:.2f}",
            f"{cand.total:.2f}" if cand.eligible else "-",
            verdict,
        )
    console.print(table)
    console.print(f"winner: [bold]{selection.winner.label}[/]")
