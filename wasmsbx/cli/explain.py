"""The scoring table behind a backend choice (``--explain``)."""

from __future__ import annotations

from typing import Any

from . import output

CATEGORIES = ("features", "security", "performance", "debugging")


def render(selection: Any, stderr: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = output.console(stderr=stderr)
    console.print("[bold]requirements:[/] a candidate lacking one is excluded")
    for cap, why in selection.requirements:
        console.print(f"  {cap:<16} {escape(why)}")
    if not selection.features_checked:
        console.print("  (module features not read: only one candidate met the policy)")
    weights = "  ".join(f"{k} x{v:g}" for k, v in selection.weights.items())
    console.print(f"[bold]weights[/]: {weights}")
    console.print(
        f"  performance = {selection.run_share:.0%} run speed + "
        f"{1 - selection.run_share:.0%} compile speed (measured), and flags"
    )
    table = Table(title="scores: features, security, performance, debugging (0..1 each)")
    table.add_column("candidate", overflow="fold")
    for column in ("feat", "sec", "perf", "debug", "bonus", "total"):
        table.add_column(column, justify="right", overflow="fold")
    table.add_column("verdict", overflow="fold")
    for cand in selection.candidates:
        if cand is selection.winner:
            verdict = "[bold green]chosen[/]"
        else:
            verdict = "eligible" if cand.eligible else "[red]excluded[/]"
        table.add_row(
            cand.label,
            *[f"{cand.scores[c]:.2f}" if cand.scores else "-" for c in CATEGORIES],
            f"{cand.bonus:.2f}",
            f"{cand.total:.2f}" if cand.eligible else "-",
            verdict,
        )
    console.print(table)
    for cand in selection.candidates:
        for reason in cand.excluded:
            console.print(f"  {cand.label} excluded: {escape(reason)}")
        for reason in cand.bonus_reasons:
            console.print(f"  {cand.label} bonus: {escape(reason)}")
    console.print(f"winner: [bold]{selection.winner.label}[/] — {escape(selection.reason)}")
    layout = selection.memory_layout
    if layout:
        console.print(f"memory layout: {escape(layout['about'])}")
