"""A component's WASI 0.2 sleeps and clock (tests/guests/components/sleep.wat).

In process a component's sleep is wasmtime's own: it is not cut at the deadline (README,
"Sleeps end at the deadline": not covered; a stand-in that cut it was withdrawn). The
command line's hard stop ends it. Sleeps within the deadline are exactly the guest's.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("wasmtime.component")

import wasmsbx  # noqa: E402
from wasmsbx import errors  # noqa: E402
from wasmsbx.policy import from_dict  # noqa: E402

from .conftest import ROOT  # noqa: E402

GUEST = ROOT / "tests" / "guests" / "components" / "sleep.wat"
LONG = 60 * 10**9  # ns: a sleep far past the deadline
BOUND = 30.0  # s: far below LONG, far above the 1 s timeout
SLEEPS = ["nap", "nap-until", "nap-poll"]


def guest(version: str = "0.2.0") -> bytes:
    return GUEST.read_text().replace("VERSION", version).encode()


def policy(**limits) -> wasmsbx.Policy:
    return from_dict({"limits": {"timeout": "1s", **limits}})


@pytest.mark.parametrize("func", SLEEPS)
def test_a_sleep_within_the_timeout_is_the_guests(func):
    box = wasmsbx.Sandbox(guest(), from_dict({"limits": {"timeout": "30s"}}))
    before = box.call("now")
    box.call(func, 200_000_000)
    assert box.call("now") - before >= 200_000_000  # not cut short
    box.close()


def test_a_sleep_costs_the_same_fuel_however_long():
    costs = []
    for ns in (1_000_000, 300_000_000):
        box = wasmsbx.Sandbox(guest(), policy(fuel=10**7, timeout="30s"))
        costs.append(box.invoke("nap", [ns]).stats.fuel_used)
        box.close()
    assert costs[0] == costs[1] and costs[0] < 100, costs


def test_no_sleep_without_fuel_left():
    """Fuel holds too: the guest's own instructions still count."""
    box = wasmsbx.Sandbox(guest(), policy(fuel=3))
    with pytest.raises(errors.FuelExhausted):
        box.call("nap", LONG)


def test_the_default_instances_limit_lets_it_sleep():
    box = wasmsbx.Sandbox(guest(), policy(instances=1))
    box.call("nap", 1_000_000)
    box.close()


def test_a_long_sleep_from_the_command_line(cli, tmp_path):
    """The hard stop ends it at the deadline (exit 112)."""
    path = tmp_path / "sleep.wat"
    path.write_bytes(guest())
    began = time.monotonic()
    res = cli("run", path, "nap", str(LONG), "--timeout", "1s")
    assert res.code == 112 and "timeout: nap still running" in res.stderr, res
    assert time.monotonic() - began < BOUND


def test_now_is_the_monotonic_clock():
    box = wasmsbx.Sandbox(guest(), policy(timeout="30s"))
    assert 0 < box.call("resolution") <= 1_000_000  # wasmtime's own (at most a ms)
    first, began = box.call("now"), time.monotonic_ns()
    time.sleep(0.05)
    second, ended = box.call("now"), time.monotonic_ns()
    assert 0 < second - first <= ended - began + 20_000_000
    assert second - first >= 50_000_000
    box.close()


# A clock interface by WASI's name whose functions the guest typed its own way: the
# stand-ins take any arguments, and such a guest's call raised a bare TypeError out of
# Sandbox.call (exit 100 on the command line), where wasmtime refuses to link it.
MISTYPED = """(component
  (import "wasi:clocks/monotonic-clock@VERSION" (instance $clock
    (export "now" (func (result string)))
    (export "subscribe-duration" (func (param "when" string) (result u64)))))
  (core module $mem (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024)))
  (core instance $m (instantiate $mem))
  (alias core export $m "memory" (core memory $memory))
  (alias core export $m "realloc" (core func $realloc))
  (core func $dur (canon lower (func $clock "subscribe-duration") (memory $memory)
    (realloc $realloc)))
  (core module $a
    (import "h" "dur" (func $dur (param i32 i32) (result i64)))
    (func (export "c") (result i64) (call $dur (i32.const 0) (i32.const 4))))
  (core instance $i (instantiate $a (with "h" (instance (export "dur" (func $dur))))))
  (func (export "c") (result u64) (canon lift (core func $i "c"))))"""


# Its "pollable" is wasi:filesystem's descriptor, not wasi:io/poll's (red team round 61)
OWN_POLLABLE = """(component
  (import "wasi:filesystem/types@0.2.0" (instance $fs
    (export "descriptor" (type (sub resource)))))
  (alias export $fs "descriptor" (type $desc))
  (import "wasi:clocks/monotonic-clock@VERSION" (instance $clock
    (alias outer 1 $desc (type $pt))
    (export "pollable" (type $p (eq $pt)))
    (export "subscribe-duration" (func (param "when" u64) (result (own $p))))))
  (core func $dur (canon lower (func $clock "subscribe-duration")))
  (core module $a
    (import "h" "dur" (func $dur (param i64) (result i32)))
    (func (export "c") (result i32) (call $dur (i64.const 1000))))
  (core instance $i (instantiate $a (with "h" (instance (export "dur" (func $dur))))))
  (func (export "c") (result u32) (canon lift (core func $i "c"))))"""


@pytest.mark.parametrize(
    "text, version",
    [(MISTYPED, "0.2.0"), (MISTYPED, "9.0.0"), (OWN_POLLABLE, "0.2.0")],
    ids=["mistyped", "mistyped-9", "own-pollable"],
)
def test_a_clock_of_other_types_is_refused_as_wasmtime_refuses_it(text, version, cli, tmp_path):
    box = wasmsbx.Sandbox(text.replace("VERSION", version).encode(), policy())
    with pytest.raises(errors.LinkError, match="monotonic-clock"):
        box.call("c")
    path = tmp_path / "mistyped.wat"
    path.write_text(text.replace("VERSION", version))
    res = cli("run", path, "c")
    assert res.code == 102 and "Traceback" not in res.stderr, res
