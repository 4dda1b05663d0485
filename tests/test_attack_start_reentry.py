"""A host function of a start function cannot call into the sandbox (or add to the group)
whose instance is still being made (red team round 94): each such call made another
instance nested in the first, with a store, memory, fuel and deadline of its own, to
Python's recursion limit: 58 instances under limits.instances = 1 (912 MiB under a
16 MiB policy), 25 s under a 1 s timeout, and a group of 16 MiB and 2 instances ended
with 11 members of 101 pages each."""

from __future__ import annotations

import threading

import pytest

import wasmsbx
from wasmsbx import errors
from wasmsbx.policy import from_dict

# The start function grows its memory by 100 pages, then calls the host's "h".
STARTS = b"""(module
  (import "env" "h" (func $h))
  (memory (export "memory") 1)
  (func $s (drop (memory.grow (i32.const 100))) (call $h))
  (start $s)
  (func (export "pages") (result i32) memory.size)
  (func (export "alloc") (param i32) (result i32) i32.const 0))"""

POLICY = {"limits": {"instances": 2, "memory": "16MiB", "timeout": "10s"}}


def test_a_start_functions_host_call_into_its_own_sandbox_is_refused(backend):
    entered = []
    box = None

    def h() -> None:
        entered.append(1)
        box.call("alloc", 16)  # the README's "ask the guest for a buffer", at start

    box = wasmsbx.Sandbox(STARTS, from_dict(POLICY), imports={"env": {"h": h}}, backend=backend)
    with pytest.raises(errors.TrapError) as caught:
        box.call("pages")
    assert entered == [1]  # one instance began, none nested in it
    assert "while its instance was being made" in str(caught.value)
    assert isinstance(caught.value.__cause__, errors.UsageError)


def test_its_memory_through_the_sandbox_is_refused_too(backend):
    box = None
    seen = []

    def h() -> None:
        seen.append(box.memory().pages)

    box = wasmsbx.Sandbox(STARTS, from_dict(POLICY), imports={"env": {"h": h}}, backend=backend)
    with pytest.raises(errors.TrapError, match="while its instance was being made"):
        box.call("pages")
    assert seen == []


def test_a_start_function_reaches_its_memory_through_its_caller(backend):
    seen = []

    def h(caller: wasmsbx.Caller) -> None:
        seen.append(caller.memory().pages)

    box = wasmsbx.Sandbox(STARTS, from_dict(POLICY), imports={"env": {"h": h}}, backend=backend)
    if backend.startswith("wasmer"):
        # wasmer-python makes the instance, its memories with it, once start returns
        with pytest.raises(errors.TrapError) as caught:
            box.call("pages")
        assert isinstance(caught.value.__cause__, errors.BackendUnavailable)
        assert "from its start function" in caught.value.__cause__.message
        return
    assert box.call("pages") == 101
    assert seen == [101]


def test_after_the_instance_is_made_a_host_call_into_the_sandbox_still_works(backend):
    """Only the making is refused: the same host function called by a later export
    reaches the sandbox as before (within the running call's limits)."""
    wat = b"""(module
      (import "env" "h" (func $h (result i32)))
      (func (export "run") (result i32) (call $h))
      (func (export "seven") (result i32) i32.const 7))"""
    box = None

    def h() -> wasmsbx.i32:
        return box.call("seven") + 1

    box = wasmsbx.Sandbox(wat, imports={"env": {"h": h}}, backend=backend)
    assert box.call("run") == 8


def test_another_thread_still_waits_for_the_making(backend):
    """The refusal is for the thread making the instance; another thread waits for it."""
    started = threading.Event()
    release = threading.Event()

    def h() -> None:
        started.set()
        release.wait(30)

    box = wasmsbx.Sandbox(STARTS, from_dict(POLICY), imports={"env": {"h": h}}, backend=backend)
    results = []
    first = threading.Thread(target=lambda: results.append(box.call("pages")))
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=lambda: results.append(box.call("pages")))
    second.start()
    release.set()
    first.join(60)
    second.join(60)
    assert results == [101, 101]


def test_a_group_add_from_a_start_functions_host_function_is_refused(backend):
    group = wasmsbx.Group(from_dict(POLICY), backend=backend)
    added = []

    def h() -> None:
        if len(added) < 10:
            added.append(group.add(STARTS, imports={"env": {"h": h}}))

    with pytest.raises(errors.TrapError, match="a member being added"):
        group.add(STARTS, imports={"env": {"h": h}})
    assert added == [] and group.members == []
    # the group is still usable
    assert group.add(STARTS, imports={"env": {"h": lambda: None}}).call("pages") == 101


@pytest.mark.parametrize("how", ["pickle", "copy", "deepcopy"])
def test_a_sandbox_cannot_be_pickled_or_copied(backend, how):
    import copy
    import pickle

    box = wasmsbx.Sandbox(STARTS, imports={"env": {"h": lambda: None}}, backend=backend)
    assert box.call("pages") == 101
    action = {"pickle": pickle.dumps, "copy": copy.copy, "deepcopy": copy.deepcopy}[how]
    with pytest.raises(errors.UsageError, match="cannot be pickled or copied"):
        action(box)
    assert box.call("pages") == 101


def test_nested_host_errors_are_quoted_to_a_bound():
    assert len(errors.raised_text(ValueError("x" * 10_000))) < errors.RAISED_MAX + 100
    assert errors.raised_text(ValueError("short")) == "ValueError: short"


SPINS = b"""(module
  (import "env" "h" (func $h (param i32) (result i32)))
  (func (export "run") (param i32) (result i32) (call $h (local.get 0))))"""


def test_a_plain_nested_call_and_a_fresh_call_from_outside_still_work(backend):
    """What the refusals below leave alone: a host function calling back in plainly
    (within the running call's limits), and fresh=True from outside any call."""
    policy = from_dict({"limits": {"timeout": "10s", "instances": 1}})

    def plain(n: wasmsbx.i32) -> wasmsbx.i32:
        return 0 if n == 0 else nested.call("run", n - 1) + 1

    nested = wasmsbx.Sandbox(SPINS, policy, imports={"env": {"h": plain}}, backend=backend)
    assert nested.call("run", 5) == 5
    assert nested.invoke("run", [2], fresh=True).values == [2]


def test_a_group_closed_from_a_start_functions_host_function_is_refused(backend):
    """Red team round 95: the add went on and left a working member in a closed group."""
    group = wasmsbx.Group(from_dict(POLICY), backend=backend)
    with pytest.raises(errors.TrapError, match="cannot be closed from a host function"):
        group.add(STARTS, imports={"env": {"h": group.close}})
    assert not group.closed and group.members == []


def test_an_add_waits_for_another_threads_add_at_most_the_timeout(backend):
    """Red team round 95: a start function's host function that waited for another
    thread's Group.add deadlocked for good."""
    group = wasmsbx.Group(from_dict({"limits": {"timeout": "2s", "instances": 4}}), backend=backend)
    outcome = []

    def h() -> None:
        def other() -> None:
            try:
                group.add(b'(module (func (export "g")))')
                outcome.append("added")
            except errors.TimeoutExceeded as exc:
                outcome.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(60)

    with pytest.raises(errors.WasmsbxError):  # (the start function ran past 2 s)
        group.add(STARTS, imports={"env": {"h": h}})
    assert len(outcome) == 1 and isinstance(outcome[0], errors.TimeoutExceeded)
    assert "another thread adding a module" in str(outcome[0])


@pytest.mark.parametrize("route", ["fresh", "close", "batch", "batchfresh", "instantiate"])
def test_no_route_makes_a_new_instance_from_a_host_function_of_a_call(backend, route):
    """Red team rounds 95 and 96: fresh=True, close() then a call, batch(),
    batch(fresh=True) and instantiate() from a host function each nested another
    instance with its own limits in the running call (7.2-8.9 s under a 1 s timeout;
    21 instances of 32 MiB under limits.instances = 1)."""
    box = None
    depth = []

    def h(n: wasmsbx.i32) -> wasmsbx.i32:
        depth.append(n)
        if n == 0:
            return 0
        if route == "fresh":
            return box.invoke("run", [n - 1], fresh=True).values[0] + 1
        if route == "close":
            box.close()
            return box.call("run", n - 1) + 1
        if route in ("batch", "batchfresh"):
            rows = list(box.batch("run", [[n - 1]], fresh=route == "batchfresh"))
            if rows[0].error:
                raise RuntimeError(rows[0].error["message"])
            return rows[0].values[0] + 1
        return box.instantiate().call("run", [n - 1])[0] + 1

    policy = from_dict({"limits": {"timeout": "10s", "instances": 1}})
    box = wasmsbx.Sandbox(SPINS, policy, imports={"env": {"h": h}}, backend=backend)
    with pytest.raises(errors.WasmsbxError) as caught:
        box.call("run", 5)
    assert depth == [5], depth
    if backend.startswith("wasmer") and route == "close":  # (close() ends wasmer's worker
        assert "instance is gone" in str(caught.value)  # and the call with it)
    else:
        assert "cannot be made from a host function" in str(caught.value), caught.value
    assert box.call("run", 0) == 0  # (the sandbox goes on, from outside)


def test_a_group_add_refused_in_a_host_function_gives_its_slot_back(backend):
    """A refused add takes nothing (red team 120: each one refused from a host function
    of a running call kept an instance slot, and the group then said a member's start
    had failed). (wasmtime only: wasmer adds from a host function, README "Groups".)"""
    if not backend.startswith("wasmtime"):
        pytest.skip("only wasmtime refuses an add from a host function of a running call")
    lib = b'(module (func (export "one") (result i32) i32.const 1))'
    app = b'(module (import "env" "h" (func $h)) (func (export "f") (call $h)))'
    group = wasmsbx.Group(from_dict({"limits": {"instances": 3}}), backend=backend)
    refused = []

    def h() -> None:
        for _ in range(3):
            try:
                group.add(lib)
            except errors.UsageError as exc:
                refused.append(str(exc))

    member = group.add(app, imports={"env": {"h": h}})
    member.call("f")
    assert len(refused) == 3 and all("from a host function" in r for r in refused), refused
    assert [group.add(lib).call("one") for _ in range(2)] == [1, 1]  # instances 2 and 3
    with pytest.raises(errors.InstanceLimitExceeded) as caught:
        group.add(lib)
    assert "start failed" not in str(caught.value)


def test_a_group_add_timed_out_waiting_for_another_threads_call_gives_its_slot_back(backend):
    """Red team 122: an add that waited past the timeout for another thread's call to
    end (TimeoutExceeded) kept its instance slot, and the group later said members'
    starts had failed."""
    if not backend.startswith("wasmtime"):
        pytest.skip("only wasmtime makes an add wait for a running call")
    lib = b'(module (func (export "one") (result i32) i32.const 1))'
    app = b'(module (import "env" "h" (func $h)) (func (export "f") (call $h)))'
    policy = from_dict({"limits": {"instances": 3, "timeout": "300ms"}})
    group = wasmsbx.Group(policy, backend=backend)
    entered, done = threading.Event(), threading.Event()

    def h() -> None:
        entered.set()
        done.wait(30)

    member = group.add(app, imports={"env": {"h": h}})
    caller = threading.Thread(target=lambda: pytest.raises(errors.WasmsbxError, member.call, "f"))
    caller.start()
    try:
        assert entered.wait(30)
        for _ in range(2):
            with pytest.raises(errors.TimeoutExceeded, match="another thread's call"):
                group.add(lib)
    finally:
        done.set()
        caller.join(30)
    assert [group.add(lib).call("one") for _ in range(2)] == [1, 1]  # instances 2 and 3
    with pytest.raises(errors.InstanceLimitExceeded) as caught:
        group.add(lib)
    assert "start failed" not in str(caught.value)
