"""Exact values on wasmer through a helper "trampoline" module.

wasmer-python 1.1 converts f32/f64 through C floats and doubles (a signalling NaN comes
back quieted: ``nan:0x200001`` reads as ``nan:0x600001``) and panics on any
reference-typed parameter or result ("not implemented", a pyo3 PanicException). So
every export whose signature has f32, f64, funcref or externref is called through a
small adapter module, written here as text and compiled in the parent (a forked child
must not compile): it imports the export and re-exports it with a "wire" signature that
wasmer does carry exactly:

- f32 <-> i32 and f64 <-> i64 bit patterns (``f32.reinterpret_i32`` and back);
- funcref <-> an i32 index into the adapter's own table (``table.grow`` stores a
  result, ``table.get`` passes it back), -1 for null;
- externref <-> likewise (only null can come from Python: wasmer-python cannot make
  a non-null externref, so such an argument is refused with that reason).

- v128 <-> two i64 (low, high): wasmer-python's own v128 conversion mixes up lanes
  when a function takes two v128 (spec simd_select: measured).

An adapter that cannot be
compiled (wasmer:singlepass has no multi-value) leaves the export on the direct path,
where floats are not bit-exact and references are refused with the reason.
"""

from __future__ import annotations

from typing import Any, Optional

from ...values import F32, F64, V128, FuncRef, float_bits

WIRE = {"f32": "i32", "f64": "i64", "funcref": "i32", "externref": "i32", "v128": "i64 i64"}
_TABLE = {"funcref": "$ft", "externref": "$et"}
_NULL = {"funcref": "func", "externref": "extern"}


def needs_adapter(signature: Any) -> bool:
    return any(t in WIRE for t in (*signature.params, *signature.results))


def _name(text: str) -> str:
    """A WAT string literal for any export name."""
    out = []
    for byte in text.encode("utf-8"):
        if 0x20 <= byte < 0x7F and byte not in (0x22, 0x5C):
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:02x}")
    return '"' + "".join(out) + '"'


def _param_in(i: int, wasm_type: str) -> str:
    """The wire parameter(s) from local ``i`` on, as one value of ``wasm_type``."""
    if wasm_type == "v128":
        return (
            f"(i64x2.replace_lane 1 (i64x2.replace_lane 0 (v128.const i64x2 0 0) "
            f"(local.get {i})) (local.get {i + 1}))"
        )
    if wasm_type == "f32":
        return f"(f32.reinterpret_i32 (local.get {i}))"
    if wasm_type == "f64":
        return f"(f64.reinterpret_i64 (local.get {i}))"
    if wasm_type in _TABLE:
        return (
            f"(if (result {wasm_type}) (i32.eq (local.get {i}) (i32.const -1)) "
            f"(then (ref.null {_NULL[wasm_type]})) (else (table.get {_TABLE[wasm_type]} "
            f"(local.get {i}))))"
        )
    return f"(local.get {i})"


def _result_out(local: str, wasm_type: str) -> str:
    if wasm_type == "v128":
        return (
            f"(i64x2.extract_lane 0 (local.get {local})) (i64x2.extract_lane 1 (local.get {local}))"
        )
    if wasm_type == "f32":
        return f"(i32.reinterpret_f32 (local.get {local}))"
    if wasm_type == "f64":
        return f"(i64.reinterpret_f64 (local.get {local}))"
    if wasm_type in _TABLE:
        return (
            f"(if (result i32) (ref.is_null (local.get {local})) (then (i32.const -1)) "
            f"(else (table.grow {_TABLE[wasm_type]} (local.get {local}) (i32.const 1))))"
        )
    return f"(local.get {local})"


def _types(keyword: str, types: Any) -> str:
    return f"({keyword} {' '.join(types)})" if types else ""


GET, SET = "\0get:", "\0set:"  # the adapter's accessors of exported globals


def _global_result(global_ref: str, wasm_type: str) -> str:
    if wasm_type == "v128":
        return (
            f"(i64x2.extract_lane 0 (global.get {global_ref})) "
            f"(i64x2.extract_lane 1 (global.get {global_ref}))"
        )
    if wasm_type in _TABLE:
        return (
            f"(if (result i32) (ref.is_null (global.get {global_ref})) (then (i32.const -1)) "
            f"(else (table.grow {_TABLE[wasm_type]} (global.get {global_ref}) (i32.const 1))))"
        )
    return f"({WIRE[wasm_type]}.reinterpret_{wasm_type} (global.get {global_ref}))"


def adapter_wat(signatures: dict, globals_: Optional[dict] = None) -> Optional[str]:
    """The adapter module's text for the exports that need one (None if none do).

    ``globals_``: exported globals ``name -> (type, mutable)``; those of a type that needs
    it get accessor functions ``"\0get:name"`` (and ``"\0set:name"`` when mutable)."""
    funcs = [(name, sig) for name, sig in signatures.items() if needs_adapter(sig)]
    globs = [(n, t, m) for n, (t, m) in (globals_ or {}).items() if t in WIRE]
    if not funcs and not globs:
        return None
    imports, bodies = [], []
    for n, (name, wasm_type, mutable) in enumerate(globs):
        ty = f"(mut {wasm_type})" if mutable else wasm_type
        imports.append(f'(import "t" {_name(name)} (global $g{n} {ty}))')
        bodies.append(
            f"(func (export {_name(GET + name)}) (result {WIRE[wasm_type]}) "
            f"{_global_result(f'$g{n}', wasm_type)})"
        )
        if mutable:
            bodies.append(
                f"(func (export {_name(SET + name)}) (param {WIRE[wasm_type]}) "
                f"(global.set $g{n} {_param_in(0, wasm_type)}))"
            )
    for n, (name, sig) in enumerate(funcs):
        params, results = sig.params, sig.results
        imports.append(
            f'(import "t" {_name(name)} (func $f{n} {_types("param", params)} '
            f"{_types('result', results)}))"
        )
        wire_params = [WIRE.get(t, t) for t in params]
        wire_results = [WIRE.get(t, t) for t in results]
        locals_ = " ".join(f"(local $r{j} {t})" for j, t in enumerate(results))
        wire_index, args_in = 0, []
        for t in params:
            args_in.append(_param_in(wire_index, t))
            wire_index += 2 if t == "v128" else 1
        body = [f"(call $f{n} " + " ".join(args_in) + ")"]
        body += [f"(local.set $r{j})" for j in reversed(range(len(results)))]
        body += [_result_out(f"$r{j}", t) for j, t in enumerate(results)]
        bodies.append(
            f"(func (export {_name(name)}) {_types('param', wire_params)} "
            f"{_types('result', wire_results)} {locals_}\n  " + "\n  ".join(body) + ")"
        )
    return "\n".join(
        ["(module", *imports, "(table $ft 0 funcref)", "(table $et 0 externref)", *bodies, ")"]
    )


class RefusedValue(Exception):
    """A value wasmer cannot carry (the message says why)."""


def to_wire(args: list, signature: Any, owner: Any, adapted: bool) -> list:
    """Typed values (values.coerce) as what wasmer takes for this call."""
    out = []
    for number, (value, wasm_type) in enumerate(zip(args, signature.params), 1):
        if wasm_type in ("f32", "f64"):
            if adapted:
                bits = float_bits(value, wasm_type)
                width = 32 if wasm_type == "f32" else 64
                out.append(bits - 2**width if bits >= 2 ** (width - 1) else bits)
            else:
                out.append(float(value))
        elif wasm_type in _TABLE:
            if not adapted:
                raise RefusedValue(
                    "wasmer-python cannot pass reference values to this export "
                    "(its helper module did not compile with this compiler)"
                )
            if value is None:
                out.append(-1)
            elif wasm_type == "funcref" and isinstance(value, FuncRef) and value._owner is owner:
                out.append(value._func)
            elif wasm_type == "funcref":  # (the caller's mistake, as on wasmtime: not
                # the backend's gap, BackendUnavailable 104, red team 152)
                from ... import errors

                raise errors.UsageError(
                    f"argument {number}: a funcref of another sandbox, or of one closed since"
                )
            else:
                raise RefusedValue(
                    "wasmer-python cannot create a non-null externref; only null is possible "
                    "on this backend (wasmtime passes any Python object)"
                )
        elif wasm_type == "v128":
            if adapted:
                number = int(value)
                out += [_signed(number % 2**64, 64), _signed(number >> 64, 64)]
            else:
                out.append(int(value))
        else:
            out.append(value)
    return out


def _signed(value: int, width: int) -> int:
    return value - 2**width if value >= 2 ** (width - 1) else value


def from_wire(values: list, signature: Any, owner: Any, adapted: bool) -> list:
    """What wasmer returned, as typed values (F32/F64 with bits, V128, FuncRef)."""
    out: list = []
    values = list(values)
    for wasm_type in signature.results:
        value = values.pop(0)
        if wasm_type == "v128" and adapted:
            out.append(V128(value % 2**64 + (values.pop(0) % 2**64 << 64)))
            continue
        if wasm_type in ("f32", "f64"):
            wrap = F32 if wasm_type == "f32" else F64
            if adapted:
                out.append(wrap.from_bits(value % 2 ** (32 if wasm_type == "f32" else 64)))
            else:
                out.append(wrap(value))
        elif wasm_type == "v128":
            out.append(V128(value % 2**128))
        elif wasm_type in _TABLE:
            if value == -1:
                out.append(None)
            else:
                out.append(FuncRef(value, owner))  # an index in the adapter's table
        else:
            out.append(value)
    return out
