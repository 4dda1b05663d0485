"""Compiling a module to native code without importing wasmtime-py (``compile -o``).

``import wasmtime`` declares a ctypes prototype for each of the C API's ~1,000
functions: about 40 ms of CPU, 4% of ``wasmsbx compile -o`` of a 1 MB module, against
which the wasmtime CLI starts in a few. Compiling and serializing needs a dozen of them,
from the very library wasmtime-py loads (found where its ``_ffi`` finds it, without
importing it), so this module declares those and nothing else. Written by hand because
no library offers part of wasmtime-py's bindings; the configuration is
``identity.config_settings``, the same list ``backend.engine_config`` applies, and
``tests/test_bare_compile.py`` checks that both make byte-identical code.

Only ``compile -o`` in the command's own process uses it (``WasmtimeBackend.
compile_engine``): the native code goes to a file, so nothing here is ever loaded or run.
A process that has already imported wasmtime (or a library this cannot find) gets the
ordinary engine.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any, Optional

from ..base import EngineOptions
from .identity import config_settings, fingerprint, origin

# wasmtime_opt_level_t (wasmtime-py's Config.cranelift_opt_level)
_OPT_CODES = {"none": 0, "speed": 1, "speed_and_size": 2}
# Each setting's C setter takes (wasm_config_t*, this); cranelift_flag_set two strings.
_SETTERS = {
    "epoch_interruption": ctypes.c_bool,
    "consume_fuel": ctypes.c_bool,
    "cranelift_opt_level": ctypes.c_uint8,
    "max_wasm_stack": ctypes.c_size_t,
    "memory_reservation": ctypes.c_uint64,
    "memory_reservation_for_growth": ctypes.c_uint64,
    "memory_guard_size": ctypes.c_uint64,
    "memory_init_cow": ctypes.c_bool,
    "parallel_compilation": ctypes.c_bool,
}


class _Vec(ctypes.Structure):  # wasm_byte_vec_t
    _fields_ = [("size", ctypes.c_size_t), ("data", ctypes.c_void_p)]


class _Api:
    """The C functions this module calls, declared on the library."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)  # (CDLL: each call releases the GIL, as wasmtime-py's do)
        ptr, size = ctypes.c_void_p, ctypes.c_size_t

        def declare(name: str, result: Any, *args: Any) -> Any:
            function = getattr(lib, name)
            function.restype, function.argtypes = result, list(args)
            return function

        self.config_new = declare("wasm_config_new", ptr)
        self.config_delete = declare("wasm_config_delete", None, ptr)
        self.engine_new = declare("wasm_engine_new_with_config", ptr, ptr)
        self.engine_delete = declare("wasm_engine_delete", None, ptr)
        self.module_new = declare(
            "wasmtime_module_new", ptr, ptr, ctypes.c_char_p, size, ctypes.POINTER(ptr)
        )
        self.module_delete = declare("wasmtime_module_delete", None, ptr)
        self.serialize = declare("wasmtime_module_serialize", ptr, ptr, ctypes.POINTER(_Vec))
        self.vec_delete = declare("wasm_byte_vec_delete", None, ctypes.POINTER(_Vec))
        self.error_message = declare("wasmtime_error_message", None, ptr, ctypes.POINTER(_Vec))
        self.error_delete = declare("wasmtime_error_delete", None, ptr)
        self.setters = {
            name: declare(f"wasmtime_config_{name}_set", None, ptr, kind)
            for name, kind in _SETTERS.items()
        }
        self.flag_set = declare(
            "wasmtime_config_cranelift_flag_set", None, ptr, ctypes.c_char_p, ctypes.c_char_p
        )

    def take_error(self, error: int) -> str:
        """The message of a wasmtime_error_t, which is then freed."""
        vec = _Vec()
        try:
            self.error_message(error, ctypes.byref(vec))
            try:
                return ctypes.string_at(vec.data, vec.size).decode("utf-8", "replace")
            finally:
                self.vec_delete(ctypes.byref(vec))
        finally:
            self.error_delete(error)


_API: Optional[_Api] = None


def library() -> Optional[str]:
    """The file wasmtime-py's ``_ffi`` would load, or None (not installed, another
    platform, or a layout this module does not know)."""
    found = origin()
    names = {"linux": "_libwasmtime.so", "darwin": "_libwasmtime.dylib"}
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(
        os.uname().machine.lower(), os.uname().machine
    )
    if found is None or sys.platform not in names or machine not in ("x86_64", "aarch64"):
        return None
    path = os.path.join(os.path.dirname(found), f"{sys.platform}-{machine}", names[sys.platform])
    return path if os.path.isfile(path) else None


def _api() -> Optional[_Api]:
    global _API
    if _API is None:
        path = library()
        if path is None:
            return None
        try:
            _API = _Api(path)
        except (OSError, AttributeError):  # not loadable, or a function is missing
            return None
    return _API


class BareModule:
    """A compiled module (``wasmtime_module_t``), freed with this object."""

    def __init__(self, api: _Api, ptr: int) -> None:
        self._api, self.ptr = api, ptr

    def __del__(self) -> None:
        ptr, self.ptr = self.ptr, None
        if ptr:
            self._api.module_delete(ptr)


class BareEngine:
    """An engine for ``options`` that compiles and serializes, and does nothing else;
    what ``WasmtimeEngine.compile`` and ``serialize`` make of the same bytes."""

    backend = "wasmtime"

    def __init__(self, api: _Api, options: EngineOptions) -> None:
        self._api, self.options = api, options
        config = api.config_new()
        if not config:
            raise MemoryError("wasm_config_new")
        try:
            for name, value in config_settings(options):
                if name == "cranelift_flag_set":
                    api.flag_set(config, value[0].encode(), value[1].encode())
                else:
                    code = _OPT_CODES[value] if name == "cranelift_opt_level" else value
                    api.setters[name](config, code)
        except BaseException:
            api.config_delete(config)
            raise
        self.ptr = api.engine_new(config)  # (takes the config)
        if not self.ptr:
            raise MemoryError("wasm_engine_new_with_config")

    def __del__(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", None), None
        if ptr:
            self._api.engine_delete(ptr)

    def compile(self, wasm: bytes) -> BareModule:
        from ..limits import export_memories

        data = bytes(export_memories(wasm).wasm)  # (as WasmtimeEngine.compile)
        out = ctypes.c_void_p()
        error = self._api.module_new(self.ptr, data, len(data), ctypes.byref(out))
        if error:
            from .words import _module_error

            raise _module_error(RuntimeError(self._api.take_error(error)), self.options)
        return BareModule(self._api, out.value)

    def serialize(self, module: BareModule) -> bytes:
        vec = _Vec()
        error = self._api.serialize(module.ptr, ctypes.byref(vec))
        if error:
            from ... import errors

            raise errors.ModuleError(f"cannot serialize the module: {self._api.take_error(error)}")
        try:
            return ctypes.string_at(vec.data, vec.size)
        finally:
            self._api.vec_delete(ctypes.byref(vec))

    def fingerprint(self) -> dict:
        return fingerprint(self.options)


def engine(options: EngineOptions) -> Optional[BareEngine]:
    """A BareEngine for ``options``, or None: wasmtime-py is already imported (its own
    engine costs nothing more then) or its library cannot be found or loaded here."""
    if "wasmtime" in sys.modules:
        return None
    api = _api()
    return None if api is None else BareEngine(api, options)
