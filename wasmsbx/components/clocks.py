"""A component's WASI 0.2 sleeps end at the call's deadline.

wasmtime's ``wasi:io/poll`` waits in native code (``pollable.block()``, ``poll()``),
where no epoch reaches: a component that slept an hour under a 1 s timeout came back
after the hour (its call was then a timeout; only the command line's hard stop ended it
sooner). Every wait on time starts from a pollable that ``wasi:clocks/monotonic-clock``
makes (``subscribe-duration``, ``subscribe-instant``), so wasmsbx stands in for that
interface in the component's linker: each of its four functions calls wasmtime's own,
through a helper component instantiated first in the same store (``HELPER``: it imports
the interface and exports the same functions, through a core module, since wasmtime
cannot re-export an import), and a subscription that would end past the running call's
deadline ends at it instead (plus ``MARGIN``, by when the keeper has moved the epoch at
which the store traps, so the guest traps as soon as it runs wasm again). The pollable
the guest gets is wasmtime's own, of ``wasi:io/poll``'s resource type: ``block``,
``poll``, ``ready`` and dropping it are wasmtime's, unchanged. A sleep that ends before
the deadline is exactly the guest's.

Only the interface's versions the component imports are stood in for (the linker finds
an exact name before a semver-compatible one; the helper's own imports are linked
before, to wasmtime's). Nothing is done for a component that does not import the clock
(it cannot sleep), nor without a deadline. The helper is one more instance in the store
(``INSTANCES``: the store's instance limit grows by it, so ``limits.instances`` still
counts the guest's own) and the fuel its few instructions use is given back, so a sleep
costs the guest the same fuel however long it lasts.

Not covered, as for core modules: a wait on anything but time (a read of a stdin that
never delivers blocks until it delivers; the call is then a timeout).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import wasmtime
import wasmtime.component as wc

PREFIX = "wasi:clocks/monotonic-clock@"
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
    (export "now" (func (result u64)))
    (export "resolution" (func (result u64)))
    (export "subscribe-instant" (func (param "when" u64) (result (own $p))))
    (export "subscribe-duration" (func (param "when" u64) (result (own $p))))))
  (core func $now (canon lower (func $clock "now")))
  (core func $resolution (canon lower (func $clock "resolution")))
  (core func $instant (canon lower (func $clock "subscribe-instant")))
  (core func $duration (canon lower (func $clock "subscribe-duration")))
  (core module $shims
    (import "c" "now" (func $now (result i64)))
    (import "c" "resolution" (func $resolution (result i64)))
    (import "c" "instant" (func $instant (param i64) (result i32)))
    (import "c" "duration" (func $duration (param i64) (result i32)))
    (func (export "now") (result i64) (call $now))
    (func (export "resolution") (result i64) (call $resolution))
    (func (export "instant") (param i64) (result i32) (call $instant (local.get 0)))
    (func (export "duration") (param i64) (result i32) (call $duration (local.get 0))))
  (core instance $i (instantiate $shims (with "c" (instance
    (export "now" (func $now)) (export "resolution" (func $resolution))
    (export "instant" (func $instant)) (export "duration" (func $duration))))))
  (func (export "now") (result u64) (canon lift (core func $i "now")))
  (func (export "resolution") (result u64) (canon lift (core func $i "resolution")))
  (func (export "instant") (param "when" u64) (result (own $pollable))
    (canon lift (core func $i "instant")))
  (func (export "duration") (param "when" u64) (result (own $pollable))
    (canon lift (core func $i "duration"))))"""


class Deadline:
    """The running call's deadline (``time.monotonic()``), set by the instance around
    each call; the stand-ins read it. Holds nothing else: the store keeps the stand-ins
    as long as it lives, and one holding the instance would keep it alive for ever."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = float("inf")


def versions(import_names: list) -> list:
    """The versions of the monotonic clock that a component imports."""
    return sorted({name[len(PREFIX) :] for name in import_names if name.startswith(PREFIX)})


def helper(engine: Any) -> Any:
    """The helper component, compiled once per engine."""
    found = getattr(engine, "_wasmsbx_clock_helper", None)
    if found is None:
        found = engine._wasmsbx_clock_helper = wc.Component(engine.engine, HELPER)
    return found


def stand_in(
    linker: Any, store: Any, engine: Any, names: list, deadline: Deadline, fuel: bool
) -> None:
    """Instantiate the helper in ``store`` (its imports linked to wasmtime's WASI, which
    ``linker`` must hold already) and define the clock's versions ``names`` in ``linker``
    with subscriptions cut at ``deadline``."""
    made = linker.instantiate(store, helper(engine))
    now, resolution, instant, duration = (
        made.get_func(store, name) for name in ("now", "resolution", "instant", "duration")
    )
    call = _refunded if fuel else _plain

    def subscribe_duration(context: Any, when: int) -> Any:
        left = deadline.at - time.monotonic()
        if left < when / 1e9:  # (a deadline of inf never cuts)
            when = max(0, int(left * 1e9)) + MARGIN_NS
        return call(duration, context, when)

    def subscribe_instant(context: Any, when: int) -> Any:
        left = deadline.at - time.monotonic()
        if left != float("inf"):
            when = min(when, call(now, context) + max(0, int(left * 1e9)) + MARGIN_NS)
        return call(instant, context, when)

    functions: dict = {
        "now": lambda context: call(now, context),
        "resolution": lambda context: call(resolution, context),
        "subscribe-instant": subscribe_instant,
        "subscribe-duration": subscribe_duration,
    }
    linker.allow_shadowing = True
    with linker.root() as root:
        for version in names:
            with root.add_instance(PREFIX + version) as instance:
                for name, function in functions.items():
                    instance.add_func(name, function)
    linker.allow_shadowing = False


def _plain(func: Callable, context: Any, *args: Any) -> Any:
    return func(context, *args)


def _refunded(func: Callable, context: Any, *args: Any) -> Any:
    """``func(context, *args)`` with the fuel its instructions used given back."""
    before = _STORE_FUEL(context)
    try:
        return func(context, *args)
    finally:
        _SET_FUEL(context, before)
