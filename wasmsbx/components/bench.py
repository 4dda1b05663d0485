"""``wasmsbx bench`` for a component: its phases on the same harness as a module's.

``prepare`` checks the function and its arguments once (WIT-typed, as ``run`` does);
``BenchEngine`` and ``BenchInstance`` put a component behind the engine and instance
interface the harness drives (compile, serialize/deserialize, instantiate, call by
name, repeat, run_command). ``repeat`` arms the limits per call (a component call
also lowers and lifts its values), where a module's tight loop arms them per block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from . import binary, runtime
from .sandbox import find_export, run_export


def prepare(case: Any, result: Any, wasm: bytes, policy: Any) -> dict:
    """The bench harness's ``prepared`` dict for a component case."""
    import hashlib

    from .. import errors
    from ..backends.base import EngineOptions
    from ..backends.wasmtime.backend import WasmtimeEngine
    from .sandbox import ComponentSandbox

    result.sha256 = hashlib.sha256(wasm).hexdigest()
    name = Path(case.module).name
    from ..wasm.source import bounded_reads

    try:  # what BenchEngine scans for the limits: refused here, with its hint
        with bounded_reads(policy, None, name):  # (as a compile)
            binary.scan(wasm)
    except binary.ComponentFormatError as exc:
        raise errors.ModuleError(f"{name}: {exc}", hint=exc.hint) from None
    from ..backends.compiling import compile_bounded, too_slow

    engine = runtime.ComponentEngine(WasmtimeEngine(EngineOptions(optimize="none")))
    # Introspection only (each backend compiles its own), bounded as run's compiles are:
    # in time and memory (it compiled unwatched: red team round 32).
    seconds = policy.values["limits.compile_timeout"]
    component = compile_bounded(engine, wasm, seconds, lambda: too_slow(name, seconds))
    exports = runtime.exports(engine, component, runtime.has_probe(engine, component, wasm))
    prepared = {"wasm": wasm, "features": frozenset({"component-model"}), "typed": []}
    prepared.update(component=True, exports=[], component_exports=exports)
    if case.function is None:
        run_export(exports, name)
        result.kind = "command"
        return prepared
    result.kind = "call"
    export = find_export(exports, case.function, name)
    box = ComponentSandbox.__new__(ComponentSandbox)  # only its argument checking is used
    try:
        prepared["typed"] = box.typed_args(export, [str(a) for a in case.args], False)
    except errors.UsageError:
        prepared["typed"] = box.typed_args(export, list(case.args), False)
    return prepared


class BenchEngine:
    """A component engine with the module engine's ``instantiate(module, limits, wasi)``."""

    is_component = True  # (compiling.in_child)

    def __init__(self, engine: Any, wasm: bytes, exports: list) -> None:
        self.inner = runtime.ComponentEngine(engine)
        self.wasm = wasm
        self.layout = binary.scan(wasm)
        self.exports = exports
        self.imports: list = []
        self.probed: Optional[bool] = None  # known at the first instantiation

    @property
    def backend(self) -> str:
        return self.inner.backend

    @property
    def options(self) -> Any:
        return self.inner.options

    @property
    def worker_wrap(self) -> str:
        return self.inner.worker_wrap

    def compile(self, wasm: bytes) -> Any:
        component = self.inner.compile(wasm)
        self.describe(component, wasm)
        return component

    def describe(self, component: Any, wasm: bytes) -> None:
        """What the harness needs of a compiled component (one a worker compiled too)."""
        self.imports = [i.name for i in runtime.imports(self.inner, component)]

    def serialize(self, component: Any) -> bytes:
        return self.inner.serialize(component)

    def deserialize(self, data: Any) -> Any:
        return self.inner.deserialize(data)

    def instantiate(self, component: Any, limits: Any, wasi: Any) -> BenchInstance:
        if self.probed is None:  # the same binary every time: with the memory probe or not
            self.probed = runtime.has_probe(self.inner, component, self.wasm)
            if self.probed:
                self.layout = runtime.with_probe(self.layout)
        instance = runtime.ComponentInstance(
            self.inner, component, self.layout, limits, wasi, self.imports
        )
        return BenchInstance(instance, self.exports)


class BenchInstance:
    """A ComponentInstance called by function name, as the harness calls a module's."""

    def __init__(self, instance: runtime.ComponentInstance, exports: list) -> None:
        self.instance = instance
        self.exports = exports

    def call(self, name: str, args: Any) -> list:
        return [self.instance.call(find_export(self.exports, name, "component"), list(args))]

    def repeat(self, name: str, args: Any) -> Any:
        export, args = find_export(self.exports, name, "component"), list(args)
        call = self.instance.call

        def run(calls: int) -> None:
            for _ in range(calls):
                call(export, args)

        return run

    def run_command(self) -> int:
        return self.instance.run_command(run_export(self.exports, "component"))

    def usage(self) -> Any:
        return self.instance.usage()

    def close(self) -> None:
        self.instance.close()
