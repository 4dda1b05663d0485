"""The runner: policy + module -> backend -> result, as plain data.

``sandbox`` is the core (one module instance under a policy, with no feature above it);
``batch`` and ``stream`` run many calls through it, ``checkpoint`` persists their
progress, ``services`` adds them (and the audit) as methods. The public ``Sandbox`` here
is the core one with those methods, and gives a component sandbox for a component.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any, Optional, Union, cast

from .. import policy as policy_mod
from . import sandbox as _core
from .sandbox import (
    CallResult,
    CommandResult,
    Exports,
    Function,
    Globals,
    Group,
    Memory,
    RunStats,
    _is_component_file,
    format_value,
    json_value,
    parse_args,
    preread,
    read_module,
)
from .services import Services

_COMPONENT_CLASS: list = []  # the public component sandbox, made on first use

# CPython before 3.11 hands a thread a partially initialised module when several threads
# import the same modules at once and its module locks see a deadlock that is not there
# (measured on 3.9: 5-7 of 8 threads making their first sandbox at once failed with
# "ImportError: cannot import name 'FactsError' from partially initialized module").
# There, once the process has threads, a sandbox first imports what sandboxes import
# later (lazily: `import wasmsbx` and `wasmsbx run` stay lean), all of it in one thread,
# under a lock: once per process for modules (45 ms on 3.9, the cache's database
# included), once more for components (wasmtime's component model: 40 ms).
_WARM_LOCK = threading.Lock()
_WARM_NEEDED = sys.version_info < (3, 11)
WARM_IMPORTS = (
    "wasmsbx.errors", "wasmsbx.policy", "wasmsbx.units", "wasmsbx.values", "wasmsbx.host",
    "wasmsbx.memory", "wasmsbx.inputs", "wasmsbx.lru", "wasmsbx.capabilities",
    "wasmsbx.wasm.reader", "wasmsbx.wasm.model", "wasmsbx.wasm.code", "wasmsbx.wasm.facts",
    "wasmsbx.wasm.source", "wasmsbx.wasm.wasi",
    "wasmsbx.backends.base", "wasmsbx.backends.compiling", "wasmsbx.backends.deadline",
    "wasmsbx.backends.limits", "wasmsbx.backends.reserve", "wasmsbx.backends.select",
    "wasmsbx.backends.wasmtime.identity", "wasmsbx.backends.wasmtime.adapter",
    "wasmsbx.backends.wasmtime.values", "wasmsbx.backends.wasmtime.teardown",
    "wasmsbx.backends.wasmtime.backend",
    "wasmsbx.backends.wasmer.features", "wasmsbx.backends.wasmer.values",
    "wasmsbx.backends.wasmer.backend", "wasmsbx.backends.wasmer.link",
    "wasmsbx.backends.wasmer.engine",
    "wasmsbx.native.trustdir", "wasmsbx.native.trust", "wasmsbx.native.artifact",
    "wasmsbx.native.entry", "wasmsbx.native.recorded", "wasmsbx.native.located",
    "wasmsbx.native.cache",
    "wasmsbx.runner.shared", "wasmsbx.runner.sandbox", "wasmsbx.runner.services",
    # and what their lazy imports import: a cache miss (the cache's database), the
    # wasmer probe's threads, hashing
    "wasmtime", "wasmer", "blake3", "hashlib", "json", "marshal", "mmap", "diskcache",
    "sqlite3", "tempfile", "shutil", "concurrent.futures.thread", "queue", "string",
    "logging", "traceback", "datetime",
    # the compile worker (backends.compiling.worker_code)
    "subprocess", "select", "importlib.machinery",
)  # fmt: skip
WARM_COMPONENTS = (
    "wasmtime.component", "wasmsbx.components.types", "wasmsbx.components.values",
    "wasmsbx.components.wave", "wasmsbx.components.binary", "wasmsbx.components.fastbytes",
    "wasmsbx.components.fastlift",
    "wasmsbx.components.probe", "wasmsbx.components.runtime", "wasmsbx.components.sandbox",
)  # fmt: skip
_WARMED: set = set()  # the tuples warm_imports went through


def warm_imports(names: tuple) -> None:
    """Import ``names`` (those that can be: a runtime not installed is skipped) once per
    process, holding a lock, so that no two threads import them at once (see above)."""
    with _WARM_LOCK:
        if names in _WARMED:
            return
        import importlib

        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:  # (wasmer or the component model not installed)
                pass
        _WARMED.add(names)


def _warm_for(component: bool) -> None:
    if threading.active_count() > 1:  # (the deadline keeper's thread is not counted)
        warm_imports(WARM_IMPORTS)
        if component:
            warm_imports(WARM_COMPONENTS)


class Sandbox(_core.Sandbox, Services):
    """A module loaded under a policy, ready to call (see runner.sandbox.Sandbox), with
    ``batch``, ``stream`` and ``audit``.

    >>> box = Sandbox("examples/add.wat")
    >>> box.call("add", 5, 3)
    8

    A WebAssembly component gives a ``components.sandbox.ComponentSandbox`` (same
    methods, WIT-typed values), chosen by the file's header before anything else.
    """

    def __new__(cls, module: Any = None, *args: Any, **kwargs: Any) -> Sandbox:
        # Annotated Sandbox, not Any: with Any, mypy and pyright typed every
        # ``Sandbox(...)`` as Any and checked nothing (a component sandbox has the same
        # methods, with WIT-typed values).
        if _core._PREREAD_SLOT.__dict__:  # (one an __init__ never took: never another's)
            _core._PREREAD_SLOT.__dict__.clear()
        if cls is not Sandbox or module is None:
            if _WARM_NEEDED:
                _warm_for(False)
            return super().__new__(cls)
        read = preread(module)  # (a small file: read once, here, for both)
        component = _is_component_file(module, read[:4096] if read is not None else None)
        if _WARM_NEEDED:  # (Python 3.9 and 3.10, see warm_imports)
            _warm_for(component)
        if component:
            # Not an instance of cls, so Python does not call __init__ again on it.
            return cast(Sandbox, component_class()(module, *args, **kwargs))
        box = super().__new__(cls)
        if read is not None:  # (for the __init__ that follows, in this thread)
            # (a weak reference: an id() comes again once its object is freed)
            _core._PREREAD_SLOT.read = (weakref.ref(box), module, read)
        return box

    def __enter__(self) -> Sandbox:  # this class, with batch/stream/audit, for checkers
        return self


def component_class() -> type:
    """ComponentSandbox with ``batch`` (Services): the components feature sits above the
    core sandbox and below nothing here, so the public class is assembled at this level."""
    if not _COMPONENT_CLASS:
        from ..components.sandbox import ComponentSandbox

        class PublicComponentSandbox(ComponentSandbox, Services):
            __doc__ = ComponentSandbox.__doc__

        PublicComponentSandbox.__name__ = PublicComponentSandbox.__qualname__ = "ComponentSandbox"
        _COMPONENT_CLASS.append(PublicComponentSandbox)
    return _COMPONENT_CLASS[0]


def run(
    module: Union[str, os.PathLike, bytes, bytearray, memoryview],
    func: str,
    *args: Any,
    policy: Optional[policy_mod.Policy] = None,
    backend: Optional[str] = None,
) -> Any:
    """``wasmsbx.run("add.wat", "add", 5, 3) -> 8``."""
    box = Sandbox(module, policy, backend=backend)
    try:
        return box.call(func, *args)
    finally:
        box.close()


__all__ = [
    "CallResult",
    "CommandResult",
    "Exports",
    "Function",
    "Globals",
    "Group",
    "Memory",
    "RunStats",
    "Sandbox",
    "format_value",
    "json_value",
    "parse_args",
    "read_module",
    "run",
]
