"""WebAssembly values in Python and on the command line.

Every core type goes in and out without loss:

- ``i32``/``i64``: Python ints; arguments take the signed or the unsigned range
  (``-1`` and ``0xffffffff`` are the same i32), results are signed
  (:func:`unsigned` gives the other view).
- ``f32``/``f64``: :class:`F32`/:class:`F64` are floats that also carry their exact bit
  pattern (``.bits``), so NaN payloads and signalling NaNs survive both ways; a plain
  float argument is rounded to the type. Results are always ``F32``/``F64``.
- ``v128``: :class:`V128`, an int (0 .. 2**128-1, lane 0 in the low bits) with lane
  views; arguments may be an int, 16 little-endian bytes or a ``V128``.
- ``funcref``/``externref``: ``None`` is the null reference. A funcref result is an
  opaque :class:`FuncRef` handle that can be passed back to the same sandbox; an
  externref carries any Python object (results give back the very object passed in).

On the command line (and from Python strings) values are spelled as text; see
:func:`parse_text` and README "Values". Only ASCII digits count: ``add ١ 2`` is refused.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

from . import errors

INT_BITS = {"i32": 32, "i64": 64}
FLOAT_TYPES = ("f32", "f64")
REF_TYPES = ("funcref", "externref")
VALUE_TYPES = ("i32", "i64", "f32", "f64", "v128", "funcref", "externref")
_INF = float("inf")

# name -> (lane count, struct code, is float)
LANE_SHAPES = {
    "i8x16": (16, "b", False),
    "i16x8": (8, "h", False),
    "i32x4": (4, "i", False),
    "i64x2": (2, "q", False),
    "f32x4": (4, "I", True),
    "f64x2": (2, "Q", True),
}


# ---------------------------------------------------------------------------- wrappers


class _Float(float):
    """A float that remembers its exact IEEE bits (``.bits``)."""

    __slots__ = ("bits",)
    bits: int
    WIDTH = 64
    _PACK = "<d"
    _BITS = "<Q"
    TYPE = "f64"

    def __new__(cls, value: Union[float, int, str] = 0.0) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return parse_float_text(value, cls.TYPE)
        if isinstance(value, _Float):  # the other width: convert the number
            value = float(value)
        return cls.from_bits(_float_to_bits(float(value), cls.TYPE))

    @classmethod
    def from_bits(cls, bits: int) -> Any:
        """The value with exactly this bit pattern (NaN payload and sign kept)."""
        if not isinstance(bits, int) or isinstance(bits, bool) or not 0 <= bits < 2**cls.WIDTH:
            raise ValueError(f"{cls.TYPE} bits must be an int in 0 .. 2**{cls.WIDTH}-1")
        number = struct.unpack(cls._PACK, struct.pack(cls._BITS, bits))[0]
        self = float.__new__(cls, number)
        self.bits = bits
        return self

    @property
    def is_canonical_nan(self) -> bool:
        """A NaN whose payload is only the quiet bit (the spec's ``nan:canonical``)."""
        return (self.bits & ~(1 << (self.WIDTH - 1))) == _canonical_nan(self.TYPE)

    @property
    def is_arithmetic_nan(self) -> bool:
        """A NaN with the quiet bit set (the spec's ``nan:arithmetic``)."""
        quiet = 1 << (_MANTISSA[self.TYPE] - 1)
        return self != self and bool(self.bits & quiet)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({format_float(self, self.TYPE)})"

    def __reduce__(self) -> Any:
        return (type(self).from_bits, (self.bits,))


class F32(_Float):
    """An f32 value: a float (rounded to single precision) plus its exact ``bits``.

    ``F32(1.5)``, ``F32("nan:0x200000")``, ``F32.from_bits(0x7fa00000)``."""

    __slots__ = ()
    WIDTH = 32
    _PACK = "<f"
    _BITS = "<I"
    TYPE = "f32"


class F64(_Float):
    """An f64 value: a float plus its exact ``bits`` (``F64.from_bits(0x7ff4000000000000)``)."""

    __slots__ = ()
    TYPE = "f64"


class V128(int):
    """A v128 value: an int in 0 .. 2**128-1 (lane 0 in the low bits).

    ``V128(bytes16)``, ``V128(-1)`` (all ones), ``V128.from_lanes("i32x4", [1, 2, 3, 4])``;
    ``.bytes`` (16 little-endian bytes) and ``.lanes("f32x4")`` read it back."""

    __slots__ = ()

    def __new__(cls, value: Union[int, bytes, bytearray, memoryview, str] = 0) -> Any:
        if isinstance(value, V128):
            return value
        if isinstance(value, str):
            return parse_v128_text(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            if len(data) != 16:
                raise ValueError(f"a v128 is 16 bytes, got {len(data)}")
            return int.__new__(cls, int.from_bytes(data, "little"))
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"a v128 is an int or 16 bytes, not {type(value).__name__}")
        if not -(2**127) <= value < 2**128:
            raise ValueError("a v128 int must be in -2**127 .. 2**128-1")
        return int.__new__(cls, value % 2**128)

    @classmethod
    def from_lanes(cls, shape: str, lanes: Sequence[Any]) -> V128:
        """From lane values: ints (signed or unsigned) or, for f32x4/f64x2, floats/F32/F64."""
        count, code, is_float = _shape(shape)
        if len(lanes) != count:
            raise ValueError(f"{shape} takes {count} lanes, got {len(lanes)}")
        width = 128 // count
        out = 0
        for i, lane in enumerate(lanes):
            if is_float:
                bits = float_bits(lane, "f32" if width == 32 else "f64")
            else:
                if isinstance(lane, bool) or not isinstance(lane, int):
                    raise TypeError(f"{shape} lanes are ints")
                if not -(2 ** (width - 1)) <= lane < 2**width:
                    raise ValueError(f"lane {i} ({lane}) is out of range for {shape}")
                bits = lane % 2**width
            out |= bits << (i * width)
        return cls(out)

    @property
    def bytes(self) -> bytes:
        return int(self).to_bytes(16, "little")

    def lanes(self, shape: str = "i32x4") -> list:
        """Lane values: signed ints, or F32/F64 for the float shapes."""
        count, code, is_float = _shape(shape)
        values = struct.unpack("<" + code * count, self.bytes)
        if is_float:
            wrap = F32 if count == 4 else F64
            return [wrap.from_bits(v) for v in values]
        return list(values)

    def __repr__(self) -> str:
        return f"V128(0x{int(self):032x})"


class FuncRef:
    """An opaque, non-null funcref handed out by a sandbox; pass it back to that sandbox
    (an argument, a global or a table element). ``None`` is the null funcref."""

    __slots__ = ("_func", "_owner", "id")
    _next_id = [0]

    def __init__(self, func: Any, owner: Any) -> None:
        self._func = func  # the backend's function object
        self._owner = owner  # the store (group) it belongs to
        FuncRef._next_id[0] += 1
        self.id = FuncRef._next_id[0]

    def __repr__(self) -> str:
        return f"<funcref #{self.id}>"


class ExternRef:
    """Marks a Python object to pass as an externref as is (a plain ``str`` argument is
    otherwise read as text, e.g. ``"null"``). Results give back the wrapped object."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


# ---------------------------------------------------------------------------- bits


_MANTISSA = {"f32": 23, "f64": 52}
_WIDTH = {"f32": 32, "f64": 64}


def _canonical_nan(wasm_type: str) -> int:
    m = _MANTISSA[wasm_type]
    exp = (1 << (_WIDTH[wasm_type] - 1 - m)) - 1
    return (exp << m) | (1 << (m - 1))


def _float_to_bits(value: float, wasm_type: str) -> int:
    """A Python float rounded to the type, as bits (too large for f32 -> +-inf, as wasm's
    f32.demote does; a NaN becomes the canonical NaN of its sign)."""
    sign = 1 << (_WIDTH[wasm_type] - 1)
    if value != value:
        negative = struct.pack("<d", value)[7] & 0x80
        return _canonical_nan(wasm_type) | (sign if negative else 0)
    if wasm_type == "f64":
        return struct.unpack("<Q", struct.pack("<d", value))[0]
    try:
        return struct.unpack("<I", struct.pack("<f", value))[0]
    except OverflowError:
        return 0xFF800000 if value < 0 else 0x7F800000


def float_bits(value: Any, wasm_type: str) -> int:
    """The exact bits of a float-typed value (F32/F64 keep theirs)."""
    if isinstance(value, _Float) and wasm_type == value.TYPE:
        return value.bits
    return _float_to_bits(float(value), wasm_type)


def unsigned(value: int, wasm_type: str = "i32") -> int:
    """An i32/i64 result read as unsigned (``unsigned(-1) == 0xffffffff``). ValueError
    for a value outside the type's signed and unsigned ranges: ``unsigned(-2**40)`` read
    as an i32 was 0, an i64 result cut to 32 bits without a word (round 155)."""
    bits = INT_BITS.get(wasm_type)
    if bits is None:  # (a bare KeyError: red team 156)
        raise ValueError(f"unsigned() reads an i32 or an i64, not {wasm_type!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"unsigned() takes an int, not {type(value).__name__}")
    if not -(2 ** (bits - 1)) <= value < 2**bits:
        raise ValueError(
            f"{value} is not an {wasm_type}"
            + ("; for an i64 result, say unsigned(x, 'i64')" if wasm_type == "i32" else "")
        )
    return value % 2**bits


def _shape(shape: str) -> tuple:
    try:
        return LANE_SHAPES[shape]
    except KeyError:
        raise ValueError(f"unknown v128 shape {shape!r}; one of {', '.join(LANE_SHAPES)}") from None


# ---------------------------------------------------------------------------- text -> value


class ValueTextError(ValueError):
    """Text that does not spell a value of the type (the message says why)."""


class ValueRangeError(ValueTextError):
    """An integer outside the type's signed and unsigned ranges."""


def _ascii(text: str) -> str:
    text = text.strip()
    if not text.isascii():
        raise ValueTextError("only ASCII digits and letters are accepted")
    return text


def parse_int_text(text: str, wasm_type: str) -> int:
    """Decimal, 0x hex, 0o, 0b, with _ separators; signed or unsigned range; signed out."""
    return _int_in_range(_int_text(_ascii(text), "an integer"), wasm_type)


def _int_text(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:  # int(.., 0) refuses leading zeros ("007"); plain decimal allows them
        return int(text, 10)
    except ValueError:
        value = long_decimal(text)
        if value is None:
            raise ValueTextError(f"not {what}: {cut(text)}") from None
        return value


_DECIMAL = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*")  # what int(text, 10) reads
MAX_DIGITS = 4300  # (Python's default sys.get_int_max_str_digits())
# Stands for a decimal too long to convert: past every type's range, as that one is
BEYOND = 1 << 128


def long_decimal(text: str) -> Optional[int]:
    """A decimal int() refuses for its length alone (more than 4,300 digits, a guard
    against quadratic conversion since Python 3.11 and 3.9.14), which was "not an
    integer": without its leading zeros it may be short, else ``BEYOND`` with its sign
    (a range error follows). None if the text is no decimal at all."""
    if not _DECIMAL.fullmatch(text):
        return None
    sign = -1 if text[0] == "-" else 1
    digits = text.lstrip("+-").replace("_", "").lstrip("0") or "0"
    return sign * (int(digits) if len(digits) <= MAX_DIGITS else BEYOND)


def cut(text: str, keep: int = 40) -> str:
    """``text`` as a message quotes it: repr of its first ``keep`` characters, then "..."
    for the rest (an argument of 5,000 digits filled the error message)."""
    return repr(text) if len(text) <= keep else repr(text[:keep]) + "..."


def _int_in_range(value: int, wasm_type: str) -> int:
    bits = INT_BITS[wasm_type]
    if not -(2 ** (bits - 1)) <= value < 2**bits:
        raise ValueRangeError(f"{wasm_type} takes {-(2 ** (bits - 1))} .. {2**bits - 1}")
    return value - 2**bits if value >= 2 ** (bits - 1) else value


def parse_float_text(text: str, wasm_type: str) -> _Float:
    """``1.5``, ``-2``, ``1e-3``, ``0x1.8p3`` (hex float), ``inf``, ``-inf``, ``nan``
    (canonical), ``-nan``, ``nan:0x200000`` (payload), or raw bits ``f32:0x7fa00000``."""
    wrap = F32 if wasm_type == "f32" else F64
    text = _ascii(text).replace("_", "").lower()
    width, mantissa = _WIDTH[wasm_type], _MANTISSA[wasm_type]
    if text.startswith(("f32:", "f64:")):
        if text[:3] != wasm_type:
            raise ValueTextError(f"raw bits of {text[:3]} given for a {wasm_type}")
        try:
            bits = int(text[6:], 16) if text[4:6] == "0x" and text[6:] else None
        except ValueError:
            bits = None
        if bits is None or not 0 <= bits < 2**width:
            raise ValueTextError(f"raw bits are {wasm_type}:0x followed by {width // 4} hex digits")
        return wrap.from_bits(bits)
    sign = 0
    body = text
    if body[:1] in "+-":
        sign = (1 << (width - 1)) if body[0] == "-" else 0
        body = body[1:]
    if body.startswith("nan"):
        rest = body[3:]
        if not rest:
            return wrap.from_bits(sign | _canonical_nan(wasm_type))
        payload = None
        if rest.startswith(":0x"):
            try:
                payload = int(rest[3:], 16)
            except ValueError:
                payload = None
        if payload is None or not 0 < payload < 2**mantissa:
            raise ValueTextError(
                f"a NaN payload is nan:0x1 .. nan:0x{2**mantissa - 1:x} for {wasm_type}"
            )
        exponent = ((1 << (width - 1 - mantissa)) - 1) << mantissa
        return wrap.from_bits(sign | exponent | payload)
    if body in ("inf", "infinity"):
        return wrap(-_INF if sign else _INF)
    try:
        if body.startswith("0x"):
            number = float.fromhex(body)
        else:
            if not body or not (body[0].isdigit() or body[0] == "."):
                raise ValueError
            number = float(body)
    except (ValueError, OverflowError):
        raise ValueTextError(f"cannot read {cut(text)} as {wasm_type}") from None
    return wrap(-number if sign else number)


def parse_v128_text(text: str) -> V128:
    """``0x`` + up to 32 hex digits (an int), or lanes: ``i32x4:1,2,3,4``, ``f32x4:1.5,nan,..``,
    ``i8x16:...``, ``i16x8:...``, ``i64x2:...``, ``f64x2:...``."""
    text = _ascii(text).replace(" ", "")
    shape, sep, rest = text.partition(":")
    if sep:
        count, code, is_float = _shape(shape.lower())
        parts = rest.split(",")
        if len(parts) != count:
            raise ValueTextError(f"{shape} takes {count} comma-separated lanes, got {len(parts)}")
        width = 128 // count
        if is_float:
            lanes: list = [parse_float_text(p, "f32" if width == 32 else "f64") for p in parts]
        else:
            lanes = [_int_text(p, "an integer lane") for p in parts]
        try:
            return V128.from_lanes(shape.lower(), lanes)
        except (ValueError, TypeError) as exc:
            raise ValueTextError(str(exc)) from None
    try:
        value = int(text, 0)
    except ValueError:
        raise ValueTextError("a v128 is 0x<32 hex digits> or lanes such as i32x4:1,2,3,4") from None
    try:
        return V128(value)
    except ValueError as exc:
        raise ValueTextError(str(exc)) from None


def parse_ref_text(text: str, wasm_type: str) -> Any:
    """``null``; for externref also ``extern:N`` (a host int N)."""
    text = _ascii(text).lower()
    if text in ("null", "ref.null"):
        return None
    if wasm_type == "externref" and text.startswith("extern:"):
        try:
            return int(text[7:], 0)
        except ValueError:
            pass
    if wasm_type == "funcref":
        raise ValueTextError("a funcref argument can only be null on the command line")
    raise ValueTextError("an externref is null or extern:N (an integer)")


def parse_text(text: str, wasm_type: str) -> Any:
    """One value of ``wasm_type`` from its text form (raises ValueTextError)."""
    if wasm_type in INT_BITS:
        return parse_int_text(text, wasm_type)
    if wasm_type in FLOAT_TYPES:
        return parse_float_text(text, wasm_type)
    if wasm_type == "v128":
        return parse_v128_text(text)
    if wasm_type in REF_TYPES:
        return parse_ref_text(text, wasm_type)
    raise ValueTextError(f"values of type {wasm_type} cannot be written as text")


# ---------------------------------------------------------------------------- python -> typed


def coerce(value: Any, wasm_type: str) -> Any:
    """A Python value (or text) as the typed value a backend takes; ValueError/TypeError
    (ValueTextError for text) when it cannot be one."""
    if isinstance(value, str):
        return parse_text(value, wasm_type)
    if wasm_type in INT_BITS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"an {wasm_type} is an int, not {type(value).__name__}")
        return _int_in_range(int(value), wasm_type)
    if wasm_type in FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"an {wasm_type} is a float, not {type(value).__name__}")
        try:
            return (F32 if wasm_type == "f32" else F64)(value)
        except OverflowError:  # (an int beyond any float: a raw OverflowError before)
            raise ValueError(f"an int this large is not an {wasm_type}") from None
    if wasm_type == "v128":
        return V128(value)
    if wasm_type == "funcref":
        if value is None or isinstance(value, FuncRef):
            return value
        raise TypeError("a funcref is None or a FuncRef this sandbox returned")
    if wasm_type == "externref":
        return value.value if isinstance(value, ExternRef) else value
    raise TypeError(f"unknown value type {wasm_type!r}")


def _example(wasm_type: str) -> str:
    return {
        "i32": "42, -7, 0xff, 1_000",
        "i64": "42, -7, 0xff, 1_000",
        "f32": "1.5, -2, inf, nan, nan:0x200000, f32:0x7fa00000",
        "f64": "1.5, -2, inf, nan, nan:0x8000000000000, f64:0x7ff4000000000000",
        "v128": "0x000102030405060708090a0b0c0d0e0f, i32x4:1,2,3,4, f32x4:1,2,3,nan",
        "funcref": "null",
        "externref": "null, extern:7",
    }.get(wasm_type, "")


def parse_arg(value: Any, wasm_type: str, index: int, func: str, sig: Any) -> Any:
    """One argument (Python value or text) converted to the export's parameter type."""
    try:
        return coerce(value, wasm_type)
    except ValueRangeError as exc:
        raise errors.UsageError(
            f"{func}: argument {index + 1} ({shown(value, str)}) is out of range for {wasm_type}",
            hint=f"{exc}; signature {sig}",
        ) from None
    except (ValueError, TypeError) as exc:
        raise errors.UsageError(
            f"{func}: argument {index + 1} ({shown(value, repr)}) is not a valid {wasm_type} "
            f"({exc})",
            hint=f"signature {func} {sig}; {wasm_type} examples: {_example(wasm_type)}",
        ) from None


def outside(offset: int, length: int, size: int) -> IndexError:
    """The error of a memory range past the end (an int of thousands of digits said by
    its size: str() of 10**5000 raised ValueError, red team round 78)."""
    if max(offset, length).bit_length() > 256:
        return IndexError(
            f"offset ({shown(offset, str)}) and length ({shown(length, str)}) are outside "
            f"the {size}-byte memory"
        )
    return IndexError(f"bytes {offset}..{offset + length} are outside the {size}-byte memory")


def shown(value: Any, how: Callable[[Any], str]) -> str:
    """An argument as an error message shows it (``how``: str or repr): an int of
    thousands of digits as its size (str() of one past 4,300 digits raised a raw
    ValueError, and a shorter one filled the message), anything else cut at 80
    characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an int of {value.bit_length():,} bits"
    text = how(value)
    return text if len(text) <= 80 else text[:77] + "..."


# An int within the signed range of its type is already the value a backend takes
# (coerce would return it as it is): parse_args skips the general path for it.
_SIGNED = {t: (-(1 << (bits - 1)), 1 << (bits - 1)) for t, bits in INT_BITS.items()}


def parse_args(func: str, sig: Any, args: Sequence[Any]) -> list:
    params = sig.params
    if type(args) not in (list, tuple) and (
        isinstance(args, (str, bytes)) or not hasattr(args, "__len__")
    ):  # (``invoke("f", 0)``, ``Sandbox(..., args=5)``: not len()'s bare TypeError; any
        # sized collection, a numpy array say, is taken as before)
        raise errors.UsageError(
            f"{func}: args is the list of its arguments, not {type(args).__name__}",
            hint=f"e.g. [1, 2] (signature: {func} {sig})",
        )
    if len(args) != len(params):
        raise errors.UsageError(
            f"{func} takes {len(params)} argument{'s' if len(params) != 1 else ''}, "
            f"got {len(args)}",
            hint=f"signature: {func} {sig}",
        )
    out = list(args)
    for i, wasm_type in enumerate(params):
        value = out[i]
        if type(value) is int:
            bounds = _SIGNED.get(wasm_type)
            if bounds is not None and bounds[0] <= value < bounds[1]:
                continue
        out[i] = parse_arg(value, wasm_type, i, func, sig)
    return out


# ---------------------------------------------------------------------------- value -> text


def format_float(value: Any, wasm_type: str) -> str:
    """Shortest text that reads back to the same bits; NaNs keep sign and payload."""
    bits = float_bits(value, wasm_type)
    width, mantissa = _WIDTH[wasm_type], _MANTISSA[wasm_type]
    sign = "-" if bits >> (width - 1) else ""
    exp_mask = ((1 << (width - 1 - mantissa)) - 1) << mantissa
    payload = bits & ((1 << mantissa) - 1)
    if bits & exp_mask == exp_mask:
        if not payload:
            return f"{sign}inf"
        if payload == 1 << (mantissa - 1):
            return f"{sign}nan"
        return f"{sign}nan:0x{payload:x}"
    number = float(value)
    if wasm_type == "f32":
        for digits in range(1, 10):
            text = f"{number:.{digits}g}"
            if _float_to_bits(float(text), "f32") == bits:
                return text
    return repr(number)


def format_value(value: Any, wasm_type: str) -> str:
    """A result as users expect to read it (and as the command line reads it back)."""
    if value is None:
        return "null"
    if wasm_type in FLOAT_TYPES and isinstance(value, (int, float)):
        return format_float(value, wasm_type)
    if wasm_type == "v128":
        return f"0x{int(value) % 2**128:032x}"
    if wasm_type == "funcref" or isinstance(value, FuncRef):  # (a typed one: "ref")
        return f"funcref:#{value.id}" if isinstance(value, FuncRef) else "funcref"
    if wasm_type == "externref":
        if isinstance(value, int) and not isinstance(value, bool):
            return f"extern:{value}"
        return f"extern:<{type(value).__name__}>"
    if isinstance(value, (int, float, str)):
        return str(value)
    return f"<{type(value).__name__}>"  # (never a repr: it may print a heap address)


def json_value(value: Any, wasm_type: Optional[str] = None) -> Any:
    """A result for JSON: numbers stay numbers; inf/nan, v128 and references are strings
    (null references are null)."""
    if value is None:
        return None
    if wasm_type in ("v128", "funcref", "externref") or isinstance(value, FuncRef):
        return format_value(value, wasm_type or "funcref")
    if isinstance(value, float):
        if value != value or value in (_INF, -_INF):
            return format_value(value, wasm_type or "f64")
        if wasm_type == "f32":  # the shortest decimal that reads back to the same f32
            return float(format_float(value, "f32"))
        return float(value)
    if isinstance(value, (int, str, bool)):
        return value
    return format_value(value, wasm_type or "externref")


__all__ = [
    "F32",
    "F64",
    "V128",
    "FuncRef",
    "ExternRef",
    "unsigned",
    "float_bits",
    "parse_text",
    "parse_args",
    "format_value",
    "json_value",
]
