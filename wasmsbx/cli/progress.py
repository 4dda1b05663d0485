"""Progress on stderr for ``--batch`` and ``--stream`` (only when stderr is a terminal).

Items (or bytes) done and the rate always; a bar, percentage and ETA when the input's
size is known (a regular file), measured in input bytes consumed.
"""

from __future__ import annotations

from typing import Any


class Progress:
    """Lazily started on the first update, removed (transient) when stopped."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.bar: Any = None
        self.task: Any = None

    def _start(self, total: Any) -> None:
        from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        from .output import console

        self.bar = RichProgress(
            TextColumn("{task.fields[done]}"),
            TextColumn("{task.fields[rate]}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console(stderr=True),
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.kind, total=total, done="", rate="")

    def update(self, stats: Any, source: Any) -> None:
        """``stats`` is a batch Summary or a StreamStats; ``source`` a checkpoint.Source."""
        from ..units import format_count, format_size

        if self.bar is None:
            self._start(source.size)
        if self.kind == "batch":
            done = f"{format_count(stats.items)} items"
            rate = f"{format_count(int(stats.rate))}/s"
        else:
            done = f"{format_size(stats.bytes_in)} in"
            seconds = stats.seconds
            rate = f"{format_size(int(stats.bytes_in / seconds)) if seconds > 0 else '0 B'}/s"
        self.bar.update(self.task, completed=source.offset, done=done, rate=rate)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
