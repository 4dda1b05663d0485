"""Progress on stderr, only when stderr is a terminal: for ``--batch`` and ``--stream``
(``Progress``), and a spinner for compiles that take over a second (``Spinner``).

Items (or bytes) done and the rate always; a bar, percentage and ETA when the input's
size is known (a regular file), measured in input bytes consumed.
"""

from __future__ import annotations

import sys
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


class Spinner:
    """A spinner with elapsed time on stderr, drawn only if the work outlasts DELAY.

    A context manager; the waiting happens on a ``_thread`` (no threading import), and
    rich is imported only once the spinner is due. Compiles release the GIL, so it spins.
    """

    DELAY = 1.0

    def __init__(self, label: str) -> None:
        self.label = label
        self.done = False
        self.live: Any = None

    def __enter__(self) -> Spinner:
        import _thread
        import time

        self.started = time.monotonic()
        self.gate = _thread.allocate_lock()
        self.gate.acquire()
        self.state = _thread.allocate_lock()
        from ..backends.deadline import quiet_threads

        with quiet_threads():
            _thread.start_new_thread(self._watch, ())
        return self

    def _watch(self) -> None:
        if self.gate.acquire(timeout=self.DELAY):
            return  # finished in time: nothing to draw
        with self.state:
            if self.done:
                return
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            from .output import console

            self.live = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console(stderr=True),
                transient=True,
            )
            self.live.add_task(self.label, total=None)
            self.live.tasks[0].start_time = self.started  # count from the start, not DELAY
            self.live.start()

    def __exit__(self, *exc: Any) -> None:
        with self.state:
            self.done = True
            self.gate.release()
            if self.live is not None:
                self.live.stop()


def progress_factory():
    """``Spinner`` when stderr is a terminal, else None (no progress in pipes and logs)."""
    try:
        if not sys.stderr.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return Spinner
