"""What sandboxes import later, imported ahead of time, once, in one thread.

CPython before 3.11 hands a thread a partially initialised module when several threads
import the same modules at once and its module locks see a deadlock that is not there
(measured on 3.9: 5-7 of 8 threads making their first sandbox at once failed with
"ImportError: cannot import name 'FactsError' from partially initialized module").
There, once the process has threads, a sandbox first imports what sandboxes import
later (lazily: `import wasmsbx` and `wasmsbx run` stay lean), all of it in one thread,
under a lock: once per process for modules (45 ms on 3.9, the cache's database
included), once more for components (wasmtime's component model: 40 ms). The same lists
serve importpath.guard: a guest that may write a folder on sys.path finds them imported.
"""

from __future__ import annotations

import os
import sys
import threading

_WARM_LOCK = threading.Lock()
_WARM_NEEDED = sys.version_info < (3, 11)
WARM_IMPORTS = (
    "wasmsbx.errors", "wasmsbx.policy", "wasmsbx.units", "wasmsbx.values", "wasmsbx.host",
    "wasmsbx.memory", "wasmsbx.inputs", "wasmsbx.lru", "wasmsbx.capabilities",
    "wasmsbx.wasm.reader", "wasmsbx.wasm.model", "wasmsbx.wasm.code", "wasmsbx.wasm.facts",
    "wasmsbx.wasm.source", "wasmsbx.wasm.wasi",
    "wasmsbx.backends.base", "wasmsbx.backends.compiling", "wasmsbx.backends.deadline",
    "wasmsbx.backends.limits", "wasmsbx.backends.reserve", "wasmsbx.backends.select",
    "wasmsbx.backends.cgroup",
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
    "wasmsbx.runner.importpath",
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


def _forked() -> None:
    """In a fork's child: a lock another thread of the parent held (warming) would be
    held for ever, and the child's first sandbox would wait for it (red team round 61)."""
    global _WARM_LOCK
    _WARM_LOCK = threading.Lock()


if _WARM_NEEDED and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


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
