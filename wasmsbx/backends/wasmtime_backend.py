"""The wasmtime adapter (PyPI ``wasmtime``): every limit enforced in-process.

Memory, table and instance caps use the store limiter; fuel uses fuel metering; the
timeout uses epoch interruption driven by the process's one deadline keeper
(deadline.py); guest output goes through
counting callbacks so a flood is cut off at ``limits.output``.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

import wasmtime

from .. import errors
from ..capabilities import WASM_FEATURES
from ..units import format_count, format_duration, format_size
from .base import (
    Availability,
    Backend,
    Capabilities,
    Engine,
    EngineOptions,
    ExportInfo,
    ImportInfo,
    Instance,
    Limits,
    OutputSink,
    Usage,
    WasiSetup,
    memory_limit_error,
    totals_error,
)
from .deadline import KEEPER
from .wasm_limits import HIDDEN_EXPORT, TotalsError, export_memories, layout, plan

MAX_FRAMES = 12
_OPT_LEVELS = {"none": "none", "speed": "speed", "size": "speed_and_size", "aggressive": "speed"}

# Every proposal wasmsbx names except the component model: this wasmtime build compiles
# them all by default (a test compiles one module per proposal and checks the claim).
FEATURES = frozenset(WASM_FEATURES) - {"component-model"}


@functools.cache
def _version() -> str:
    """The installed wasmtime-py version. Read from the name of its .dist-info directory:
    the cache key needs it on every cached run, and importlib.metadata scans every path
    entry (tens of milliseconds)."""
    site = os.path.dirname(os.path.dirname(wasmtime.__file__))
    try:
        found = [
            e for e in os.listdir(site) if e.startswith("wasmtime-") and e.endswith(".dist-info")
        ]
    except OSError:
        found = []
    if len(found) == 1:
        return found[0][len("wasmtime-") : -len(".dist-info")]
    try:
        from importlib.metadata import version

        return version("wasmtime")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "unknown"


class _Output(OutputSink):
    """A guest output stream that counts bytes against the shared output budget."""

    def __init__(self, target: str, budget: _Budget, fallback) -> None:
        super().__init__(target, fallback)
        self.budget = budget

    def __call__(self, data: bytes) -> int:
        if not self.budget.take(len(data)):
            return -errno.EFBIG
        try:
            self.write(data)
        except OSError:
            return -errno.EPIPE
        return len(data)


class _Budget:
    def __init__(self, limit: Optional[int], on_exceeded) -> None:
        self.limit = limit
        self.used = 0
        self.exceeded = False
        self.on_exceeded = on_exceeded

    def take(self, n: int) -> bool:
        self.used += n
        if self.limit is not None and self.used > self.limit:
            if not self.exceeded:
                self.exceeded = True
                self.on_exceeded()
            return False
        return True


def _kind(extern_type: Any) -> str:
    return {
        "FuncType": "func",
        "MemoryType": "memory",
        "TableType": "table",
        "GlobalType": "global",
    }.get(type(extern_type).__name__, "tag")


class _GuestExit(wasmtime.ExitTrap):
    """proc_exit(status) with the status whole: wasmtime's own proc_exit refuses any
    status outside 0..125 with an error that does not say which (issue #13)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"guest called proc_exit({status})")
        self.code = status & 0xFFFFFFFF  # WASI's exitcode is a u32


def _proc_exit(status: int) -> None:
    raise _GuestExit(status)


def _capture_exit(linker: wasmtime.Linker) -> None:
    """Shadow WASI's proc_exit with one that reports any status (see _GuestExit)."""
    linker.allow_shadowing = True
    i32 = wasmtime.ValType.i32()
    linker.define_func(
        "wasi_snapshot_preview1", "proc_exit", wasmtime.FuncType([i32], []), _proc_exit
    )
    linker.allow_shadowing = False


class WasmtimeInstance(Instance):
    def __init__(
        self, engine: WasmtimeEngine, module: Any, limits: Limits, wasi: Optional[WasiSetup]
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.store = wasmtime.Store(engine.engine)
        self.watch = None  # the running call's deadline.Watch
        self.outputs: list = []
        self.budget = _Budget(limits.output, self._stop_flood)
        self.warnings: list = []
        self._set_limits(getattr(module, "_wasmsbx_layout", None))
        self.fuel_used = 0
        self.fuel_armed = 0
        self.memories = [e.name for e in engine.exports(module) if e.kind == "memory"]
        # Every defined memory, exported under a hidden name at compile time (--stats).
        self.held = [
            e.name
            for e in module.exports
            if e.name.startswith(HIDDEN_EXPORT) and _kind(e.type) == "memory"
        ]
        self.shift = getattr(module, "_wasmsbx_shift", None)
        self._arm()
        linker = wasmtime.Linker(engine.engine)
        imports = engine.imports(module)
        if any(i.is_wasi for i in imports):
            self._set_wasi(wasi or WasiSetup())
            linker.define_wasi()
            _capture_exit(linker)
        self._check_imports(imports)
        try:
            self.instance = self._guarded("start function", linker.instantiate, self.store, module)
        except wasmtime.Trap as trap:
            raise self._trap_error(trap, "start function") from None
        except wasmtime.WasmtimeError as exc:
            raise self._instantiate_error(exc, module) from None
        self.exports = self.instance.exports(self.store)

    # ------------------------------------------------------------------ setup
    def _set_limits(self, found: Any) -> None:
        """The store limiter, with per-memory and per-table caps that keep the policy's
        totals (wasm_limits.plan): the limiter itself caps each memory separately."""
        limits = self.limits
        try:
            caps = plan(found, limits.memory, limits.table_elements)
        except TotalsError as exc:
            raise totals_error(exc, limits) from None
        self.store.set_limits(
            memory_size=caps.memory_each,
            table_elements=-1 if caps.table_each is None else caps.table_each,
            instances=-1 if limits.instances is None else limits.instances,
            tables=caps.tables,
            memories=caps.memories,
        )

    def _set_wasi(self, wasi: WasiSetup) -> None:
        """WASI for the store. wasmtime opens a stdin path itself, and a FIFO's open
        waits for a writer: the keeper watches it like a blocked host call (the command
        line's hard stop ends it at the deadline, exit 112)."""
        watch = KEEPER.enter(None, self.limits.seconds(), lambda: self._stuck("opening stdin"))
        try:
            self.store.set_wasi(self._wasi_config(wasi))
        except wasmtime.WasmtimeError as exc:
            raise errors.InputError(
                f"cannot set up the guest's stdio: {_first_line(exc)}",
                path=wasi.stdin if isinstance(wasi.stdin, str) else None,
            ) from None
        finally:
            KEEPER.leave(watch)

    def _wasi_config(self, wasi: WasiSetup) -> wasmtime.WasiConfig:
        config = wasmtime.WasiConfig()
        config.argv = list(wasi.argv)
        config.env = list(wasi.env.items())
        if wasi.grants:  # never the folder of the keys that vouch for native code
            from ..trust import refuse_key_grants

            refuse_key_grants(wasi.grants)
        for grant in wasi.grants:
            config.preopen_dir(grant.host, grant.guest, grant.writable)
        stdin = wasi.stdin
        if stdin == "inherit":
            config.inherit_stdin()
        elif isinstance(stdin, (bytes, bytearray)):
            config.stdin_file = self._bytes_file(stdin)
        elif stdin != "null":
            config.stdin_file = stdin
        out = _Output(wasi.stdout, self.budget, sys.stdout.buffer)
        err = _Output(wasi.stderr, self.budget, sys.stderr.buffer)
        self.outputs = [out, err]
        config.stdout_custom = out
        config.stderr_custom = err
        return config

    def _bytes_file(self, data: bytes) -> str:
        import tempfile

        handle, path = tempfile.mkstemp(prefix="wasmsbx-stdin-")
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        self._tmp = path
        return path

    def _check_imports(self, imports: list) -> None:
        missing = [i.describe() for i in imports if not (i.is_wasi and i.kind == "func")]
        if missing:
            raise errors.LinkError(
                f"module imports what the sandbox does not provide: {', '.join(missing)}",
                hint="wasmsbx provides WASI preview1 only; rebuild the module without these",
                imports=[m.split(" ", 1)[1] for m in missing],
            )

    def _arm(self, calls: int = 1) -> None:
        if self.limits.fuel is not None:
            # n calls of a block get n times the fuel, held below wasmtime's i64 (a
            # larger value wraps to "exhausted").
            self.fuel_armed = min(self.limits.fuel * calls, 2**63 - 1)
            self.store.set_fuel(self.fuel_armed)

    # ------------------------------------------------------------------ calls
    def func(self, name: str) -> Any:
        return self.exports[name]

    def call(self, name: str, args: Sequence[Any]) -> list:
        func = self.exports[name]
        self._arm()
        try:
            result = self._guarded(name, func, self.store, *args)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise self._call_error(exc, name) from None
        finally:
            self._account_fuel()
        if result is None:
            return []
        return list(result) if isinstance(result, list) else [result]

    def repeat(self, name: str, args: Sequence[Any]):
        """``run(n)``: n calls in a tight loop over the raw wasmtime Func, armed once.

        The block must finish within the timeout and gets n times the per-call fuel.
        """
        func, store, args = self.exports[name], self.store, tuple(args)

        def run(calls: int) -> None:
            self._arm(calls)
            try:
                self._guarded(name, _loop, func, store, args, calls)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                raise self._call_error(exc, name) from None
            finally:
                self._account_fuel()

        return run

    def _call_error(self, exc: Exception, name: str) -> errors.WasmsbxError:
        if isinstance(exc, wasmtime.ExitTrap):
            return errors.TrapError(
                f"guest called proc_exit({exc.code}) in {name}", exit_code_guest=exc.code
            )
        if isinstance(exc, wasmtime.Trap):
            return self._trap_error(exc, name)
        # Any other runtime refusal (e.g. a WASI call on a module without a memory export)
        return errors.ModuleError(f"{name} failed: {_first_line(exc)}")

    def run_command(self) -> int:
        try:
            start = self.exports["_start"]
        except KeyError:
            raise errors.UsageError(
                "module has no _start export, so it is not a WASI command",
                hint="name an exported function to call",
            ) from None
        self._arm()
        try:
            self._guarded("_start", start, self.store)
            return 0
        except wasmtime.ExitTrap as exit_trap:
            return exit_trap.code
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise self._call_error(exc, "_start") from None
        finally:
            self._account_fuel()
            self.close()

    def _guarded(self, where: str, func: Any, *args: Any) -> Any:
        """``func(*args)`` under the deadline: the keeper watches it, the store is armed
        with the epoch delta the keeper computed (one FFI call)."""
        watch = KEEPER.enter(
            self.engine.clock,
            self.limits.seconds(),
            lambda: self._stuck(where),
            self.store.set_epoch_deadline,
        )
        self.watch = watch
        try:
            return func(*args)
        finally:
            KEEPER.leave(watch)

    def _stuck(self, where: str) -> errors.WasmsbxError:
        """The error of a call the keeper found blocked past its deadline (a host call)."""
        if self.budget.exceeded:
            return self._output_error([])
        return errors.TimeoutExceeded(
            f"timeout: {where} still running after {format_duration(self.limits.timeout)} "
            "(blocked in a host call)",
            hint="raise limits.timeout (--timeout 30s) if the guest needs longer",
            limit_value=self.limits.timeout,
        )

    def _stop_flood(self) -> None:
        """The output limit is reached: end the running call as a timeout would."""
        if self.watch is not None:
            KEEPER.expire(self.watch)

    def _account_fuel(self) -> None:
        if self.limits.fuel is not None:
            self.fuel_used += self.fuel_armed - self.store.get_fuel()

    def usage(self) -> Usage:
        fuel_used = self.fuel_used if self.limits.fuel is not None else None
        memory = self._memory_bytes()
        if memory is not None and memory + 65536 > self.limits.memory:
            self.warnings.append(
                f"memory limit {format_size(self.limits.memory)} reached: "
                f"guest holds {format_size(memory)}; further memory.grow fails"
            )
        out, err = (self.outputs + [None, None])[:2]
        return Usage(
            fuel_used=fuel_used,
            memory_bytes=memory,
            stdout=bytes(out.captured) if out and out.captured is not None else None,
            stderr=bytes(err.captured) if err and err.captured is not None else None,
            warnings=tuple(dict.fromkeys(self.warnings)),
        )

    def read_memory(self, offset: int, length: int, memory: str = "memory") -> bytes:
        import ctypes

        base = self._memory_range(offset, length, memory)
        return ctypes.string_at(base + offset, length) if length else b""

    def write_memory(self, offset: int, data: bytes, memory: str = "memory") -> None:
        import ctypes

        base = self._memory_range(offset, len(data), memory)
        if not data:
            return
        if isinstance(data, bytes):
            source = data
        else:
            try:  # a bytearray (or a writable view of one): no intermediate copy
                source = (ctypes.c_char * len(data)).from_buffer(data)
            except TypeError:
                source = bytes(data)
        ctypes.memmove(base + offset, source, len(data))

    def _memory_range(self, offset: int, length: int, memory: str) -> int:
        """The host address of the memory's byte 0, after checking the range is inside it."""
        import ctypes

        mem = self.exports[memory] if memory in self.memories else None
        if mem is None:
            raise IndexError(f"the module exports no memory named {memory!r}")
        size = mem.data_len(self.store)
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(
                f"bytes {offset}..{offset + length} are outside the {size}-byte memory"
            )
        return ctypes.addressof(mem.data_ptr(self.store).contents)

    def _memory_bytes(self) -> Optional[int]:
        names = self.held or self.memories
        if not names or not hasattr(self, "exports"):
            return None
        return sum(self.exports[name].data_len(self.store) for name in names)

    def close(self) -> None:
        for output in self.outputs:
            output.close()
        tmp = getattr(self, "_tmp", None)
        if tmp:
            os.unlink(tmp)
            self._tmp = None

    # ------------------------------------------------------------------ errors
    def _trap_error(self, trap: wasmtime.Trap, where: str) -> errors.WasmsbxError:
        code = trap.trap_code
        frames = _frames(trap, self.shift)
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return errors.FuelExhausted(
                f"fuel exhausted after {format_count(self.limits.fuel or 0)} units in {where}",
                hint="raise limits.fuel (--fuel N) if the guest needs more",
                backtrace=frames,
                limit_value=self.limits.fuel,
            )
        if code == wasmtime.TrapCode.INTERRUPT:
            if self.budget.exceeded:
                return self._output_error(frames)
            if self.watch is not None and self.watch.interrupted:  # Ctrl-C, SIGTERM
                raise KeyboardInterrupt
            return errors.TimeoutExceeded(
                f"timeout: {where} still running after {format_duration(self.limits.timeout)}",
                hint="raise limits.timeout (--timeout 30s) if the guest needs longer",
                backtrace=frames,
                limit_value=self.limits.timeout,
            )
        if code == wasmtime.TrapCode.STACK_OVERFLOW:
            size = format_size(self.limits.stack) if self.limits.stack else "the default"
            return errors.StackExhausted(
                f"wasm stack exhausted in {where} (stack limit {size})",
                hint="unbounded recursion? raise limits.stack if the guest needs deeper calls",
                backtrace=frames[:MAX_FRAMES],
            )
        message = _trap_message(trap)
        held = self._memory_bytes()
        refused = memory_limit_error(self.limits.memory, held, where, message, frames)
        if refused is not None:
            return refused
        return errors.TrapError(f"{where} trapped: {message}", backtrace=frames)

    def _output_error(self, frames: list) -> errors.WasmsbxError:
        return errors.OutputLimitExceeded(
            f"output limit {format_size(self.limits.output or 0)} reached: guest wrote "
            f"more to stdout/stderr",
            hint="raise limits.output in the policy",
            backtrace=frames,
            limit_value=self.limits.output,
        )

    def _instantiate_error(self, exc: Exception, module: Any) -> errors.WasmsbxError:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else "instantiation failed"
        lowered = text.lower()
        if "memory" in lowered and ("limit" in lowered or "minimum" in lowered):
            need = _declared_memory(self.engine, module)
            asked = f": module needs {format_size(need)} at start" if need else ""
            return errors.MemoryLimitExceeded(
                f"memory limit {format_size(self.limits.memory)} reached{asked}",
                hint="raise limits.memory (--memory SIZE)",
            )
        if "table" in lowered and ("limit" in lowered or "minimum" in lowered):
            return errors.TableLimitExceeded(
                f"table limit {format_count(self.limits.table_elements or 0)} elements reached "
                "at instantiation",
                hint="raise limits.table_elements",
            )
        if "instance" in lowered and "limit" in lowered:
            return errors.InstanceLimitExceeded(f"instance limit reached: {first}")
        return errors.LinkError(f"cannot instantiate module: {first}", detail=text)


def _hides_memories(module: Any) -> bool:
    """Whether compile() added the hidden memory exports (export_memories): then every
    export under the reserved prefix is one of ours, never the module's own."""
    shift = getattr(module, "_wasmsbx_shift", None)
    return shift is not None and shift.shift > 0


def _loop(func: Any, store: Any, args: tuple, calls: int) -> None:
    for _ in range(calls):
        func(store, *args)


def _declared_memory(engine: WasmtimeEngine, module: Any) -> Optional[int]:
    for export in module.exports:
        if type(export.type).__name__ == "MemoryType":
            return export.type.limits.min * 65536
    return None


def _trap_message(trap: wasmtime.Trap) -> str:
    text = trap.message
    marker = "wasm trap: "
    if marker in text:
        return text.split(marker, 1)[1].strip().splitlines()[0]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "trap"


def _frames(trap: wasmtime.Trap, shift: Any = None) -> list:
    out = []
    for frame in trap.frames[:MAX_FRAMES]:
        name = frame.func_name or f"<func {frame.func_index}>"
        offset = frame.module_offset
        if shift is not None and 0 <= offset < 2**63:
            offset = shift.original_offset(offset)  # as in the module file
        where = f" @ 0x{offset:x}" if 0 <= offset < 2**63 else ""
        out.append(f"{name}{where}")
    return out


class WasmtimeEngine(Engine):
    backend = "wasmtime"

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = bool(options.fuel)
        config.cranelift_opt_level = _OPT_LEVELS.get(options.optimize, "speed")
        if options.stack:
            config.max_wasm_stack = options.stack
        self.engine = wasmtime.Engine(config)
        self.clock = KEEPER.clock(self.engine)  # epochs advanced by the process's one keeper

    def compile(self, wasm: bytes) -> Any:
        exported = export_memories(wasm)
        try:
            module = wasmtime.Module(self.engine, exported.wasm)
        except wasmtime.WasmtimeError as exc:
            raise _module_error(exc) from None
        module._wasmsbx_layout = layout(wasm)
        module._wasmsbx_shift = exported._replace(wasm=b"")
        return module

    def describe(self, module: Any, wasm: bytes) -> None:
        if getattr(module, "_wasmsbx_layout", None) is None:
            module._wasmsbx_layout = layout(wasm)
        if getattr(module, "_wasmsbx_shift", None) is None:
            exported = export_memories(wasm)._replace(wasm=b"")
            ours = any(
                e.name.startswith(HIDDEN_EXPORT) and _kind(e.type) == "memory"
                for e in module.exports
            )
            module._wasmsbx_shift = exported if ours and exported.shift else None

    def serialize(self, module: Any) -> bytes:
        return bytes(module.serialize())

    def deserialize(self, native: Any) -> Any:
        """Load native code that passed authentication (a ``trust.Authenticated``)."""
        from ..trust import require

        data = require(native)
        try:
            return _deserialize(self.engine, data)
        except wasmtime.WasmtimeError as exc:
            raise errors.ModuleError(f"cannot load precompiled code: {_first_line(exc)}") from None

    def exports(self, module: Any) -> list:
        cached = getattr(module, "_wasmsbx_exports", None)
        if cached is not None:
            return cached
        # Names and kinds only: wasmtime-py aborts the process when asked for the params of
        # a function that takes v128, so signatures come from wasmsbx.facts instead.
        out = [
            ExportInfo(export.name, _kind(export.type))
            for export in module.exports
            if not (export.name.startswith(HIDDEN_EXPORT) and _hides_memories(module))
        ]
        module._wasmsbx_exports = out  # type information is immutable: read it once
        return out

    def imports(self, module: Any) -> list:
        return [ImportInfo(i.module, i.name or "", _kind(i.type)) for i in module.imports]

    def instantiate(
        self, module: Any, limits: Limits, wasi: Optional[WasiSetup] = None
    ) -> WasmtimeInstance:
        return WasmtimeInstance(self, module, limits, wasi)

    def fingerprint(self) -> dict:
        return {
            "backend": "wasmtime",
            "version": _version(),
            "compiler": "cranelift",
            "optimize": self.options.optimize,
            "fuel": self.options.fuel,
            "stack": self.options.stack,
            "epoch": True,
            "memory_exports": 1,  # compile() exports every memory under a hidden name
            "features": sorted(FEATURES),
            "target": f"{sys.platform}-{os.uname().machine}",
        }


def _deserialize(engine: Any, data: Any) -> Any:
    """``wasmtime.Module.deserialize`` without its copy of a writable buffer.

    wasmtime-py copies its argument into a ctypes array before handing it to
    ``wasmtime_module_deserialize`` (which copies the code into memory of its own anyway):
    about a millisecond for a 2 MB artifact, a third of a cached load. A writable buffer
    (the cache reads entries into a bytearray) is lent to the C call as it is; anything
    else, or a wasmtime-py without these internals, takes the public path.
    """
    import ctypes

    view = memoryview(data)
    ffi = getattr(wasmtime, "_ffi", None)
    deserialize = getattr(ffi, "wasmtime_module_deserialize", None)
    from_ptr = getattr(wasmtime.Module, "_from_ptr", None)
    if view.readonly or not view.contiguous or deserialize is None or from_ptr is None:
        return wasmtime.Module.deserialize(
            engine, data if isinstance(data, (bytes, bytearray)) else view.tobytes()
        )
    buffer = (ctypes.c_uint8 * view.nbytes).from_buffer(view.cast("B"))
    ptr = ctypes.POINTER(ffi.wasmtime_module_t)()
    error = deserialize(engine.ptr(), buffer, view.nbytes, ctypes.byref(ptr))
    del buffer  # releases the buffer export before anything can resize ``data``
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    return from_ptr(ptr)


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # wasmtime puts the cause last: "failed to parse ... Caused by: unexpected end-of-file"
    if "Caused by:" in lines[:-1]:
        cause = lines[lines.index("Caused by:") + 1]
        if lines[0].startswith("error while executing"):  # a backtrace follows, not a reason
            return cause
        return f"{lines[0]}: {cause}"
    return lines[0] if lines else "unknown error"


def _module_error(exc: Exception) -> errors.ModuleError:
    return errors.ModuleError(
        f"invalid module: {_first_line(exc)}",
        hint="check that the file is a WebAssembly module built for wasm32",
    )


class WasmtimeBackend(Backend):
    name = "wasmtime"
    compilers = ("cranelift",)
    default_compiler = "cranelift"

    def probe(self) -> Availability:
        return Availability(True)

    def version(self) -> str:
        return _version()

    def capabilities(self, compiler: Optional[str] = None) -> Capabilities:
        return Capabilities(
            features=FEATURES,
            security=frozenset(
                {
                    "fuel",
                    "timeout",
                    "interrupt",
                    "memory-limit",
                    "table-limit",
                    "stack-limit",
                    "instance-limit",
                    "wasi",
                    "wasi-readonly",
                    "stdio-redirect",
                    "fs-confined",
                }
            ),
            performance=frozenset({"aot", "opt-levels", "in-process", "releases-gil"}),
            debugging=frozenset({"backtrace", "profiling", "debug-info"}),
            compilers=self.compilers,
            # benchmarks/backends.py (cpu.c): compile 56 ms, run bench(4) 98 ms; see wasmer's
            # SPEED for the scale. Epoch interruption costs it some run speed.
            compile_speed=0.65,
            run_speed=0.85,
            notes=("every limit is enforced in-process",),
        )

    def engine(self, options: EngineOptions) -> WasmtimeEngine:
        return WasmtimeEngine(options)
