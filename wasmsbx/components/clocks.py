"""A component's WASI 0.2 sleeps end at the call's deadline.

wasmtime's ``wasi:io/poll`` waits in native code (``pollable.block()``, ``poll()``),
where no epoch reaches: a component that slept an hour under a 1 s timeout came back
after the hour (its call was then a timeout; only the command line's hard stop ended it
sooner). Every wait on time starts from a pollable that ``wasi:clocks/monotonic-clock``
makes (``subscribe-duration``, ``subscribe-instant``), so wasmsbx stands in for that
interface in the component's linker: a subscription is made by wasmtime's own
``subscribe-duration``, called through a helper component instantiated first in the
same store (``HELPER``: it imports the interface and exports that function and
``resolution``, through a core module, since wasmtime cannot re-export an import), and
a subscription that would end past the running call's
deadline ends at it instead (plus ``MARGIN``, by when the keeper has moved the epoch at
which the store traps, so the guest traps as soon as it runs wasm again). The pollable
the guest gets is wasmtime's own, of ``wasi:io/poll``'s resource type: ``block``,
``poll``, ``ready`` and dropping it are wasmtime's, unchanged. A sleep that ends before
the deadline is exactly the guest's.

What is stood in for (``plan``): each version of the interface the component imports
(the linker finds an exact name before a semver-compatible one; the helper's own imports
are linked before, to wasmtime's), if it is a WASI 0.2 version and every function the
component imports from it is one of the interface's four with its WASI type (else it is
left to wasmtime, which links it or refuses it as it always did: the stand-ins take any
arguments, so a guest that declared ``now: func() -> string`` got a Python TypeError
out of its call, red team round 60). Defining an instance replaces all of it, so each
function the component imports is defined, and only those: ``now`` reads CLOCK_MONOTONIC
(the clock wasmtime's reads, counted from another start) through a bare ctypes callback,
about 0.8 µs a read against 0.1 µs for wasmtime's; ``subscribe-instant`` takes an instant
of that clock as the time from now; ``resolution`` is wasmtime's, read once. Nothing is
done for a component that does not import the clock (it cannot sleep on time), nor
without a deadline. The helper is one more instance in the store (``INSTANCES``: the
store's instance limit grows by it, so ``limits.instances`` still counts the guest's
own) and the fuel its few instructions use is given back, so a sleep costs the guest
the same fuel however long it lasts.

A sleep cut at the deadline returns to the guest early; a guest whose code checks no
epoch before it returns (straight-line code) returns, and its call is a timeout all the
same (``_guarded``: a call back past its deadline is never a result).

Not covered, as for core modules: a wait on anything but time (a read of a stdin that
never delivers blocks until it delivers; the call is then a timeout).
"""

from __future__ import annotations

import _thread
import ctypes
import os
import queue
import re
import threading
import time
from typing import Any, Callable

import wasmtime
import wasmtime.component as wc

PREFIX = "wasi:clocks/monotonic-clock@"
POLL = "wasi:io/poll@"
MARGIN_NS = 20_000_000  # past the deadline: the keeper has moved the epoch by then
INSTANCES = 1  # core instances the helper adds to the store (component ones are not counted)
_STORE_FUEL = wasmtime.Store.get_fuel  # (called with the host call's StoreContext)
_SET_FUEL = wasmtime.Store.set_fuel

HELPER = """(component
  (import "wasi:io/poll@0.2.0" (instance $poll (export "pollable" (type (sub resource)))))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (alias outer 1 $pollable (type $pt))
    (export "pollable" (type $p (eq $pt)))
    (export "resolution" (func (result u64)))
    (export "subscribe-duration" (func (param "when" u64) (result (own $p))))))
  (core func $resolution (canon lower (func $clock "resolution")))
  (core func $duration (canon lower (func $clock "subscribe-duration")))
  (core module $shims
    (import "c" "resolution" (func $resolution (result i64)))
    (import "c" "duration" (func $duration (param i64) (result i32)))
    (func (export "resolution") (result i64) (call $resolution))
    (func (export "duration") (param i64) (result i32) (call $duration (local.get 0))))
  (core instance $i (instantiate $shims (with "c" (instance
    (export "resolution" (func $resolution)) (export "duration" (func $duration))))))
  (func (export "resolution") (result u64) (canon lift (core func $i "resolution")))
  (func (export "duration") (param "when" u64) (result (own $pollable))
    (canon lift (core func $i "duration"))))"""


class Deadline:
    """The running call's deadline (``time.monotonic()``), set by the instance around
    each call; the stand-ins read it. Holds nothing else: the store keeps the stand-ins
    as long as it lives, and one holding the instance would keep it alive for ever."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = float("inf")


# WASI 0.2 versions, as wasmtime's linker takes them (build metadata too: "0.2.0+x"
# linked to wasmtime's own, and slept unbounded, red team round 60); pre-releases it
# does not link.
_VERSION = re.compile(r"0\.2\.\d+(\+[0-9A-Za-z.-]+)?")
# The four functions with their WASI types: (parameter types, result type) by class name
# ("OwnType": an own<pollable>, the pollable of the same import checked apart).
_TYPES = {
    "now": ((), "U64"),
    "resolution": ((), "U64"),
    "subscribe-instant": (("U64",), "OwnType"),
    "subscribe-duration": (("U64",), "OwnType"),
}


def plan(engine: Any, component: Any) -> tuple:
    """((version, (function names)), ...): what to stand in for in ``component``."""
    out = []
    imports = component.type.imports(engine.engine)
    polls = [  # wasi:io/poll's pollable, as each version the component imports has it
        item.ty.exports(engine.engine).get("pollable")
        for name, item in imports.items()
        if name.startswith(POLL) and type(item.ty).__name__ == "ComponentInstanceType"
    ]
    for name, item in imports.items():
        if not name.startswith(PREFIX) or not _VERSION.fullmatch(name[len(PREFIX) :]):
            continue
        if type(item.ty).__name__ != "ComponentInstanceType":
            continue
        exports = item.ty.exports(engine.engine)
        pollable = exports.get("pollable")
        if pollable is not None and not any(p is not None and p.ty == pollable.ty for p in polls):
            continue  # (a pollable of the guest's own making: wasmtime's linking decides)
        funcs = []
        for export, member in exports.items():
            ty = member.ty
            if type(ty).__name__ != "FuncType":
                continue  # (its types: pollable, instant, duration)
            wanted = _TYPES.get(export)
            result = ty.result
            if (
                wanted is None
                or tuple(type(t).__name__ for _, t in ty.params) != wanted[0]
                or type(result).__name__ != wanted[1]
                or (wanted[1] == "OwnType" and (pollable is None or result.ty != pollable.ty))
            ):
                break  # not the WASI interface: wasmtime's own linking decides
            funcs.append(export)
        else:
            if funcs:
                out.append((name[len(PREFIX) :], tuple(funcs)))
    return tuple(out)


def planned(engine: Any, component: Any) -> tuple:
    """``plan(engine, component)``, worked out once per component object."""
    found = getattr(component, "_wasmsbx_clock_plan", None)
    if found is None:
        found = plan(engine, component)
        try:
            component._wasmsbx_clock_plan = found
        except AttributeError:  # (a component type with __slots__)
            pass
    return found


def helper(engine: Any) -> Any:
    """The helper component, compiled once per engine."""
    found = getattr(engine, "_wasmsbx_clock_helper", None)
    if found is None:
        found = engine._wasmsbx_clock_helper = wc.Component(engine.engine, HELPER)
    return found


def stand_in(
    linker: Any, store: Any, engine: Any, planned: tuple, deadline: Deadline, fuel: bool
) -> None:
    """Instantiate the helper in ``store`` (its imports linked to wasmtime's WASI, which
    ``linker`` must hold already) and define what ``plan`` found in ``linker``, with
    subscriptions cut at ``deadline``."""
    made = linker.instantiate(store, helper(engine))
    resolution, duration = (made.get_func(store, name) for name in ("resolution", "duration"))
    call = _refunded if fuel else _plain
    known: list = []  # [resolution], read from wasmtime's at the first call
    # The clock's instants count from here, as wasmtime's count from its WASI context's
    # start (CLOCK_MONOTONIC's own count is the host's uptime: not the guest's to know)
    start = time.monotonic_ns() - 1

    def get_resolution(context: Any) -> int:
        if not known:  # (in a call: the helper runs under its fuel and deadline)
            known.append(call(resolution, context))
        return known[0]

    def subscribe_duration(context: Any, when: int) -> Any:
        left = deadline.at - time.monotonic()
        if left < when / 1e9:  # (a deadline of inf never cuts)
            when = min(when, max(0, int(left * 1e9)) + MARGIN_NS)
        return call(duration, context, when)

    def subscribe_instant(context: Any, when: int) -> Any:
        # An instant of the clock ``now`` reads, as the time from now (past ones: 0,
        # ready at once, as wasmtime's own)
        return subscribe_duration(context, max(0, when - (time.monotonic_ns() - start)))

    def now(context: Any) -> int:
        return time.monotonic_ns() - start

    functions = {
        "now": now,
        "resolution": get_resolution,
        "subscribe-instant": subscribe_instant,
        "subscribe-duration": subscribe_duration,
    }
    linker.allow_shadowing = True
    # (No ``with``: wasmtime-py's close() frees, then forgets the pointer, and an
    # exception between the two (a signal handler's) made the later __del__ free it
    # again, red team round 62. Dropped, each is freed once, by __del__.)
    root = linker.root()
    for version, names in planned:
        instance = root.add_instance(PREFIX + version)
        for name in names:
            if name != "now" or not _add_now(instance, start):
                instance.add_func(name, functions[name])
        del instance
    del root
    linker.allow_shadowing = False


# ``now`` as a bare ctypes callback (reading the clock is what a guest does most, and
# wasmtime-py's host functions build the function's type and convert through it on
# every call: 5 µs a read, against 1.5 µs so, and 0.15 µs for wasmtime's own): it writes
# CLOCK_MONOTONIC's nanoseconds, the clock wasmtime's own reads from (its instants count
# from another start, but every instant the guest uses goes through the stand-ins, and
# subscribe-instant takes them as time from now). _now, through wasmtime-py, if these
# internals are not there.
def _make_fast_now() -> Any:
    ffi = getattr(wasmtime, "_ffi", None)
    kind = getattr(getattr(ffi, "WASMTIME_COMPONENT_U64", None), "value", None)
    callback = getattr(ffi, "wasmtime_component_func_callback_t", None)
    add = getattr(ffi, "wasmtime_component_linker_instance_add_func", None)
    if kind is None or callback is None or add is None:
        return None
    clock = time.monotonic_ns

    def now(start: Any, context: Any, ty: Any, args: Any, nargs: int, results: Any, nres: int):
        if nres != 1:  # (plan() checked the type: never)
            return 0
        out = results[0]
        out.kind = kind
        out.of.u64 = clock() - (start or 0)
        return 0

    keep = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda data: None)  # (nothing to free)
    return (callback(now), add, keep)


_FAST_NOW = _make_fast_now()


def _add_now(instance: Any, start: int) -> bool:
    """Define ``now`` in ``instance`` through _FAST_NOW, counting from ``start`` (its
    data: a number, not a pointer); whether it could."""
    if _FAST_NOW is None:
        return False
    callback, add, keep = _FAST_NOW
    name = b"now"
    error = add(instance.ptr(), ctypes.create_string_buffer(name), len(name), callback, start, keep)
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    return True


def _plain(func: Callable, context: Any, *args: Any) -> Any:
    return func(context, *args)


def _refunded(func: Callable, context: Any, *args: Any) -> Any:
    """``func(context, *args)`` with the fuel its instructions used given back."""
    before = _STORE_FUEL(context)
    try:
        return func(context, *args)
    finally:
        _SET_FUEL(context, before)


class _Worker:
    """The thread that runs calls of the main thread into components with these stand-ins.

    The stand-ins are Python called through ctypes, and Python runs signal handlers on
    the main thread as a callback starts: an exception one raises there (Ctrl-C's
    KeyboardInterrupt, a watchdog's) cannot be caught, ctypes returns whatever its
    return slot held, and wasmtime read that as an error pointer: a segmentation fault
    (red team round 61). Swapping the program's handlers for the call was racy (round
    62). On any other thread no handler runs, so such a call runs here while the main
    thread waits for it, where its handlers run as always: one that raises ends the call
    at its next epoch check (it cannot return while the call uses the store) and its
    exception is raised once the call is back; one that does not raise (a SIGHUP that
    reloads a configuration) lets it go on. About 14 µs a call.
    """

    def __init__(self) -> None:
        self.jobs: Any = queue.SimpleQueue()
        from ..backends.deadline import quiet_threads

        thread = threading.Thread(target=self._serve, name="wasmsbx-component-calls", daemon=True)
        with quiet_threads():  # (the process's signals are the main thread's)
            thread.start()

    def _serve(self) -> None:
        while True:
            func, args, out, done = self.jobs.get()
            try:
                out.append((True, func(*args)))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                out.append((False, exc))
            done.release()


_WORKER: list = []  # the process's _Worker, once made


def _forget_worker() -> None:
    _WORKER.clear()  # (its thread is the parent's: none in a fork's child)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker)


def off_main(func: Callable, args: tuple, stop: Any = None) -> tuple:
    """``func(*args)``, run on the worker thread (see _Worker) for the main thread:
    ``(its outcome, the first exception a handler raised meanwhile or None)``, the
    outcome ``(True, value)`` or ``(False, exception)``; ``stop()``, if given, is called
    at that first exception (to end the call early).

    Written for an exception at any point (a handler raises wherever the main thread
    runs Python): the job is queued once (``queued`` is set with no check for signals
    between it and the put), its answer is in ``out`` before ``done`` is released, and
    each call has a lock of its own, so an exception after a wait succeeded costs
    nothing."""
    if not _WORKER:
        _WORKER.append(_Worker())
    jobs = _WORKER[0].jobs
    out: list = []
    done = _thread.allocate_lock()
    done.acquire()
    came = None
    queued = False
    while not out:
        try:
            if not queued:
                if came is not None:  # (before it was handed over: not started at all)
                    raise came
                queued = True
                jobs.put((func, args, out, done))
            done.acquire()
        except BaseException as exc:  # noqa: BLE001 - a handler's: raised once back
            if not queued:
                raise
            try:  # (another handler's exception here must not leave the call running)
                if came is None:
                    came = exc
                    if stop is not None:
                        stop()
            except BaseException:  # noqa: BLE001, S110 - the first one is raised
                pass
    return out[0], came


def stop_later(watch: Any) -> None:
    """End the call ``watch`` watches at its next epoch check (from a thread of its own:
    with a long timeout left that takes a while, and a second Ctrl-C must not stop it)."""
    from ..backends.deadline import KEEPER

    try:
        threading.Thread(target=KEEPER.expire, args=(watch,), daemon=True).start()
    except BaseException:  # noqa: BLE001 - (no thread: the call runs to its deadline)
        pass
