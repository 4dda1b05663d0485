"""Exact wasm values through wasmtime's C API (``wasmtime._ffi``), for every core type.

wasmtime-py's ``Func.__call__``, ``Val`` and its host-function trampoline cannot carry a
v128 (there is no v128 kind in its conversions: "Unkown ffi.wasmtime_valkind_t: 4") and
they pass f32/f64 through C ``float``/``double`` conversions that quiet signalling NaNs.
So calls, host functions and globals go through ``wasmtime_func_call``,
``wasmtime_func_new`` and ``wasmtime_global_get/set`` here, with ``wasmtime_val_t``
filled in by hand: floats as their bit patterns (written to the union's integer field),
v128 as its 16 bytes, references through wasmtime-py's own externref/funcref helpers.
Types come from the module's facts or from the host's declaration, never from
wasmtime-py's ``FuncType.params`` (which aborts the process on a v128 parameter).
"""

from __future__ import annotations

import ctypes
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any, Callable, Optional

import wasmtime
from wasmtime import _ffi as ffi

from ... import errors
from ...values import F32, F64, REF_TYPES, V128, FuncRef, float_bits

KIND = {
    "i32": ffi.WASMTIME_I32.value,
    "i64": ffi.WASMTIME_I64.value,
    "f32": ffi.WASMTIME_F32.value,
    "f64": ffi.WASMTIME_F64.value,
    "v128": ffi.WASMTIME_V128.value,
    "funcref": ffi.WASMTIME_FUNCREF.value,
    "externref": ffi.WASMTIME_EXTERNREF.value,
}
_FUNCREF = KIND["funcref"]
_EXTERNREF = KIND["externref"]
_WASM_KIND = {"i32": 0, "i64": 1, "f32": 2, "f64": 3, "v128": 4, "externref": 128, "funcref": 129}
_KIND_NAME = {v: k for k, v in _WASM_KIND.items()}


def valtype(name: str) -> wasmtime.ValType:
    """A wasmtime ValType for any core type (wasmtime-py has no v128 constructor)."""
    return wasmtime.ValType._from_ptr(ffi.wasm_valtype_new(ctypes.c_uint8(_WASM_KIND[name])), None)


def functype(params: Sequence[str], results: Sequence[str]) -> wasmtime.FuncType:
    return wasmtime.FuncType([valtype(p) for p in params], [valtype(r) for r in results])


def func_types(store: Any, func: wasmtime.Func) -> tuple:
    """(params, results) of a function as type names, read without wasmtime-py's ValType."""
    ty = ffi.wasmtime_func_type(store._context(), ctypes.byref(func._func))
    try:
        return _names(ffi.wasm_functype_params(ty)), _names(ffi.wasm_functype_results(ty))
    finally:
        ffi.wasm_functype_delete(ty)


def _names(vec_ptr: Any) -> tuple:
    vec = vec_ptr.contents
    return tuple(_KIND_NAME.get(ffi.wasm_valtype_kind(vec.data[i]), "?") for i in range(vec.size))


def global_type(store: Any, glob: wasmtime.Global) -> tuple:
    """(value type name, mutable) of a global."""
    ty = ffi.wasmtime_global_type(store._context(), ctypes.byref(glob._global))
    try:
        content = ffi.wasm_globaltype_content(ty)
        kind = _KIND_NAME.get(ffi.wasm_valtype_kind(content), "?")
        return kind, ffi.wasm_globaltype_mutability(ty) == ffi.WASM_VAR.value
    finally:
        ffi.wasm_globaltype_delete(ty)


# ---------------------------------------------------------------------------- conversions


_NULL_FUNC = ffi.wasmtime_func_t()  # all zero: a null funcref


def _foreign(value: Any, owner: Any) -> bool:
    """Whether ``value`` is a funcref of a sandbox (store) other than ``owner``, or of
    one closed since: a funcref goes back only to the sandbox that gave it out (it was
    wasmtime's "wrong store", as a ModuleError: round 40 LOW)."""
    return value is not None and getattr(value, "_owner", owner) is not owner


_FOREIGN = "a funcref of another sandbox, or of one closed since"


def _refuse_foreign(wasm_type: str, value: Any, owner: Any, where: str) -> None:
    """UsageError for a foreign funcref (``_foreign``) the caller passes in: an argument,
    a global's value (round 43: those still reached wasmtime, a raw WasmtimeError)."""
    if wasm_type == "funcref" and _foreign(value, owner):
        raise errors.UsageError(
            f"{where}: {_FOREIGN}", hint="pass a funcref only to the sandbox that returned it"
        )


def write(store: Any, raw: Any, wasm_type: str, value: Any) -> None:
    """Fill ``raw`` (a wasmtime_val_t) with an already-typed value (see values.coerce)."""
    raw.kind = KIND[wasm_type]
    if wasm_type == "i32":
        raw.of.i32 = value
    elif wasm_type == "i64":
        raw.of.i64 = value
    elif wasm_type == "f32":
        raw.of.i32 = float_bits(value, "f32")  # the bits, not a C float conversion
    elif wasm_type == "f64":
        raw.of.i64 = float_bits(value, "f64")
    elif wasm_type == "v128":
        data = int(value).to_bytes(16, "little")
        ctypes.memmove(ctypes.addressof(raw.of), data, 16)
    elif wasm_type == "externref":
        ctypes.pointer(raw)[0] = wasmtime.Val.externref(value)._new_raw(store)
    elif wasm_type == "funcref":
        # (null: store id 0, the rest zero too; the payload was left as the buffer held
        # it, and wasmtime refused a host function's null result at random: round 40)
        raw.of.funcref = _NULL_FUNC if value is None else value._func._func
    else:  # pragma: no cover - types come from values.VALUE_TYPES
        raise TypeError(f"unknown value type {wasm_type}")


def read(store: Any, raw: Any, wasm_type: str, owner: Any, owned: bool = True) -> Any:
    """The typed Python value in ``raw`` (F32/F64 with exact bits, V128, FuncRef)."""
    if wasm_type == "i32":
        return raw.of.i32
    if wasm_type == "i64":
        return raw.of.i64
    if wasm_type == "f32":
        return F32.from_bits(raw.of.i32 & 0xFFFFFFFF)
    if wasm_type == "f64":
        return F64.from_bits(raw.of.i64 & 0xFFFFFFFFFFFFFFFF)
    if wasm_type == "v128":
        return V128(ctypes.string_at(ctypes.addressof(raw.of), 16))
    if wasm_type == "funcref" or raw.kind == _FUNCREF:  # (typed: ``(ref $ft)``, ``(ref func)``
        # are funcrefs too, which came out as wasmtime-py's Func, its repr printed with a
        # heap address: red team round 68)
        # (a copy: wasmtime-py's Func would be a view into ``raw``, and a host function's
        # arguments sit in a buffer of the store's that every later host call writes,
        # or frees when it grows: a funcref a host function kept became another
        # function of the guest at its next host call, red team round 44)
        if raw.of.funcref.store_id == 0:
            return None
        copied = ffi.wasmtime_func_t.from_buffer_copy(raw.of.funcref)
        return FuncRef(wasmtime.Func._from_raw(copied), owner)
    if raw.kind == _EXTERNREF:
        if raw.of.externref.store_id and not ffi.wasmtime_externref_data(
            store._context(), ctypes.byref(raw.of.externref)
        ):
            _drop(raw, owned)
            raise HostCannotHold("an externref made from a GC reference (extern.convert_any)")
        return wasmtime.Val._from_raw(store, raw, owned=owned).value
    _drop(raw, owned)
    raise HostCannotHold("a GC reference (anyref, eqref, i31ref, exnref, a struct or an array)")


class HostCannotHold(wasmtime.WasmtimeError):
    """A wasm value the host cannot hold: a GC reference, or an externref the guest made
    of one (which wasmtime-py gave the host as None, the null reference: red team round
    120). The value is unrooted first (wasmtime-py raised before it unrooted it, and a
    guest's GC heap filled with values the failed reads kept alive)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _drop(raw: Any, owned: bool) -> None:
    if owned:
        ffi.wasmtime_val_unroot(ctypes.byref(raw))


_REFERENCES = frozenset(REF_TYPES)  # the values a call roots (and must unroot)


def unroot(params: Any, count: int) -> None:
    for i in range(count):
        ffi.wasmtime_val_unroot(ctypes.byref(params[i]))


def call(store: Any, func: wasmtime.Func, types: tuple, args: Sequence[Any], owner: Any) -> list:
    """Call ``func`` (types = (params, results)) with typed args; typed results.

    Raises wasmtime.Trap or wasmtime.WasmtimeError as wasmtime-py's own call does."""
    params, results = types
    args_raw = (ffi.wasmtime_val_t * max(1, len(params)))()
    written = 0
    try:
        for i, (wasm_type, value) in enumerate(zip(params, args)):
            _refuse_foreign(wasm_type, value, owner, f"argument {i + 1}")
            write(store, args_raw[i], wasm_type, value)
            written += 1
        out = (ffi.wasmtime_val_t * max(1, len(results)))()
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        error = ffi.wasmtime_func_call(
            store._context(),
            ctypes.byref(func._func),
            args_raw,
            len(params),
            out,
            len(results),
            ctypes.byref(trap),
        )
    finally:
        if not _REFERENCES.isdisjoint(params):  # (unroot what was written)
            unroot(args_raw, written)
    if error:
        failure = wasmtime.WasmtimeError._from_ptr(error)
        _raise_callback_exception()
        raise failure
    if trap:
        trapped = wasmtime.Trap._from_ptr(trap)
        _raise_callback_exception()
        raise trapped
    got: list = []
    try:
        for i, wasm_type in enumerate(results):
            got.append(read(store, out[i], wasm_type, owner))
    except HostCannotHold:  # (read unrooted its own: the later results too)
        for later in range(len(got) + 1, len(results)):
            ffi.wasmtime_val_unroot(ctypes.byref(out[later]))
        raise
    return got


def _raise_callback_exception() -> None:
    """What a Python callback defined through wasmtime-py (``Linker.define_func``: WASI's
    shadowed proc_exit raises an ExitTrap) raised, as wasmtime-py's own call re-raises it;
    the trap itself only says "python exception"."""
    from wasmtime._func import maybe_raise_last_exn

    maybe_raise_last_exn()


# ---------------------------------------------------------------------------- host side


class WasiRefused(Exception):
    """A WASI function of wasmsbx's (poll.py) refused the guest's arguments: a pointer
    out of bounds or not aligned, as wasmtime's own refuse them (a trap)."""


class WasiNoMemory(WasiRefused):
    """The guest called a WASI function of wasmsbx's without exporting a memory named
    "memory" (as wasmtime's own refuse it: the module's error, not the call's)."""


class _CallerStore:
    """What read/write need from a store (``_context()``), for the duration of a callback."""

    def __init__(self, caller_ptr: Any) -> None:
        self.caller = wasmtime.Caller(caller_ptr)

    def _context(self) -> Any:
        return self.caller._context()


# A NULL finalizer: the env is a number. One of ours (a ctypes thunk held by HostFuncs)
# was called when the store was freed, and a store that outlived its HostFuncs (kept by a
# slice of its memory, say, or freed after it by the cycle collector) called freed code.
_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()


class HostFuncs:
    """Host functions of one store: ``wasmtime_func_new`` with one trampoline of ours.

    ``make(types, fn)`` returns a wasmtime.Func. ``fn(caller, args) -> list`` gets typed
    args and returns typed results; an exception in it becomes a trap. The exception is
    kept in ``raised`` so the call that trapped can chain it (``__cause__``).
    """

    def __init__(self, store: wasmtime.Store, owner: Any) -> None:
        self.store = store
        self.owner = owner
        self.entries: list = []  # (types, fn); the index is the callback's env
        self.raised: Optional[BaseException] = None
        self.callback: Any = None  # made on first use: most sandboxes have no host function

    def make(
        self, types: tuple, fn: Callable[[Any, list], Sequence[Any]], ty: Any = None
    ) -> wasmtime.Func:
        """``ty``: the FuncType of ``types``, if the caller keeps one (for this engine)."""
        if self.callback is None:
            self.callback = _callback_of(self)
        self.entries.append((types, fn))
        func = ffi.wasmtime_func_t()
        # (kept alive across the call: .ptr() does not own it. Not shared between engines:
        # wasmtime's C API ties a FuncType to the first engine it is used with, and using
        # it with another aborts the process.)
        ty = functype(*types) if ty is None else ty
        ffi.wasmtime_func_new(
            self.store._context(),
            ty.ptr(),
            self.callback,
            len(self.entries),  # env: 1-based, as 0 reads back as None
            _NO_FINALIZER,
            ctypes.byref(func),
        )
        return wasmtime.Func._from_raw(func)

    def _trampoline(self, env: Any, caller: Any, params: Any, nparams: int, results: Any, n: int):
        context = None
        depth = HOST_CALLS.depth
        try:
            HOST_CALLS.depth = depth + 1
            context = _CallerStore(caller)
            (param_types, result_types), fn = self.entries[(env or 0) - 1]
            args = [
                read(context, params[i], t, self.owner, owned=False)
                for i, t in enumerate(param_types)
            ]
            values = list(fn(context.caller, args))
            for i, wasm_type in enumerate(result_types):
                if wasm_type == "funcref" and _foreign(values[i], self.owner):
                    raise TypeError(f"result {i + 1}: {_FOREIGN}")
                write(context, results[i], wasm_type, values[i])
            return 0
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a trap
            self.raised = exc
            trap = wasmtime.Trap(f"host function raised {type(exc).__name__}")._consume()
            return ctypes.cast(trap, ctypes.c_void_p).value
        finally:
            HOST_CALLS.depth = depth
            if context is not None:
                context.caller._invalidate()


def _callback_of(host: HostFuncs) -> Any:
    """The C callback of ``host``'s functions, holding ``host`` weakly: a thunk of the
    bound method made a cycle (host -> thunk -> method -> host), so every store with a
    host function (any WASI guest that imports poll_oneoff: CPython, QuickJS) and its
    memory waited for the cycle collector (red team round 73: 12 GiB of MCP workers
    under 256 MiB limits). The store keeps the thunk (wasmtime may call it as long as
    the store lives, after its instance and ``host`` are gone: a guest function taken
    out and called); a call then finds no host and traps."""
    ref = weakref.ref(host)

    def trampoline(env: Any, caller: Any, params: Any, nparams: int, results: Any, n: int):
        found = ref()
        if found is None:
            trap = wasmtime.Trap("host function called after its sandbox was freed")._consume()
            return ctypes.cast(trap, ctypes.c_void_p).value
        return found._trampoline(env, caller, params, nparams, results, n)

    callback = ffi.wasmtime_func_callback_t(trampoline)
    held = getattr(host.store, "_wasmsbx_callbacks", None)
    if held is None:
        held = host.store._wasmsbx_callbacks = []
    held.append(callback)
    return callback


# How many host calls run on this thread (HostFuncs._trampoline): while one does, a call
# into a guest first checks that Python's stack has room for the host call it may make
# (check_reentry).
class _HostCalls(threading.local):
    depth = 0


HOST_CALLS = _HostCalls()
REENTRY_RESERVE = 120  # Python frames a call back into a guest must leave free


def check_reentry(callbacks: bool = False) -> None:
    """Refuse a call into a guest when Python's stack has fewer than REENTRY_RESERVE
    frames left and the guest may call back into Python (``callbacks``: its store has
    host functions or captured WASI output; or a host call runs on this thread, which
    makes this a call back into a guest).

    A guest that calls its host, which calls back into it, and so on (each level a dozen
    frames) met Python's recursion limit as ctypes started the trampoline of the next
    host call: ctypes then reports the RecursionError as "ignored" and returns a null
    trap, which wasmtime takes for success, so the host function never ran and the guest
    read a result of 0 (red team round 40). So did a first call made from a Python stack
    already that deep (round 41). Refused here, before the guest runs: from a host
    function, that function raises and its own trampoline, with the reserve to spare,
    turns it into a trap."""
    depth = HOST_CALLS.depth
    if not (depth or callbacks):
        return
    try:  # (a frame that deep exists: the stack is that full; 0.2 us, in C)
        sys._getframe(sys.getrecursionlimit() - REENTRY_RESERVE)
    except ValueError:
        return
    if depth:
        raise errors.TrapError(
            f"host calls nested too deep: {depth} host functions are calling back into "
            "guests on this thread, and Python's stack is nearly full",
            hint="a guest and its host calling each other without end; or raise "
            "sys.setrecursionlimit if the nesting is meant",
        )
    raise errors.TrapError(
        "called with Python's stack nearly full: the guest's calls back into Python (its "
        "host functions, its output) would find no room",
        hint="call from a shallower stack, or raise sys.setrecursionlimit",
    )


def global_new(
    store: Any, wasm_type: str, mutable: bool, value: Any, owner: Any
) -> wasmtime.Global:
    _refuse_foreign(wasm_type, value, owner, "a host global's value")
    ty = wasmtime.GlobalType(valtype(wasm_type), mutable)
    raw = ffi.wasmtime_val_t()
    write(store, raw, wasm_type, value)
    glob = ffi.wasmtime_global_t()
    error = ffi.wasmtime_global_new(
        store._context(), ty.ptr(), ctypes.byref(raw), ctypes.byref(glob)
    )
    ffi.wasmtime_val_unroot(ctypes.byref(raw))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    return wasmtime.Global._from_raw(glob)


def global_get(store: Any, glob: wasmtime.Global, wasm_type: str, owner: Any) -> Any:
    raw = ffi.wasmtime_val_t()
    ffi.wasmtime_global_get(store._context(), ctypes.byref(glob._global), ctypes.byref(raw))
    return read(store, raw, wasm_type, owner)


def global_set(store: Any, glob: wasmtime.Global, wasm_type: str, value: Any, owner: Any) -> None:
    _refuse_foreign(wasm_type, value, owner, "the global's new value")
    raw = ffi.wasmtime_val_t()
    write(store, raw, wasm_type, value)
    error = ffi.wasmtime_global_set(store._context(), ctypes.byref(glob._global), ctypes.byref(raw))
    ffi.wasmtime_val_unroot(ctypes.byref(raw))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


# ---------------------------------------------------------------------------- the fast call
# ``Sandbox.call`` on a function of numbers is the library's hot path. wasmtime-py's own
# call asks the runtime for the function's type on every call (four FFI calls and a
# ValType object per parameter); ``call`` above allocates two arrays and unroots every
# argument. ``RawCall`` does the per-export work once: the argument and result arrays,
# their kinds and the converters are made when the export is first called, and each call
# goes through prototypes that take plain addresses (no argtypes conversion, no wrapper
# frame). Only i32/i64/f32/f64 parameters and those or v128 results qualify (references
# need rooting); everything else takes ``call``.

_VP = ctypes.c_void_p
_U64 = ctypes.c_uint64
RAW_CALL = ctypes.CFUNCTYPE(_VP, _VP, _VP, _VP, ctypes.c_size_t, _VP, ctypes.c_size_t, _VP)(
    ("wasmtime_func_call", ffi.dll)
)
RAW_SET_FUEL = ctypes.CFUNCTYPE(_VP, _VP, _U64)(("wasmtime_context_set_fuel", ffi.dll))
RAW_GET_FUEL = ctypes.CFUNCTYPE(_VP, _VP, _VP)(("wasmtime_context_get_fuel", ffi.dll))
RAW_SET_EPOCH_DEADLINE = ctypes.CFUNCTYPE(None, _VP, _U64)(
    ("wasmtime_context_set_epoch_deadline", ffi.dll)
)
FAST_PARAMS = frozenset(("i32", "i64", "f32", "f64"))
FAST_RESULTS = frozenset(("i32", "i64", "f32", "f64", "v128"))
_M32, _M64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
_new_float = float.__new__


def context_address(store: Any) -> int:
    """The store's ``wasmtime_context_t *`` as an int: fixed for the store's life."""
    return ctypes.cast(store._context(), _VP).value or 0


# Writers put a plain Python value into a union slot and say whether they could; a value
# they refuse (text, a bool, an out-of-range int, a NaN, an F32/F64 with its own bits)
# goes through values.parse_args and ``_put_typed``, which give the exact semantics.
def _w_i32(slot: Any, value: Any) -> bool:
    if type(value) is int and -0x80000000 <= value <= _M32:
        slot.i32 = value  # ctypes keeps the low 32 bits: 0xffffffff is -1, as in wasm
        return True
    return False


def _w_i64(slot: Any, value: Any) -> bool:
    if type(value) is int and -0x8000000000000000 <= value <= _M64:
        slot.i64 = value
        return True
    return False


def _w_f32(slot: Any, value: Any) -> bool:
    # A C float conversion rounds to nearest and overflows to inf, as values.coerce does;
    # NaNs are left to coerce (a plain NaN becomes the canonical NaN of its sign).
    if type(value) is float and value == value:
        slot.f32 = value
        return True
    return False


def _w_f64(slot: Any, value: Any) -> bool:
    if type(value) is float and value == value:
        slot.f64 = value  # a double is stored as its bits
        return True
    return False


def _r_i32(slot: Any) -> int:
    return slot.i32


def _r_i64(slot: Any) -> int:
    return slot.i64


def _r_f32(slot: Any) -> F32:
    value = _new_float(F32, slot.f32)
    value.bits = slot.i32 & _M32  # the exact bits, whatever a C float read does to a NaN
    return value


def _r_f64(slot: Any) -> F64:
    value = _new_float(F64, slot.f64)
    value.bits = slot.i64 & _M64
    return value


def _r_v128(slot: Any) -> V128:
    return V128(ctypes.string_at(ctypes.addressof(slot), 16))


_WRITERS = {"i32": _w_i32, "i64": _w_i64, "f32": _w_f32, "f64": _w_f64}
_READERS = {"i32": _r_i32, "i64": _r_i64, "f32": _r_f32, "f64": _r_f64, "v128": _r_v128}


def fast_types(types: tuple) -> bool:
    params, results = types
    return FAST_PARAMS.issuperset(params) and FAST_RESULTS.issuperset(results)


class RawCall:
    """One export's call through the C API with arrays made once (see above).

    ``put(args)`` writes plain Python arguments (False: one needs ``put_typed``);
    ``invoke()`` calls and returns the error/trap state; ``results()`` reads them.
    Reentrant calls (a host function calling the same export) are safe: wasmtime reads
    the arguments before running the guest and writes the results after it returns."""

    __slots__ = (
        "args",
        "args_addr",
        "faddr",
        "func",
        "nparams",
        "nresults",
        "out",
        "out_addr",
        "params",
        "pairs",
        "readers",
        "results_slots",
        "trap",
        "trap_addr",
        "writers",
    )

    def __init__(self, func: wasmtime.Func, types: tuple) -> None:
        params, results = types
        self.func = func  # keeps the wasmtime_func_t at faddr alive
        self.faddr = ctypes.addressof(func._func)
        self.params = tuple(params)
        self.nparams, self.nresults = len(params), len(results)
        self.args = (ffi.wasmtime_val_t * max(1, len(params)))()
        self.out = (ffi.wasmtime_val_t * max(1, len(results)))()
        self.args_addr = ctypes.addressof(self.args)
        self.out_addr = ctypes.addressof(self.out)
        for i, name in enumerate(params):
            self.args[i].kind = KIND[name]
        slots = [self.args[i].of for i in range(len(params))]
        self.writers = tuple(_WRITERS[t] for t in params)
        self.pairs = tuple(zip(self.writers, slots))
        self.results_slots = tuple(self.out[i].of for i in range(len(results)))
        self.readers = tuple(zip(tuple(_READERS[t] for t in results), self.results_slots))
        self.trap = _VP()
        self.trap_addr = ctypes.addressof(self.trap)

    def put(self, args: Sequence[Any]) -> bool:
        if len(args) != self.nparams:
            return False
        for (write_one, slot), value in zip(self.pairs, args):  # noqa: SIM110 - no generator per call
            if not write_one(slot, value):
                return False
        return True

    def put_typed(self, typed: Sequence[Any]) -> None:
        """Typed values (values.coerce's: signed ints, F32/F64 with their bits)."""
        for (_, slot), wasm_type, value in zip(self.pairs, self.params, typed):
            if wasm_type == "i32":
                slot.i32 = value
            elif wasm_type == "i64":
                slot.i64 = value
            else:
                bits = float_bits(value, wasm_type)
                if wasm_type == "f32":
                    slot.i32 = bits
                else:
                    slot.i64 = bits

    def invoke(self, context: int) -> Any:
        """Call; the error pointer (an int, or None: see ``failure``)."""
        return RAW_CALL(
            context,
            self.faddr,
            self.args_addr,
            self.nparams,
            self.out_addr,
            self.nresults,
            self.trap_addr,
        )

    def failure(self, error: Any) -> Optional[Exception]:
        """None after a call that returned; else the wasmtime exception for the error or
        the trap, after re-raising what a wasmtime-py callback raised, as ``call`` does."""
        if not error and not self.trap.value:
            return None
        trap, self.trap.value = self.trap.value, None
        if error:
            exc: Exception = wasmtime.WasmtimeError._from_ptr(
                ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t))
            )
        else:
            exc = wasmtime.Trap._from_ptr(ctypes.cast(trap, ctypes.POINTER(ffi.wasm_trap_t)))
        _raise_callback_exception()
        return exc

    def results(self) -> list:
        return [read_one(slot) for read_one, slot in self.readers]
