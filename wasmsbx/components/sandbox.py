"""``Sandbox`` for a component: the same face as for a core module, WIT-typed.

``runner.Sandbox("c.wasm")`` returns a ``ComponentSandbox`` when the file's header says
component (``components.is_component``), so the Python API and every command take
components as they are. Functions are named as users see them: ``greet`` for a root
export, ``ns:pkg/iface@1.0.0#greet`` inside an interface (the interface may be written
without its version, and a function name that is unique in the component needs no
interface at all).
"""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from .. import errors
from .. import policy as policy_mod
from ..backends.base import ExportInfo, WasiSetup
from ..runner.sandbox import RunStats, Sandbox, _making, engine_options, limits_from, read_file
from ..runner.warm import _WARM_NEEDED, WARM_COMPONENTS, WARM_IMPORTS, warm_imports
from ..wasm.source import ARTIFACT_FIRST_BYTE
from . import binary, runtime, wave
from .types import passable
from .values import ValueProblem, check, to_json

RUN_INTERFACE = "wasi:cli/run@"
# Parameter kinds whose command-line word is the value itself, not WAVE.
PLAIN_WORDS = ("string", "char", "enum")


def component_bytes(data: bytes, path: Any, bound: tuple = ()) -> bytes:
    """The component's binary: as is, or converted from WAT text (``(component ...)``),
    within ``bound`` (wasm.source.text_bound: red team 126, a component's text took the
    default minute, not the policy's compile timeout)."""
    from . import is_component

    if is_component(data):
        return data
    from ..runner.sandbox import wat_to_wasm

    wasm = wat_to_wasm(data, path, *bound)
    if not is_component(wasm):
        raise errors.ModuleError(f"{path}: not a WebAssembly component", path=str(path))
    return wasm


def find_export(exports: list, name: str, where: str) -> runtime.ComponentExport:
    """The function ``name`` names: exactly, as ``iface#func`` without the version, or
    as a bare function name only one interface exports."""
    if not isinstance(name, str):  # (5, None, bytes: a TypeError, red team 148)
        raise errors.UsageError(
            f"a function is named by a string, not {type(name).__name__}",
            hint=exports_hint(exports),
        )
    exact = [e for e in exports if e.name == name]
    if exact:
        return exact[0]
    if "#" in name:
        iface, _, func = name.rpartition("#")
        found = [
            e
            for e in exports
            if e.func == func and e.interface and e.interface.split("@")[0] == iface
        ]
    else:
        found = [e for e in exports if e.func == name]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise errors.UsageError(
            f"{errors.quoted(name)} is exported by several interfaces",
            hint="name one: " + ", ".join(errors.inert(e.name) for e in found),
        )
    close = errors.closest(name, (e.name for e in exports))
    raise errors.UsageError(
        f"{where} has no exported function {errors.quoted(name)}",
        hint=(f"did you mean '{errors.inert(close)}'? " if close else "") + exports_hint(exports),
        function=name,
    )


def exports_hint(exports: list) -> str:
    funcs = [f"{errors.inert(e.name)}: {errors.inert(e.sig, 400)}" for e in exports]
    if not funcs:
        return "the component exports no functions"
    more = " ..." if len(funcs) > 8 else ""
    return "exported functions: " + "; ".join(funcs[:8]) + more


def run_export(exports: list, where: str) -> runtime.ComponentExport:
    """The ``wasi:cli/run`` function, or a UsageError."""
    run = [e for e in exports if (e.interface or "").startswith(RUN_INTERFACE)]
    if not run:
        raise errors.UsageError(
            f"{where} does not export wasi:cli/run, so it cannot run as a command",
            hint=exports_hint(exports) + " (name one to call it)",
        )
    return run[0]


class ComponentCallResult(namedtuple("ComponentCallResult", "function value type stats")):
    """One call's result: the canonical Python value and its WIT type (None: no result)."""

    function: str
    value: Any
    type: Any
    stats: RunStats
    __slots__ = ()

    @property
    def values(self) -> list:
        return [] if self.type is None else [self.value]

    @property
    def types(self) -> tuple:
        return () if self.type is None else (str(self.type),)

    def text_lines(self, terminal: bool = False) -> list:
        """As ``wasmsbx run`` prints it: strings and scalars plain, the rest as WAVE.

        ``terminal``: the text goes to a terminal, where a guest's control characters
        could drive it (``\x1b]52;...``), so they are written as WAVE escapes there."""
        t = self.type
        if t is None:
            return []
        if t.kind in ("string", "char") and terminal and _controls(self.value):
            return [wave.format(self.value, t)]
        if t.kind in ("string", "char", "enum", "bool") or t.kind in wave.INTS:
            return [wave.format(self.value, t) if t.kind == "bool" else str(self.value)]
        if t.kind in ("f32", "f64"):
            return [wave.format_float(self.value, t.kind)]
        return [wave.format(self.value, t)]

    def to_dict(self) -> dict:
        results = []
        if self.type is not None:
            results.append(
                {
                    "type": str(self.type),
                    "value": to_json(self.value, self.type),
                    "wave": wave.format(self.value, self.type),
                }
            )
        return {"function": self.function, "results": results, "stats": self.stats.to_dict()}


def _controls(text: str) -> bool:
    """True if ``text`` holds control characters other than newline and tab."""
    return any((ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0 for c in text)


class ComponentSandbox(Sandbox):
    """A component loaded under a policy, ready to call or run as a command."""

    is_component = True
    _keeps_functions = False  # box["f"] makes its Function each time, as it always did
    use_cache = None  # (core sandboxes set it; a cluster then keeps the policy's own)
    _compact_names = None  # (names of its own: Sandbox.SANDBOX_NAMES are not reserved)

    def __init__(
        self,
        module,
        policy: Optional[policy_mod.Policy] = None,
        *,
        backend: Optional[str] = None,
        kind: str = "call",
        use_cache: Optional[bool] = None,
        artifact: Optional[str] = None,
        cache_dir: Optional[str] = None,
        progress: Any = None,
        function: Optional[str] = None,
        args: Any = None,
        deadline: Optional[float] = None,
        imports: Any = None,
        group: Any = None,
        name: Optional[str] = None,
    ) -> None:
        """As :class:`wasmsbx.Sandbox`; ``function``/``args`` are checked when the call is
        made (against the WIT signature), ``deadline`` bounds the whole run. Host imports
        and linking are for core modules: a component is refused with them."""
        if imports or group is not None:
            raise errors.UsageError(
                "host imports and linking (imports=, Group) are for core modules; "
                "a component's imports are WASI 0.2 only",
                hint="build the host interface into the component's world instead",
            )
        from_bytes = isinstance(module, (bytes, bytearray, memoryview))
        self.path = Path(name or "<bytes>") if from_bytes else Path(module)
        self.deadline = deadline
        self.policy = policy if policy is not None else policy_mod.discover()
        self.timings: dict = {}
        self.warnings: list = []
        self.progress = progress
        self.cache_dir = cache_dir
        from ..runner.sandbox import check_stdio

        # As for core modules: no output over the component, the policy, the trust folder.
        self.policy = check_stdio(self.policy, [self.path, artifact])
        if self.policy.grants:  # a folder the guest may write on the import path?
            from ..runner.importpath import guard

            guard(self.policy.grants, component=True)
        started = time.perf_counter()
        limit = self.policy.values["limits.module_size"]  # (as read: red team 149)
        data = bytes(module) if from_bytes else read_file(self.path, limit=limit)
        if from_bytes:  # (batch workers rebuild the sandbox from them: runner.batch)
            self._given = data
        from ..backends.compiling import check_size

        check_size(len(data), self.policy.values["limits.module_size"], self.path.name)
        self.wasm: Optional[bytes] = None
        self.artifact = None
        if data[:1] == ARTIFACT_FIRST_BYTE and artifact is None:
            from ..native import artifact as aot

            # Alone: authenticated as a module's artifact is (refused -> exit 102).
            self.artifact = aot.open_for(self, data, str(self.path))
        if self.artifact is None:
            from ..wasm.source import text_bound

            bound = text_bound(self.policy, self.deadline, self.path.name)
            self.wasm = component_bytes(data, self.path, bound)
        if artifact is not None:  # verified as for modules; refused -> warning, compiled
            from ..native import artifact as aot

            self.artifact = aot.open_for(self, None, artifact)
        self.timings["read"] = time.perf_counter() - started
        from ..wasm.source import bounded_reads

        # (read by the run's deadline, else within limits.compile_timeout, as a core
        # module's sections are: 128 MiB of imports took 12 s to scan)
        with bounded_reads(self.policy, self.deadline, self.path.name):
            self.layout = self._layout()
        self.selection = None
        self._spec = backend
        self.backend_name, self.compiler = self._choose(backend, kind)
        from .. import backends

        self.engine = runtime.ComponentEngine(
            backends.get(self.backend_name).engine(engine_options(self.policy, self.compiler))
        )
        self.cache_state = "off"
        self.recorded_exports = None
        cache_wanted = self.policy.values["runtime.cache"] if use_cache is None else use_cache
        self.module = None
        if self.artifact is not None:
            from ..native import artifact as aot

            # Built from this very component (sha256) for this engine (kind: component).
            self.module = aot.load_for(self)
        if self.module is None:
            self.module = self._compile(cache_wanted)
        self._note_probe()
        self.component_exports = runtime.exports(self.engine, self.module, self.layout.probed)
        self.import_names = [i.name for i in runtime.imports(self.engine, self.module)]
        runtime.check_imports(self.import_names)  # refused at load, before any call
        self.export_list = [ExportInfo(e.name, "func", e.sig) for e in self.component_exports]
        self._instance: Any = None

    def _layout(self) -> binary.Layout:
        """What instantiating creates (the limits need it): scanned from the component, or
        for an artifact alone, read from its authenticated header."""
        if self.wasm is not None:
            try:
                return binary.scan(self.wasm)
            except binary.ComponentFormatError as exc:
                raise errors.ModuleError(
                    f"{self.path}: {exc}", hint=exc.hint, path=str(self.path)
                ) from None
        record = self.artifact.header["module"].get("component")
        if not isinstance(record, dict) or not {"tables", "host"} <= record.keys():
            # (one recorded before tables and the GC heap were counted would run under the
            # old per-table cap and without the GC heap's share: red team round 70; one
            # before the runtime's memory was, without that bound: round 76)
            why = (
                "it does not record the component's layout (tables, GC heap and the "
                "runtime's memory included), which the limits need (made by an older "
                "wasmsbx)"
            )
        else:
            try:
                return binary.layout_from_record(record)
            except binary.ComponentFormatError as exc:
                why = str(exc)
        raise errors.ModuleError(
            f"{self.path}: refused precompiled artifact: {why}",
            hint="compile it again: `wasmsbx compile COMPONENT -o FILE`, or run it beside "
            "its component (`--artifact FILE`)",
            path=str(self.path),
        )

    def _note_probe(self) -> None:
        """The compiled component carries the memory probe (``--stats`` memory): its
        core instance joins the layout. An artifact alone says so in its header."""
        if self.wasm is None:
            if self.layout.probed and not runtime.has_probe(self.engine, self.module, None):
                self.layout = self.layout._replace(probed=False)  # counted, never called
        elif runtime.has_probe(self.engine, self.module, self.wasm):
            self.layout = runtime.with_probe(self.layout)

    # --------------------------------------------------------------- choosing
    def _choose(self, backend: Optional[str], kind: str) -> tuple:
        """Always scored: the component model is a hard requirement a backend may lack."""
        from ..backends import select

        self.selection = select.select(self.policy, self._features(), kind, backend)
        return self.selection.backend, self.selection.compiler

    def _features(self) -> frozenset:
        return frozenset({"component-model"})

    def explain(self, kind: str = "call") -> Any:
        return self.selection

    # ``_compile`` (the cache, or compiling now) and ``_compile_now`` are Sandbox's: the
    # ComponentEngine gives them components, serialized with Component.serialize.

    # --------------------------------------------------------------- exports
    def resolve(self, name: str) -> runtime.ComponentExport:
        """The export called ``name`` (see the module docstring for the spellings)."""
        return find_export(self.component_exports, name, self.path.name)

    def signature(self, func: str) -> Any:
        return self.resolve(func).sig

    def _exports_hint(self) -> str:
        return exports_hint(self.component_exports)

    # --------------------------------------------------------------- arguments
    def typed_args(
        self,
        export: runtime.ComponentExport,
        args: Sequence[Any],
        text: bool,
        as_json: bool = False,
    ) -> list:
        """Arguments checked against the WIT parameter types.

        ``text``: every argument is WAVE (``--invoke``). ``as_json``: every argument is typed
        JSON (as ``--json`` prints values; the MCP server's ``call_export``). Otherwise a str
        is a command-line word: taken as is for string, char and enum parameters, read as
        WAVE for the rest; any other Python value is checked as it is.
        """
        sig = export.sig
        for pname, ptype in sig.params:
            reason = passable(ptype)
            if reason:
                raise errors.UsageError(f"{export.name}: parameter {pname}: {reason}")
        if len(args) != len(sig.params):
            n = len(sig.params)
            raise errors.UsageError(
                f"{export.name} takes {n} argument{'s' if n != 1 else ''}, got {len(args)}",
                hint=f"signature: {export.name}: {sig}",
            )
        return [
            self._arg(export, i, pname, ptype, value, text, as_json)
            for i, ((pname, ptype), value) in enumerate(zip(sig.params, args))
        ]

    def _arg(
        self, export, index: int, pname: str, ptype, value: Any, text: bool, as_json: bool
    ) -> Any:
        try:
            if as_json:
                from .values import from_json

                return from_json(value, ptype)
            if isinstance(value, str) and (text or ptype.kind not in PLAIN_WORDS):
                if ptype.kind == "char" and not text and len(value) == 1:
                    return value
                return wave.parse(value, ptype)
            return check(value, ptype)
        except ValueProblem as exc:
            spelling = (
                'typed JSON, e.g. [1, 2], {"name": "x"}, {"some": 1}, {"ok": "y"}'
                if as_json
                else 'WAVE, e.g. [1, 2], {name: "x"}, some(1), ok("y")'
            )
            if as_json and isinstance(value, str) and ptype.kind not in PLAIN_WORDS:
                spelling += " (for WAVE text, set wave=true)"
            raise errors.UsageError(
                f"{export.name}: argument {index + 1} ({pname}: {ptype}): {exc}",
                hint=f"signature: {export.name}: {export.sig}; compound values are {spelling}",
                function=export.name,
            ) from None

    # --------------------------------------------------------------- calling
    def instantiate(self, wasi: Optional[WasiSetup] = None, seconds: Any = None) -> Any:
        """A new instance (``seconds``: as for a module; a component's start runs under
        the policy's timeout)."""
        started = time.perf_counter()
        wasi = wasi or self.wasi_setup()
        if wasi.grants:  # the grants this instance gets (see runner/importpath.py)
            from ..runner.importpath import guard

            guard(wasi.grants, component=True)
        instance = runtime.ComponentInstance(
            self.engine,
            self.module,
            self.layout,
            limits_from(self.policy)._replace(deadline=self.deadline),
            wasi,
            self.import_names,
        )
        self.timings["instantiate"] = time.perf_counter() - started
        return instance

    def invoke(
        self,
        func: str,
        args: Sequence[Any] = (),
        fresh: bool = False,
        wasi: Optional[WasiSetup] = None,
        wave_args: bool = False,
        json_args: bool = False,
        memory: bool = True,
    ) -> ComponentCallResult:
        """Call ``func``; ``wave_args``: every argument is WAVE text (``--invoke``);
        ``json_args``: every argument is typed JSON (see components.values); ``memory``:
        read the memory figure for the stats (a call of the hidden probe, ~20 us)."""
        export = self.resolve(func)
        reason = passable(export.sig.result)
        if reason:
            raise errors.UsageError(f"{export.name}: its result cannot be returned: {reason}")
        typed = self.typed_args(export, args, wave_args, json_args)
        instance = self._instance
        if instance is None or fresh or instance.poisoned:
            if _WARM_NEEDED and threading.active_count() > 1:  # (see runner/warm.py)
                warm_imports(WARM_IMPORTS)
                warm_imports(WARM_COMPONENTS)
            with _making(self, self.policy.timeout):  # (one instance for those that found none)
                instance = self._instance
                if instance is None or fresh or instance.poisoned:
                    if instance is not None:  # (another thread's call may run on it)
                        instance.close_if_idle()
                    instance = self._instance = self.instantiate(wasi)
        started = time.perf_counter()
        try:
            value = instance.call(export, typed)
        finally:
            self.timings["run"] = time.perf_counter() - started
        usage = instance.usage(memory)
        return ComponentCallResult(
            export.name, value, export.sig.result, self._stats(instance, usage)
        )

    def call(self, func: str, *args: Any) -> Any:
        """``box.call("greet", "World") == "Hello, World"``: Python values in and out."""
        return self.invoke(func, args, memory=False).value  # no stats: no memory probe

    def run_command(
        self,
        argv: Sequence[str] = (),
        stdin: Any = None,
        capture: bool = False,
        program: Optional[str] = None,
    ) -> Any:
        """Run the component's ``wasi:cli/run`` export: its status (0 ok, 1 err, or the
        code given to wasi:cli/exit) folded into an exit code as a module's is.
        ``program``: the guest's first argument (the file's name if None)."""
        from ..runner.sandbox import CommandResult

        run = run_export(self.component_exports, self.path.name)
        instance = self.instantiate(self.wasi_setup(argv, stdin, capture, program))
        started = time.perf_counter()
        try:
            code = instance.run_command(run)
        except errors.WasmsbxError as exc:
            from ..runner.sandbox import keep_output

            keep_output(exc, instance)
            raise
        finally:
            self.timings["run"] = time.perf_counter() - started
            instance.close()
        usage = instance.usage()
        return CommandResult.of_status(
            code, self._stats(instance, usage), usage.stdout, usage.stderr
        )

    def batch_caller(self, func: str, fresh: bool = False) -> ComponentCaller:
        """What ``--batch`` calls per item (``batch.make_caller``)."""
        return ComponentCaller(self, func, fresh)

    def stream_session(self, func: str, chunk_size: int) -> Any:
        """What ``--stream`` feeds: FUNC(chunk: list<u8>) -> list<u8> (components.stream)."""
        from .stream import ComponentStreamSession

        return ComponentStreamSession(self, func, chunk_size)

    def audit(self) -> Any:
        """The static audit of this component (``components.audit``: what ``wasmsbx
        audit`` reports) under this sandbox's policy; it read a component as a core
        module and raised a ValueError (round 155)."""
        if self.wasm is None:
            raise errors.UsageError("a precompiled artifact cannot be audited: audit its component")
        from .audit import audit_component

        return audit_component(str(self.path), self.wasm, self.policy)

    def close(self) -> None:
        if self._instance is not None:
            self._instance.close()
            self._instance = None


class ComponentCaller:
    """``--batch`` for a component: each item's arguments are typed JSON (as ``--json``
    prints values: ``{"some": 1}``, ``{"ok": 2}``, records as objects...), checked
    against the WIT signature; results come back as typed JSON too."""

    def __init__(self, box: ComponentSandbox, func: str, fresh: bool = False) -> None:
        from ..runner.batch import guest_wasi

        self.box = box
        self.export = box.resolve(func)
        for pname, ptype in self.export.sig.params:
            reason = passable(ptype)
            if reason:
                raise errors.UsageError(f"{self.export.name}: parameter {pname}: {reason}")
        self.fresh = fresh
        self.wasi = guest_wasi(box)
        self.instance: Any = None

    def ready(self) -> None:
        self.instance = self.box.instantiate(self.wasi)

    def run(self, line: int, payload: Any) -> Any:
        from ..runner.batch import BadItem, BatchResult, error_record, parse_item

        started = time.perf_counter()
        ident: Any = line
        try:
            args, given = parse_item(payload)
            ident = line if given is None else given
            typed = self._args(args)
            if self.instance is None or self.instance.poisoned:
                self._drop()
                self.instance = self.box.instantiate(self.wasi)
            value = self.instance.call(self.export, typed)
            if self.fresh:
                self._drop()
        except errors.WasmsbxError as exc:
            if isinstance(exc, errors.TrapError):
                self._drop()
            if isinstance(exc, BadItem) and exc.ident is not None:  # (its own id: see it)
                ident = exc.ident
            return BatchResult(line, ident, None, error_record(exc), time.perf_counter() - started)
        result = self.export.sig.result
        out = [] if result is None else [to_json(value, result)]
        return BatchResult(line, ident, out, None, time.perf_counter() - started)

    def _args(self, args: list) -> list:
        from .values import from_json

        params = self.export.sig.params
        if len(args) != len(params):
            raise errors.UsageError(
                f"{self.export.name} takes {len(params)} arguments, got {len(args)}",
                hint=f"signature: {self.export.name}: {self.export.sig}",
            )
        out = []
        for i, ((pname, ptype), value) in enumerate(zip(params, args)):
            try:
                out.append(from_json(value, ptype))
            except ValueProblem as exc:
                raise errors.UsageError(
                    f"{self.export.name}: argument {i + 1} ({pname}: {ptype}): {exc}"
                ) from None
        return out

    def _drop(self) -> None:
        if self.instance is not None:
            self.instance.close()
            self.instance = None

    def close(self) -> None:
        self._drop()


# A batch worker rebuilds this class for a component (runner.batch reads it off the box).
ComponentSandbox.worker_kind = ComponentSandbox
