"""Backend registry: name -> adapter, imported lazily so `run` loads only what it uses."""

from __future__ import annotations

import importlib
from typing import Optional

from .base import Backend

# name -> "module:Class". Order is the documented tie-break order of the selector.
REGISTRY = {
    "wasmtime": "wasmsbx.backends.wasmtime.adapter:WasmtimeBackend",
    "wasmer": "wasmsbx.backends.wasmer.backend:WasmerBackend",
}

_LOADED: dict = {}


def names() -> list:
    return list(REGISTRY)


def get(name: str) -> Backend:
    """The adapter object for ``name`` (without probing it)."""
    if name not in _LOADED:
        module_name, _, cls = REGISTRY[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module_name), cls)()
    return _LOADED[name]


def split(spec: str) -> tuple:
    """ "wasmer:llvm" -> ("wasmer", "llvm"); "wasmtime" -> ("wasmtime", None)."""
    name, _, compiler = spec.partition(":")
    return name, (compiler or None)


def find(spec: str) -> Optional[Backend]:
    name, _ = split(spec)
    return get(name) if name in REGISTRY else None
