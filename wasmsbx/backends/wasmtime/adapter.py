"""The wasmtime adapter: availability, version and capabilities.

This module never imports wasmtime (about 50 ms of CPU: its ctypes bindings); only
``engine()`` does, through :mod:`wasmsbx.backends.wasmtime.backend`. So choosing a
backend, and a ``compile -o`` whose compile worker builds the engine, cost this process
none of it (the split of wasmer's backend.py and engine.py).
"""

from __future__ import annotations

from typing import Any, Optional

from ..base import Availability, Backend, Capabilities, EngineOptions
from ..reserve import FAST_NOTE
from .identity import FEATURES, _version, origin


class WasmtimeBackend(Backend):
    name = "wasmtime"
    compilers = ("cranelift",)
    default_compiler = "cranelift"

    def probe(self) -> Availability:
        if origin() is None:  # a dependency, but an environment can still lack it
            return Availability(
                False, reason="the wasmtime package is not installed", fix="pip install wasmtime"
            )
        return Availability(True)

    def version(self) -> str:
        return _version()

    def capabilities(self, compiler: Optional[str] = None) -> Capabilities:
        return Capabilities(
            # Components run through wasmtime.component (wasmsbx.components); the core
            # FEATURES stay the cache key's list.
            features=FEATURES | {"component-model"},
            security=frozenset(
                {
                    "fuel",
                    "timeout",
                    "interrupt",
                    "memory-limit",
                    "table-limit",
                    "stack-limit",
                    "instance-limit",
                    "wasi",
                    "wasi-readonly",
                    "stdio-redirect",
                    "fs-confined",
                }
            ),
            performance=frozenset(
                {"aot", "opt-levels", "in-process", "releases-gil", "dense-memory"}
            ),
            debugging=frozenset({"backtrace", "profiling", "debug-info"}),
            compilers=self.compilers,
            # benchmarks/backends.py (cpu.c): compile 56 ms, run bench(4) 98 ms; see wasmer's
            # SPEED for the scale. Epoch interruption costs it some run speed.
            compile_speed=0.65,
            run_speed=0.85,
            notes=(
                "every limit is enforced in-process",
                # benchmarks/epoch.py (cpu.wasm kernels, CPU time, ratios to no epochs)
                "epoch interruption (the timeout, Ctrl-C) costs 1.0-2.0x on CPU-bound guests "
                "(measured: mandelbrot 1.45x, sieve 1.9x, matmul 2.0x, quicksort 1.2x, "
                "xorshift 1.0x) and 1.23x on compiling; every policy has a timeout, and "
                "epochs are how a guest is stopped in process, so they stay everywhere but "
                "in `compile -o` artifacts, which `wasmsbx run` alone loads and ends "
                "the process at the timeout instead (`--interruptible` keeps them)",
                "engines are shared per process (one per optimize/fuel/stack setting, "
                "reservation under the dense layout, and memory_init)",
                FAST_NOTE,
            ),
        )

    def engine(self, options: EngineOptions) -> Any:
        """The process's engine for these options: one per engine configuration, shared
        by every sandbox whose policy implies it (an engine costs ~3 ms and a thread
        pool to build; sandboxes keep their own limits in their own stores)."""
        return (_ENGINE_FOR or _import_engine_for())(options)

    def compile_engine(self, options: EngineOptions) -> Any:
        """An engine that only compiles and serializes (``compile -o``'s): one that does
        not import wasmtime-py if this process has not (bare.py), else ``engine()``."""
        from .bare import engine

        return engine(options) or self.engine(options)


_ENGINE_FOR: Any = None  # backend.engine_for, imported when the first engine is asked for


def _import_engine_for() -> Any:
    global _ENGINE_FOR
    from .backend import engine_for

    _ENGINE_FOR = engine_for
    return engine_for
