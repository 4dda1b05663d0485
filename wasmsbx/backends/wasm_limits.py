"""Compile a policy's memory and table caps into a module's own declared maxima.

wasmer (1.1.0 / engine 2.1) has no memory-limit or table-limit API, but it honours a
module's declared maximum: ``memory.grow`` past it returns -1, ``table.grow`` too. So
before compiling for wasmer, every memory and table the module *defines* gets
``max = min(declared max, cap)``. Only the limits in the memory section (5) and the table
section (4) change; every other byte is kept, so function offsets in traps stay right.

Imported memories and tables are left alone: wasmsbx provides WASI only, which exports
neither, so such a module cannot link anyway. The section layout follows
``wasmsbx.facts`` (which reads but does not rewrite).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

PAGE = 65536
MAX_PAGES32 = 65536  # 4 GiB: the most a 32-bit memory can declare
_MEMORY_SECTION = 5
_TABLE_SECTION = 4
_REF_TYPES = (0x70, 0x6F)  # funcref, externref (typed refs need function-references)


class LimitsError(ValueError):
    """The module's limits could not be read or rewritten."""


class Capped(NamedTuple):
    """Declared ``(min, max)`` per defined memory (pages) and table (elements), before capping."""

    wasm: bytes
    memories: tuple  # ((min, max or None), ...)
    tables: tuple


def _uleb(data: bytes, pos: int) -> tuple:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise LimitsError(f"truncated LEB128 at offset 0x{pos:x}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise LimitsError(f"LEB128 too long at offset 0x{pos:x}")


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _limits(data: bytes, pos: int, cap: Optional[int], what: str) -> tuple:
    """Re-encode one limits entry at ``pos``: (new bytes, end position, (min, max))."""
    flags = data[pos]
    if flags & ~0x07:
        raise LimitsError(f"{what} limits flags 0x{flags:02x} are not supported")
    minimum, pos = _uleb(data, pos + 1)
    maximum = None
    if flags & 1:
        maximum, pos = _uleb(data, pos)
    declared = (minimum, maximum)
    if cap is not None and what == "memory" and not flags & 4:
        cap = min(cap, MAX_PAGES32)  # a larger maximum is invalid for a 32-bit memory
    if cap is None or minimum > cap or (maximum is not None and maximum <= cap):
        # No cap, a module that cannot start under it (refused at instantiation), or
        # already within it: keep the entry as it is.
        new_max, new_flags = maximum, flags
    else:
        new_max, new_flags = cap, flags | 1
    body = bytes([new_flags]) + _leb(minimum) + (_leb(new_max) if new_flags & 1 else b"")
    return body, pos, declared


def _memory_section(body: bytes, cap: Optional[int]) -> tuple:
    count, pos = _uleb(body, 0)
    out, declared = bytearray(_leb(count)), []
    for _ in range(count):
        entry, pos, limits = _limits(body, pos, cap, "memory")
        out += entry
        declared.append(limits)
    if pos != len(body):
        raise LimitsError("memory section has trailing bytes")
    return bytes(out), declared


def _table_section(body: bytes, cap: Optional[int]) -> tuple:
    count, pos = _uleb(body, 0)
    out, declared = bytearray(_leb(count)), []
    for _ in range(count):
        if pos >= len(body) or body[pos] not in _REF_TYPES:
            raise LimitsError("table with a typed reference or initialiser is not supported")
        out.append(body[pos])
        entry, pos, limits = _limits(body, pos + 1, cap, "table")
        out += entry
        declared.append(limits)
    if pos != len(body):
        raise LimitsError("table section has trailing bytes")
    return bytes(out), declared


def cap_limits(wasm: bytes, memory_bytes: Optional[int], table_elements: Optional[int]) -> Capped:
    """``wasm`` with every defined memory capped at ``memory_bytes`` (whole pages) and every
    defined table at ``table_elements``; None leaves that kind alone."""
    if wasm[:8] != b"\0asm\x01\0\0\0":
        raise LimitsError("not a WebAssembly core module")
    memory_cap = None if memory_bytes is None else memory_bytes // PAGE
    out = bytearray(wasm[:8])
    memories: list = []
    tables: list = []
    pos = 8
    while pos < len(wasm):
        sid = wasm[pos]
        size, body_at = _uleb(wasm, pos + 1)
        end = body_at + size
        if end > len(wasm):
            raise LimitsError(f"truncated section {sid} at offset 0x{pos:x}")
        body = wasm[body_at:end]
        if sid == _MEMORY_SECTION:
            body, memories = _memory_section(body, memory_cap)
        elif sid == _TABLE_SECTION:
            body, tables = _table_section(body, table_elements)
        else:
            out += wasm[pos:end]
            pos = end
            continue
        out += bytes([sid]) + _leb(len(body)) + body
        pos = end
    return Capped(bytes(out), tuple(memories), tuple(tables))
