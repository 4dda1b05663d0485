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
  deadline or is stopped (Ctrl-C, an output flood: ``Watch.overran``), which ends the
  call as its timeout (or that stop) would: the guest never runs past it.

wasmtime's ``poll_oneoff`` reads the subscriptions from the memory of the instance that
calls it, so it is called from a helper instance in the guest's store (the same WASI
context: the same descriptors), through a copy of the subscriptions in the helper's own
memory. The helper is made at the store's first ``poll_oneoff``; the store's instance
limit is raised by one for it then, so the guest's own limit is unchanged.

What is not bounded: a ``poll_oneoff`` or ``fd_read`` that waits for a descriptor (a
pipe, a FIFO) still waits in the clock subscription of its own time slice, so its
deadline holds too; but a plain ``fd_read`` of a pipe that never delivers (no poll
first) still blocks in native code (README "Limits from Python").
"""

from __future__ import annotations

import ctypes
import struct
import time
from typing import Any, Callable

import wasmtime

from .values import WasiRefused as Refused
from .values import call as call_raw

SUB, EVENT = 48, 32  # sizes of a subscription and an event (wasi_snapshot_preview1)
SLICE = 0.1  # seconds a wait lasts before the call's stop is looked at again
# More subscriptions in one call: ENOMEM, which wasmtime's own gives past WASMTIME_MAX
# (so a guest that handles the one handles the other), before a copy of them is made.
MAX_SUBSCRIPTIONS = 4096
WASMTIME_MAX = 1 << 21
EINVAL, ENOMEM = 28, 48
_CLOCK = struct.Struct("<QB7xIxxxxQQH6x")  # userdata, tag 0, clock id, timeout, precision, flags
_MONOTONIC, _REALTIME, _ABSTIME = 1, 0, 1
_U32 = struct.Struct("<I")

# The helper: an instance that calls wasmtime's poll_oneoff on its own memory.
HELPER_WAT = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "poll") (param i32 i32 i32 i32) (result i32)
    (call $poll (local.get 0) (local.get 1) (local.get 2) (local.get 3))))"""


def _helper_parts(engine: Any) -> tuple:
    """(module, linker) of the helper for this wasmsbx engine, made once per engine."""
    found = getattr(engine, "_wasmsbx_poll", None)
    if found is None:
        module = wasmtime.Module(engine.engine, HELPER_WAT)
        linker = wasmtime.Linker(engine.engine)
        linker.define_wasi()
        found = engine._wasmsbx_poll = (module, linker)
    return found


def bounded_poll(
    instance: Any,
    helper_for: Callable[[Any], tuple],
    stopped: Callable[[], BaseException],
    trapped: Callable[[Any], BaseException],
) -> Callable:
    """The host function (``HostFuncs.make``: ``fn(caller, args) -> [errno]``) of one
    store. ``instance``: what holds the running call's ``deadline`` (monotonic; 0 when
    none) and ``watch``; ``helper_for(caller)``: the store's helper (its memory, and
    ``call(caller, in, out, n, ret) -> errno``); ``stopped()``: the error that ends a
    call past its deadline or stopped; ``trapped(trap)``: the error of a trap in the
    helper (its fuel, its epoch: the guest's)."""

    def poll(caller: Any, args: list) -> list:
        in_ptr, out_ptr, count, ret_ptr = (a & 0xFFFFFFFF for a in args)
        if count == 0:
            return [EINVAL]
        if count > WASMTIME_MAX:  # (wasmtime's answer, before it looks at any pointer)
            return [ENOMEM]
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise Refused("missing required memory export")
        size = memory.data_len(caller)
        _check(in_ptr, 8, SUB * count, size)
        _check(out_ptr, 8, EVENT * count, size)
        if count > MAX_SUBSCRIPTIONS:
            return [ENOMEM]
        base = _address(memory, caller)
        subs = bytearray(ctypes.string_at(base + in_ptr, SUB * count))
        helper_memory, helper_call = helper_for(caller)
        ours = _free_userdata(subs, count)
        total = count + 1
        events_at, nevents_at = SUB * total, SUB * total + EVENT * total
        have = helper_memory.data_len(caller)
        if nevents_at + 4 > have:
            helper_memory.grow(caller, (nevents_at + 4 - have + 0xFFFF) // 0x10000)
        helper = _address(helper_memory, caller)
        began = time.monotonic()
        relative = _relative_clocks(subs, count)
        while True:
            now = time.monotonic()
            deadline = instance.deadline
            wait = SLICE if not deadline else min(SLICE, deadline - now)
            if wait <= 0 or _stopped(instance):
                raise stopped()
            if relative and now > began:  # (again after a slice: what is left of them)
                _shorten(subs, relative, int((now - began) * 1e9))
            ctypes.memmove(helper, bytes(subs), SUB * count)
            clock = _CLOCK.pack(ours, 0, _MONOTONIC, int(wait * 1e9), 0, 0)
            ctypes.memmove(helper + SUB * count, clock, SUB)
            try:
                result = helper_call(caller, 0, events_at, total, nevents_at)
            except wasmtime.Trap as trap:
                raise trapped(trap) from None
            if result:  # wasmtime's errno for the guest's subscriptions: as it is
                return [result]
            got = _U32.unpack(ctypes.string_at(helper + nevents_at, 4))[0]
            events = ctypes.string_at(helper + events_at, EVENT * min(got, total))
            theirs = b"".join(
                events[i : i + EVENT]
                for i in range(0, len(events), EVENT)
                if int.from_bytes(events[i : i + 8], "little") != ours
            )
            if theirs:
                ctypes.memmove(base + out_ptr, theirs, len(theirs))
                _check(ret_ptr, 4, 4, size)  # (wasmtime checks it after the wait)
                ctypes.memmove(base + ret_ptr, _U32.pack(len(theirs) // EVENT), 4)
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


def _stopped(instance: Any) -> bool:
    watch = instance.watch
    return watch is not None and watch.reached is not None


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


def helper_of(engine: Any, raise_limit: Callable[[], None]) -> Callable:
    """``helper_for(caller)`` for a store: its helper's (memory, call), instantiated at
    its first use (``raise_limit()`` first: the store's instance limit gets one more)."""
    held: list = []

    def helper_for(caller: Any) -> tuple:
        if not held:
            module, linker = _helper_parts(engine)
            raise_limit()
            instance = linker.instantiate(caller, module)
            exports = instance.exports(caller)
            func = exports["poll"]

            def call(caller: Any, *args: int) -> int:
                return call_raw(caller, func, TYPES, args, None)[0]

            held.append((exports["memory"], call))
        return held[0]

    return helper_for


TYPES = (("i32", "i32", "i32", "i32"), ("i32",))  # poll_oneoff(in, out, n, ret) -> errno
