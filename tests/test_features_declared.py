"""Every backend's declared wasm features are true: one module per proposal.

A label must compile (and run) the module of every feature it declares, and must refuse
the module of every feature it does not declare, so the capability matrix that
``wasmsbx backends`` shows and the selector uses is measured, not assumed.
"""

from __future__ import annotations

import pytest
import wasmtime

from wasmsbx import backends, errors
from wasmsbx.backends.base import EngineOptions, Limits

from .conftest import capabilities_of

# feature -> (module text, args of f, expected results of f)
MODULES = {
    "mutable-globals": ('(module (global (export "g") (mut i32) (i32.const 0)))', None, None),
    "sign-extension": (
        '(module (func (export "f") (param i32) (result i32) local.get 0 i32.extend8_s))',
        [0x80],
        [-128],
    ),
    "saturating-float-to-int": (
        '(module (func (export "f") (param f64) (result i32) local.get 0 i32.trunc_sat_f64_s))',
        [1e20],
        [2147483647],
    ),
    "bulk-memory": (
        '(module (memory 1) (func (export "f") (result i32) i32.const 0 i32.const 7 i32.const 4 '
        "memory.fill i32.const 2 i32.load8_u))",
        [],
        [7],
    ),
    "reference-types": (
        '(module (table 1 externref) (func (export "f") (result i32) ref.null extern ref.is_null))',
        [],
        [1],
    ),
    "multi-value": (
        '(module (func (export "f") (result i32 i32) i32.const 1 i32.const 2))',
        [],
        [1, 2],
    ),
    "simd": (
        '(module (func (export "f") (result i32) v128.const i32x4 5 6 7 8 i32x4.extract_lane 1))',
        [],
        [6],
    ),
    "relaxed-simd": (
        '(module (func (export "f") (result i32) v128.const i32x4 5 6 7 8 '
        "v128.const i32x4 0 0 0 0 v128.const i32x4 1 1 1 1 i32x4.relaxed_laneselect "
        "i32x4.extract_lane 1))",
        [],
        [0],
    ),
    "threads": (
        '(module (memory 1 1 shared) (func (export "f") (result i32) i32.const 0 i32.atomic.load))',
        None,
        None,
    ),
    "tail-call": (
        "(module (func $g (result i32) i32.const 1) "
        '(func (export "f") (result i32) return_call $g))',
        [],
        [1],
    ),
    "memory64": (
        '(module (memory i64 1) (func (export "f") (result i32) i64.const 0 i32.load))',
        [],
        [0],
    ),
    "multi-memory": (
        "(module (memory 1) (memory $b 1) "
        '(func (export "f") (result i32) i32.const 0 i32.load $b))',
        None,
        None,
    ),
    "exceptions": (
        '(module (tag $e (param i32)) (func (export "f") (result i32) (block $h (result i32) '
        "(try_table (catch $e $h) i32.const 7 throw $e) i32.const 0)))",
        [],
        [7],
    ),
    "gc": (
        '(module (type $s (struct (field i32))) (func (export "f") (result i32) i32.const 5 '
        "struct.new $s struct.get $s 0))",
        [],
        [5],
    ),
    "function-references": (
        "(module (type $t (func (result i32))) (func $g (type $t) i32.const 3) "
        "(elem declare func $g) "
        '(func (export "f") (result i32) ref.func $g call_ref $t))',
        [],
        [3],
    ),
    "extended-const": (
        '(module (global (export "g") i32 (i32.add (i32.const 1) (i32.const 2))))',
        None,
        None,
    ),
}
LIMITS = Limits(memory=16 << 20, timeout=10.0, table_elements=1000, instances=1)


def engine_for(label: str):
    name, compiler = backends.split(label)
    adapter = backends.get(name)
    return adapter.engine(EngineOptions(compiler=compiler or adapter.default_compiler))


@pytest.mark.parametrize("feature", sorted(MODULES))
def test_declared_features_are_true(backend, feature):
    text, args, expected = MODULES[feature]
    wasm = bytes(wasmtime.wat2wasm(text))
    engine = engine_for(backend)
    if not capabilities_of(backend).has(feature):
        with pytest.raises(errors.WasmsbxError):
            engine.compile(wasm)
        return
    module = engine.compile(wasm)
    if args is None:
        return
    instance = engine.instantiate(module, LIMITS)
    try:
        assert instance.call("f", args) == expected
    finally:
        instance.close()


def test_feature_list_is_complete():
    """Every proposal in the vocabulary that a core module can use has a test module."""
    from wasmsbx.capabilities import WASM_FEATURES

    assert set(WASM_FEATURES) - set(MODULES) == {"component-model"}


# Gaps inside a declared proposal: (module text, labels that lack it). A label with the
# gap must refuse the module up front (BackendUnavailable, exit 104, naming the gap); any
# other label that declares the proposal must run it.
GAPS = {
    "simd operators finished last": (
        '(module (func (export "f") (result i32) v128.const i32x4 5 6 7 8 i8x16.popcnt '
        "i32x4.extract_lane 1))",
        "simd",
        ("wasmer:cranelift", "wasmer"),
        [2],
    ),
    "externref element segment": (
        "(module (table 1 externref) (elem (table 0) (i32.const 0) externref (ref.null extern)) "
        '(func (export "f") (result i32) i32.const 0 table.get 0 ref.is_null))',
        "reference-types",
        ("wasmer:cranelift", "wasmer:llvm", "wasmer:singlepass", "wasmer"),
        [1],
    ),
}


@pytest.mark.parametrize("gap", sorted(GAPS))
def test_gaps_inside_declared_features_are_refused_up_front(backend, gap):
    text, feature, lacking, expected = GAPS[gap]
    if not capabilities_of(backend).has(feature):
        pytest.skip(f"{backend} does not declare {feature}")
    engine = engine_for(backend)
    wasm = bytes(wasmtime.wat2wasm(text))
    if backend in lacking:
        with pytest.raises(errors.BackendUnavailable, match="cannot run this module: it uses"):
            engine.compile(wasm)
        return
    instance = engine.instantiate(engine.compile(wasm), LIMITS)
    try:
        assert instance.call("f", []) == expected
    finally:
        instance.close()
