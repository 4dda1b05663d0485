"""limits.memory and limits.table_elements are totals over everything an instance holds
(issue 13, attack 1: 8 memories x 64MiB grew to 512 MiB)."""

from __future__ import annotations

import pytest

from tests.conftest import require_capability
from wasmsbx.backends.limits import PAGE, Layout, TotalsError, plan, share

MIB = 1 << 20


def grow_all(count: int, pages: int) -> str:
    """A module with ``count`` memories; ``grow`` asks each for ``pages`` more, returns the
    total pages held afterwards."""
    mems = " ".join(f"(memory $m{i} 1)" for i in range(count))
    grows = " ".join(f"(drop (memory.grow $m{i} (i32.const {pages})))" for i in range(count))
    size = " ".join(f"(memory.size $m{i})" for i in range(count))
    adds = " ".join("i32.add" for _ in range(count - 1))
    return f'(module {mems} (func (export "grow") (result i32) {grows} {size} {adds}))'


def test_share_is_the_water_level():
    assert share([None, None], 100) == 50
    assert share([10, None], 100) == 90  # a small fixed maximum leaves the rest to the other
    assert share([10, 20], 100) == 100  # everything fits: the cap never binds
    assert share([None] * 8, 64 * MIB) == 8 * MIB


def test_plan_bounds_the_sum_whatever_the_guest_grows():
    found = Layout(tuple((PAGE, None, False) for _ in range(8)), ((1, None), (1, None)))
    caps = plan(found, 64 * MIB, 1000)
    assert caps.memory_each * caps.memories <= 64 * MIB
    assert caps.table_each * caps.tables <= 1000
    assert (caps.memories, caps.tables) == (8, 2)


def test_plan_counts_a_shared_memory_at_its_maximum():
    found = Layout(((PAGE, 1000 * PAGE, True),), ())
    with pytest.raises(TotalsError, match="shared"):
        plan(found, 16 * MIB, None)
    caps = plan(Layout(((PAGE, 8 * PAGE, True), (PAGE, None, False)), ()), MIB, None)
    assert caps.memory_each == MIB - 8 * PAGE  # what the shared one may hold is set aside


def test_plan_without_a_layout_allows_one_memory_and_one_table():
    caps = plan(None, 64 * MIB, 100)
    assert (caps.memory_each, caps.memories, caps.table_each, caps.tables) == (64 * MIB, 1, 100, 1)


def test_eight_memories_share_the_limit(cli, backend, tmp_path):
    require_capability(backend, "multi-memory")
    module = tmp_path / "mem8.wat"
    module.write_text(grow_all(8, 127))  # 8 x 128 pages = 64 MiB: exactly the total
    res = cli("run", module, "grow", "--memory", "64MiB", "--backend", backend, "--json")
    assert res.code == 0, res
    assert res.json()["results"][0]["value"] * PAGE <= 64 * MIB
    module.write_text(grow_all(8, 1023))  # 8 x 64 MiB asked: every grow is refused
    res = cli("run", module, "grow", "--memory", "64MiB", "--backend", backend, "--json")
    assert res.code == 0, res
    assert res.json()["results"][0]["value"] == 8


def test_many_memories_that_cannot_start_are_refused(cli, backend, tmp_path):
    require_capability(backend, "multi-memory")
    module = tmp_path / "big.wat"
    memories = " ".join("(memory 600)" for _ in range(8))  # 8 x 37.5 MiB at start
    module.write_text(f'(module {memories} (func (export "f")))')
    res = cli("run", module, "f", "--memory", "64MiB", "--backend", backend)
    assert res.code == 110, res
    assert "total" in res.stderr


def test_shared_memory_growth_is_counted(cli, backend, tmp_path):
    """wasmtime's limiter does not see a shared memory grow: its maximum counts in full."""
    require_capability(backend, "threads")
    module = tmp_path / "shared.wat"
    module.write_text(
        '(module (memory 1 4096 shared) (func (export "g") (result i32) '
        "(memory.grow (i32.const 4000))))"
    )
    res = cli("run", module, "g", "--memory", "16MiB", "--backend", backend)
    assert res.code == 110, res
    assert "shared" in res.stderr


def test_tables_share_the_element_limit(cli, backend, tmp_path):
    require_capability(backend, "reference-types")
    tables = " ".join(f"(table $t{i} 1 funcref)" for i in range(4))
    grows = " ".join(f"(drop (table.grow $t{i} (ref.null func) (i32.const 400)))" for i in range(4))
    sizes = " ".join(f"(table.size $t{i})" for i in range(4))
    module = tmp_path / "tables.wat"
    body = f"{grows} {sizes} i32.add i32.add i32.add"
    module.write_text(f'(module {tables} (func (export "g") (result i32) {body}))')
    policy = tmp_path / "sandbox.toml"
    policy.write_text("[limits]\ntable_elements = 1000\n")
    res = cli("run", module, "g", "--policy", policy, "--backend", backend)
    assert res.code == 0, res
    assert int(res.stdout) <= 1000


def test_stats_report_memory_that_is_not_exported(cli, backend, tmp_path):
    module = tmp_path / "hidden.wat"
    module.write_text(
        '(module (memory 3) (func (export "f") (result i32) (memory.grow (i32.const 2))))'
    )
    res = cli("run", module, "f", "--stats", "--json", "--backend", backend)
    assert res.code == 0, res
    assert res.json()["stats"]["memory_bytes"] == 5 * PAGE
    listed = cli("run", module, "nope", "--backend", backend)  # the hidden export stays hidden
    assert "wasmsbx:" not in listed.stderr


def test_eight_unexported_memories_are_all_counted(cli, backend, tmp_path):
    require_capability(backend, "multi-memory")
    module = tmp_path / "mem8.wat"
    module.write_text(grow_all(8, 3))
    res = cli("run", module, "grow", "--stats", "--json", "--backend", backend)
    assert res.code == 0, res
    assert res.json()["stats"]["memory_bytes"] == 8 * 4 * PAGE


def test_wasmtime_trap_offsets_are_those_of_the_module_file(tmp_path):
    """Exporting the memories inserts bytes before the code: offsets are mapped back
    (wasmtime reports offsets into the module file; wasmer's are its own)."""
    import wasmtime

    from wasmsbx import Sandbox, errors

    text = '(module (memory 1) (func (export "f") nop unreachable))'
    with_memory = tmp_path / "a.wat"
    with_memory.write_text(text)
    box = Sandbox(with_memory, backend="wasmtime", use_cache=False)
    with pytest.raises(errors.TrapError) as caught:
        box.call("f")
    wasm = bytes(wasmtime.wat2wasm(text))
    offset = int(caught.value.backtrace[0].rsplit("0x", 1)[1], 16)
    assert wasm[offset] in (0x00, 0x01)  # the unreachable (or the nop) of the original bytes


def test_a_module_using_the_reserved_export_names_keeps_them(cli, backend, tmp_path):
    module = tmp_path / "reserved.wat"
    module.write_text(
        '(module (memory 2) (func (export "wasmsbx:memory:0") (result i32) i32.const 7))'
    )
    res = cli("run", module, "wasmsbx:memory:0", "--backend", backend)
    assert (res.code, res.stdout) == (0, "7\n"), res
