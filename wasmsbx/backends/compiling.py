"""Compiling an untrusted module, bounded in size and time.

A compile cannot be interrupted in process (wasmtime and wasmer run it in native code to
the end: an 18.7 MB module of 100,000 functions compiled for 2 min 50 s under a 1 s
timeout). So:

* ``limits.module_size`` refuses larger modules before anything reads their code;
* where nothing could end a compile in this process (no hard stop: the Python API,
  ``watch``; wasmer, whose compile holds the GIL so the hard stop cannot run; under a
  memory rlimit, where a compiler out of memory aborts the process: red team round 28),
  every module and component compiles in a worker process (a fresh interpreter, so no
  runtime threads or locks are inherited) that is killed at the deadline and whose data
  is capped (RLIMIT_DATA); its native code comes back over a pipe this process created
  and reads itself, so it needs no further authentication: no other process can write
  to it. The worker is kept for the next compile (``WORKERS``): a new one costs ~50 ms
  of CPU, a small module's compile in a kept one ~1 ms;
* on the command line (its hard stop installed), a module of ``CHILD_MIN`` bytes or
  more, or a heavy one (``HEAVY``), compiles in a worker too; a smaller one, and a
  component, compiles in process, watched by the deadline keeper in time and memory
  (measured on this 2-core machine, wasmtime compiles ~0.3 MB/s of dense code, so
  CHILD_MIN is well under a second);
* in ``wasmsbx run`` (one guest, then the process ends: ``KEEPER.sole_run``) and in
  ``wasmsbx compile -o``, a large light module compiles in process too
  (``hard_stopped``): the process is the place that can be stopped, and a worker would
  cost a second interpreter, a second import of the runtime and a copy of the code.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

from .. import errors
from ..errors import CompileLimitExceeded
from ..units import format_duration, format_size

CHILD_MIN = 256 * 1024  # bytes: compiles this large run in a child process
# A compiler's memory grows with a function's locals times its size (SSA values live
# across blocks): a 160 KB module of one function with 8,000 locals live across 8,000
# loops took cranelift 2.6 GB and 8.8 s, one of 250 KB would take about 7 GB. A module
# whose weight (facts.compile_weight: locals x body bytes, summed over its functions,
# which compile in parallel) passes this compiles in a worker whatever its size, and the
# worker's memory is bounded (WORKER_MEMORY). python.wasm (20 MB) weighs 3.7e7 in all,
# graphviz 2.2e7; one function of 5e7 takes cranelift about 150 MB.
HEAVY = 50_000_000
# Bytes of data (RLIMIT_DATA: heap and private writable mappings, not the address space
# reserved, which grows with the machine's threads) a compile worker may use, at least,
# and per byte of module (python.wasm, 20 MB, compiled in 182 MB of data, 271 MB RSS).
WORKER_MEMORY = 2 << 30
WORKER_MEMORY_PER_BYTE = 32

# The worker: argv[1:] is the parent's sys.path. For each compile it reads a JSON request
# ({"backend", "options": EngineOptions, "memory": its RLIMIT_DATA}) after its length (a
# little-endian u32), then the module after its length (u64); it answers b"ok" + a JSON
# header ({"fingerprint": its engine's, "keep": whether it may be kept}) + the native code
# after its length (u64), or b"er" + a JSON error (each JSON after its length, a u32).
_CHILD = """
import sys
sys.path[:] = sys.argv[1:]
from wasmsbx.backends.compiling import child_main
child_main()
"""


def check_size(size: int, limit: Optional[int], name: str) -> None:
    if limit is not None and size > limit:
        raise CompileLimitExceeded(
            f"{name} is {format_size(size)}, larger than limits.module_size {format_size(limit)}",
            hint="raise limits.module_size in the policy if you trust this module",
            limit_value=limit,
        )


def too_slow(name: str, seconds: float) -> CompileLimitExceeded:
    """limits.compile_timeout passed (exit 117)."""
    return CompileLimitExceeded(
        f"compiling {name} did not finish within limits.compile_timeout "
        f"({format_duration(seconds)})",
        hint="raise limits.compile_timeout, or precompile it once with `wasmsbx compile`",
        limit_value=seconds,
    )


def out_of_time(name: str, timeout: float) -> errors.TimeoutExceeded:
    """The run's timeout, which covers compiling, passed while compiling (exit 112)."""
    return errors.TimeoutExceeded(
        f"timeout: still compiling {name} after {format_duration(timeout)} "
        "(the timeout covers compiling)",
        hint="raise limits.timeout (--timeout 30s), or precompile it once with "
        "`wasmsbx compile` (later runs load it from the cache)",
        limit_value=timeout,
    )


def in_child(engine: Any, wasm: bytes) -> bool:
    """Whether ``wasm`` compiles in a worker process: any core module where nothing
    could end a compile in this process (no hard stop: the Python API, `watch`; wasmer,
    whose compile holds the GIL so the hard stop's thread cannot run: a 230 KB module
    compiled for 5.9 s under `--timeout 1s`; a memory rlimit, under which a compiler
    that runs out aborts the process), a large one unless this process is one run's
    (``KEEPER.sole_run``), and a heavy one. A component compiles in a worker only where
    nothing could end it here (wasmtime compiles it whole, so its weight is not read);
    on the command line it compiles here, watched by the keeper."""
    if not hard_stopped(engine.backend):
        return not compiles_here()
    if getattr(engine, "is_component", False):
        return False  # (watched here: wasmtime compiles a component whole)
    if len(wasm) >= CHILD_MIN:
        from .deadline import KEEPER

        if not KEEPER.sole_run:
            return True  # (a worker anyway: no need to weigh it)
    return heavy(wasm)


def compiles_here() -> bool:
    """$WASMSBX_COMPILE_HERE=1: the caller trusts its modules, or cannot start a worker
    (an embedding whose ``sys.executable`` is not a Python that imports wasmsbx): compile
    in this process where no hard stop could end it, bounded by nothing. (The
    environment, not the policy: a policy found in a folder must not lift the bound.)"""
    return os.environ.get("WASMSBX_COMPILE_HERE", "").strip() == "1"


def heavy(wasm: bytes) -> bool:
    """Whether ``wasm`` has a function heavy enough to compile (HEAVY) that its compile
    must go to a worker, whose memory is bounded. (A module that cannot be read is left
    to the runtime, which says why.)"""
    from ..wasm.facts import FactsError, compile_weight

    try:
        return compile_weight(wasm) > HEAVY
    except FactsError:
        return False


def worker_memory(size: int) -> int:
    """The data a compile worker of a ``size``-byte module may use (RLIMIT_DATA):
    $WASMSBX_COMPILE_MEMORY if set (a size: "4GiB"), else WORKER_MEMORY or
    WORKER_MEMORY_PER_BYTE per byte, the larger. (The environment, not the policy: a
    policy found in a folder must not lift a bound that protects the machine.)"""
    try:
        explicit = _explicit_memory()
    except ValueError:  # (the parent said so: worker_code)
        explicit = None
    if explicit is not None:
        return max(1 << 20, explicit)
    return max(WORKER_MEMORY, WORKER_MEMORY_PER_BYTE * size)


def _explicit_memory() -> Optional[int]:
    """$WASMSBX_COMPILE_MEMORY as bytes, None if unset; ValueError if not a size."""
    text = os.environ.get("WASMSBX_COMPILE_MEMORY", "").strip()
    if not text:
        return None
    from ..units import parse_size

    return parse_size(text)


def hard_stopped(backend: str) -> bool:
    """Whether this process may compile any module for ``backend`` itself: the command
    line's hard stop is installed (the console script) to end it at its deadline, the
    runtime compiles without holding the GIL (not wasmer: the hard stop's thread could
    not run), and nothing limits the memory the compiler may take (out of memory, it
    aborts the process: exit 134 with no error line, red team round 28)."""
    from .deadline import KEEPER

    if KEEPER.hard_stop is None or backend != "wasmtime":
        return False
    import resource

    for which in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        if resource.getrlimit(which)[0] != resource.RLIM_INFINITY:
            return False
    return True


def compile_bounded(
    engine: Any, wasm: bytes, seconds: float, error: Any, here: bool = False
) -> Any:
    """``engine.compile(wasm)`` that ends within ``seconds`` or raises ``error()``.
    ``here``: in this process whatever its size (a command line whose hard stop ends it,
    ``compile -o``)."""
    if not here and in_child(engine, wasm):
        return compile_in_child(engine, wasm, seconds, error)
    from .deadline import KEEPER

    started = time.monotonic()
    watch = KEEPER.enter(None, seconds, error)
    watch_memory(watch, len(wasm))
    try:
        module = engine.compile(wasm)
    finally:
        KEEPER.leave(watch)
    if KEEPER.hard_stop is not None and time.monotonic() - started > seconds:
        raise error()  # (ended within the hard stop's GRACE: still too late)
    return module


def watch_memory(watch: Any, size: int) -> None:
    """Have the keeper watch this process's memory during the compile ``watch`` stands
    for (of a ``size``-byte module): on the command line, whose hard stop can end it,
    a compile that grows the process past what a worker could use ends with 117 (red
    team round 31: a 9 KB module of nested loops with block parameters, weight 0, took
    cranelift 1 GB a second)."""
    from .deadline import KEEPER, resident_bytes

    if KEEPER.hard_stop is not None:
        limit = worker_memory(size)
        watch.memory = (resident_bytes() + limit, lambda: out_of_memory(limit))


def native_bounded(engine: Any, wasm: bytes, seconds: float, error: Any) -> Any:
    """``engine.serialize(engine.compile(wasm))`` within ``seconds`` (what ``compile -o``
    writes): a large module's code comes as its compile worker wrote it, never loaded
    and serialized again here."""
    if in_child(engine, wasm):
        return _engine_code(engine, wasm, seconds, error)
    return engine.serialize(compile_bounded(engine, wasm, seconds, error))


def compile_in_child(engine: Any, wasm: bytes, seconds: float, error: Any) -> Any:
    """Compile in a fresh interpreter that is killed at the deadline; load its code here."""
    from ..native.trust import Authenticated

    # Vouched for by this process: the child it started wrote it into a pipe only
    # the two of them hold (see the module docstring).
    code = _engine_code(engine, wasm, seconds, error)
    module = engine.deserialize(Authenticated(code, "this process"))
    describe = getattr(engine, "describe", None)  # (a component engine has nothing to add)
    if describe is not None:
        describe(module, wasm)
    return module


def _engine_code(engine: Any, wasm: bytes, seconds: float, error: Any) -> Any:
    """What a worker compiles of ``wasm`` for ``engine`` (a module's or a component's)."""
    wrap = getattr(engine, "worker_wrap", None)
    return worker_code(engine.backend, engine.options, wasm, seconds, error, wrap)[0]


def worker_code(
    backend: str, options: Any, wasm: bytes, seconds: float, error: Any, wrap: Optional[str] = None
) -> tuple:
    """(native code, fingerprint): what a compile worker made of ``wasm`` with an engine
    of ``backend`` built from ``options`` (EngineOptions), and that engine's fingerprint;
    or its error raised here. This process needs no engine, nor the runtime's import.
    ``wrap``: "module:Class" of wasmsbx whose class wraps the backend's engine to compile
    ``wasm`` (a component: components.runtime.ComponentEngine.worker_wrap), named, not
    imported: the layer above tells this one how to rebuild its engine.

    The worker stays for the next compile (``_Workers``): a new one costs ~50 ms of CPU
    (an interpreter and the runtime's import), a compile of a small module ~1 ms."""
    import json

    try:  # (the worker reads it: one it cannot read is said here, not ignored)
        _explicit_memory()
    except ValueError as exc:
        raise errors.UsageError(
            f"WASMSBX_COMPILE_MEMORY={os.environ['WASMSBX_COMPILE_MEMORY'].strip()!r}: {exc}",
            hint="the memory a compile worker may use, e.g. 4GiB (unset: 2 GiB)",
        ) from None
    limit = worker_memory(len(wasm))
    request = {"backend": backend, "options": options._asdict(), "memory": limit}
    if wrap is not None:
        request["wrap"] = wrap
    head = json.dumps(request).encode()
    head = len(head).to_bytes(4, "little") + head + len(wasm).to_bytes(8, "little")
    deadline = time.monotonic() + seconds
    retried = False
    while True:
        worker, reused = WORKERS.take(fresh=retried)
        try:
            answer = worker.exchange(head, wasm, deadline)
        except _Late:
            worker.kill()
            raise error() from None
        except BaseException:  # Ctrl-C: the compile must not outlive the call
            worker.kill()
            raise
        if answer is None:  # it ended without answering
            status, text = worker.ended()
            if reused and _gone_idle(status) and time.monotonic() < deadline:
                retried = True
                continue  # (it was ending as it was taken, or its thread's end killed it)
            if _out_of_memory(text):
                raise out_of_memory(limit)
            lines = text.strip().splitlines()
            detail = lines[-1:] or [f"status {status}"]
            raise errors.ModuleError(
                f"compiling failed in its worker process ({detail[0][:200]})",
                hint="the compiler crashed on this module" if time.monotonic() < deadline else None,
            )
        kind, header, code = answer
        if kind == b"er":
            WORKERS.give_back(worker, True)
            if isinstance(header, dict):
                raise _error(header)
            raise errors.ModuleError("compiling failed in its worker process (a broken answer)")
        if not (isinstance(header, dict) and isinstance(header.get("fingerprint"), dict)):
            worker.kill()
            raise errors.ModuleError("compiling failed in its worker process (a broken answer)")
        WORKERS.give_back(worker, header.get("keep") is True)
        return memoryview(code), header["fingerprint"]


IDLE_EXIT = 75  # a worker that waited IDLE seconds for a compile ends with this status


def _gone_idle(status: Optional[int]) -> bool:
    """Whether a kept worker that ended without answering ended while idle (its IDLE
    timeout, or killed: PR_SET_PDEATHSIG when the thread that started it ends, a
    signal to every process), not in the compile (a crash: SIGABRT when out of memory,
    SIGSEGV), so the compile is tried once more in a new worker."""
    import signal

    crashes = (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)
    return status == IDLE_EXIT or (status is not None and status < 0 and -status not in crashes)


IDLE = 60.0
# A worker that holds more than this after a compile (allocators keep what they freed:
# python.wasm leaves ~270 MB) is not kept.
KEEP_RESIDENT = 256 << 20


class _Late(Exception):
    """The compile's deadline passed."""


class _Worker:
    """One compile worker: a fresh interpreter (no runtime threads or locks inherited)
    that compiles one module after another on its stdin, its answers on its stdout."""

    def __init__(self) -> None:
        import subprocess
        import tempfile

        # -S: no site module (its .pth files cost the worker ~10 ms); the worker gets
        # this process's sys.path, led by the folder wasmsbx itself is imported from (an
        # editable install finds it through a .pth hook, which -S skips).
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        argv = [sys.executable, "-E", "-s", "-S", "-c", _CHILD, root, *sys.path]
        # Its stderr goes to a file (read once it has died: why), never a pipe it could
        # fill and block on.
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - (closed when the worker is)
        # Its own session: a Ctrl-C at the terminal is the parent's to handle (it kills a
        # worker that is compiling for it); an idle worker must not die of it.
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            bufsize=0,
            start_new_session=True,
        )
        self.owner = os.getpid()

    def exchange(self, head: bytes, wasm: bytes, deadline: float) -> Optional[tuple]:
        """Send a request; (kind, header, code) of its answer, None if the worker ended
        before it answered, _Late at the deadline."""
        import json

        try:
            _write_all(self.proc.stdin.fileno(), head, deadline)
            _write_all(self.proc.stdin.fileno(), wasm, deadline)
        except BrokenPipeError:
            return None
        fd = self.proc.stdout.fileno()
        kind = _read_exact(fd, 2, deadline)
        if kind not in (b"ok", b"er"):
            return None
        size = _read_exact(fd, 4, deadline)
        if size is None:
            return None
        size = int.from_bytes(size, "little")
        header_bytes = _read_exact(fd, size, deadline) if size <= 1 << 20 else None
        if header_bytes is None:
            return None
        try:
            header = json.loads(header_bytes)
        except ValueError:
            header = None
        if kind == b"er":
            return kind, header, b""
        size = _read_exact(fd, 8, deadline)
        if size is None:
            return None
        size = int.from_bytes(size, "little")
        if size > max(1 << 30, 64 * len(wasm)):
            return None  # (not an answer a compile gives)
        code = _read_exact(fd, size, deadline)
        if code is None:
            return None
        return kind, header, code

    def ended(self) -> tuple:
        """(exit status, the end of its stderr) of a worker that has ended."""
        self.close(wait=True)
        try:
            self.err.seek(0, os.SEEK_END)
            self.err.seek(max(0, self.err.tell() - 65536))
            text = self.err.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            text = ""
        self.err.close()
        return self.proc.returncode, text

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except OSError:
                pass
        self.close(wait=True)
        self.err.close()

    def close(self, wait: bool = False) -> None:
        """Close its pipes (an idle worker ends at the end of its stdin); reap it."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        if wait:
            try:
                self.proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - (a stuck worker: kill it)
                self.proc.kill()
                self.proc.wait()


class _Workers:
    """At most one idle compile worker per process, kept for the next compile; a compile
    that finds it busy (another thread's) starts one of its own."""

    def __init__(self) -> None:
        import _thread

        self.lock = _thread.allocate_lock()
        self.idle: Optional[_Worker] = None
        self.hooked = False

    def take(self, fresh: bool = False) -> tuple:
        """(a worker, whether it was kept from an earlier compile); ``fresh``: a new one."""
        if not fresh:
            with self.lock:
                worker, self.idle = self.idle, None
            if worker is not None and worker.owner == os.getpid():
                return worker, True
        if not self.hooked:
            import atexit

            self.hooked = True
            atexit.register(self.close)
        try:
            return _Worker(), False
        except OSError as exc:  # (no interpreter there, out of processes or memory)
            raise errors.ResourceExhausted(
                f"cannot start a compile worker ({sys.executable or 'no sys.executable'}: "
                f"{exc.strerror or exc})",
                hint="wasmsbx compiles in a worker process where nothing could stop a "
                "compile here; set WASMSBX_COMPILE_HERE=1 to compile modules you trust in "
                "this process, or load precompiled code (`wasmsbx compile -o`)",
            ) from None

    def give_back(self, worker: _Worker, keep: bool) -> None:
        if keep and worker.owner == os.getpid():
            with self.lock:
                if self.idle is None:
                    self.idle = worker
                    return
        worker.close(wait=True)
        worker.err.close()

    def close(self) -> None:
        """End the idle worker (at exit: it would end anyway, its stdin closed)."""
        with self.lock:
            worker, self.idle = self.idle, None
        if worker is not None and worker.owner == os.getpid():
            worker.close(wait=True)

    def forget(self) -> None:
        """In a forked child: the idle worker is the parent's."""
        worker, self.idle = self.idle, None
        self.__init__()  # (the lock may have been held by another thread at the fork)
        self.hooked = True
        if worker is not None:
            for pipe in (worker.proc.stdin, worker.proc.stdout, worker.err):
                try:
                    pipe.close()
                except OSError:
                    pass
            worker.proc.returncode = 0  # (not this process's child: never waited for)


WORKERS = _Workers()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WORKERS.forget)


def _write_all(fd: int, data: Any, deadline: float) -> None:
    view = memoryview(data).cast("B")
    while view:
        _wait(fd, False, deadline)
        view = view[os.write(fd, view[: 1 << 20]) :]


def _read_exact(fd: int, size: int, deadline: float) -> Optional[bytearray]:
    """``size`` bytes from ``fd`` by ``deadline`` (else _Late); None at its end first."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        _wait(fd, True, deadline)
        n = os.readv(fd, [view[got:]])
        if not n:
            return None
        got += n
    return buf


def _wait(fd: int, readable: bool, deadline: float) -> None:
    """Until ``fd`` is ready, or _Late at ``deadline``. (poll, not select: a process with
    more than 1,024 descriptors has pipes that select cannot watch.)"""
    import select

    poll = select.poll()
    poll.register(fd, select.POLLIN if readable else select.POLLOUT)
    left = deadline - time.monotonic()
    if left <= 0 or not poll.poll(min(left, 1e6) * 1000):
        raise _Late


def out_of_memory(limit: int) -> CompileLimitExceeded:
    """A compile that needed more than ``limit`` bytes (exit 117)."""
    return CompileLimitExceeded(
        f"compiling the module ran out of memory: a compile may use {format_size(limit)} "
        "(or less, under your ulimit -d or -v)",
        hint="functions with many values live across many blocks compile in memory that "
        "grows with both: split them, or compile the module where you trust it "
        "(WASMSBX_COMPILE_MEMORY raises the bound)",
        limit_value=limit,
    )


def _out_of_memory(stderr: str) -> bool:
    """Whether a worker's stderr says it could not allocate (Rust's abort, Python's
    MemoryError)."""
    return "memory allocation of" in stderr or "MemoryError" in stderr


def _json(data: bytes) -> Any:
    """A worker's JSON, or None if it is not JSON (a worker that died mid-write)."""
    import json

    try:
        return json.loads(data)
    except ValueError:
        return None


def _error(data: dict) -> errors.WasmsbxError:
    kinds = {
        "module": errors.ModuleError,
        "unlinkable": errors.LinkError,
        "backend": errors.BackendUnavailable,
    }
    cls = kinds.get(data.get("kind"), errors.ModuleError)
    return cls(data.get("message", "compile failed"), hint=data.get("hint"))


def _bound_memory(limit: int, inherited: int) -> None:
    """Cap this worker's data at ``limit`` (never above the cap it ``inherited``): a
    compile that needs more fails here, in the worker, not in the machine."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if inherited != resource.RLIM_INFINITY:
        limit = min(limit, inherited)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ValueError, OSError):
        pass


def child_main() -> None:
    """The worker's body: compile each module stdin brings, answer on stdout; end at the
    end of stdin, or after IDLE seconds without a compile."""
    import json
    import resource
    import select

    from . import get
    from .base import EngineOptions, die_with_parent
    from .deadline import resident_bytes

    # Killed with the process that started it (red team round 27: a parent killed with
    # SIGKILL left its compile running on, re-parented to init; its deadline is the
    # parent's to keep). A parent already gone reads as init.
    parent = os.getppid()
    if parent == 1:
        os._exit(70)
    die_with_parent(parent)
    inherited = resource.getrlimit(resource.RLIMIT_DATA)[0]
    engines: dict = {}
    while True:
        if not select.select([0], [], [], IDLE)[0]:
            os._exit(IDLE_EXIT)
        size = _take(4)
        if size is None:
            os._exit(0)  # the parent is done with it
        request = _take(int.from_bytes(size, "little"))
        size = _take(8)
        wasm = None if size is None else _take(int.from_bytes(size, "little"))
        if request is None or wasm is None:
            os._exit(0)  # (the parent ended mid-request)
        request = json.loads(request)
        _bound_memory(request["memory"], inherited)
        try:
            wrap = request.get("wrap")
            key = json.dumps([request["backend"], request["options"], wrap], sort_keys=True)
            engine = engines.get(key)
            if engine is None:
                options = EngineOptions(**request["options"])
                engine = get(request["backend"]).engine(options)
                if wrap is not None:
                    engine = _wrapper(wrap)(engine)
                engines[key] = engine
            code = engine.serialize(engine.compile(bytes(wasm)))
        except errors.WasmsbxError as exc:
            _answer(b"er", exc.to_dict())
            continue
        keep = resident_bytes() < KEEP_RESIDENT
        _answer(b"ok", {"fingerprint": engine.fingerprint(), "keep": keep}, code)
        del code, wasm


def _wrapper(wrap: str) -> Any:
    """The class a request's "wrap" names ("wasmsbx.<module>:<Class>" only)."""
    import importlib

    module, _, name = wrap.partition(":")
    if not module.startswith("wasmsbx.") or not name.isidentifier():
        raise errors.UsageError(f"not an engine of wasmsbx: {wrap!r}")
    return getattr(importlib.import_module(module), name)


def _take(size: int) -> Optional[bytearray]:
    """``size`` bytes of the worker's stdin; None at its end first."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = os.readv(0, [view[got:]])
        if not n:
            return None
        got += n
    return buf


def _answer(kind: bytes, header: dict, code: Any = None) -> None:
    import json

    data = json.dumps(header).encode()
    parts = [kind + len(data).to_bytes(4, "little") + data]
    if code is not None:
        parts.append(len(code).to_bytes(8, "little"))
        parts.append(code)
    for part in parts:
        view = memoryview(part).cast("B")
        while view:
            view = view[os.write(1, view) :]
