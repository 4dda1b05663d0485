"""What the library hands out lives as long as what it came from (red team round 44).

A ``Memory`` from ``box.memory()`` is the memory of one instance; one from
``Caller.memory()`` is valid during its host call; a ``Group``'s members live with the
group, each with the one instance ``Group.add`` made. Past that, every use is a
UsageError: before, a Memory kept reading and writing the instance it came from after
the sandbox had moved on to a new one (stale data, no error), a group's closed member
was instantiated a second time in the shared store, and a closed group came back to life.
"""

from __future__ import annotations

import threading

import pytest

import wasmsbx
from wasmsbx import errors
from wasmsbx.policy import from_dict

from .conftest import BACKENDS

MEM = b"""(module (memory (export "memory") 1)
 (func (export "put") (param i32) (i32.store (i32.const 0) (local.get 0)))
 (func (export "get") (result i32) (i32.load (i32.const 0))))"""

LIB = b"""(module (memory (export "memory") 1)
 (global $n (mut i32) (i32.const 0))
 (func (export "bump") (param i32) (result i32)
  (global.set $n (i32.add (global.get $n) (local.get 0))) (global.get $n)))"""

APP = b"""(module (import "lib" "bump" (func $bump (param i32) (result i32)))
 (func (export "run") (param i32) (result i32) (call $bump (local.get 0))))"""


def _uses(memory) -> list:
    """Every way to use a Memory, each as a thunk."""

    def view():
        with memory.view() as buf:
            return len(buf)

    return [
        lambda: memory.read(0, 4),
        lambda: memory.write(0, b"\1\2\3\4"),
        lambda: memory.size,
        lambda: memory.grow(0),
        view,
    ]


def test_a_memory_of_a_closed_sandbox_is_refused(backend):
    box = wasmsbx.Sandbox(MEM, backend=backend)
    box.call("put", 7)
    memory = box.memory()
    assert memory.read(0, 4) == b"\7\0\0\0"
    box.close()
    for use in _uses(memory):
        with pytest.raises(errors.UsageError, match="closed or replaced"):
            use()


def test_a_memory_of_an_instance_replaced_never_reads_the_old_one(backend):
    """The sandbox's next call (after close()) or a fresh call runs on a new instance:
    the old Memory read the old instance's 7 while the guest's memory held 0."""
    box = wasmsbx.Sandbox(MEM, backend=backend)
    box.call("put", 7)
    old = box.memory()
    box.close()
    assert box.call("get") == 0
    with pytest.raises(errors.UsageError):
        old.read(0, 4)
    current = box.memory()
    assert current.read(0, 4) == b"\0\0\0\0"
    box.call("put", 9)
    assert current.read(0, 4) == b"\x09\0\0\0"
    box.invoke("get", [], fresh=True)
    with pytest.raises(errors.UsageError):
        current.read(0, 4)
    box.close()


def test_a_memory_from_a_caller_is_valid_only_during_the_host_call(backend):
    """It raised wasmtime-py's ValueError on wasmtime and went on working on wasmer."""
    wat = b"""(module (import "env" "peek" (func $peek))
     (memory (export "memory") 1) (data (i32.const 0) "SECRET")
     (func (export "f") (call $peek)))"""
    kept: list = []

    def peek(caller: wasmsbx.Caller) -> None:
        memory = caller.memory()
        assert memory.read(0, 6) == b"SECRET"  # (inside the call: fine)
        kept.append(memory)

    box = wasmsbx.Sandbox(wat, imports={"env": {"peek": peek}}, backend=backend)
    box.call("f")
    for use in _uses(kept[0]):
        with pytest.raises(errors.UsageError, match="kept past its host call"):
            use()
    box.close()


def test_a_closed_group_and_its_members_stay_closed(backend):
    """It came back to life: a member's call made a new store, and add() worked."""
    with wasmsbx.Group(from_dict({"limits": {"instances": 4}}), backend=backend) as group:
        lib = group.add(LIB, name="lib")
        app = group.add(APP)
        assert app.call("run", 2) == 2
        memory = lib.memory()
    for use in (
        lambda: lib.call("bump", 1),
        lambda: app.call("run", 1),
        lambda: lib.memory(),
        lambda: memory.read(0, 4),
        lambda: group.add(LIB),
        lambda: group.register("again", lib),
    ):
        with pytest.raises(errors.UsageError, match="closed"):
            use()
    group.close()  # (again: nothing to do)


def test_a_closed_member_is_never_instantiated_again(backend):
    """lib.close() then lib.call() made a second lib in the shared store (0 where the
    group's lib held 2), while app went on with the first: one lib, or an error."""
    policy = from_dict({"limits": {"instances": 3}})
    with wasmsbx.Group(policy, backend=backend) as group:
        lib = group.add(LIB, name="lib")
        app = group.add(APP)
        assert app.call("run", 2) == 2
        lib.close()
        with pytest.raises(errors.UsageError, match="was closed"):
            lib.call("bump", 1)
        assert app.call("run", 3) == 5  # (the members linked to it go on)
        with pytest.raises(errors.UsageError, match="member of a group"):
            app.invoke("run", [1], fresh=True)
        for _ in range(3):  # (nothing taken from limits.instances)
            with pytest.raises(errors.UsageError):
                lib.call("bump", 1)
        assert app.call("run", 1) == 6


@pytest.mark.parametrize("backend", ["wasmtime"])
def test_adding_to_a_group_from_its_running_call_is_refused(backend):
    """A host function that added a module while its group's call ran re-armed the
    store's fuel: 59 rounds on fuel for 2. (wasmer's group is another process, whose
    call a member joining does not re-arm: there it is allowed.)"""
    policy = from_dict({"limits": {"fuel": 20_000_000, "instances": 60}})
    wat = b"""(module (import "env" "load" (func $load))
     (global (export "rounds") (mut i32) (i32.const 0))
     (func $burn (local $i i32) (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
       (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000)))))
     (func (export "run") (loop $l (call $burn) (call $load)
       (global.set 0 (i32.add (global.get 0) (i32.const 1))) (br $l))))"""
    small = b'(module (func (export "f") (result i32) i32.const 1))'
    holder: dict = {}

    def load() -> None:
        holder["group"].add(small)

    with wasmsbx.Group(policy, backend=backend) as group:
        holder["group"] = group
        box = group.add(wat, imports={"env": {"load": load}})
        with pytest.raises(errors.TrapError) as caught:
            box.call("run")
        assert isinstance(caught.value.__cause__, errors.UsageError)
        assert box.globals["rounds"] == 0
        assert group.add(small).call("f") == 1  # (between calls: fine)


@pytest.mark.parametrize("backend", ["wasmtime"])
def test_adding_from_another_thread_waits_for_the_running_call(backend):
    """Another thread's add re-armed a running call's fuel and deadline (a call under
    a 1 s timeout ran 4 s). It now waits for the call: the call ends on its own fuel,
    after as many iterations as alone."""
    policy = from_dict({"limits": {"fuel": 3_000_000, "instances": 100, "timeout": "60s"}})
    wat = b"""(module (import "env" "tick" (func $tick (result i32)))
     (global (export "iters") (mut i64) (i64.const 0))
     (func (export "loop")
      (loop $l (global.set 0 (i64.add (global.get 0) (i64.const 1)))
       (br_if $l (i32.eqz (call $tick))))))"""
    small = b'(module (func (export "f") (result i32) i32.const 1))'
    started = threading.Event()
    added: list = []

    def tick() -> wasmsbx.i32:
        started.set()
        return 0

    with wasmsbx.Group(policy, backend=backend) as group:
        box = group.add(wat, imports={"env": {"tick": tick}})
        with pytest.raises(errors.FuelExhausted):
            box.call("loop")
        alone = box.globals["iters"]
        box.globals["iters"] = 0
        started.clear()

        def add_some() -> None:
            started.wait(60)
            for _ in range(20):
                added.append(group.add(small))

        thread = threading.Thread(target=add_some)
        thread.start()
        with pytest.raises(errors.FuelExhausted):
            box.call("loop")
        thread.join(60)
        assert box.globals["iters"] == alone
        assert len(added) == 20


class _Mine(BaseException):
    """A BaseException of the caller's own (not an Exception)."""


@pytest.mark.parametrize("raised", [GeneratorExit(), _Mine("mine")])
def test_a_host_function_raising_a_base_exception_is_a_trap(backend, raised):
    """On wasmer these left the call raw (only Exception was caught); wasmtime made them
    a trap. KeyboardInterrupt and SystemExit still stop the caller, on both."""
    wat = b"""(module (import "env" "cb" (func $cb (param i32) (result i32)))
     (func (export "run") (param i32) (result i32) (call $cb (local.get 0))))"""
    pending = [raised]

    def cb(x: wasmsbx.i32) -> wasmsbx.i32:
        if pending:
            raise pending.pop()
        return x * 2

    box = wasmsbx.Sandbox(wat, imports={"env": {"cb": cb}}, backend=backend)
    with pytest.raises(errors.TrapError, match=type(raised).__name__) as caught:
        box.call("run", 1)
    assert caught.value.__cause__ is raised
    assert box.call("run", 21) == 42
    box.close()


def test_an_export_given_outside_its_group_is_refused_in_words(backend):
    """The refusal named an internal class ("_Export cannot be provided")."""
    with wasmsbx.Group(from_dict({"limits": {"instances": 2}}), backend=backend) as group:
        lib = group.add(LIB, name="lib")
        bump = lib.export("bump")
        with pytest.raises(errors.LinkError, match="its own group") as caught:
            wasmsbx.Sandbox(APP, imports={"lib": {"bump": bump}}, backend=backend).call("run", 1)
        assert "_Export" not in caught.value.message


def test_a_component_is_refused_by_a_group_with_a_usage_error():
    component = b"""(component
     (core module $m (func (export "f") (result i32) i32.const 1))
     (core instance $i (instantiate $m))
     (func (export "f") (result u32) (canon lift (core func $i "f"))))"""
    group = wasmsbx.Group(from_dict({"limits": {"instances": 2}}))
    with group, pytest.raises(errors.UsageError, match="component"):
        group.add(component)


def test_two_threads_adding_the_first_members_share_one_store(backend):
    """Round 46: two threads adding the first members of a group at once each made a
    store of its own; a module importing from both then failed to link."""
    policy = from_dict({"limits": {"instances": 3}})
    both = b"""(module (import "l1" "bump" (func $a (param i32) (result i32)))
     (import "l2" "bump" (func $b (param i32) (result i32)))
     (func (export "run") (result i32)
      (i32.add (call $a (i32.const 1)) (call $b (i32.const 2)))))"""
    for _ in range(5):
        with wasmsbx.Group(policy, backend=backend) as group:
            barrier = threading.Barrier(2)
            failures: list = []

            def add(name: str, group=group, barrier=barrier, failures=failures) -> None:
                barrier.wait(30)
                try:
                    group.add(LIB, name=name)
                except Exception as exc:  # noqa: BLE001 - reported below
                    failures.append(exc)

            threads = [threading.Thread(target=add, args=(n,)) for n in ("l1", "l2")]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert failures == []
            assert group.add(both).call("run") == 3


def test_a_start_function_whose_host_function_raises_says_so(backend):
    """It was a LinkError "cannot instantiate module: error while executing" with no
    cause; a call's host function raising is a TrapError naming it, and so is this."""
    wat = b"""(module (import "env" "h" (func $h)) (func $s (call $h)) (start $s)
     (func (export "f")))"""

    def boom() -> None:
        raise ValueError("host boom")

    box = wasmsbx.Sandbox(wat, imports={"env": {"h": boom}}, backend=backend)
    with pytest.raises(errors.TrapError, match="host boom") as caught:
        box.call("f")  # (instantiates: the start function runs)
    assert isinstance(caught.value.__cause__, ValueError)


# A wasmer guest's process, made in a thread that has ended, running a loop (holding
# the GIL) under a 60 s timeout; prints this process's pid, then the guest's.
WASMER_ORPHAN = """
import os, sys, threading, time
import wasmsbx
from wasmsbx.policy import from_dict
policy = from_dict({"limits": {"timeout": "60s"}})
made = []
wat = (b'(module (func (export "spin") (loop $l (br $l)))'
       b' (func (export "one") (result i32) i32.const 1))')
def make():
    made.append(wasmsbx.Sandbox(wat, policy, backend="wasmer"))
    made[-1].call("one")  # (its process: made by this thread, which then ends)
for _ in range(3):
    thread = threading.Thread(target=make)
    thread.start(); thread.join()
assert [box.call("one") for box in made] == [1, 1, 1]  # (their processes are alive)
helper = os.fork()  # (a long-lived fork of the host must not keep them alive: round 47)
if helper == 0:
    time.sleep(120)
    os._exit(0)
print(helper, *[box._instance.pid for box in made], flush=True)
made[0].call("spin")
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@pytest.mark.skipif("wasmer" not in " ".join(BACKENDS), reason="wasmer is not available here")
def test_a_wasmer_process_lives_with_its_host_process_not_the_thread_that_made_it():
    """Round 46: a wasmer sandbox's process died with the thread that made it (its
    PR_SET_PDEATHSIG), so a sandbox made in a thread that ended was "killed by SIGKILL"
    at its next call. Now it lives as long as the process that made it, and no longer:
    killed, that process takes it along, even while the guest loops."""
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen(
        [sys.executable, "-c", WASMER_ORPHAN], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        line = parent.stdout.readline().split()
        assert len(line) == 4, parent.communicate(timeout=60)
        helper, guests = int(line[0]), [int(pid) for pid in line[1:]]
        time.sleep(0.5)  # (the first looping now, the others waiting for calls)
        assert not any(_gone(guest) for guest in guests)
    finally:
        parent.kill()
        parent.wait()
    until = time.monotonic() + 30
    while not all(_gone(guest) for guest in guests) and time.monotonic() < until:
        time.sleep(0.05)
    left = [guest for guest in guests if not _gone(guest)]
    import os

    try:
        os.kill(helper, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if left:
        for guest in left:
            os.kill(guest, signal.SIGKILL)
        pytest.fail(f"wasmer guests' processes outlived the process that made them: {left}")


def test_closing_a_group_while_another_thread_adds_leaves_no_member_alive(backend):
    """Round 47: close() during another thread's add returned at once, and the add then
    put a working member in the closed group. close() now waits for the add."""
    policy = from_dict({"limits": {"instances": 2, "timeout": "30s"}})
    wat = b"""(module (import "env" "h" (func $h)) (func $s (call $h)) (start $s)
     (func (export "g") (result i32) i32.const 7))"""
    started = threading.Event()

    def h() -> None:
        started.set()
        threading.Event().wait(0.3)  # (still adding when close() comes)

    group = wasmsbx.Group(policy, backend=backend)
    added: list = []

    def add() -> None:
        try:
            added.append(group.add(wat, imports={"env": {"h": h}}))
        except errors.WasmsbxError as exc:
            added.append(exc)

    thread = threading.Thread(target=add)
    thread.start()
    assert started.wait(60)
    group.close()
    thread.join(60)
    assert group.members == []
    member = added[0]
    if isinstance(member, wasmsbx.Sandbox):
        with pytest.raises(errors.UsageError, match="closed"):
            member.call("g")


def test_a_guest_at_its_memory_cap_adds_one_warning_however_often_it_is_invoked(backend):
    """Red team 104: each invoke of an instance at its memory cap appended the warning
    again, and each made a set of the whole list: host memory and time grew per call."""
    from wasmsbx import Sandbox
    from wasmsbx import policy as policy_mod

    grow = b"""(module (memory (export "memory") 1)
      (func (export "run") (result i32) (memory.grow (i32.const 15))))"""
    policy = policy_mod.from_dict({"limits": {"memory": "1MiB"}, "runtime": {"backend": backend}})
    box = Sandbox(grow, policy)
    try:
        box.invoke("run")  # grows to the cap (16 pages); later grows fail
        for _ in range(30):
            box.invoke("run")
        instance = box._instance
        assert len(instance.warnings) == 1, instance.warnings
    finally:
        box.close()
