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

import contextvars
import os
import sys
import time
from typing import Any, Optional

from .. import errors
from ..errors import CompileLimitExceeded
from ..units import format_duration, format_limit, format_size

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
# Under a memory cgroup's limit a compile in this process may grow by what the group has
# left, less an eighth, and less CGROUP_MARGIN at least (the watch looks every 10 ms,
# and other processes of the group grow too) or half of it when less is left: never by
# more than is left (red team round 36: a 16 MiB floor let the OOM killer come first).
CGROUP_MARGIN = 32 << 20
WORKER_MEMORY_PER_BYTE = 32

# The worker: argv[1] is the parent's pid, argv[2] the backend to import before it says
# it is ready (b"R"), argv[3:] its sys.path (worker_path). For each compile it reads a JSON request
# ({"backend", "options": EngineOptions, "memory": its RLIMIT_DATA}) after its length (a
# little-endian u32), then the module after its length (u64); it answers b"ok" + a JSON
# header ({"fingerprint": its engine's, "keep": whether it may be kept}) + the native code
# after its length (u64), or b"er" + a JSON error (each JSON after its length, a u32).
_CHILD = """
import sys
sys.path[:] = sys.argv[3:]
from wasmsbx.backends.compiling import child_main
child_main()
"""


def check_size(size: int, limit: Optional[int], name: str) -> None:
    if limit is not None and size > limit:
        raise CompileLimitExceeded(
            f"{name} is {format_size(size)}, larger than limits.module_size {format_limit(limit)}",
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


def out_of_time(
    name: str, timeout: Optional[float], left: Optional[float] = None
) -> errors.TimeoutExceeded:
    """The run's timeout, which covers compiling, passed while compiling (exit 112).
    ``left``: the seconds the run's deadline left when compiling began; named instead of
    the timeout when clearly less (a library caller's ``Sandbox(deadline=...)``)."""
    if left is not None and (timeout is None or left < timeout - 0.5):
        when = (
            f"{format_duration(left)} after compiling began"
            if left > 0
            else "which had passed before compiling began"
        )
        return errors.TimeoutExceeded(
            f"timeout: still compiling {name} at the run's deadline, {when} "
            "(the deadline covers compiling)",
            hint="give the run a later deadline, or precompile it once with "
            "`wasmsbx compile` (later runs load it from the cache)",
            limit_value=max(0.0, left),
        )
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


def heavy(wasm: bytes, weight: Optional[int] = None) -> bool:
    """Whether ``wasm`` has a function heavy enough to compile (HEAVY) that its compile
    must go to a worker, whose memory is bounded (``weight``: its compile weight, if
    already read). (A module that cannot be read is left to the runtime, which says
    why.)"""
    if weight is not None:
        return weight > HEAVY
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
        limit, grouped = worker_memory(size), False
        from .cgroup import headroom

        room = headroom()  # under a memory cgroup's limit, the OOM killer comes first
        if room is not None:
            allowed = room - max(room // 8, min(CGROUP_MARGIN, room // 2))
            if allowed < limit:
                limit, grouped = allowed, True
        watch.memory = (resident_bytes() + limit, lambda: out_of_memory(limit, grouped))


def native_bounded(engine: Any, wasm: bytes, seconds: float, error: Any) -> Any:
    """``engine.serialize(engine.compile(wasm))`` within ``seconds`` (what ``compile -o``
    writes): a large module's code comes as its compile worker wrote it, never loaded
    and serialized again here."""
    if in_child(engine, wasm):
        return _engine_code(engine, wasm, seconds, error)
    return engine.serialize(compile_bounded(engine, wasm, seconds, error))


def worker_task(data: bytes, seconds: float, error: Any, wrap: str) -> bytes:
    """What a compile worker's ``wrap`` engine (a WorkerTask: not a compile, text
    converted or a module validated) makes of ``data`` within ``seconds``, else
    ``error()``: the worker's bounds in time and memory, for other work on the bytes."""
    from .base import EngineOptions

    return bytes(worker_code("wasmtime", EngineOptions(), data, seconds, error, wrap)[0])


def slower_than(message: str, hint: str, seconds: float) -> Any:
    """``error`` for worker_task: CompileLimitExceeded (117) saying ``message``."""
    return lambda: CompileLimitExceeded(message, hint=hint, limit_value=seconds)


def task_engine(work: Any) -> type:
    """A ``wrap`` engine class for worker_task whose "compile" is ``work(bytes) ->
    bytes`` (other work on the bytes) and whose "code" is what that returns."""

    class WorkerTask:
        def __init__(self, engine: Any) -> None:
            self.engine = engine

        def compile(self, data: Any) -> bytes:
            return work(bytes(data))

        def serialize(self, made: bytes) -> bytes:
            return made

        def fingerprint(self) -> dict:
            return self.engine.fingerprint()

    return WorkerTask


def compile_in_child(engine: Any, wasm: bytes, seconds: float, error: Any) -> Any:
    """Compile in a fresh interpreter that is killed at the deadline; load its code here.

    A worker compiles for the CPU it sees. A process that sees fewer of its features (run
    under valgrind, whose synthetic CPU lacks AVX-VNNI, say; valgrind does not follow the
    worker) cannot load that code: wasmtime names the feature, which later workers are
    told to leave off (``isa_off``), and the module is compiled again."""
    from ..native.trust import Authenticated

    while True:
        # Vouched for by this process: the child it started wrote it into a pipe only
        # the two of them hold (see the module docstring).
        code = _engine_code(engine, wasm, seconds, error)
        try:
            module = engine.deserialize(Authenticated(code, "this process"))
        except errors.ModuleError as exc:
            flag = _unavailable(exc.message)
            if flag is None or flag in ISA_OFF or len(ISA_OFF) >= 64:
                raise
            ISA_OFF.append(flag)
            continue
        break
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
    (an interpreter and the runtime's import), a compile of a small module ~1 ms. A new
    worker's start is not the compile's: ``seconds`` counts from when it is ready (red
    team round 33: under a 50 ms compile timeout no compile could ever finish)."""
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
    if ISA_OFF:
        request["options"]["isa_off"] = list(ISA_OFF)
    if wrap is not None:
        request["wrap"] = wrap
    head = json.dumps(request).encode()
    head = len(head).to_bytes(4, "little") + head + len(wasm).to_bytes(8, "little")
    retried = False
    run = READY_BY.get()
    while True:
        worker, reused = WORKERS.take(backend, fresh=retried)
        try:
            if not reused:
                worker.ready(run)
            # the compile's own seconds, but never past the run's deadline (a slow start
            # left less: red team round 35 saw nearly twice the deadline)
            until, late = time.monotonic() + seconds, error
            if run is not None and run[0] < until:
                until, late = run
            answer = worker.exchange(head, wasm, until)
        except _Late:
            worker.kill()
            raise late() from None
        except BaseException:  # Ctrl-C: the compile must not outlive the call
            worker.kill()
            raise
        if answer is None or answer is _GONE:  # it ended without answering
            status, text = worker.ended()
            if reused and not retried and (answer is _GONE or status == IDLE_EXIT):
                retried = True  # (it ended idle as it was taken: its IDLE timeout, a signal)
                continue
            if _out_of_memory(text) or status == -9:  # (-9: not ours, the OOM killer's)
                raise out_of_memory(limit)
            lines = text.strip().splitlines()
            detail = lines[-1:] or [f"status {status}"]
            raise errors.ModuleError(
                f"compiling failed in its worker process ({detail[0][:200]})",
                hint="the compiler crashed on this module",
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


# CPU features this process cannot run that its workers' code used (compile_in_child)
ISA_OFF: list = []


def _unavailable(message: str) -> Optional[str]:
    """The feature wasmtime names in 'compilation setting "has_avx_vnni" is enabled,
    but not available on the host', if that is the message."""
    head, tail = 'compilation setting "', '" is enabled, but not available on the host'
    start = message.find(head)
    end = message.find(tail, start)
    if start < 0 or end < 0:
        return None
    name = message[start + len(head) : end]
    # (a CPU feature's: cranelift names them has_*; a setting it does not know crashes
    # its compiles, so nothing else is passed on)
    if not (name.startswith("has_") and len(name) <= 64 and name.isascii()):
        return None
    return name if name.replace("_", "").isalnum() else None


IDLE_EXIT = 75  # a worker that waited IDLE seconds for a compile ends with this status
IDLE = 60.0
STARTUP = 60.0  # seconds a new worker may take to be ready (an interpreter, the runtime)
# A worker that holds more than this after a compile (allocators keep what they freed:
# python.wasm leaves ~270 MB) is not kept.
KEEP_RESIDENT = 256 << 20
_GONE = object()  # exchange(): the worker had ended before it took the request


class _Late(Exception):
    """The compile's deadline passed."""


# (instant, error) of a run whose deadline covers compiling (runner.sandbox: a Sandbox
# made with deadline=): a new worker's start, not counted in the compile timeout, still
# counts in the run's (red team round 34: a 5 s start ran past a 1 s deadline).
READY_BY: Any = contextvars.ContextVar("wasmsbx_compile_ready_by", default=None)


def _start_failed(why: str) -> errors.ResourceExhausted:
    return errors.ResourceExhausted(
        f"cannot start a compile worker ({sys.executable or 'no sys.executable'}: {why})",
        hint="wasmsbx compiles in a worker process where nothing could stop a compile "
        "here; set WASMSBX_COMPILE_HERE=1 to compile modules you trust in this process, "
        "or load precompiled code (`wasmsbx compile -o`)",
    )


def worker_path() -> list:
    """The worker's sys.path: the standard library, the folder wasmsbx is imported from,
    and the folders the runtimes are installed in; never ``''``, the working folder or
    any other entry of this process's path (red team round 33: a guest granted the
    working folder wrote a json.py there, and the next worker ran it as the user, with
    the power to hand this process native code)."""
    import importlib.machinery

    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    std = [os.path.dirname(os.__file__)]  # (the standard library's folder)
    std += [p for p in sys.path if p.endswith("lib-dynload") or p.endswith(".zip")]
    cwd = _working_folder()
    # Where each runtime is: the module this process imported, else a search of its
    # path without '' and the working folder (red team round 34: an empty wasmer/
    # planted there was found, and the working folder joined the worker's path).
    safe = [os.path.abspath(p) for p in safe_path()]
    found = []
    for name in ("wasmtime", "wasmer", *_WASMER_COMPILERS):
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None)
        package = hasattr(module, "__path__")
        if module is None:
            try:
                spec = importlib.machinery.PathFinder.find_spec(name, safe)
            except (ImportError, ValueError):
                spec = None
            if spec is not None:
                origin, package = spec.origin, spec.submodule_search_locations is not None
        if origin:  # .../site-packages/<name>/__init__.py, or .../<name>.so
            folder = os.path.dirname(origin)
            found.append(os.path.dirname(folder) if package else folder)
    # (in sys.path's order: the first that holds a package is the one this process has)
    found.sort(key=lambda p: safe.index(p) if p in safe else len(safe))
    out: list = []
    for p in [*std, here, *found]:
        p = os.path.abspath(p)
        if p == cwd and p != here:
            continue
        if p not in out and (os.path.isdir(p) or p.endswith(".zip") and os.path.isfile(p)):
            out.append(p)
    return out


def safe_path() -> list:
    """This process's sys.path without ``''``, relative entries and the working folder:
    what a process wasmsbx starts may search (the compile worker, the batch workers' fork
    server), where a guest granted the working folder may plant modules."""
    cwd = _working_folder()
    return [p for p in sys.path if p and os.path.isabs(p) and p != cwd]


def _working_folder() -> Optional[str]:
    try:
        return os.getcwd()
    except OSError:  # (removed under us)
        return None


_WASMER_COMPILERS = (
    "wasmer_compiler_cranelift",
    "wasmer_compiler_llvm",
    "wasmer_compiler_singlepass",
)


class _Worker:
    """One compile worker: a fresh interpreter (no runtime threads or locks inherited)
    that compiles one module after another on its stdin, its answers on its stdout."""

    def __init__(self, backend: str) -> None:
        import subprocess
        import tempfile

        if getattr(sys, "frozen", False):  # (sys.executable is the application itself)
            raise _start_failed("a frozen application has no Python to start")
        # -I: isolated (no environment, user site, script folder or working folder on
        # its path); -S: no site module (its .pth files cost ~10 ms); its path is
        # worker_path(); its working folder the root, so nothing on it is relative to
        # a folder a guest may write.
        argv = [sys.executable, "-I", "-S", "-c", _CHILD, str(os.getpid()), backend]
        argv += WORKERS.path()
        # Its stderr goes to a file (read once it has died: why), never a pipe it could
        # fill and block on.
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - (closed when the worker is)
        self.owner = os.getpid()
        try:
            # Its own session: a Ctrl-C at the terminal is the parent's to handle (it
            # kills a worker compiling for it); an idle worker must not die of it.
            # Started by SPAWNER's thread, which lives as long as this process: the
            # worker dies with the thread that started it (PR_SET_PDEATHSIG), and a
            # caller's short-lived thread must not take it along (red team round 33).
            self.proc = SPAWNER.run(
                lambda: subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=self.err,
                    bufsize=0,
                    cwd="/",
                    start_new_session=True,
                )
            )
        except BaseException:
            self.err.close()
            raise
        os.set_blocking(self.proc.stdin.fileno(), False)  # (a stopped worker: _Late)

    def ready(self, run: Optional[tuple] = None) -> None:
        """Wait for a new worker's b"R" (started, the runtime imported), up to STARTUP,
        or ``run``'s deadline (instant, error) if that comes first."""
        until = time.monotonic() + STARTUP
        if run is not None and run[0] < until:
            until = run[0]
        try:
            mark = _read_exact(self.proc.stdout.fileno(), 1, until)
        except _Late:
            self.kill()
            if run is not None and run[0] <= until:
                raise run[1]() from None
            raise _start_failed(f"not ready after {STARTUP:.0f} s") from None
        if mark != b"R":
            status, text = self.ended()
            lines = text.strip().splitlines()
            raise _start_failed((lines[-1:] or [f"it ended with status {status}"])[0][:200])

    def exchange(self, head: bytes, wasm: bytes, deadline: float) -> Any:
        """Send a request; (kind, header, code) of its answer; _GONE if the worker had
        ended before it took the request, None if it ended without answering; _Late at
        the deadline."""
        if self.proc.poll() is not None:
            return _GONE
        try:
            _write_all(self.proc.stdin.fileno(), head, deadline)
            _write_all(self.proc.stdin.fileno(), wasm, deadline)
        except BrokenPipeError:
            return _GONE
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
        header = _json(header_bytes)
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
        """(exit status, the end of its stderr) of a worker that has ended (or is made to:
        one that answered nonsense)."""
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
        self.retire()

    def retire(self) -> None:
        """Let it go: its pipes closed (an idle worker ends at the end of its stdin), reaped,
        its stderr file closed."""
        self.close(wait=True)
        self.err.close()

    def close(self, wait: bool = False) -> None:
        """Close its pipes (an idle worker ends at the end of its stdin); reap it."""
        WORKERS.live.discard(self)
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


class _Spawner:
    """Runs the workers' starts on one thread that lives as long as the process."""

    def __init__(self) -> None:
        self.jobs: Any = None

    def run(self, start: Any) -> Any:
        import _thread

        if self.jobs is None:
            import queue

            jobs = queue.SimpleQueue()
            # A bare thread, as the deadline keeper's: not one of threading's daemon
            # threads, which the wasmtime teardown must assume may be inside a store
            # (backends.wasmtime.teardown); this one never enters one.
            _thread.start_new_thread(self._serve, (jobs,))
            self.jobs = jobs
        done = _thread.allocate_lock()
        done.acquire()
        box: list = [None, None, False]  # result, exception, abandoned
        self.jobs.put((start, box, done))
        try:
            done.acquire()
        except BaseException:  # (Ctrl-C while it starts: it must not be left behind)
            box[2] = True
            raise
        if box[1] is not None:
            raise box[1]
        return box[0]

    @staticmethod
    def _serve(jobs: Any) -> None:
        while True:
            start, box, done = jobs.get()
            try:
                box[0] = start()
            except BaseException as exc:  # noqa: BLE001 - (the caller's to raise)
                box[1] = exc
            if box[2] and box[0] is not None:  # (its caller gave up)
                box[0].kill()
                box[0].wait()
            done.release()


SPAWNER = _Spawner()


class _Workers:
    """At most one idle compile worker per process, kept for the next compile; a compile
    that finds it busy (another thread's) starts one of its own."""

    def __init__(self) -> None:
        import _thread

        self.lock = _thread.allocate_lock()
        self.idle: Optional[_Worker] = None
        self.live: set = set()  # every worker of this process, busy or idle
        self.hooked = False
        self.paths: Optional[list] = None

    def path(self) -> list:
        if self.paths is None:
            self.paths = worker_path()
        return self.paths

    def take(self, backend: str, fresh: bool = False) -> tuple:
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
        if not sys.executable:
            raise _start_failed("this interpreter does not know its own executable")
        try:
            worker = _Worker(backend)
        except OSError as exc:  # (no interpreter there, out of processes or descriptors)
            raise _start_failed(exc.strerror or str(exc)) from None
        except RuntimeError as exc:  # (the spawner's thread could not start)
            raise _start_failed(str(exc)) from None
        self.live.add(worker)
        return worker, False

    def give_back(self, worker: _Worker, keep: bool) -> None:
        if keep and worker.owner == os.getpid():
            with self.lock:
                if self.idle is None:
                    self.idle = worker
                    return
        worker.retire()

    def close(self) -> None:
        """End the idle worker (at exit: it would end anyway, its stdin closed)."""
        with self.lock:
            worker, self.idle = self.idle, None
        if worker is not None and worker.owner == os.getpid():
            worker.retire()

    def forget(self) -> None:
        """In a forked child: every worker is the parent's (an idle one, and one busy
        compiling in another thread, whose pipes kept open here would stall its end)."""
        live = list(self.live)
        paths = self.paths
        self.__init__()  # (the lock may have been held by another thread at the fork)
        self.hooked, self.paths = True, paths
        SPAWNER.jobs = None  # (its thread did not come along)
        for worker in live:
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
    """All of ``data`` into ``fd`` (non-blocking) by ``deadline``. SIGPIPE is blocked in
    this thread meanwhile (a host that restored its default would die of a worker that
    had ended: exit 141, red team round 33): a write to it raises BrokenPipeError."""
    import signal

    view = memoryview(data).cast("B")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
    try:
        while view:
            _wait(fd, False, deadline)
            try:
                view = view[os.write(fd, view[: 1 << 20]) :]
            except BlockingIOError:
                pass
    finally:
        if signal.SIGPIPE not in mask:
            if signal.SIGPIPE in signal.sigpending():  # (ours: taken before unblocking)
                take = getattr(signal, "sigtimedwait", None)  # (not on macOS)
                if take is not None:
                    take({signal.SIGPIPE}, 0)
                else:
                    signal.sigwait({signal.SIGPIPE})  # (pending: returns at once)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _read_exact(fd: int, size: int, deadline: Optional[float]) -> Optional[bytearray]:
    """``size`` bytes from ``fd`` by ``deadline`` (else _Late; None: as long as it takes,
    the worker's side); None at its end first."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        if deadline is not None:
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


def out_of_memory(limit: int, grouped: bool = False) -> CompileLimitExceeded:
    """A compile that needed more than ``limit`` bytes (exit 117); ``grouped``: the
    limit is what this process's memory cgroup had left."""
    where = (
        "what this process's memory cgroup had left below its limit"
        if grouped
        else "or less, under your ulimit -d or -v"
    )
    return CompileLimitExceeded(
        f"compiling the module ran out of memory: a compile may use {format_limit(limit)} "
        f"({where})",
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
    except (ValueError, RecursionError):  # (RecursionError: nested deeper than this stack)
        return None


def _error(data: dict) -> errors.WasmsbxError:
    kinds = {
        "module": errors.ModuleError,
        "unlinkable": errors.LinkError,
        "backend": errors.BackendUnavailable,
        # (the worker's host ran out compiling: exit 118, not 102, round 72)
        "resources": errors.ResourceExhausted,
    }
    cls = kinds.get(data.get("kind"), errors.ModuleError)
    if data.get("kind") == "limit" and data.get("limit") == "compile":
        cls = errors.CompileLimitExceeded
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
    end of stdin, or after IDLE seconds without a compile. argv: [-c, the parent's pid,
    the backend to import first, the path...]."""
    import json
    import resource
    import select

    from . import get
    from .base import EngineOptions, die_with_parent
    from .deadline import resident_bytes

    # Killed with the process that started it (red team round 27: a parent killed with
    # SIGKILL left its compile running on, re-parented to init; its deadline is the
    # parent's to keep). A parent already gone: its pid is no longer ours (the parent
    # may itself be pid 1, in a container: red team round 33).
    parent = int(sys.argv[1])
    if os.getppid() != parent:
        os._exit(70)
    die_with_parent(parent)
    try:
        get(sys.argv[2])  # (the runtime's import: before "ready", not in a compile's time)
    except errors.WasmsbxError:
        pass  # (said by the first compile)
    _answer_bytes(b"R")
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
                given = dict(request["options"])
                given["isa_off"] = tuple(given.get("isa_off") or ())
                options = EngineOptions(**given)
                adapter = get(request["backend"])
                if wrap is None:  # (compiles and serializes only: wasmtime-py not imported)
                    engine = adapter.compile_engine(options)
                else:
                    engine = _wrapper(wrap)(adapter.engine(options))
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
    return _read_exact(0, size, None)


def _answer(kind: bytes, header: dict, code: Any = None) -> None:
    import json

    data = json.dumps(header).encode()
    parts = [kind + len(data).to_bytes(4, "little") + data]
    if code is not None:
        parts.append(len(code).to_bytes(8, "little"))
        parts.append(code)
    for part in parts:
        _answer_bytes(part)


def _answer_bytes(data: Any) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(1, view) :]
