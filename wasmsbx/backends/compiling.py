"""Compiling an untrusted module, bounded in size and time.

A compile cannot be interrupted in process (wasmtime and wasmer run it in native code to
the end: an 18.7 MB module of 100,000 functions compiled for 2 min 50 s under a 1 s
timeout). So:

* ``limits.module_size`` refuses larger modules before anything reads their code;
* a module of ``CHILD_MIN`` bytes or more compiles in a child process (a fresh
  interpreter, so no runtime threads or locks are inherited) that is killed at the
  deadline; its native code comes back over a pipe this process created and reads
  itself, so it needs no further authentication: no other process can write to it;
* a smaller module compiles in process, watched by the deadline keeper: the command
  line's hard stop ends a compile that overruns (measured on this 2-core machine,
  wasmtime compiles ~0.3 MB/s of dense code, so CHILD_MIN is well under a second).
  Not on wasmer, whose compile holds the GIL (the hard stop could not run): every core
  module compiles in a child there (~25 ms more per compile; the cache keeps the code);
* in ``wasmsbx run`` (one guest, then the process ends: ``KEEPER.sole_run``) and in
  ``wasmsbx compile -o``, a large module compiles in process too (``hard_stopped``):
  the process is the place that can be stopped, and a worker would cost a second
  interpreter, a second import of the runtime and a copy of the code. Not under an
  address-space or data limit (``ulimit -v``/``-d``): a compiler that runs out of memory
  aborts its process, which must then be a worker's (red team round 28).
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

# The child: argv[1] is the backend name, argv[2:] the parent's sys.path. Reads a JSON
# header (EngineOptions) and the module on stdin; writes b"ok" + a JSON header (its
# engine's fingerprint) + native code, or b"er" + a JSON error, on stdout (each JSON
# after its length, a little-endian u32).
_CHILD = """
import sys
name, sys.path[:] = sys.argv[1], sys.argv[2:]
from wasmsbx.backends.compiling import child_main
child_main(name)
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
    """Whether ``wasm`` compiles in a child process: a large core module, or any core
    module for an engine that compiles holding the GIL (wasmer: the deadline thread, and
    so the command line's hard stop, cannot run until its compile ends; a 230 KB module
    compiled for 5.9 s under `--timeout 1s` before exit 112). Components compile here,
    watched by the keeper (the child process compiles core modules only)."""
    if getattr(engine, "is_component", False):
        return False
    if getattr(engine, "compiles_holding_gil", False):
        return True
    if len(wasm) >= CHILD_MIN:
        from .deadline import KEEPER

        if not (KEEPER.sole_run and hard_stopped(engine.backend)):
            return True  # (a worker anyway: no need to weigh it)
    return heavy(wasm)


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
        return worker_code(engine.backend, engine.options, wasm, seconds, error)[0]
    return engine.serialize(compile_bounded(engine, wasm, seconds, error))


def compile_in_child(engine: Any, wasm: bytes, seconds: float, error: Any) -> Any:
    """Compile in a fresh interpreter that is killed at the deadline; load its code here."""
    from ..native.trust import Authenticated

    # Vouched for by this process: the child it started wrote it into a pipe only
    # the two of them hold (see the module docstring).
    code = worker_code(engine.backend, engine.options, wasm, seconds, error)[0]
    module = engine.deserialize(Authenticated(code, "this process"))
    engine.describe(module, wasm)
    return module


def worker_code(backend: str, options: Any, wasm: bytes, seconds: float, error: Any) -> tuple:
    """(native code, fingerprint): what a compile worker made of ``wasm`` with an engine
    of ``backend`` built from ``options`` (EngineOptions), and that engine's fingerprint;
    or its error raised here. This process needs no engine, nor the runtime's import."""
    import json
    import subprocess

    try:  # (the worker reads it: one it cannot read is said here, not ignored)
        _explicit_memory()
    except ValueError as exc:
        raise errors.UsageError(
            f"WASMSBX_COMPILE_MEMORY={os.environ['WASMSBX_COMPILE_MEMORY'].strip()!r}: {exc}",
            hint="the memory a compile worker may use, e.g. 4GiB (unset: 2 GiB)",
        ) from None
    options = json.dumps(options._asdict()).encode()
    # -S: no site module (its .pth files cost the worker ~10 ms); the worker gets this
    # process's sys.path, led by the folder wasmsbx itself is imported from (an
    # editable install finds it through a .pth hook, which -S skips).
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    argv = [sys.executable, "-E", "-s", "-S", "-c", _CHILD, backend, root, *sys.path]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(
            len(options).to_bytes(4, "little") + options + wasm, timeout=seconds
        )
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise error() from None
    except BaseException:  # Ctrl-C: the child must not outlive us
        _kill(proc)
        raise
    # "ok" only from a worker that exited 0 (after writing all of it): one killed while
    # writing could leave truncated code behind a whole header.
    size = int.from_bytes(out[2:6], "little") if len(out) >= 6 else len(out)
    header = _json(out[6 : 6 + size]) if 6 + size <= len(out) else None
    if out[:2] == b"ok" and proc.returncode == 0 and isinstance(header, dict):
        return memoryview(out)[6 + size :], header
    answer = _json(out[2:]) if out[:2] == b"er" else None
    if isinstance(answer, dict):
        raise _error(answer)
    left = seconds - (time.monotonic() - started)
    text = err.decode("utf-8", "replace")
    if _out_of_memory(text):
        raise out_of_memory(worker_memory(len(wasm)))
    lines = text.strip().splitlines()
    detail = lines[-1:] or [f"status {proc.returncode}"]
    raise errors.ModuleError(
        f"compiling failed in its worker process ({detail[0][:200]})",
        hint="the compiler crashed on this module" if left > 0 else None,
    )


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


def _kill(proc: Any) -> None:
    proc.kill()
    proc.communicate()


def _error(data: dict) -> errors.WasmsbxError:
    kinds = {
        "module": errors.ModuleError,
        "unlinkable": errors.LinkError,
        "backend": errors.BackendUnavailable,
    }
    cls = kinds.get(data.get("kind"), errors.ModuleError)
    return cls(data.get("message", "compile failed"), hint=data.get("hint"))


def _bound_memory(limit: int) -> None:
    """Cap this worker's data at ``limit`` (never raising a lower cap): a compile that
    needs more fails here, in the worker, not in the machine."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if soft == resource.RLIM_INFINITY or soft > limit:
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        except (ValueError, OSError):
            pass


def child_main(name: str) -> None:
    """The child's body: compile what stdin holds, answer on stdout, exit."""
    import json

    from . import get
    from .base import EngineOptions, die_with_parent

    # Killed with the process that started it (red team round 27: a parent killed with
    # SIGKILL left its compile running on, re-parented to init; its deadline is the
    # parent's to keep). A parent already gone reads as init.
    parent = os.getppid()
    if parent == 1:
        os._exit(70)
    die_with_parent(parent)
    data = sys.stdin.buffer.read()
    size = int.from_bytes(data[:4], "little")
    options = EngineOptions(**json.loads(data[4 : 4 + size]))
    wasm = data[4 + size :]
    _bound_memory(worker_memory(len(wasm)))
    out = sys.stdout.buffer
    try:
        engine = get(name).engine(options)
        code = engine.serialize(engine.compile(wasm))
    except errors.WasmsbxError as exc:
        out.write(b"er" + json.dumps(exc.to_dict()).encode())
        out.flush()
        os._exit(0)
    header = json.dumps(engine.fingerprint()).encode()
    out.write(b"ok" + len(header).to_bytes(4, "little") + header)
    out.write(code)
    out.flush()
    os._exit(0)  # skip teardown (wasmtime-py's tokio threads; see cli.entry)
