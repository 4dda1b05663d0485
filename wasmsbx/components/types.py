"""WIT types, read from wasmtime-py's component introspection into plain records.

``WitType`` is a small tree (kind plus what the kind needs) that the value converters,
WAVE, typed JSON, audit and watch share; ``str()`` spells it as WIT does
(``list<f64>``, ``result<s64, string>``, ``record { name: string, n: u32 }``;
introspection has no type names, so records, variants, enums and flags are spelled out).
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Optional

INTS = {
    "s8": (-(2**7), 2**7 - 1),
    "s16": (-(2**15), 2**15 - 1),
    "s32": (-(2**31), 2**31 - 1),
    "s64": (-(2**63), 2**63 - 1),
    "u8": (0, 2**8 - 1),
    "u16": (0, 2**16 - 1),
    "u32": (0, 2**32 - 1),
    "u64": (0, 2**64 - 1),
}
FLOATS = ("f32", "f64")
SCALARS = frozenset(INTS) | frozenset(FLOATS) | {"bool", "char", "string"}
# The simple wasmtime-py ValType classes, by class name.
_SIMPLE = {
    "Bool": "bool",
    "S8": "s8",
    "S16": "s16",
    "S32": "s32",
    "S64": "s64",
    "U8": "u8",
    "U16": "u16",
    "U32": "u32",
    "U64": "u64",
    "F32": "f32",
    "F64": "f64",
    "Char": "char",
    "String": "string",
    "ErrorContext": "error-context",
}


class WitType(namedtuple("WitType", "kind items", defaults=((),))):
    """One WIT value type.

    ``items`` by kind: list/option: (element,); result: (ok or None, err or None);
    tuple: element types; record: ((field, type), ...); variant: ((case, type or None),
    ...); enum/flags: names; own/borrow: (resource name,); scalars: ().
    """

    kind: str
    items: tuple
    __slots__ = ()

    def __str__(self) -> str:
        return spell(self)

    def to_dict(self) -> dict:
        return {"wit": spell(self), "kind": self.kind}


class FuncSig(namedtuple("FuncSig", "params result")):
    """A component function's type: ((name, WitType), ...) and one result or None."""

    params: tuple
    result: Optional[WitType]
    __slots__ = ()

    def __str__(self) -> str:
        params = ", ".join(f"{n}: {t}" for n, t in self.params)
        return f"func({params})" + (f" -> {self.result}" if self.result is not None else "")

    @property
    def param_types(self) -> tuple:
        return tuple(t for _, t in self.params)


class _ByIdentity:
    """``make(t)`` kept for each type object: a ``WitType`` is a tuple, hashed and
    compared by walking all of it, so a cache keyed by the type (``lru_cache``) costs the
    type's size on every lookup. Values are converted, printed and sized element by
    element, and a guest chooses its types: a list of a 5,000-case variant cost 5,000
    steps per element (red team round 35). Keyed by identity, a lookup is one step; the
    types of a call are the same objects for all its values. Each entry keeps its type
    alive, so an id is never reused while it is here; emptied when full."""

    def __init__(self, make: Any, size: int = 4096) -> None:
        self.make, self.size, self.kept = make, size, {}

    def __call__(self, t: WitType) -> Any:
        hit = self.kept.get(id(t))
        if hit is not None:
            return hit[1]
        value = self.make(t)
        if len(self.kept) >= self.size:
            self.kept.clear()
        self.kept[id(t)] = (t, value)
        return value


def per_type(make: Any) -> Any:
    """Decorator: ``make(t)`` computed once per type object (see _ByIdentity)."""
    return _ByIdentity(make)


@per_type
def case_types(t: WitType) -> dict:
    """A variant's, option's or result's cases: name -> payload type (None without one)."""
    if t.kind == "option":
        return {"none": None, "some": t.items[0]}
    if t.kind == "result":
        return {"ok": t.items[0], "err": t.items[1]}
    return dict(t.items)


@per_type
def name_set(t: WitType) -> frozenset:
    """An enum's or flags' names."""
    return frozenset(t.items)


def spell(t: WitType) -> str:
    """The WIT spelling of ``t``."""
    k, items = t.kind, t.items
    if k in ("list", "option", "future", "stream"):
        return f"{k}<{spell(items[0])}>" if items and items[0] is not None else k
    if k == "result":
        ok, err = items
        if ok is None and err is None:
            return "result"
        if err is None:
            return f"result<{spell(ok)}>"
        return f"result<{'_' if ok is None else spell(ok)}, {spell(err)}>"
    if k == "tuple":
        return "tuple<" + ", ".join(spell(e) for e in items) + ">"
    if k == "record":
        return "record { " + ", ".join(f"{n}: {spell(f)}" for n, f in items) + " }"
    if k == "variant":
        cases = (n if c is None else f"{n}({spell(c)})" for n, c in items)
        return "variant { " + ", ".join(cases) + " }"
    if k in ("enum", "flags"):
        return f"{k} {{ " + ", ".join(items) + " }"
    if k in ("own", "borrow"):
        return f"{k}<{items[0]}>"
    return k


# What one function's WIT signature may expand to. wasmtime hands types over as a tree,
# though a component stores them as a graph: a record doubled into a tuple 18 times is
# 365 bytes of component and 262,144 records expanded (6.3 s in Sandbox(), outside every
# timeout; with 1,000-character field names, 134 MB printed by --json: red team round 34).
TYPE_PARTS = 10_000  # types and labels, per function
TYPE_TEXT = 64 << 10  # bytes of labels (field, case, enum and flag names), per function
COMPONENT_PARTS = 100_000  # and for every exported function together (~2 s to read)


class TypeTooLarge(Exception):
    """A function's WIT types expand past TYPE_PARTS or TYPE_TEXT."""


class Budget:
    """What is left of TYPE_PARTS and TYPE_TEXT (and of COMPONENT_PARTS: ``total``)."""

    __slots__ = ("parts", "text", "total")

    def __init__(
        self, total: Optional[Budget] = None, parts: int = TYPE_PARTS, text: int = TYPE_TEXT
    ) -> None:
        self.parts, self.text, self.total = parts, text, total

    def spend(self, parts: int, text: int = 0) -> None:
        self.parts -= parts
        self.text -= text
        if self.parts < 0 or self.text < 0:
            raise TypeTooLarge
        if self.total is not None:
            self.total.spend(parts, text)


def component_budget() -> Budget:
    """The budget of a whole component's exports (COMPONENT_PARTS)."""
    return Budget(parts=COMPONENT_PARTS, text=COMPONENT_PARTS * 64)


def from_wasmtime(vt: Any, budget: Optional[Budget] = None) -> WitType:
    """The WitType of a wasmtime-py ``ValType``; TypeTooLarge past ``budget``."""
    if budget is None:
        budget = Budget()
    budget.spend(1)
    name = type(vt).__name__
    if name in _SIMPLE:
        return WitType(_SIMPLE[name])
    if name == "ListType":
        return WitType("list", (from_wasmtime(vt.element, budget),))
    if name == "OptionType":
        return WitType("option", (from_wasmtime(vt.payload, budget),))
    if name == "ResultType":
        return WitType("result", (_maybe(vt.ok, budget), _maybe(vt.err, budget)))
    if name == "TupleType":
        return WitType("tuple", tuple(from_wasmtime(e, budget) for e in vt.elements))
    if name == "RecordType":
        return WitType("record", tuple(_labelled(n, f, budget) for n, f in vt.fields))
    if name == "VariantType":
        return WitType("variant", tuple(_labelled(n, c, budget) for n, c in vt.cases))
    if name in ("EnumType", "FlagsType"):
        names = tuple(vt.names)
        budget.spend(len(names), sum(len(n) for n in names))
        return WitType("enum" if name == "EnumType" else "flags", names)
    if name in ("OwnType", "BorrowType"):
        return WitType("own" if name == "OwnType" else "borrow", (_resource_name(vt),))
    if name in ("FutureType", "StreamType"):
        payload = getattr(vt, "payload", None)
        return WitType(name[:-4].lower(), (_maybe(payload, budget),))
    return WitType(name)  # an unknown kind: refused when a value of it is needed


def _labelled(label: str, vt: Any, budget: Budget) -> tuple:
    budget.spend(1, len(label))
    return label, _maybe(vt, budget)


def _maybe(vt: Any, budget: Optional[Budget] = None) -> Optional[WitType]:
    return None if vt is None else from_wasmtime(vt, budget)


def _resource_name(vt: Any) -> str:
    return "resource"  # introspection gives no resource names


def func_sig(ft: Any, total: Optional[Budget] = None) -> FuncSig:
    """The FuncSig of a wasmtime-py component ``FuncType``; TypeTooLarge past a
    function's budget (or ``total``, the component's)."""
    budget = Budget(total)
    result = ft.result
    return FuncSig(
        tuple(_labelled(n, t, budget) for n, t in ft.params),
        None if result is None else from_wasmtime(result, budget),
    )


def passable(t: Optional[WitType]) -> Optional[str]:
    """Why values of ``t`` cannot cross the boundary here (None when they can)."""
    if t is None:
        return None
    if t.kind in ("own", "borrow"):
        return "resource handles cannot be passed from outside the component"
    if t.kind in ("future", "stream", "error-context"):
        return f"{t.kind} values are not supported by wasmtime-py"
    if t.kind not in SCALARS and t.kind not in (
        "list",
        "option",
        "result",
        "tuple",
        "record",
        "variant",
        "enum",
        "flags",
    ):
        return f"unknown type {t.kind}"
    for item in t.items:
        inner = item[1] if isinstance(item, tuple) and not isinstance(item, WitType) else item
        if isinstance(inner, WitType):
            reason = passable(inner)
            if reason:
                return reason
    return None
