"""A sandbox per tenant (issue #16): ``Sandbox(module, policy)`` again with the same bytes
object and policy follows the policy's plan (runner.sandbox._Plan) instead of every step
of __init__. What a plan must never do: outlive a change of the policy, skip a check
that reads the disk, skip a step a subclass overrides, share anything per sandbox, or
keep a module the process dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasmsbx import Sandbox, errors
from wasmsbx import policy as policy_mod
from wasmsbx.runner import sandbox as core
from wasmsbx.runner import shared

from .cache_helpers import make_policy as cached_policy
from .conftest import require_capability

COUNTER = b"""(module
  (memory (export "memory") 1)
  (global $n (mut i32) (i32.const 0))
  (func (export "inc") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (global.get $n))
  (func (export "grow") (result i32)
    (block $done
      (loop $next
        (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $next)))
    (memory.size))
  (func (export "spin") (loop $l (br $l)))
  (func (export "busy") (param $n i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $i)))"""

# A guest that counts the environment variables it is given (WASI, called as a function).
ENV_COUNT = b"""(module
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $sizes (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "count") (result i32)
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (i32.load (i32.const 0))))"""


def make_policy(backend: str, **keys) -> policy_mod.Policy:
    policy = policy_mod.defaults()
    policy_mod.override(policy, "runtime.backend", backend)
    for name, value in keys.items():
        policy_mod.override(policy, name.replace("__", "."), value)
    return policy


def plan_of(policy: policy_mod.Policy, module: bytes = COUNTER):
    """The plan a sandbox of ``module`` under ``policy`` would follow, if any."""
    for plan in shared.plans(module):
        if plan.values == policy.values:
            return plan
    return None


@pytest.fixture(autouse=True)
def no_plans():
    shared._PLANS.clear()
    yield
    shared._PLANS.clear()


def test_a_policy_per_tenant_follows_the_plan_of_its_values(backend):
    """Each tenant a policy object of its own, with one of two memory limits: two plans,
    and each sandbox holds to its own policy's limit."""
    tiers = {"1MiB": 16, "2MiB": 32}
    boxes = []
    for i in range(8):
        memory = list(tiers)[i % 2]
        box = Sandbox(COUNTER, make_policy(backend, limits__memory=memory))
        boxes.append((box, tiers[memory]))
    for box, pages in boxes:
        assert box.call("grow") == pages
    if backend.startswith("wasmtime"):
        # (one plan: the default layout reserves the same for every memory limit)
        assert len(shared.plans(COUNTER)) == 1
        assert len({id(box.module) for box, _ in boxes}) == 1


def test_sandboxes_from_a_plan_keep_their_own_instances(backend):
    policy = make_policy(backend)
    boxes = [Sandbox(COUNTER, policy) for _ in range(4)]
    assert [boxes[0].call("inc") for _ in range(3)] == [1, 2, 3]
    assert boxes[3].call("inc") == 1
    assert boxes[2].call("inc") == 1
    if backend.startswith("wasmtime"):
        plan = plan_of(policy)
        assert plan is not None and plan.data is COUNTER
        assert all(box.module is boxes[0].module for box in boxes)
        assert boxes[3].export_list == boxes[0].export_list
        assert boxes[3].cache_state == boxes[1].cache_state


def test_a_changed_policy_is_followed_by_the_next_sandbox(backend):
    policy = make_policy(backend, limits__memory="1MiB")
    assert Sandbox(COUNTER, policy).call("grow") == 16
    assert Sandbox(COUNTER, policy).call("grow") == 16
    policy_mod.override(policy, "limits.memory", "2MiB")
    assert Sandbox(COUNTER, policy).call("grow") == 32
    policy_mod.override(policy, "limits.memory", "1MiB")
    assert Sandbox(COUNTER, policy).call("grow") == 16
    policy_mod.override(policy, "limits.module_size", "64B")  # (the module is larger)
    with pytest.raises(errors.WasmsbxError, match="limits.module_size"):
        Sandbox(COUNTER, policy)


def test_a_policy_changed_in_place_is_seen_too(backend):
    """policy.values is a plain dict: a host may change it without override(). Fuel
    metering is compiled in (another engine, another module): a sandbox made from the
    plan made before would spin until its timeout."""
    require_capability(backend, "fuel")
    policy = make_policy(backend, limits__timeout="20s")
    Sandbox(COUNTER, policy).call("inc")
    Sandbox(COUNTER, policy).call("inc")
    policy.values["limits.fuel"] = 100_000
    with pytest.raises(errors.FuelExhausted):
        Sandbox(COUNTER, policy).call("spin")


def test_an_output_file_is_checked_for_every_sandbox(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("")
    policy = make_policy("wasmtime", stdio__stdout=str(out))
    Sandbox(COUNTER, policy).call("inc")
    Sandbox(COUNTER, policy).call("inc")
    assert plan_of(policy) is None
    out.unlink()
    out.mkdir()  # an output that is now a folder: refused before any work
    with pytest.raises(errors.WasmsbxError) as caught:
        Sandbox(COUNTER, policy)
    assert caught.value.exit_code == 105


def test_a_policy_with_grants_takes_every_step(tmp_path):
    (tmp_path / "data").mkdir()
    policy = make_policy("wasmtime", filesystem__read_only=[f"{tmp_path / 'data'}::/data"])
    Sandbox(COUNTER, policy).call("inc")
    Sandbox(COUNTER, policy).call("inc")
    assert plan_of(policy) is None


def test_a_subclass_that_overrides_a_step_has_it_run_every_time():
    seen = []

    class Counted(Sandbox):
        def _interface(self):
            seen.append(self)
            return super()._interface()

    policy = make_policy("wasmtime")
    boxes = [Counted(COUNTER, policy) for _ in range(3)]
    assert seen == boxes
    assert boxes[2].call("inc") == 1
    assert plan_of(policy) is None  # (none made by the subclass)

    class Declared(Sandbox):
        _plannable = True  # a subclass that adds no step may say so

    Declared(COUNTER, policy)
    Declared(COUNTER, policy)
    assert plan_of(policy) is not None


def test_equal_bytes_in_another_object_take_every_step():
    policy = make_policy("wasmtime")
    Sandbox(COUNTER, policy)
    copy = bytes(bytearray(COUNTER))
    assert copy == COUNTER and copy is not COUNTER
    box = Sandbox(copy, policy)
    assert box.call("inc") == 1
    assert plan_of(policy, copy) is not None and plan_of(policy, copy).data is copy


def test_other_arguments_take_every_step():
    policy = make_policy("wasmtime")
    Sandbox(COUNTER, policy)
    Sandbox(COUNTER, policy)
    called = []

    def first_step(self, *args, **kwargs):
        called.append(args)
        return original(self, *args, **kwargs)

    original = core.Sandbox._choose
    try:
        core.Sandbox._choose = first_step
        Sandbox(COUNTER, policy)  # from the plan
        assert called == []
        Sandbox(COUNTER, policy, function="inc", args=[])
        Sandbox(COUNTER, policy, name="tenant.wasm")
        Sandbox(COUNTER, policy, imports={"env": {}})
        assert len(called) == 3
    finally:
        core.Sandbox._choose = original


def test_a_cached_module_the_process_dropped_is_loaded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(tmp_path / "cache"))
    policy = cached_policy(runtime__backend="wasmtime")
    first = Sandbox(COUNTER, policy)
    assert first.cache_state in ("miss", "hit")
    assert Sandbox(COUNTER, policy).cache_state == "memory"
    assert plan_of(policy) is not None
    third = Sandbox(COUNTER, policy)
    assert third.cache_state == "memory" and third.module is first.module
    shared.forget_loaded()  # (as if evicted from the table of loaded modules)
    again = Sandbox(COUNTER, policy)
    assert again.cache_state == "hit"
    assert again.call("inc") == 1


def test_the_plans_held_are_bounded():
    modules = [
        b'(module (func (export "f") (result i32) i32.const %d))' % i
        for i in range(shared.PLANNED_MODULES + 4)
    ]
    for module in modules:
        Sandbox(module, make_policy("wasmtime"))
    assert len(shared._PLANS) == shared.PLANNED_MODULES
    assert shared.plans(modules[0]) == () and shared.plans(modules[-1]) != ()
    stacks = [f"{256 + 64 * i}KiB" for i in range(shared.PLANS_PER_MODULE + 2)]
    for stack in stacks:  # (another engine each: another plan)
        Sandbox(COUNTER, make_policy("wasmtime", limits__stack=stack))
    assert len(shared.plans(COUNTER)) == shared.PLANS_PER_MODULE
    box = Sandbox(COUNTER, make_policy("wasmtime", limits__stack=stacks[-1]))
    assert box.engine is shared.plans(COUNTER)[0].engine
    assert box.call("busy", 10) == 10


def test_the_plans_hold_no_more_module_bytes_than_the_shared_tables(monkeypatch):
    """Each plan holds its compiled module: plans are counted against the shared tables'
    byte budget (red team round 89: 128 plans of 12 MiB modules held 1.8 GiB)."""
    Sandbox(COUNTER, make_policy("wasmtime"))
    size = shared.plans(COUNTER)[0].prepared.size
    monkeypatch.setattr(shared, "MAX_BYTES", size * 3)
    for stack in ("256KiB", "320KiB", "384KiB", "448KiB", "512KiB"):
        Sandbox(COUNTER, make_policy("wasmtime", limits__stack=stack))
    assert len(shared.plans(COUNTER)) == 3
    other = b'(module (func (export "f") (result i32) i32.const 9))'
    Sandbox(other, make_policy("wasmtime"))
    held = sum(p.prepared.size for group in shared._PLANS.values() for p in group)
    assert held <= size * 3
    monkeypatch.setattr(shared, "MAX_BYTES", size - 1)
    shared.clear()
    Sandbox(COUNTER, make_policy("wasmtime"))
    assert shared.plans(COUNTER) == ()  # (larger than the budget: not planned)


def test_a_policy_with_plans_still_pickles_and_copies():
    """Plans are the process's, not the policy's: a parallel batch pickles its policy
    (red team round 88: a plan on the policy held the engine, and jobs=2 raised
    "ctypes objects containing pointers cannot be pickled")."""
    import copy
    import pickle

    policy = make_policy("wasmtime")
    box = Sandbox(COUNTER, policy)
    Sandbox(COUNTER, policy)
    assert plan_of(policy) is not None
    copy.deepcopy(policy)
    pickle.dumps(policy)
    results = list(box.batch("inc", [[]] * 4, jobs=2))
    assert len(results) == 4
    assert all(r.values and r.values[0] >= 1 for r in results)  # (state: per worker)


def test_values_changed_while_the_first_sandbox_is_made_make_no_plan(monkeypatch):
    """Another thread turns fuel on while the first sandbox compiles: its engine has no
    fuel metering, so no plan may pair it with the new values (red team round 88)."""
    policy = make_policy("wasmtime", limits__timeout="20s")
    compile_now = core.Sandbox._compile

    def compile_while_changed(self, *args, **kwargs):
        policy.values["limits.fuel"] = 100_000
        return compile_now(self, *args, **kwargs)

    monkeypatch.setattr(core.Sandbox, "_compile", compile_while_changed)
    Sandbox(COUNTER, policy)
    monkeypatch.setattr(core.Sandbox, "_compile", compile_now)
    assert plan_of(policy) is None
    with pytest.raises(errors.FuelExhausted):
        Sandbox(COUNTER, policy).call("spin")
    with pytest.raises(errors.FuelExhausted):
        Sandbox(COUNTER, policy).call("spin")  # (from the plan made by the one before)
    assert plan_of(policy) is not None


def test_a_sandbox_from_a_plan_is_made_as_the_whole_way_makes_it():
    """Every attribute as the whole way sets it (red team round 88: use_cache, which a
    cluster's workers follow, and the compile timing)."""
    policy = make_policy("wasmtime", runtime__cache=False)
    Sandbox(COUNTER, policy)
    planned_box = Sandbox(COUNTER, policy)
    assert plan_of(policy) is not None
    whole = Sandbox(COUNTER, policy, name="<bytes>")  # (any argument: the whole way)
    assert planned_box.use_cache is False and whole.use_cache is False
    assert set(planned_box.timings) == set(whole.timings) - {"instantiate"}
    names = ("backend_name", "compiler", "engine", "module", "cache_state", "export_list")
    for name in names:
        assert getattr(planned_box, name) == getattr(whole, name), name


def test_default_policies_share_no_lists_or_tables():
    """policy.values may be changed in place: a tenant's env.set or grants must not
    reach another tenant's policy (red team round 88: defaults() copied one level).
    Lists are tuples (shared, since nothing can change them); the table is copied."""
    one, two = policy_mod.defaults(), policy_mod.defaults()
    one.values["env.set"]["TOKEN"] = "tenant one"
    with pytest.raises(AttributeError):
        one.values["filesystem.read_write"].append("x")
    policy_mod.add_grant(one, str(Path.cwd()), writable=True)
    policy_mod.add_env(one, "LANG")
    assert "TOKEN" not in two.values["env.set"]
    assert two.values["filesystem.read_write"] == () and two.values["env.inherit"] == ()
    assert "TOKEN" not in policy_mod.defaults().values["env.set"]
    assert policy_mod.defaults().values["filesystem.read_write"] == ()
    for key, value in one.values.items():
        assert type(value) is not list, key
        if isinstance(value, dict):
            assert value is not two.values[key], key


def _binary(value: int) -> bytes:
    import wasmtime

    return bytes(wasmtime.wat2wasm(f'(module (func (export "f") (result i32) i32.const {value}))'))


def test_a_module_file_is_followed_by_its_content(tmp_path, monkeypatch, backend):
    """The plan of a path holds the content it was made of: the file is read by every
    sandbox, and a changed file is the new module at once."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.wasm").write_bytes(_binary(1))
    policy = make_policy(backend)
    assert [Sandbox("m.wasm", policy).call("f") for _ in range(3)] == [1, 1, 1]
    if backend.startswith("wasmtime"):
        assert shared.plans("m.wasm") and shared.plans("m.wasm")[0].data == _binary(1)
    (tmp_path / "m.wasm").write_bytes(_binary(2))
    assert [Sandbox("m.wasm", policy).call("f") for _ in range(3)] == [2, 2, 2]
    (tmp_path / "other.wasm").write_bytes(_binary(3))
    (tmp_path / "m.wasm").unlink()
    (tmp_path / "m.wasm").symlink_to("other.wasm")
    assert Sandbox("m.wasm", policy).call("f") == 3
    box = Sandbox("m.wasm", policy)
    assert box.call("f") == 3 and box.path.name == "m.wasm"
    (tmp_path / "m.wasm").unlink()
    with pytest.raises(errors.WasmsbxError) as caught:
        Sandbox("m.wasm", policy)
    assert caught.value.exit_code == 105


def test_a_relative_path_in_another_folder_is_another_file(tmp_path, monkeypatch):
    for name, value in (("a", 1), ("b", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "m.wasm").write_bytes(_binary(value))
    policy = make_policy("wasmtime")
    monkeypatch.chdir(tmp_path / "a")
    assert [Sandbox("m.wasm", policy).call("f") for _ in range(2)] == [1, 1]
    monkeypatch.chdir(tmp_path / "b")
    assert [Sandbox("m.wasm", policy).call("f") for _ in range(2)] == [2, 2]
    monkeypatch.chdir(tmp_path / "a")
    assert Sandbox("m.wasm", policy).call("f") == 1


def test_a_file_the_cache_would_hold_takes_every_step(tmp_path, monkeypatch):
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "m.wasm").write_bytes(_binary(1))
    policy = cached_policy(runtime__backend="wasmtime")  # (cache_min_size 0)
    boxes = [Sandbox(str(tmp_path / "m.wasm"), policy) for _ in range(3)]
    assert [box.call("f") for box in boxes] == [1, 1, 1]
    assert shared.plans(str(tmp_path / "m.wasm")) == ()


def test_tenants_with_limits_of_their_own_follow_one_plan_and_keep_them():
    """A policy per tenant, every limit an amount of its own (memory under the default
    layout, fuel, timeout, output, the environment): one plan, each sandbox under its own
    policy's amounts."""
    boxes = []
    for i in range(1, 7):
        tenant = make_policy(
            "wasmtime",
            limits__memory=f"{i}MiB",
            limits__fuel=10_000 if i % 2 else 10**8,
            limits__timeout=f"{10 + i}s",
            limits__output=f"{i}MiB",
            env__set={f"T{j}": "x" for j in range(i)},
        )
        boxes.append((i, Sandbox(COUNTER, tenant), Sandbox(ENV_COUNT, tenant)))
    assert len(shared.plans(COUNTER)) == 1 and len(shared.plans(ENV_COUNT)) == 1
    for i, counter, env in boxes:
        assert counter.call("grow") == 16 * i
        assert env.call("count") == i
        if i % 2:
            with pytest.raises(errors.FuelExhausted):
                counter.call("busy", 100_000)
        else:
            assert counter.call("busy", 100_000) == 100_000
        assert counter.policy.values["limits.timeout"] == 10 + i


def test_amounts_the_engine_depends_on_take_a_plan_of_their_own():
    """The dense layout sizes each memory's reservation from limits.memory (compiled
    into the engine's configuration), and limits.stack is the engine's: other amounts
    are another plan."""
    dense = [
        make_policy("wasmtime", runtime__memory_layout="dense", limits__memory=memory)
        for memory in ("1MiB", "2MiB", "1MiB")
    ]
    boxes = [Sandbox(COUNTER, policy) for policy in dense]
    assert boxes[0].engine is not boxes[1].engine and boxes[2].engine is boxes[0].engine
    assert [box.call("grow") for box in boxes] == [16, 32, 16]
    stacks = [make_policy("wasmtime", limits__stack=stack) for stack in ("256KiB", "1MiB")]
    first, second = (Sandbox(COUNTER, policy) for policy in stacks)
    assert first.engine is not second.engine
    assert first.engine.options.stack != second.engine.options.stack
    fueled = Sandbox(COUNTER, make_policy("wasmtime", limits__fuel=10**6))
    assert fueled.engine is not first.engine  # (fuel set or not: metering compiled in)


@pytest.mark.parametrize("layout", ["fast", "dense"])
def test_the_steps_read_no_value_a_plan_does_not_compare(layout):
    """What _same_steps lets differ must be what __init__ does not read once the module
    is held (run-only values), or reads only as set or not; the amounts of those must
    leave the engine the same."""

    class Reads(dict):
        def __init__(self, values):
            super().__init__(values)
            self.read = set()

        def __getitem__(self, key):
            self.read.add(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            self.read.add(key)
            return super().get(key, default)

    policy = make_policy("wasmtime", runtime__memory_layout=layout, limits__fuel=1000)
    Sandbox(COUNTER, policy, name="x.wasm")  # (the module held from now on)
    policy.values = Reads(policy.values)
    Sandbox(COUNTER, policy, name="x.wasm")  # (any argument: every step)
    assert not policy.values.read & core._RUN_ONLY
    engines = set()
    for fuel, table, instances, memory in ((1000, 10, 1, "1MiB"), (10**9, 10**6, 9, "8MiB")):
        other = make_policy(
            "wasmtime",
            runtime__memory_layout=layout,
            limits__fuel=fuel,
            limits__table_elements=table,
            limits__instances=instances,
        )
        if layout == "fast":
            policy_mod.override(other, "limits.memory", memory)
        engines.add(id(Sandbox(COUNTER, other, name="x.wasm").engine))
    assert len(engines) == 1


def test_a_change_undone_while_a_sandbox_is_made_makes_no_plan(monkeypatch):
    """Another thread sets limits.stack while the backend is chosen and unsets it before
    the module is compiled: the engine has the stack limit, the values at the end are
    the ones at the start. No plan may pair them (red team round 89: every tenant with
    those values then ran without the engine the values give)."""
    policy = make_policy("wasmtime")
    choose, compile_ = core.Sandbox._choose, core.Sandbox._compile

    def choose_while_set(self, *args):
        policy.values["limits.stack"] = 65536
        return choose(self, *args)

    def compile_after_unset(self, *args):
        policy.values["limits.stack"] = None
        return compile_(self, *args)

    monkeypatch.setattr(core.Sandbox, "_choose", choose_while_set)
    monkeypatch.setattr(core.Sandbox, "_compile", compile_after_unset)
    odd = Sandbox(COUNTER, policy)
    assert odd.engine.options.stack == 65536
    monkeypatch.setattr(core.Sandbox, "_choose", choose)
    monkeypatch.setattr(core.Sandbox, "_compile", compile_)
    assert plan_of(policy) is None
    tenant = make_policy("wasmtime")  # (another tenant, the same values)
    box = Sandbox(COUNTER, tenant)
    assert box.engine.options.stack is None
    assert plan_of(tenant) is not None and plan_of(tenant).engine is box.engine
