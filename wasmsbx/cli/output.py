"""All terminal output in one place.

Results go to stdout, diagnostics to stderr. The plain functions here need no rich, so
the hot path of ``wasmsbx run`` stays lean; ``console()`` builds a rich console only for
commands that draw tables. rich honours NO_COLOR and drops colour when not on a TTY.
"""

from __future__ import annotations

import sys
from typing import Any, Optional


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(text + "\n")


def error(message: str, hint: Optional[str] = None) -> None:
    err(f"error: {message}")
    if hint:
        err(f"hint: {hint}")


def warning(message: str) -> None:
    err(f"warning: {message}")


def emit_json(data: Any, stream=None) -> None:
    import json

    (stream or sys.stdout).write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def console(stderr: bool = False):
    """A rich Console for tables and progress (imported on first use)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def progress_factory():
    """``Spinner`` when stderr is a terminal, else None (no progress in pipes and logs)."""
    try:
        return Spinner if sys.stderr.isatty() else None
    except (AttributeError, ValueError):
        return None


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
        _thread.start_new_thread(self._watch, ())
        return self

    def _watch(self) -> None:
        if self.gate.acquire(timeout=self.DELAY):
            return  # finished in time: nothing to draw
        with self.state:
            if self.done:
                return
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

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
