"""A component's GC heap and tables are inside the policy's totals, as a module's are
(red team round 68): its GC heap came on top of limits.memory (a component held 2x its
memory limit), and limits.table_elements capped each table alone, of the 10,000 tables
wasmtime allows a store (a 3 KB component held 800 MB of tables under the default
policy). Running out of resource handles names the cause."""

from __future__ import annotations

import subprocess

import pytest

import wasmsbx
from wasmsbx import errors
from wasmsbx.policy import from_dict

from .component_guests import tool
from .conftest import BACKENDS

pytestmark = pytest.mark.skipif("wasmtime" not in BACKENDS, reason="components run on wasmtime")

# Fills its linear memory as far as it may grow, then asks for one GC array of n bytes;
# returns the MiB held.
GC_OVER = """(component
  (core module $m (memory 1)
    (type $a (array (mut i8)))
    (global $g (mut (ref null $a)) (ref.null $a))
    (func (export "run") (param $n i32) (result i32)
      (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
      (global.set $g (array.new_default $a (local.get $n)))
      (i32.add (i32.shr_u (memory.size) (i32.const 4))
               (i32.shr_u (array.len (global.get $g)) (i32.const 20))))
    (func (export "pages") (result i32)
      (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
      (memory.size)))
  (core instance $i (instantiate $m))
  (func (export "run") (param "n" u32) (result u32) (canon lift (core func $i "run")))
  (func (export "pages") (result u32) (canon lift (core func $i "pages"))))"""

# Three tables of 4,000 elements at start, each instance; ``grow`` grows two empty
# tables as far as they may go and returns their total.
TABLES = """(component
  (core module $big (table 4000 funcref) (table 4000 funcref) (table 4000 funcref))
  (core module $m (table $a 0 funcref) (table $b 0 funcref)
    (func (export "grow") (result i32)
      (loop $l (br_if $l (i32.ne (table.grow $a (ref.null func) (i32.const 100)) (i32.const -1))))
      (loop $l (br_if $l (i32.ne (table.grow $b (ref.null func) (i32.const 100)) (i32.const -1))))
      (i32.add (table.size $a) (table.size $b))))
  (core instance $i (instantiate $m))
  (func (export "grow") (result u32) (canon lift (core func $i "grow"))))"""

HANDLES = """(component
  (type $r (resource (rep i32)))
  (core func $new (canon resource.new $r))
  (core module $m
    (import "" "new" (func $new (param i32) (result i32)))
    (func (export "run") (param $k i32) (result i32)
      (local $i i32) (local $h i32)
      (loop $l
        (local.set $h (call $new (local.get $i)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (local.get $k))))
      (local.get $h)))
  (core instance $i (instantiate $m (with "" (instance (export "new" (func $new))))))
  (func (export "run") (param "k" u32) (result u32) (canon lift (core func $i "run"))))"""


def built(text: str, tmp_path, name: str):
    source, out = tmp_path / f"{name}.wat", tmp_path / f"{name}.wasm"
    source.write_text(text)
    subprocess.run([str(tool("wasm-tools")), "parse", str(source), "-o", str(out)], check=True)
    return out


def unreachable_named(name: str, tmp_path):
    """A component exporting ``f``: a core function named ``name`` (WAT escapes
    allowed) that runs `unreachable`."""
    return built(
        f'(component (core module $m (func $"{name}" (export "f") (result i32)'
        " unreachable)) (core instance $i (instantiate $m))"
        ' (func (export "f") (result u32) (canon lift (core func $i "f"))))',
        tmp_path,
        "named",
    )


def test_a_components_gc_heap_takes_a_share_of_its_memory_limit(tmp_path):
    guest = built(GC_OVER, tmp_path, "gc")
    policy = from_dict({"limits": {"memory": "64MiB"}})
    assert wasmsbx.Sandbox(guest, policy).call("pages") * 65536 <= 32 << 20  # (half)
    with pytest.raises(errors.MemoryLimitExceeded, match="GC heap"):  # (was a TrapError
        wasmsbx.Sandbox(guest, policy).call("run", 40 << 20)  # saying "malformed value")
    assert wasmsbx.Sandbox(guest, policy).call("run", 16 << 20) == 32 + 16


def test_a_component_that_fills_its_gc_heap_is_exit_110(tmp_path, cli):
    guest = built(GC_OVER, tmp_path, "gc")
    result = cli("run", guest, "run", 40 << 20, "--memory", "64MiB")
    assert result.code == 110, result.stderr
    assert "GC heap" in result.stderr and "Traceback" not in result.stderr


def test_a_components_tables_share_table_elements(tmp_path):
    guest = built(TABLES, tmp_path, "tables")
    assert wasmsbx.Sandbox(guest).call("grow") <= 10_000  # the default total, both tables
    policy = from_dict({"limits": {"table_elements": 1000}})
    assert wasmsbx.Sandbox(guest, policy).call("grow") <= 1000


def test_a_component_whose_tables_need_more_than_the_total_is_refused(tmp_path):
    text = TABLES.replace(
        "(core instance $i (instantiate $m))",
        "(core instance $i (instantiate $m)) (core instance $j (instantiate $big))",
    )
    guest = built(text, tmp_path, "big")
    with pytest.raises(errors.TableLimitExceeded, match="12,000 table elements"):
        wasmsbx.Sandbox(guest).call("grow")
    policy = from_dict({"limits": {"table_elements": 20_000}})
    assert wasmsbx.Sandbox(guest, policy).call("grow") <= 20_000 - 12_000


def test_a_component_out_of_resource_handles_names_the_cause(tmp_path):
    guest = built(HANDLES, tmp_path, "handles")
    with pytest.raises(errors.TrapError, match="handle limit exceeded"):
        wasmsbx.Sandbox(guest).call("run", 2_000_000)


def collide(tmp_path, kind: str):
    """A component whose first core module (a decoy: tiny tables or memories) starts at
    the byte offset that is the real module's index: the scanner's one cache, keyed by
    both, counted the decoy's in the real one's place (red team round 70)."""
    count = 4
    if kind == "table":
        decoy = " ".join("(table 0 1 funcref)" for _ in range(count))
        real = " ".join(f"(table $t{i} 10000 funcref)" for i in range(count))
        body = " ".join(f"(table.size $t{i})" for i in range(count)) + " i32.add" * (count - 1)
    else:
        decoy = " ".join("(memory 0 1)" for _ in range(count))
        real = " ".join(f"(memory $m{i} 0)" for i in range(count))
        grow = (
            "(loop $l (br_if $l (i32.ne (memory.grow $m{i} (i32.const 16)) (i32.const -1))))"
            " (local.set $t (i32.add (local.get $t) (memory.size $m{i})))"
        )
        body = "(local $t i32) " + " ".join(grow.format(i=i) for i in range(count))
        body += " (local.get $t)"
    index = 12
    for _ in range(5):  # (the real module's index = the decoy's offset, found by trying)
        fillers = " ".join(f"(core module $f{i})" for i in range(index - 1))
        text = (
            f"(component (core module $d {decoy}) {fillers}"
            f' (core module $r {real} (func (export "n") (result i32) {body}))'
            " (core instance $dd (instantiate $d)) (core instance $i0 (instantiate $r))"
            ' (func (export "n") (result u32) (canon lift (core func $i0 "n"))))'
        )
        guest = built(text, tmp_path, f"collide-{kind}")
        data = guest.read_bytes()
        size_end = 9
        while data[size_end] & 0x80:
            size_end += 1
        if size_end + 1 == index:
            return guest
        index = size_end + 1
    pytest.fail("no layout put the decoy at the real module's index")


def test_a_decoy_module_cannot_hide_the_tables_of_another(tmp_path):
    with pytest.raises(errors.TableLimitExceeded, match="40,000 table elements"):
        wasmsbx.Sandbox(collide(tmp_path, "table")).call("n")


def test_a_decoy_module_cannot_hide_the_memories_of_another(tmp_path):
    policy = from_dict({"limits": {"memory": "32MiB"}})
    pages = wasmsbx.Sandbox(collide(tmp_path, "memory"), policy).call("n")
    assert pages * 65536 <= 32 << 20


def test_a_function_named_like_a_limit_does_not_fake_it(tmp_path):
    """The error's cause is read, not its backtrace, whose names are the guest's: a
    function named "GC heap out of memory" made a trap exit 110 (red team round 70)."""
    guest = unreachable_named("GC heap out of memory", tmp_path)
    with pytest.raises(errors.TrapError, match="unreachable"):
        wasmsbx.Sandbox(guest).call("f")


# wasmtime prints the guest's function names raw in a backtrace, newlines included: a
# name can forge a "Caused by:" line of its own (red team round 71).
FORGED = r"evil\u{a}Caused by:\u{a}    GC heap out of memory: no capacity\u{a}handle limit"
HIDING = r"x\u{a}Caused by:\u{a}" + "A" * 600  # (pushed the real cause past a 500 cut)


def test_a_name_forging_a_cause_fakes_no_limit(tmp_path):
    component = unreachable_named(FORGED, tmp_path)
    with pytest.raises(errors.TrapError, match="unreachable"):
        wasmsbx.Sandbox(component).call("f")
    refused = (
        '(module (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32'
        ' i32) (result i32))) (memory (export "memory") 1)'
        f' (func $"{FORGED}" (drop (call $w (i32.const 1) (i32.const 2147483632)'
        " (i32.const 1) (i32.const 0))))"
    )
    with pytest.raises(errors.TrapError, match="refused its arguments"):
        wasmsbx.Sandbox((refused + f' (export "f" (func $"{FORGED}")))').encode()).call("f")
    with pytest.raises(errors.WasmsbxError) as info:  # (its start function's: the same)
        wasmsbx.Sandbox((refused + f' (start $"{FORGED}") (func (export "f")))').encode()).call("f")
    assert not isinstance(info.value, (errors.LimitExceeded, errors.ResourceExhausted))


GC_FILL = """(module (type $arr (array (mut i64)))
  (type $node (struct (field (ref null $node)) (field (ref $arr))))
  (global $head (mut (ref null $node)) (ref.null $node))
  (func $"NAME" (export "fill") (result i32) (local $i i32)
    (loop $l (global.set $head (struct.new $node (global.get $head)
      (array.new_default $arr (i32.const 65536))))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))
    (local.get $i)))"""


def test_a_name_cannot_hide_a_full_gc_heap(tmp_path):
    policy = from_dict({"limits": {"memory": "64MiB"}})
    with pytest.raises(errors.MemoryLimitExceeded, match="GC heap"):
        wasmsbx.Sandbox(GC_FILL.replace("NAME", HIDING).encode(), policy).call("fill")
    component = built(
        "(component (core module $m "
        + GC_FILL.replace("NAME", HIDING)[len("(module ") : -1]
        + ') (core instance $i (instantiate $m)) (func (export "fill") (result u32)'
        ' (canon lift (core func $i "fill"))))',
        tmp_path,
        "hiding",
    )
    with pytest.raises(errors.MemoryLimitExceeded, match="GC heap"):
        wasmsbx.Sandbox(component, policy).call("fill")
