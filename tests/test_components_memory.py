"""``--stats`` memory for components: the hidden probe added at compile time (#15)."""

from __future__ import annotations

import json

import pytest
import wasmtime

from wasmsbx import errors
from wasmsbx.components import binary, probe, runtime

from .component_guests import HERE, c_command

TYPES = HERE / "types.wat"
MIB = 1 << 20
PAGE = 65536


def _box(source, limits: dict | None = None):
    from wasmsbx import Sandbox
    from wasmsbx import policy as P

    return Sandbox(source, P.from_dict({"limits": limits or {}}), use_cache=False)


def _wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


# Two instances of one module (a memory each) and a module of its own with two memories:
# the probe must see all four.
MANY = """
(component
  (core module $m
    (memory 1)
    (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
  (core module $two
    (memory 2) (memory $b 3)
    (func (export "grow") (param i32) (result i32) (memory.grow $b (local.get 0))))
  (core instance $a (instantiate $m))
  (core instance $b (instantiate $m))
  (core instance $c (instantiate $two))
  (func (export "grow-a") (param "pages" u32) (result s32) (canon lift (core func $a "grow")))
  (func (export "grow-b") (param "pages" u32) (result s32) (canon lift (core func $b "grow")))
  (func (export "grow-c") (param "pages" u32) (result s32) (canon lift (core func $c "grow")))
)
"""


def test_memory_of_every_core_instance_is_counted(tmp_path):
    path = tmp_path / "many.wasm"
    path.write_bytes(_wasm(MANY))
    box = _box(path)
    first = box.invoke("grow-a", [0])
    assert first.stats.memory_bytes == (1 + 1 + 2 + 3) * PAGE
    box.invoke("grow-b", [4])
    box.invoke("grow-c", [5])
    after = box.invoke("grow-a", [0]).stats.memory_bytes
    assert after == (1 + 5 + 2 + 8) * PAGE
    assert box.layout.probed and box.layout.core_instances == 4  # 3 + the probe
    assert [e.name for e in box.component_exports] == ["grow-a", "grow-b", "grow-c"]
    box.close()


def test_wat_component_reports_growth_in_cli(cli, tmp_path):
    out = cli("run", "--json", str(TYPES), "hog", "3")
    assert out.code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["stats"]["memory_bytes"] == PAGE + 3 * MIB
    out = cli("run", "--stats", str(TYPES), "add", "2", "3")
    assert "memory            64 KiB" in out.stderr + out.stdout


def test_probe_is_hidden_and_cannot_be_called(cli):
    out = cli("run", str(TYPES), probe.NAME)
    assert out.code != 0
    assert "no exported function" in out.stderr
    assert out.stderr.count(probe.NAME) == 1  # the name asked for; no export lists it
    listing = cli("audit", "--json", str(TYPES))
    assert probe.NAME not in listing.stdout


def test_a_guest_exporting_the_reserved_name_keeps_it_and_cannot_fake_the_figure(tmp_path):
    """The guest's own ``wasmsbx-memory-bytes`` is its function: listed, callable, and
    never read as the memory figure (which it would fake: 12345)."""
    path = tmp_path / "fake.wasm"
    path.write_bytes(
        _wasm(
            f"""(component
              (core module $m (memory 1) (func (export "f") (result i64) (i64.const 12345)))
              (core instance $i (instantiate $m))
              (func (export "{probe.NAME}") (result u64) (canon lift (core func $i "f"))))"""
        )
    )
    box = _box(path)
    result = box.invoke(probe.NAME, [])
    assert result.value == 12345
    assert result.stats.memory_bytes is None
    assert [e.name for e in box.component_exports] == [probe.NAME]
    assert not box.layout.probed
    box.close()


def test_no_figure_after_a_trap_rather_than_a_stale_one():
    box = _box(TYPES)
    assert box.invoke("hog", [1]).stats.memory_bytes == PAGE + MIB
    with pytest.raises(errors.TrapError):
        box.invoke("fail", [])
    assert box._instance.usage().memory_bytes is None
    assert box.invoke("add", [1, 2]).stats.memory_bytes == PAGE  # a fresh instance
    box.close()


def test_probe_runs_outside_the_guests_fuel():
    box = _box(TYPES, {"fuel": 5_000})
    with pytest.raises(errors.FuelExhausted):
        box.invoke("spin", [])
    box.close()
    box = _box(TYPES, {"fuel": 5_000})
    result = box.invoke("add", [1, 2])
    used = result.stats.fuel_used
    assert result.stats.memory_bytes == PAGE
    instance = box._instance
    for _ in range(3):  # reading the figure spends none of the guest's fuel
        assert instance.usage().memory_bytes == PAGE
    assert instance.usage().fuel_used == used
    assert instance.store.get_fuel() == 5_000 - used
    box.close()


def test_instance_limit_allows_the_probe_and_no_more():
    """The store may create the binary's core instances plus the probe's, not one
    fewer (so the allowance is exactly what the probe needs). Its canonical functions,
    counted as possible fused adapters, are left out: TYPES only lifts, so none is."""
    from wasmsbx.runner.sandbox import limits_from

    box = _box(TYPES, {"instances": 1})
    assert box.invoke("add", [1, 2]).value == 3
    layout = box.layout
    assert layout.probed and layout.core_instances == 2
    with pytest.raises(errors.InstanceLimitExceeded):
        runtime.ComponentInstance(
            box.engine,
            box.module,
            layout._replace(core_instances=1, adapters=0),
            limits_from(box.policy),
            box.wasi_setup(),
            box.import_names,
        )
    box.close()


def test_nested_component_memories_are_not_guessed(tmp_path):
    path = tmp_path / "nested.wasm"
    path.write_bytes(
        _wasm(
            """(component
              (component $inner
                (core module $m (memory 1) (func (export "f") (result i32) (i32.const 7)))
                (core instance $i (instantiate $m))
                (func (export "f") (result s32) (canon lift (core func $i "f"))))
              (instance $x (instantiate $inner))
              (export "f" (func $x "f")))"""
        )
    )
    assert probe.instrument(path.read_bytes()) is None
    box = _box(path)
    result = box.invoke("f", [])
    assert result.value == 7 and result.stats.memory_bytes is None
    box.close()


def test_instrumented_binary_is_valid_and_layout_counts_the_probe():
    wasm = _wasm(TYPES.read_text())
    out = probe.instrument(wasm)
    assert out is not None
    before, after = binary.scan(wasm), binary.scan(out)
    assert after.core_instances == before.core_instances + 1
    assert after.memories == before.memories  # the probe defines none
    engine = wasmtime.Engine()
    import wasmtime.component as wc

    names = list(wc.Component(engine, out).type.exports(engine))
    assert probe.NAME in names


def test_artifact_alone_reports_memory(cli, tmp_path):
    art = tmp_path / "types.cwasm"
    made = cli("compile", str(TYPES), "-o", str(art))
    assert made.code == 0, made.stderr
    out = cli("run", "--json", str(art), "hog", "1")
    assert out.code == 0, out.stderr
    assert json.loads(out.stdout)["stats"]["memory_bytes"] == PAGE + MIB


def test_adapted_c_command_reports_what_it_allocated(cli):
    wasm = c_command()
    small = json.loads(cli("run", "--json", str(wasm), "--", "alloc", "1").stdout)
    big = json.loads(cli("run", "--json", str(wasm), "--", "alloc", "12").stdout)
    grown = big["stats"]["memory_bytes"] - small["stats"]["memory_bytes"]
    assert 11 * MIB <= grown <= 2 * 12 * MIB  # malloc's own overhead on top
    out = cli("run", "--stats", str(wasm), "--", "alloc", "2")
    assert "memory " in out.stderr


def test_adapted_c_command_exit_code_kept_without_a_figure(cli):
    """exit(3) is a trap (the adapter calls wasi:cli/exit): the instance refuses the
    probe, so no figure, and the exit code is as before."""
    out = cli("run", "--json", str(c_command()), "--", "exit", "3")
    assert out.code == 1
    assert json.loads(out.stdout)["stats"]["memory_bytes"] is None


# A nested component that reaches its parent's core module through an outer alias (or
# gets it as an import) and instantiates it: the scan read the nested component's own
# module list by that index and counted none of the memory, so the per-memory cap let
# the memories together hold twice limits.memory, and the probe missed the memory.
BIG = """
  (core module $big
    (memory 1)
    (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
"""
OUTER_ALIAS = f"""
(component {BIG}
  (component $inner
    (alias outer 1 $big (core module $b))
    (core module $tiny)
    (core instance $i (instantiate $b))
    (func (export "grow") (param "n" s32) (result s32) (canon lift (core func $i "grow"))))
  (instance $n (instantiate $inner))
  (core instance $top (instantiate $big))
  (func (export "top-grow") (param "n" s32) (result s32) (canon lift (core func $top "grow")))
  (alias export $n "grow" (func $ng))
  (export "inner-grow" (func $ng))
)
"""
IMPORTED_MODULE = f"""
(component {BIG}
  (component $inner
    (import "m" (core module $b (export "grow" (func (param i32) (result i32)))))
    (core module $tiny)
    (core instance $i (instantiate $b))
    (func (export "grow") (param "n" s32) (result s32) (canon lift (core func $i "grow"))))
  (instance $n (instantiate $inner (with "m" (core module $big))))
  (alias export $n "grow" (func $ng))
  (export "inner-grow" (func $ng))
)
"""


def test_outer_aliased_module_memory_counts_against_the_limit(tmp_path):
    path = tmp_path / "outer.wasm"
    path.write_bytes(_wasm(OUTER_ALIAS))
    assert len(binary.scan(path.read_bytes()).memories) == 2
    box = _box(path, {"instances": 3, "memory": "4MiB"})
    grown = [box.invoke("inner-grow", [62]).value, box.invoke("top-grow", [62]).value]
    assert -1 in grown  # two memories of 63 pages each would be 8 MiB under a 4 MiB limit
    assert box.invoke("top-grow", [0]).stats.memory_bytes is None  # the probe cannot see it
    box.close()


def test_nested_component_instantiating_an_imported_module_is_refused(cli, tmp_path):
    path = tmp_path / "imported.wasm"
    path.write_bytes(_wasm(IMPORTED_MODULE))
    for args in (
        ("run", str(path), "inner-grow", "1"),
        ("audit", str(path)),
        ("bench", str(path), "inner-grow", "1"),  # was exit 100, the class name, no hint
    ):
        out = cli(*args)
        assert out.code == 102, out
        assert "cannot count the memories" in out.stderr and "hint:" in out.stderr
        assert "Traceback" not in out.stderr


# An alias to a hidden memory export the module does not have: invalid as written (wasmtime
# and `wasm-tools validate` refuse it), and it became valid once the rewrite added that
# export, so the component ran under wasmsbx only.
HIDDEN_ALIAS = """
(component
  (core module $m (memory 1) (func (export "size") (result i32) (memory.size)))
  (core module $n
    (import "x" "mem" (memory 1))
    (func (export "size") (result i32) (memory.size)))
  (core instance $i (instantiate $m))
  (alias core export $i "wasmsbx:memory:0" (core memory $mm))
  (core instance $x (export "mem" (memory $mm)))
  (core instance $j (instantiate $n (with "x" (instance $x))))
  (func (export "size") (result s32) (canon lift (core func $j "size")))
)
"""


def test_alias_to_a_hidden_export_stays_invalid(cli, tmp_path):
    from wasmsbx.backends.limits import HIDDEN_EXPORT

    assert HIDDEN_ALIAS.count(HIDDEN_EXPORT + "0") == 1  # the name the rewrite would add
    path = tmp_path / "hidden.wasm"
    path.write_bytes(_wasm(HIDDEN_ALIAS))
    assert probe.instrument(path.read_bytes()) is None
    out = cli("run", str(path), "size")
    assert out.code == 102 and "no export named" in out.stderr, out


# The same through a component: a nested component instantiating its parent's component
# (an outer alias) twice was counted as making nothing.
OUTER_COMPONENT = """
(component
  (component $leaf
    (core module $big
      (memory 1)
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
    (core instance $i (instantiate $big))
    (func (export "grow") (param "n" s32) (result s32) (canon lift (core func $i "grow"))))
  (component $mid
    (alias outer 1 $leaf (component $l))
    (instance $a (instantiate $l))
    (instance $b (instantiate $l))
    (alias export $a "grow" (func $ga))
    (alias export $b "grow" (func $gb))
    (export "ga" (func $ga))
    (export "gb" (func $gb)))
  (instance $m (instantiate $mid))
  (alias export $m "ga" (func $ga))
  (alias export $m "gb" (func $gb))
  (export "ga" (func $ga))
  (export "gb" (func $gb))
)
"""


def test_outer_aliased_component_counts_against_the_limit(tmp_path):
    path = tmp_path / "outerc.wasm"
    path.write_bytes(_wasm(OUTER_COMPONENT))
    layout = binary.scan(path.read_bytes())
    assert len(layout.memories) == 2 and layout.core_instances == 2
    box = _box(path, {"instances": 3, "memory": "4MiB"})
    assert -1 in [box.invoke("ga", [62]).value, box.invoke("gb", [62]).value]
    box.close()


def test_one_section_instantiating_a_module_of_many_tables_is_refused_as_it_is_read():
    """Red team 125: a 309 KB component, one module of 100,000 tables instantiated 3,000
    times in one core-instance section, listed 300 million tables (2.4 GB) before the
    count was checked at the end of the section. It is checked as each is counted."""
    import resource

    def leb(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    def section(kind: int, body: bytes) -> bytes:
        return bytes([kind]) + leb(len(body)) + body

    module = b"\0asm\x01\0\0\0" + section(4, leb(100_000) + b"\x70\x00\x00" * 100_000)
    instances = leb(3000) + b"\x00\x00\x00" * 3000
    component = b"\0asm\x0d\x00\x01\x00" + section(1, module) + section(2, instances)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(binary.ComponentFormatError, match="more than 100,000"):
        binary.scan(component)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 500_000  # (2.4 GB before)
