"""Room for the host to report in when a guest has taken every file descriptor.

A guest granted a folder can open files until the process has no descriptor left (WASI's
``path_open``, a component's ``open-at``: the runtime sets no count of its own, so the
process's open-files limit, ``ulimit -n``, is the bound). The command line then still
has to import what reports the error, and each import opens a file: with none left it
printed three chained tracebacks and exited 1 (red team 104), whatever the guest's
trap or limit was. ``keep`` sets a few descriptors aside when the command starts;
``release`` gives them back before the guest's outcome is reported. A leaf: imports
nothing of wasmsbx.
"""

from __future__ import annotations

import os

ROOM = 32  # descriptors kept aside: what reporting an error needs, with margin
_KEPT: list = []


def keep() -> None:
    """Set ROOM descriptors aside (copies of one open of the null device), once."""
    if _KEPT:
        return
    try:
        first = os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    _KEPT.append(first)
    try:
        for _ in range(ROOM - 1):
            _KEPT.append(os.dup(first))  # (not inherited by children, as os.dup makes it)
    except OSError:
        pass


def release() -> None:
    """Give the descriptors set aside back (the process may open that many files again)."""
    while _KEPT:
        try:
            os.close(_KEPT.pop())
        except OSError:
            pass
