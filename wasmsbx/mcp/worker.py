"""The worker process: runs one guest call at a time for the MCP server.

Why a child process and not a thread: a guest blocked in a WASI call (a read of a pipe;
its sleeps end at the deadline, backends/wasmtime/poll.py) is not interruptible in
process, and a runtime bug a hostile module finds must not take the server down. The
server kills a worker whose call passes its hard deadline and starts another; the worker
itself enforces the policy's limits in process.

Why a long-lived worker and not one process per call: a fresh process pays Python start-up,
``import wasmtime`` and loading the 20 MB CPython module on every call (benchmarks/mcp.py
measures both). A worker keeps compiled modules; every call still gets a fresh instance
(its own store, memory and WASI context), so nothing a call does reaches the next.

Protocol: one JSON object per line on stdin (a request), one per line on the protocol pipe
(the reply). The worker's own stdout is pointed at stderr first, so nothing a runtime or a
guest writes there can forge a reply.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import sys
from collections import OrderedDict
from typing import Any, Optional

from .. import errors
from ..native import flush_hits
from . import guest

MAX_MODULES = 8  # compiled modules kept per worker (least recently used dropped)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pinned_bytes(path: str, digest: str) -> bytes:
    """The bytes of the file at ``path``, which must be those whose SHA-256 the server
    pinned when it checked it (an interpreter, found at start; a --module-dir module's
    private copy): a worker started later reads it again, and a file rewritten since
    ran in every later call (red team 132). The sandbox is made of these very bytes:
    a check followed by a second read by path let a file swapped in between through
    (red team 134). A file that cannot be read is an error, not a skip."""
    import hashlib

    from ..inputs import MODULE_MAX_BYTES, read_capped

    try:
        data = read_capped(path, MODULE_MAX_BYTES)
    except OSError as exc:
        raise errors.ModuleError(
            f"{os.path.basename(path)} cannot be read now ({exc.strerror or exc}); nothing was run",
            hint="restart the server once the file is back",
        ) from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise errors.ModuleError(
            f"{os.path.basename(path)} changed since the server checked it; nothing was run",
            hint="restart the server once the file is what it should be",
        )
    return data


class Worker:
    """Keeps compiled modules (one Sandbox per module digest and engine settings)."""

    def __init__(self) -> None:
        self.boxes: OrderedDict = OrderedDict()
        self.load = ""  # how the last call got its module: reused | cache hit | compiled

    def sandbox(
        self,
        path: str,
        digest: str,
        policy: Any,
        kind: str,
        cached: bool = True,
        engine_memory: Optional[int] = None,
    ) -> Any:
        """A Sandbox for the module, compiled (or loaded from the cache) once per worker.

        The call's policy only tightens store-level limits (memory, time, fuel amount,
        output), which are read when an instance is made; the engine settings that change
        machine code (fuel metering on/off, stack, optimisation, the memory reservation
        and data initialisation) are part of the key. ``cached``: through the user's
        compile cache (the interpreters, a module of a --module-dir); a module a client
        sent as bytes is compiled without it, kept only in this worker (red team round
        92: distinct client modules filled the cache and evicted the interpreters, whose
        next load took 4.4 s instead of 0.1, and the user's own entries).

        ``engine_memory``: the server's ceiling of limits.memory, from which the engine's
        memory reservation is sized (runtime.memory_layout "dense"), never from the call's
        own limit, which the store enforces: each power of two a client asked for compiled
        CPython again (9.5 s of CPU, 30-45 MB more in the cache), and calls cut short
        before it finished cached nothing, so the next compiled it again (red team 151)."""
        from ..backends.reserve import reservation
        from ..runner import Sandbox

        v = policy.values
        memory = v["limits.memory"]
        if engine_memory is not None and engine_memory > memory:
            memory = engine_memory
        key = (
            digest,
            v["limits.fuel"] is not None,
            v["limits.stack"],
            v["runtime.optimize"],
            v["runtime.backend"],
            reservation(v["runtime.memory_layout"], memory),
            v["runtime.memory_init"],
        )
        box = self.boxes.get(key)
        self.load = "reused"
        if box is None:
            if cached:  # (from the very bytes checked: red team 134 swapped the file
                # between a check and a second read by path)
                module: Any = _pinned_bytes(path, digest)
                named = {"name": os.path.basename(path)}
            else:
                module, named = path, {}
            built = policy
            if memory != v["limits.memory"]:  # (the call's own limit is set below)
                built = policy.copy()
                built.values["limits.memory"] = memory
            box = Sandbox(module, built, kind=kind, use_cache=None if cached else False, **named)
            self.load = "cache hit" if box.cache_state in ("hit", "memory") else "compiled"
            self.boxes[key] = box
            while len(self.boxes) > MAX_MODULES:
                self.boxes.popitem(last=False)[1].close()
        self.boxes.move_to_end(key)
        box.policy = policy
        return box

    def handle(self, req: dict) -> dict:
        from .. import policy as policy_mod

        op = req["op"]
        policy = policy_mod.from_dict(req["policy"], origin="mcp call policy")
        if op == "audit":
            from ..audit.report import audit_file

            return {"report": audit_file(req["module"], policy).to_dict()}
        # warm compiles a reactor (QuickJS) too: "call" asks for no _start up front
        kind = "call" if op in ("call", "javascript", "warm") else "command"
        # (an interpreter, or a module named by a path only the operator writes; not one
        # sent as bytes, nor one a client could write: service.cacheable)
        cached = op in ("python", "javascript", "warm") or bool(req.get("cached"))
        box = self.sandbox(
            req["module"], req["sha256"], policy, kind, cached, req.get("engine_memory")
        )
        if op == "warm":  # compile (or load from the cache) before the first real call
            return {"module_load": self.load}
        info = _sandbox_info(box, req["sha256"])
        if op == "call":
            data = _call(box, req, req.get("args") or [], bool(req.get("wave")))
        elif op == "command":
            stdin = base64.b64decode(req.get("stdin") or "")
            argv, program = req.get("argv") or [], req.get("program")
            data = _command(box.run_command(argv, stdin=stdin, capture=True, program=program))
        elif op == "python":
            with file_size_limit(req.get("file_limit")):
                data = guest.run_python(box, req["code"], req.get("scratch"), req.get("stdin", ""))
        elif op == "javascript":
            data = guest.run_javascript(box, req["code"])
        else:
            raise errors.UsageError(f"unknown operation {op!r}")
        data["sandbox"] = info
        data["module_load"] = self.load
        return data


@contextlib.contextmanager
def file_size_limit(limit: Any) -> Any:
    """RLIMIT_FSIZE for the guest's call: no file it writes (in the session's scratch
    folder) grows past ``limit`` bytes; the write fails with EFBIG, which the guest sees as
    an error (Python ignores SIGXFSZ). Restored after the call: the worker writes the
    compile cache at other times."""
    if not limit:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    cap = int(limit) if hard == resource.RLIM_INFINITY else min(int(limit), hard)
    resource.setrlimit(resource.RLIMIT_FSIZE, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _call(box: Any, req: dict, args: list, wave: bool) -> dict:
    """One export call. A component's arguments are typed JSON (or WAVE text with
    ``wave``), checked against its WIT signature; a core module's are numbers or strings."""
    func = req["function"]
    # (stdin: never the protocol pipe; argv[0]: the client's name, not the private copy's)
    wasi = box.wasi_setup((), b"", capture=True, program=req.get("program"))
    if getattr(box, "is_component", False):
        typed = {"wave_args": True} if wave else {"json_args": True}
        if wave and not all(isinstance(a, str) for a in args):
            raise errors.UsageError(
                "with wave=true every argument is a string of WAVE text",
                hint='e.g. ["{x: 1, y: 2}", "some(5)"]; or send typed JSON with wave=false',
            )
    else:
        typed = {}
        _check_core_args(args, wave)
    try:
        result = box.invoke(func, args, fresh=True, wasi=wasi, **typed)
        stdout, stderr = box.output()
    except errors.WasmsbxError as exc:
        if exc.stdout is None and exc.stderr is None:  # (what it wrote before it failed)
            exc.stdout, exc.stderr = box.output()
        raise
    finally:
        box.close()  # the instance goes; the compiled module stays
    data = result.to_dict()
    data["stdout"], data["stderr"] = guest.text(stdout), guest.text(stderr)
    return data


def _check_core_args(args: list, wave: bool) -> None:
    """A core module takes numbers (or their text: "0xff", "nan", "-1.5") only."""
    if wave:
        raise errors.UsageError(
            "wave=true is for components (WIT-typed exports); this is a core module",
            hint="give a core module's arguments as numbers or strings of numbers",
        )
    for i, arg in enumerate(args):
        if isinstance(arg, bool) or not isinstance(arg, (int, float, str)):
            raise errors.UsageError(
                f"argument {i + 1}: a core module's arguments are numbers, "
                f"got {type(arg).__name__}",
                hint='e.g. 5, -1.5, "0xff", "nan" (typed values are for components)',
            )


def _command(result: Any) -> dict:
    data = result.to_dict()
    data["stdout"] = guest.text(result.stdout)
    data["stderr"] = guest.text(result.stderr)
    return data


def _sandbox_info(box: Any, digest: str) -> dict:
    """What the audit log's ``sandbox`` event records (see wasmsbx/auditlog.py); the digest
    is the server's (of the module's bytes, or the interpreter's pinned one)."""
    v = box.policy.values
    return {
        "sha256": digest,
        "size": len(box.wasm),
        "backend": box.backend_name,
        "compiler": box.compiler,
        "limits": {
            key: v[f"limits.{key}"]
            for key in ("memory", "fuel", "timeout", "stack", "table_elements", "output")
        },
        "grants": [g.to_dict() for g in box.policy.grants],
        "env": sorted(box.policy.env_for_guest()),
    }


def error_dict(exc: BaseException) -> dict:
    """An exception as data the server turns back into the same error class."""
    if isinstance(exc, errors.WasmsbxError):
        data = exc.to_dict()
        data["class"] = type(exc).__name__
        data["backtrace"] = list(getattr(exc, "backtrace", []))[:8]
        if exc.stdout is not None or exc.stderr is not None:  # (a captured run's output)
            data["stdout"], data["stderr"] = guest.text(exc.stdout), guest.text(exc.stderr)
        return data
    return {
        "class": "WasmsbxError",
        "kind": "internal",
        "message": f"internal error in the worker: {type(exc).__name__}: {exc}",
        "exit_code": errors.ExitCode.INTERNAL,
    }


def serve(requests: Any, replies: Any) -> None:
    worker = Worker()
    for line in requests:
        if not line.strip():
            continue
        started = _cpu()
        try:
            reply = {"ok": True, "result": worker.handle(json.loads(line))}
        except Exception as exc:  # every failure goes back as data; the worker lives on
            reply = {"ok": False, "error": error_dict(exc)}
        reply["cpu"] = round(_cpu() - started, 6)
        replies.write(json.dumps(reply, default=str) + "\n")
        replies.flush()
        flush_hits()  # (the server kills its workers: cache hits are written per call)


PARENT_VARIABLE = "WASMSBX_MCP_SERVER_PID"  # (pool.py sets it: the server's pid)


def main() -> None:
    parent = os.environ.pop(PARENT_VARIABLE, "")
    if parent.isdigit():  # a worker, and its guest, never outlive the server (a server
        from ..backends.base import die_with_parent  # killed by SIGKILL, say: red team

        die_with_parent(int(parent))  # round 79 saw guests run on to their deadline)
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray writes to fd 1 (runtime, guest) go to stderr, not to the protocol
    sys.stdout = sys.stderr
    serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
