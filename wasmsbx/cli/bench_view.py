"""Terminal views of a bench report: a table per phase, a bar chart, baseline deltas.

The same Report that ``--json`` prints, rendered with rich; progress on stderr, and only
when stderr is a terminal.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from . import output

BAR_WIDTH = 40
MIN_LOG_WIDTH = 120
COLUMNS = ("backend", "samples", "min", "median", "mean", "p95", "stdev", "outliers", "ops/s")


def _table(title: str) -> Any:
    from rich import box
    from rich.table import Table

    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)


def seconds(value: Optional[float]) -> str:
    """Three significant digits in the unit that fits: 812 ns, 24.4 µs, 1.23 ms, 2.05 s."""
    if value is None:
        return "-"
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= factor:
            return f"{value / factor:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def rate(value: Optional[float]) -> str:
    if value is None:
        return "-"
    for unit, factor in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= factor:
            return f"{value / factor:.3g}{unit}/s"
    return f"{value:.3g}/s"


class Progress:
    """A rich progress bar on stderr while the benchmark runs (TTY only)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None
        self.task = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=output.console(stderr=True),
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("bench", total=None)
        return self

    def update(self, case: str, backend: str, phase: str, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(
                self.task,
                description=esc(f"{case} [{backend}] {phase}"),
                completed=done,
                total=total,
            )

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def render(report: Any) -> None:
    console = output.console()
    if not console.is_terminal:  # logs and pipes do not wrap: do not squeeze the tables
        console.width = max(console.width, MIN_LOG_WIDTH)
    for case in report.cases:
        _case(console, case)
    if report.comparison:
        _comparison(console, report.comparison)


# Data made inert for rich markup, control characters escaped (output.markup)
esc = output.markup


def _case(console: Any, case: Any) -> None:
    what = f"{case.function}({', '.join(str(a) for a in case.args)})" if case.function else "run"
    argv = f" -- {' '.join(case.argv)}" if case.argv else ""
    console.print(f"[bold]{esc(case.name)}[/]  {esc(case.module)}  {esc(what + argv)}")
    if case.error:
        console.print(f"  [red]error[/]: {esc(case.error['message'])}")
        return
    for result in case.results:
        if result.status == "skipped":
            console.print(f"  [yellow]skipped[/] {esc(result.label)}: {esc(result.reason)}")
        elif result.status == "failed":
            err = result.error or {}
            console.print(
                f"  [red]failed[/] {esc(result.label)} in {esc(err.get('phase'))}: "
                f"{esc(err.get('message'))}"
            )
    measured = [r for r in case.results if r.phases]
    phases = [
        p
        for p in ("compile", "load", "instantiate", "call", "run")
        if any(p in r.phases for r in measured)
    ]
    for phase in phases:
        _phase_table(console, case, phase, measured)
    _usage_table(console, measured)
    if len([r for r in measured if r.status == "ok"]) > 1:
        _bars(console, phases, measured)
    console.print("")


def _phase_table(console: Any, case: Any, phase: str, results: list) -> None:
    from ..bench.measure import PHASE_HELP

    table = _table(f"[bold]{phase}[/]: {PHASE_HELP[phase]}")
    for column in COLUMNS:
        table.add_column(
            column, justify="left" if column == "backend" else "right", overflow="fold"
        )
    for result in results:
        entry = result.phases.get(phase)
        if entry is None:
            continue
        if entry.stats is None:
            table.add_row(esc(result.label), "-", *["" for _ in range(6)], esc(entry.skipped or ""))
            continue
        s = entry.stats
        samples = f"{s.samples}×{s.ops_per_sample}" + ("*" if entry.budget_exhausted else "")
        table.add_row(
            esc(result.label),
            samples,
            seconds(s.min),
            f"[bold]{seconds(s.median)}[/]",
            seconds(s.mean),
            seconds(s.p95),
            seconds(s.stdev),
            f"{s.outliers_low}↓ {s.outliers_high}↑" if s.outliers else "0",
            rate(s.throughput),
        )
    console.print(table)
    if any(r.phases.get(phase) and r.phases[phase].budget_exhausted for r in results):
        console.print("  * the time budget ran out before --iterations samples")


def _usage_table(console: Any, results: list) -> None:
    rows = [
        r
        for r in results
        if r.memory_bytes is not None or r.fuel_per_op is not None or r.exit_code is not None
    ]
    if not rows:
        return
    from ..units import format_size

    for r in rows:
        parts = []
        if r.memory_bytes is not None:
            parts.append(f"peak memory {format_size(r.memory_bytes)}")
        if r.fuel_per_op is not None:
            parts.append(f"fuel {r.fuel_per_op:,.0f} per op")
        if r.exit_code is not None:
            parts.append(f"exit code {r.exit_code}")
        console.print(f"  {esc(r.label)}: " + ", ".join(parts))


def _bars(console: Any, phases: list, results: list) -> None:
    """Median per backend, one group per phase, bars scaled to the slowest backend."""
    console.print("[bold]median by backend[/] (shorter is faster)")
    width = max(len(r.label) for r in results)
    for phase in phases:
        medians = [
            (r.label, r.phases[phase].stats.median)
            for r in results
            if r.phases.get(phase) and r.phases[phase].stats
        ]
        if not medians:
            continue
        slowest = max(m for _, m in medians)
        fastest = min(m for _, m in medians)
        console.print(f"  {phase}")
        for label, value in medians:
            n = max(1, round(BAR_WIDTH * value / slowest)) if slowest > 0 else 1
            ratio = value / fastest if fastest > 0 else 1.0
            console.print(
                f"    {esc(label.ljust(width))} [cyan]{'█' * n}[/]{' ' * (BAR_WIDTH - n)} "
                f"{seconds(value):>9}  ×{ratio:.2f}"
            )


def _comparison(console: Any, comparison: dict) -> None:
    threshold = comparison.get("threshold")
    title = f"[bold]against baseline[/] {esc(comparison['baseline'])}"
    if threshold is not None:
        title += f" (fails above +{threshold * 100:g}% and beyond the noise)"
    table = _table(title)
    for column in ("case", "backend", "phase", "baseline", "now", "change", "noise", "verdict"):
        right = column in ("baseline", "now", "change", "noise")
        table.add_column(column, justify="right" if right else "left", overflow="fold")
    colours = {"regression": "red", "slower": "yellow", "faster": "green", "same": "dim"}
    for d in comparison["deltas"]:
        change = "-" if d["change"] is None else f"{d['change'] * 100:+.1f}%"
        noise = "-" if d["noise"] is None else f"±{d['noise'] * 100:.1f}%"
        colour = colours.get(d["verdict"], "")
        verdict = f"[{colour}]{d['verdict']}[/]" if colour else d["verdict"]
        table.add_row(
            esc(d["case"]),
            esc(d["backend"]),
            esc(d["phase"]),
            seconds(d["base_median"]),
            seconds(d["median"]),
            change,
            noise,
            verdict,
        )
    console.print(table)
