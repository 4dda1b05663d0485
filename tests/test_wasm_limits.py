"""wasm_limits.cap_limits: the policy's caps written into a module's declared maxima."""

from __future__ import annotations

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmsbx.backends.limits import PAGE, LimitsError, cap_limits
from wasmsbx.wasm.facts import read_facts


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def declared(wasm: bytes) -> tuple:
    """((min, max) of each defined memory, (min, max) of each defined table), via facts."""
    facts = read_facts(wasm)
    memories = tuple((m.limits.min, m.limits.max) for m in facts.memories if not m.imported)
    tables = tuple((t.limits.min, t.limits.max) for t in facts.tables if not t.imported)
    return memories, tables


def test_memory_without_maximum_gets_the_cap():
    capped = cap_limits(wat("(module (memory 1))"), 4 * PAGE, None)
    assert declared(capped.wasm) == (((1, 4),), ())
    assert capped.memories == ((1, None),)  # what the module declared


def test_larger_maximum_is_lowered_and_smaller_one_kept():
    assert declared(cap_limits(wat("(module (memory 1 100))"), 10 * PAGE, None).wasm)[0] == (
        (1, 10),
    )
    assert declared(cap_limits(wat("(module (memory 1 3))"), 10 * PAGE, None).wasm)[0] == ((1, 3),)


def test_cap_is_whole_pages_rounded_down():
    assert declared(cap_limits(wat("(module (memory 0))"), PAGE * 5 + 100, None).wasm)[0] == (
        (0, 5),
    )


def test_module_needing_more_than_the_cap_is_left_for_instantiation_to_refuse():
    capped = cap_limits(wat("(module (memory 8))"), 2 * PAGE, None)
    assert declared(capped.wasm)[0] == ((8, None),)
    assert capped.memories == ((8, None),)


def test_tables_are_capped_and_other_sections_kept_byte_for_byte():
    source = wat(
        '(module (table 2 funcref) (table 0 100 externref) (func $f (export "f") (result i32) '
        "i32.const 7) (elem (i32.const 0) $f))"
    )
    capped = cap_limits(source, None, 50)
    assert declared(capped.wasm)[1] == ((2, 50), (0, 50))
    assert capped.tables == ((2, None), (0, 100))
    # the sections after the table section (code: every function offset in a backtrace)
    # are unchanged
    assert source[-24:] == capped.wasm[-24:]
    wasmtime.Module(wasmtime.Engine(), capped.wasm)  # still valid


def test_no_caps_no_change():
    source = wat("(module (memory 1) (table 1 funcref))")
    assert cap_limits(source, None, None).wasm == source


def test_not_a_module_is_refused():
    with pytest.raises(LimitsError):
        cap_limits(b"(module)", PAGE, 1)


@settings(max_examples=60, deadline=None)
@given(
    minimum=st.integers(0, 300),
    maximum=st.one_of(st.none(), st.integers(0, 70000)),
    cap_pages=st.integers(0, 70000),
    table_min=st.integers(0, 300),
    table_cap=st.integers(0, 100000),
)
def test_rewritten_module_is_valid_and_capped(minimum, maximum, cap_pages, table_min, table_cap):
    if maximum is not None:
        maximum = max(maximum, minimum)
        maximum = min(maximum, 65536)
    limits = f"{minimum} {maximum}" if maximum is not None else f"{minimum}"
    source = wat(f"(module (memory {limits}) (table {table_min} funcref))")
    capped = cap_limits(source, cap_pages * PAGE, table_cap)
    (memory,), (table,) = declared(capped.wasm)
    cap = min(cap_pages, 65536)  # no 32-bit memory may declare more than 4 GiB
    if minimum <= cap:
        assert memory == (minimum, min(cap, maximum if maximum is not None else cap))
    else:
        assert memory == (minimum, maximum)
    if table_min <= table_cap:
        assert table == (table_min, table_cap)
    wasmtime.Module(wasmtime.Engine(), capped.wasm)  # the rewrite keeps it valid
