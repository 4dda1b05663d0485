"""``runtime.memory_layout`` and ``runtime.memory_init`` (issue #16): what a linear
memory reserves and how many mappings it takes, and that they change only that (and,
for ``copy``, the documented fuel of the data copy): limits, traps and trust checks
stay."""

from __future__ import annotations

import json
import resource
import shutil
import sys

import pytest

from wasmsbx import Sandbox, errors
from wasmsbx import policy as policy_mod
from wasmsbx.backends import reserve
from wasmsbx.backends.base import EngineOptions
from wasmsbx.native import cache
from wasmsbx.runner import shared

from .conftest import run_cli

GUEST = b"""(module
  (memory (export "memory") 1)
  (data (i32.const 0) "tenant")
  (func (export "grow") (result i32)
    (block $done
      (loop $next
        (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $next)))
    (memory.size))
  (func (export "hog")
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable)
  (func (export "load") (param i32) (result i32) (i32.load (local.get 0)))
  (func (export "load_far") (param i32) (result i32) (i32.load offset=65536 (local.get 0)))
  (func (export "size") (result i32) (memory.size))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))"""

GIB = 1 << 30
MIB = 1 << 20


def make_policy(layout: str = "dense", init: str = "cow", **keys) -> policy_mod.Policy:
    policy = policy_mod.defaults()
    policy_mod.override(policy, "runtime.memory_layout", layout)
    policy_mod.override(policy, "runtime.memory_init", init)
    for name, value in keys.items():
        policy_mod.override(policy, name.replace("__", "."), value)
    return policy


def vmsize() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def mappings() -> int:
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


# ---------------------------------------------------------------------------- the layout


def test_the_reservation_is_the_limit_rounded_up_to_a_power_of_two():
    assert reserve.reservation("fast", 256 * MIB) is None
    assert reserve.reservation("dense", 256 * MIB) == 256 * MIB
    assert reserve.reservation("dense", 100 * MIB) == 128 * MIB
    assert reserve.reservation("dense", 1) == 64 << 10  # at least one wasm page
    assert reserve.reservation("dense", 64 * GIB) == 4 * GIB  # a 32-bit memory's most
    assert reserve.reservation("dense", policy_mod.MAX_MEMORY) == 4 * GIB


# Sandboxes per count: the process's own mappings move by about ten meanwhile (Python's
# and malloc's arenas; with 20 sandboxes, +11 made 3.55 per sandbox in a CI run on 3.9)
COUNT = 100


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status and maps")
@pytest.mark.parametrize(
    ("layout", "init", "least", "most", "maps"),
    [
        ("dense", "cow", 1 * MIB, 1.5 * MIB, 3),
        ("dense", "copy", 1 * MIB, 1.5 * MIB, 2),
        ("fast", "cow", 4 * GIB, 4.2 * GIB, 3),
        ("fast", "copy", 4 * GIB, 4.2 * GIB, 2),
    ],
)
def test_each_live_memory_reserves_and_maps_what_the_policy_says(layout, init, least, most, maps):
    """The layout is in force: the address space a live sandbox with a memory adds is
    about the policy's limit (1 MiB) under dense, and 4 GiB + guards under fast; the
    mappings it adds (what vm.max_map_count bounds) are 3 with the copy-on-write image
    and 2 without."""
    import gc

    policy = make_policy(layout, init, limits__memory="1MiB")
    boxes = [Sandbox(GUEST, policy, backend="wasmtime")]
    assert boxes[0].call("size") == 1
    # Earlier tests' garbage (stores, modules, their mappings) is freed now, not by a
    # collection inside the loop (one took 14 mappings away in a CI run)
    gc.collect()
    gc.disable()
    try:
        before, maps_before = vmsize(), mappings()
        for _ in range(COUNT):
            box = Sandbox(GUEST, policy, backend="wasmtime")
            assert box.call("load", 0) == int.from_bytes(b"tena", "little")
            boxes.append(box)
        after, maps_after = vmsize(), mappings()
    finally:
        gc.enable()
    per_sandbox = (after - before) / COUNT
    assert least <= per_sandbox <= most, per_sandbox / MIB
    assert round((maps_after - maps_before) / COUNT) == maps


def test_the_engine_key_follows_the_reservation():
    small = Sandbox(GUEST, make_policy(limits__memory="600KiB"), backend="wasmtime")
    same = Sandbox(GUEST, make_policy(limits__memory="1MiB"), backend="wasmtime")
    other = Sandbox(GUEST, make_policy(limits__memory="2MiB"), backend="wasmtime")
    fast = Sandbox(GUEST, make_policy("fast", limits__memory="1MiB"), backend="wasmtime")
    fast_too = Sandbox(GUEST, make_policy("fast", limits__memory="2MiB"), backend="wasmtime")
    copy = Sandbox(GUEST, make_policy(init="copy", limits__memory="1MiB"), backend="wasmtime")
    assert small.engine is same.engine and small.module is same.module  # both 1 MiB
    assert copy.engine is not same.engine and copy.module is not same.module
    assert copy.engine.fingerprint()["memory_init"] == "copy"
    assert "memory_init" not in same.engine.fingerprint()
    assert other.engine is not same.engine and other.module is not same.module
    assert fast.engine is not same.engine and fast.engine is fast_too.engine
    assert same.engine.options.reservation == MIB and fast.engine.options.reservation is None
    assert same.engine.fingerprint()["memory_layout"] == f"dense:{MIB}"
    assert "memory_layout" not in fast.engine.fingerprint()  # old entries stay valid


# ---------------------------------------------------------------------------- limits hold


@pytest.mark.parametrize("limit", ["1MiB", "100KiB", "3MiB"])
def test_the_limit_still_holds_below_the_reservation(limit):
    """A reservation rounded up (100 KiB -> 128 KiB, 3 MiB -> 4 MiB) is room the guest
    never gets: memory.grow fails at the policy's limit."""
    box = Sandbox(GUEST, make_policy(limits__memory=limit), backend="wasmtime")
    want = {"1MiB": 16, "100KiB": 1, "3MiB": 48}[limit]
    assert box.call("grow") == want
    with pytest.raises(errors.MemoryLimitExceeded) as info:
        Sandbox(GUEST, make_policy(limits__memory=limit), backend="wasmtime").call("hog")
    assert info.value.exit_code == 110


def test_a_limit_raised_after_the_sandbox_was_made_stops_at_its_reservation():
    """The engine's reservation is sized from limits.memory when the sandbox is made; a
    limit raised after that (a change of the policy reaches its sandboxes) lets no
    memory outgrow it, which wasmtime would do by moving the memory from under a view
    the host holds (red team round 94: SIGSEGV)."""
    policy = make_policy(limits__memory="1MiB")
    box = Sandbox(GUEST, policy, backend="wasmtime")
    assert box.engine.options.reservation == MIB
    policy_mod.override(policy, "limits.memory", "64MiB")
    memory = box.memory()
    with memory.view() as view:
        first = bytes(view[:6])
        assert box.call("grow") == 16  # the reservation's 1 MiB, not 64
        assert bytes(view[:6]) == first == b"tenant"
    with pytest.raises(errors.MemoryLimitExceeded):
        box.call("hog")
    again = Sandbox(GUEST, policy, backend="wasmtime")  # made under 64 MiB: its own room
    assert again.engine.options.reservation == 64 * MIB
    assert again.call("grow") == 1024


def test_a_hog_ends_with_the_memory_limit_exit_code(tmp_path):
    guest = tmp_path / "guest.wat"
    guest.write_bytes(GUEST)
    policy = tmp_path / "dense.toml"
    policy.write_text('[runtime]\nmemory_layout = "dense"\n[limits]\nmemory = "1MiB"\n')
    result = run_cli("run", guest, "hog", "--policy", policy)
    assert result.code == 110, result
    assert result.stderr.startswith("error: memory limit 1 MiB reached"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_module_starting_above_the_limit_is_refused_before_any_reservation():
    big = b'(module (memory 40) (func (export "f")))'  # 2.5 MiB at start
    with pytest.raises(errors.MemoryLimitExceeded):
        Sandbox(big, make_policy(limits__memory="1MiB"), backend="wasmtime").call("f")


def test_accesses_outside_the_memory_trap_inside_the_reservation():
    """Dense code checks bounds itself: a load past the memory's size but inside the
    reserved room (or past it, or by a large offset) is a trap, never a read."""
    box = Sandbox(GUEST, make_policy(limits__memory="256MiB"), backend="wasmtime")
    assert box.call("load", 0) == int.from_bytes(b"tena", "little")
    assert box.call("load", 65532) == 0
    for address in (65533, 65536, 200 * MIB, 256 * MIB + 10, 2**32 - 4):
        with pytest.raises(errors.TrapError) as info:
            box.call("load", address & 0xFFFFFFFF)
        assert "out of bounds" in str(info.value), info.value
        assert not isinstance(info.value, errors.LimitExceeded)  # far below the cap
    with pytest.raises(errors.TrapError):
        box.call("load_far", 0)  # offset 65536 on a one-page memory


def test_one_page_limits_reserve_one_page_and_still_grow_nowhere():
    box = Sandbox(GUEST, make_policy(limits__memory="64KiB"), backend="wasmtime")
    assert box.engine.options.reservation == 64 << 10
    assert box.call("grow") == 1
    with pytest.raises(errors.TrapError):
        box.call("load", 65536)


# ---------------------------------------------------------------------------- cache and artifacts


def test_cache_entries_of_one_layout_are_never_loaded_under_the_other():
    def run(layout: str) -> Sandbox:
        shared.forget_loaded()  # each run stands for a process of its own
        box = Sandbox(GUEST, make_policy(layout, runtime__cache_min_size=0), backend="wasmtime")
        assert box.call("add", 1, 2) == 3
        return box

    assert run("fast").cache_state == "miss"
    assert run("dense").cache_state == "miss"  # another key: the fast entry is not it
    assert run("fast").cache_state == "hit" and run("dense").cache_state == "hit"
    store = cache.open_store(make_policy(), create=False)
    try:
        assert len(store.keys("m:")) == 2
    finally:
        store.close()


def test_a_fast_entry_placed_at_the_dense_key_is_refused_and_recompiled():
    """An entry of the user's own cache that holds another layout's code under this
    layout's key (authentic: tagged with the user's key) fails the fingerprint check;
    had it not, wasmtime's own check would refuse it: recompiled, never run."""
    policies = {
        layout: make_policy(layout, runtime__cache_min_size=0) for layout in ("fast", "dense")
    }
    keys = {}
    for layout, policy in policies.items():
        shared.forget_loaded()
        box = Sandbox(GUEST, policy, backend="wasmtime")
        keys[layout] = cache.entry_key(_digest(box), _fingerprint(box))
    store = cache.open_store(policies["fast"], create=False)
    try:
        fast_path, dense_path = (store.code_path(keys[k]) for k in ("fast", "dense"))
        assert fast_path.exists() and dense_path.exists()
        shutil.copyfile(fast_path, dense_path)
    finally:
        store.close()
    shared.forget_loaded()
    box = Sandbox(GUEST, policies["dense"], backend="wasmtime")
    assert box.cache_state == "miss"
    assert "built for another engine" in box.warnings[0] and "memory_layout" in box.warnings[0]
    assert box.call("load", 0) == int.from_bytes(b"tena", "little")
    with pytest.raises(errors.TrapError):
        box.call("load", 65536)  # dense code, with its bounds checks


def _digest(box: Sandbox) -> str:
    from wasmsbx.native import artifact as aot

    return aot.digest(box.wasm)


def _fingerprint(box: Sandbox) -> dict:
    from wasmsbx.native import artifact as aot

    return aot.normalise(box.engine.fingerprint())


def test_wasmtime_itself_refuses_code_of_another_layout():
    """Defence in depth under the fingerprint: native code of one layout, loaded (as
    authenticated code) into an engine of the other, is a module error, not a crash."""
    from wasmsbx.backends.wasmtime.backend import WasmtimeEngine
    from wasmsbx.native import trust

    fast = WasmtimeEngine(EngineOptions())
    dense = WasmtimeEngine(EngineOptions(reservation=MIB))
    copy = WasmtimeEngine(EngineOptions(copy_data=True))
    for source, target, why in (
        (fast, dense, "memory reservation"),
        (dense, fast, "memory reservation"),
        (fast, copy, "CoW"),
        (copy, fast, "CoW"),
    ):
        native = source.serialize(source.compile(GUEST_WASM()))
        with pytest.raises(errors.ModuleError) as info:
            target.deserialize(trust.Authenticated(native, "this test"))
        assert why in str(info.value)


def GUEST_WASM() -> bytes:  # noqa: N802 - a constant, computed once wasmtime is loaded
    import wasmtime

    return wasmtime.wat2wasm(GUEST.decode())


def test_an_artifact_of_one_layout_is_refused_under_the_other(tmp_path):
    guest = tmp_path / "guest.wat"
    guest.write_bytes(GUEST)
    dense = tmp_path / "dense.toml"
    dense.write_text('[runtime]\nmemory_layout = "dense"\n')
    fast_art, dense_art = tmp_path / "fast.cwasm", tmp_path / "dense.cwasm"
    assert run_cli("compile", guest, "-o", fast_art).code == 0
    assert run_cli("compile", guest, "-o", dense_art, "--policy", dense).code == 0
    refused = run_cli("run", fast_art, "add", "1", "2", "--policy", dense)
    assert refused.code == 102, refused
    assert 'memory_layout: built for (not set), this is "dense:268435456"' in refused.stderr
    refused = run_cli("run", dense_art, "add", "1", "2")
    assert refused.code == 102, refused
    assert 'memory_layout: built for "dense:268435456", this is (not set)' in refused.stderr
    # Given the module too, the artifact is passed over (with a warning), never loaded.
    fallback = run_cli("run", "--artifact", dense_art, guest, "add", "1", "2", "--stats")
    assert (fallback.code, fallback.stdout.strip()) == (0, "3"), fallback
    assert "memory_layout: built for" in fallback.stderr and "using guest.wat" in fallback.stderr
    assert "precompiled artifact loaded" not in fallback.stderr
    ok = run_cli("run", "--artifact", dense_art, guest, "add", "1", "2", "--policy", dense)
    assert (ok.code, ok.stdout.strip()) == (0, "3"), ok


# ---------------------------------------------------------------------------- hostile policies


@pytest.mark.parametrize(
    "value",
    ['"DENSE"', '""', "1", "0", "1e400", "-1", str(2**70), "1.5", "[]", "{}", "true", '"4GiB"'],
)
def test_a_bad_memory_layout_is_a_one_line_policy_error(tmp_path, value):
    guest = tmp_path / "guest.wat"
    guest.write_bytes(GUEST)
    policy = tmp_path / "sandbox.toml"
    policy.write_text(f"[runtime]\nmemory_layout = {value}\n")
    result = run_cli("run", guest, "add", "1", "2", "--policy", policy)
    assert result.code == 101, result
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: {policy}: runtime.memory_layout: "), lines
    assert "expected one of fast, dense" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("hint: "), lines


@pytest.mark.parametrize("value", ['"COW"', '"mapped"', "0", "true", "[]"])
def test_a_bad_memory_init_is_a_one_line_policy_error(tmp_path, value):
    guest = tmp_path / "guest.wat"
    guest.write_bytes(GUEST)
    policy = tmp_path / "sandbox.toml"
    policy.write_text(f"[runtime]\nmemory_init = {value}\n")
    result = run_cli("run", guest, "add", "1", "2", "--policy", policy)
    assert result.code == 101, result
    lines = result.stderr.splitlines()
    assert "runtime.memory_init: expected one of cow, copy" in lines[0], lines
    assert len(lines) == 2 and lines[1].startswith("hint: "), lines


def test_a_near_miss_is_suggested():
    with pytest.raises(errors.PolicyError) as info:
        policy_mod.from_dict({"runtime": {"memory_layuot": "dense"}}, "p.toml")
    assert "memory_layout" in f"{info.value} {info.value.hint}"


@pytest.mark.parametrize(
    ("memory", "code"),
    [("0", 101), ('"1.5"', 101), ('"1.5B"', 101), ('"129TiB"', 101), (str(2**70), 101)],
)
def test_hostile_limits_under_dense_are_one_line_errors(tmp_path, memory, code):
    guest = tmp_path / "guest.wat"
    guest.write_bytes(GUEST)
    policy = tmp_path / "sandbox.toml"
    policy.write_text(f'[runtime]\nmemory_layout = "dense"\n[limits]\nmemory = {memory}\n')
    result = run_cli("run", guest, "add", "1", "2", "--policy", policy)
    assert result.code == code, result
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) <= 2, result.stderr


def test_the_largest_limit_under_dense_reserves_4_gib_and_runs():
    box = Sandbox(GUEST, make_policy(limits__memory="128TiB"), backend="wasmtime")
    assert box.engine.options.reservation == 4 * GIB
    assert box.call("add", 40, 2) == 42


# ---------------------------------------------------------------------------- backends


def test_wasmer_declares_no_dense_memory_and_refuses_an_engine_for_it():
    from wasmsbx import backends

    assert backends.get("wasmtime").capabilities().has("dense-memory")
    wasmer = backends.get("wasmer")
    assert not wasmer.capabilities().has("dense-memory")
    assert any("dense" in note for note in wasmer.capabilities().notes)
    with pytest.raises(errors.BackendUnavailable) as info:
        wasmer.engine(EngineOptions(reservation=MIB))
    assert "memory_layout" in str(info.value)


def test_selection_requires_dense_memory_and_explains_the_layout():
    from wasmsbx.backends import select

    chosen = select.select(make_policy(limits__memory="1MiB"))
    assert ("dense-memory", 'runtime.memory_layout = "dense"') in chosen.requirements
    assert chosen.backend == "wasmtime"
    for cand in chosen.candidates:
        if cand.backend == "wasmer" and not any("unavailable" in r for r in cand.excluded):
            assert any("lacks dense-memory" in r for r in cand.excluded), cand.excluded
    layout = chosen.to_dict()["memory_layout"]
    assert layout["layout"] == "dense" and layout["reservation"] == MIB
    assert "1 MiB" in layout["about"] and "bounds checks" in layout["about"]
    fast = select.select(make_policy("fast"))
    assert fast.memory_layout["reservation"] is None and "4 GiB" in fast.memory_layout["about"]


def test_wasmer_named_under_dense_is_refused_with_the_reason():
    from wasmsbx.backends import select

    with pytest.raises(errors.BackendUnavailable) as info:
        select.select(make_policy(), backend="wasmer")
    assert "wasmer" in str(info.value)


def test_run_explain_and_stats_say_which_layout_is_in_force(tmp_path):
    guest = tmp_path / "guest.wat"
    guest.write_bytes(GUEST)
    policy = tmp_path / "dense.toml"
    policy.write_text('[runtime]\nmemory_layout = "dense"\n[limits]\nmemory = "1MiB"\n')
    result = run_cli("run", guest, "grow", "--policy", policy, "--explain", "--stats")
    assert result.code == 0 and result.stdout.strip() == "16", result
    assert "memory layout: dense: 1 MiB + 128 KiB of guards" in result.stderr
    assert "memory layout     dense: 1 MiB" in result.stderr
    assert "data mapped copy-on-write (3 mappings per memory)" in result.stderr
    data = run_cli("run", guest, "size", "--json").json()
    layout = data["stats"]["memory_layout"]
    assert (layout["layout"], layout["reservation"], layout["init"]) == ("fast", None, "cow")


def test_audit_reports_the_reservation_per_memory(tmp_path):
    guest = tmp_path / "guest.wat"
    guest.write_bytes(GUEST)
    policy = tmp_path / "dense.toml"
    policy.write_text('[runtime]\nmemory_layout = "dense"\nmemory_init = "copy"\n')
    text = run_cli("audit", guest, "--policy", policy)
    assert "reserves 256 MiB + 128 KiB of address space per instance (dense)" in text.stdout
    assert "copied into each instance (memory_init = copy" in text.stdout
    data = json.loads(run_cli("audit", guest, "--json").stdout)
    want = {"layout": "fast", "reservation": None, "init": "cow"}
    assert data["policy"]["memory_layout"] == want
    assert "reserves 4 GiB + 64 MiB" in run_cli("audit", guest).stdout


# ---------------------------------------------------------------------------- address space


def _limit_address_space() -> None:
    # 2 GiB: enough for Python, the runtime and a 256 MiB reservation, not for 4 GiB.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS semantics are Linux's")
def test_under_an_address_space_cap_dense_runs_where_fast_cannot(tmp_path):
    import subprocess

    guest = tmp_path / "guest.wat"
    guest.write_bytes(GUEST)
    dense = tmp_path / "dense.toml"
    dense.write_text('[runtime]\nmemory_layout = "dense"\n')

    def run(*extra) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "wasmsbx", "run", str(guest), "add", "1", "2", *extra],
            capture_output=True,
            preexec_fn=_limit_address_space,
            timeout=120,
        )

    fast = run()
    assert fast.returncode == 118, fast.stderr
    assert 'runtime.memory_layout = "dense"' in fast.stderr.decode()  # the hint says how
    ok = run("--policy", str(dense))
    assert (ok.returncode, ok.stdout.strip()) == (0, b"3"), ok.stderr


# ---------------------------------------------------------------------------- memory_init


DATA_64K = (
    b'(module (memory 2) (data (i32.const 0) "'
    + b"\\01" * 65536
    + b'") (func (export "first") (result i32) (i32.load8_u (i32.const 65535))))'
)


def test_copying_data_spends_fuel_as_wasmtime_charges_it():
    """Under "copy" wasmtime initialises memory with the copy charged as fuel (1 unit
    per byte): 64 KiB of data does not fit a 1,000 fuel budget, which the same module
    under "cow" (mapped, nothing copied) does. Documented, and never a weaker limit."""
    assert Sandbox(DATA_64K, make_policy("fast", "cow", limits__fuel=1000)).call("first") == 1
    box = Sandbox(DATA_64K, make_policy("fast", "copy", limits__fuel=1000), backend="wasmtime")
    with pytest.raises(errors.FuelExhausted) as info:
        box.call("first")
    assert info.value.exit_code == 111
    # It names the copy, not a start function the module does not have, and the way out.
    assert "in instantiation (copying its data in)" in info.value.message
    assert "start function" not in info.value.message
    assert 'memory_init = "cow"' in info.value.hint
    roomy = make_policy("dense", "copy", limits__fuel=70_000)
    assert Sandbox(DATA_64K, roomy, backend="wasmtime").call("first") == 1


def test_out_of_maps_hint_follows_the_init():
    from wasmsbx.backends.reserve import exhausted_hint

    assert 'memory_init = "copy"' in exhausted_hint(MIB, False, "maps")
    assert "vm.max_map_count" in exhausted_hint(MIB, True, "maps")
    assert 'memory_layout = "dense"' in exhausted_hint(None, False, "space")


def test_the_limit_reached_is_the_one_the_process_is_at(monkeypatch):
    """Red team round 83: under "dense" the hint always named vm.max_map_count, also
    when ``ulimit -v`` was the limit (495 sandboxes, ~1,500 of 65,530 mappings)."""
    monkeypatch.setattr(reserve, "_address_space", lambda: 7 << 30)
    monkeypatch.setattr(reserve, "_soft_address_space", lambda: 8 << 30)
    monkeypatch.setattr(reserve, "_mappings", lambda: (1_500, 65_530))
    assert reserve.limit_reached(16 * MIB) is None  # (1 GiB still free)
    assert reserve.limit_reached(2 << 30) == "ulimit"
    assert reserve.limit_reached(None) == "ulimit"
    hint = reserve.exhausted_hint(2 << 30, False)
    assert "ulimit -v" in hint and "lower limits.memory" in hint, hint
    assert "max_map_count" not in hint and "memory_init" not in hint, hint
    assert 'memory_layout = "dense"' in reserve.exhausted_hint(None, False)
    monkeypatch.setattr(reserve, "_mappings", lambda: (65_525, 65_530))
    assert reserve.limit_reached(2 << 30) == "maps"
    assert 'memory_init = "copy"' in reserve.exhausted_hint(2 << 30, False)
    monkeypatch.setattr(reserve, "_soft_address_space", lambda: None)
    monkeypatch.setattr(reserve, "_mappings", lambda: (1_500, 65_530))
    monkeypatch.setattr(reserve, "_address_space", lambda: reserve.USER_SPACE - (1 << 30))
    assert reserve.limit_reached(None) == "space"
    monkeypatch.setattr(reserve, "_address_space", lambda: 1 << 30)
    assert reserve.limit_reached(16 * MIB) is None
    hint = reserve.exhausted_hint(16 * MIB, True)  # (neither: both named, honestly)
    assert "ulimit -v" in hint and "vm.max_map_count" in hint and "2 mappings" in hint


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS semantics are Linux's")
def test_dense_out_of_address_space_names_the_address_space_limit(tmp_path):
    """The command line under a 2 GiB ``ulimit -v`` with a dense 4 GiB reservation: exit
    118, a hint about the address-space limit, not vm.max_map_count (round 83)."""
    import subprocess

    guest = tmp_path / "guest.wat"
    guest.write_bytes(GUEST)
    dense = tmp_path / "dense.toml"
    dense.write_text('[runtime]\nmemory_layout = "dense"\n[limits]\nmemory = "4GiB"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "run", str(guest), "add", "1", "2"]
        + ["--policy", str(dense), "--backend", "wasmtime"],
        capture_output=True,
        preexec_fn=_limit_address_space,
        timeout=120,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 118, err
    assert "address-space limit is reached (ulimit -v, RLIMIT_AS: 2 GiB" in err, err
    assert "max_map_count" not in err and "memory_init" not in err, err
    assert "Traceback" not in err


def test_mcp_workers_keep_a_module_per_layout(tmp_path):
    """An MCP worker reuses a compiled Sandbox for calls whose engine settings match:
    the reservation and the data initialisation are among them."""
    import hashlib

    from wasmsbx.mcp.worker import Worker

    module = tmp_path / "guest.wat"
    module.write_bytes(GUEST)
    digest = hashlib.sha256(GUEST).hexdigest()  # (as the server pins it)
    worker = Worker()
    boxes = {
        (layout, init, memory): worker.sandbox(
            str(module), digest, make_policy(layout, init, limits__memory=memory), "call"
        )
        for layout, init, memory in (
            ("fast", "cow", "1MiB"),
            ("dense", "cow", "1MiB"),
            ("dense", "cow", "2MiB"),
            ("dense", "copy", "1MiB"),
        )
    }
    assert len({id(box.engine) for box in boxes.values()}) == 4
    again = worker.sandbox(
        str(module), digest, make_policy("dense", "cow", limits__memory="700KiB"), "call"
    )
    assert again is boxes["dense", "cow", "1MiB"]  # the same 1 MiB reservation
    for box in boxes.values():
        assert box.call("add", 1, 2) == 3


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS semantics are Linux's")
def test_a_component_out_of_address_space_is_118_as_a_module(tmp_path):
    """Red team round 93: a component that could not reserve its memory (ulimit -v) was
    "cannot instantiate component" (102, a module error) with no hint."""
    import subprocess
    from pathlib import Path

    calc = Path(__file__).resolve().parent.parent / "examples" / "components" / "calc.wasm"
    proc = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "run", str(calc), "add", "1", "2"],
        capture_output=True,
        preexec_fn=_limit_address_space,
        timeout=120,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 118, err
    assert "while instantiating the component" in err, err
    assert "address-space limit is reached" in err and "Traceback" not in err, err


CGROW = """(component
  (core module $m
    (memory (export "memory") 1)
    (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
  (core instance $i (instantiate $m))
  (func (export "grow") (param "n" s32) (result s32) (canon lift (core func $i "grow"))))"""


def test_a_components_memory_stops_at_its_reservation_too(tmp_path):
    """Red team round 95: the cap on a raised limit held for modules, not components."""
    from .test_attack_component_limits import built

    guest = built(CGROW, tmp_path, "cgrow")  # (skips where wasm-tools is not installed)
    policy = make_policy(limits__memory="1MiB")
    box = Sandbox(guest, policy)
    assert box.call("grow", 1) == 1
    policy_mod.override(policy, "limits.memory", "64MiB")
    box.close()  # (the next call makes a new instance, under the raised limit)
    assert box.call("grow", 500) == -1
    assert box.call("grow", 14) == 1  # (16 pages: the 1 MiB reservation)
