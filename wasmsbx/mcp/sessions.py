"""Sessions: a private scratch folder per session, a CPU and memory budget, an expiry.

A session id is 128 random bits; it is the only way to reach the session, so one client
cannot name another's. A session's folder is created 0700 under the server's private
root and is preopened (as /scratch) only for that session's calls. Calls of one session
run one at a time, so "memory per session" is one instance's linear memory plus the bytes
in the scratch folder. The folder is removed when the session ends, expires, is
evicted, or the server stops.

Fairness (the cap on open sessions is global): a session idle for ``session_idle`` expires;
when the cap is reached, a newcomer is never refused while some session has no call in
flight: one is evicted instead. The victim is the least recently used idle session of the
*holder* with the most sessions, the newcomer's own holder winning ties, so a holder with
at most ``max_sessions // holders`` sessions is never evicted by another. A holder is
the bearer token a client authenticated with (when the server has tokens: a client cannot
make more of those), else nobody in particular (stdio, HTTP without tokens: an MCP session
id is free to make, so it is no identity): then eviction is plain least-recently-used, so a
client that opens many sessions only pushes out the ones nobody used for longest, and every
newcomer is served. Starting a session counts as a call against the rate limit, so a loop
of start_session cannot evict every idle session at once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any, Optional

from .. import errors
from ..fstree import remove_tree, tree_bytes
from ..units import format_size

MAX_ENTRIES = 100_000  # a scratch folder with more files than this counts as over budget
MAX_DEPTH = 128  # nor one with folders nested deeper than this (fstree.tree_bytes)


def holder_of(owner: Any) -> Any:
    """Whom a session counts against for fairness: the token's principal, else None (one
    anonymous holder). ``owner`` is what tools._client gives: None, or a (principal,
    mcp_session_id) pair.

    An MCP session id is not a holder: a client makes as many as it likes (one initialize
    each, and the 2026 protocol has none), so counting by it let a client that spread its
    sessions over fresh ids keep them all while a client with two sessions under one id,
    or every 2026-protocol client (pooled as one anonymous holder), was evicted first."""
    if not owner:
        return None
    principal, _ = owner
    return ("token", principal) if principal else None


class Session:
    def __init__(self, sid: str, scratch: Path, owner: Any = None) -> None:
        self.id = sid
        self.scratch = scratch
        # The MCP session id (HTTP) of the client that started it: another client holding
        # this session's id is told it does not exist. None over stdio (one client).
        self.owner = owner
        self.created = time.monotonic()
        self.last_used = self.created
        self.cpu_used = 0.0
        self.calls = 0
        self._lock: Optional[asyncio.Lock] = None
        self.holder = holder_of(owner)

    @property
    def lock(self) -> asyncio.Lock:
        """The session's one-call-at-a-time lock, made on first use: inside the event loop
        (Python 3.9's asyncio.Lock binds the loop current when it is made)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def busy(self) -> bool:
        """A call of this session is in flight."""
        return self._lock is not None and self._lock.locked()

    def to_dict(self, config: Any) -> dict:
        return {
            "session": self.id,
            "scratch": "/scratch",
            "calls": self.calls,
            "cpu_seconds_used": round(self.cpu_used, 3),
            "cpu_seconds_left": round(max(0.0, config.session_cpu - self.cpu_used), 3),
            "scratch_bytes": scratch_bytes(self.scratch),
            "memory_budget": format_size(config.session_budget()),
            "idle_expiry_seconds": config.session_idle,
        }


UNMEASURED = 2**62  # what scratch_bytes says of a folder too deep or too full to walk


def scratch_size(used: int) -> str:
    """``used`` (scratch_bytes) as messages say it."""
    if used >= UNMEASURED:
        return (
            f"more than {MAX_ENTRIES:,} files and folders, or folders nested more than "
            f"{MAX_DEPTH} deep"
        )
    return format_size(used)


def scratch_bytes(root: Path) -> int:
    """Bytes under ``root`` (symlinks not followed; too many entries, or folders nested
    deeper than MAX_DEPTH, count as infinite). Read by descriptors: a path past
    PATH_MAX was skipped, so a deep enough chain of folders hid its files from the
    budget (red team round 73)."""
    found = tree_bytes(str(root), MAX_ENTRIES, MAX_DEPTH)
    return UNMEASURED if found is None else found


MAX_OPEN = 4096  # descriptors of a worker looked at (open_deleted_bytes)


def worker_writes(pid: int) -> Optional[int]:
    """Bytes process ``pid`` has written so far (``wchar`` of /proc/PID/io: every write to
    any file or pipe, rewrites and deleted files included); None where it cannot be read.
    One small read of procfs, quick enough for the event loop."""
    try:
        with open(f"/proc/{pid}/io", "rb", buffering=0) as fh:
            data = fh.read(1024)
    except OSError:
        return None
    for line in data.split(b"\n"):
        if line.startswith(b"wchar:"):
            try:
                return int(line[6:])
            except ValueError:
                return None
    return None


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def worker_cpu(pid: int) -> Optional[float]:
    """Seconds of CPU process ``pid`` has used so far (user + system, /proc/PID/stat);
    None where it cannot be read. One small read of procfs, as worker_writes."""
    try:
        with open(f"/proc/{pid}/stat", "rb", buffering=0) as fh:
            data = fh.read(4096)
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()  # (after the name, which may hold anything)
    try:
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (IndexError, ValueError):
        return None


def open_deleted_bytes(pid: int, root: Path) -> int:
    """Bytes of the files under ``root`` that process ``pid`` holds open after they were
    deleted (a name gone from the folder, the disk still taken until they are closed):
    read through /proc/PID/fd, whose links name such a file "PATH (deleted)". 0 where
    /proc cannot be read."""
    folder = f"/proc/{pid}/fd"
    prefix, total = str(root) + os.sep, 0
    try:
        names = os.listdir(folder)[:MAX_OPEN]
    except OSError:
        return 0
    for name in names:
        link = f"{folder}/{name}"
        try:
            target = os.readlink(link)
            if target.startswith(prefix) and target.endswith(" (deleted)"):
                info = os.stat(link)  # (the file itself, through the descriptor)
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
        except OSError:
            continue
    return total


class Sessions:
    def __init__(self, root: Path, config: Any) -> None:
        self.root = root
        self.config = config
        self.open: dict = {}
        self.evicted = 0  # sessions evicted for newcomers since the server started
        self.doomed: list = []  # folders of ended sessions not yet removed (sweep)
        self._sweeps: set = set()  # the tasks removing them

    def start(self, owner: Any = None) -> Session:
        self.reap()
        if len(self.open) >= self.config.max_sessions:
            victim = self.victim(holder_of(owner))
            if victim is None:
                raise errors.LimitExceeded(
                    f"session limit: {self.config.max_sessions} sessions are open and every "
                    "one of them is running a call",
                    hint="retry when a call has finished, or call without a session",
                    limit_value=self.config.max_sessions,
                )
            self._remove(victim.id)
            self.evicted += 1
        sid = secrets.token_hex(16)
        scratch = self.root / f"session-{sid}"
        scratch.mkdir(mode=0o700)
        session = Session(sid, scratch, owner)
        self.open[sid] = session
        return session

    def victim(self, newcomer: Any = None) -> Optional[Session]:
        """The session to evict for a newcomer (holder ``newcomer``): the least recently
        used one with no call in flight, of the holder that has the most sessions (the
        newcomer's own holder first among equals); None if every session is busy."""
        counts: dict = {}
        for s in self.open.values():
            counts[s.holder] = counts.get(s.holder, 0) + 1
        idle = [s for s in self.open.values() if not s.busy()]
        if not idle:
            return None
        return min(
            idle,
            key=lambda s: (-counts[s.holder], s.holder != newcomer, s.last_used),
        )

    def _owned(self, sid: Optional[str], owner: Any) -> Optional[Session]:
        """The session ``sid`` if ``owner`` started it (no owner: any caller, as in tests
        and the library); a session of another client is as good as absent. With tokens
        the client is its token: one that initialized again (its MCP session evicted at
        the SDK's cap, or its connection lost) still reaches its sessions (red team 123:
        16 initialize requests of another token put them out of its reach for good);
        without tokens, the MCP session that started it."""
        session = self.open.get(sid or "")
        if session is None or session.owner is None:
            return session
        if session.owner[0] is not None or (owner and owner[0] is not None):
            return session if owner and owner[0] == session.owner[0] else None
        return session if session.owner == owner else None

    def mcp_owners(self) -> set:
        """The MCP session ids that started the sessions open (serve.evict_idle_mcp_sessions
        evicts those last)."""
        return {s.owner[1] for s in self.open.values() if s.owner and s.owner[1]}

    def get(self, sid: Optional[str], owner: Any = None) -> Session:
        self.reap()
        session = self._owned(sid, owner)
        if session is None:
            raise errors.UsageError(
                "unknown or expired session",
                hint=f"sessions expire after {self.config.session_idle:g} s without a call, "
                "and when the server is full the least recently used are evicted; start a "
                "new one with start_session",
            )
        return session

    def end(self, sid: str, owner: Any = None) -> bool:
        session = self._owned(sid, owner)
        if session is None:
            return False
        if session.busy():
            # (its folder was removed under the running call, which went on writing into
            # it and then failed on a session that no longer existed: round 73)
            raise errors.UsageError(
                "the session is running a call; end it once the call has returned",
                hint="wait for the call, or cancel it (notifications/cancelled), then "
                "end the session",
            )
        self._remove(sid)
        return True

    def reap(self, now: Optional[float] = None) -> list:
        """End sessions idle for longer than the expiry (a busy session is never idle)."""
        now = time.monotonic() if now is None else now
        stale = [
            sid
            for sid, s in self.open.items()
            if not s.busy() and now - s.last_used > self.config.session_idle
        ]
        for sid in stale:
            self._remove(sid)
        return stale

    def check_budget(self, session: Session) -> int:
        """The memory a call of this session may use; an error when the budget is spent."""
        if session.cpu_used >= self.config.session_cpu:
            raise errors.LimitExceeded(
                f"session CPU budget spent: {session.cpu_used:.1f} s of "
                f"{self.config.session_cpu:g} s",
                hint="end this session and start a new one",
                limit_value=self.config.session_cpu,
            )
        budget = self.config.session_budget()
        used = scratch_bytes(session.scratch)
        left = budget - used
        if left <= 64 * 1024:
            raise errors.MemoryLimitExceeded(
                f"session memory budget spent: the scratch folder holds {scratch_size(used)} "
                f"of {format_size(budget)}",
                # (not "delete files": every call of the session is refused from now on,
                # so nothing in it can make room: red team round 40)
                hint="end this session and start a new one; within a session, keep "
                "/scratch and large globals under --session-memory",
                limit_value=budget,
            )
        return left

    def _remove(self, sid: str) -> None:
        """Forget the session; its folder is removed off the event loop (a folder of
        100,000 files took 1.8 s, every client waiting: round 73), or here if no loop
        runs."""
        session = self.open.pop(sid, None)
        if session is None:
            return
        self.doomed.append(session.scratch)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.sweep()
            return
        task = loop.create_task(asyncio.to_thread(self.sweep))
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    async def swept(self) -> None:
        """Wait for the folders being removed (the server's close: none outlives it)."""
        if self._sweeps:
            await asyncio.gather(*list(self._sweeps), return_exceptions=True)

    def sweep(self) -> None:
        """Remove the folders of sessions that have ended (any thread; any shape of tree:
        fstree.remove_tree)."""
        while True:
            try:
                folder = self.doomed.pop()
            except IndexError:
                return
            remove_tree(str(folder))

    def close(self) -> None:
        for sid in list(self.open):
            session = self.open.pop(sid, None)
            if session is not None:
                self.doomed.append(session.scratch)
        self.sweep()
