"""Components on ``wasmtime.component``: compile, introspect, instantiate under limits.

The engine is the wasmtime backend's (``WasmtimeEngine``: its config, epoch ticker and
cache fingerprint), so a component gets exactly the engine options a module would.
Every policy knob maps onto the store as for a core module, with two differences the
component model brings (see README, "Components"):

- memory: wasmtime's store limit caps each linear memory alone; a component may hold
  several, so the per-memory cap is chosen (``binary.memory_cap``) to keep their
  *total* within ``limits.memory``, and the store may create no more memories than the
  binary declares.
- instances: a component holds several core instances (4 for an adapted C command);
  ``limits.instances`` counts instances of the component, each allowed the core
  instances its binary declares (``binary.scan``).

Network: ``wasi:http`` is never linked (the import is refused before instantiation);
``wasi:sockets`` is linked because toolchains import it by habit, but the WASI context
grants no socket address and no name lookup, so every socket call is denied.
"""

from __future__ import annotations

import errno
import threading
import time
from collections import namedtuple
from typing import Any, Optional

import wasmtime
import wasmtime.component as wc

from .. import errors
from ..backends.base import Limits, Usage, WasiSetup, take_turn

# The module backend's output budget and WASI setup (one for stdout and stderr; a write
# into a closed pipe is EPIPE inside the guest; a FIFO stdin's open is watched).
from ..backends.wasmtime import backend as _module_backend
from ..backends.wasmtime.backend import _Budget, set_wasi
from ..backends.wasmtime.pipes import OutputPipes
from ..units import format_count, format_duration, format_limit, format_size
from . import binary, fastbytes, fastlift, probe, wave
from .types import (
    COMPONENT_PARTS,
    INTS,
    TYPE_PARTS,
    FuncSig,
    TypeTooLarge,
    component_budget,
    func_sig,
)
from .values import Overdue, ValueProblem, json_size, lift, lower, start_clock

fastlift.install()  # each type read once per call (wasmtime-py: per value); lists paced
fastbytes.install()  # list<u8> in bulk: wasmtime-py converts it byte by byte
MAX_FRAMES = 12
PROBE_FUEL = 10_000  # the memory probe runs a few instructions per memory
PROBE_EPOCHS = 1 << 20  # its own deadline: ticks of the engine's epoch clock
RESULT_FREE = 64 << 10  # a call's result always allowed, whatever limits.output says
# Results that print in at most a few hundred bytes (a float positionally: 330), so never
# past RESULT_FREE: _check_result does not measure them.
SHORT_KINDS = frozenset(INTS) | {"bool", "f32", "f64", "char"}
WIDEST_ESCAPE = 12  # a character's widest printed form: JSON's surrogate pair, \ud83d\ude00
HOSTCALL_FUEL = "fuel allocated for hostcalls has been exhausted"
# Interfaces ``Linker.add_wasip2`` provides; anything else is refused before linking.
WASI_PROVIDED = ("wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:filesystem/", "wasi:random/")
WASI_SOCKETS = "wasi:sockets/"
NETWORK_DENIED = ("wasi:http/",)


class ComponentExport(namedtuple("ComponentExport", "name interface func sig")):
    """One exported function: ``name`` is how users call it (``greet``, or
    ``ns:pkg/iface@1.0.0#greet`` inside an interface)."""

    name: str
    interface: Optional[str]
    func: str
    sig: FuncSig
    __slots__ = ()


class ComponentImport(namedtuple("ComponentImport", "name kind")):
    """One import: an interface (``wasi:cli/stdout@0.2.0``) or a function."""

    name: str
    kind: str  # interface | func | type | module | component
    __slots__ = ()


def compile_component(engine: Any, wasm: bytes) -> Any:
    """A ``wasmtime.component.Component`` (ModuleError when wasmtime refuses it)."""
    try:
        return wc.Component(engine.engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise errors.ModuleError(
            f"invalid component: {_first_line(exc)}",
            hint="check that the file is a WebAssembly component (wasm-tools validate)",
        ) from None


def exports(engine: Any, component: Any, probed: bool = False) -> list:
    """Every exported function, root ones first, with its WIT signature; ``probed``: the
    component carries wasmsbx's memory probe (``probe.NAME``), which is left out."""
    out = []
    total = component_budget()
    for name, item in component.type.exports(engine.engine).items():
        kind = type(item.ty).__name__
        if probed and name == probe.NAME:
            continue
        if kind == "FuncType":
            out.append(ComponentExport(name, None, name, _sig(name, item.ty, total)))
        elif kind == "ComponentInstanceType":
            for fname, member in item.ty.exports(engine.engine).items():
                if type(member.ty).__name__ == "FuncType":
                    full = f"{name}#{fname}"
                    out.append(ComponentExport(full, name, fname, _sig(full, member.ty, total)))
    return out


def _sig(name: str, ft: Any, total: Any) -> Any:
    """``func_sig``, refused (ModuleError) when its types expand past the budgets."""
    try:
        total.spend(1, len(name))  # (a func() spends nothing else: red team round 35)
        return func_sig(ft, total)
    except TypeTooLarge:
        raise errors.ModuleError(
            f"the component's WIT types are too large: {_shown(name)}'s expand to more than "
            f"{TYPE_PARTS:,} parts or 64 KiB of names (or all exports together to more "
            f"than {COMPONENT_PARTS:,} parts)",
            hint="wasmtime hands each function's types over expanded; a type built by "
            "nesting one in another many times grows exponentially",
        ) from None


def _shown(name: str) -> str:
    return errors.inert(name)


def has_probe(engine: Any, component: Any, wasm: Optional[bytes]) -> bool:
    """Whether ``component`` carries the memory probe ``ComponentEngine.compile`` adds:
    it exports ``probe.NAME`` and its source (``wasm``) does not hold that name, so the
    export cannot be the guest's own. ``wasm`` None: the caller knows from elsewhere
    (an artifact's authenticated header) and only the export is checked."""
    if wasm is not None and not probe.ours(wasm):
        return False
    item = component.type.exports(engine.engine).get(probe.NAME)
    return item is not None and type(item.ty).__name__ == "FuncType"


def with_probe(layout: binary.Layout) -> binary.Layout:
    """The layout of the component with its probe: one core instance more."""
    if layout.probed:
        return layout
    return layout._replace(
        core_instances=layout.core_instances + 1,
        probed=True,
        host=layout.host + PROBE_HOST,
    )


# The probe's core instance: an empty instance plus its few functions and imports.
PROBE_HOST = 2 * binary.INSTANCE_BYTES


def imports(engine: Any, component: Any) -> list:
    kinds = {
        "ComponentInstanceType": "interface",
        "FuncType": "func",
        "ModuleType": "module",
        "ComponentType": "component",
    }
    return [
        ComponentImport(name, kinds.get(type(item.ty).__name__, "type"))
        for name, item in component.type.imports(engine.engine).items()
    ]


def refused_imports(names: list) -> tuple:
    """(network imports, other imports) the sandbox does not provide."""
    network = [n for n in names if n.startswith(NETWORK_DENIED)]
    other = [
        n for n in names if not n.startswith(WASI_PROVIDED + (WASI_SOCKETS,)) and n not in network
    ]
    return network, other


def writes_output(names: list) -> bool:
    """Whether a component importing ``names`` can write to stdout or stderr: only the
    streams of ``wasi:cli/stdout`` and ``wasi:cli/stderr`` lead there (a nested
    component reaches what the outer one imports, nothing more)."""
    return any(name.startswith(("wasi:cli/stdout", "wasi:cli/stderr")) for name in names)


def check_imports(names: list) -> None:
    network, other = refused_imports(names)
    if network:
        raise errors.LinkError(
            f"component imports {', '.join(network)}: network access is off in this sandbox",
            hint="network.enabled = false: wasmsbx links no wasi:http; rebuild without it",
            imports=network,
        )
    if other:
        raise errors.LinkError(
            f"component imports what the sandbox does not provide: {', '.join(other)}",
            hint="wasmsbx provides the WASI 0.2 interfaces (cli, io, clocks, filesystem, "
            "random; sockets always denied)",
            imports=other,
        )


class ComponentInstance:
    """One instance of a component in its own store, under the limits."""

    def __init__(
        self,
        engine: Any,
        component: Any,
        layout: binary.Layout,
        limits: Limits,
        wasi: WasiSetup,
        import_names: list,
    ) -> None:
        self.engine = engine
        if engine.options.reservation is not None:  # (dense: as a module's, red team 95)
            limits = _module_backend._reserved(limits, engine.options)
        self.limits = limits
        self.layout = layout
        self.poisoned = False
        self.trapped = False  # a trap (exit included): the instance refuses every call
        self._probe: Any = None
        self.fuel_used = 0
        self.fuel_armed = 0
        self.outputs: list = []
        self.warnings: list = []
        self.watch: Any = None  # the running call's deadline.Watch
        # One call at a time: calls from several threads take turns (wasmtime's store is
        # not safe to use from two at once; red team round 25), each waiting at most
        # its timeout.
        self.turn = threading.RLock()
        self.budget = _Budget(limits.output, self._stop_flood)
        # stdout and stderr through pipes, drained at the end of every call (pipes.py);
        # none for a component that cannot reach them (no thread, no descriptors: many
        # components are functions without output)
        self.pipes = OutputPipes() if writes_output(import_names) else None
        self.uses_wasi = any(str(name).startswith("wasi:") for name in import_names)
        check_imports(import_names)
        self.store = wasmtime.Store(engine.engine)
        try:
            self._instantiate(component, wasi)
        except BaseException as exc:
            self.discard()  # (the traceback keeps this frame, so ``self``, so the store)
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                raise errors.ResourceExhausted(  # (a bare OSError: red team 142)
                    f"out of file descriptors instantiating a component ({exc.strerror})",
                    hint="close sandboxes you no longer use, or raise the open-files "
                    "limit (ulimit -n)",
                ) from None
            raise
        self._funcs: dict = {}

    def _instantiate(self, component: Any, wasi: WasiSetup) -> None:
        engine, limits = self.engine, self.limits
        self._set_limits()
        self.outputs = set_wasi(
            self.store,
            wasi,
            self.budget,
            limits.seconds(),
            self._stuck_opening,
            self.pipes,
            io=self.uses_wasi,
        )
        linker = wc.Linker(engine.engine)
        linker.add_wasip2()
        self._arm()
        try:
            self.instance = self._guarded(
                "instantiation", linker.instantiate, self.store, component
            )
        except wasmtime.WasmtimeError as exc:
            raise self._error(exc, "instantiation") from None
        finally:
            self._account_fuel()

    # ------------------------------------------------------------------ setup
    def _set_limits(self) -> None:
        layout, limits = self.layout, self.limits
        memories = layout.memories
        if layout.gc_heap:
            # The store's GC heap, which wasmtime's limiter caps like one more memory:
            # counted, it takes its share of limits.memory (it came on top: the whole
            # limit again in arrays, red team round 68), as for modules (limits.layout).
            memories += ((0, None),)
        cap = binary.memory_cap(limits.memory, memories)
        if cap is None:
            need = sum(low for low, _ in layout.memories)
            raise errors.MemoryLimitExceeded(
                f"memory limit {format_limit(limits.memory)} reached: component needs "
                f"{format_size(need)} at start",
                hint="raise limits.memory (--memory SIZE)",
                limit_value=limits.memory,
            )
        self.memory_cap = cap
        self._check_host()
        # limits.instances counts component instances (0 allows none: never weakened),
        # each with the core instances its binary declares and the fused adapters
        # wasmtime may add (binary.Layout.adapters; red team round 76).
        count = limits.instances
        table_each, tables = self._table_caps(1 if count is None else count)
        self.store.set_limits(
            memory_size=cap,
            table_elements=table_each,
            instances=-1 if count is None else max(layout.instance_limit(), 1) * count,
            tables=tables,
            memories=-1 if count is None else len(layout.memories) * count,
        )

    def _refuse_forked(self, where: str) -> None:
        """A fork's child may not run an instance made before the fork whose output goes
        through pipes: its parent's thread reads them (red team round 80). Before the
        turn is waited for: a call another thread ran at the fork holds it for good in
        the child, which waited out the timeout (112) instead (round 81). Nor any
        instance using WASI in a child forked after WASI was set up (round 85:
        ``refuse_forked_wasi``)."""
        if self.pipes is not None and self.pipes.forked:
            raise errors.UsageError(
                f"cannot run {where}: this component's output goes through pipes its "
                "parent process reads (the instance was made before os.fork())",
                hint="make the sandbox in this process (after the fork)",
            )
        if self.uses_wasi:
            from ..backends.wasmtime.teardown import refuse_forked_wasi

            refuse_forked_wasi()

    def _check_host(self) -> None:
        """Refuse, before instantiating, a component whose core instances would hold
        more of the runtime's own memory (their globals, functions, imports, passive
        segments and tags:
        binary.Layout.host) than limits.memory. wasmtime counts none of it against the
        store's limits: 1,001 instances of a module with 100,000 globals held 1.6 GB
        under --memory 16MiB (red team round 76). It is bounded apart from the linear
        memories, so a guest holds at most limits.memory of each."""
        layout, limit = self.layout, self.limits.memory
        if layout.host <= limit:
            return
        made = layout.core_instances
        raise errors.MemoryLimitExceeded(
            f"memory limit {format_limit(limit)} reached: the component's {made:,} core "
            f"instances would hold about {format_size(layout.host)} of the runtime's "
            "memory (their globals, functions, imports, passive segments, tags and types, "
            "outside linear memory)",
            hint="raise limits.memory (--memory SIZE); each core instance holds 16 bytes "
            "per global, 24 per function and 128 per passive element segment, once per "
            "instantiation",
            limit_value=limit,
        )

    def _table_caps(self, count: int) -> tuple:
        """(elements per table, tables) for the store's limiter: limits.table_elements
        is the total of every table the component defines, as for a module. It was a cap
        on each table, and wasmtime allows 10,000 tables a store: a 3 KB component held
        800 MB of tables under the default policy (red team round 68)."""
        from ..backends.limits import share

        total, found = self.limits.table_elements, self.layout.tables
        if total is None or not found:
            return -1, len(found) * count
        need = sum(low for low, _ in found)
        each = share([high for _, high in found], total)
        if need > total or any(low > each for low, _ in found):
            raise errors.TableLimitExceeded(
                f"table limit reached: component needs {need:,} table elements at start "
                f"(limits.table_elements {total:,}, the total of its tables)",
                hint="raise limits.table_elements",
                limit_value=total,
            )
        return each, len(found) * count

    def _stuck_opening(self) -> errors.WasmsbxError:
        """The keeper's error for a stdin whose open blocks (a FIFO with no writer)."""
        return self._stuck_error("opening stdin", " (blocked in a host call)")

    def _arm(self) -> None:
        """Arm the fuel; the deadline is armed by _guarded through the process's keeper."""
        if self.limits.fuel is not None:
            self.fuel_armed = self.limits.fuel
            self.store.set_fuel(self.fuel_armed)

    def _guarded(self, where: str, func: Any, *args: Any) -> Any:
        """``func(*args)`` under the deadline, watched by the process's deadline keeper
        (backends/deadline.py), which also stops a call blocked in a host call."""
        from ..backends import stackroom
        from ..backends.deadline import KEEPER

        below = stackroom.enter(self.limits.stack)  # (room on this thread's stack)
        try:
            watch = KEEPER.enter(
                self.engine.clock,
                self.limits.seconds(),
                lambda: self._stuck_error(where),
                self.store.set_epoch_deadline,
            )
        except BaseException:
            stackroom.leave(below)
            raise
        self.watch = watch
        # ("exceeded": this call's, as the module backend's _call_begins says)
        self.budget.exceeded = False
        refused = self.budget.refused
        try:
            result = func(*args)
        finally:
            # Every byte the guest wrote in the call, passed on (or refused) before the
            # call's result is: a non-blocking write came after it (red team round 76).
            if self.pipes is not None:
                self.pipes.drain()
            KEEPER.leave(watch)
            stackroom.leave(below)
            if not watch.interrupted:  # (its error refers to self: a cycle that kept every
                self.watch = None  # dropped instance, and its memory, until gc ran)
        # returned past its deadline (Watch.overran), or past limits.output (a write
        # refused, the guest went on): the error all the same
        if watch.overran() or self.budget.refused != refused:
            raise self._stuck_error(where)
        return result

    def _output_error(self, frames: list) -> errors.WasmsbxError:
        return errors.OutputLimitExceeded(
            f"output limit {format_limit(self.limits.output or 0)} reached: guest wrote "
            "more to stdout/stderr",
            hint="raise limits.output in the policy",
            backtrace=frames,
            limit_value=self.limits.output,
        )

    def _stuck_error(self, where: str, how: str = "") -> errors.WasmsbxError:
        """The keeper's error for a call it must end: output flood or timeout."""
        limits = self.limits
        if self.budget.exceeded:
            return self._output_error([])
        return errors.TimeoutExceeded(
            f"timeout: {where} still running after {format_duration(limits.timeout)}{how}",
            hint="raise limits.timeout (--timeout 30s) if the guest needs longer",
            limit_value=limits.timeout,
        )

    def _stop_flood(self) -> None:
        """The output limit is reached: end the running call as a timeout would, unless
        another call runs on the same (shared) engine, whose time expiring the engine's
        epoch would cut short (the keeper looks with its lock held: red team round 83):
        then the guest's writes fail and its own timeout holds."""
        watch = self.watch
        if watch is not None:
            from ..backends.deadline import KEEPER

            KEEPER.expire_alone(watch, lambda: self._stuck_error("the call"))

    def _account_fuel(self) -> None:
        if self.limits.fuel is not None:
            self.fuel_used += self.fuel_armed - self.store.get_fuel()

    # ------------------------------------------------------------------ calls
    def func(self, export: ComponentExport) -> Any:
        found = self._funcs.get(export.name)
        if found is None:
            index = None
            if export.interface is not None:
                index = self.instance.get_export_index(self.store, export.interface)
            index = self.instance.get_export_index(self.store, export.func, index)
            found = self._funcs[export.name] = self.instance.get_func(self.store, index)
        return found

    def call(self, export: ComponentExport, args: list, bounded: bool = True) -> Any:
        """Call with canonical values (already checked); the result, canonical.
        ``bounded``: its result counts against limits.output (see ``_check_result``;
        a stream's chunks, list<u8> written out as they come, count as its stream)."""
        if self.poisoned:
            raise errors.TrapError("this component instance trapped before; use a fresh one")
        self._refuse_forked(export.name)
        func = self.func(export)
        try:
            raw_args = [lower(a, t) for a, t in zip(args, export.sig.param_types)]
        except ValueProblem as exc:
            raise errors.UsageError(
                f"{export.name}: {exc}",
                hint="a limit of wasmtime-py's untagged variants: the value cannot be passed",
            ) from None
        take_turn(self.turn, self.limits.timeout)
        seconds = self.limits.seconds()
        # the result's conversion ends by the call's deadline too (values.paced)
        start_clock(None if seconds is None else time.monotonic() + seconds)
        try:
            try:
                self._arm()
                raw = self._guarded(export.name, _call_and_return, func, self.store, raw_args)
            except wasmtime.ExitTrap as exit_trap:
                self.poisoned = self.trapped = True
                raise errors.TrapError(
                    f"guest called exit({exit_trap.code}) in {export.name}",
                    exit_code_guest=exit_trap.code,
                ) from None
            except wasmtime.WasmtimeError as exc:
                self.poisoned = self.trapped = True
                exc.__traceback__ = None  # (its frames hold this instance: a cycle kept
                raise self._error(exc, export.name) from None  # every trapped one until gc)
            except Overdue:
                self.poisoned = True  # stopped before its post_return: no further calls
                raise self._stuck_error(f"converting the result of {export.name}") from None
            finally:
                self._account_fuel()
                self.turn.release()
            value = lift(raw, export.sig.result)
            if bounded:
                self._check_result(export, value)
            return value
        except Overdue:
            raise self._stuck_error(f"converting the result of {export.name}") from None
        finally:
            start_clock(None)

    def _check_result(self, export: ComponentExport, value: Any) -> None:
        """A result counts against limits.output as the guest's writes do, by the length
        of its WAVE text (``wave.printed_size``: counted, not built, and only up to the
        limit): printed (WAVE, JSON) a result can be many times its size in the guest's
        memory (a list of strings that all point at the same bytes; floats printed
        positionally, 320 characters for 1e-300; long enum and field names), and the
        host would allocate and write gigabytes (red team rounds 29 and 30). Results up
        to RESULT_FREE always pass, so ``limits.output = 0`` silences a guest without
        refusing its results."""
        limit, t = self.limits.output, export.sig.result
        if limit is None or t is None:
            return
        limit = max(limit, RESULT_FREE)
        kind = t.kind
        if kind in SHORT_KINDS:
            return  # (printed in at most a few hundred bytes: less than RESULT_FREE)
        if kind == "string" and len(value) * WIDEST_ESCAPE + 2 <= limit:
            return  # (no character prints wider, in WAVE or JSON)
        # The larger of its forms: WAVE, and the typed JSON --json prints (three levels in)
        size = wave.printed_size(value, t, limit)
        if size <= limit:
            size = json_size(value, t, limit, level=3)
        if size > limit:
            raise errors.OutputLimitExceeded(
                f"output limit {format_limit(limit)} reached: the result of {export.name} "
                "is larger, printed",
                hint="raise limits.output in the policy, or have the component write bulk "
                "data to stdout (a command component streams it)",
                limit_value=limit,
            )

    def run_command(self, export: ComponentExport) -> int:
        """Run ``wasi:cli/run#run``: 0 for ok, 1 for err, or the code passed to exit."""
        self._refuse_forked(export.name)
        func = self.func(export)
        take_turn(self.turn, self.limits.timeout)
        refused = self.budget.refused
        try:
            self._arm()
            raw = self._guarded(export.name, _call_and_return, func, self.store, [])
        except wasmtime.ExitTrap as exit_trap:
            self.trapped = True
            if self.budget.refused != refused:  # wrote past limits.output, then exited
                raise self._stuck_error(export.name) from None
            return exit_trap.code
        except wasmtime.WasmtimeError as exc:
            self.trapped = True
            exc.__traceback__ = None
            raise self._error(exc, export.name) from None
        finally:
            self._account_fuel()
            self.poisoned = True  # a command runs once
            self.turn.release()
        return 0 if getattr(raw, "tag", "ok") == "ok" else 1

    # ------------------------------------------------------------------ usage
    def usage(self, memory: bool = True) -> Usage:
        """What the instance used; ``memory``: with the memory figure (a probe call)."""
        out, err = (self.outputs + [None, None])[:2]
        return Usage(
            fuel_used=self.fuel_used if self.limits.fuel is not None else None,
            memory_bytes=self.memory_bytes() if memory else None,
            stdout=bytes(out.captured) if out and out.captured is not None else None,
            stderr=bytes(err.captured) if err and err.captured is not None else None,
            warnings=tuple(dict.fromkeys(self.warnings)),
        )

    def memory_bytes(self) -> Optional[int]:
        """The bytes the component's core memories hold now (memories only grow: the
        peak), read through the probe ``ComponentEngine.compile`` added; None without
        one, or once a trap left the instance refusing calls."""
        if not self.layout.probed or self.trapped:
            return None
        store = self.store
        try:
            if self._probe is None:
                index = self.instance.get_export_index(store, probe.NAME)
                self._probe = self.instance.get_func(store, index)
            # Outside the guest's budget: a few instructions, under fuel and a deadline
            # of their own (the guest's may be spent), the guest's fuel left as it was.
            fuel = store.get_fuel() if self.limits.fuel is not None else None
            if fuel is not None:
                store.set_fuel(fuel + PROBE_FUEL)
            store.set_epoch_deadline(PROBE_EPOCHS)
            try:
                held = _call_and_return(self._probe, store, [])
            finally:
                if fuel is not None:
                    store.set_fuel(fuel)
        except wasmtime.WasmtimeError:
            return None
        return held if type(held) is int else None

    def close(self) -> None:
        if self.pipes is not None:
            self.pipes.close()
        for output in self.outputs:
            output.close()

    def close_if_idle(self) -> None:
        """Close its outputs unless a call runs on it (another thread's, which would see
        its writes refused: red team round 64); then they close when it is dropped."""
        if self.turn.acquire(blocking=False):
            try:
                self.close()
            finally:
                self.turn.release()

    def discard(self) -> None:
        """Close its outputs and free its store now: an instance whose instantiation
        failed (as WasmtimeInstance.discard; nothing lends a component's memory out)."""
        self.close()
        try:
            self.store.close()
        except Exception:  # noqa: BLE001 - left to the garbage collector, as before
            pass

    # ------------------------------------------------------------------ errors
    def _error(self, exc: Exception, where: str) -> errors.WasmsbxError:
        """A wasmtime error as wasmsbx's: component traps carry no trap code, so the
        cause is read from the message's ``wasm trap:`` line."""
        text = str(exc)
        cause = _trap_cause(text)
        frames = _frames(text)
        limits = self.limits
        if self.budget.exceeded and cause is not None and where != "instantiation":
            # (output past its limit, then a trap before the stop landed: the limit came
            # first, red team 156: 115 plain, 103 with --json; as the interrupt below)
            return self._output_error(frames)
        if any(HOSTCALL_FUEL in line for line in _module_backend.own_lines(text)):
            # (wasmtime's own bound on one call's copies, in its own words: a core
            # function named so hid fuel, timeouts and stack, round 72; a trap
            # or an error, depending on where the copy failed)
            return errors.TrapError(
                f"{where} failed: its arguments or result are more than wasmtime copies "
                "between host and guest in one call",
                hint="wasmtime bounds the values one call passes (a list<u8> of about 2 "
                "million bytes, a string of over 100 MiB); have the component write bulk "
                "data to stdout, or pass it in smaller pieces",
                backtrace=frames,
            )
        # (wasmtime's causes, read as for a module: not the backtrace, whose names are
        # the guest's, red team round 70)
        if _module_backend._gc_heap_full(text):  # (a struct, array or exception object)
            return _module_backend.gc_heap_error(where, limits.memory, frames)
        if any("handle limit exceeded" in c for c in _module_backend._cause_lines(text)):
            # (wasmtime's own bound: host memory holds)
            return errors.TrapError(
                f"{where} failed: {_first_line_text(text)}",
                hint="the component makes resource handles and never drops them",
                backtrace=frames,
            )
        if cause is None:
            if where == "instantiation":
                return self._setup_error(text, where)
            if any(
                "cannot synchronously call an async function" in line
                for line in _module_backend._cause_lines(text) or [_first_line_text(text)]
            ):
                # (wasmtime's words, not the guest's; wasmsbx's limit, not a bad value)
                return errors.ModuleError(
                    f"{where}: the export is lifted `async` (component-model async), "
                    "which wasmsbx cannot call: it calls exports synchronously",
                    hint="export a synchronous function (a `canon lift` without `async`)",
                )
            # No trap, but the call failed: the guest broke the canonical ABI (a result
            # string that is not UTF-8, a realloc out of bounds...). Its fault, as a trap
            # is; wasmtime refuses the instance's further calls all the same.
            return errors.TrapError(
                f"{where} failed: {_first_line_text(text)}",
                hint="the component passed a malformed value across its boundary "
                "(a bug in the guest or its bindings)",
                backtrace=frames,
            )
        if "all fuel consumed" in cause:
            return errors.FuelExhausted(
                f"fuel exhausted after {format_count(limits.fuel or 0)} units in {where}",
                hint="raise limits.fuel (--fuel N) if the guest needs more",
                backtrace=frames,
                limit_value=limits.fuel,
            )
        if cause == "interrupt":
            if self.watch is not None and self.watch.interrupted:  # Ctrl-C, SIGTERM
                raise KeyboardInterrupt
            if self.budget.exceeded:
                return self._output_error(frames)
            return errors.TimeoutExceeded(
                f"timeout: {where} still running after {format_duration(limits.timeout)}",
                hint="raise limits.timeout (--timeout 30s) if the guest needs longer",
                backtrace=frames,
                limit_value=limits.timeout,
            )
        if "call stack exhausted" in cause:
            size = format_limit(limits.stack) if limits.stack else "the default"
            return errors.StackExhausted(
                f"wasm stack exhausted in {where} (stack limit {size})",
                hint="unbounded recursion? raise limits.stack if the guest needs deeper calls",
                backtrace=frames,
            )
        return errors.TrapError(f"{where} trapped: {cause}", backtrace=frames)

    def _setup_error(self, text: str, where: str) -> errors.WasmsbxError:
        first = _first_line_text(text)
        if _component_link_refusal(text):  # (before any limit: it quotes the guest's names)
            return errors.LinkError(f"cannot instantiate component: {first}", detail=text)
        # (wasmtime's words only: a name it quotes, an import's export called
        # "memory-limit-minimum", made a link error a limit)
        lowered = _module_backend.unquoted(_module_backend._own_words(text)).lower()
        if errors.is_exhaustion(lowered):  # the host ran out, not the policy (as a module's)
            return _module_backend._exhausted(
                "instantiating the component", first, self.engine.options
            )
        if "instance count too high" in lowered or ("instance" in lowered and "limit" in lowered):
            return errors.InstanceLimitExceeded(
                f"instance limit reached: the component makes {self.layout.core_instances} "
                f"core instances; {first}",
                hint="raise limits.instances",
            )
        if "memory" in lowered and ("limit" in lowered or "minimum" in lowered):
            return errors.MemoryLimitExceeded(
                f"memory limit {format_limit(self.limits.memory)} reached at {where}: {first}",
                hint="raise limits.memory (--memory SIZE)",
                limit_value=self.limits.memory,
            )
        if "table" in lowered and "limit" in lowered:
            return errors.TableLimitExceeded(
                f"table limit reached at {where}: {first}", hint="raise limits.table_elements"
            )
        return errors.LinkError(f"cannot instantiate component: {first}", detail=text)


def _component_link_refusal(text: str) -> bool:
    """Whether wasmtime refused an import of the component ("component imports
    instance `wasi:cli/environment@0.2.0`, but a matching implementation was not found
    in the linker"), told by how its first line begins."""
    return text.lstrip().lower().startswith("component imports")


def _trap_cause(text: str) -> Optional[str]:
    """The trap wasmtime reports, from its own words: the first line and the causes
    after the last "Caused by:", never the backtrace, whose frames print the guest's
    function names (one named "wasm trap: all fuel consumed" is not a trap)."""
    for line in reversed(_module_backend.own_lines(text)):  # (stripped)
        marker = line.find("wasm trap: ")
        if marker >= 0:
            return line[marker + len("wasm trap: ") :].strip()
    return None


def _frames(text: str) -> list:
    out = []
    for line in text.splitlines():
        head, sep, rest = line.strip().partition(" - ")
        if sep and head[:1].isdigit() and ":" in head:
            out.append(errors.inert(rest.strip()))  # names from the name section
    return out[:MAX_FRAMES]


def _first_line_text(text: str) -> str:
    # (wasmtime's text quotes the component's names: escaped, cut, as in any message;
    # after a backtrace, its cause: red team round 68)
    return errors.inert(_module_backend._first_line(text), LINE_SHOWN)


LINE_SHOWN = 2000  # characters of a runtime's error line a message shows


def _first_line(exc: Exception) -> str:
    return _first_line_text(str(exc))


class ComponentEngine:
    """The wasmtime backend's engine with components in place of modules: what the cache
    (``cache.load_or_compile``) and ``wasmsbx compile`` call. The fingerprint carries
    ``kind: component``, so a component's native code never loads as a module's."""

    is_component = True
    # How a compile worker (backends.compiling) builds this engine around its backend's.
    worker_wrap = "wasmsbx.components.runtime:ComponentEngine"

    def __init__(self, engine: Any) -> None:
        self.inner = engine
        self.engine = engine.engine
        self.clock = engine.clock
        self.backend = engine.backend
        self.options = engine.options
        self.memory_layout = engine.memory_layout

    def compile(self, wasm: bytes) -> Any:
        """The component with its memory probe (``probe.instrument``), or as it is when the
        probe cannot be added or wasmtime refuses the rewritten component."""
        instrumented = probe.instrument(wasm)
        if instrumented is not None:
            try:
                return wc.Component(self.engine, instrumented)
            except wasmtime.WasmtimeError:
                pass
        return compile_component(self.inner, wasm)

    def serialize(self, component: Any) -> bytes:
        return bytes(component.serialize())

    def deserialize(self, native: Any) -> Any:
        """Only code that passed the trust checks (a ``trust.Authenticated``)."""
        from ..native.trust import require

        data = require(native)
        try:
            return wc.Component.deserialize(self.engine, bytes(data))
        except wasmtime.WasmtimeError as exc:
            raise errors.ModuleError(
                f"cannot load precompiled component: {_first_line(exc)}"
            ) from None

    def fingerprint(self) -> dict:
        # probe: components compiled with the memory probe (components.probe).
        return {**self.inner.fingerprint(), "kind": "component", "probe": 1}


def _call_and_return(func: Any, store: Any, args: list) -> Any:
    """A component call and its ``post_return`` (required after every call)."""
    raw = fastlift.call(func, store, args)
    func.post_return(store)
    return raw
