"""A pool of worker processes (see worker.py), driven from the server's event loop.

Each worker runs one call at a time. A call that passes its hard deadline, or whose caller
goes away (the MCP request is cancelled), costs the worker its life: it is killed, never
reused, and a fresh one is started in the background. So a guest that hangs in a blocking
WASI call, loops in a runtime bug, or crashes the runtime never blocks the event loop or
another call, and never leaves state behind.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys
from typing import Any

from .. import errors
from ..units import format_limit


class WorkerDied(Exception):
    """The worker exited, or broke the protocol, during a call."""


class ReplyTooLarge(WorkerDied):
    """The worker's reply passed the reply limit (the server's output limit): the worker
    is alive and well, its answer too big to take (it is stopped all the same)."""


class _Worker:
    def __init__(self, proc: Any) -> None:
        self.proc = proc

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def request(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req).encode("utf-8") + b"\n")
        try:
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        except (ConnectionError, BrokenPipeError) as exc:
            raise WorkerDied(f"the worker's pipe broke: {exc}") from None
        except (ValueError, asyncio.LimitOverrunError):
            raise ReplyTooLarge() from None
        if not line:
            code = await self.proc.wait()
            raise WorkerDied(f"the worker process exited with status {code} during the call")
        try:
            return json.loads(line)
        except (ValueError, RecursionError):  # (RecursionError: nested deeper than this stack)
            raise WorkerDied("the worker sent a malformed reply") from None

    def kill(self) -> None:
        if self.alive:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass


class WorkerPool:
    """Up to ``size`` workers; idle ones are kept warm (interpreters loaded) for the next call."""

    def __init__(
        self, size: int, warm: list, reply_limit: int, spawn_timeout: float, cwd: str
    ) -> None:
        self.size = size
        self.cwd = cwd  # python -m puts the cwd first on sys.path: a private, empty-ish dir
        self.warm = warm  # requests ({"op": "warm", ...}) each new worker runs first
        self.reply_limit = reply_limit
        self.spawn_timeout = spawn_timeout
        self.idle: list = []
        self.starting = 0
        self._landing: list = []  # futures of acquire()s waiting for a worker starting
        self.all: set = set()
        self._tasks: set = set()

    async def _spawn(self) -> _Worker:
        from .worker import PARENT_VARIABLE

        env = dict(os.environ)
        # (made by the event loop's thread, which lives as long as the server: the
        # worker's PR_SET_PDEATHSIG fires when the thread that made it ends)
        env[PARENT_VARIABLE] = str(os.getpid())
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "wasmsbx.mcp.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None if os.environ.get("WASMSBX_DEBUG") else asyncio.subprocess.DEVNULL,
                limit=self.reply_limit,
                env=env,
                cwd=self.cwd,
            )
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            raise errors.ResourceExhausted(  # (a bare "Error executing tool": red team 143)
                f"cannot start a worker: the server is out of file descriptors ({exc.strerror})",
                hint="raise the server's open-files limit (ulimit -n), or lower --max-concurrent",
            ) from None
        worker = _Worker(proc)
        self.all.add(worker)
        try:
            for req in self.warm:
                reply = await asyncio.wait_for(worker.request(req), self.spawn_timeout)
                if not reply.get("ok"):
                    message = reply.get("error", {}).get("message", "unknown error")
                    raise errors.BackendUnavailable(f"a worker could not load: {message}")
                if (reply.get("result") or {}).get("module_load") == "compiled":
                    _say_compiled(req)
        except BaseException:
            worker.kill()
            self.all.discard(worker)
            raise
        return worker

    def replenish(self) -> None:
        """Keep one warm worker ready while the pool has room (started in the background)."""
        busy = len(self.all) - len(self.idle)
        if self.idle or self.starting or busy + self.starting >= self.size:
            return
        self.starting += 1
        task = asyncio.ensure_future(self._spawn_idle())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn_idle(self) -> None:
        worker = None
        try:
            worker = await self._spawn()
        except BaseException:
            return
        finally:
            self.starting -= 1
            if worker is not None:
                self.idle.append(worker)
            waiting, self._landing = self._landing, []
            for landed in waiting:  # (each looks again: the worker, or none, and no spare)
                if not landed.done():
                    landed.set_result(None)

    async def acquire(self) -> _Worker:
        """An idle worker; else the spare being started (``replenish``), waited for; else
        a new one. A call that came while the spare started had started a worker of its
        own, and the spare then made the pool one more than ``size``."""
        while True:
            while self.idle:
                worker = self.idle.pop()
                if worker.alive:
                    return worker
                self.all.discard(worker)
            if not self.starting:
                return await self._spawn()
            landed = asyncio.get_running_loop().create_future()
            self._landing.append(landed)
            await landed

    async def call(self, req: dict, deadline: float, on_worker: Any = None) -> dict:
        """Run ``req`` on a worker; kill the worker if it is late, dies or is cancelled.
        ``on_worker(pid)``: told which process runs it (a session's budget watch)."""
        worker = await self.acquire()
        self.replenish()
        if on_worker is not None:
            on_worker(worker.proc.pid)
        reusable = False
        try:
            reply = await asyncio.wait_for(worker.request(req), deadline)
            reusable = True
            return reply
        except asyncio.TimeoutError:
            raise errors.TimeoutExceeded(
                f"timeout: the call did not finish within {deadline:g} s, so its worker "
                "process was stopped",
                hint="the guest may be blocked (e.g. sleeping or reading); tighten the code "
                "or ask for a longer limits.timeout within the server's policy",
                limit_value=deadline,
            ) from None
        except ReplyTooLarge:
            raise errors.OutputLimitExceeded(
                f"output limit reached: the call's reply (its results and output) was "
                f"larger than the server allows ({format_limit(self.reply_limit)})",
                hint="ask for less (a smaller result, less output), or run the server with "
                "a larger --max-output",
                limit_value=self.reply_limit,
            ) from None
        except WorkerDied as exc:
            raise errors.TrapError(
                f"the sandbox worker stopped during the call: {exc}",
                hint="the guest or the runtime crashed the worker; the server is unaffected",
            ) from None
        finally:
            if reusable and worker.alive:
                self.idle.append(worker)
            else:
                worker.kill()
                self.all.discard(worker)
            self.replenish()

    def kill_all(self) -> None:
        for worker in list(self.all):
            worker.kill()

    async def close(self) -> None:
        for worker in list(self.all):
            worker.kill()
        for worker in list(self.all):
            try:
                await asyncio.wait_for(worker.proc.wait(), 5)
            except (asyncio.TimeoutError, ProcessLookupError):
                pass
        self.all.clear()
        self.idle.clear()


def _say_compiled(req: dict) -> None:
    """A worker's warm-up compiled an interpreter: the cache did not hold it for this
    policy's engine settings and this user's key (or the policy turns the cache off).
    Said on stderr, free on both transports: it costs seconds of CPU per occurrence."""
    name = os.path.basename(str(req.get("module")))
    print(
        f"wasmsbx mcp: a new worker compiled {name} (not in the cache for this policy); "
        "`wasmsbx mcp setup` with the same --policy, cache and trust folder avoids it",
        file=sys.stderr,
        flush=True,
    )


def deadline_for(timeout: float, grace: float) -> float:
    """The hard deadline of a call: the guest's own timeout plus the time to read, compile
    (a module not seen before) and report; past it, the worker is stopped."""
    return timeout + grace
