"""A component's values cost their own size to convert, whatever their types.

Red team round 35: wasmtime-py re-read a variant's cases for every value (a list of 500
values of a 5,000-case variant: 66 s), and asked every case of nested options for its
Python classes again at each level (an ``option`` 34 deep around a ``u8``: 13 s for one
value, twice that for every two levels more). That runs in Python after the guest
returned, where no epoch reaches, so a library call ran far past its timeout.
wasmsbx's own conversions (canonical values, WAVE, typed JSON and their sizes) looked
cases up the same way. The tests count the work, not the time: C API reads of the types
for wasmtime-py's side, reads of a type's parts for wasmsbx's.
"""

from __future__ import annotations

import json
import struct
import subprocess

import pytest

from wasmsbx import Sandbox, errors
from wasmsbx import policy as policy_mod
from wasmsbx.components import values, wave
from wasmsbx.components.types import WitType as T
from wasmsbx.components.values import Some, Variant

from .component_guests import tool


def _hex(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)


def _parsed(tmp_path, name: str, wat: str):
    """The component of WAT text ``wat``, as ``name``.wasm (wasm-tools parse)."""
    text = tmp_path / f"{name}.wat"
    text.write_text(wat)
    out = tmp_path / f"{name}.wasm"
    subprocess.run([str(tool("wasm-tools")), "parse", str(text), "-o", str(out)], check=True)
    return out


def _component(tmp_path, types: str, element: bytes, count: int, name: str):
    """``f: func() -> list<$e>`` returning ``count`` copies of ``element`` (its bytes in
    the canonical ABI), and ``g: func(xs: list<$e>) -> u32`` returning the length."""
    header = struct.pack("<II", 64, count)
    wat = f"""(component
 (core module $m
  (memory (export "memory") 64)
  (global $bump (mut i32) (i32.const 1048576))
  (data (i32.const 16) "{_hex(header)}")
  (data (i32.const 64) "{_hex(element * count)}")
  (func (export "realloc") (param i32 i32 i32 i32) (result i32)
   (local $p i32)
   (local.set $p (global.get $bump))
   (global.set $bump (i32.add (global.get $bump) (i32.add (local.get 3) (i32.const 8))))
   (local.get $p))
  (func (export "f") (result i32) (i32.const 16))
  (func (export "g") (param i32 i32) (result i32) (local.get 1)))
 (core instance $i (instantiate $m))
 (alias core export $i "memory" (core memory $mem))
 (alias core export $i "realloc" (core func $realloc))
{types}
 (type $l (list $e))
 (func (export "f") (result $l) (canon lift (core func $i "f") (memory $mem)))
 (func (export "g") (param "xs" $l) (result u32)
  (canon lift (core func $i "g") (memory $mem) (realloc $realloc)))
)"""
    return _parsed(tmp_path, name, wat)


def _wide_variant(tmp_path, cases: int, count: int):
    names = " ".join(f'(case "c{i}")' for i in range(cases))
    types = f" (type $e' (variant {names}))\n (export $e \"e\" (type $e'))"
    return _component(tmp_path, types, struct.pack("<H", cases - 1), count, f"wide{cases}")


def _deep_option(tmp_path, depth: int, count: int):
    lines = [" (type $e0 (option u8))"]
    lines += [f" (type $e{i} (option $e{i - 1}))" for i in range(1, depth)]
    lines.append(f" (type $e (option $e{depth - 1}))")
    element = bytes([1] * (depth + 1) + [7])  # some(some(...(7)))
    return _component(tmp_path, "\n".join(lines), element, count, f"deep{depth}")


def _counting(monkeypatch, *names: str) -> dict:
    """Count calls of wasmtime-py's C API functions ``names`` (the reads of a type)."""
    from wasmtime import _ffi as ffi
    from wasmtime.component import _types

    counts = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(ffi, name)

        def counted(*args, _real=real, _name=name):
            counts[_name] += 1
            return _real(*args)

        monkeypatch.setattr(ffi, name, counted)
        if hasattr(_types, name):
            monkeypatch.setattr(_types, name, counted)
    return counts


def _policy():
    policy = policy_mod.defaults()
    policy_mod.override(policy, "limits.output", "16MiB")
    return policy


def test_a_list_of_a_wide_variant_reads_its_cases_once_per_call(tmp_path, monkeypatch):
    cases, count = 2000, 300
    component = _wide_variant(tmp_path, cases, count)
    with Sandbox(component, _policy(), use_cache=False) as box:
        counts = _counting(monkeypatch, "wasmtime_component_variant_type_case_nth")
        got = box.call("f")
        assert got == [Variant(f"c{cases - 1}")] * count
        # before: every case read again for every element (600,000 reads; 8 s)
        assert counts["wasmtime_component_variant_type_case_nth"] <= 2 * cases
        counts["wasmtime_component_variant_type_case_nth"] = 0
        assert box.call("g", got) == count  # and the same going in
        assert counts["wasmtime_component_variant_type_case_nth"] <= 2 * cases
        with pytest.raises(errors.UsageError, match="unknown case 'nope'"):
            box.call("g", [Variant("nope")])
        assert box.call("g", [Variant("c0"), Variant("c7")]) == 2


def test_nested_options_cost_their_depth_not_twice_per_level(tmp_path, monkeypatch):
    depth, count = 40, 50  # before: 2**20 reads for each value
    component = _deep_option(tmp_path, depth, count)
    with Sandbox(component, _policy(), use_cache=False) as box:
        counts = _counting(monkeypatch, "wasmtime_component_option_type_ty")
        got = box.call("f")
        value = 7
        for _ in range(depth):
            value = Some(value)
        value = value.value  # the outer option's some(x) is x unless x is an option too
        assert got == [Some(value)] * count or got == [value] * count
        assert counts["wasmtime_component_option_type_ty"] <= 4 * (depth + 1)
        counts["wasmtime_component_option_type_ty"] = 0
        assert box.call("g", got) == count
        assert counts["wasmtime_component_option_type_ty"] <= 4 * (depth + 1)


def test_the_command_line_prints_them(cli, tmp_path):
    component = _wide_variant(tmp_path, 3000, 2000)
    res = cli("run", component, "f")
    assert res.code == 0, res
    assert res.stdout == "[" + ", ".join(["c2999"] * 2000) + "]\n"
    res = cli("run", component, "f", "--json")
    assert res.code == 0, res
    assert '"c2999": null' in res.stdout


class _Items(tuple):
    """A type's items that count how often they are walked or hashed."""

    reads = 0

    def __iter__(self):
        _Items.reads += 1
        return super().__iter__()

    def __hash__(self):
        _Items.reads += 1
        return super().__hash__()

    def __contains__(self, item):
        _Items.reads += 1
        return super().__contains__(item)


@pytest.mark.parametrize("kind", ["variant", "enum", "payloads"])
def test_wasmsbxs_own_conversions_read_a_type_once(kind):
    # Canonical values, WAVE, typed JSON, and both sizes: looked up cases by building
    # a dict of all of them (or walked an enum's names) for every value.
    if kind == "variant":
        t = T("variant", _Items((f"c{i}", None) for i in range(3000)))
        raw = [Variant("c2999")] * 500
        from wasmtime.component import Variant as Raw

        wasmtime_form = [Raw("c2999")] * 500
    elif kind == "enum":
        t = T("enum", _Items(f"e{i}" for i in range(3000)))
        raw = wasmtime_form = ["e2999"] * 500
    else:
        t = T("variant", _Items((f"c{i}", T("option", (T("u8"),))) for i in range(3000)))
        raw = [Variant("c2999", 5), Variant("c1", None)] * 250
        from wasmtime.component import Variant as Raw

        wasmtime_form = [Raw("c2999", 5), Raw("c1", None)] * 250
    listed = T("list", (t,))
    _Items.reads = 0
    checked = values.check(raw, listed)
    lowered = values.lower(checked, listed)
    lifted = values.lift(wasmtime_form, listed)
    assert lifted == checked
    assert lowered is not None
    printed = wave.format(lifted, listed)
    assert wave.printed_size(lifted, listed, 1 << 30) == len(printed)
    values.to_json(lifted, listed)
    values.json_size(lifted, listed, 1 << 30)
    assert wave.parse(printed, listed) == checked
    # a few reads per conversion, once; before: 500 per conversion
    assert _Items.reads <= 40, _Items.reads


def _long_list(tmp_path, count: int):
    """``f`` returns ``count`` values of a two-case variant (all zeroes: case c0), which
    wasmtime copies in one call (up to about 3 million: its hostcall fuel)."""
    pages = (count + 64) // 65536 + 1
    header = struct.pack("<II", 64, count)
    wat = f"""(component
 (core module $m (memory (export "memory") {pages})
  (data (i32.const 16) "{_hex(header)}")
  (func (export "f") (result i32) (i32.const 16)))
 (core instance $i (instantiate $m))
 (alias core export $i "memory" (core memory $mem))
 (type $e' (variant (case "c0") (case "c1")))
 (export $e "e" (type $e'))
 (type $l (list $e))
 (func (export "f") (result $l) (canon lift (core func $i "f") (memory $mem)))
)"""
    return _parsed(tmp_path, "long", wat)


def test_converting_a_result_ends_at_the_calls_deadline(tmp_path):
    # Linear is not enough: two million values take about 10 s of Python to convert
    # after the guest returned in microseconds. The conversion looks at the call's
    # deadline every 1,024 elements (values.paced).
    from wasmsbx.components.values import CLOCK

    component = _long_list(tmp_path, 2_000_000)
    policy = _policy()
    policy_mod.override(policy, "limits.output", "1GiB")
    policy_mod.override(policy, "limits.timeout", "1s")
    with Sandbox(component, policy, use_cache=False) as box:
        with pytest.raises(errors.TimeoutExceeded, match="converting the result of f"):
            box.call("f")
        assert CLOCK.until is None
        stopped = box._instance
        assert stopped.poisoned  # stopped before its post_return: no further calls
        with pytest.raises(errors.TimeoutExceeded, match="converting the result of f"):
            box.call("f")  # (on a fresh instance)
        assert box._instance is not stopped
    small = _long_list(tmp_path, 3000)
    with Sandbox(small, policy, use_cache=False) as box:
        assert box.call("f") == [Variant("c0")] * 3000  # paced, and on time


def _nested_lists(tmp_path, outer: int, mid: int, inner: int):
    """``f: func() -> list<list<list<$e>>>``, every inner list the same ``inner`` bytes
    of guest memory (and every middle list the same ``mid`` inner lists)."""
    a, b, c = 0x10000, 0x20000, 0x40000
    leaf = b"\x01" * inner
    mids = struct.pack("<II", a, inner) * mid
    outs = struct.pack("<II", b, mid) * outer
    wat = f"""(component
 (core module $m (memory (export "memory") 16)
  (data (i32.const 16) "{_hex(struct.pack("<II", c, outer))}")
  (data (i32.const {a}) "{_hex(leaf)}")
  (data (i32.const {b}) "{_hex(mids)}")
  (data (i32.const {c}) "{_hex(outs)}")
  (func (export "f") (result i32) (i32.const 16)))
 (core instance $i (instantiate $m))
 (alias core export $i "memory" (core memory $mem))
 (type $e' (variant (case "a") (case "b")))
 (export $e "e" (type $e'))
 (type $l1 (list $e))
 (type $l2 (list $l1))
 (type $l3 (list $l2))
 (func (export "f") (result $l3) (canon lift (core func $i "f") (memory $mem)))
)"""
    return _parsed(tmp_path, f"nested{outer}x{mid}x{inner}", wat)


def _stops_at_its_deadline(component):
    """Call ``f`` under a 1 s timeout (output 1 GiB): the conversion of its result must
    end with TimeoutExceeded; the policy, for the test's next calls. (On a loaded
    machine wasmtime's own copy of the result, in native code, may pass the deadline
    first: the call's timeout then, as right.)"""
    policy = _policy()
    policy_mod.override(policy, "limits.output", "1GiB")
    policy_mod.override(policy, "limits.timeout", "1s")
    with (
        Sandbox(component, policy, use_cache=False) as box,
        pytest.raises(
            errors.TimeoutExceeded, match="converting the result of f|f still running after"
        ),
    ):
        box.call("f")
    return policy


def test_short_lists_count_together_against_the_deadline(tmp_path):
    # red team round 36: each list looked at the clock only past 1,024 elements of its
    # own, so 2 x 1,000 x 1,000 values (12 KB of component, all aliased) converted for
    # 10 s under a 1 s timeout. Lists are charged together, by the weight of their type.
    component = _nested_lists(tmp_path, 2, 1000, 1000)
    policy = _stops_at_its_deadline(component)
    small = _nested_lists(tmp_path, 2, 30, 40)
    with Sandbox(small, policy, use_cache=False) as box:
        assert box.call("f") == [[[Variant("b")] * 40] * 30] * 2


def test_weights_count_a_values_parts():
    u8, s = T("u8"), T("string")
    assert values.weight(u8) == 1
    assert values.weight(T("list", (T("record", (("a", u8), ("b", s))),))) == 1  # its own pace
    assert values.weight(T("record", (("a", u8), ("b", T("tuple", (u8, u8)))))) == 5
    assert values.weight(T("variant", (("a", None), ("b", T("tuple", (u8, u8)))))) == 4
    wide = T("record", tuple((f"f{i}", u8) for i in range(5000)))
    assert values.weight(wide) == values.PACE  # (a look at the clock every element)


def _aliased_strings(tmp_path, count: int, size: int, prefix: bytes):
    """``f: func() -> list<string>``: ``count`` strings, all the same ``size`` bytes of
    guest memory (``prefix``, then "a"s), filled at run time."""
    s, h = 0x100000, 0x10000
    pages = (s + size + 0xFFFF) // 0x10000 + 1
    wat = f"""(component
 (core module $m (memory (export "memory") {pages})
  (data (i32.const 16) "{_hex(struct.pack("<II", h, count))}")
  (data (i32.const 0x8000) "{_hex(prefix)}")
  (func (export "f") (result i32)
    (local $i i32)
    (memory.fill (i32.const {s}) (i32.const 0x61) (i32.const {size}))
    (memory.copy (i32.const {s}) (i32.const 0x8000) (i32.const {len(prefix)}))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (i32.const {count})))
      (i32.store (i32.add (i32.const {h}) (i32.shl (local.get $i) (i32.const 3))) (i32.const {s}))
      (i32.store (i32.add (i32.const {h + 4}) (i32.shl (local.get $i) (i32.const 3)))
       (i32.const {size}))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (i32.const 16)))
 (core instance $i (instantiate $m))
 (alias core export $i "memory" (core memory $mem))
 (type $l (list string))
 (func (export "f") (result $l) (canon lift (core func $i "f") (memory $mem) string-encoding=utf8))
)"""
    return _parsed(tmp_path, f"strings{count}x{size}", wat)


def test_long_strings_are_charged_by_their_length(tmp_path):
    # red team round 37: 1,024 aliased strings of 128 KiB with a control character and
    # an emoji: sizing them (dozens of passes over each) took 2.5-4 s under a 1 s timeout,
    # each string counted as one unit
    component = _aliased_strings(tmp_path, 1024, 131000, "\x01\U0001f600".encode())
    policy = _stops_at_its_deadline(component)
    with Sandbox(_aliased_strings(tmp_path, 3, 5000, b"\x01"), policy, use_cache=False) as box:
        assert box.call("f") == ["\x01" + "a" * 4999] * 3


def test_sizing_a_long_string_looks_at_the_clock():
    # (the unit behind the test above, without timing: a clock already past stops the
    # sizing of three long strings; counted as one unit each, it never looked)
    import time

    t = T("list", (T("string"),))
    value = ["\x01" + "a" * 200_000] * 3
    for size in (
        lambda: wave.printed_size(value, t, 1 << 30),
        lambda: values.json_size(value, t, 1 << 30),
    ):
        values.start_clock(time.monotonic() - 1)
        try:
            with pytest.raises(values.Overdue):
                size()
        finally:
            values.start_clock(None)
        assert size() > 600_000  # (no clock: sized)


def test_one_long_string_is_measured_a_slice_at_a_time(monkeypatch):
    # red team round 38: one string of 60-120 MiB (what wasmtime copies in one call) was
    # charged once, then measured in dozens of passes after the deadline (2-3.6 s under
    # 1 s). Now a slice at a time, with a look at the clock between slices; and a string
    # longer than the room left is past the limit at once.
    t = T("list", (T("string"),))
    value = ["\x01" * (3 * values.TEXT_SLICE)]
    import types

    # (values' own clock only: the process's time.monotonic is read by other threads,
    # the deadline keeper's, which took the ticks meant for this test)
    ticks = iter([0.0] + [200.0] * 10)
    clock = types.SimpleNamespace(monotonic=lambda: next(ticks, 200.0))
    monkeypatch.setattr(values, "time", clock)
    for size in (wave.printed_size, values.json_size):
        ticks = iter([0.0] + [200.0] * 10)
        values.start_clock(100.0)
        try:
            with pytest.raises(values.Overdue):
                size(value, t, 1 << 30)
        finally:
            values.start_clock(None)
    monkeypatch.undo()
    exact = wave.printed_size(value, t, 1 << 30)
    assert exact == len(wave.format(value, t))
    printed = json.dumps(values.to_json(value, t), indent=2)
    assert values.json_size(value, t, 1 << 30) == len(printed)
    assert wave.printed_size(value, t, 1000) > 1000  # (past the room: not measured)
