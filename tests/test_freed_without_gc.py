"""A sandbox's store and memory go when the last reference does, not at the cycle
collector's next pass (red team round 73): a store with a host function (the caller's
imports=, or wasmsbx's own poll_oneoff, which every WASI guest that sleeps or polls
imports: CPython, QuickJS) sat in a reference cycle, so a server running interpreters
held one guest memory per call until the collector ran (12 GiB of MCP workers under
256 MiB limits)."""

from __future__ import annotations

import gc
import weakref

import pytest

import wasmsbx
import wasmsbx.policy

POLLS = b"""(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1) (func (export "_start")))"""

HOST = b"""(module (import "env" "h" (func $h (param i32))) (memory (export "memory") 1)
  (func (export "go") (call $h (i32.const 5))))"""


@pytest.fixture
def no_collector():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _watch_stores(box) -> list:
    """Weak references to the store of every instance ``box`` makes from now on."""
    kept: list = []
    real = box.instantiate

    def keep(*args, **kw):
        made = real(*args, **kw)
        kept.append(weakref.ref(made.store))
        return made

    box.instantiate = keep
    return kept


def _stores_of(box) -> list:
    inst = box._instance
    return [weakref.ref(inst), weakref.ref(inst.store)]


@pytest.mark.parametrize("how", ["run_command", "instantiate"])
def test_a_wasi_guest_that_imports_poll_oneoff_is_freed_at_once(no_collector, how):
    box = wasmsbx.Sandbox(POLLS, kind="command", backend="wasmtime")
    if how == "run_command":
        refs = _watch_stores(box)
        box.run_command([], capture=True)
    else:
        instance = box.instantiate(box.wasi_setup((), b"", capture=True))
        instance.call("_start", [])
        refs = [weakref.ref(instance), weakref.ref(instance.store)]
        instance.close()
        del instance
    assert refs and all(ref() is None for ref in refs)


@pytest.mark.parametrize("close", [True, False], ids=["closed", "dropped"])
def test_a_sandbox_with_host_imports_is_freed_at_once(no_collector, close):
    seen = []
    imports = {"env": {"h": wasmsbx.func(seen.append, params=["i32"], results=[])}}
    box = wasmsbx.Sandbox(HOST, imports=imports, backend="wasmtime")
    box.call("go")
    refs = _stores_of(box)
    if close:
        box.close()
    del box
    assert seen == [5]
    assert all(ref() is None for ref in refs)


def test_a_guest_function_kept_past_its_sandbox_traps_instead_of_crashing(no_collector):
    """The store may outlive its sandbox (a function taken out of it): its host
    function then has no sandbox to run in, and says so as a trap."""
    seen = []
    imports = {"env": {"h": wasmsbx.func(seen.append, params=["i32"], results=[])}}
    box = wasmsbx.Sandbox(HOST, imports=imports, backend="wasmtime")
    box.call("go")
    instance = box._instance
    store, func = instance.store, instance.exports["go"]
    del box, instance
    import wasmtime

    with pytest.raises(wasmtime.WasmtimeError, match="sandbox was freed"):
        func(store)
    assert seen == [5]


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_a_host_function_that_stops_the_run_leaves_no_cycle(no_collector, kind):
    """Ctrl-C (or SystemExit) raised in a host function is raised again from the frame
    that held it: exception -> traceback -> frame -> exception kept the store (red team
    round 74: +200 MiB a call with the collector off)."""

    def stop(x):
        raise kind()

    imports = {"env": {"h": wasmsbx.func(stop, params=["i32"], results=[])}}
    box = wasmsbx.Sandbox(HOST, imports=imports, backend="wasmtime")
    refs = []
    try:
        box._live()
        refs = _stores_of(box)
        box.call("go")
    except kind:
        pass
    del box
    assert refs and all(ref() is None for ref in refs)


EXITS = b"""(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 3))))"""


def test_a_command_that_calls_proc_exit_is_freed_at_once(no_collector):
    """proc_exit's exception kept the call's frames (the instance among them) in its
    traceback, and wasmtime-py's frame that re-raised it held it: every CPython run
    (which ends in proc_exit) kept its store and memory until the cycle collector ran
    (red team round 74: 200 MiB a call)."""
    box = wasmsbx.Sandbox(EXITS, kind="command", backend="wasmtime")
    kept = _watch_stores(box)
    assert box.run_command([], capture=True).exit_code == 3
    assert kept and all(ref() is None for ref in kept)


LIB = b"""(module (memory (export "mem") 1) (func (export "one") (result i32) (i32.const 1)))"""
APP = b"""(module (import "lib" "one" (func $one (result i32)))
  (func (export "main") (result i32) (call $one)))"""


@pytest.mark.parametrize("keep", ["nothing", "a member"])
def test_a_group_dropped_without_close_is_freed_at_once(no_collector, keep):
    """A Group and its members referred to each other: a group dropped without close()
    kept its store, and every member's memory, until the collector ran."""
    policy = wasmsbx.policy.from_dict({"limits": {"instances": 4}})
    group = wasmsbx.Group(policy, backend="wasmtime")
    lib = group.add(LIB, name="lib")
    app = group.add(APP)
    assert app.call("main") == 1
    assert group.members and set(map(id, group.members)) == {id(lib), id(app)}
    refs = [weakref.ref(group), weakref.ref(group.first_instance.store)]
    kept = app if keep == "a member" else None
    del group, lib, app
    if kept is not None:  # a member still in use keeps its group (its store is the group's)
        assert all(ref() is not None for ref in refs)
        assert kept.call("main") == 1
        del kept
    assert all(ref() is None for ref in refs)
