"""A trap while a module is instantiated names what trapped: its start function, or,
without one, its data and element segments (round 40 LOW: "start function trapped" for
a module that has none, whose data segment lies past its memory)."""

from __future__ import annotations

import pytest

import wasmsbx
from wasmsbx import errors

from .conftest import BACKENDS

pytestmark = pytest.mark.skipif("wasmtime" not in BACKENDS, reason="wasmtime's messages")


def test_a_data_segment_out_of_bounds_without_a_start_function():
    wat = (
        b'(module (memory 1) (data (i32.const 70000) "x")'
        b' (func (export "f") (result i32) i32.const 1))'
    )
    with pytest.raises(errors.TrapError) as info:
        wasmsbx.Sandbox(wat, backend="wasmtime").call("f")
    assert "start function" not in info.value.message
    assert "data and element segments" in info.value.message


def test_a_start_function_that_traps_is_named():
    wat = b'(module (func $s unreachable) (start $s) (func (export "f") (result i32) i32.const 1))'
    with pytest.raises(errors.TrapError, match="start function"):
        wasmsbx.Sandbox(wat, backend="wasmtime").call("f")


def test_an_uncaught_exception_is_told_as_one():
    # (red team 148: "a WASI call refused its arguments: thrown Wasm exception", in a
    # module that calls no WASI)
    module = (
        b"(module (tag $t (param i32)) (func $s (throw $t (i32.const 1))) (start $s)"
        b' (func (export "f") (result i32) i32.const 1))'
    )
    with pytest.raises(errors.TrapError) as caught:
        wasmsbx.Sandbox(module, backend="wasmtime").call("f")
    assert "caught by no handler" in str(caught.value) and "WASI" not in str(caught.value)
