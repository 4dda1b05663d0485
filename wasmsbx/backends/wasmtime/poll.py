"""WASI's ``poll_oneoff`` (preview1) on wasmtime, bounded by the running call's deadline.

wasmtime's own ``poll_oneoff`` sleeps in native code, where no epoch reaches: a guest
that sleeps for a day (``sleep()``, ``nanosleep()``, Rust's ``thread::sleep``, Python's
``time.sleep``: all are this call) held its caller for a day, and its timeout was only
reported once the sleep ended. So a guest's ``poll_oneoff`` is this module's function:

- it hands the guest's subscriptions, unchanged, to wasmtime's own ``poll_oneoff`` (so
  every answer, error and event is wasmtime's), plus one clock subscription of its own
  that ends the wait at the call's deadline, or after ``SLICE`` seconds, whichever is
  first;
- if that clock is all that fired, the wait goes on (relative clocks shortened by the
  time waited) until the guest's own subscriptions fire, or the call passes its
  deadline or is stopped (Ctrl-C, an output flood: ``Watch.reached``), which ends the
  call as its timeout (or that stop) would: the guest never runs past it.

wasmtime's ``poll_oneoff`` reads the subscriptions from the memory exported as "memory"
by the instance that calls it, so it is called from a helper instance in the guest's
store (the same WASI context: the same descriptors) that imports the guest's memory and
exports it as its own: the subscriptions, wasmsbx's clock and the events are placed at
the start of the guest's memory (at most ``MAX_SUBSCRIPTIONS``: one 64 KiB page), whose
bytes are put back before the guest runs again. So the helper has no memory of its own
(a memory reserves the engine's whole address-space reservation: 4 GiB by default,
red team round 49). One helper per guest memory that polls, made at its first
``poll_oneoff``; the store's instance limit is raised by one for each, so the guest's
own limits are unchanged. It runs on fuel the store is given back (the guest's fuel is
what it was without it) and under the call's epoch deadline.

The deadline and the errors are those of the call running on the store (``running()``:
in a group, the member whose call it is, whichever member imported ``poll_oneoff``
first; red team round 48).

What is not bounded: other host calls that wait in native code (a plain ``fd_read`` of a
pipe that never delivers, the open of a FIFO): README "Limits from Python".
"""

from __future__ import annotations

import ctypes
import struct
import time
from typing import Any, Callable

import wasmtime

from .values import RAW_GET_FUEL, RAW_SET_FUEL, functype
from .values import WasiNoMemory as NoMemory
from .values import WasiRefused as Refused
from .values import call as call_raw

SUB, EVENT = 48, 32  # sizes of a subscription and an event (wasi_snapshot_preview1)
SLICE = 0.1  # seconds a wait lasts before the call's stop is looked at again
# More subscriptions in one call: ENOMEM, which wasmtime's own gives past WASMTIME_MAX
# (so a guest that handles the one handles the other): they, their events and
# wasmsbx's clock fill one page, the least a memory holding subscriptions has.
MAX_SUBSCRIPTIONS = (0x10000 - 4) // (SUB + EVENT) - 1  # 818
WASMTIME_MAX = 1 << 21
EINVAL, ENOMEM = 28, 48
HELPER_FUEL = 10_000  # the helper's call takes about 6 units: never short of it
# The fields of an event as wasmtime writes them, in order (userdata, error, type,
# nbytes, flags): the padding between them is left as the guest had it.
_EVENT_FIELDS = ((0, 8), (8, 2), (10, 1), (16, 8), (24, 2))
_EVENT_RUNS = ((0, 11), (16, 10))  # (the same, for an event that fits: two copies)
_CLOCK = struct.Struct("<QB7xIxxxxQQH6x")  # userdata, tag 0, clock id, timeout, precision, flags
_MONOTONIC, _REALTIME, _ABSTIME = 1, 0, 1
_U32 = struct.Struct("<I")

# The helper: calls wasmtime's poll_oneoff on the memory it imports (the guest's: a
# 32-bit one, or with "i64" a 64-bit one, which must be imported as such).
HELPER_WAT = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasmsbx" "memory" (memory %s0))
  (export "memory" (memory 0))
  (func (export "poll") (param i32 i32 i32 i32) (result i32)
    (call $poll (local.get 0) (local.get 1) (local.get 2) (local.get 3))))"""


def _helper_parts(engine: Any) -> tuple:
    """(module for a 32-bit memory, for a 64-bit one, linker with WASI) of the helper
    for this wasmsbx engine, made once."""
    found = getattr(engine, "_wasmsbx_poll", None)
    if found is None:
        narrow = wasmtime.Module(engine.engine, HELPER_WAT % "")
        wide = wasmtime.Module(engine.engine, HELPER_WAT % "i64 ")
        linker = wasmtime.Linker(engine.engine)
        linker.define_wasi()
        found = engine._wasmsbx_poll = (narrow, wide, linker)
    return found


def func_type(engine: Any) -> Any:
    """poll_oneoff's FuncType for this engine, made once (wasmtime's C API ties a
    FuncType to the engine it is first used with: one per engine, never shared)."""
    found = getattr(engine, "_wasmsbx_poll_type", None)
    if found is None:
        found = engine._wasmsbx_poll_type = functype(*TYPES)
    return found


def bounded_poll(running: Callable[[], Any], helper_for: Callable[[Any, Any], Any]) -> Callable:
    """The host function (``HostFuncs.make``: ``fn(caller, args) -> [errno]``) of one
    store. ``running()``: the instance whose call runs on the store now (its
    ``deadline``, monotonic, 0 when none; its ``watch``; its output ``_budget``;
    ``_poll_stopped()``, the error that ends a call past its deadline or stopped;
    ``_poll_trapped(trap)``, the error of a trap in the helper); ``helper_for(caller,
    memory)``: ``call(caller, in, out, n, ret) -> errno``, wasmtime's poll_oneoff on
    that memory."""

    def poll(caller: Any, args: list) -> list:
        in_ptr, out_ptr, count, ret_ptr = (a & 0xFFFFFFFF for a in args)
        memory = caller.get("memory")  # (wasmtime's first check, whatever the count)
        if not isinstance(memory, wasmtime.Memory):
            raise NoMemory("missing required memory export")
        if count == 0:
            return [EINVAL]
        if count > WASMTIME_MAX:  # (wasmtime's answer, before it looks at any pointer)
            return [ENOMEM]
        size = memory.data_len(caller)
        _check(in_ptr, 8, SUB * count, size)
        if count > MAX_SUBSCRIPTIONS:
            return [ENOMEM]
        base = _address(memory, caller)
        subs = bytearray(ctypes.string_at(base + in_ptr, SUB * count))
        helper_call = helper_for(caller, memory)
        ours = _free_userdata(subs, count)
        total = count + 1
        events_at, nevents_at = SUB * total, SUB * total + EVENT * total
        scratch = nevents_at + 4  # (at most one page: the guest's memory has one,
        if scratch > size:  # unless its pages are smaller, custom-page-sizes)
            return [ENOMEM]
        began = time.monotonic()
        relative = _relative_clocks(subs, count)
        call = running()
        while True:
            now = time.monotonic()
            deadline = call.deadline
            wait = SLICE if not deadline else min(SLICE, deadline - now)
            watch, budget = call.watch, call._budget
            if (
                wait <= 0
                or (watch is not None and watch.reached is not None)
                or (budget is not None and budget.exceeded)
            ):
                raise call._poll_stopped()
            if relative and now > began:  # (again after a slice: what is left of them)
                _shorten(subs, relative, int((now - began) * 1e9))
            kept = ctypes.string_at(base, scratch)  # (the guest's bytes, put back below)
            try:
                ctypes.memmove(base, bytes(subs), SUB * count)
                clock = _CLOCK.pack(ours, 0, _MONOTONIC, int(wait * 1e9), 0, 0)
                ctypes.memmove(base + SUB * count, clock, SUB)
                try:
                    result = helper_call(caller, 0, events_at, total, nevents_at)
                except wasmtime.Trap as trap:
                    raise call._poll_trapped(trap) from None
                got = min(_U32.unpack(ctypes.string_at(base + nevents_at, 4))[0], total)
                events = ctypes.string_at(base + events_at, EVENT * got)
            finally:
                ctypes.memmove(base, kept, scratch)
            if result:  # wasmtime's errno for the guest's subscriptions: as it is
                return [result]
            theirs = [
                events[i : i + EVENT]
                for i in range(0, len(events), EVENT)
                if int.from_bytes(events[i : i + 8], "little") != ours
            ]
            if theirs:
                for n, event in enumerate(theirs):  # (written as wasmtime writes them:
                    at = out_ptr + n * EVENT  # field by field, each checked first)
                    _check(at, 8, 0, size)
                    whole = at + EVENT <= size
                    for offset, length in _EVENT_RUNS if whole else _EVENT_FIELDS:
                        _check(at + offset, 1, length, size)
                        ctypes.memmove(base + at + offset, event[offset : offset + length], length)
                _check(ret_ptr, 4, 4, size)
                ctypes.memmove(base + ret_ptr, _U32.pack(len(theirs)), 4)
                return [0]

    return poll


def _address(memory: wasmtime.Memory, caller: Any) -> int:
    """The host address of byte 0 of ``memory`` (valid until it grows)."""
    return ctypes.cast(memory.data_ptr(caller), ctypes.c_void_p).value or 0


def _check(pointer: int, align: int, length: int, size: int) -> None:
    if pointer % align:
        raise Refused(f"pointer {pointer} not aligned to {align}")
    if pointer + length > size:
        raise Refused(f"{length} bytes at {pointer} out of bounds of its memory")


def _free_userdata(subs: bytearray, count: int) -> int:
    """A userdata none of the guest's subscriptions uses (ours is told apart by it)."""
    taken = {int.from_bytes(subs[i * SUB : i * SUB + 8], "little") for i in range(count)}
    candidate = 0x7761736D73627800  # "wasmsbx\0"
    while candidate in taken:
        candidate += 1
    return candidate


def _relative_clocks(subs: bytearray, count: int) -> list:
    """(offset of the timeout, its value) of each relative wall or monotonic clock
    subscription: shortened by the time waited when the wait is resumed after a slice."""
    found = []
    for i in range(count):
        at = i * SUB
        if subs[at + 8] != 0:  # not a clock
            continue
        clock_id = int.from_bytes(subs[at + 16 : at + 20], "little")
        flags = int.from_bytes(subs[at + 40 : at + 42], "little")
        if clock_id in (_MONOTONIC, _REALTIME) and not flags & _ABSTIME:
            found.append((at + 24, int.from_bytes(subs[at + 24 : at + 32], "little")))
    return found


def _shorten(subs: bytearray, relative: list, waited_ns: int) -> None:
    for at, timeout in relative:
        subs[at : at + 8] = max(0, timeout - waited_ns).to_bytes(8, "little")


def helper_of(engine: Any, raise_limit: Callable[[int], None], fuel: bool) -> Callable:
    """``helper_for(caller, memory)`` for a store: ``call(caller, in, out, n, ret)``,
    wasmtime's poll_oneoff through a helper instance on that memory, made at its first
    use (``raise_limit(1)`` first: the store's instance limit gets one more for it).
    ``fuel``: the engine meters fuel, so each call of the helper gives the store back
    what it took."""
    calls: dict = {}  # the guest memory's identity in the store -> its helper's call
    wasi: list = []  # wasmtime's own poll_oneoff, in this store

    def helper_for(caller: Any, memory: wasmtime.Memory) -> Callable:
        key = bytes(memory._memory)  # (the store's id and the memory's index in it)
        found = calls.get(key)
        if found is not None:
            return found
        narrow, wide, linker = _helper_parts(engine)
        if not wasi:
            wasi.append(linker.get(caller, "wasi_snapshot_preview1", "poll_oneoff"))
        module = wide if memory.type(caller).is_64 else narrow
        raise_limit(1)
        try:
            instance = wasmtime.Instance(caller, module, [wasi[0], memory])
        except BaseException:
            raise_limit(-1)  # (none made: the limit as it was)
            raise
        func = instance.exports(caller)["poll"]

        def call(caller: Any, *args: int) -> int:
            if not fuel:
                return call_raw(caller, func, TYPES, args, None)[0]
            context = ctypes.cast(caller._context(), ctypes.c_void_p).value
            left = ctypes.c_uint64()
            RAW_GET_FUEL(context, ctypes.addressof(left))
            try:  # (set inside: an interrupt after it still puts the fuel back)
                RAW_SET_FUEL(context, left.value + HELPER_FUEL)
                return call_raw(caller, func, TYPES, args, None)[0]
            finally:
                RAW_SET_FUEL(context, left.value)

        calls[key] = call
        return call

    return helper_for


TYPES = (("i32", "i32", "i32", "i32"), ("i32",))  # poll_oneoff(in, out, n, ret) -> errno
