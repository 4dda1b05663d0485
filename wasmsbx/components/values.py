"""WIT values in Python, checked against their type, and their typed JSON.

The Python forms (what ``Sandbox.call`` takes and returns):

====================  ==============================================================
WIT                   Python
====================  ==============================================================
bool, sN/uN, fN       bool, int (range-checked), float
char, string          str (one code point for char; no lone surrogates)
list<u8>              bytes (a list of ints is accepted)
list<T>               list (a tuple is accepted)
tuple<...>            tuple (a list is accepted)
record { ... }        dict keyed by field name (``first-name`` or ``first_name``);
                      any object with those attributes is accepted
enum                  str, the case name
flags                 set of case names (any iterable of names is accepted)
option<T>             None, or the value; ``Some(v)`` when T is itself an option
result<T, E>          ``Ok(v)`` or ``Err(e)`` (v/e None without a payload)
variant               ``Variant(case, payload)``
====================  ==============================================================

wasmtime-py 50 passes variant-like values untagged when their cases' Python classes
do not overlap (``result<s64, string>`` comes back as 16 or a bare str) and does not
range-check integers (``add(2**40, 1)`` returns 1). ``lower`` and ``lift`` hide both:
every value is checked here first, and tagged or untagged forms are chosen (and read)
exactly as wasmtime-py does, refusing the few values it would pass as the wrong case.

Typed JSON (``--json``, ``--batch``): scalars as JSON scalars (``inf``/``nan`` as
strings), lists, tuples and flags as arrays, records as objects, enums as the case
name, and explicit tags for the rest: ``{"some": v}``/``{"none": null}``,
``{"ok": v}``/``{"err": e}``, ``{"<case>": payload-or-null}`` for a variant.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from typing import Any, Optional

from .types import INTS, WitType, case_types, name_set, per_type

_INF = float("inf")
PACE = 1024  # units of conversion (about one value each) between two looks at the clock


class Overdue(Exception):
    """Converting a call's result ran past the call's deadline (see ``paced``)."""


class _Clock(threading.local):
    until: Optional[float] = None  # time.monotonic() the running call must end by
    work = 0  # units converted since the last look


CLOCK = _Clock()


def start_clock(until: Optional[float]) -> None:
    """This thread's conversions end by ``until`` (None: unpaced)."""
    CLOCK.until, CLOCK.work = until, 0


def paced(items: Any, weight: int = 1) -> Iterable:
    """``items`` (a list's elements, each ``weight`` units: ``weight`` of their type),
    with a look at this thread's ``CLOCK`` every PACE units, across every list of the
    call, raising ``Overdue`` once it is past. A result is converted, sized and printed
    in Python after the guest has returned, where no epoch reaches: two million
    variants took 10 s, from Python past any timeout (a library caller has no hard
    stop); counted per list, a thousand lists of a thousand never looked (red team
    round 36)."""
    until = CLOCK.until
    if until is None:
        return items
    step = max(1, PACE // weight)
    if len(items) <= step:
        charge(len(items) * weight)
        return items
    return _paced(items, until, step)


def charge(units: int) -> None:
    """Count ``units`` of conversion against the running call's clock."""
    clock = CLOCK
    if clock.until is None:
        return
    clock.work += units
    if clock.work >= PACE:
        clock.work = 0
        if time.monotonic() > clock.until:
            raise Overdue


def _paced(items: Any, until: float, step: int) -> Iterable:
    for i, item in enumerate(items):
        if not i % step and time.monotonic() > until:
            raise Overdue
        yield item


TEXT_SLICE = 1 << 20  # characters of one string measured between two looks at the clock


def text_width(text: str, width: Any, room: int) -> int:
    """``width(text)`` for a width that is the sum of its characters' (escapes), measured
    a slice at a time with a look at the clock between (``charge``); and only while it
    fits in ``room`` (at least one byte a character: a string longer than the room is
    past it at once). One string can be 128 MiB (what wasmtime copies in one call), and
    its escapes took dozens of passes over it after the deadline (red team round 38)."""
    if len(text) > room:
        return len(text)
    total = 0
    for start in range(0, len(text), TEXT_SLICE):
        part = text[start : start + TEXT_SLICE]
        charge(len(part) >> 6)
        total += width(part)
        if total > room:
            break
    return total


@per_type
def weight(t: Optional[WitType]) -> int:
    """About how many values one value of ``t`` converts, lists aside (each list paces
    its own elements): its record fields and tuple elements, its largest case."""
    if t is None:
        return 1
    k = t.kind
    if k == "tuple":
        total = 1 + sum(weight(e) for e in t.items)
    elif k == "record":
        total = 1 + sum(weight(f) for _, f in t.items)
    elif k in ("option", "result", "variant"):
        total = 1 + max(weight(c) for c in case_types(t).values())
    else:
        return 1
    return min(total, PACE)


class ValueProblem(ValueError):
    """A value that does not fit its WIT type; ``path`` says where inside it."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class _Tagged:
    """Base of the tagged Python forms: equal only to the same class with equal fields."""

    __slots__ = ()
    _fields: tuple = ()

    def _key(self) -> tuple:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._key()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(v) for v in self._key())})"


class Ok(_Tagged):
    """The ok case of a WIT ``result``."""

    __slots__ = ("value",)
    _fields = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value


class Err(_Tagged):
    """The err case of a WIT ``result``."""

    __slots__ = ("value",)
    _fields = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value


class Some(_Tagged):
    """A present ``option`` value, needed only when the payload is itself an option."""

    __slots__ = ("value",)
    _fields = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Variant(_Tagged):
    """A WIT ``variant`` case with its payload (None without one)."""

    __slots__ = ("case", "payload")
    _fields = ("case", "payload")

    def __init__(self, case: str, payload: Any = None) -> None:
        self.case = case
        self.payload = payload


# ---------------------------------------------------------------- checking (Python -> canon)


def check(value: Any, t: WitType, path: str = "") -> Any:
    """``value`` in the canonical Python form of ``t``; ValueProblem if it does not fit."""
    k = t.kind
    if k in INTS:
        return _int(value, k, path)
    if k in ("f32", "f64"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueProblem(f"expected a number ({k}), got {_show(value)}", path)
        return _f32(float(value), path) if k == "f32" else float(value)
    if k == "bool":
        if not isinstance(value, bool):
            raise ValueProblem(f"expected true or false, got {_show(value)}", path)
        return value
    if k in ("char", "string"):
        return _text(value, k, path)
    return _CHECKERS[k](value, t, path)


def _f32(value: float, path: str) -> float:
    """The nearest f32 (what the guest receives), or a ValueProblem beyond its range."""
    import struct

    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        raise ValueProblem(f"{value!r} is out of range for f32", path) from None


def _int(value: Any, kind: str, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueProblem(f"expected an integer ({kind}), got {_show(value)}", path)
    low, high = INTS[kind]
    if not low <= value <= high:
        raise ValueProblem(f"{_show(value)} is out of range for {kind} ({low} .. {high})", path)
    return value


def _text(value: Any, kind: str, path: str) -> str:
    if not isinstance(value, str):
        raise ValueProblem(f"expected a {kind}, got {_show(value)}", path)
    if kind == "char" and len(value) != 1:
        raise ValueProblem(f"a char is one character, got {value!r}", path)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueProblem(f"{value!r} holds a lone surrogate, not Unicode text", path)
    return value


def _list(value: Any, t: WitType, path: str) -> Any:
    element = t.items[0]
    if element.kind == "u8" and isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, (list, tuple)):
        raise ValueProblem(f"expected a list ({t}), got {_show(value)}", path)
    items = [check(v, element, f"{path}[{i}]") for i, v in enumerate(value)]
    return bytes(items) if element.kind == "u8" else items


def _tuple(value: Any, t: WitType, path: str) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != len(t.items):
        raise ValueProblem(f"expected a tuple of {len(t.items)} ({t}), got {_show(value)}", path)
    return tuple(check(v, e, f"{path}.{i}") for i, (v, e) in enumerate(zip(value, t.items)))


def _record(value: Any, t: WitType, path: str) -> dict:
    names = [n for n, _ in t.items]
    if isinstance(value, dict):
        known = set(names) | {n.replace("-", "_") for n in names}
        extra = [k for k in value if k not in known]
        if extra:
            raise ValueProblem(f"unknown field {extra[0]!r}; fields: {', '.join(names)}", path)
    out = {}
    for name, ftype in t.items:
        found, field = _field(value, name)
        if not found:
            if ftype.kind != "option":
                raise ValueProblem(f"missing field {name!r} ({ftype})", path)
            field = None  # an absent option field is none, as in WAVE
        out[name] = check(field, ftype, f"{path}.{name}")
    return out


def _field(value: Any, name: str) -> tuple:
    for key in (name, name.replace("-", "_")):
        if isinstance(value, dict):
            if key in value:
                return True, value[key]
        elif hasattr(value, key):
            return True, getattr(value, key)
    return False, None


def _enum(value: Any, t: WitType, path: str) -> str:
    if not isinstance(value, str) or value not in name_set(t):
        raise ValueProblem(f"expected one of {', '.join(t.items)}, got {_show(value)}", path)
    return value


def _flags(value: Any, t: WitType, path: str) -> set:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueProblem(f"expected a set of flags ({t}), got {_show(value)}", path)
    out = set(value)
    known = name_set(t)
    unknown = sorted(str(v) for v in out if v not in known)
    if unknown:
        raise ValueProblem(f"unknown flag {unknown[0]!r}; flags: {', '.join(t.items)}", path)
    return out


def _option(value: Any, t: WitType, path: str) -> Any:
    payload = t.items[0]
    if value is None:
        return None
    if isinstance(value, Some):
        inner = check(value.value, payload, f"{path}.some")
    else:
        inner = check(value, payload, f"{path}.some")
    return Some(inner) if payload.kind == "option" else inner


def _result(value: Any, t: WitType, path: str) -> Any:
    ok, err = t.items
    if isinstance(value, Ok):
        return Ok(_payload(value.value, ok, f"{path}.ok"))
    if isinstance(value, Err):
        return Err(_payload(value.value, err, f"{path}.err"))
    raise ValueProblem(f"expected Ok(...) or Err(...) for {t}, got {_show(value)}", path)


def _variant(value: Any, t: WitType, path: str) -> Variant:
    if not isinstance(value, Variant):
        raise ValueProblem(f"expected Variant(case, payload) for {t}, got {_show(value)}", path)
    cases = case_types(t)
    if value.case not in cases:
        raise ValueProblem(f"unknown case {value.case!r}; cases: {', '.join(cases)}", path)
    return Variant(value.case, _payload(value.payload, cases[value.case], f"{path}.{value.case}"))


def _payload(value: Any, t: Optional[WitType], path: str) -> Any:
    if t is None:
        if value is not None:
            raise ValueProblem(f"this case has no payload, got {_show(value)}", path)
        return None
    return check(value, t, path)


def _refuse(value: Any, t: WitType, path: str) -> Any:
    from .types import passable

    raise ValueProblem(passable(t) or f"cannot pass a {t}", path)


_CHECKERS = {
    "list": _list,
    "tuple": _tuple,
    "record": _record,
    "enum": _enum,
    "flags": _flags,
    "option": _option,
    "result": _result,
    "variant": _variant,
}
for _kind in ("own", "borrow", "future", "stream", "error-context"):
    _CHECKERS[_kind] = _refuse


def _show(value: Any) -> str:
    text = repr(value)
    return (text[:40] + "...") if len(text) > 43 else text


# ---------------------------------------------------------------- wasmtime-py's forms


def _cases(t: WitType) -> list:
    if t.kind == "option":
        return [("none", None), ("some", t.items[0])]
    if t.kind == "result":
        return [("ok", t.items[0]), ("err", t.items[1])]
    return list(t.items)


@per_type
def _classes(t: Optional[WitType]) -> frozenset:
    """The Python classes wasmtime-py uses for ``t`` (mirrors its ``add_classes``)."""
    from wasmtime.component import Record
    from wasmtime.component import Variant as WVariant

    if t is None:
        return frozenset({object})
    k = t.kind
    if k in INTS:
        return frozenset({int})
    simple = {"bool": bool, "f32": float, "f64": float, "char": str, "string": str}
    simple.update({"enum": str, "tuple": tuple, "flags": set, "record": Record})
    if k in simple:
        return frozenset({simple[k]})
    if k == "list":
        return frozenset({bytes if t.items[0].kind == "u8" else list})
    if k in ("option", "result", "variant"):
        if tagged(t):
            return frozenset({WVariant})
        out: frozenset = frozenset()
        for _, case in _cases(t):
            out |= _classes(case)
        return out
    return frozenset({object})


@per_type
def tagged(t: WitType) -> bool:
    """Whether wasmtime-py passes this variant-like type as ``Variant(tag, payload)``:
    when two cases share a Python class (mirrors its ``_tagged``)."""
    seen: frozenset = frozenset()
    for _, case in _cases(t):
        mine = _classes(case)
        if mine & seen:
            return True
        seen |= mine
    return False


def lower(value: Any, t: WitType) -> Any:
    """A canonical value (from ``check``) in the form wasmtime-py takes."""
    k = t.kind
    if k == "list":
        if t.items[0].kind == "u8":
            return value
        return [lower(v, t.items[0]) for v in value]
    if k == "tuple":
        return tuple(lower(v, e) for v, e in zip(value, t.items))
    if k == "record":
        from wasmtime.component import Record

        out = Record()
        for name, ftype in t.items:
            setattr(out, name, lower(value[name], ftype))
        return out
    if k in ("option", "result", "variant"):
        return _lower_case(value, t)
    return value


def _lower_case(value: Any, t: WitType) -> Any:
    case, payload = _case_of(value, t)
    ptype = case_types(t)[case]
    raw = None if ptype is None else lower(payload, ptype)
    if tagged(t):
        from wasmtime.component import Variant as WVariant

        return WVariant(case, raw)
    picked = _wasmtime_pick(t, raw)
    if picked != case:
        raise ValueProblem(
            f"wasmtime-py would pass this {t} value as case {picked!r}, not {case!r} "
            "(its untagged form is ambiguous here)"
        )
    return raw


def _case_of(value: Any, t: WitType) -> tuple:
    if t.kind == "option":
        if value is None:
            return "none", None
        return "some", value.value if isinstance(value, Some) else value
    if t.kind == "result":
        return ("ok" if isinstance(value, Ok) else "err"), value.value
    return value.case, value.payload


def _wasmtime_pick(t: WitType, raw: Any) -> Optional[str]:
    """The case wasmtime-py's untagged lowering chooses for ``raw``."""
    for name, case in _cases(t):
        if case is None:
            if raw is None:
                return name
        elif isinstance(raw, tuple(_classes(case))):
            return name
    return None


def lift(raw: Any, t: Optional[WitType]) -> Any:
    """A value wasmtime-py returned, in the canonical Python form of ``t``."""
    if t is None:
        return None
    k = t.kind
    if k == "list":
        if t.items[0].kind == "u8":
            return bytes(raw)
        return [lift(v, t.items[0]) for v in paced(raw, weight(t.items[0]))]
    if k == "tuple":
        return tuple(lift(v, e) for v, e in zip(raw, t.items))
    if k == "record":
        return {n: lift(getattr(raw, n), f) for n, f in t.items}
    if k == "flags":
        return set(raw)
    if k in ("option", "result", "variant"):
        return _lift_case(raw, t)
    return raw


def _lift_case(raw: Any, t: WitType) -> Any:
    if tagged(t):
        case, payload = raw.tag, raw.payload
    else:
        case, payload = _untagged_case(raw, t), raw
    ptype = case_types(t)[case]
    value = None if ptype is None else lift(payload, ptype)
    if t.kind == "option":
        if case == "none":
            return None
        return Some(value) if t.items[0].kind == "option" else value
    if t.kind == "result":
        return Ok(value) if case == "ok" else Err(value)
    return Variant(case, value)


def _untagged_case(raw: Any, t: WitType) -> str:
    """Which case an untagged value is: by exact class first (bool is an int too)."""
    cases = _cases(t)
    for name, case in cases:
        if case is None and raw is None:
            return name
    for name, case in cases:
        if case is not None and type(raw) in _classes(case):
            return name
    for name, case in cases:
        if case is not None and isinstance(raw, tuple(_classes(case))):
            return name
    raise ValueProblem(f"cannot tell which case of {t} the value {_show(raw)} is")


# ---------------------------------------------------------------- typed JSON


def to_json(value: Any, t: Optional[WitType]) -> Any:
    """A canonical value as typed JSON (see the module docstring)."""
    if t is None:
        return None
    k = t.kind
    if k in ("f32", "f64"):
        return _json_float(value)
    if k == "list":
        return [to_json(v, t.items[0]) for v in value]
    if k == "tuple":
        return [to_json(v, e) for v, e in zip(value, t.items)]
    if k == "record":
        return {n: to_json(value[n], f) for n, f in t.items}
    if k == "flags":
        return [n for n in t.items if n in value]
    if k in ("option", "result", "variant"):
        case, payload = _case_of(value, t)
        ptype = case_types(t)[case]
        return {case: None if ptype is None else to_json(payload, ptype)}
    return value


def json_size(value: Any, t: WitType, limit: int, level: int = 0) -> int:
    """How many bytes ``json.dumps(to_json(value, t), indent=2)`` takes where the value
    sits at indentation ``level`` (its inner lines at ``level + 1``), without building it,
    exactly; counting stops once past ``limit``. What ``--json`` prints of a result, its
    typed JSON, grows with the depth of nested types (every line indented) and makes each
    variant case an object: a list of payload-less cases 9-12 times its WAVE text, an
    option 100 deep around a ``list<u8>`` 64 times (red team round 32)."""
    from json.encoder import encode_basestring_ascii as quoted

    total = 0

    def add(n: int) -> bool:
        nonlocal total
        total += n
        return total > limit

    def container(count: int, level: int) -> bool:
        # "[" "\n" + items joined by ",\n" + their indent, "\n" + the closing indent "]"
        if count == 0:
            return add(2)
        inner = 2 * (level + 1)
        return add(count * (inner + 2) + 2 * level + 2)

    def walk(v: Any, t: WitType, level: int) -> bool:  # True: past the limit
        k = t.kind
        if k in ("f32", "f64"):
            j = _json_float(v)
            return add(len(j) + 2 if isinstance(j, str) else len(repr(j)))
        if k == "bool":
            return add(4 if v else 5)
        if k in ("char", "string", "enum"):
            return add(2) or add(text_width(v, lambda part: len(quoted(part)) - 2, limit - total))
        if k == "flags":
            names = [n for n in t.items if n in v]
            return container(len(names), level) or add(sum(len(quoted(n)) for n in names))
        if k == "list":
            item = t.items[0]
            if container(len(v), level):
                return True
            if item.kind == "u8" and isinstance(v, (bytes, bytearray)):
                return add(decimal_digits(v))
            return any(walk(x, item, level + 1) for x in paced(v, weight(item)))
        if k == "tuple":
            if container(len(t.items), level):
                return True
            return any(walk(x, e, level + 1) for x, e in zip(v, t.items))
        if k == "record":
            if container(len(t.items), level):
                return True
            return any(add(len(quoted(n)) + 2) or walk(v[n], f, level + 1) for n, f in t.items)
        if k in ("option", "result", "variant"):
            case, payload = _case_of(v, t)
            ptype = case_types(t)[case]
            if container(1, level) or add(len(quoted(case)) + 2):
                return True
            return add(4) if ptype is None else walk(payload, ptype, level + 1)
        return add(len(str(v)))  # integers

    walk(value, t, level)
    return total


def decimal_digits(data: Any) -> int:
    """The digits of every byte of ``data`` printed in decimal, counted in C (WAVE and
    JSON print a ``list<u8>`` so: wave.printed_size, json_size)."""
    tens = len(data.translate(None, _UNDER_10))  # (bytes of two digits or more)
    hundreds = len(data.translate(None, _UNDER_100))  # (of three)
    return len(data) + tens + hundreds


_UNDER_10 = bytes(range(10))  # (bytes that print in one digit)
_UNDER_100 = bytes(range(100))


def _json_float(value: float) -> Any:
    if math.isnan(value):
        return "nan"
    if value in (_INF, -_INF):
        return "inf" if value > 0 else "-inf"
    return value


def from_json(data: Any, t: WitType, path: str = "") -> Any:
    """Typed JSON (as ``to_json`` writes it; bare values accepted where unambiguous)
    in the canonical Python form, checked."""
    k = t.kind
    if k in ("f32", "f64") and isinstance(data, str):
        try:
            data = float(data)
        except ValueError:
            raise ValueProblem(f"expected a number ({k}), got {_show(data)}", path) from None
    if k == "list" and isinstance(data, list):
        data = [from_json(v, t.items[0], f"{path}[{i}]") for i, v in enumerate(data)]
    elif k == "tuple" and isinstance(data, list) and len(data) == len(t.items):
        data = [from_json(v, e, f"{path}.{i}") for i, (v, e) in enumerate(zip(data, t.items))]
    elif k == "record" and isinstance(data, dict):
        types = dict(t.items)
        data = {
            n: (from_json(v, types[n], f"{path}.{n}") if n in types else v) for n, v in data.items()
        }
    elif k in ("option", "result", "variant"):
        data = _case_from_json(data, t, path)
    return check(data, t, path)


def _case_from_json(data: Any, t: WitType, path: str) -> Any:
    cases = case_types(t)
    if not (isinstance(data, dict) and len(data) == 1 and next(iter(data)) in cases):
        if t.kind == "option":  # a bare value (or null) for an option is clear enough
            return None if data is None else from_json(data, t.items[0], f"{path}.some")
        tags = ", ".join(f'{{"{c}": ...}}' for c in cases)
        raise ValueProblem(f"expected one of {tags} for {t}, got {_show(data)}", path)
    ((case, payload),) = data.items()
    ptype = cases[case]
    if ptype is None:
        if payload is not None:
            raise ValueProblem(f"case {case!r} has no payload, got {_show(payload)}", path)
        inner = None
    else:
        inner = from_json(payload, ptype, f"{path}.{case}")
    if t.kind == "option":
        if case == "none":
            return None
        return Some(inner) if t.items[0].kind == "option" else inner
    if t.kind == "result":
        return Ok(inner) if case == "ok" else Err(inner)
    return Variant(case, inner)
