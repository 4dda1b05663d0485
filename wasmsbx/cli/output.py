"""All terminal output in one place.

Results go to stdout, diagnostics to stderr. The plain functions here need no rich, so
the hot path of ``wasmsbx run`` stays lean; ``console()`` builds a rich console only for
commands that draw tables. rich honours NO_COLOR and drops colour when not on a TTY.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    """A line on stderr; dropped when stderr is a closed pipe (``2>&1 | head -1``), so
    the exit code stays the run's (the uncaught BrokenPipeError made it 1)."""
    try:
        sys.stderr.write(text + "\n")
    except (OSError, ValueError):
        _to_null(2)


def _to_null(fd: int) -> None:
    """Put /dev/null on a descriptor whose reader has gone: later writes and the final
    flush succeed silently."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


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
    import os

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not os.environ.get("COLUMNS") and not _isatty(stream):
        # In a pipe or a file, rich would assume 80 columns and wrap; a line as long as
        # its content is what grep and awk want (and tables wrap, never cut, where the
        # width is known: see overflow="fold" on their columns).
        width = 1000
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def _isatty(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
