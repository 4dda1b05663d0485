"""The backend contract: what every runtime adapter declares and does.

Records are NamedTuples rather than dataclasses on purpose: this module is on the
start-up path of ``wasmsbx run``, and ``dataclasses`` (with the ``inspect`` it pulls
in) costs more to import than everything else wasmsbx adds to a run.

A backend is a factory of engines; an engine compiles, serializes and instantiates
modules; an instance calls exports and runs WASI commands under limits. Capabilities
are data, so the selector, ``wasmsbx backends`` and the tests all read the same facts.
"""

from __future__ import annotations

import errno
import os
import stat
from abc import ABC, abstractmethod
from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any, Optional

from .reserve import reservation


class Signature(namedtuple("Signature", "params results")):
    """A function's value types, as "i32", "i64", "f32", "f64", "v128", "funcref", "externref"."""

    # params: tuple
    # results: tuple
    __slots__ = ()

    def __str__(self) -> str:
        def side(types: tuple) -> str:
            return "(" + ", ".join(types) + ")" if len(types) != 1 else types[0]

        return f"{side(self.params)} -> {side(self.results)}"

    def to_dict(self) -> dict:
        return {"params": list(self.params), "results": list(self.results)}


class ExportInfo(namedtuple("ExportInfo", "name kind signature", defaults=(None,))):
    # name: str
    # kind: str  func | memory | table | global | tag
    # signature: Optional[Signature]
    __slots__ = ()


class ImportInfo(namedtuple("ImportInfo", "module name kind")):
    # module: str
    # name: str
    # kind: str
    __slots__ = ()

    @property
    def is_wasi(self) -> bool:
        return self.module.startswith("wasi_")

    def describe(self) -> str:
        """ "memory env.mem", "function env.log": link errors name the kind."""
        kind = "function" if self.kind == "func" else self.kind
        return f"{kind} {self.module}.{self.name}"


class Capabilities(
    namedtuple(
        "Capabilities",
        [
            "features",
            "security",
            "performance",
            "debugging",
            "compilers",
            "compile_speed",
            "run_speed",
            "notes",
        ],
        defaults=(
            (),
            0.5,
            0.5,
            (),
        ),
    )
):
    """What a backend (with one compiler) can do, in the words of wasmsbx.capabilities."""

    # features: frozenset
    # security: frozenset
    # performance: frozenset
    # debugging: frozenset
    # compilers: tuple
    # Measured facts (0..1, higher is better) used by the scorer; see benchmarks/.
    # compile_speed: float
    # run_speed: float
    # notes: tuple  human-readable facts and caveats
    __slots__ = ()

    def has(self, name: str) -> bool:
        return (
            name in self.features
            or name in self.security
            or name in self.performance
            or (name in self.debugging)
        )

    def to_dict(self) -> dict:
        return {
            "features": sorted(self.features),
            "security": sorted(self.security),
            "performance": sorted(self.performance),
            "debugging": sorted(self.debugging),
            "compilers": list(self.compilers),
            "compile_speed": self.compile_speed,
            "run_speed": self.run_speed,
            "notes": list(self.notes),
        }


class Availability(
    namedtuple(
        "Availability",
        "available version reason fix",
        defaults=(
            None,
            None,
            None,
        ),
    )
):
    # available: bool
    # version: Optional[str]
    # reason: Optional[str]
    # fix: Optional[str]
    __slots__ = ()

    def to_dict(self) -> dict:
        return self._asdict()


class EngineOptions(
    namedtuple(
        "EngineOptions",
        "compiler optimize fuel stack memory_cap table_cap reservation copy_data epoch isa_off",
        defaults=(
            None,
            "speed",
            False,
            None,
            None,
            None,
            None,
            False,
            True,
            (),
        ),
    )
):
    """Everything that changes the machine code (and so the cache key)."""

    # compiler: Optional[str]
    # optimize: str
    # fuel: bool
    # stack: Optional[int]
    # memory_cap: Optional[int]  caps a backend may compile into the module
    # table_cap: Optional[int]   (wasmer rewrites the declared maxima)
    # reservation: Optional[int]  bytes reserved per linear memory (runtime.memory_layout
    #                             "dense", backends/reserve.py); None: the runtime's own
    # copy_data: bool  data segments copied into each memory (runtime.memory_init "copy"),
    #                  not mapped copy-on-write from one image
    # epoch: bool  epoch checks in the code (wasmtime), which a timeout needs to stop a
    #              guest in-process. False only for `compile -o` artifacts made for
    #              `wasmsbx run`, which ends the process at the deadline instead (see
    #              README "Artifacts without epoch checks")
    # isa_off: tuple  CPU features the code must not use (a compile worker's, for a
    #                 process that sees fewer than the CPU has: compiling.compile_in_child)
    __slots__ = ()

    def to_dict(self) -> dict:
        return self._asdict()


def engine_options(policy: Any, compiler: Optional[str]) -> EngineOptions:
    """The engine options a policy implies for ``compiler`` (here rather than in the
    runner, so that ``compile`` builds them without importing it)."""
    v = policy.values
    return EngineOptions(
        compiler=compiler,
        optimize=v["runtime.optimize"],
        fuel=v["limits.fuel"] is not None,
        stack=v["limits.stack"],
        memory_cap=v["limits.memory"],
        table_cap=v["limits.table_elements"],
        reservation=reservation(v["runtime.memory_layout"], v["limits.memory"]),
        copy_data=v["runtime.memory_init"] == "copy",
    )


class Limits(
    namedtuple(
        "Limits",
        ["memory", "timeout", "fuel", "stack", "table_elements", "instances", "output", "deadline"],
        defaults=(
            None,
            None,
            None,
            None,
            None,
            None,
        ),
    )
):
    """Per-call and per-instance limits; None means the runtime's own default."""

    # memory: int
    # timeout: float
    # fuel: Optional[int]
    # stack: Optional[int]
    # table_elements: Optional[int]
    # instances: Optional[int]
    # output: Optional[int]
    # deadline: Optional[float]  a time.monotonic() instant no call may outlive (a run's
    #   --timeout covers compiling too); the timeout message still names ``timeout``
    __slots__ = ()

    def seconds(self) -> float:
        """What the next call may take: the timeout, or less when the deadline is nearer."""
        if self.deadline is None:
            return self.timeout
        import time

        return max(0.0, min(self.timeout, self.deadline - time.monotonic()))


class WasiSetup(
    namedtuple(
        "WasiSetup",
        "argv env grants stdin stdout stderr",
        defaults=(
            ("module",),
            {},
            (),
            "null",
            "inherit",
            "inherit",
        ),
    )
):
    """What a WASI guest sees. stdin: "inherit" | "null" | path | bytes.
    stdout/stderr: "inherit" | "null" | "capture" | path."""

    # argv: Sequence[str]
    # env: dict  noqa: RUF012 - never mutated
    # grants: Sequence[Any]  objects with .host, .guest, .writable
    # stdin: Any
    # stdout: str
    # stderr: str
    __slots__ = ()


class Usage(
    namedtuple(
        "Usage",
        ["fuel_used", "memory_bytes", "stdout", "stderr", "warnings"],
        defaults=(
            None,
            None,
            None,
            None,
            (),
        ),
    )
):
    # fuel_used: Optional[int]
    # memory_bytes: Optional[int]
    # stdout: Optional[bytes]  when captured
    # stderr: Optional[bytes]
    # warnings: tuple
    __slots__ = ()


def _open_output(target: str) -> Any:
    """A guest output file, opened without blocking: a FIFO that nobody reads is an
    error at once (ENXIO) instead of an open that waits for ever, outside any deadline.
    Writes then block as usual (a reader that stalls is the deadline's business)."""
    import errno

    from .. import errors
    from ..outfile import open_in_place

    # (truncated only once the file opened is known to have no other name, and to be
    # where it may be written: outfile.open_in_place)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK
    try:
        fd = open_in_place(target, flags, "the guest's output")
    except OSError as exc:
        why = "a FIFO nobody reads" if exc.errno == errno.ENXIO else exc.strerror
        raise errors.InputError(
            f"{target}: cannot write the guest's output there: {why}", path=target
        ) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            os.ftruncate(fd, 0)
    except OSError as exc:
        os.close(fd)
        raise errors.InputError(
            f"{target}: cannot write the guest's output there: {exc.strerror}", path=target
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return os.fdopen(fd, "wb")


class _TextStream:
    """A text stream (``sys.stdout`` replaced by ``io.StringIO``, say) as a guest's
    inherited output: the bytes decoded as UTF-8, undecodable ones replaced."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8", "replace"))

    def flush(self) -> None:
        self.stream.flush()


def binary_stream(stream: Any) -> Any:
    """Where a guest's inherited output goes for ``stream`` (``sys.stdout`` or
    ``sys.stderr`` as it is now): its binary buffer, or the stream itself decoded for a
    text-only one (``contextlib.redirect_stdout(io.StringIO())`` made the call fail with
    a raw AttributeError; red team round 24)."""
    buffer = getattr(stream, "buffer", None)
    return buffer if buffer is not None else _TextStream(stream)


# The stream of wasmsbx's own a guest wrote to last ("inherit") and whether that write
# ended mid-line: the command line's error or warning line after it then starts a line
# of its own (cli.output.err), not at the end of the guest's "no newline".
LAST_WRITE: list = [None, False]
# The first failure to write a guest's inherited output to the process's own stdout (fd
# 1) that is not a reader gone away (a full disk, /dev/full): the command line then ends
# with exit 105 as when its own results cannot be written (cli._stdout_written). With
# PYTHONUNBUFFERED the write fails here, not at the command's final flush, and the run
# ended with exit 0 and its output lost (red team 137).
STDOUT_LOST: list = []


class OutputSink:
    """Where a guest's stdout or stderr goes: "inherit" (``fallback``, e.g. our own
    stdout), "null", "capture" (kept in ``captured``) or a file path (opened here and
    closed by ``close()``). Shared by the backends, which meter the bytes themselves."""

    def __init__(self, target: str, fallback: Any) -> None:
        self.captured: Optional[bytearray] = None
        self.file: Any = None
        self.own = False
        if target == "capture":
            self.captured = bytearray()
        elif target == "inherit":
            self.file = fallback
        elif target != "null":
            self.file = _open_output(target)
            self.own = True

    def write(self, data: bytes) -> None:
        if self.captured is not None:
            self.captured += data
        elif self.file is not None:
            try:
                self.file.write(data)
                self.file.flush()
            except OSError as exc:
                lost = not self.own and exc.errno != errno.EPIPE and not STDOUT_LOST
                if lost and _fd_of(self.file) == 1:
                    STDOUT_LOST.append(exc)
                raise
            if not self.own and data:
                LAST_WRITE[:] = self.file, data[-1:] != b"\n"

    def close(self) -> None:
        if self.own and self.file is not None:
            try:
                self.file.close()
            except OSError:  # a file that refuses writes (/proc/self/status): the guest
                pass  # already saw each write fail
            self.file = None


def _fd_of(stream: Any) -> Optional[int]:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class Instance(ABC):
    """One instantiated module in its own store."""

    @abstractmethod
    def call(
        self,
        name: str,
        args: Sequence[Any],
        timeout: Optional[float] = None,
        fuel: Optional[int] = None,
    ) -> list:
        """Call an export with already-typed values (wasmsbx.values.coerce); return its
        results as a list of typed values. ``timeout``/``fuel`` lower the limits for
        this call only."""

    @abstractmethod
    def run_command(self) -> int:
        """Run ``_start``; return the guest's exit code."""

    @abstractmethod
    def usage(self) -> Usage:
        """Fuel and memory used so far, captured output, limit warnings."""

    def calling_here(self) -> bool:
        """Whether a call into this instance (its store) runs on this thread: a host
        function of it is what runs now."""
        return False

    def caller(self, name: str, types: tuple, parse: Callable) -> Callable:
        """``call(args, timeout=None, fuel=None) -> list``: export ``name`` (of ``types``,
        (params, results)) called with plain Python arguments, which ``parse`` (a
        values.parse_args) turns into typed values. Made once per export and instance
        (``Sandbox.call``'s fast path); adapters override it to do the per-export work
        once. This default parses and calls ``call``."""

        def call(args: Sequence[Any], timeout: Any = None, fuel: Any = None) -> list:
            return self.call(name, parse(args), timeout, fuel, types=types)  # type: ignore[call-arg]

        return call

    def repeat(self, name: str, args: Sequence[Any]):
        """A callable ``run(n)`` that calls ``name(*args)`` n times, for benchmarks.

        Adapters override it with a tight loop over the runtime's raw function, arming
        the limits once per block of n calls (the block must finish within the timeout;
        it gets n times the per-call fuel), raising the same errors as ``call``. This
        default simply loops over ``call``, limits armed per call.
        """

        def run(calls: int) -> None:
            for _ in range(calls):
                self.call(name, args)

        return run

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources held outside the store."""

    def discard(self) -> None:
        """Release everything it holds, store and all: an instance nobody else was
        given (its ``_initialize`` failed). The error's traceback keeps the instance
        as long as the caller keeps the error (each of them kept a 4 GiB reservation,
        or a worker process)."""
        self.close()

    def read_memory(self, offset: int, length: int, memory: str = "memory") -> bytes:
        """A copy of ``length`` bytes of the exported memory from ``offset`` (streaming ABI).

        Raises IndexError when the range is outside the memory; NotImplementedError when
        the backend cannot reach guest memory (``--stream`` then refuses to run)."""
        raise NotImplementedError

    def write_memory(self, offset: int, data: bytes, memory: str = "memory") -> None:
        """Copy ``data`` into the exported memory at ``offset`` (IndexError when outside)."""
        raise NotImplementedError

    def memory(self, name: str = "memory") -> Any:
        """An accessor of an exported memory: size(), read(), write(), grow(), view()
        (see wasmsbx.runner.sandbox.Memory); IndexError when there is no such memory."""
        raise NotImplementedError

    def global_info(self, name: str) -> tuple:
        """(type, mutable) of an exported global; KeyError when there is none."""
        raise NotImplementedError

    def global_get(self, name: str) -> Any:
        raise NotImplementedError

    def global_set(self, name: str, value: Any) -> None:
        raise NotImplementedError

    def export_handle(self, name: str) -> Any:
        """An export as a handle another instance of the same group can import."""
        raise NotImplementedError

    def know_types(self, types: dict) -> None:  # noqa: B027 - optional hook
        """Export name -> (params, results), read from the module's bytes, for backends
        that cannot ask their runtime safely (wasmtime's C API aborts on v128)."""

    def register_as(self, name: str) -> None:
        """Make this instance's exports importable as ``name.<export>`` in its group."""
        raise NotImplementedError


class Engine(ABC):
    """A configured compiler for one backend: compile, (de)serialize, instantiate."""

    backend: str
    options: EngineOptions
    memory_layout: Optional[dict] = None  # backends/reserve.py in_force, for --stats/--json
    made = 0  # engines made in this process: none may be alive in a fork (runner.pool)

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        Engine.made += 1
        return super().__new__(cls)

    @abstractmethod
    def compile(self, wasm: bytes) -> Any: ...

    @abstractmethod
    def serialize(self, module: Any) -> bytes: ...

    @abstractmethod
    def deserialize(self, native: Any) -> Any:
        """Load native code. It must be a ``trust.Authenticated`` (``trust.require``):
        native code skips validation, so only code that passed authentication loads."""

    @abstractmethod
    def exports(self, module: Any) -> list: ...

    @abstractmethod
    def imports(self, module: Any) -> list: ...

    @abstractmethod
    def instantiate(
        self,
        module: Any,
        limits: Limits,
        wasi: Optional[WasiSetup] = None,
        imports: Optional[dict] = None,
        shared: Optional[Instance] = None,
        register: Optional[str] = None,
        group: bool = False,
        timeout: Optional[float] = None,
    ) -> Instance:
        """A new instance. ``imports``: the caller's host imports (wasmsbx.host objects,
        normalized); ``shared``: an instance of the same group whose store (and limits)
        this one joins; ``register``: the name the group's later modules import it by;
        ``group``: the instance belongs to a group (more members may follow);
        ``timeout``: the seconds its start function may run, if fewer than the policy's
        (the timeout of the call that makes it).
        A backend that cannot do one of these raises BackendUnavailable saying why."""

    def describe(self, module: Any, wasm: bytes, known: Any = None) -> None:  # noqa: B027
        """Note what ``wasm`` declares (memories, tables) on ``module`` loaded from native
        code (cache, artifact), for limits that are totals (wasm_limits.plan). ``known``:
        what the run already knows of ``wasm`` (a ``native.recorded.RunFacts``), so that
        it need not be parsed again. (An optional hook.)"""

    @abstractmethod
    def fingerprint(self) -> dict:
        """Backend, versions, compiler, opt level, features and target: the cache key's basis."""


class Backend(ABC):
    """A runtime adapter. ``name`` is what users write in ``--backend``."""

    name: str
    compilers: tuple = ()
    default_compiler: Optional[str] = None

    @abstractmethod
    def probe(self) -> Availability:
        """Whether it can run here; cheap (cached) because selection calls it every run."""

    def probe_compiler(self, compiler: Optional[str]) -> Availability:
        """Whether one compiler works here (a backend whose compilers differ overrides it)."""
        return self.probe()

    def version(self) -> Optional[str]:
        """Runtime version, for reports and the cache key (may be slow to compute)."""
        return self.probe().version

    @abstractmethod
    def capabilities(self, compiler: Optional[str] = None) -> Capabilities: ...

    @abstractmethod
    def engine(self, options: EngineOptions) -> Engine: ...

    def compile_engine(self, options: EngineOptions) -> Any:
        """An engine for ``compile`` and ``serialize`` alone (``compile -o``)."""
        return self.engine(options)


PAGE = 65536


def die_with_parent(parent: int) -> None:
    """SIGKILL this child process when ``parent`` (the process that made it) dies, however
    it dies (a hard stop, SIGKILL, a batch worker ended by its parent): a guest, or a
    compile, never outlives its host."""
    import ctypes
    import os
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the worker's RLIMIT_CPU, or the parent's kill, remains
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(70)


def unprovidable(item: Any) -> str:
    """Why ``item`` cannot be given as an import (both backends' words)."""
    if hasattr(item, "_owner") and hasattr(item, "_extern"):
        return (
            "an export of another sandbox or group (or of a group closed since) can "
            "only be given to the members of its own group"
        )
    return f"a {type(item).__name__} cannot be given as an import"


PROVIDABLE = "pass host functions, wasmsbx.Global/Memory/Table, or exports of the same group"


def take_turn(
    lock: Any,
    seconds: float,
    waited_for: str = "another thread's call on this sandbox",
    hint: str = "a sandbox runs one call at a time: give each thread its own",
) -> None:
    """Take ``lock``, the turn to call into a sandbox that another thread is calling,
    waiting at most ``seconds`` (the waiting call's timeout): TimeoutExceeded then. The
    bound keeps a host function that waits for a thread calling the same sandbox from
    deadlocking (red team round 24). Shared by every backend's turn-taking, and by a
    Group's adds (``waited_for``, ``hint``: what the error says)."""
    if not lock.acquire(timeout=seconds):
        from .. import errors
        from ..units import format_duration

        raise errors.TimeoutExceeded(
            f"timeout: waited {format_duration(seconds)} for {waited_for}",
            hint=hint,
            limit_value=seconds,
        )


def memory_limit_error(
    limit: int, held: Optional[int], where: str, message: str, frames: list
) -> Optional[Any]:
    """The error for a trap that follows a refused memory.grow, or None.

    Runtimes do not say why memory.grow failed; a guest holding memory within one page of
    the cap when it traps was refused by the cap, so the trap is reported as that limit.
    """
    if held is None or held + PAGE <= limit:
        return None
    from ..errors import MemoryLimitExceeded
    from ..units import format_limit, format_size

    return MemoryLimitExceeded(
        f"memory limit {format_limit(limit)} reached: {where} trapped ({message}) after "
        f"memory.grow was refused at {format_size(held)}",
        hint="raise limits.memory (--memory 512MiB) if the guest needs more",
        backtrace=frames,
        limit_value=limit,
    )


def totals_error(exc: Any, limits: Limits) -> Any:
    """The limit error for a wasm_limits.TotalsError (a module that cannot start)."""
    from .. import errors
    from ..units import format_count, format_limit

    if exc.kind in ("host", "memory"):
        bounds = (
            "it also bounds, on its own, what the runtime holds for an instance's "
            "globals, functions, passive segments and tags"
            if exc.kind == "host"
            else "it is a total over all the module's memories"
        )
        return errors.MemoryLimitExceeded(
            f"memory limit {format_limit(limits.memory)} reached: {exc}",
            hint=f"raise limits.memory (--memory SIZE); {bounds}",
            limit_value=limits.memory,
        )
    return errors.TableLimitExceeded(
        f"table limit {format_count(limits.table_elements or 0)} elements reached: {exc}",
        hint="raise limits.table_elements; it is a total over all the module's tables",
        limit_value=limits.table_elements,
    )


def missing_imports_error(missing: Sequence[str]) -> Any:
    """The LinkError for imports nothing provides (``missing``: "function env.log" ...),
    the same on every backend."""
    from .. import errors

    return errors.LinkError(
        f"module imports what the sandbox does not provide: {', '.join(missing)}",
        hint="grant them with imports={module: {name: ...}} (Python API), or link the "
        "module that exports them (wasmsbx.Group); the command line provides WASI only",
        imports=[m.split(" ", 1)[1] for m in missing],
    )


def refuse_undecodable(wasi: WasiSetup, runtime: str) -> None:
    """UsageError (exit 2) for an argument, variable or guest folder name that is not
    text the runtime can pass (UTF-8): bytes a command line got that are not UTF-8 (a
    file name, ``$'\\xff'``) reach Python as lone surrogates; wasmtime-py's encoding of
    them was an internal error, exit 100 (red team 130), wasmer's a module error, exit
    102 (red team 131). Both backends alike."""
    named = [(f"argv[{i}]", text) for i, text in enumerate(wasi.argv)]
    for name, value in wasi.env.items():
        named += [("an environment variable's name", name), (f"variable {name}", value)]
    named += [(f"the guest path of {grant.host}", grant.guest) for grant in wasi.grants]
    for what, text in named:
        try:
            str(text).encode("utf-8")
        except UnicodeEncodeError:
            from .. import errors

            raise errors.UsageError(
                f"{errors.inert(errors.as_bytes(what), 80)} is not UTF-8 text "
                f"({errors.inert(errors.as_bytes(text), 80)}): {runtime} passes arguments, "
                "variables and folder names as UTF-8",
                hint="pass UTF-8 only (rename a file whose name is not UTF-8)",
            ) from None
