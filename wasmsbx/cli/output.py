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
