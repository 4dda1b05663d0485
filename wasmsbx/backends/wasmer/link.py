"""Host items and linking on wasmer: what a group's child process needs to link a member.

wasmer-python 1.1 runs every instance of a group in one forked child (engine.py), so the
parent decides here, before anything is sent, how each import of a new member is
satisfied: a host function (served by the parent over the pipe), a host global, memory
or table (made in the child by a small generated module, so a global keeps its exact
bits and every memory and table gets the cap the limits allow), or an export of an
earlier member (registered by name, or passed as ``box.export(name)``).

Limits in a group: see limits.Budget.
"""

from __future__ import annotations

from typing import Any, Optional

from ... import errors

# (At import, not in the functions that use it: the first calls of sandboxes in several
# threads at once imported it together, and Python 3.9 handed one of them the module
# half made: "cannot import name 'Global' from partially initialized module".)
from ...host import Global, HostFunc, Memory, Table
from ..base import missing_imports_error
from ..limits import PAGE, Budget, Layout


class GroupState:
    """What the parent knows about the instances living in one child process."""

    def __init__(self, limits: Any, in_group: bool) -> None:
        self.in_group = in_group
        self.budget = Budget(limits, in_group)
        self.items: dict = {}  # id(host Global/Memory/Table) -> key in the child
        self.kept: list = []  # the host objects themselves (their ids stay theirs)
        self.host: list = []  # [(module, name, HostFunc)]: key = index
        self.members: list = []  # WasmerInstance per member index
        self.registered: dict = {}  # name -> member index
        self.host_raised: Optional[BaseException] = None
        self.sent_host = 0  # host functions the child already knows
        self.wires: dict = {}  # host function key -> its compiled wire module (wire_wat), a Native
        self.sent_wires: set = set()


class Export:
    """An export of a wasmer group member, to pass in another member's ``imports=``."""

    def __init__(self, owner: GroupState, member: int, name: str) -> None:
        self._owner = owner
        self._extern = (member, name)


def resolve(imports: list, given: dict, state: GroupState, exports_of: Any) -> tuple:
    """``(link, new_funcs, new_items)`` for the non-WASI ``imports`` of a new member.

    link: ``[(module, name, source)]`` with source ``("func", key)``, ``("item", key)`` or
    ``("export", member, name)``. LinkError names every import nobody provides."""
    link, funcs, items, missing = [], [], [], []
    for imp in imports:
        item = given.get(imp.module, {}).get(imp.name)
        if item is None and imp.module in state.registered:
            member = state.registered[imp.module]
            if imp.name in exports_of(member):
                link.append((imp.module, imp.name, ("export", member, imp.name)))
                continue
        if item is None:
            missing.append(f"{imp.kind} {imp.module}.{imp.name}")
        elif isinstance(item, HostFunc):
            _check_func(imp, item)
            funcs.append((imp.module, imp.name, item))
            link.append((imp.module, imp.name, ("func", len(state.host) + len(funcs) - 1)))
        elif isinstance(item, (Global, Memory, Table)):
            if id(item) not in state.items and all(i is not item for i in items):
                items.append(item)
            link.append((imp.module, imp.name, ("item", item)))
        elif getattr(item, "_owner", None) is state:
            link.append((imp.module, imp.name, ("export", *item._extern)))
        else:
            from ..base import PROVIDABLE, unprovidable

            raise errors.LinkError(
                f"import {imp.module}.{imp.name}: {unprovidable(item)}", hint=PROVIDABLE
            )
    if missing:
        raise missing_imports_error(missing)
    return link, funcs, items


def _check_func(imp: Any, item: Any) -> None:
    if imp.kind != "func":
        raise errors.LinkError(
            f"cannot link module: import {imp.module}.{imp.name} is a {imp.kind}, "
            "but a host function was given"
        )
    odd = [t for t in (*item.params, *item.results) if t in ("funcref", "externref")]
    if odd:
        raise errors.BackendUnavailable(
            f"import {imp.module}.{imp.name}: wasmer-python's host functions cannot take "
            f"reference values ({', '.join(sorted(set(odd)))})",
            hint="use --backend wasmtime for host functions with reference types",
        )


def plan_member(found: Optional[Layout], items: list, state: GroupState) -> tuple:
    """Per-item caps ``(memory bytes each, table elements each or None)`` for a new
    member and the host memories and tables it brings (limits.Budget)."""
    memories = [(m.min * PAGE, _pages(m.max)) for m in items if isinstance(m, Memory)]
    tables = [(t.min, t.max) for t in items if isinstance(t, Table)]
    caps = state.budget.take(found, memories, tables)
    return caps.memory_each, caps.table_each


def _pages(pages: Optional[int]) -> Optional[int]:
    return None if pages is None else pages * PAGE


def items_wat(items: list, keys: list, memory_each: int, table_each: Optional[int]) -> str:
    """A module exporting each host item as ``h<key>``: globals with their exact value,
    memories and tables with their maximum capped at the member's share."""
    lines = ["(module"]
    for key, item in zip(keys, items):
        name = f'"h{key}"'
        if isinstance(item, Global):
            ty = f"(mut {item.type})" if item.mutable else item.type
            lines.append(f"(global (export {name}) {ty} {_const(item.type, item.value)})")
        elif isinstance(item, Memory):
            cap = memory_each // PAGE
            top = cap if item.max is None else min(item.max, cap)
            lines.append(f"(memory (export {name}) {item.min} {top})")
        else:
            top = item.max
            if table_each is not None:
                top = table_each if top is None else min(top, table_each)
            bound = "" if top is None else f" {top}"
            lines.append(f"(table (export {name}) {item.min}{bound} {item.type})")
    return "\n".join(lines) + ")"


def _const(wasm_type: str, value: Any) -> str:
    """A constant expression for ``value`` with its exact bits."""
    if wasm_type in ("i32", "i64"):
        return f"({wasm_type}.const {int(value)})"
    if wasm_type in ("f32", "f64"):
        return f"({wasm_type}.const {_float_text(value, wasm_type)})"
    if wasm_type == "v128":
        n = int(value) % 2**128
        return f"(v128.const i64x2 {n % 2**64} {n >> 64})"
    if value is not None:
        raise errors.BackendUnavailable(
            f"a host {wasm_type} global on wasmer can only be null (wasmer-python cannot "
            "pass a reference into the child)",
            hint="use --backend wasmtime for non-null reference globals",
        )
    return f"(ref.null {'func' if wasm_type == 'funcref' else 'extern'})"


def _float_text(value: Any, wasm_type: str) -> str:
    from ...values import float_bits

    bits = float_bits(value, wasm_type)
    width, mantissa = (32, 23) if wasm_type == "f32" else (64, 52)
    sign = "-" if bits >> (width - 1) else ""
    exponent = (bits >> mantissa) & ((1 << (width - 1 - mantissa)) - 1)
    payload = bits & ((1 << mantissa) - 1)
    if exponent == (1 << (width - 1 - mantissa)) - 1:
        return f"{sign}inf" if payload == 0 else f"{sign}nan:0x{payload:x}"
    return float(value).hex()


WIRED = {"f32": ["i32"], "f64": ["i64"], "v128": ["i64", "i64"]}


def wire_types(types: Any) -> list:
    """The types a wired host function takes and gives across wasmer-python."""
    return [w for t in types for w in WIRED.get(t, [t])]


def wire_wat(params: Any, results: Any) -> Optional[str]:
    """A module that turns a host function over bit patterns (``h.f``, wire types) into
    one of the declared types (export ``f``): wasmer-python converts f32/f64 through C
    floats (a signalling NaN comes back quieted) and cannot declare v128. None when the
    signature needs no wiring."""
    if not any(t in WIRED for t in (*params, *results)):
        return None
    args = []
    for i, t in enumerate(params):
        if t == "f32":
            args.append(f"(i32.reinterpret_f32 (local.get {i}))")
        elif t == "f64":
            args.append(f"(i64.reinterpret_f64 (local.get {i}))")
        elif t == "v128":
            args.append(f"(i64x2.extract_lane 0 (local.get {i}))")
            args.append(f"(i64x2.extract_lane 1 (local.get {i}))")
        else:
            args.append(f"(local.get {i})")
    wired = wire_types(results)
    first = len(params)  # the wire results go to locals first..first+len(wired)-1
    keep = " ".join(f"(local.set {first + i})" for i in reversed(range(len(wired))))
    out, at = [], first
    for t in results:
        if t == "f32":
            out.append(f"(f32.reinterpret_i32 (local.get {at}))")
        elif t == "f64":
            out.append(f"(f64.reinterpret_i64 (local.get {at}))")
        elif t == "v128":
            out.append(
                f"(i64x2.replace_lane 1 (i64x2.replace_lane 0 (v128.const i64x2 0 0) "
                f"(local.get {at})) (local.get {at + 1}))"
            )
        else:
            out.append(f"(local.get {at})")
        at += len(WIRED.get(t, [t]))
    sig_p = " ".join(wire_types(params))
    sig_r = " ".join(wired)
    return (
        f'(module (import "h" "f" (func $h (param {sig_p}) (result {sig_r})))\n'
        f'(func (export "f") (param {" ".join(params)}) (result {" ".join(results)})'
        f" (local {sig_r})\n"
        f"(call $h {' '.join(args)}) {keep} {' '.join(out)}))"
    )
