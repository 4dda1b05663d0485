"""``python -m wasmsbx``."""

import os
import sys


def _safe_path() -> None:
    """Take the working folder off ``sys.path``, where ``python -m`` put it first: a
    module planted there (by a guest granted the folder, or in a folder you run in) would
    be imported by a later lazy import (json, for --json) as your code. Kept when wasmsbx
    itself is imported from there (a checkout run in place). The console script never
    has it; Python 3.11's ``-P`` does the same for every module."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        cwd = os.getcwd()
    except OSError:  # (a folder removed under us: no relative entry can be found anyway)
        sys.path[:] = [p for p in sys.path if os.path.isabs(p)]
        return
    if cwd != here:
        sys.path[:] = [p for p in sys.path if p and os.path.join(cwd, p) != cwd]


if __name__ == "__main__":
    _safe_path()
    from .cli import entry

    entry()
