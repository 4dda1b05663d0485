"""The wasmtime adapter (PyPI ``wasmtime``): every limit enforced in-process.

Memory, table and instance caps use the store limiter (with shares that keep the totals,
wasm_limits.plan); fuel uses fuel metering; the timeout uses epoch interruption driven
by the process's one deadline keeper (deadline.py); guest output goes through counting
callbacks so a flood is cut off at ``limits.output``.
"""

from __future__ import annotations

import _thread
import ctypes
import errno
import functools
import os
import sys
import time
import weakref
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Callable, Optional

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._extern import wrap_extern

from ... import compact as _compact
from ... import errors, fdroom
from ...units import format_count, format_duration, format_limit, format_size
from ..base import (
    PROVIDABLE,
    Engine,
    EngineOptions,
    ExportInfo,
    ImportInfo,
    Instance,
    Limits,
    OutputSink,
    Usage,
    WasiSetup,
    binary_stream,
    memory_limit_error,
    missing_imports_error,
    refuse_undecodable,
    take_turn,
    totals_error,
    unprovidable,
)
from ..deadline import KEEPER
from ..limits import GC_HEAP, HIDDEN_EXPORT, PAGE, TotalsError, export_memories, layout, plan
from ..reserve import engine_layout
from ..stackroom import SEEN as STACK_SEEN
from ..stackroom import enter as stack_enter
from ..stackroom import fits as stack_fits
from ..stackroom import leave as stack_leave
from ..stackroom import need as stack_need
from . import teardown
from .identity import FEATURES, _version, config_settings, fingerprint  # noqa: F401 - FEATURES, _version re-exported
from .values import (
    HOST_CALLS,
    RAW_CALL,
    RAW_GET_FUEL,
    RAW_SET_EPOCH_DEADLINE,
    RAW_SET_FUEL,
    HostCannotHold,
    HostFuncs,
    RawCall,
    WasiNoMemory,
    WasiRefused,
    check_reentry,
    context_address,
    fast_types,
    func_types,
    global_get,
    global_new,
    global_set,
    global_type,
    valtype,
)
from .values import call as call_raw
from .words import (  # noqa: F401 - re-exported (components.runtime)
    _cause_lines,
    _causes,
    _exhausted,
    _first_line,
    _module_error,
    _own_words,
    _parse_failure,
    own_lines,
    unquoted,
)

MAX_FRAMES = 12
_U64 = ctypes.c_uint64


class _Output(OutputSink):
    """A guest output stream that counts bytes against the shared output budget."""

    def __init__(self, target: str, budget: _Budget, fallback) -> None:
        super().__init__(target, fallback)
        self.budget = budget

    def __call__(self, data: bytes) -> int:
        # Nothing may leave this callback: wasmtime-py catches it, print()s a line to
        # stdout (which then fails too, on /dev/full or a closed pipe) and hands the
        # runtime a garbage count, and tokio panics (red team rounds 24 and 29: exit
        # 134 when an out-of-memory guest's `--json` capture raised MemoryError).
        try:
            if KEEPER.stopping:  # (the hard stop is writing the error: nothing after it)
                return -errno.EPIPE
            if not self.budget.take(len(data)):
                return -errno.EFBIG
            self.write(data)
        except MemoryError:
            return -errno.ENOMEM
        except OSError as exc:  # (a full disk is told so: it was a broken pipe)
            return -errno.ENOSPC if exc.errno == errno.ENOSPC else -errno.EPIPE
        except BaseException:  # noqa: BLE001 - (OSError, ValueError: sys.stdout closed;
            return -errno.EPIPE  # Ctrl-C's KeyboardInterrupt: the keeper has it already)
        return len(data)


class _Budget:
    __slots__ = ("exceeded", "limit", "on_exceeded", "refused", "used")

    def __init__(self, limit: Optional[int], on_exceeded) -> None:
        """``on_exceeded``: a bound method, held weakly. wasmtime-py keeps every WASI
        output callback in a module-level slab until the store that uses it is dropped,
        and the callback holds this budget: a strong reference to the instance here kept
        the instance, and so its store, alive forever (red team round 24: 2,000 closed
        WASI sandboxes, 2,000 live stores; ``--batch --fresh`` ran out of address space
        after 32,262 items)."""
        self.limit = limit
        self.used = 0
        self.exceeded = False
        self.refused = 0  # writes refused (a call that had one ends with the limit's error)
        self.on_exceeded = (
            weakref.WeakMethod(on_exceeded)
            if hasattr(on_exceeded, "__func__")  # (a bound method; builtins have __self__ too)
            else (lambda: on_exceeded)  # (a plain function, or None: nothing to call)
        )

    def take(self, n: int) -> bool:
        self.used += n
        if self.limit is not None and self.used > self.limit:
            self.refused += 1
            if not self.exceeded:
                self.exceeded = True
                stop = self.on_exceeded()
                if stop is not None:
                    stop()
            return False
        return True


def _refused(budget: Optional[_Budget]) -> int:
    return 0 if budget is None else budget.refused


def _call_begins(budget: Optional[_Budget]) -> int:
    """``_refused`` as a call on the store begins (outermost: calls back in skip these
    paths), its ``exceeded`` cleared: the flag says whether this call went past
    limits.output, which its errors read, not whether an earlier one did (red team 157:
    a library sandbox kept after the limit said 115 for every later trap). Cleared
    here, not when the limit's error is made: the keeper makes it too, for a hard stop
    or a late call, and a later look at the flag then saw none."""
    if budget is None:
        return 0
    budget.exceeded = False
    return budget.refused


# (in a fork's child after WASI ran: refused, teardown.refuse_forked_wasi)
_WASI = teardown.WASI
refuse_forked_wasi = teardown.refuse_forked_wasi


def set_wasi(
    store: Any,
    wasi: WasiSetup,
    budget: _Budget,
    seconds: float,
    stuck: Callable,
    pipes: Any = None,
    io: bool = True,
) -> list:
    """WASI for ``store``, a core module's (preview1) or a component's (WASI 0.2): one
    ``wasmtime.WasiConfig`` serves both. Returns the guest's [stdout, stderr] sinks
    (close them when done). ``pipes``: an ``OutputPipes`` that carries them instead of
    output callbacks (a component's: see pipes.py for why).

    Grants never show the trust folder (the keys that vouch for native code); stdout and
    stderr count against ``budget``. wasmtime opens a stdin path itself, and a FIFO's
    open waits for a writer: the keeper watches it like a blocked host call (``stuck``
    gives the error; the command line's hard stop ends it at the deadline, exit 112)."""
    if io:  # (``io``: the guest imports WASI; a component's may not)
        refuse_forked_wasi()
        if not _WASI[0]:
            _runtime_room()
        _WASI[0] = True
    opened = None
    if wasi.grants:
        from ...native import trust

        opened = trust.open_grants(wasi.grants)  # (checked and given: one directory each)
    try:
        if wasi.grants:
            trust.refuse_key_grants(wasi.grants, opened)
        refuse_undecodable(wasi, "wasmtime")
        config = wasmtime.WasiConfig()
        config.argv = list(wasi.argv)
        config.env = list(wasi.env.items())
        for i, grant in enumerate(wasi.grants):
            host = grant.host if opened is None else trust.fd_path(opened[i][0])
            try:
                config.preopen_dir(host, grant.guest, grant.writable)
            except wasmtime.WasmtimeError as exc:  # (by name: gone since it was checked)
                if _out_of_descriptors():  # (wasmtime says no more: red team 143)
                    raise errors.ResourceExhausted(
                        f"cannot give the guest the directory {errors.inert(grant.host)}: "
                        f"{_first_line(exc)}: out of file descriptors",
                        hint="raise the open-files limit (ulimit -n), or grant fewer folders",
                    ) from None
                raise errors.PolicyError(
                    f"cannot give the guest the directory {errors.inert(grant.host)}: "
                    f"{_first_line(exc)}",
                    hint="grant a directory no guest or other process changes while wasmsbx runs",
                ) from None
    finally:
        if opened is not None:  # (wasmtime opened each through its descriptor: its own)
            trust.close_grants(opened)
    outputs = [
        _Output(wasi.stdout, budget, binary_stream(sys.stdout)),
        _Output(wasi.stderr, budget, binary_stream(sys.stderr)),
    ]
    if pipes is None:
        config.stdout_custom, config.stderr_custom = outputs
    else:
        pipes.attach(config, outputs)
    stdin = wasi.stdin
    if stdin == "inherit":
        config.inherit_stdin()
    elif isinstance(stdin, (bytes, bytearray)):
        tmp = _bytes_file(stdin)
        try:
            config.stdin_file = tmp  # (wasmtime opens it here, wasi_config_set_stdin_file)
        finally:
            # so the name goes at once: the guest's stdin (a secret, say) never stays in
            # /tmp, not even when instantiating fails and no close() follows (it did:
            # red team round 24)
            os.unlink(tmp)
    watch = KEEPER.enter(None, seconds, stuck)
    try:
        if isinstance(stdin, str) and stdin not in ("inherit", "null"):
            from ...native import trust

            try:
                fd = trust.open_stdin(stdin)
            except OSError as exc:
                raise errors.InputError(
                    f"cannot open the guest's stdin: {exc.strerror}", path=stdin
                ) from None
            try:  # (wasmtime opens it here: the open that may block, a FIFO's)
                config.stdin_file = stdin if fd is None else trust.fd_path(fd)
            finally:
                if fd is not None:
                    os.close(fd)
        store.set_wasi(config)
        # closed before the interpreter exits (see teardown)
        teardown.track(store, outputs if pipes is None else [])
    except BaseException as exc:
        if isinstance(exc, wasmtime.WasmtimeError):
            raise errors.InputError(
                f"cannot set up the guest's stdio: {_first_line(exc)}",
                path=stdin if isinstance(stdin, str) else None,
            ) from None
        raise
    finally:
        KEEPER.leave(watch)
    return outputs


def _bytes_file(data: bytes) -> str:
    """A private temporary file holding ``data``: wasmtime reads stdin from a path."""
    import tempfile

    handle, path = tempfile.mkstemp(prefix="wasmsbx-stdin-")
    with os.fdopen(handle, "wb") as f:
        f.write(data)
    return path


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
    # (over define_wasi's: the linker shadows, ``WasmtimeInstance.linker``; it was set back
    # to False here, so a group with WASI could not be given one host memory for two
    # members, nor register a name again; round 50)
    i32 = wasmtime.ValType.i32()
    linker.define_func(
        "wasi_snapshot_preview1", "proc_exit", wasmtime.FuncType([i32], []), _proc_exit
    )


def _limit(
    store: wasmtime.Store,
    group: _Group,
    memory_size: int,
    table_elements: int,
    instances: int,
    tables: int,
    memories: int,
) -> None:
    """Set the store's limiter (``Store.set_limits``), with room for the instances
    wasmsbx adds of its own (``group.helpers``: poll's helpers, which have no memory of
    their own), which the guest's limits do not count. Kept as a tuple (a sandbox per
    tenant holds one: a dict of keywords was 0.2 KiB and 3 us more per sandbox)."""
    group.limiter = (memory_size, table_elements, instances, tables, memories)
    if group.helpers and instances >= 0:  # (instances without memories)
        instances += group.helpers
    store.set_limits(memory_size, table_elements, instances, tables, memories)


def _reserved(limits: Limits, options: EngineOptions) -> Limits:
    """``limits`` with limits.memory within the engine's reservation under
    runtime.memory_layout = "dense" (below 4 GiB: larger ones only memory64 can pass,
    and it moves once, as documented). The reservation was sized from limits.memory when
    the sandbox was made; a policy whose limit was raised after that let a 32-bit memory
    outgrow it, and wasmtime moved the memory from under a view the host held (red team
    round 94: SIGSEGV). Its instances stop at the reservation, and say that limit."""
    reserved = options.reservation
    if reserved is not None and reserved < _FOUR_GIB and limits.memory > reserved:
        return limits._replace(memory=reserved)
    return limits


_FOUR_GIB = 1 << 32


# Shared defaults every store starts with, read-only so that a change in place (which
# every store would see) fails at once: writers replace them first (red team round 57).
_EMPTY: frozenset = frozenset()  # _Group.provided and .registered until one is added
_NO_OBJECTS: Any = MappingProxyType({})  # _Group.host_objects until _define adds one
_NO_TYPES: Any = MappingProxyType({})  # WasmtimeInstance.types (see know_types, func_types)
_NO_WARNINGS: Any = ()  # WasmtimeInstance.warnings until its first warning


class _Group:
    """What the instances of one store share: imports provided, names registered.
    Attributes left at their class defaults are not kept per store (one per sandbox)."""

    owner = 0  # the thread running a call on the store
    current: Any = None  # the instance whose call runs on the store (poll.py)
    gc_cap: Optional[int] = None  # the store's GC heap: its member's share (bytes)
    # Shared empty sets until something is added (see provide, register): most stores
    # import nothing, and two empty sets are 432 bytes per sandbox.
    provided: Any = _EMPTY  # (module, name) defined by the host
    registered: Any = _EMPTY  # module names of linked instances
    wasi_defined = False
    polled = False  # poll_oneoff defined: poll.bounded_poll
    helpers = 0  # instances of wasmsbx's own in the store (poll's helpers)
    limiter: tuple = ()  # the store's limits, as last set (_limit)
    host_objects: Any = _NO_OBJECTS  # id(host item) -> (item, wasmtime object)
    budget: Any = None  # limits.Budget of a group or of host memories/tables

    def __init__(self) -> None:
        # Held while a call runs on the store; ``owner``: the thread running it. A store
        # runs one call at a time: from several threads at once, wasmtime corrupted
        # memory (double frees, another thread's results; red team round 24).
        self.busy = _allocate_lock()

    def provide(self, key: tuple) -> None:
        if self.provided is _EMPTY:
            self.provided = set()
        self.provided.add(key)

    def register(self, name: str) -> None:
        if self.registered is _EMPTY:
            self.registered = set()
        self.registered.add(name)


_WASI_MODULES = frozenset(("wasi_snapshot_preview1",))  # (what define_wasi defines)
_allocate_lock = _thread.allocate_lock
_get_ident = _thread.get_ident


def _occupied(group: _Group, seconds: float) -> bool:
    """Called when ``group``'s store is running a call: True if it is this thread's (a
    host function calling back in: the nested call runs within the running call's
    limits); else wait until that call ends and hold the store (False). Calls from
    several threads are so taken one at a time: at once, wasmtime corrupted memory.
    The wait is bounded by the waiting call's timeout (``seconds``): a host function
    that waits for a thread calling the same sandbox would otherwise deadlock."""
    if group.owner == _get_ident():
        return True
    take_turn(group.busy, seconds)
    return False


# The names instances of _Group set, most used first: see wasmsbx.compact.
GROUP_NAMES = (
    "busy", "limiter", "owner", "current", "wasi_defined", "polled", "budget",
    "host_objects", "provided", "registered", "helpers", "gc_cap",
)  # fmt: skip
_compact.reserve(_Group, GROUP_NAMES)


class _HostTimeout(Exception):
    """A host function ran past the call's deadline."""


class WasmtimeInstance(Instance):
    """One instance in a store. Instances of a linked group (``shared``) share the first
    one's store, linker and output budget: one set of limits for the whole group.

    What every new instance has alike is a class default, set on an instance only when
    it differs: each is a reference fewer per sandbox for the garbage collector to visit
    on every pass (100,000 sandboxes: README "Density"). Shared tables are read-only."""

    caps: Any = None  # limits.Plan of a group member: its caps are in its declared maxima
    watch: Any = None  # the running call's deadline.Watch
    warnings: Any = _NO_WARNINGS  # a list of its own from the first warning on
    fuel_used = 0
    fuel_armed = 0
    shift: Any = None
    types: Any = _NO_TYPES  # export name -> (params, results)
    deadline = 0.0  # monotonic instant the running call must end by
    outputs: Sequence[Any] = ()  # [stdout, stderr] once WASI is set up
    _budget: Optional[_Budget] = None  # made on first use (WASI output)
    _linker: Optional[wasmtime.Linker] = None
    _host: Optional[HostFuncs] = None

    def __init__(
        self,
        engine: WasmtimeEngine,
        module: Any,
        limits: Limits,
        wasi: Optional[WasiSetup],
        imports: Optional[dict] = None,
        shared: Optional[WasmtimeInstance] = None,
        register: Optional[str] = None,
        caps: Any = None,
        timeout: Optional[float] = None,
    ) -> None:
        if caps is not None:
            self.caps = caps
        self.engine = engine
        if engine.options.reservation is not None:
            limits = _reserved(limits, engine.options)
        self.limits = limits
        self.memories = _memories(engine, module)
        self.held = _held(module)
        shift = getattr(module, "_wasmsbx_shift", None)
        if shift is not None:
            self.shift = shift
        if shared is None:
            self._new_store(limits, getattr(module, "_wasmsbx_layout", None))
            try:
                self._build(module, wasi, imports, shared, register, caps, timeout)
            except BaseException:
                self.discard()  # (the traceback keeps this frame, so ``self``, so the store)
                raise
            return
        self.store, self._linker, self._budget = shared.store, shared.linker, shared.budget
        self.outputs, self._host, self.group = shared.outputs, shared.host, shared.group
        # A member joins the store between calls, never during one: it re-arms the
        # store's fuel and deadline (a call running in another thread then ran 4 s
        # under a 1 s timeout, and 59 rounds on fuel for 2), and a store runs one
        # thing at a time (red team round 44).
        group = self.group
        try:
            nested = not group.busy.acquire(False) and _occupied(group, limits.seconds())
        except errors.TimeoutExceeded as exc:  # (another thread's call ran on: nothing made)
            exc.nothing_made = True
            raise
        if nested:
            refused = errors.UsageError(
                "a module cannot be added to a group from a host function of a call "
                "running in that group",
                hint="add every module to the group before calling into it",
            )
            refused.nothing_made = True
            raise refused
        try:
            group.owner = _get_ident()
            self._build(module, wasi, imports, shared, register, caps, timeout)
        finally:
            group.owner = 0
            group.busy.release()

    def _build(
        self,
        module: Any,
        wasi: Optional[WasiSetup],
        imports: Optional[dict],
        shared: Optional[WasmtimeInstance],
        register: Optional[str],
        caps: Any,
        timeout: Optional[float] = None,
    ) -> None:
        """The rest of __init__: limits, WASI and imports defined, instantiated (its start
        function under ``timeout``, when lower than the policy's)."""
        engine, limits = self.engine, self.limits
        if caps is not None:  # each memory and table carries its own cap (limits.Budget)
            group = self.group
            group.budget = module._wasmsbx_budget
            found = getattr(module, "_wasmsbx_layout", None)
            if found is not None and GC_HEAP in found.memories:
                # The store's one GC heap has no maximum to compile in: the limiter caps
                # it (and so every memory of the store) at the share this member was
                # given for it (it had the whole limit: red team round 26).
                share = caps.memory_each
                group.gc_cap = share if group.gc_cap is None else min(group.gc_cap, share)
            _limit(
                self.store,
                group,
                limits.memory if group.gc_cap is None else group.gc_cap,  # memory_size
                -1 if limits.table_elements is None else limits.table_elements,
                -1 if limits.instances is None else limits.instances,
                10000,  # tables
                10000,  # memories
            )
        self._arm(timeout=timeout)
        imports_list = engine.imports(module)
        if any(i.is_wasi for i in imports_list) and not self.group.wasi_defined:
            self._set_wasi(wasi or WasiSetup())
            self.linker.define_wasi()
            _capture_exit(self.linker)
            self.group.wasi_defined = True
        elif wasi is not None and wasi.grants and not self.group.wasi_defined:
            # (given no folder, a module without WASI reaches none; its grants are
            # still refused as the README says, not passed over: a policy that grants
            # the trust folder is wrong whatever module it runs)
            from ...native import trust

            trust.refuse_key_grants(wasi.grants)
        if (
            imports_list
            and not self.group.polled
            and any(i.is_wasi and i.name == "poll_oneoff" for i in imports_list)
        ):
            self._define_poll()
        if imports:
            self._define(imports)
        if imports_list:
            self._check_imports(imports_list)
        # A module that imports nothing, outside a group, needs no linker (the common
        # case of a sandbox per tenant: a Linker per store costs time and memory).
        direct = not imports_list and shared is None and register is None
        make = _instance_of if direct else self.linker.instantiate
        # (a start function may call back into Python: room on its stack first, or the
        # refusal reads as a LinkError, round 42)
        check_reentry(self._calls_back())
        try:
            if direct and getattr(module, "_wasmsbx_start", True) is False:
                # No start function: none of the guest's code runs while instantiating,
                # so there is no deadline to watch; the store's epoch deadline (0 at
                # first, which would trap at once) only has to be open. Every call arms
                # its own deadline.
                self.store.set_epoch_deadline(1 << 40)
                self.instance = make(self.store, module)
            else:
                self.instance = self._guarded("start function", make, self.store, module)
        except wasmtime.Trap as trap:
            where, hint = "start function", None
            if getattr(module, "_wasmsbx_start", True) is False:
                # (no start function to blame: a data or element segment out of bounds,
                # which instantiation checks; round 40 LOW)
                where = "instantiation (its data and element segments)"
            if engine.options.copy_data:  # the data copy is charged as fuel too
                copying = "instantiation (copying its data in)"
                start = getattr(module, "_wasmsbx_start", True) is not False
                where = f"the start function or {copying}" if start else copying
                hint = (
                    'raise limits.fuel (--fuel N), or keep runtime.memory_init = "cow" '
                    '(the default): "copy" charges the data copy as fuel, 1 unit per byte'
                )
            raise self._trap_error(trap, where, hint) from self._host_raised()
        except wasmtime.WasmtimeError as exc:
            if self._host is not None and self._host.raised is not None:
                # (a host function its start function called raised, or a call it made
                # into the group hit a limit: said as for a call, not as a bare
                # "cannot instantiate module: error while executing", round 46)
                raise self._call_error(exc, "start function") from self._host_raised()
            if str(exc).startswith("error while executing"):
                # (guest code ran and a call it made failed: a WASI call that refused its
                # arguments is a trap, trap_code "wasi", as in any call; it was a
                # LinkError, "cannot instantiate module: 0: In func ...")
                raise self._call_error(exc, "start function") from None
            raise self._instantiate_error(exc, module) from None
        except MemoryError:
            raise _exhausted(
                "instantiating the module", "Python could not allocate", engine.options
            ) from None
        self.exports = _Exports(self.store, self.instance)
        if register is not None:
            self.register_as(register)

    def register_as(self, name: str) -> None:
        """Make this instance's exports importable as ``name.<export>`` in its group:
        its own, never the hidden memory exports compile() added (``self.held``), through
        which another member imported the memories this one keeps private and read and
        wrote them (red team 152)."""
        if not (self.held and self.shift is not None and self.shift.shift > 0):
            self.linker.define_instance(self.store, name, self.instance)  # (none added)
        else:
            held = set(self.held)
            for export, item in self.instance.exports(self.store).items():
                if export not in held:
                    self.linker.define(self.store, name, export, item)
        self.group.register(name)

    @property
    def linker(self) -> wasmtime.Linker:
        """The store's linker, made on first use (imports, WASI, a group)."""
        if self._linker is None:
            self._linker = wasmtime.Linker(self.engine.engine)
            self._linker.allow_shadowing = True  # a group may register a name again
        return self._linker

    @property
    def budget(self) -> _Budget:
        """The store's output budget (limits.output), made on first use: only a guest
        with WASI writes output (a bound method and a budget per sandbox otherwise)."""
        if self._budget is None:
            self._budget = _Budget(self.limits.output, self._stop_flood)
        return self._budget

    @property
    def host(self) -> HostFuncs:
        """The store's host functions, made on first use (most sandboxes have none)."""
        if self._host is None:
            self._host = HostFuncs(self.store, self.group)
        return self._host

    def _new_store(self, limits: Limits, found: Any) -> None:
        self.store = wasmtime.Store(self.engine.engine)
        self.group = _Group()
        self._set_limits(found)

    # ------------------------------------------------------------------ setup
    def _set_limits(self, found: Any) -> None:
        """The store limiter, with per-memory and per-table caps that keep the policy's
        totals (wasm_limits.plan): the limiter itself caps each memory separately."""
        limits = self.limits
        caps = _plan(found, limits.memory, limits.table_elements)
        if caps is None:
            try:
                plan(found, limits.memory, limits.table_elements)
            except TotalsError as exc:
                raise totals_error(exc, limits) from None
        _limit(
            self.store,
            self.group,
            caps.memory_each,
            -1 if caps.table_each is None else caps.table_each,
            -1 if limits.instances is None else limits.instances,
            caps.tables,
            caps.memories,
        )

    def _set_wasi(self, wasi: WasiSetup) -> None:
        self.where = "opening stdin"  # for _stuck
        self.outputs = set_wasi(self.store, wasi, self.budget, self.limits.seconds(), self._stuck)

    def _define_poll(self) -> None:
        """WASI's poll_oneoff as wasmsbx's (poll.py: a sleep ends at the call's deadline).
        Once per store, and only for a module that imports it: it costs the store a host
        function. Its deadline and errors are the running call's (``group.current``: in a
        group, the member called, not the one that imported poll_oneoff first)."""
        from . import poll

        group, store = self.group, self.store

        def raise_limit(more: int) -> None:  # (not a method: no cycle through the host
            group.helpers += more  # function)
            _limit(store, group, *group.limiter)

        helper = poll.helper_of(self.engine, raise_limit, bool(self.engine.options.fuel))
        polling = poll.bounded_poll(lambda: group.current, helper)
        func = self.host.make(poll.TYPES, polling, poll.func_type(self.engine))
        # (over define_wasi's; the linker shadows: a group may register a name again)
        self.linker.define(self.store, "wasi_snapshot_preview1", "poll_oneoff", func)
        group.polled = True

    def _poll_stopped(self) -> BaseException:
        """What ends a call whose guest waits in poll_oneoff past its deadline, or was
        stopped meanwhile: the error an epoch's trap there would give (this store's own
        limit, raised through wasmsbx's own host function: see _call_error)."""
        return self._own(self._interrupted(self.where, []))

    def _poll_trapped(self, trap: Any) -> BaseException:
        """A trap in poll's helper (its epoch deadline passed: the guest's), said as the
        guest's own, without the helper's frames."""
        error = self._trap_error(trap, self.where)
        error.backtrace = []
        return self._own(error)

    def _own(self, error: Any) -> Any:
        """``error``, marked as a limit of this store's running call: raised in a host
        function, it passes through as the call's own (_call_error), where another
        sandbox's limit is the host function's failure."""
        error._wasmsbx_limits_of = self.group
        return error

    def _define(self, imports: dict) -> None:
        """Define the caller's host imports (wasmsbx.host objects) in the linker."""
        made = self.group.host_objects
        if made is _NO_OBJECTS:
            made = self.group.host_objects = {}
        for module, names in imports.items():
            for name, item in names.items():
                # The same Python object is the same wasm object within a group.
                if module in _WASI_MODULES and self.group.wasi_defined:
                    raise errors.LinkError(
                        f"import {module}.{name} is given twice: wasmsbx provides the "
                        f"guest's WASI ({module}), and imports= names it too",
                        hint="leave WASI functions to the policy (stdio, grants, env), "
                        "or import yours under a module name of your own",
                    )
                if id(item) not in made:
                    made[id(item)] = (item, self._host_item(module, name, item))
                self.linker.define(self.store, module, name, made[id(item)][1])
                self.group.provide((module, name))

    def _host_item(self, module: str, name: str, item: Any) -> Any:
        from ...host import Global, HostFunc, Memory, Table

        if "v128" in (*getattr(item, "params", ()), *getattr(item, "results", ())) or (
            getattr(item, "type", None) == "v128"
        ):
            raise errors.BackendUnavailable(
                f"import {module}.{name}: wasmtime's C API cannot declare a host function or "
                "global with a v128 type (wasm_valtype_new aborts on it)",
                hint="pass v128 values through an exported function or memory instead",
            )
        if isinstance(item, HostFunc):
            return self.host.make((item.params, item.results), self._host_call(module, name, item))
        if isinstance(item, Global):
            return global_new(self.store, item.type, item.mutable, item.value, self.group)
        if isinstance(item, Memory):
            top = _capped(item.max, self.caps and self.caps.memory_each // PAGE)
            limits = wasmtime.Limits(item.min, top)
            try:
                return wasmtime.Memory(self.store, wasmtime.MemoryType(limits))
            except wasmtime.WasmtimeError as exc:
                # (its reservation, as an instance's own memory's: out of address space
                # is the host's trouble, red team round 78: it was wasmtime's own error)
                if errors.is_exhaustion(str(exc)):
                    raise _exhausted(
                        f"making the host memory {module}.{name}",
                        _first_line(exc),
                        self.engine.options,
                    ) from None
                raise
        if isinstance(item, Table):
            top = _capped(item.max, self.caps and self.caps.table_each)
            ty = wasmtime.TableType(valtype(item.type), wasmtime.Limits(item.min, top))
            return wasmtime.Table(self.store, ty, None)
        if getattr(item, "_owner", None) is self.group:  # an export of a group member
            return item._extern
        raise errors.LinkError(f"import {module}.{name}: {unprovidable(item)}", hint=PROVIDABLE)

    def _host_call(self, module: str, name: str, item: Any) -> Any:
        """The trampoline's view of a host function: the deadline is checked before and
        after it, so time spent in Python counts against the call's timeout."""

        # (weakly: the store's host functions hold this, and this holds them, a cycle
        # that kept every sandbox with imports= and its memory until the cycle collector
        # ran, close() or not: red team round 73)
        ref = weakref.ref(self)

        def run(caller: Any, args: list) -> list:
            me = ref()
            if me is None:  # (its store outlived it: a guest function taken out of it)
                raise RuntimeError(f"{module}.{name}: its sandbox was freed")
            if me.deadline and time.monotonic() > me.deadline:
                raise _HostTimeout(f"{module}.{name}")
            out = item.invoke(_CallerView(caller, me), args)
            if me.deadline and time.monotonic() > me.deadline:
                raise _HostTimeout(f"{module}.{name}")
            return out

        return run

    def _calls_back(self) -> bool:
        """Whether the guest may call back into Python: host functions, or WASI output
        it writes through wasmsbx's sinks (check_reentry)."""
        return self._host is not None or bool(self.outputs)

    def _host_raised(self) -> Optional[BaseException]:
        if self._host is None:
            return None
        exc, self._host.raised = self._host.raised, None
        return exc

    def _check_imports(self, imports: list) -> None:
        group = self.group
        missing = [
            i.describe()
            for i in imports
            if not (i.is_wasi and i.kind == "func")
            and (i.module, i.name) not in group.provided
            and i.module not in group.registered
        ]
        if missing:
            raise missing_imports_error(missing)

    def _arm(
        self, calls: int = 1, timeout: Optional[float] = None, fuel: Optional[int] = None
    ) -> None:
        """Arm the fuel of the next call and remember its timeout (``timeout``/``fuel``
        lower the policy's for one call; they never raise them). The deadline itself is
        armed by _guarded, through the process's deadline keeper."""
        self.call_timeout = None if timeout is None else min(timeout, self.limits.timeout)
        budget = self.limits.fuel
        if fuel is not None and budget is not None:
            budget = min(fuel, budget)
        elif fuel is not None and self.engine.options.fuel:
            budget = fuel
        self.call_fuel = budget
        if budget is not None:
            # n calls of a block get n times the fuel, held below wasmtime's i64 (a
            # larger value wraps to "exhausted").
            self.fuel_armed = min(budget * calls, 2**63 - 1)
            self.store.set_fuel(self.fuel_armed)

    # ------------------------------------------------------------------ calls
    def func(self, name: str) -> Any:
        return self.exports[name]

    def know_types(self, types: dict) -> None:
        if self.types:
            self.types.update(types)
        else:  # the module's own table (the sandbox keeps one per module): shared, not copied
            self.types = types

    def func_types(self, name: str) -> tuple:
        types = self.types.get(name)
        if types is None:
            types = func_types(self.store, self.exports[name])
            if self.types is _NO_TYPES:
                self.types = {}
            self.types[name] = types
        return types

    def call(
        self,
        name: str,
        args: Sequence[Any],
        timeout: Optional[float] = None,
        fuel: Optional[int] = None,
        types: Optional[tuple] = None,
    ) -> list:
        """``types`` (params, results) from the module's facts: wasmtime's C API aborts
        the process when asked for a type with v128 in it."""
        types = types or self.func_types(name)
        return self.call_func(self.exports[name], types, args, name, timeout, fuel)

    def call_func(
        self,
        func: Any,
        types: tuple,
        args: Sequence[Any],
        name: str,
        timeout: Optional[float] = None,
        fuel: Optional[int] = None,
    ) -> list:
        """Call a wasmtime Func with typed args (exact floats, v128, references)."""
        check_reentry(self._calls_back())
        group = self.group
        if not group.busy.acquire(False):
            # (the wait for another thread's call counts against this call's own time:
            # a per-call timeout= too, not only the policy's, red team round 40)
            wait = self.limits.seconds()
            if timeout is not None:
                wait = min(wait, timeout)
            if _occupied(group, wait):
                return self._reentered(func, types, args, name)
        try:
            group.owner = _get_ident()
            self._arm(timeout=timeout, fuel=fuel)
            try:
                return self._guarded(name, call_raw, self.store, func, types, args, group)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                raise self._call_error(exc, name) from self._host_raised()
            finally:
                self.deadline = 0.0
                self._account_fuel()
        finally:
            group.owner = 0
            group.busy.release()

    def _reentered(self, func: Any, types: tuple, args: Sequence[Any], name: str) -> list:
        """A call made while a call of this thread runs on the store: a host function
        calling back into its guest (asking it for a buffer, say). It runs within the
        running call's limits, its fuel and its deadline, which are the store's; arming
        a fresh timeout and fuel (as before) let a guest that calls its host in a loop,
        which calls back in, run forever (red team round 24). A per-call ``timeout=`` or
        ``fuel=`` is not applied to it."""
        try:
            return call_raw(self.store, func, types, args, self.group)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise self._own(self._call_error(exc, name)) from self._host_raised()

    def caller(self, name: str, types: tuple, parse: Any) -> Any:
        """``call(args, timeout=None, fuel=None) -> list`` for export ``name``: plain
        Python arguments in (``parse``, a values.parse_args, converts and checks what
        the fast writers refuse), typed results out, with the limits, errors and fuel
        accounting of ``call_func``. Made once per export of this instance (it dies with
        it): the function's arrays, converters and addresses are set up here, so a call
        is one FFI call for the guest plus one per armed limit (see values.RawCall)."""
        func = self.exports[name]
        if not fast_types(types):  # references (rooting) or v128 arguments

            def slow(args: Sequence[Any], timeout: Any = None, fuel: Any = None) -> list:
                return self.call_func(func, types, parse(args), name, timeout, fuel)

            return slow
        raw = RawCall(func, types)
        put, put_typed, readers, trap = raw.put, raw.put_typed, raw.readers, raw.trap
        context = context_address(self.store)
        invoke = (context, raw.faddr, raw.args_addr, raw.nparams, raw.out_addr, raw.nresults)
        trap_addr = raw.trap_addr
        arm_epoch = functools.partial(RAW_SET_EPOCH_DEADLINE, context)
        limits, clock, stuck = self.limits, self.engine.clock, self._stuck
        enter, leave = KEEPER.enter, KEEPER.leave
        wasi_state = _WASI
        stack, need, seen = limits.stack, stack_need(limits.stack), STACK_SEEN
        group = self.group
        busy = group.busy
        host_calls = HOST_CALLS
        budget = limits.fuel
        fixed = limits.deadline is None  # else each call gets what is left of the run
        left = _U64()
        left_addr = ctypes.addressof(left)

        def call(args: Sequence[Any], timeout: Any = None, fuel: Any = None) -> list:
            if timeout is not None or fuel is not None:  # per-call limits: the general path
                return self.call_func(func, types, parse(args), name, timeout, fuel)
            deep = host_calls.depth or self._host is not None or self.outputs
            if deep:  # (inlined _calls_back: room on the stack for the guest's calls)
                check_reentry(True)
                if wasi_state[1] and self.outputs:  # (forked: see refuse_forked_wasi)
                    refuse_forked_wasi()
            if not busy.acquire(False) and _occupied(group, self.limits.timeout):
                return self._reentered(func, types, parse(args), name)
            try:
                return fast(args, deep)
            finally:
                group.owner = 0
                busy.release()

        def fast(args: Sequence[Any], deep: Any) -> list:
            group.owner = _get_ident()
            if not put(args):
                put_typed(parse(args))  # UsageError before anything is armed
            self.call_fuel = budget
            if budget is not None:
                self.fuel_armed = budget
                RAW_SET_FUEL(context, budget)
            seconds = limits.timeout if fixed else limits.seconds()
            self.call_timeout = seconds
            self.where = name
            # Room on this thread's stack (stackroom). A guest that cannot call out (no
            # host function, no captured output) called from no host function has no
            # guest above or below it on this thread: the room below the stack pointer
            # is all to check.
            if deep or not stack_fits(seen, need):
                below, deep = stack_enter(stack), True
            try:
                watch = enter(clock, seconds, stuck, arm_epoch)
            except BaseException:
                if deep:
                    stack_leave(below)
                raise
            self.watch = watch
            self.deadline = watch.deadline
            group.current = self
            refused = _call_begins(self._budget)
            try:
                error = RAW_CALL(*invoke, trap_addr)
            finally:
                self.deadline = 0.0
                group.current = None  # (held, it made a cycle: instance, group, instance)
                leave(watch)
                if deep:
                    stack_leave(below)
                if not watch.interrupted:  # (the watch's error is our bound method: a
                    self.watch = None  # cycle kept every dropped instance until gc ran)
                if budget is not None:
                    RAW_GET_FUEL(context, left_addr)
                    self.fuel_used += budget - left.value
            if error or trap.value:
                try:
                    raise raw.failure(error)  # type: ignore[misc]
                except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                    raise self._call_error(exc, name) from self._host_raised()
            if watch.overran() or _refused(self._budget) != refused:
                # (past its deadline, or past limits.output: see _guarded)
                raise stuck(watch.reached is not None)
            return [read_one(slot) for read_one, slot in readers]

        return call

    def repeat(self, name: str, args: Sequence[Any]):
        """``run(n)``: n calls in a tight loop over the raw wasmtime Func, armed once.

        The block must finish within the timeout and gets n times the per-call fuel.
        """
        func, store, args = self.exports[name], self.store, tuple(args)
        types, group = self.func_types(name), self.group

        def run(calls: int) -> None:
            check_reentry(self._calls_back())
            nested = not group.busy.acquire(False) and _occupied(group, self.limits.timeout)
            try:
                if nested:  # (within the running call's limits, as _reentered)
                    _loop(store, func, types, args, group, calls)
                    return
                group.owner = _get_ident()
                self._arm(calls)
                self._guarded(name, _loop, store, func, types, args, group, calls)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                raise self._call_error(exc, name) from self._host_raised()
            finally:
                if not nested:
                    self.deadline = 0.0
                    self._account_fuel()
                    group.owner = 0
                    group.busy.release()

        return run

    def _call_error(self, exc: Exception, name: str) -> errors.WasmsbxError:
        # wasmtime's exception goes on as the context of ours; its frames hold this
        # instance, in a cycle that kept every trapped one (and its memory) until the
        # cycle collector ran (red team round 23: 1.8 GB for 40 items of 64 MiB).
        exc.__traceback__ = None
        raised = self._host.raised if self._host is not None else None
        if isinstance(raised, (KeyboardInterrupt, SystemExit)):
            self.host.raised = None
            try:  # Ctrl-C in a host function stops the run, as anywhere else
                raise raised from None
            finally:  # (this frame, in the exception's traceback, held it: a cycle that
                raised = None  # kept the store and its memory, red team round 74)
        own = _own_limit(raised, self.group)
        if own is not None:  # in a call made back into the store: the running call's own
            self.host.raised = None  # limit (they share them), also when that call went
            return own  # through another sandbox's host function (red team 152: a trap).
            # Another sandbox's limit, reached in a call the host function made, is the
            # host function's error: a trap (it made a call without fuel "fuel
            # exhausted", red team round 78).
        if isinstance(raised, WasiNoMemory):  # (as for wasmtime's own WASI calls, below)
            self.host.raised = None
            return errors.ModuleError(f"{name} failed: {raised}")
        if isinstance(raised, WasiRefused):
            self.host.raised = None  # (poll.py: as wasmtime's own poll_oneoff refuses it)
            return errors.TrapError(
                f"{name} trapped: a WASI call refused its arguments: In func "
                f"wasi_snapshot_preview1::poll_oneoff: {raised}",
                trap_code="wasi",
            )
        if isinstance(raised, _HostTimeout):
            return errors.TimeoutExceeded(
                f"timeout: {name} still running after {format_duration(self.call_timeout)} "
                f"(in host function {raised})",
                hint="raise limits.timeout (--timeout 30s) if the guest needs longer",
                limit_value=self.call_timeout,
            )
        if raised is not None and self.budget.exceeded:  # (past the output limit first:
            frames = _frames(exc) if isinstance(exc, wasmtime.Trap) else []  # red team 157)
            return self._output_error(frames)
        if raised is not None:
            return errors.TrapError(
                f"{name} trapped: host function raised {errors.raised_text(raised)}",
                backtrace=_frames(exc) if isinstance(exc, wasmtime.Trap) else [],
                trap_code="host",
            )
        if isinstance(exc, wasmtime.ExitTrap):
            return errors.TrapError(
                f"guest called proc_exit({exc.code}) in {name}", exit_code_guest=exc.code
            )
        if isinstance(exc, wasmtime.Trap):
            return self._trap_error(exc, name)
        if _gc_heap_full(exc):
            return self._gc_heap_error(name)
        if isinstance(exc, HostCannotHold):
            return errors.ModuleError(
                f"{name} returned {exc.what}, which cannot be passed to the host",
                hint="return it to wasm code instead, or export a function that reads it",
            )
        why = _first_line(exc)
        if "thrown Wasm exception" in str(exc):  # (not a WASI call's: red team 148)
            return errors.TrapError(
                f"{name} trapped: an exception thrown (`throw`) and caught by no handler",
                trap_code="exception",
            )
        if str(exc).startswith("error while executing") and why not in _MODULE_REFUSALS:
            # A WASI call that refused what the guest passed it (a pointer out of bounds
            # or not aligned, bad UTF-8, an invalid flag): the guest's fault at run time,
            # a trap like any other, its instance done (red team round 40: ModuleError,
            # and batch kept the instance)
            return errors.TrapError(
                f"{name} trapped: a WASI call refused its arguments: {_causes(exc)}",
                trap_code="wasi",
            )
        # Any other runtime refusal (e.g. a WASI call on a module without a memory export)
        return errors.ModuleError(f"{name} failed: {why}")

    def _interrupted(self, where: str, frames: list) -> errors.WasmsbxError:
        """The error of a call stopped at its deadline (epoch interruption): the output
        limit, Ctrl-C/SIGTERM (raised), or its timeout."""
        if self.budget.exceeded:
            return self._output_error(frames)
        if self.watch is not None and self.watch.interrupted:  # Ctrl-C, SIGTERM
            raise KeyboardInterrupt
        seconds = self.limits.timeout  # (a per-call timeout= lowers it in a library
        if self.call_timeout is not None and self.limits.deadline is None:  # call; a
            seconds = self.call_timeout  # run's remaining time is not what was asked)
        return errors.TimeoutExceeded(
            f"timeout: {where} still running after {format_duration(seconds)}",
            hint="raise limits.timeout (--timeout 30s) if the guest needs longer",
            backtrace=frames,
            limit_value=seconds,
        )

    def _gc_heap_error(self, where: str) -> errors.WasmsbxError:
        return gc_heap_error(where, self.limits.memory)

    def run_command(self) -> int:
        try:
            start = self.exports["_start"]
        except KeyError:
            raise errors.UsageError(
                "module has no _start export, so it is not a WASI command",
                hint="name an exported function to call",
            ) from None
        group = self.group
        if not group.busy.acquire(False) and _occupied(group, self.limits.timeout):
            raise errors.UsageError(
                "_start called from a host function of its own sandbox",
                hint="a WASI command runs once, from the outside",
            )
        refused = _refused(self._budget)
        try:  # (owner and arming inside: the lock is released whatever they raise)
            group.owner = _get_ident()
            self._arm()
            self._guarded("_start", start, self.store)
            return 0
        except wasmtime.ExitTrap as exit_trap:
            # (its traceback holds this call's frames, this instance among them, and a
            # frame of wasmtime-py's that holds the exception: a cycle that kept every
            # exited command's store and memory until the cycle collector ran, round 74)
            exit_trap.__traceback__ = None
            if _refused(self._budget) != refused:  # wrote past limits.output, then exited
                raise self._stuck() from None
            return exit_trap.code
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise self._call_error(exc, "_start") from None
        finally:
            self._account_fuel()
            group.owner = 0
            group.busy.release()
            self.close()

    def _guarded(self, where: str, func: Any, *args: Any) -> Any:
        """``func(*args)`` under the deadline: the keeper watches it, the store is armed
        with the epoch delta the keeper computed (one FFI call)."""
        if _WASI[1] and self.outputs:  # (a WASI instance, in a fork's child)
            refuse_forked_wasi()
        seconds = self.limits.seconds()
        if self.call_timeout is not None:  # a per-call timeout= (only ever lower)
            seconds = min(seconds, self.call_timeout)
        self.call_timeout = seconds  # what the errors of this call report
        self.where = where  # for _stuck: a bound method costs less than a closure per call
        below = stack_enter(self.limits.stack)  # (room on this thread's stack: stackroom)
        try:
            watch = KEEPER.enter(
                self.engine.clock, seconds, self._stuck, self.store.set_epoch_deadline
            )
        except BaseException:
            stack_leave(below)
            raise
        self.watch = watch
        self.deadline = watch.deadline  # host functions check it on entry and return
        self.group.current = self  # (never nested on one store: calls back in skip this)
        refused = _call_begins(self._budget)
        try:
            result = func(*args)
        finally:
            self.deadline = 0.0
            self.group.current = None  # (held, it made a cycle: instance, group, instance)
            KEEPER.leave(watch)
            stack_leave(below)
            if not watch.interrupted:  # _trap_error reads only that: keep no Watch per sandbox
                self.watch = None
        # Returned past its deadline (Watch.overran). Or it wrote past limits.output and,
        # the write refused, went on to return normally: the limit's error all the same
        # (round 42: exit 0, no output, no warning).
        if watch.overran() or _refused(self._budget) != refused:
            raise self._stuck(watch.reached is not None)  # (reached: the epoch was there)
        return result

    def _stuck(self, blocked: bool = True) -> errors.WasmsbxError:
        """The error of a call the keeper found blocked past its deadline (a host call),
        or (``blocked`` False) of one that came back past it before the engine's epoch
        got there, so that no epoch check could have stopped it: a guest that simply
        finished late, under a timeout shorter than a tick (red team round 83:
        ``timeout=1e-9`` said "0.0 µs (blocked in a host call)" with no host call)."""
        where = self.where
        if self.budget.exceeded:
            return self._output_error([])
        # (code without epoch checks is stopped this way wherever it is, so say no more)
        blocked = blocked and self.engine.clock is not None
        blocked = " (blocked in a host call)" if blocked else ""
        seconds = self.limits.timeout  # (the call's own timeout=, as _interrupted says it)
        if self.call_timeout is not None and self.limits.deadline is None:
            seconds = self.call_timeout
        return errors.TimeoutExceeded(
            f"timeout: {where} still running after {format_duration(seconds)}{blocked}",
            hint="raise limits.timeout (--timeout 30s) if the guest needs longer",
            limit_value=seconds,
        )

    def _stop_flood(self) -> None:
        """The output limit is reached: end the running call as a timeout would.

        Expiring moves the engine's epoch, and engines are shared by every sandbox of
        the same configuration: with another call running on the engine (another
        thread), that would cut its time short, so the keeper moves it only while this
        call is the engine's one (``expire_alone``, red team round 83). Else this call
        is left to stop by itself: each further write fails (EFBIG) and its timeout
        still holds; the error is the output limit either way."""
        watch = self.watch
        if watch is not None:
            KEEPER.expire_alone(watch, lambda: self._output_error([]))

    def _account_fuel(self) -> None:
        if self.call_fuel is not None:
            self.fuel_used += self.fuel_armed - self.store.get_fuel()

    def usage(self) -> Usage:
        fuel_used = self.fuel_used if self.limits.fuel is not None else None
        memory = self._memory_bytes()
        if memory is not None and memory + 65536 > self.limits.memory:
            if self.warnings is _NO_WARNINGS:
                self.warnings = []
            warning = (
                f"memory limit {format_limit(self.limits.memory)} reached: "
                f"guest holds {format_size(memory)}; further memory.grow fails"
            )
            if warning not in self.warnings:  # (asked on every invoke: red team 104)
                self.warnings.append(warning)
        out, err = ([*self.outputs, None, None])[:2]
        return Usage(
            fuel_used=fuel_used,
            memory_bytes=memory,
            stdout=bytes(out.captured) if out and out.captured is not None else None,
            stderr=bytes(err.captured) if err and err.captured is not None else None,
            warnings=tuple(dict.fromkeys(self.warnings)),
        )

    def read_memory(self, offset: int, length: int, memory: str = "memory") -> bytes:
        return self.memory(memory).read(offset, length)

    def write_memory(self, offset: int, data: bytes, memory: str = "memory") -> None:
        self.memory(memory).write(offset, data)

    def memory(self, name: str = "memory") -> _MemoryAccess:
        """Access to an exported memory (IndexError when there is none). Each use takes
        the store's turn as a call does (``_turn``)."""
        mem = self.exports[name] if name in self.memories else None
        if mem is None:
            raise IndexError(f"the module exports no memory named {name!r}")
        return _TurnedAccess(self.store, mem, self._turn)

    def calling_here(self) -> bool:
        return self.group.owner == _get_ident()

    def _turn(self, how: Callable, *args: Any) -> Any:
        """``how(*args)`` with the store to itself: a store runs one thing at a time, and
        a memory grown (or a global set) from one thread while another's call ran in the
        store corrupted it (red team round 94: two grows returned the same old size, and
        a memory ended smaller than the guest had grown it). Waits for a running call as
        another call would (at most the timeout); a host function of the running call,
        on its own thread, goes ahead (as a nested call does)."""
        group = self.group
        if not group.busy.acquire(False) and _occupied(group, self.limits.timeout):
            return how(*args)
        try:
            return how(*args)
        finally:
            group.busy.release()

    def global_info(self, name: str) -> tuple:
        """(type, mutable) of an exported global (KeyError when there is none)."""
        glob = self.exports[name]
        if not isinstance(glob, wasmtime.Global):
            raise KeyError(name)
        return self._turn(global_type, self.store, glob)

    def global_get(self, name: str, wasm_type: Optional[str] = None) -> Any:
        wasm_type = wasm_type or self.global_info(name)[0]
        try:
            return self._turn(global_get, self.store, self.exports[name], wasm_type, self.group)
        except HostCannotHold as exc:
            raise errors.ModuleError(
                f"global {errors.inert(name)!r} holds {exc.what}, which cannot be passed to "
                "the host",
                hint="export a function that reads it instead",
            ) from None

    def global_set(self, name: str, value: Any, wasm_type: Optional[str] = None) -> None:
        wasm_type = wasm_type or self.global_info(name)[0]
        self._turn(global_set, self.store, self.exports[name], wasm_type, value, self.group)

    def export_handle(self, name: str) -> Any:
        """An export as an opaque handle another module of the group can import."""
        return _Export(self.exports[name], self.group)

    def _memory_bytes(self) -> Optional[int]:
        names = self.held or self.memories
        if not names or not hasattr(self, "exports"):
            return None
        return sum(self.exports[name].data_len(self.store) for name in names)

    def close(self) -> None:
        for output in self.outputs:
            output.close()

    def discard(self) -> None:
        """Close its outputs and free its store now (its memories, their reservations),
        unless a memory a host function took (``caller.memory()`` in its start function
        or ``_initialize``), or a view of it, is still alive: a thread given it may read
        or write it at any time, and a store freed under it made that a use after free
        (red team round 66: a segfault, or bytes written into the next sandbox's memory).
        Such a store is left to reference counting, as before. Only for an instance of
        its own store that no call runs on."""
        self.close()
        store = self.store
        if getattr(store, "_wasmsbx_lent", None):  # (a WeakSet: true while one is alive)
            return
        try:
            store.close()
        except Exception:  # noqa: BLE001 - left to the garbage collector, as before
            pass

    # ------------------------------------------------------------------ errors
    def _trap_error(
        self, trap: wasmtime.Trap, where: str, fuel_hint: Optional[str] = None
    ) -> errors.WasmsbxError:
        code = trap.trap_code
        frames = _frames(trap, self.shift)
        if self.budget.exceeded:  # (output past its limit, then a trap before the stop
            return self._output_error(frames)  # landed: the limit came first, red team 156)
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            # (the call's own fuel: a per-call fuel= lowers it; the policy's was reported)
            fuel = self.call_fuel if self.call_fuel is not None else self.limits.fuel
            return errors.FuelExhausted(
                f"fuel exhausted after {format_count(fuel or 0)} units in {where}",
                hint=fuel_hint or "raise limits.fuel (--fuel N) if the guest needs more",
                backtrace=frames,
                limit_value=fuel,
            )
        if code == wasmtime.TrapCode.INTERRUPT:
            return self._interrupted(where, frames)
        if code == wasmtime.TrapCode.STACK_OVERFLOW:
            size = (  # (it read "stack limit the default": round 155)
                f"stack limit {format_limit(self.limits.stack)}"
                if self.limits.stack
                else "the default stack limit"
            )
            return errors.StackExhausted(
                f"wasm stack exhausted in {where} ({size})",
                hint="unbounded recursion? raise limits.stack if the guest needs deeper calls",
                backtrace=frames[:MAX_FRAMES],
            )
        message = _trap_message(trap)
        held = self._memory_bytes()
        refused = memory_limit_error(self.limits.memory, held, where, message, frames)
        if refused is not None:
            return refused
        return errors.TrapError(
            f"{where} trapped: {message}",
            backtrace=frames,
            trap_code=code.name.lower() if code is not None else None,
        )

    def _output_error(self, frames: list) -> errors.WasmsbxError:
        return errors.OutputLimitExceeded(
            f"output limit {format_limit(self.limits.output or 0)} reached: guest wrote "
            f"more to stdout/stderr",
            hint="raise limits.output in the policy",
            backtrace=frames,
            limit_value=self.limits.output,
        )

    def _instantiate_error(self, exc: Exception, module: Any) -> errors.WasmsbxError:
        text = _own_words(exc)  # (told from wasmtime's words, not the guest's names)
        # (its cause, after a start function's backtrace: "error while executing at wasm
        # backtrace:" alone said nothing)
        first = _first_line(exc) if text else "instantiation failed"
        if _link_refusal(first):  # (first: the rest quotes an import's name, the guest's)
            return errors.LinkError(f"cannot link module: {first}", detail=str(exc))
        if _gc_heap_full(exc):  # (a global's array.new at start: the policy's limit)
            return self._gc_heap_error("instantiating the module")
        lowered = unquoted(text).lower()
        if errors.is_exhaustion(lowered):  # the host ran out, not the policy: never a module error
            return _exhausted("instantiating the module", _first_line(exc), self.engine.options)
        if "(os error 27)" in lowered:  # EFBIG: the memory image's file, past `ulimit -f`
            return errors.ResourceExhausted(  # (it was a module error, exit 102: red team 137)
                f"cannot instantiate the module: {first}: this process's file size limit "
                "(ulimit -f) is below what wasmtime's image of the memory's data needs",
                hint='raise `ulimit -f`, or set runtime.memory_init = "copy" (no image)',
            )
        if "memory" in lowered and ("limit" in lowered or "minimum" in lowered):
            need = _declared_memory(self.engine, module)
            asked = f": module needs {format_size(need)} at start" if need else ""
            return errors.MemoryLimitExceeded(
                f"memory limit {format_limit(self.limits.memory)} reached{asked}",
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
        return errors.LinkError(f"cannot instantiate module: {first}", detail=str(exc))


def _link_refusal(first: str) -> bool:
    """Whether wasmtime's first line refuses an import ("unknown import: `env::f` has
    not been defined", "incompatible import type for `env::f`"). Told by how the line
    begins, before any limit is looked for: the name it quotes is the guest's, and an
    import named "out of memory" made a type mismatch a host exhaustion (exit 118)."""
    return first.lower().startswith(("unknown import", "incompatible import type"))


def _gc_heap_full(exc: Any) -> bool:
    """Whether wasmtime refused a struct or array allocation: the GC heap reached its
    share of limits.memory (wasmtime 50: "GC heap out of memory: no capacity for ...").
    Read in its causes only: the backtrace's names are the guest's (one named so made a
    trap a memory limit, red team round 70). ``exc``: an error, or its text."""
    causes = _cause_lines(exc) or [_first_line(exc)]  # (all of them: a cut one lost it)
    return any("gc heap out of memory" in cause.lower() for cause in causes)


def gc_heap_error(where: str, memory: Any, backtrace: Any = ()) -> errors.WasmsbxError:
    """The error of a GC heap full (modules and components alike)."""
    return errors.MemoryLimitExceeded(
        f"memory limit {format_limit(memory)} reached: {where} filled its GC heap (struct, "
        "array and exception objects, which share limits.memory with its memories)",
        hint="raise limits.memory (--memory 512MiB) if the guest needs more",
        backtrace=list(backtrace),
        limit_value=memory,
    )


def _capped(maximum: Optional[int], cap: Optional[int]) -> Optional[int]:
    if cap is None:
        return maximum
    return cap if maximum is None else min(maximum, cap)


def _hosts_storage(imports: Optional[dict]) -> bool:
    """Whether the caller grants host memories or tables (they share the budget)."""
    if not imports:  # (and nothing imported: see Sandbox._live on Python 3.9)
        return False
    from ...host import Memory, Table

    return any(
        isinstance(item, (Memory, Table))
        for names in (imports or {}).values()
        for item in names.values()
    )


def _pages(pages: Optional[int]) -> Optional[int]:
    return None if pages is None else pages * PAGE


_PLANS: dict = {}  # (layout, memory, tables) -> caps; a few per module and policy


def _plan(found: Any, memory: int, tables: Optional[int]) -> Any:
    """plan()'s caps for a module's layout under these limits, computed once (every
    sandbox of a module under one policy has the same); None when plan() refuses."""
    key = (id(found), memory, tables)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is found:
        return hit[1]
    try:
        caps = plan(found, memory, tables)
    except TotalsError:
        return None
    if len(_PLANS) > 4096:  # bounded: a process that sees many modules starts over
        _PLANS.clear()
    _PLANS[key] = (found, caps)
    return caps


_EXTERN_FUNC = ffi.WASMTIME_EXTERN_FUNC.value
_FUNC_T = ffi.wasmtime_func_t


# The names a WasmtimeInstance sets, most used first: see wasmsbx.compact.
INSTANCE_NAMES = (
    "engine", "limits", "memories", "held", "store", "group", "call_timeout", "call_fuel",
    "instance", "exports", "types", "fuel_armed", "fuel_used", "shift", "caps", "outputs",
    "_linker", "_budget", "_host", "warnings", "where", "watch", "deadline",
)  # fmt: skip
_compact.reserve(WasmtimeInstance, INSTANCE_NAMES)


class _Exports(dict):
    """An instance's exports by name, each looked up (one FFI call) on first use rather
    than all wrapped when the instance is made: most sandboxes call one or two."""

    __slots__ = ("instance", "store")

    def __init__(self, store: Any, instance: Any) -> None:
        super().__init__()
        self.store = store
        self.instance = instance

    def __missing__(self, name: str) -> Any:
        raw = name.encode()
        item = ffi.wasmtime_extern_t()
        context = self.store._context()
        if not ffi.wasmtime_instance_export_get(
            context, ctypes.byref(self.instance._instance), raw, len(raw), ctypes.byref(item)
        ):
            raise KeyError(name)
        if item.kind == _EXTERN_FUNC:  # what a call looks up: no generic wrap
            # (a copy of the func's 16 bytes: ``item.of.func`` is a view that keeps the
            # extern and its union alive, two more objects a sandbox held for the
            # garbage collector to walk, issue #16)
            func = _FUNC_T.from_buffer_copy(item.of.func)
            extern = self[name] = wasmtime.Func._from_raw(func)
        else:
            extern = self[name] = wrap_extern(item)
        return extern


def _instance_of(store: Any, module: Any) -> Any:
    """Instantiate a module that imports nothing, without a linker: one FFI call
    (wasmtime.Instance adds an imports array and a context manager per instance)."""
    instance = ffi.wasmtime_instance_t()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_instance_new(
        store._context(), module.ptr(), None, 0, ctypes.byref(instance), ctypes.byref(trap)
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        raise wasmtime.Trap._from_ptr(trap)
    return wasmtime.Instance._from_raw(instance)


def _has_start(wasm: bytes) -> bool:
    """Whether a (valid) module has a start section; True when unsure."""
    pos, end = 8, len(wasm)
    try:
        while pos < end:
            section, pos = wasm[pos], pos + 1
            size = shift = 0
            while True:
                byte, pos = wasm[pos], pos + 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            if section == 8:
                return True
            pos += size
    except IndexError:
        return True
    return False


def _memories(engine: Any, module: Any) -> tuple:
    """The exported memories' names, read once per module."""
    names = getattr(module, "_wasmsbx_memories", None)
    if names is None:
        names = tuple(e.name for e in engine.exports(module) if e.kind == "memory")
        module._wasmsbx_memories = names
    return names


def _held(module: Any) -> list:
    """The hidden exports of every defined memory (compile() adds them; --stats sums
    them), read once per module: listing a module's exports costs FFI calls."""
    held = getattr(module, "_wasmsbx_held", None)
    if held is None:
        held = [
            e.name
            for e in module.exports
            if e.name.startswith(HIDDEN_EXPORT) and _kind(e.type) == "memory"
        ]
        module._wasmsbx_held = held
    return held


def _own_limit(raised: Any, group: Any) -> Any:
    """The limit of the store ``group`` that ``raised`` (a host function's exception) is,
    or was raised because of: followed through the errors it caused on the way out
    (another sandbox's call that trapped because of it), a few dozen at most."""
    for _ in range(64):
        if not isinstance(raised, BaseException):
            return None
        if (
            isinstance(raised, errors.LimitExceeded)
            and getattr(raised, "_wasmsbx_limits_of", None) is group
        ):
            return raised
        raised = raised.__cause__
    return None


def _hides_memories(module: Any) -> bool:
    """Whether compile() added the hidden memory exports (export_memories): then every
    export under the reserved prefix is one of ours, never the module's own."""
    shift = getattr(module, "_wasmsbx_shift", None)
    return shift is not None and shift.shift > 0


def _loop(store: Any, func: Any, types: tuple, args: Any, group: Any, calls: int) -> None:
    for _ in range(calls):
        call_raw(store, func, types, args, group)


class _Export:
    """An export of a group member, to pass in another member's imports."""

    def __init__(self, extern: Any, owner: Any) -> None:
        self._extern = extern
        self._owner = owner


class _MemoryAccess:
    """Reads, writes and grows one wasmtime memory; every range is checked first."""

    def __init__(self, store: Any, mem: Any, owner: Any = None) -> None:
        self.store = store
        self.mem = mem
        self.owner = store if owner is None else owner  # the wasmtime.Store: see view()

    def size(self) -> int:
        return self.mem.data_len(self.store)

    def address(self, offset: int, length: int) -> int:
        """The host address of byte ``offset`` after checking the range is inside."""
        import ctypes

        size = self.mem.data_len(self.store)  # (not self.size: within a turn already)
        if offset < 0 or length < 0 or offset + length > size:
            from ...values import outside

            raise outside(offset, length, size)
        return ctypes.addressof(self.mem.data_ptr(self.store).contents) + offset

    def read(self, offset: int, length: int) -> bytes:
        import ctypes

        address = self.address(offset, length)
        return ctypes.string_at(address, length) if length else b""

    def write(self, offset: int, data: Any) -> None:
        """``data``'s bytes at ``offset``: bytes, any buffer (its bytes, not its item
        count: an array('i') of 2 items is 8 bytes), or an iterable of ints. The size
        copied is always that of the bytes copied from: ``len()`` said how many were
        written, so an array's items were cut to their count, and an object whose
        ``len()`` exceeded what it yields put host memory past it into the guest's
        (red team 152)."""
        import ctypes

        if isinstance(data, bytes):
            source, size = data, len(data)
        else:
            try:
                view = memoryview(data)
            except TypeError:  # an iterable of ints
                source = bytes(data)
                size = len(source)
            else:
                size = view.nbytes
                if view.readonly or not view.c_contiguous:
                    source = view.tobytes()
                else:  # (a bytearray, an array: no intermediate copy)
                    source = (ctypes.c_char * size).from_buffer(view)
        address = self.address(offset, size)
        if size:
            ctypes.memmove(address, source, size)

    def grow(self, pages: int) -> int:
        """Grow by ``pages``; the old size in pages. WasmtimeError when refused."""
        return self.mem.grow(self.store, pages)

    def view(self) -> memoryview:
        """A memoryview of the whole memory as it is now (invalid after a grow)."""
        import ctypes

        size = self.mem.data_len(self.store)
        if not size:
            return memoryview(b"")
        array = (ctypes.c_ubyte * size).from_address(self.address(0, size))
        # A slice of the view (or numpy.frombuffer of it) outlives the ``with`` block that
        # releases the view itself, and read the memory after its store was freed
        # (a segfault; red team round 24): the array, which every slice keeps, keeps the
        # store, so the memory stays mapped while anything can still reach it.
        array._wasmsbx_store = self.owner
        teardown.viewed(array)  # (at exit, a WASI store is closed only if no view holds it)
        if self.store is not self.owner:  # a caller's: lent (_lend) while a slice lives
            array._wasmsbx_access = self
        return memoryview(array).cast("B")


class _TurnedAccess(_MemoryAccess):
    """A sandbox's memory: each use with the store's turn (``WasmtimeInstance._turn``);
    a Caller's is its host call's, whose thread holds the store already."""

    def __init__(self, store: Any, mem: Any, turn: Callable) -> None:
        super().__init__(store, mem)
        self.turn = turn

    def size(self) -> int:
        return self.turn(_MemoryAccess.size, self)

    def read(self, offset: int, length: int) -> bytes:
        return self.turn(_MemoryAccess.read, self, offset, length)

    def write(self, offset: int, data: Any) -> None:
        self.turn(_MemoryAccess.write, self, offset, data)

    def grow(self, pages: int) -> int:
        return self.turn(_MemoryAccess.grow, self, pages)

    def view(self) -> memoryview:
        return self.turn(_MemoryAccess.view, self)


def _lend(store: Any, holder: Any) -> None:
    """``holder``, a host function's memory access (which its views keep), reaches
    ``store``'s memory and may outlive the call: a thread may use it at any time, so
    discard() does not free the store while one is alive (a WeakSet on the store: red
    team rounds 66 and 67)."""
    lent = getattr(store, "_wasmsbx_lent", None)
    if lent is None:
        lent = store._wasmsbx_lent = weakref.WeakSet()
    lent.add(holder)


class _CallerView:
    """What a host function's ``Caller`` reaches: the calling instance's exports."""

    def __init__(self, caller: Any, instance: WasmtimeInstance) -> None:
        self.caller = caller
        self.instance = instance

    def memory(self, name: str = "memory") -> Any:
        from ...memory import Memory

        mem = self.caller.get(name)
        if not isinstance(mem, wasmtime.Memory):
            raise IndexError(f"the calling module exports no memory named {name!r}")
        store = self.instance.store
        access = _MemoryAccess(self.caller, mem, store)
        _lend(store, access)
        return Memory(access, name)


def _declared_memory(engine: WasmtimeEngine, module: Any) -> Optional[int]:
    for export in module.exports:
        if type(export.type).__name__ == "MemoryType":
            return export.type.limits.min * 65536
    return None


def _trap_message(trap: wasmtime.Trap) -> str:
    """What the trap says: "wasm trap: ..." in wasmtime's own words (``own_lines``), the
    last of them; never a frame's name (a function named "x\nwasm trap: all fuel
    consumed" made an `unreachable` say so, round 72)."""
    marker = "wasm trap: "
    lines = [line for line in own_lines(trap.message) if line]
    for line in reversed(lines):
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return lines[-1] if lines else "trap"


def _frames(trap: wasmtime.Trap, shift: Any = None) -> list:
    out = []
    for frame in trap.frames[:MAX_FRAMES]:
        # The name section's name: the module's bytes, so escaped and cut (a name
        # holding "\r\nerror: ..." forged an error line under the trap's: round 52).
        name = errors.inert(frame.func_name) if frame.func_name else f"<func {frame.func_index}>"
        offset = frame.module_offset
        if shift is not None and 0 <= offset < 2**63:
            offset = shift.original_offset(offset)  # as in the module file
        where = f" @ 0x{offset:x}" if 0 <= offset < 2**63 else ""
        out.append(f"{name}{where}")
    return out


class WasmtimeEngine(Engine):
    backend = "wasmtime"
    shared = True  # one per configuration per process: its modules are shared too

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.engine = wasmtime.Engine(engine_config(options))
        self.memory_layout = engine_layout(options.reservation, bool(options.copy_data))
        # Epochs advanced by the process's one keeper; None for code without epoch checks
        # (a `compile -o` artifact run by `wasmsbx run`): the hard stop ends those calls.
        self.clock = KEEPER.clock(self.engine) if options.epoch else None

    def compile(self, wasm: bytes) -> Any:
        exported = export_memories(wasm)
        try:
            module = wasmtime.Module(self.engine, exported.wasm)
        except wasmtime.WasmtimeError as exc:
            raise _module_error(exc, self.options) from None
        module._wasmsbx_layout = layout(wasm)
        module._wasmsbx_shift = exported._replace(wasm=b"")
        module._wasmsbx_wasm = wasm  # a group member is compiled again with its caps
        module._wasmsbx_start = _has_start(wasm)
        return module

    def describe(self, module: Any, wasm: bytes, known: Any = None) -> None:
        module._wasmsbx_wasm = wasm
        if getattr(module, "_wasmsbx_described", False):
            return  # (a module held in memory: described by the sandbox that loaded it)
        if getattr(module, "_wasmsbx_layout", None) is None:
            module._wasmsbx_layout = layout(wasm) if known is None else known.layout
        if getattr(module, "_wasmsbx_start", None) is None:
            module._wasmsbx_start = _has_start(wasm) if known is None else known.start
        if getattr(module, "_wasmsbx_shift", None) is None:
            if known is not None:
                # Native code of this fingerprint ("memory_exports": 1) was compiled by
                # compile() above from export_memories(wasm): the hidden exports are there
                # exactly when it added some (asking wasmtime for the exports costs a
                # cold start 0.2 ms).
                exported = known.exported
                ours = exported.shift > 0
            else:
                exported = export_memories(wasm)._replace(wasm=b"")
                ours = any(
                    e.name.startswith(HIDDEN_EXPORT) and _kind(e.type) == "memory"
                    for e in module.exports
                )
            module._wasmsbx_shift = exported if ours and exported.shift else None
        module._wasmsbx_described = True

    def serialize(self, module: Any) -> bytes:
        return bytes(module.serialize())

    def deserialize(self, native: Any) -> Any:
        """Load native code that passed authentication (a ``trust.Authenticated``)."""
        trust = _TRUST or _import_trust()
        data = trust.require(native)
        try:
            if type(data) is trust.VerifiedFile:  # mapped where it is
                return wasmtime.Module.deserialize_file(self.engine, data.path)
            return _deserialize(self.engine, data)
        except wasmtime.WasmtimeError as exc:
            raise errors.ModuleError(f"cannot load precompiled code: {_first_line(exc)}") from None

    def exports(self, module: Any) -> list:
        cached = getattr(module, "_wasmsbx_exports", None)
        if cached is not None:
            return cached
        # Names and kinds only: wasmtime-py aborts the process when asked for the params of
        # a function that takes v128, so signatures come from wasmsbx.wasm.facts instead.
        out = [
            ExportInfo(export.name, _kind(export.type))
            for export in module.exports
            if not (export.name.startswith(HIDDEN_EXPORT) and _hides_memories(module))
        ]
        module._wasmsbx_exports = out  # type information is immutable: read it once
        return out

    def imports(self, module: Any) -> list:
        cached = getattr(module, "_wasmsbx_imports", None)
        if cached is None:  # read once per module: every sandbox of it asks
            cached = [ImportInfo(i.module, i.name or "", _kind(i.type)) for i in module.imports]
            module._wasmsbx_imports = cached
        return cached

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
    ) -> WasmtimeInstance:
        caps = None
        if not (group or _hosts_storage(imports)):
            return WasmtimeInstance(
                self, module, limits, wasi, imports, shared, register, caps, timeout
            )
        before = shared.group.budget.state() if _budgeted(shared) else None
        module, caps = self._member(module, limits, imports or {}, shared, group)
        try:
            return WasmtimeInstance(
                self, module, limits, wasi, imports, shared, register, caps, timeout
            )
        except BaseException as exc:
            if isinstance(exc, errors.LinkError) or getattr(exc, "nothing_made", False):
                # (refused before wasmtime allocated anything: the instance limit and the
                # shares of memory and tables are the group's again, red team rounds 78,
                # 120 and 122: an add refused in a host function, or timed out waiting
                # for another thread's call, took a slot for good)
                if before is not None:
                    module._wasmsbx_budget.give_back(before)
            else:
                module._wasmsbx_budget.failed += 1  # (said when the limit is reached)
            raise

    def _member(self, module: Any, limits: Limits, imports: dict, shared: Any, group: bool):
        """A group member (or an instance given host memories or tables): its share of
        the budget (limits.Budget), compiled into its memories' and tables' maxima."""
        from ...host import Memory, Table
        from ..limits import Budget, LimitsError, cap_limits

        made = shared.group.host_objects if shared is not None else {}
        if shared is not None and shared.group.budget is not None:
            budget = shared.group.budget
        else:
            budget = Budget(limits, group)
        fresh = {
            id(i): i for names in imports.values() for i in names.values() if id(i) not in made
        }
        memories = [(m.min * PAGE, _pages(m.max)) for m in fresh.values() if isinstance(m, Memory)]
        tables = [(t.min, t.max) for t in fresh.values() if isinstance(t, Table)]
        try:
            caps = budget.take(getattr(module, "_wasmsbx_layout", None), memories, tables)
        except TotalsError as exc:
            raise totals_error(exc, limits) from None
        wasm = getattr(module, "_wasmsbx_wasm", None)
        if wasm is None:  # its caps could not be compiled in: each memory would get it all
            raise errors.ModuleError(
                "this module cannot share a store's limits (a group, or host memories or "
                "tables): its binary is not at hand to cap its memories and tables",
                hint="run it from its .wasm file, not a standalone artifact",
            )
        try:
            capped = cap_limits(wasm, caps.memory_each, caps.table_each, each=True)
        except (LimitsError, IndexError, ValueError) as exc:
            raise errors.ModuleError(f"invalid module: {exc}") from None
        module = self.compile(capped.wasm)
        module._wasmsbx_budget = budget
        return module, caps

    def fingerprint(self) -> dict:
        return fingerprint(self.options)


def _budgeted(shared: Any) -> bool:
    """Whether ``shared`` (a group's first instance, or None) holds the group's budget."""
    return shared is not None and shared.group.budget is not None


def engine_config(options: EngineOptions) -> wasmtime.Config:
    """The wasmtime configuration of an engine for ``options`` (``identity.config_settings``;
    benchmarks/epoch.py and density.py build their raw engines from it, so they measure
    what wasmsbx runs)."""
    config = wasmtime.Config()
    for name, value in config_settings(options):
        if name == "cranelift_flag_set":
            config.cranelift_flag_set(*value)
        else:
            setattr(config, name, value)
    return config


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


_TRUST: Any = None  # native.trust, imported on the first load of native code


def _import_trust() -> Any:
    global _TRUST
    from ...native import trust

    _TRUST = trust
    return trust


# What a WASI call refuses because of the module, not of what it was passed
_MODULE_REFUSALS = frozenset({"missing required memory export"})


def engine_for(options: EngineOptions) -> WasmtimeEngine:
    """The process's engine for these options (``WasmtimeBackend.engine``)."""
    key = engine_key(options)
    engine = _ENGINES.get(key)
    if engine is None:
        engine = _ENGINES[key] = WasmtimeEngine(options)
    return engine


def engine_key(options: EngineOptions) -> tuple:
    """What changes a wasmtime engine's configuration. The memory and table caps are
    not in it: wasmtime enforces them per store (the limiter), not in machine code. The
    reservation is (runtime.memory_layout "dense": limits.memory rounded up to a power
    of two, so policies with nearby limits share an engine), and so is how data reaches
    a memory (runtime.memory_init: wasmtime refuses a module built for the other)."""
    return (
        options.compiler or "cranelift",
        options.optimize,
        bool(options.fuel),
        options.stack,
        options.reservation,
        bool(options.copy_data),
        bool(options.epoch),
        tuple(options.isa_off),
    )


# engine_key -> WasmtimeEngine. Bounded by the number of distinct configurations a
# process's policies imply (optimize x fuel x stack x reservation: a handful; at most 17
# reservations, the powers of two from 64 KiB to 4 GiB); engines are never dropped,
# so modules compiled for one stay valid (module_cache).
_ENGINES: dict = {}


def _out_of_descriptors() -> bool:
    """Whether this process cannot open a file now for want of descriptors (wasmtime's
    "failed to add preopen dir" does not say why)."""
    try:
        os.close(os.open("/", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    return False


WASI_RUNTIME_FREE = 12  # descriptors free, at least, for the first WASI guest of a process


def _runtime_room() -> None:
    """ResourceExhausted if the process has too few descriptors free to make the WASI
    runtime its first WASI guest starts (wasmtime-wasi's tokio runtime, which aborts the
    process when it cannot open what it needs, an ``unwrap`` on EMFILE: red team 144,
    a host program with few descriptors left was killed, SIGABRT). Once it is made,
    later guests need none of it."""
    free = fdroom.free_now()
    if 0 <= free < WASI_RUNTIME_FREE:
        raise errors.ResourceExhausted(
            f"only {free} file descriptors are free: starting the first WASI guest of this "
            f"process needs {WASI_RUNTIME_FREE} (wasmtime's runtime aborts the process "
            "without them)",
            hint="close files or sandboxes you no longer use, or raise the open-files "
            "limit (ulimit -n)",
        )
