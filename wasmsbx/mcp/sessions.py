"""Sessions: a private scratch folder per session, a CPU and memory budget, an expiry.

A session id is 128 random bits; it is the only way to reach the session, so one client
cannot name another's. A session's folder is created 0700 under the server's private
root and is preopened (as /scratch) only for that session's calls. Calls of one session
run one at a time, so "memory per session" is one instance's linear memory plus the bytes
in the scratch folder. The folder is removed when the session ends, expires, or the
server stops.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from .. import errors
from ..units import format_size

MAX_ENTRIES = 100_000  # a scratch folder with more files than this counts as over budget


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
        self.lock = asyncio.Lock()

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


def scratch_bytes(root: Path) -> int:
    """Bytes under ``root`` (symlinks not followed; too many entries counts as infinite)."""
    total, seen = 0, 0
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > MAX_ENTRIES:
                return 2**62
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
    return total


class Sessions:
    def __init__(self, root: Path, config: Any) -> None:
        self.root = root
        self.config = config
        self.open: dict = {}

    def start(self, owner: Any = None) -> Session:
        self.reap()
        if len(self.open) >= self.config.max_sessions:
            raise errors.LimitExceeded(
                f"session limit: {self.config.max_sessions} sessions are open",
                hint="end a session you no longer need (end_session), or call without one",
                limit_value=self.config.max_sessions,
            )
        sid = secrets.token_hex(16)
        scratch = self.root / f"session-{sid}"
        scratch.mkdir(mode=0o700)
        session = Session(sid, scratch, owner)
        self.open[sid] = session
        return session

    def _owned(self, sid: Optional[str], owner: Any) -> Optional[Session]:
        """The session ``sid`` if ``owner`` started it (no owner: any caller, as in tests
        and the library); a session of another client is as good as absent."""
        session = self.open.get(sid or "")
        if session is not None and session.owner is not None and session.owner != owner:
            return None
        return session

    def get(self, sid: Optional[str], owner: Any = None) -> Session:
        self.reap()
        session = self._owned(sid, owner)
        if session is None:
            raise errors.UsageError(
                "unknown or expired session",
                hint=f"sessions expire after {self.config.session_idle:g} s without a call; "
                "start a new one with start_session",
            )
        return session

    def end(self, sid: str, owner: Any = None) -> bool:
        if self._owned(sid, owner) is None:
            return False
        session = self.open.pop(sid)
        shutil.rmtree(session.scratch, ignore_errors=True)
        return True

    def reap(self, now: Optional[float] = None) -> list:
        """End sessions idle for longer than the expiry (a busy session is never idle)."""
        now = time.monotonic() if now is None else now
        stale = [
            sid
            for sid, s in self.open.items()
            if not s.lock.locked() and now - s.last_used > self.config.session_idle
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
                f"session memory budget spent: the scratch folder holds {format_size(used)} "
                f"of {format_size(budget)}",
                hint="delete files in /scratch (or drop large globals), or start a new session",
                limit_value=budget,
            )
        return left

    def _remove(self, sid: str) -> None:
        session = self.open.pop(sid, None)
        if session is not None:
            shutil.rmtree(session.scratch, ignore_errors=True)

    def close(self) -> None:
        for sid in list(self.open):
            self._remove(sid)
