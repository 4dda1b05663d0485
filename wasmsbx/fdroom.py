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
NEEDED = 18  # descriptors free at the start, past ``keep``'s, for a command to run
_KEPT: list = []
_STATE: list = []  # keep's [soft limit (None: none), descriptors open, free past its own]


def keep() -> None:
    """Set ROOM descriptors aside (copies of one open of the null device), once. They
    are numbered high, below the open-files limit: the low numbers stay as they were for
    what the run opens (its input, a checkpoint), which messages and checks name. Fewer
    where few are free (``too_low`` says whether what is left is enough)."""
    if _KEPT or _STATE:
        return
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        first = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except (ImportError, OSError, ValueError):  # pragma: no cover - POSIX has them
        return
    limit = None if soft == resource.RLIM_INFINITY else soft
    top = HIGH if limit is None else min(HIGH, limit)
    open_now = _open_below(limit if limit is not None else top, first)
    free = None if limit is None else limit - open_now
    if top - ROOM - 1 <= 64 or (free is not None and free < ROOM + NEEDED + 64):
        # (few free: wherever they fit) A quarter of what is free past NEEDED at most:
        # under `ulimit -n 20` the 32 took every descriptor the run itself needed, and
        # every command failed (red team 137); with a parent's descriptors open, the
        # 32 went into the last free ones and a run aborted in wasmtime (round 143).
        spare = free if free is not None else top - TINY_FLOOR
        room = min(ROOM, max(0, spare - NEEDED) // TINY_SHARE)
        _STATE[:] = [limit, open_now, None if free is None else free - room]
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
    _STATE[:] = [limit, open_now, None if free is None else free - ROOM]
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


SCANNED = 65536  # descriptor numbers looked at, one by one, where /proc cannot list them


def _open_below(top: int, first: int) -> int:
    """The descriptors open under ``top`` (what a parent left open too), less ``first``:
    those past the limit take no number the run can use (red team 144: a parent's
    200-259 under a soft limit of 64 refused a start with 61 free). Where /proc cannot
    be listed, each number is looked at (round 145: stdio was assumed, and a parent's
    descriptors let a run start that then aborted)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        count = 0
        for number in range(min(top, SCANNED)):
            try:
                os.fstat(number)
            except OSError:
                continue
            count += number != first
        return count
    count = 0
    for name in names:
        if name.isdigit() and int(name) < top and int(name) != first:
            count += 1
    return max(0, count - 1)  # (less listdir's own descriptor, which is closed)


def release() -> None:
    """Give the descriptors set aside back (the process may open that many files again)."""
    while _KEPT:
        try:
            os.close(_KEPT.pop())
        except OSError:
            pass


def too_low() -> tuple:
    """(the soft open-files limit, descriptors open) if fewer than NEEDED are left free
    once ``keep`` has set its room aside, else (0, 0). Under `ulimit -n 8` a WASI run
    aborted inside wasmtime (exit 134) and `--batch -j 2` failed at its pipes; a
    component's run aborts with under about 14 free (wasmtime-wasi unwraps EMFILE), and
    descriptors a parent left open (a shell's, a CI runner's) count against the limit
    too (red teams 142, 143): the command line refuses such a start first."""
    if not _STATE or _STATE[2] is None or _STATE[2] >= NEEDED:
        return (0, 0)
    return (int(_STATE[0]), int(_STATE[1]))


def free_now() -> int:
    """Descriptors free in this process now (the soft limit less those open below it);
    -1 where there is no limit."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - POSIX has them
        return -1
    if soft == resource.RLIM_INFINITY:
        return -1
    return max(0, soft - _open_below(soft, -1))
