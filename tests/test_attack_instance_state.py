"""The runtime's memory for instances' globals and functions is bounded by limits.memory,
and a composed component's fused adapters are counted (red team round 76): a 695 KB
component instantiated a module of 100,000 globals 1,001 times and held 1.6 GB under
--memory 16MiB (wasmtime keeps 16 bytes a global in each instance's context, counted by
no store limit); a component whose core module calls a nested component's export
through `canon lower` was refused as past limits.instances, as wasmtime adds a core
instance for the fused adapter."""

from __future__ import annotations

import pytest

import wasmsbx
from wasmsbx import errors
from wasmsbx.components import binary
from wasmsbx.policy import from_dict

from .conftest import BACKENDS
from .test_attack_component_limits import built

components = pytest.mark.skipif("wasmtime" not in BACKENDS, reason="components run on wasmtime")


def many_instances(globals_: int, instances: int) -> str:
    """A component instantiating a module of ``globals_`` mutable globals
    ``instances`` + 1 times; ``x`` returns 1."""
    module = "".join(f"(global (mut i64) (i64.const {i}))" for i in range(globals_))
    made = " ".join("(core instance (instantiate $m))" for _ in range(instances))
    return (
        f'(component (core module $m {module} (func (export "x") (result i32) i32.const 1))'
        f" {made} (core instance $last (instantiate $m))"
        ' (func (export "x") (result u32) (canon lift (core func $last "x"))))'
    )


# The outer core module calls the nested component's export through `canon lower`:
# what `wac` and `wasm-tools compose` make; wasmtime instantiates a fused adapter.
NESTED_CALL = """(component
  (component $inner
    (core module $m (func (export "go") (result i32) (i32.const 5)))
    (core instance $i (instantiate $m))
    (func $go (export "go") (result u32) (canon lift (core func $i "go"))))
  (instance $in (instantiate $inner))
  (alias export $in "go" (func $g))
  (core func $gl (canon lower (func $g)))
  (core module $m2
    (import "" "g" (func $g (result i32)))
    (func (export "go") (result i32) (call $g)))
  (core instance $i2 (instantiate $m2 (with "" (instance (export "g" (func $gl))))))
  (func (export "go") (result u32) (canon lift (core func $i2 "go"))))"""


@components
def test_many_instances_of_a_module_with_many_globals_is_refused_before_it_starts(tmp_path, cli):
    guest = built(many_instances(10_000, 200), tmp_path, "inst")  # about 32 MB of globals
    result = cli("run", guest, "x", "--memory", "16MiB")
    assert result.code == 110, result.stderr
    assert "201 core instances" in result.stderr and "runtime's memory" in result.stderr
    assert "hint: raise limits.memory" in result.stderr and "Traceback" not in result.stderr
    assert cli("run", guest, "x", "--memory", "64MiB").stdout.strip() == "1"


@components
def test_the_scan_counts_each_instances_globals(tmp_path):
    one = binary.scan(built(many_instances(1000, 0), tmp_path, "one").read_bytes())
    two = binary.scan(built(many_instances(1000, 1), tmp_path, "two").read_bytes())
    many = binary.scan(built(many_instances(1000, 99), tmp_path, "many").read_bytes())
    # (one.host: a module instance, plus the lift's context entry, a possible adapter and
    # the component's types; each instance more adds the module instance's)
    each = two.host - one.host
    assert many.host - one.host == 99 * each
    assert each > 1000 * 16  # 16 bytes a global
    with pytest.raises(errors.MemoryLimitExceeded, match="runtime's memory"):
        wasmsbx.Sandbox(
            built(many_instances(1000, 99), tmp_path, "m2"),
            from_dict({"limits": {"memory": "1MiB"}}),
        ).call("x")


@components
def test_a_component_calling_its_nested_component_runs_under_the_default_policy(tmp_path, cli):
    guest = built(NESTED_CALL, tmp_path, "nested")
    result = cli("run", guest, "go")
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == "5"
    layout = binary.scan(guest.read_bytes())
    assert layout.core_instances == 2 and layout.adapters >= 1


def test_a_module_with_many_globals_is_refused_under_a_small_memory_limit(backend, tmp_path):
    module = "".join(f"(global (mut i64) (i64.const {i}))" for i in range(100_000))
    source = tmp_path / "g.wat"
    source.write_text(f'(module {module} (func (export "f") (result i32) i32.const 7))')
    small = from_dict({"limits": {"memory": "1MiB"}})
    with pytest.raises(errors.MemoryLimitExceeded, match="globals and functions"):
        wasmsbx.Sandbox(source, small, backend=backend).call("f")
    assert wasmsbx.Sandbox(source, backend=backend).call("f") == 7


def _segments(kind: str, count: int) -> str:
    """A module body of ``count`` passive element segments, passive data segments or
    tags (red team round 93: each kept per instance, none counted before)."""
    if kind == "elem":
        return "(table 1 funcref) (func $f)" + "(elem func $f $f)" * count
    if kind == "items":  # few segments, many items each
        return "(table 1 funcref) (func $f)" + ("(elem func" + " $f" * 1000 + ")") * count
    if kind == "data":
        return "(memory 1)" + '(data "ab")' * count
    return "(tag)" * count


def _host(wat: str) -> int:
    from wasmtime import wat2wasm

    from wasmsbx.backends.limits import layout

    return layout(wat2wasm(wat)).host


@pytest.mark.parametrize(
    "kind, count, least",
    [("elem", 20_000, 2_560_000), ("items", 200, 3_200_000), ("data", 100_000, 1_600_000)],
)
def test_passive_segments_count_toward_an_instances_runtime_memory(
    kind, count, least, backend, tmp_path
):
    wat = f'(module {_segments(kind, count)} (func (export "f") (result i32) i32.const 7))'
    assert _host(wat) >= least
    source = tmp_path / f"{kind}.wat"
    source.write_text(wat)
    small = from_dict({"limits": {"memory": "1MiB"}})
    with pytest.raises(errors.MemoryLimitExceeded, match="passive segments"):
        wasmsbx.Sandbox(source, small, backend=backend).call("f")
    assert wasmsbx.Sandbox(source, backend=backend).call("f") == 7


def test_active_and_declared_segments_cost_nothing_more():
    """wasmtime drops them at instantiation (0 bytes measured an instance)."""
    base = _host("(module (table 1 funcref) (func $f))")
    active = "(elem (i32.const 0) func $f)" * 1000 + "(elem declare func $f)" * 1000
    assert _host(f"(module (table 1 funcref) (func $f) {active})") == base


def test_tags_count_toward_an_instances_runtime_memory():
    from wasmsbx.backends.limits import TAG_BYTES

    few = _host(f"(module {_segments('tags', 10)})")
    many = _host(f"(module {_segments('tags', 10_010)})")
    assert many - few == 10_000 * TAG_BYTES


@components
def test_a_component_instantiating_a_module_of_many_element_segments_is_refused(tmp_path, cli):
    """Red team round 93: 100,000 passive element segments in a module a component
    instantiated 400 times held 4.4 GB under --memory 16MiB, exit 0."""
    body = _segments("elem", 2_000)
    made = " ".join("(core instance (instantiate $m))" for _ in range(100))
    wat = (
        f'(component (core module $m {body} (func (export "x") (result i32) i32.const 1))'
        f" {made} (core instance $last (instantiate $m))"
        ' (func (export "x") (result u32) (canon lift (core func $last "x"))))'
    )
    guest = built(wat, tmp_path, "elems")
    result = cli("run", guest, "x", "--memory", "16MiB")
    assert result.code == 110, result.stderr
    assert "runtime's memory" in result.stderr and "Traceback" not in result.stderr
    assert cli("run", guest, "x", "--memory", "256MiB").stdout.strip() == "1"


ASYNC_LIFT = """(component
  (core module $m
    (memory (export "memory") 1)
    (func (export "f") (result i32) (i32.const 1))
    (func (export "cb") (param i32 i32 i32) (result i32) (i32.const 1)))
  (core instance $i (instantiate $m))
  (func (export "f") async (result u32)
    (canon lift (core func $i "f") async (callback (core func $i "cb")))))"""


@components
def test_an_async_lifted_export_is_said_to_be_unsupported(tmp_path, cli):
    """Red team round 93: it was a trap (103) whose hint blamed a malformed value."""
    guest = built(ASYNC_LIFT, tmp_path, "async")
    result = cli("run", guest, "f")
    assert result.code == 102, result.stderr
    assert "lifted `async`" in result.stderr and "malformed" not in result.stderr
    assert "Traceback" not in result.stderr


def test_imported_tables_memories_and_globals_count_toward_an_instances_runtime_memory():
    """Red team round 95: 20,000 imported tables (57 bytes an instance each in a
    component) in a module a component instantiated 400 times held 520 MB under
    --memory 16MiB."""
    from wasmsbx.backends.limits import GLOBAL_BYTES, IMPORT_ITEM_BYTES

    base = _host("(module)")
    tables = "".join(f'(import "m" "t{i}" (table 1 funcref))' for i in range(1000))
    assert _host(f"(module {tables})") - base == 1000 * IMPORT_ITEM_BYTES
    globals_ = "".join(f'(import "m" "g{i}" (global i32))' for i in range(1000))
    assert _host(f"(module {globals_})") - base == 1000 * (IMPORT_ITEM_BYTES + GLOBAL_BYTES)
    memories = "".join(f'(import "m" "m{i}" (memory 1))' for i in range(10))
    assert _host(f"(module {memories})") - base == 10 * IMPORT_ITEM_BYTES


@components
def test_a_component_instantiating_a_module_of_many_imported_tables_is_refused(tmp_path, cli):
    n, k = 2_000, 200
    exports = "".join(f'(export "t{i}" (table 0))' for i in range(n))
    imports = "".join(f'(import "m" "t{i}" (table 1 funcref))' for i in range(n))
    made = " ".join(
        f'(core instance $i{j} (instantiate $m (with "m" (instance $mi))))' for j in range(k)
    )
    wat = (
        f"(component (core module $mm (table 1 funcref) {exports})"
        " (core instance $mi (instantiate $mm))"
        f' (core module $m {imports} (func (export "f") (result i32) i32.const 1))'
        f' {made} (func (export "f") (result s32) (canon lift (core func $i0 "f"))))'
    )
    guest = built(wat, tmp_path, "tables")
    result = cli("run", guest, "f", "--memory", "16MiB")
    assert result.code == 110, result.stderr
    assert "runtime's memory" in result.stderr and "Traceback" not in result.stderr
    assert cli("run", guest, "f", "--memory", "256MiB").stdout.strip() == "1"


@components
def test_a_component_instantiating_many_resource_types_is_refused(tmp_path, cli):
    """Red team round 96: a nested component of 2,000 resource types instantiated 2,000
    times held 122 MB an instance under --memory 16MiB, exit 0 (about 30 bytes a type
    an instance, counted by no store limit)."""
    r, k = 500, 100  # 50,000 resource types an instance: about 1.5 MiB
    inner = "(component $c " + "".join(f"(type $r{i} (resource (rep i32)))" for i in range(r))
    made = " ".join(f"(instance $ci{j} (instantiate $c))" for j in range(k))
    wat = (
        '(component (core module $m (func (export "f") (result i32) i32.const 1))'
        f" (core instance $i0 (instantiate $m)) {inner}) {made}"
        ' (func (export "f") (result s32) (canon lift (core func $i0 "f"))))'
    )
    guest = built(wat, tmp_path, "resources")
    assert binary.scan(guest.read_bytes()).host >= r * k * binary.TYPE_BYTES
    result = cli("run", guest, "f", "--memory", "1MiB")
    assert result.code == 110, result.stderr
    assert "types" in result.stderr and "Traceback" not in result.stderr
    assert cli("run", guest, "f", "--memory", "64MiB").stdout.strip() == "1"
