"""WebAssembly components (the component model, WASI 0.2).

A component is told from a core module by its header: both start with ``\\0asm``, then
a core module has version 1 and layer 0 (``01 00 00 00``), a component version 0x0d
and layer 1 (``0d 00 01 00``). ``is_component`` looks only at those 8 bytes, so every
command can route a component before parsing anything else.

The package: ``binary`` (a static scan of the component binary: core modules, core
instances, memories), ``types`` (WIT types read by wasmtime's introspection), ``values``
(Python values <-> wasmtime-py, range-checked; typed JSON), ``wave`` (the WAVE text
syntax of the wasmtime CLI), ``runtime`` (an instance under the policy's limits, on
``wasmtime.component``), ``sandbox`` (the ``Sandbox`` face of a component) and
``facts`` (what audit reports).
"""

from __future__ import annotations

COMPONENT_LAYER = b"\x01\x00"  # bytes 6..8 of the header: the layer field


def is_component(data: bytes) -> bool:
    """True if ``data`` starts with a component header (``\\0asm``, any version, layer 1)."""
    return data[:4] == b"\0asm" and data[6:8] == COMPONENT_LAYER


def sniff_file(path) -> bool:
    """True if the file at ``path`` is a component (reads 8 bytes; False if unreadable)."""
    try:
        with open(path, "rb") as f:
            return is_component(f.read(8))
    except OSError:
        return False  # the regular path reports the precise error


_VALUES = ("Ok", "Err", "Some", "Variant")


def __getattr__(name: str):
    """``from wasmsbx.components import Ok, Err, Some, Variant`` (the Python forms of WIT
    results, options and variants), imported only when asked for."""
    if name in _VALUES:
        from . import values

        return getattr(values, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
