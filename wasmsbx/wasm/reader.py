"""Reading WebAssembly binaries: the byte reader, LEB128 and value-type encodings.

The shared bottom of the pure-Python module reader: :mod:`wasmsbx.wasm.facts` parses sections
with it and :mod:`wasmsbx.wasm.code` decodes function bodies with it. Anything malformed
raises :class:`FactsError` (a ``ValueError``) with the byte offset.
"""

from __future__ import annotations

from typing import Optional


class FactsError(ValueError):
    """The input is not a well-formed WebAssembly core module.

    ``offset`` is the byte offset of the problem when known; ``component`` is true when the
    input is a WebAssembly component rather than a core module.
    """

    def __init__(self, message: str, offset: Optional[int] = None, component: bool = False):
        super().__init__(message)
        self.offset = offset
        self.component = component


class _UnknownEncoding(FactsError):
    """An encoding this reader does not know (lenient inside function bodies)."""


_NUM_TYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128"}
# Abstract heap types (single-byte shorthands for nullable references) and what they imply.
_HEAP_TYPES = {
    0x70: ("funcref", None),
    0x6F: ("externref", None),
    0x6E: ("ref", "gc"),  # any
    0x6D: ("ref", "gc"),  # eq
    0x6C: ("ref", "gc"),  # i31
    0x6B: ("ref", "gc"),  # struct
    0x6A: ("ref", "gc"),  # array
    0x71: ("ref", "gc"),  # none
    0x72: ("ref", "gc"),  # noextern
    0x73: ("ref", "gc"),  # nofunc
    0x69: ("ref", "exceptions"),  # exn
    0x74: ("ref", "exceptions"),  # noexn
}
# Every byte that starts a value type (used to tell block types from type indices).
_VALTYPE_BYTES = frozenset(_NUM_TYPES) | frozenset(_HEAP_TYPES) | {0x63, 0x64}

# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


class _Reader:
    """A cursor over ``data[pos:end]`` whose reads never go past ``end``."""

    __slots__ = ("data", "pos", "end", "what")

    def __init__(self, data: bytes, pos: int, end: int, what: str):
        self.data = data
        self.pos = pos
        self.end = end
        self.what = what

    def error(self, message: str, offset: Optional[int] = None) -> FactsError:
        off = self.pos if offset is None else offset
        return FactsError(f"{message} at offset 0x{off:x}", off)

    def truncated(self, offset: Optional[int] = None) -> FactsError:
        return self.error(f"truncated {self.what}", offset)

    def remaining(self) -> int:
        return self.end - self.pos

    def byte(self) -> int:
        if self.pos >= self.end:
            raise self.truncated()
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise self.truncated()
        start = self.pos
        self.pos += n
        return self.data[start : self.pos]

    def uleb(self, bits: int = 32) -> int:
        start = self.pos
        result = 0
        shift = 0
        max_bytes = (bits + 6) // 7
        for i in range(max_bytes):
            if self.pos >= self.end:
                raise self.truncated()
            b = self.data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                if i == max_bytes - 1 and b >> (bits - 7 * i):
                    raise self.error(f"integer too large for u{bits}", start)
                return result
            shift += 7
        raise self.error("integer representation too long", start)

    def sleb(self, bits: int) -> int:
        start = self.pos
        result = 0
        shift = 0
        max_bytes = (bits + 6) // 7
        for i in range(max_bytes):
            if self.pos >= self.end:
                raise self.truncated()
            b = self.data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if i == max_bytes - 1:
                    # The unused high bits of the last byte must all equal the sign bit.
                    used = bits - 7 * i
                    rest = (b & 0x7F) >> (used - 1)
                    if rest not in (0, (0x7F >> (used - 1))):
                        raise self.error(f"integer too large for s{bits}", start)
                if b & 0x40:
                    result -= 1 << shift
                return result
        raise self.error("integer representation too long", start)

    def count(self, what: str, min_item_size: int = 1) -> int:
        """A vector length, checked against the bytes that remain."""
        start = self.pos
        n = self.uleb()
        if n * min_item_size > self.end - self.pos:
            raise self.error(f"{what} count {n} exceeds the remaining bytes", start)
        return n

    def name(self) -> str:
        start = self.pos
        n = self.uleb()
        if n > self.end - self.pos:
            raise self.error(f"name of {n} bytes runs past the end of the {self.what}", start)
        raw = self.data[self.pos : self.pos + n]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("invalid UTF-8 in name", start) from None
        self.pos += n
        return text


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    """Unsigned LEB128 at ``pos`` (at most 10 bytes); IndexError past the end of ``data``."""
    result = 0
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise FactsError(f"integer representation too long at offset 0x{pos:x}", pos)


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    """Signed LEB128 at ``pos`` (at most 10 bytes)."""
    result = 0
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if b & 0x40:
                result -= 1 << shift
            return result, pos
        if shift >= 70:
            raise FactsError(f"integer representation too long at offset 0x{pos:x}", pos)
