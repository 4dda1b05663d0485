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
HIGH = 4096  # where the kept descriptors go at most (a higher one grows the kernel's table)
TINY_SHARE = 4  # under a limit too low for ROOM: keep 1/TINY_SHARE of what it leaves
TINY_FLOOR = 16  # ... past this many, which a run itself needs
NEEDED = 20  # descriptors free at the start, at least, for a command to run (``too_low``)
LOW = 256  # under this open-files limit, ``too_low`` counts the descriptors open
_KEPT: list = []
_LIMIT: list = []  # the soft open-files limit ``keep`` read


def keep() -> None:
    """Set ROOM descriptors aside (copies of one open of the null device), once. They
    are numbered high, below the open-files limit: the low numbers stay as they were for
    what the run opens (its input, a checkpoint), which messages and checks name."""
    if _KEPT:
        return
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        first = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except (ImportError, OSError, ValueError):  # pragma: no cover - POSIX has them
        return
    _LIMIT[:] = [soft]
    top = HIGH if soft == resource.RLIM_INFINITY else min(HIGH, soft)
    if top - ROOM - 1 <= 64:  # (a tiny limit: wherever they fit)
        # A quarter of what is left past TINY_FLOOR at most: under `ulimit -n 20` the 32
        # took every descriptor the run itself needed, and every command failed (red
        # team 137); a quarter of the whole limit still did under 10-16 (round 138).
        room = min(ROOM, max(0, top - TINY_FLOOR) // TINY_SHARE)
        if not room:
            os.close(first)
            return
        try:
            for _ in range(room - 1):
                _KEPT.append(os.dup(first))
        except OSError:
            pass
        _KEPT.append(first)
        return
    try:
        for number in range(top - ROOM - 1, top - 1):
            try:
                os.fstat(number)
                continue  # (taken: never replaced)
            except OSError:
                pass
            _KEPT.append(os.dup2(first, number, inheritable=False))
    except OSError:
        pass
    finally:
        os.close(first)


def release() -> None:
    """Give the descriptors set aside back (the process may open that many files again)."""
    while _KEPT:
        try:
            os.close(_KEPT.pop())
        except OSError:
            pass


def too_low() -> tuple:
    """(the soft open-files limit, descriptors open) if fewer than NEEDED are free when
    the command starts, else (0, 0). Under `ulimit -n 8` a WASI run aborted inside
    wasmtime (exit 134) and `--batch -j 2` failed at its pipes; a component's run
    aborts under 18 (wasmtime-wasi unwraps EMFILE), and descriptors a parent left open
    (a shell's, a CI runner's) count against the limit too (red team 142): the command
    line refuses such a start first. Counted only under a low limit (/proc/self/fd)."""
    if not _LIMIT or _LIMIT[0] == -1 or _LIMIT[0] >= LOW:
        return (0, 0)
    try:
        open_now = len(os.listdir("/proc/self/fd")) - 1  # (less listdir's own)
    except OSError:
        open_now = 3
    open_now -= len(_KEPT)  # (kept aside for reporting: given back before a guest's end)
    if _LIMIT[0] - open_now < NEEDED:
        return (int(_LIMIT[0]), open_now)
    return (0, 0)
