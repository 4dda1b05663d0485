"""``list<u8>`` between Python ``bytes`` and wasmtime-py in bulk.

wasmtime-py 50 converts a ``list<u8>`` one element at a time in Python (a ctypes
pointer and a tagged C value per byte): measured here, 64 KiB each way took 0.3 s, so
a component streamed at about 100 KiB/s where a module streams 100 MiB/s. The C API's
list is an array of ``wasmtime_component_val_t`` (a kind byte, then the value), so the
same array can be written and read with two extended-slice copies per list instead.
``install`` replaces ``ListType.convert_to_c``/``convert_from_c`` for ``list<u8>`` only
(every other list keeps wasmtime-py's code), and only when the C layout is the one this
was written against (checked from wasmtime-py's own ctypes declarations); otherwise
wasmtime-py's conversion stays, slower but correct.
"""

from __future__ import annotations

import ctypes
from typing import Any

_INSTALLED: list = []


def _layout() -> Any:
    """(ffi, value size, kind byte, payload offset), or None if the layout is not the
    expected one (kind: one byte at 0; the u8 at the start of the union)."""
    try:
        from wasmtime import _ffi as ffi

        val = ffi.wasmtime_component_val_t
        union = val.of.offset
        if val.kind.offset != 0 or ctypes.sizeof(val._fields_[0][1]) != 1 or union < 1:
            return None
        if type(val().of).u8.offset != 0:
            return None
        return ffi, ctypes.sizeof(val), ffi.WASMTIME_COMPONENT_U8.value, union
    except (ImportError, AttributeError, TypeError):
        return None


def install() -> bool:
    """Put the bulk conversion in place (once); False if wasmtime-py's stays."""
    if _INSTALLED:
        return _INSTALLED[0]
    layout = _layout()
    try:
        from wasmtime.component import _types
    except ImportError:
        layout = None
    if layout is None or not hasattr(_types.ListType, "_is_bytes"):
        _INSTALLED.append(False)
        return False
    ffi, size, u8, offset = layout
    slow_to_c, slow_from_c = _types.ListType.convert_to_c, _types.ListType.convert_from_c

    def convert_to_c(self: Any, store: Any, val: Any, ptr: Any) -> None:
        if not self._is_bytes() or not isinstance(val, bytes):
            return slow_to_c(self, store, val, ptr)  # its own checks and messages
        n = len(val)
        raw = ffi.wasmtime_component_vallist_t()
        ffi.wasmtime_component_vallist_new_uninit(raw, n)
        if n:
            image = bytearray(n * size)
            image[0::size] = bytes((u8,)) * n
            image[offset::size] = val
            ctypes.memmove(raw.data, (ctypes.c_char * len(image)).from_buffer(image), len(image))
        ptr.contents.kind = ffi.WASMTIME_COMPONENT_LIST
        ptr.contents.of.list = raw

    def convert_from_c(self: Any, c: Any) -> Any:
        n = c.of.list.size
        if not self._is_bytes() or not n:
            return slow_from_c(self, c)
        image = ctypes.string_at(c.of.list.data, n * size)
        if image[0::size].count(u8) != n:  # not all u8 values: leave it to wasmtime-py
            return slow_from_c(self, c)
        try:
            return image[offset::size]
        finally:
            ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))

    _types.ListType.convert_to_c = convert_to_c
    _types.ListType.convert_from_c = convert_from_c
    _INSTALLED.append(True)
    return True
