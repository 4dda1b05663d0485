"""The MCP server's work, without the MCP SDK: admit, tighten, run in a worker, account.

Every tool call goes through :meth:`Service.run`: request size, rate and concurrency are
checked first (refusals cost no worker), then the call's policy is built from the server's
ceiling, the session's budget is applied, and a worker runs the guest under a hard
deadline. Failures come back as :class:`wasmsbx.errors.WasmsbxError`; the MCP layer
(tools.py) turns them into tool errors the model can read and act on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .. import errors
from ..fstree import remove_tree
from ..units import format_limit, format_size
from . import config as config_mod
from . import interpreters
from .pool import WorkerPool, deadline_for
from .sessions import (
    Sessions,
    open_deleted_bytes,
    scratch_bytes,
    scratch_size,
    worker_cpu,
    worker_writes,
)

SCRATCH_POLL = 0.2  # seconds between looks at a running session's scratch folder, at most
WRITES_TICK = 0.01  # seconds between reads of the worker's write count (_scratch_over)
CPU_TICK = 0.05  # seconds between reads of a session call's worker's CPU time (_cpu_over)
WRITES_STEP = 64 * 1024  # bytes written past which the folder is looked at again, at least
SAVE_RESERVE = 32 * 1024  # of a session's budget, kept for the globals a call saves

# A new worker loading the interpreters (compiling them the first time).
SPAWN_TIMEOUT = config_mod.INTERPRETER_COMPILE_TIMEOUT + 60


def _refuse_private_grants(grants: Any, root: Path) -> None:
    """PolicyError (exit 101) if the ceiling policy grants a folder that holds, or lies
    in, the server's private folder (every session's /scratch, the private module
    copies) or the interpreters' folder: a policy granting `$TMPDIR` (`/tmp`) let a call
    read, and with a read-write grant change, other sessions' files and the copies the
    workers run; one granting the data folder let a guest replace an interpreter every
    later client's code runs in (red team 132)."""
    from ..native.trust import _overlaps
    from ..native.trustdir import real
    from .interpreters import data_dir

    private = [(real(str(root)), "the server's private folder (every session's /scratch)", False)]
    # (the interpreters are public wheels: only writing there matters; a read-only grant
    # of a home folder holding them was refused: red team 134)
    private.append((real(str(data_dir())), "the MCP interpreters, to write", True))
    for grant in grants:
        host = real(str(grant.host))
        for folder, what, writes in private:
            if (grant.writable or not writes) and _overlaps(host, folder):
                raise errors.PolicyError(
                    f"the grant of {errors.inert(str(grant.host))} would give calls "
                    f"{what} ({errors.inert(folder)})",
                    hint="grant a folder that neither holds nor lies in it (not all of "
                    "$TMPDIR), or set TMPDIR / WASMSBX_DATA_DIR elsewhere",
                    key="filesystem",
                )


def _refuse_nested_in_writable(policy: Any, module_dirs: Any) -> None:
    """PolicyError (exit 101) if a grant or a --module-dir lies inside a folder the
    ceiling policy grants read-write, or is reached through one (a bind mount of it:
    red team 156), as the files a run keeps are judged (``writable_grant_on_way``). A
    guest there can remove that folder and put a link in its place (WASI lets it make a
    link that leads out of its grant), and the server resolves grants and module folders
    again on every call: a --module-dir so swapped let module_path name any file of the
    host, and a grant swapped for a link to $TMPDIR gave later calls every session's
    /scratch (red team 154). A folder inside a read-write grant is no safer from its
    guests than the grant itself anyway. The granted folder itself, by any name, is."""
    from ..runner.sandbox import _identity, writable_grant_on_way

    # (as given, not their real paths: a --module-dir W/L, L a link in the read-write
    # grant W, is reached through W, and its real path said nothing of it: red team
    # 158. So "g/../other", walked through g, is refused too.)
    inner = [(str(g.host), f"the grant of {g.host}", g) for g in policy.grants]
    inner += [(str(d), f"--module-dir {d}", None) for d in module_dirs]
    for path, what, own in inner:
        found = writable_grant_on_way(policy, path)
        if found is None or found is own:
            continue
        identity = _identity(path)
        if identity is not None and identity == _identity(str(found.host)):
            continue  # (the granted folder itself, by another name: its root stays)
        raise errors.PolicyError(
            f"{errors.inert(what)} lies inside the read-write grant of "
            f"{errors.inert(str(found.host))}: a guest could replace it with a link to "
            "anywhere",
            hint="grant the outer folder alone, or keep the inner one outside it",
            key="filesystem",
        )


class Service:
    def __init__(self, config: config_mod.ServerConfig) -> None:
        self.config = config
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))  # 0700, ours alone
        try:
            _refuse_private_grants(config.policy.grants, self.root)
            _refuse_nested_in_writable(config.policy, config.module_dirs)
        except BaseException:
            os.rmdir(self.root)
            raise
        self._alive = _hold_alive(self.root)  # (released when this process ends)
        (self.root / "modules").mkdir(mode=0o700)
        self.sessions = Sessions(self.root, config)
        # Whether the server has bearer tokens (HTTP): only then is a request's
        # Authorization header who is calling (tools._client); set by serve.serve.
        self.tokens = False
        self.rate = config_mod.RateLimiter(config.calls_per_minute, window=config.rate_window)
        self.active = 0
        self.refused = 0  # calls the rate or concurrency limit refused since the last log
        self._labels: dict = {}  # private module copy -> the name the client knows it by
        self._cacheable: set = set()  # private module copies the user's cache may keep
        self.interpreters = self._find_interpreters()
        reply_limit = 8 * config.output_ceiling() + 4 * 1024 * 1024  # JSON escapes \u00XX
        self.pool = WorkerPool(
            config.max_concurrent, self._warm(), reply_limit, SPAWN_TIMEOUT, str(self.root)
        )

    # ------------------------------------------------------------------ lifecycle
    def _find_interpreters(self) -> dict:
        found = {}
        for name in interpreters.INTERPRETERS:
            try:
                found[name] = interpreters.path_of(name)
            except errors.WasmsbxError as exc:
                found[name] = exc  # the tool says so when called; modules still run
        return found

    def _warm(self) -> list:
        policy = config_mod.to_wire(
            config_mod.interpreter_policy(config_mod.call_policy(self.config))
        )
        return [
            {
                "op": "warm",
                "module": str(path),
                "sha256": interpreters.INTERPRETERS[n].sha256,
                "policy": policy,
            }
            for n, path in self.interpreters.items()
            if isinstance(path, Path)
        ]

    def start(self) -> None:
        """Start the first worker and the session reaper (call from the running loop);
        remove, in a thread, what servers killed before they could clean up left."""
        self.pool.replenish()
        self._reaper = asyncio.ensure_future(self._reap_forever())
        threading.Thread(target=remove_left_behind, args=(self.root,), daemon=True).start()

    async def _reap_forever(self) -> None:
        """Expired sessions go even when no call comes to notice them."""
        while True:
            await asyncio.sleep(max(0.5, min(30.0, self.config.session_idle / 4)))
            try:
                self.sessions.reap()
            except Exception:  # noqa: BLE001 - (one failure must not end expiry for good)
                pass

    async def close(self) -> None:
        reaper = getattr(self, "_reaper", None)
        if reaper is not None:
            reaper.cancel()
        await self.pool.close()
        await self.sessions.swept()  # (folders being removed: finished first)
        self.close_now()

    def close_now(self) -> None:
        """Synchronous last resort (a signal, a crash of the loop): no worker and no session
        folder outlives the server."""
        self.pool.kill_all()
        self.sessions.close()
        remove_tree(str(self.root))  # (any tree a guest made: fstree)
        alive, self._alive = self._alive, None
        if alive is not None:
            os.close(alive)

    # ------------------------------------------------------------------ admission
    def check_request(self, *parts: Any) -> int:
        """Bytes of the call's arguments, refused over --max-request."""
        size = sum(_size(p) for p in parts)
        if size > self.config.max_request:
            raise errors.LimitExceeded(
                f"request too large: {format_size(size)} of arguments, the server accepts "
                f"{format_size(self.config.max_request)}",
                hint="send less code or a smaller module; modules can also be given by path "
                "from a directory the server allows",
                limit_value=self.config.max_request,
            )
        return size

    @staticmethod
    def argv_text(name: str, value: str) -> str:
        """Text that travels as a C string (WASI argv): no NUL, valid Unicode."""
        if "\x00" in value:
            raise errors.UsageError(f"{name} contains a NUL character, which argv cannot carry")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.UsageError(f"{name} is not valid Unicode (a lone surrogate)") from None
        return value

    def module(self, path: Optional[str], data_b64: Optional[str]) -> tuple:
        """(server-private copy, sha256, label) of the module named by path or given as base64.

        The worker only ever reads the private copy, so a file swapped after the check
        cannot be what runs."""
        if bool(path) == bool(data_b64):
            raise errors.UsageError(
                "give exactly one of module_path and module_base64",
                hint="module_path must lie in a directory the server allows (see the limits tool)",
            )
        if data_b64:
            try:
                data = base64.b64decode("".join(data_b64.split()), validate=True)
            except (binascii.Error, ValueError):
                raise errors.UsageError("module_base64 is not valid base64") from None
            label, real, names = "module.wasm", None, 0
        else:
            data, real, names = self._read_allowed(path)
            label = path
        if not data:
            raise errors.ModuleError("the module is empty")
        webassembly_only(data, "module_base64" if data_b64 else f"module_path {path!r}")
        digest = hashlib.sha256(data).hexdigest()
        # One copy per call (removed when the call ends: see run), so a long-running server
        # does not collect modules; workers key compiled code on the digest, not the name.
        copy = self.root / "modules" / f"{digest}-{os.urandom(6).hex()}.wasm"
        copy.write_bytes(data)
        self._labels[str(copy)] = label
        if path and names == 1 and self._operators(real):  # (a second name may be
            # anywhere, in a folder granted read-write too: red team 153)
            self._cacheable.add(str(copy))
        return str(copy), digest, label

    def cacheable(self, module: str) -> bool:
        """Whether the module of a call (its private copy) may be compiled through the
        user's cache: one named by a path the client cannot write (see _operators)."""
        return module in self._cacheable

    def _operators(self, real: Path) -> bool:
        """Whether the module file at ``real`` (its real path) lies where only the
        operator puts modules: a --module-dir or a read-only grant, and in no folder the
        policy grants read-write. A client writes there through its own guests (run_python
        into a granted folder), and such a module, run by its path, was compiled into the
        user's cache: a dozen of them evicted the interpreters, compiled again by the next
        worker (red team 151). As a module sent as module_base64, it is not cached."""
        grants = self.config.policy.grants
        if any(_within(real, Path(g.host).resolve()) for g in grants if g.writable):
            return False
        kept = [Path(d).resolve() for d in self.config.module_dirs]
        kept += [Path(g.host).resolve() for g in grants if not g.writable]
        return any(_within(real, d) for d in kept)

    def allowed_dirs(self) -> list:
        dirs = [Path(d).resolve() for d in self.config.module_dirs]
        dirs += [Path(g.host).resolve() for g in self.config.policy.grants]
        return dirs

    def _read_allowed(self, path: str) -> tuple:
        """(the bytes, the real path, its number of names) of ``path`` if it lies inside
        an allowed directory, and not in the server's private folder (every session's
        /scratch: a --module-dir holding $TMPDIR reached them, red team 153).
        The check is made on the file actually opened (/proc/self/fd), so symlinks and
        renames cannot escape."""
        allowed = self.allowed_dirs()
        if not allowed:
            raise errors.PolicyError(
                f"module_path {path!r}: this server reads no modules from disk",
                hint="send the module as module_base64, or start the server with --module-dir",
            )
        if "\x00" in path:
            raise errors.UsageError("module_path contains a NUL character")
        if not os.path.isabs(path):
            raise errors.UsageError(
                f"module_path {path!r} is not absolute",
                hint="allowed directories: " + ", ".join(str(d) for d in allowed),
            )
        # Checked before opening (opening some devices has effects) and again on the file
        # actually opened (a link swapped in between).
        # (realpath, not Path.resolve: a link loop raised RuntimeError there, a bare "Error
        # executing tool" for the client and a traceback on the server's stderr, and told
        # whether a path outside the allowed directories was a loop: red team round 40)
        self._inside(path, Path(errors.real_path(path)), allowed)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOCTTY", 0) | os.O_NONBLOCK)
        except OSError as exc:
            raise errors.InputError(f"module_path {path!r}: cannot open: {exc.strerror}") from None
        import stat

        try:
            # Checked on the descriptor before it becomes a file object: Python refuses to
            # make one of a directory (IsADirectoryError, which no tool error caught).
            real = (
                Path(os.readlink(f"/proc/self/fd/{fd}"))
                if os.path.exists("/proc/self/fd")
                else Path(errors.real_path(path))
            )
            self._inside(path, real, allowed)
            if _within(real, Path(self.root).resolve()):
                raise errors.PolicyError(
                    f"module_path {path!r} is in the server's private folder",
                    hint="name a module of a --module-dir or a granted folder",
                    key="module_path",
                )
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise errors.InputError(f"module_path {path!r} is not a regular file")
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as fh:
            try:
                data = fh.read(self.config.max_request + 1)
            except OSError as exc:
                raise errors.InputError(f"module_path {path!r}: {exc.strerror}") from None
        if len(data) > self.config.max_request:
            raise errors.LimitExceeded(
                f"module too large: over {format_size(self.config.max_request)}",
                limit_value=self.config.max_request,
            )
        return data, real, info.st_nlink

    @staticmethod
    def _inside(path: str, real: Path, allowed: list) -> None:
        if not any(_within(real, d) for d in allowed):
            raise errors.PolicyError(
                f"module_path {path!r} is outside the directories this server allows",
                hint="allowed: " + ", ".join(str(d) for d in allowed),
                key="module_path",
            )

    def interpreter(self, name: str) -> Path:
        found = self.interpreters[name]
        if isinstance(found, Exception):
            raise found
        return found

    def start_session(self, owner: Any = None) -> Any:
        """A new session; it counts as a call against the rate limit (a full server evicts
        an idle session for it, and an unthrottled loop would evict them all at once)."""
        self.rate.admit()
        return self.sessions.start(owner)

    # ------------------------------------------------------------------ running
    async def run(
        self,
        tool: str,
        req: dict,
        limits: Optional[dict] = None,
        session_id: Optional[str] = None,
        log_args: Optional[list] = None,
        owner: Any = None,
    ) -> dict:
        """Admit the call, run ``req`` in a worker, account for it; the result as data.
        ``owner``: the MCP client session calling (a wasmsbx session is its starter's)."""
        log = None
        try:
            # Admitted before anything is logged: a call the rate or concurrency limit
            # refuses wrote its whole arguments first, and refusals are cheap (red team
            # round 92: the log grew 60-90 MB/s). Refusals are counted instead, in the
            # next call's log.
            self._admit()
            # (in the try: a log that cannot be opened left the call's module copy behind,
            # red team round 40)
            log = self._log(tool, req, log_args or [])
            result = await self._admitted(req, limits, (session_id, owner), log)
        except BaseException as exc:
            if isinstance(exc, errors.WasmsbxError):
                self._scrub(exc, req.get("module"))
            if log is not None:
                log.failure(exc)
                log.exit(getattr(exc, "exit_code", errors.ExitCode.INTERRUPTED))
            raise
        finally:
            self._drop_copy(req.get("module"))
        if log is not None:
            log.exit(int(result.get("exit_code") or 0))
        return result

    def _scrub(self, exc: errors.WasmsbxError, module: Optional[str]) -> None:
        """Errors name the module as the client gave it (its path, or module.wasm for
        bytes), not by a private copy: this call's, or the one a worker compiled the same
        module from (workers keep compiled modules by digest)."""
        label = self._labels.get(module or "")
        if label is None:
            return
        exc.message = scrubbed(exc.message, label)
        exc.hint = scrubbed(exc.hint, label)
        for key, value in list(exc.context.items()):
            exc.context[key] = scrubbed(value, label)

    def label(self, module: Optional[str]) -> Optional[str]:
        """How the client named the module of a call still running (_scrub)."""
        return self._labels.get(module or "")

    def _drop_copy(self, module: Optional[str]) -> None:
        """Remove the call's private module copy (never an interpreter)."""
        self._labels.pop(module or "", None)
        self._cacheable.discard(module or "")
        if module and Path(module).parent == self.root / "modules":
            try:
                os.unlink(module)
            except FileNotFoundError:
                pass

    def _admit(self) -> None:
        """The rate and concurrency limits: LimitExceeded (counted, for the audit log)
        when they refuse the call. (No await between this and ``_admitted``'s count.)"""
        try:
            self.rate.admit()
            if self.active >= self.config.max_concurrent:
                raise errors.LimitExceeded(
                    f"busy: {self.active} calls are running, the server allows "
                    f"{self.config.max_concurrent} at once",
                    hint="wait for a call to finish, then retry",
                    limit_value=self.config.max_concurrent,
                )
        except errors.WasmsbxError:
            self.refused += 1
            raise

    async def _admitted(self, req: dict, limits: Any, asked: tuple, log: Any) -> dict:
        self.active += 1
        try:
            session_id, owner = asked
            session = self.sessions.get(session_id, owner) if session_id else None
            if session is None:
                return await self._execute(req, limits, None, log)
            if session.busy():
                raise errors.UsageError(
                    "this session is running another call",
                    hint="calls of one session run one at a time; wait for the other",
                )
            async with session.lock:
                try:
                    return await self._execute(req, limits, session, log)
                finally:
                    session.last_used = time.monotonic()
                    session.calls += 1
        finally:
            self.active -= 1

    async def _execute(self, req: dict, limits: Any, session: Any, log: Any) -> dict:
        """Build the call's policy, run it in a worker under a hard deadline, account."""
        policy = config_mod.call_policy(self.config, limits)
        self._check_fuel(req["op"], policy)
        grants, room = await self._enter_session(req, policy, session) if session else ((), 0)
        req["policy"] = config_mod.to_wire(policy, grants)
        # (what the engine's memory reservation is sized from: the ceiling's limit, never
        # the call's, see worker.Worker.sandbox)
        req["engine_memory"] = self.config.policy.values["limits.memory"]
        deadline = deadline_for(policy.values["limits.timeout"], self.config.grace)
        started = time.monotonic()
        try:
            if session is None:
                reply = await self.pool.call(req, deadline)
            else:
                reply = await self._watched(req, deadline, session, room)
        except BaseException:
            if session is not None:  # killed or cancelled: charge the wall time
                session.cpu_used += time.monotonic() - started
            raise
        if session is not None:
            session.cpu_used += float(reply.get("cpu") or 0)
        return self._outcome(reply, policy, session, log)

    async def _watched(self, req: dict, deadline: float, session: Any, room: int) -> dict:
        """A session's call, its scratch folder watched while it runs: past the session's
        budget the call is stopped (its worker killed). RLIMIT_FSIZE in the worker bounds
        each file; this bounds their sum (``_scratch_over``). ``room``: what the folder
        had left of the budget when the call began."""
        running: list = []  # the worker's pid, once it has one
        call = asyncio.ensure_future(self.pool.call(req, deadline, running.append))
        watch = asyncio.ensure_future(self._scratch_over(session, running, room))
        cpu = asyncio.ensure_future(
            self._cpu_over(running, self.config.session_cpu - session.cpu_used)
        )
        try:
            await asyncio.wait({call, watch, cpu}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            cpu.cancel()
            if not call.done():
                call.cancel()
                # (its worker killed before this call's slot is given back: the next
                # call's worker had started while it still ran)
                await asyncio.wait({call})
        if call.done() and not call.cancelled():
            return call.result()
        if cpu.done() and not cpu.cancelled():
            raise errors.LimitExceeded(
                f"session CPU budget spent: the call used the {cpu.result():.2f} s of CPU "
                f"the session had left of {self.config.session_cpu:g} s, and was stopped",
                hint="end this session and start a new one",
                limit_value=self.config.session_cpu,
            )
        used = watch.result()
        budget = self.config.session_budget()
        raise errors.MemoryLimitExceeded(
            f"session memory budget: the call wrote {scratch_size(used)} into /scratch, "
            f"the session may hold {format_size(budget)}; the call was stopped",
            hint="write less into /scratch (delete what you no longer need), or end this "
            "session and start a new one",
            limit_value=budget,
        )

    async def _cpu_over(self, running: list, left: float) -> float:
        """Returns once the call's worker has used ``left`` seconds of CPU since it was
        first seen (read from /proc every CPU_TICK): a session's call is stopped when its
        CPU budget runs out, not only refused after (red team 123: with 0.37 s of 1 s
        left, a call ran its whole 8 s timeout). Never, where /proc cannot say."""
        start = None
        while True:
            await asyncio.sleep(CPU_TICK)
            used = worker_cpu(running[0]) if running else None
            if used is None:
                continue
            if start is None:
                start = used
            elif used - start >= left:
                return left

    async def _scratch_over(self, session: Any, running: list, room: int) -> int:
        """What the session's folder holds once it passes the budget: its files, and
        the files of it the call's worker deleted but keeps open (a guest that unlinked
        five files it went on writing held 1 GB of disk under a 256 MiB budget: red
        team round 75).

        The folder is measured every SCRATCH_POLL seconds, and sooner once the worker has
        written an eighth of what the budget had left at the last measure (its write
        count, /proc/PID/io, read every WRITES_TICK): a guest writing 600 MB/s passed a
        48 MiB budget by up to 8.6 times within one 0.2 s poll (red team round 79). A
        write count is not the folder's size (a file rewritten, or deleted, counts each
        time), so it only says when to measure. Measures take at most half the time
        (a folder of 100,000 files takes tens of milliseconds). What is left: a guest
        writes into the page cache at up to 3 GB/s, so a call can still pass the budget
        by what it writes in a tick or two."""
        loop = asyncio.get_running_loop()
        budget = self.config.session_budget()
        measured_at = loop.time()
        written_then: Optional[int] = None  # the worker's write count at the last measure
        cost = 0.0  # seconds the last measure took
        while True:
            await asyncio.sleep(WRITES_TICK)
            written = worker_writes(running[0]) if running else None
            if written_then is None:
                written_then = written
            now = loop.time()
            due = now - measured_at >= SCRATCH_POLL
            if not due and written is not None and written_then is not None:
                step = max(WRITES_STEP, room // 8)
                due = written - written_then >= step and now - measured_at >= cost
            if not due:
                continue
            written_then = written
            used = await asyncio.to_thread(scratch_bytes, session.scratch)
            if running and used <= budget:
                used += await asyncio.to_thread(open_deleted_bytes, running[0], session.scratch)
            if used > budget:
                return used
            room = budget - used
            cost, measured_at = loop.time() - now, loop.time()

    def _check_fuel(self, op: str, policy: Any) -> None:
        if op in ("python", "javascript") and (
            policy.values["limits.fuel"] is not None and self.config.policy.fuel is None
        ):
            # Metering changes the machine code: the interpreters are compiled once, as the
            # server's policy says, and a per-call switch would mean compiling 20 MB again.
            raise errors.UsageError(
                "limits.fuel: the server's policy does not meter fuel, so interpreter calls "
                "cannot be metered per call",
                hint="tighten limits.timeout instead, or start the server with a policy that "
                "sets limits.fuel",
            )

    async def _enter_session(self, req: dict, policy: Any, session: Any) -> tuple:
        """The session's budget caps the call's memory; its folder is granted as /scratch.
        (grants, what the session's budget has left now)."""
        from ..policy import Grant

        # A hostile session may hold many files: walk them off the event loop.
        left = await asyncio.to_thread(self.sessions.check_budget, session)
        policy.values["limits.memory"] = min(policy.values["limits.memory"], left)
        # No one file in /scratch grows past what is left, less room for the globals the
        # guest saves at the end of the call (check_budget leaves at least that much): a
        # file stopped at EFBIG alone must not take the folder over the budget.
        req["file_limit"] = max(4096, left - SAVE_RESERVE)
        req["scratch"] = str(session.scratch)
        return (Grant(str(session.scratch), "/scratch", True),), left

    def _outcome(self, reply: dict, policy: Any, session: Any, log: Any) -> dict:
        """The worker's reply as the tool's result, or the error it carries."""
        result = reply.get("result") or {}
        if log is not None and result.get("sandbox"):
            log.event("sandbox", **result["sandbox"], policy=policy.source)
        if not reply.get("ok"):
            raise rebuild_error(reply.get("error") or {})
        result.pop("sandbox", None)
        result["cpu_seconds"] = reply.get("cpu")
        if log is not None:
            log.usage(_Stats(result.get("stats") or {}))
        if session is not None:
            result["session"] = session.id
            result["session_cpu_seconds_left"] = round(
                max(0.0, self.config.session_cpu - session.cpu_used), 3
            )
        return result

    def _log(self, tool: str, req: dict, args: list) -> Any:
        if not self.config.audit_log:
            return None
        from ..auditlog import AuditLog

        log = AuditLog(self.config.audit_log)
        func = req.get("function")
        named = {}
        if isinstance(func, str) and len(func) > FUNCTION_LOGGED:  # (as the arguments are)
            named = _digest_of("function", func)
            func = func[:FUNCTION_LOGGED] + "..."
        # A module given by path is logged by that path; one sent as bytes by its digest
        # (in the sandbox event): the private copy it ran from is gone after the call.
        # Arguments as given when short, else their count, size and SHA-256 (as ``code``
        # is): a client's megabyte of argv is not the log's to keep.
        text = json.dumps(args, default=str, ensure_ascii=False)
        shown = len(text) <= ARGS_LOGGED
        log.start(req.get("source"), func, args if shown else [])
        summary = {} if shown else {"args_count": len(args), **_digest_of("args", text)}
        code = req.get("code")
        refused, self.refused = self.refused, 0
        log.event(
            "mcp",
            tool=tool,
            code_sha256=hashlib.sha256(code.encode()).hexdigest() if code else None,
            code_bytes=len(code.encode()) if code else None,
            **summary,
            **named,
            **({"refused_before": refused} if refused else {}),
        )
        return log


ARGS_LOGGED = 1024  # characters of a call's arguments (JSON) the audit log keeps as given
FUNCTION_LOGGED = 256  # characters of a function's name it keeps (red team round 95: 1 MB)


def _digest_of(name: str, text: str) -> dict:
    """``{NAME_bytes, NAME_sha256}`` of ``text`` (UTF-8): what the audit log keeps of a
    text too long to keep."""
    data = text.encode("utf-8", "surrogatepass")
    return {f"{name}_bytes": len(data), f"{name}_sha256": hashlib.sha256(data).hexdigest()}


ROOT_PREFIX = "wasmsbx-mcp-"
ALIVE = ".alive"  # in a server's folder, locked (flock) by that server while it runs


def _hold_alive(root: Path) -> Optional[int]:
    """Lock ``root/.alive`` for this process's lifetime (the descriptor is kept, never
    inherited): a folder whose lock nobody holds is one its server left behind (killed,
    SIGKILL or the OOM killer: no cleanup runs). Locked under a temporary name first, so
    a lock file seen unlocked is never one a starting server has yet to lock."""
    import fcntl

    tmp = root / f".alive.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, root / ALIVE)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_left_behind(own: Path) -> list:
    """Remove the folders of this user's servers that are no longer running (their
    ``.alive`` not locked) in the temporary folder; the folders removed. A red team
    (round 74) saw one of 93,623 entries outlive a server killed during its cleanup."""
    import fcntl
    import stat as stat_mod

    top = own.parent
    removed = []
    try:
        names = [n for n in os.listdir(top) if n.startswith(ROOT_PREFIX)]
    except OSError:
        return removed
    for name in names:
        folder = top / name
        if folder == own:
            continue
        try:
            info = os.lstat(folder)
            if not stat_mod.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            # (never blocking: a FIFO named .alive hung this thread, red team round 75)
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(folder / ALIVE, flags)
        except OSError:
            continue  # (no lock file: a server of an earlier wasmsbx, maybe running)
        try:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                continue  # (only a server makes it, and it makes a file)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its server runs
        finally:
            os.close(fd)
        if remove_tree(str(folder)):
            removed.append(folder)
    return removed


def scrubbed(value: Any, label: str) -> Any:
    """``value`` (text, or lists and dicts of it) with every private module copy's path
    (``<root>/modules/<sha256>-<random>.wasm``, from the first "/" of the text around
    it) written as ``label``. In time linear in the text: a regular expression for the
    path (a run of non-blanks before the name) took time in the square of a run of "/", on
    the event loop: a function named with 80,000 slashes stopped the server for 77 s
    (red team 123)."""
    import re

    name = re.compile(r"[0-9a-f]{64}-[0-9a-f]{12}\.wasm")

    def clean_text(text: str) -> str:
        if ".wasm" not in text:
            return text
        parts, done = [], 0
        for found in name.finditer(text):
            start = found.start()
            if start > done and text[start - 1] == "/":  # (its folders: back to a blank)
                head = start - 1
                while head > done and not text[head - 1].isspace():
                    head -= 1
                start = text.index("/", head, start)
            parts += [text[done:start], label]
            done = found.end()
        return "".join(parts) + text[done:]

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return clean_text(value)
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return clean(value)


LIST_KEPT = 100  # items of each list a report cut to fit keeps (bounded)


def bounded(report: dict, limit: int) -> dict:
    """``report`` as it is if its JSON fits in ``limit`` bytes; else with every list
    longer than LIST_KEPT cut to its first LIST_KEPT items and ``truncated`` naming each
    list cut and its full length. A module of 28,000 exports had a 6 MB audit, sent
    twice (structured and as text: red team round 73). OutputLimitExceeded if even that
    does not fit."""
    import json

    from ..audit.formats import cut_lists, truncation

    if len(json.dumps(report)) <= limit:
        return report
    cut: dict = {}
    out = cut_lists(report, LIST_KEPT, cut)
    # (lists the report had cut already, at audit.formats.LISTED, keep their full length)
    cut.update((report.get("truncated") or {}).get("lists") or {})
    reason = f"the report was larger than the server's output limit ({format_limit(limit)})"
    out["truncated"] = truncation(cut, LIST_KEPT, reason)
    if len(json.dumps(out)) > limit:
        raise errors.OutputLimitExceeded(
            f"output limit reached: the audit report is larger than the server's output "
            f"limit ({format_limit(limit)}) even with its lists cut",
            hint="audit the module with `wasmsbx audit` outside the server, or run the "
            "server with a larger --max-output",
            limit_value=limit,
        )
    return out


class _Stats:
    """What AuditLog.usage reads, from a worker's stats dict."""

    def __init__(self, stats: dict) -> None:
        self.warnings = list(stats.get("warnings") or [])
        self.fuel_used = stats.get("fuel_used")
        self.memory_bytes = stats.get("memory_bytes")


def webassembly_only(data: bytes, what: str) -> None:
    """A client sends WebAssembly (binary, or WAT text), never native code: a precompiled
    artifact or cache entry signed with the server user's key would otherwise be
    deserialized as machine code on the strength of that user's trust, not the client's."""
    if data[:4] == b"\0asm":
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise errors.ModuleError(
            f"{what} is not WebAssembly: neither a binary module (it starts with \\0asm) "
            "nor WAT text",
            hint="send the .wasm or .wat itself; precompiled code (wasmsbx artifacts, cache "
            "entries, .cwasm, ELF) is never taken from a client",
        )


def rebuild_error(data: dict) -> errors.WasmsbxError:
    """The worker's error (as data) as the same WasmsbxError class again."""
    cls = getattr(errors, str(data.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.WasmsbxError)):
        cls = errors.WasmsbxError
    context = dict(data.get("context") or {})
    message = str(data.get("message") or "the call failed")
    if issubclass(cls, errors.TrapError):
        exc = cls(message, hint=data.get("hint"), backtrace=data.get("backtrace"), **context)
    else:
        exc = cls(message, hint=data.get("hint"), **context)
    exc.guest_output = (data.get("stdout"), data.get("stderr"))  # (as guest.text gave them)
    return exc


class Measured(int):
    """A part of a request measured already, in bytes (``tools._json_size`` of a tool's
    JSON arguments): ``check_request`` counts it as it is. A plain int counted as its
    digits, so 200 KB of ``call_export`` args were 6 bytes (red team round 79)."""


def _size(part: Any) -> int:
    if part is None:
        return 0
    if isinstance(part, Measured):
        return int(part)
    if isinstance(part, str):
        return len(part.encode("utf-8", "surrogatepass"))
    if isinstance(part, (list, tuple)):
        return sum(_size(p) for p in part) + len(part)
    if isinstance(part, dict):
        return sum(_size(k) + _size(v) for k, v in part.items())
    return len(str(part))


def _within(real: Path, folder: Path) -> bool:
    return real == folder or folder in real.parents
