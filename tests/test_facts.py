"""Tests for wasmsbx.wasm.facts: the pure-Python WebAssembly module reader."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmsbx.wasm.facts import (
    FEATURES,
    FactsError,
    FuncType,
    Limits,
    ModuleFacts,
    load_facts,
    read_facts,
    read_features,
)

wasmtime = pytest.importorskip("wasmtime")

HEADER = b"\x00asm\x01\x00\x00\x00"


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def facts(text: str) -> ModuleFacts:
    return read_facts(wat(text))


def leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def name(s: str) -> bytes:
    raw = s.encode()
    return leb(len(raw)) + raw


def section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + leb(len(payload)) + payload


def custom(sec_name: str, payload: bytes) -> bytes:
    return section(0, name(sec_name) + payload)


RICH = """
(module
  (type $bin (func (param i32 i32) (result i32)))
  (import "env" "log" (func $log (param i32 i64)))
  (import "env" "add" (func $add (type $bin)))
  (import "env" "mem" (memory 1 16))
  (import "env" "tbl" (table 2 10 funcref))
  (import "env" "g" (global $g i32))
  (import "env" "counter" (global $counter (mut i64)))
  (global $h (mut f32) (f32.const 1.5))
  (global $k f64 (f64.const 2))
  (table $t2 4 externref)
  (func $noop)
  (func $pair (export "pair") (param i32) (result i32 i64)
    local.get 0
    i64.const 7)
  (func (export "sum") (type $bin)
    (i32.add (local.get 0) (local.get 1)))
  (func $init (call $log (i32.const 1) (i64.const 2)))
  (export "log_again" (func $log))
  (export "memory" (memory 0))
  (export "h" (global $h))
  (export "counter" (global $counter))
  (export "tbl" (table 0))
  (start $init)
  (elem (table 0) (i32.const 0) func $noop $pair)
  (data (i32.const 0) "hello")
  (data (i32.const 16) "")
  (data (i32.const 32) "0123456789abcdef0123456789abcdef")
)
"""


@pytest.fixture(scope="module")
def rich_bytes() -> bytes:
    return wat(RICH)


@pytest.fixture(scope="module")
def rich(rich_bytes: bytes) -> ModuleFacts:
    return read_facts(rich_bytes)


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


def test_size_and_hash(rich: ModuleFacts, rich_bytes: bytes) -> None:
    import hashlib

    assert rich.size == len(rich_bytes)
    assert rich.sha256 == hashlib.sha256(rich_bytes).hexdigest()


def test_imports_with_types(rich: ModuleFacts) -> None:
    kinds = [(i.module, i.name, i.kind) for i in rich.imports]
    assert kinds == [
        ("env", "log", "func"),
        ("env", "add", "func"),
        ("env", "mem", "memory"),
        ("env", "tbl", "table"),
        ("env", "g", "global"),
        ("env", "counter", "global"),
    ]
    log, add, mem, tbl, g, counter = rich.imports
    assert log.type == FuncType(("i32", "i64"), ())
    assert str(log.type) == "(i32, i64) -> ()"
    assert str(add.type) == "(i32, i32) -> i32"
    assert mem.limits == Limits(1, 16)
    assert mem.type is None
    assert tbl.limits == Limits(2, 10) and tbl.elem == "funcref"
    assert (g.global_type, g.mutable) == ("i32", False)
    assert (counter.global_type, counter.mutable) == ("i64", True)


def test_exports_resolve_function_types(rich: ModuleFacts) -> None:
    names = [e.name for e in rich.exports]
    assert names == ["pair", "sum", "log_again", "memory", "h", "counter", "tbl"]
    pair = rich.export("pair")
    assert pair is not None and pair.kind == "func"
    assert pair.index == 3  # two imported functions, then $noop
    assert str(pair.type) == "(i32) -> (i32, i64)"
    assert str(rich.export("sum").type) == "(i32, i32) -> i32"
    assert str(rich.export("log_again").type) == "(i32, i64) -> ()"  # an imported function
    assert rich.export("memory").type is None
    assert rich.export("missing") is None
    assert [e.name for e in rich.func_exports()] == ["pair", "sum", "log_again"]


def test_functions_globals_tables_memories(rich: ModuleFacts) -> None:
    assert rich.functions == 4
    assert [(g.index, g.type, g.mutable, g.imported) for g in rich.globals] == [
        (0, "i32", False, True),
        (1, "i64", True, True),
        (2, "f32", True, False),
        (3, "f64", False, False),
    ]
    assert [(t.index, t.elem, t.imported, t.limits) for t in rich.tables] == [
        (0, "funcref", True, Limits(2, 10)),
        (1, "externref", False, Limits(4, None)),
    ]
    assert [(m.index, m.imported, m.limits) for m in rich.memories] == [(0, True, Limits(1, 16))]


def test_start_data_elements(rich: ModuleFacts) -> None:
    assert rich.start == 5  # log, add (imported), $noop, $pair, sum, $init
    assert rich.data_segments == (5, 0, 32)
    assert rich.element_segments == 1


def test_types(rich: ModuleFacts) -> None:
    sigs = [str(t) for t in rich.types]
    assert "(i32, i32) -> i32" in sigs
    assert "() -> ()" in sigs
    assert str(FuncType((), ())) == "() -> ()"


def test_rich_features(rich: ModuleFacts) -> None:
    # mutable global imported and exported; multi-value result; a second table of externref.
    assert rich.features == {"mutable-globals", "multi-value", "reference-types"}


def test_to_dict_is_json(rich: ModuleFacts) -> None:
    d = rich.to_dict()
    again = json.loads(json.dumps(d))
    assert again == d
    assert d["exports"][0] == {
        "name": "pair",
        "kind": "func",
        "index": 3,
        "type": {"params": ["i32"], "results": ["i32", "i64"]},
    }
    assert d["features"] == sorted(rich.features)
    assert d["data_segments"] == [5, 0, 32]
    assert d["memories"][0]["limits"] == {"min": 1, "max": 16, "shared": False, "memory64": False}


def test_facts_are_frozen(rich: ModuleFacts) -> None:
    with pytest.raises(AttributeError):
        rich.functions = 0  # type: ignore[misc]
    assert read_facts(wat(RICH)) == rich


def test_interface_only_read(rich: ModuleFacts) -> None:
    quick = read_facts(wat(RICH), scan_code=False)
    assert quick.exports == rich.exports and quick.imports == rich.imports
    assert quick.memories == rich.memories and quick.functions == rich.functions
    assert quick.features <= rich.features


def test_read_features_is_the_facts_features(rich: ModuleFacts) -> None:
    assert read_features(wat(RICH)) == rich.features and rich.features
    mvp = wat('(module (func (export "f") (result i32) (i32.const 1)))')
    assert read_features(mvp) == read_facts(mvp).features == frozenset()


def test_mvp_module_has_no_features() -> None:
    f = facts(
        """(module (memory 1) (func (export "f") (param i32) (result i32)
             (block (result i32) (i32.load offset=4 (local.get 0)))
             (br_table 0 0 0 (i32.const 1))))"""
    )
    assert f.features == frozenset()
    assert f.has_name_section is False
    assert f.producers == {}


def test_memory_limits_shared_and_64() -> None:
    f = facts("(module (memory 1 4 shared) (memory i64 2) (memory i64 3 70000))")
    assert [m.limits for m in f.memories] == [
        Limits(1, 4, shared=True),
        Limits(2, None, memory64=True),
        Limits(3, 70000, memory64=True),
    ]
    assert {"threads", "memory64", "multi-memory"} <= f.features


def test_empty_module() -> None:
    f = read_facts(HEADER)
    assert f.functions == 0 and f.imports == () and f.exports == () and f.start is None
    assert f.features == frozenset()


# --------------------------------------------------------------------------------------------
# Custom sections
# --------------------------------------------------------------------------------------------


def test_custom_sections_and_producers() -> None:
    producers = (
        leb(2)
        + name("language")
        + leb(2)
        + name("Rust")
        + name("")
        + name("C11")
        + name("")
        + name("processed-by")
        + leb(1)
        + name("rustc")
        + name("1.80.0 (abc 2024-07-21)")
    )
    data = (
        HEADER
        + custom("producers", producers)
        + custom(".debug_info", b"\x01\x02\x03")
        + custom("name", b"")
        + custom("vendor-thing", b"x" * 10)
    )
    f = read_facts(data)
    assert f.producers == {
        "language": ["Rust", "C11"],
        "processed-by": ["rustc 1.80.0 (abc 2024-07-21)"],
    }
    assert [c.name for c in f.custom_sections] == [
        "producers",
        ".debug_info",
        "name",
        "vendor-thing",
    ]
    assert f.custom_sections[3].size == len(name("vendor-thing")) + 10
    assert f.has_debug_info and f.has_name_section
    assert f.to_dict()["producers"]["language"] == ["Rust", "C11"]


def test_malformed_producers_section_is_ignored() -> None:
    f = read_facts(HEADER + custom("producers", b"\x05\x01"))
    assert f.producers == {}
    assert [c.name for c in f.custom_sections] == ["producers"]


def test_name_section_from_wat() -> None:
    f = facts("(module (func $named))")
    assert f.has_name_section
    assert not f.has_debug_info


def test_custom_section_name_must_be_utf8() -> None:
    with pytest.raises(FactsError, match="UTF-8"):
        read_facts(HEADER + section(0, b"\x02\xff\xfe"))


# --------------------------------------------------------------------------------------------
# Feature detection
# --------------------------------------------------------------------------------------------

FEATURE_CASES = {
    "simd": "(module (func (result v128) (v128.const i32x4 1 2 3 4)))",
    "simd-lanes": """(module (memory 1) (func (param v128) (result i32)
        (drop (v128.load8_lane 3 (i32.const 0) (local.get 0)))
        (drop (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 (local.get 0) (local.get 0)))
        (i32x4.extract_lane 2 (local.get 0))))""",
    "threads": """(module (memory 1 1 shared) (func (result i32)
        (atomic.fence) (i32.atomic.rmw.add (i32.const 0) (i32.const 1))))""",
    "bulk-memory": """(module (memory 1) (data "abc") (func
        (memory.init 0 (i32.const 0) (i32.const 0) (i32.const 1)) (data.drop 0)
        (memory.copy (i32.const 0) (i32.const 1) (i32.const 1))
        (memory.fill (i32.const 0) (i32.const 0) (i32.const 1))))""",
    "reference-types": """(module (table 1 funcref) (func (param externref) (result i32)
        (drop (ref.is_null (local.get 0))) (table.size 0)))""",
    "multi-value": "(module (func (result i32 i32) (i32.const 1) (i32.const 2)))",
    "multi-value-block": """(module (func (param i32) (result i32)
        (local.get 0) (block (param i32) (result i32) (i32.const 1) (i32.add))))""",
    "tail-call": "(module (func $f (return_call $f)))",
    "memory64": "(module (memory i64 1) (func (drop (i32.load (i64.const 0)))))",
    "multi-memory": """(module (memory 1) (memory $m2 1)
        (func (drop (i32.load $m2 (i32.const 0))) (drop (memory.size $m2))))""",
    "exceptions": """(module (tag $e (param i32)) (func (block $l (result i32)
        (try_table (catch $e $l) (throw $e (i32.const 1)))) (drop)))""",
    "exceptions-legacy": """(module (tag $e (param i32))
        (func try (throw $e (i32.const 1)) catch $e drop catch_all end))""",
    "sign-extension": "(module (func (param i32) (result i32) (i32.extend8_s (local.get 0))))",
    "saturating-float-to-int": """(module (func (param f64) (result i64)
        (i64.trunc_sat_f64_u (local.get 0))))""",
    "gc": """(module (type $s (struct (field (mut i32)))) (type $a (array i8))
        (func (result i32) (struct.get $s 0 (struct.new $s (i32.const 1)))))""",
    "function-references": """(module (type $t (func)) (elem declare func $f)
        (func $f (call_ref $t (ref.func $f))))""",
    "extended-const": """(module (global i32
        (i32.add (i32.const 1) (i32.mul (i32.const 2) (i32.const 3)))))""",
    "mutable-globals": '(module (global (export "g") (mut i32) (i32.const 0)))',
}


@pytest.mark.parametrize("case", sorted(FEATURE_CASES))
def test_feature_detected(case: str) -> None:
    feature = case
    for suffix in ("-lanes", "-block", "-legacy"):
        feature = feature.replace(suffix, "")
    f = facts(FEATURE_CASES[case])
    assert feature in f.features, f.features
    assert "unknown" not in f.features
    assert f.features <= FEATURES


def test_bulk_memory_from_data_count_and_passive_segment() -> None:
    f = facts('(module (memory 1) (data $d "xyz"))')
    assert f.data_segments == (3,)
    assert "bulk-memory" in f.features


def test_feature_precision() -> None:
    # A plain funcref table, one memory and a single-result function use nothing post-MVP.
    f = facts(
        "(module (table 1 funcref) (memory 1) (func (result i32) (i32.const 0))"
        " (elem (i32.const 0) func 0))"
    )
    assert f.features == frozenset()
    # multi-value but not tail-call etc.
    assert facts(FEATURE_CASES["multi-value"]).features == {"multi-value"}
    assert facts(FEATURE_CASES["sign-extension"]).features == {"sign-extension"}
    assert facts(FEATURE_CASES["tail-call"]).features == {"tail-call"}


def test_unknown_opcode_is_lenient() -> None:
    # Two functions; the first body uses the unassigned opcode 0x27, the second is fine.
    types = section(1, b"\x01\x60\x00\x00")
    funcs = section(3, b"\x02\x00\x00")
    exports = section(7, b"\x01" + name("f") + b"\x00\x00")
    bad_body = b"\x00\x27\x0b"
    good_body = b"\x00\xc0\x1a\x0b"  # i32.extend8_s, drop (scanned: sign-extension)
    code = section(10, b"\x02" + leb(3) + bad_body + leb(4) + good_body)
    f = read_facts(HEADER + types + funcs + exports + code)
    assert "unknown" in f.features
    assert "sign-extension" in f.features  # scanning went on with the next body
    assert f.functions == 2 and str(f.export("f").type) == "() -> ()"


def test_feature_names_match_the_capability_vocabulary() -> None:
    from wasmsbx.capabilities import WASM_FEATURES

    assert FEATURES - {"unknown"} <= set(WASM_FEATURES)


def test_proposals_outside_the_vocabulary() -> None:
    relaxed = facts(
        """(module (func (param v128) (result v128)
            (f32x4.relaxed_madd (local.get 0) (local.get 0) (local.get 0))))"""
    )
    # Relaxed SIMD is its own proposal (wasmer lacks it while it has SIMD: issue #13).
    assert relaxed.features == {"simd", "relaxed-simd"}
    # Wide arithmetic is decoded (the scan goes on: sign-extension is still seen) but has no
    # capability name, so it is reported as "unknown".
    wide = facts(
        """(module (func (param i64) (result i64)
            (drop (i64.add128 (local.get 0) (local.get 0) (local.get 0) (local.get 0)))
            (drop) (i64.extend32_s (local.get 0))))"""
    )
    assert wide.features == {"unknown", "sign-extension"}


def test_unknown_opcode_in_constant_expression_is_an_error() -> None:
    data = HEADER + section(6, leb(1) + b"\x7f\x00" + b"\x27\x0b")
    with pytest.raises(FactsError, match="unknown opcode 0x27"):
        read_facts(data)


# --------------------------------------------------------------------------------------------
# Malformed input
# --------------------------------------------------------------------------------------------


def test_empty_input() -> None:
    with pytest.raises(FactsError, match="not a WebAssembly binary"):
        read_facts(b"")


def test_bad_magic() -> None:
    with pytest.raises(FactsError, match=r"not a WebAssembly binary \(bad magic\)"):
        read_facts(b"\x7fELF\x02\x01\x01\x00")
    with pytest.raises(FactsError, match="bad magic"):
        read_facts(b"(module)")


def test_bad_version() -> None:
    with pytest.raises(FactsError, match="version") as exc:
        read_facts(b"\x00asm\x02\x00\x00\x00")
    assert exc.value.component is False


def test_component_is_rejected_with_flag() -> None:
    with pytest.raises(FactsError, match="component, not a core module") as exc:
        read_facts(b"\x00asm\x0d\x00\x01\x00")
    assert exc.value.component is True


def test_truncated_header() -> None:
    with pytest.raises(FactsError, match="truncated header"):
        read_facts(b"\x00asm\x01\x00")


def test_messages_name_offsets() -> None:
    with pytest.raises(FactsError, match=r"truncated section 10 at offset 0x8") as exc:
        read_facts(HEADER + b"\x0a\x20\x01")
    assert exc.value.offset == 8
    with pytest.raises(FactsError, match="duplicate section 1"):
        read_facts(HEADER + section(1, b"\x00") + section(1, b"\x00"))
    with pytest.raises(FactsError, match="out of order"):
        read_facts(HEADER + section(3, b"\x00") + section(1, b"\x00"))
    with pytest.raises(FactsError, match="exceeds the remaining bytes"):
        read_facts(HEADER + section(2, leb(0xFFFFFFFF)))
    with pytest.raises(FactsError, match="integer representation too long"):
        read_facts(HEADER + section(8, b"\x80\x80\x80\x80\x80\x00"))
    with pytest.raises(FactsError, match="missing code section"):
        read_facts(HEADER + section(1, b"\x01\x60\x00\x00") + section(3, b"\x01\x00"))


def section_boundaries(data: bytes) -> set[int]:
    """Offsets at which a prefix of ``data`` is itself a complete module."""
    pos, out = 8, {8}
    while pos < len(data):
        pos += 1
        size = shift = 0
        while True:
            b = data[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        pos += size
        out.add(pos)
    return out


def test_every_truncation_raises_facts_error(rich_bytes: bytes) -> None:
    simd = wat(FEATURE_CASES["simd-lanes"])
    for data in (rich_bytes, simd):
        boundaries = section_boundaries(data)
        for n in range(len(data)):
            try:
                read_facts(data[:n])
            except FactsError as exc:
                assert "internal" not in str(exc)
            else:
                # Only a cut between two sections can leave a well-formed module.
                assert n in boundaries, n


def test_every_single_byte_corruption_is_contained(rich_bytes: bytes) -> None:
    for i in range(8, len(rich_bytes)):
        for value in (0x00, 0x7F, 0x80, 0xFF):
            data = rich_bytes[:i] + bytes([value]) + rich_bytes[i + 1 :]
            try:
                read_facts(data)
            except FactsError as exc:
                assert "internal" not in str(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=512))
def test_random_bytes_after_header(payload: bytes) -> None:
    try:
        f = read_facts(HEADER + payload)
    except FactsError as exc:
        assert "internal" not in str(exc)
        assert "offset" in str(exc)
    else:
        json.dumps(f.to_dict())


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_mutations_of_a_real_module(data: st.DataObject) -> None:
    module = bytearray(wat(RICH))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(8, len(module) - 1))
        module[i] = data.draw(st.integers(0, 255))
    try:
        read_facts(bytes(module))
    except FactsError as exc:
        assert "internal" not in str(exc)


def test_huge_declared_counts_do_not_allocate() -> None:
    # A body whose br_table claims 2**32-1 targets, and one declaring 2**32-1 locals.
    types = section(1, b"\x01\x60\x00\x00")
    funcs = section(3, b"\x02\x00\x00")
    body1 = b"\x00\x41\x00\x0e" + leb(0xFFFFFFFF) + b"\x00\x0b"
    body2 = b"\x01" + leb(0xFFFFFFFF) + b"\x7f\x0b"
    code = section(10, b"\x02" + leb(len(body1)) + body1 + leb(len(body2)) + body2)
    with pytest.raises(FactsError, match="truncated function body 0"):
        read_facts(HEADER + types + funcs + code)
    # The locals declaration alone is fine: counts are not materialised.
    code = section(10, b"\x01" + leb(len(body2)) + body2)
    f = read_facts(HEADER + types + section(3, b"\x01\x00") + code)
    assert f.functions == 1


# --------------------------------------------------------------------------------------------
# load_facts
# --------------------------------------------------------------------------------------------


def test_load_facts_wat_and_binary(tmp_path) -> None:
    src = tmp_path / "add.wat"
    src.write_text(
        ';; a comment\n(; block (; nested ;) ;)\n(module (func (export "add") (param i32 i32)'
        " (result i32) (i32.add (local.get 0) (local.get 1))))\n"
    )
    f = load_facts(src)
    assert str(f.export("add").type) == "(i32, i32) -> i32"

    as_text = tmp_path / "module.txt"  # no .wat suffix: detected by content
    as_text.write_text("  (module (memory 3))")
    assert load_facts(str(as_text)).memories[0].limits.min == 3

    binary = tmp_path / "add.wasm"
    binary.write_bytes(wat(src.read_text()))
    assert load_facts(binary) == f


def test_load_facts_broken_wat(tmp_path) -> None:
    src = tmp_path / "broken.wat"
    src.write_text('(module (func (export "f") (i32.bogus)))')
    with pytest.raises(FactsError, match="invalid WAT") as exc:
        load_facts(src)
    assert "\n" not in str(exc.value)


def test_load_facts_not_wasm(tmp_path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"#!/bin/sh\necho hi\n")
    with pytest.raises(FactsError, match="bad magic"):
        load_facts(junk)
