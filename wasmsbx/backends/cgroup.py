"""The memory this process's control group has left (Linux cgroups v1 and v2).

In a container, or a systemd unit with ``MemoryMax=``, the kernel ends a process whose
group passes its memory limit with SIGKILL: no error line, exit 137. A compile on the
command line runs in its own process, watched for growth up to the compile bound
(2 GiB); under a group limit below that, the OOM killer came first (round 34, L11).
``headroom`` is what the watch then allows instead, so the compile ends with 117 and
says why. Only ``/proc/self/cgroup`` and the group's files under ``/sys/fs/cgroup`` are
read (no library reads them: psutil does not); every limit on the way to the root
counts, since a parent's limit holds for its children.
"""

from __future__ import annotations

import os
from typing import Optional

ROOT = "/sys/fs/cgroup"
# (limit, usage, statistics, the statistics of file page cache, which the kernel drops
# before it kills: inactive first, active too)
_V1 = (
    "memory.limit_in_bytes",
    "memory.usage_in_bytes",
    "memory.stat",
    (b"total_inactive_file", b"total_active_file"),
)
_V2 = ("memory.max", "memory.current", "memory.stat", (b"inactive_file", b"active_file"))
_UNLIMITED = 1 << 60  # v1 writes "no limit" as about 2**63 rounded down to a page


def _number(path: str) -> Optional[int]:
    try:
        with open(path, "rb") as f:
            text = f.read(64).strip()
    except OSError:
        return None
    if text == b"max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value


def _reclaimable(path: str, keys: tuple) -> int:
    """The group's file page cache: counted in its usage, yet the kernel drops it before
    it kills anything (red team rounds 36 and 37: a group holding a file's cache, read
    once or often, refused a compile that then ran fine)."""
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 16)
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        name, _, value = line.partition(b" ")
        if name in keys:
            try:
                total += max(0, int(value))
            except ValueError:
                pass
    return total


def _room(folder: str, names: tuple) -> Optional[int]:
    """limit - usage in ``folder``, less its file page cache (None: no limit there, or
    unreadable)."""
    limit = _number(os.path.join(folder, names[0]))
    if limit is None:
        return None
    usage = _number(os.path.join(folder, names[1])) or 0
    usage -= min(usage, _reclaimable(os.path.join(folder, names[2]), names[3]))
    return max(0, limit - usage)


def _groups(controller: str = "memory") -> list:
    """(mount folder, the group's path in it, file names) for ``controller``: v2's
    unified hierarchy, or v1's hierarchy of that controller."""
    try:  # (bytes, split at "\n" alone: a group's name may hold any other byte, round 139)
        with open("/proc/self/cgroup", "rb") as f:
            lines = [os.fsdecode(line) for line in f.read(65536).split(b"\n")]
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not path.startswith("/"):
            continue
        if controllers == "":
            out.append((ROOT, path, _V2))
        elif controller in controllers.split(","):
            out.append((os.path.join(ROOT, controller), path, _V1))
    return out


def task_room() -> Optional[int]:
    """Tasks (processes and threads) this process's cgroup (or any above it) may still
    start before ``pids.max``, v2 or v1's pids controller (red team 138: a hybrid layout
    keeps it on v1); None without a limit, or off Linux."""
    best: Optional[int] = None
    for mount, path, _names in _groups("pids"):
        parts = [p for p in path.split("/") if p and p not in (".", "..")]
        folders = [os.path.join(mount, *parts[:n]) for n in range(len(parts), 0, -1)]
        for folder in [*folders, mount]:
            limit = _number(os.path.join(folder, "pids.max"))
            if limit is not None:
                room = max(0, limit - (_number(os.path.join(folder, "pids.current")) or 0))
                best = room if best is None else min(best, room)
    return best


def headroom() -> Optional[int]:
    """Bytes this process's memory cgroup (or any above it) has left before its limit;
    None without a limit, or off Linux."""
    best: Optional[int] = None
    for mount, path, names in _groups():
        # The group as /proc names it, each parent up to the mount; in a container whose
        # cgroup namespace hides the path, the mount's own files are the group's.
        parts = [p for p in path.split("/") if p and p not in (".", "..")]
        folders = [os.path.join(mount, *parts[:n]) for n in range(len(parts), 0, -1)]
        folders.append(mount)
        for folder in folders:
            room = _room(folder, names)
            if room is not None and (best is None or room < best):
                best = room
    return best
