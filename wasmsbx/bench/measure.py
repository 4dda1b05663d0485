"""``wasmsbx bench`` core: time each phase of running a module, per backend, as plain data.

Phases, each measured on its own:

- ``compile``: cold compile, ``engine.compile(bytes)`` (the cache is bypassed);
- ``load``: the cached load, ``engine.deserialize`` of code serialized once (what a
  cache hit costs, without the disk read);
- ``instantiate``: a fresh store and instance (start function and ``_initialize``
  included, torn down after);
- ``call``: one warm call of FUNC on a live instance;
- ``run``: a WASI command, fresh instance plus ``_start`` to its exit.

Each sample times a block of operations with ``perf_counter`` around a tight loop, so
Python's per-call overhead stays out of the numbers; the block size is calibrated so a
sample lasts about ``sample_time``. For ``call`` the loop runs inside the backend
(``Instance.repeat``), with the policy's limits armed once per block. Statistics are
in :mod:`wasmsbx.bench.stats`; the JSON layout in :mod:`wasmsbx.bench.schema`.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .. import errors
from .stats import Stats, summarize

REPORT_VERSION = 1
PHASES = ("compile", "load", "instantiate", "call", "run")
CALL_PHASES = ("compile", "load", "instantiate", "call")
COMMAND_PHASES = ("compile", "load", "instantiate", "run")
PHASE_HELP = {
    "compile": "cold compile of the module bytes (cache bypassed)",
    "load": "deserialize precompiled native code (what a cache hit costs)",
    "instantiate": "a fresh store and instance, start function included",
    # (looped in the runtime: a call from Python adds its own cost, on wasmer a pipe
    # round trip to its worker process, so wasmer here read 12x faster than a real
    # Sandbox.call, which costs it about 2x wasmtime's: round 155)
    "call": "one warm call of the function on a live instance, looped inside the runtime "
    "(a call from Python adds its own cost; on wasmer, a round trip to its worker process)",
    "run": "a WASI command: fresh instance and _start to its exit",
}
MAX_OPS = 1_000_000  # operations per sample, at most

Progress = Callable[[str, str, str, int, int], None]  # case, backend, phase, done, total


# Samples per phase: every sample is kept for the statistics and the JSON report, so the
# count is bounded (the time budget bounds the rest).
MAX_SAMPLES = 1_000_000


@dataclass
class Settings:
    """How much to measure: samples, warm-up, time budget, the phases wanted."""

    iterations: int = 30  # measured samples per phase
    warmup: int = 3  # discarded samples per phase
    budget: float = 10.0  # seconds per phase and backend, warm-up included
    sample_time: float = 0.005  # target seconds per sample (sets operations per sample)
    phases: tuple = ()  # empty: every phase that applies

    def check(self, origin: str = "bench") -> Settings:
        problems = []
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int):
            problems.append(f"iterations must be a whole number, found {self.iterations!r}")
        elif self.iterations < 1:
            problems.append(f"iterations must be at least 1, found {self.iterations}")
        elif self.iterations > MAX_SAMPLES:
            problems.append(f"iterations must be at most {MAX_SAMPLES:,}, found {self.iterations}")
        if (
            isinstance(self.warmup, bool)
            or not isinstance(self.warmup, int)
            or not 0 <= self.warmup <= MAX_SAMPLES
        ):
            problems.append(
                f"warmup must be a whole number 0 .. {MAX_SAMPLES:,}, found {self.warmup!r}"
            )
        if not self.budget > 0:
            problems.append(f"budget must be greater than zero, found {self.budget!r}")
        if not self.sample_time > 0:
            problems.append(f"sample_time must be greater than zero, found {self.sample_time!r}")
        unknown = [p for p in self.phases if p not in PHASES]
        if unknown:
            problems.append(f"unknown phase {unknown[0]!r}")
        if problems:
            raise errors.UsageError(f"{origin}: {problems[0]}", hint=f"phases: {', '.join(PHASES)}")
        return self

    def to_dict(self) -> dict:
        return {
            "iterations": self.iterations,
            "warmup": self.warmup,
            "budget": self.budget,
            "sample_time": self.sample_time,
            "phases": list(self.phases),
        }


@dataclass
class Case:
    """One thing to benchmark: a function call (FUNC ARGS) or a WASI command (argv)."""

    name: str
    module: str
    function: Optional[str] = None
    args: list = field(default_factory=list)
    argv: list = field(default_factory=list)
    backends: tuple = ("auto",)
    settings: Settings = field(default_factory=Settings)
    policy: Any = None  # a wasmsbx.policy.Policy; None: discovered from the cwd


@dataclass
class PhaseResult:
    phase: str
    stats: Optional[Stats] = None
    warmup: int = 0  # warm-up samples actually taken
    budget_exhausted: bool = False  # stopped by the time budget before `iterations`
    skipped: Optional[str] = None  # why the phase was not measured

    def to_dict(self) -> dict:
        return {
            "phase": self.phase,
            "stats": self.stats.to_dict() if self.stats else None,
            "warmup": self.warmup,
            "budget_exhausted": self.budget_exhausted,
            "skipped": self.skipped,
        }


@dataclass
class BackendResult:
    """One backend and compiler on one case."""

    label: str
    backend: str
    compiler: Optional[str]
    version: Optional[str] = None
    status: str = "ok"  # ok | failed | skipped
    reason: Optional[str] = None  # why it was skipped
    error: Optional[dict] = None  # WasmsbxError.to_dict() plus "phase"
    phases: dict = field(default_factory=dict)  # phase -> PhaseResult
    memory_bytes: Optional[int] = None  # peak guest linear memory
    fuel_per_op: Optional[float] = None  # fuel per call (or per command run)
    exit_code: Optional[int] = None  # a WASI command's exit code

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "backend": self.backend,
            "compiler": self.compiler,
            "version": self.version,
            "status": self.status,
            "reason": self.reason,
            "error": self.error,
            "phases": {name: p.to_dict() for name, p in self.phases.items()},
            "memory_bytes": self.memory_bytes,
            "fuel_per_op": self.fuel_per_op,
            "exit_code": self.exit_code,
        }


@dataclass
class CaseResult:
    name: str
    module: str
    function: Optional[str]
    args: list
    argv: list
    kind: Optional[str] = None  # call | command (None when the module could not be read)
    sha256: Optional[str] = None
    policy: Optional[dict] = None  # {"source": ..., "values": Policy.to_dict()}
    settings: Optional[dict] = None
    error: Optional[dict] = None  # the case could not run at all
    results: list = field(default_factory=list)  # BackendResult

    @property
    def failed(self) -> bool:
        return self.error is not None or any(r.status == "failed" for r in self.results)

    @property
    def measured(self) -> bool:
        return any(r.status == "ok" for r in self.results)

    def first_error(self) -> Optional[dict]:
        if self.error:
            return self.error
        return next((r.error for r in self.results if r.error), None)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "module": self.module,
            "function": self.function,
            "args": [_json_arg(a) for a in self.args],
            "argv": list(self.argv),
            "kind": self.kind,
            "sha256": self.sha256,
            "policy": self.policy,
            "settings": self.settings,
            "error": self.error,
            "results": [r.to_dict() for r in self.results],
        }


@dataclass
class Report:
    cases: list  # CaseResult
    environment: dict = field(default_factory=dict)
    created: str = ""
    comparison: Optional[dict] = None  # set by attach_comparison

    @property
    def failures(self) -> list:
        return [c for c in self.cases if c.failed]

    @property
    def regressions(self) -> list:
        if not self.comparison:
            return []
        return [d for d in self.comparison["deltas"] if d["verdict"] == "regression"]

    def to_dict(self) -> dict:
        from .._version import __version__

        return {
            "report_version": REPORT_VERSION,
            "tool": {"name": "wasmsbx", "version": __version__},
            "created": self.created,
            "environment": self.environment,
            "cases": [c.to_dict() for c in self.cases],
            "comparison": self.comparison,
            "summary": {
                "cases": len(self.cases),
                "failed": len(self.failures),
                "regressions": len(self.regressions),
            },
        }


def _json_arg(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# ---------------------------------------------------------------------------- environment


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else what platform knows)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict:
    import platform
    import sys

    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "executable": sys.executable,
    }


# ---------------------------------------------------------------------------- measuring


def _calibrate(op: Callable[[int], float], sample_time: float, deadline: float) -> int:
    """Operations per sample so that one sample lasts at least ``sample_time``.

    One operation first, untimed for the estimate (the first call is often cold), then
    the block grows (at most tenfold a step) until it lasts ``sample_time``, or until the
    next block would end past ``deadline`` (the phase's budget: a suite's `sample_time
    = "30s"` under `budget = "1s"` grew blocks to 20,000 compiles, 81 s: red team 129).
    """
    op(1)
    ops = 1
    while ops < MAX_OPS:
        elapsed = op(ops)
        if elapsed >= sample_time:
            break
        grow = min(10, max(2, math.ceil(sample_time / max(elapsed, 1e-9))))
        if time.perf_counter() + elapsed * grow > deadline:
            break
        ops = min(MAX_OPS, ops * grow)
    return ops


def measure(
    op: Callable[[int], float],
    settings: Settings,
    phase: str,
    on_sample: Optional[Callable[[int, int], None]] = None,
) -> PhaseResult:
    """Sample ``op(n)`` (which returns the seconds n operations took) under the settings.

    Warm-up and calibration count against the budget; at least one sample is taken.
    """
    gc.collect()  # garbage of the previous phase is not this phase's cost
    deadline = time.perf_counter() + settings.budget
    ops = _calibrate(op, settings.sample_time, deadline)
    warm = 0
    while warm < settings.warmup and time.perf_counter() < deadline:
        op(ops)
        warm += 1
    values: list = []
    exhausted = False
    while len(values) < settings.iterations:
        if values and time.perf_counter() >= deadline:
            exhausted = True
            break
        values.append(op(ops) / ops)
        if on_sample:
            on_sample(len(values), settings.iterations)
    return PhaseResult(phase, summarize(values, ops), warm, exhausted)


class _Counted:
    """Wraps a timed op and counts the operations it ran (for fuel per operation)."""

    def __init__(self, op: Callable[[int], float]) -> None:
        self.op = op
        self.ops = 0

    def __call__(self, n: int) -> float:
        self.ops += n
        return self.op(n)


# ---------------------------------------------------------------------------- choosing backends


def _label(name: str, compiler: Optional[str], compilers: tuple) -> str:
    return f"{name}:{compiler}" if compiler and len(compilers) > 1 else name


def resolve_backends(specs: Sequence[str], policy: Any, features: Any, kind: str) -> list:
    """[(label, name, compiler, skip_reason)] for the backend specs (auto, all, NAME[:COMPILER])."""
    from .. import backends
    from ..backends import select

    chosen: list = []

    def add(name: str, compiler: Optional[str], reason: Optional[str]) -> None:
        label = _label(name, compiler, backends.get(name).compilers)
        if all(c[0] != label for c in chosen):
            chosen.append((label, name, compiler, reason))

    for spec in specs:
        if spec == "auto":
            spec = policy.values["runtime.backend"]
        if spec == "auto":
            winner = select.select(policy, features, kind)
            add(winner.backend, winner.compiler, None)
            continue
        pairs = select.candidates_for("auto" if spec == "all" else spec)
        if not pairs:
            raise errors.UsageError(
                f"backend {spec!r} has no compiler of that name",
                hint=f"backends: {', '.join(backends.names())}, or all",
            )
        for adapter, compiler in pairs:
            add(adapter.name, compiler, _why_not(adapter, compiler, policy, features, kind))
    return chosen


def _why_not(adapter: Any, compiler: Optional[str], policy: Any, features: Any, kind: str):
    """None if this backend may run the case under the policy, else the reason."""
    from ..backends import select

    availability = adapter.probe()
    if not availability.available:
        fix = f" (fix: {availability.fix})" if availability.fix else ""
        return f"unavailable: {availability.reason}{fix}"
    spec = f"{adapter.name}:{compiler}" if compiler else adapter.name
    try:
        select.select(policy, features, kind, backend=spec)
    except errors.BackendUnavailable as exc:
        reasons = [
            "; ".join(c["excluded"]) for c in exc.context.get("candidates", []) if c["excluded"]
        ]
        return "not eligible: " + (reasons[0] if reasons else exc.message)
    return None


def check_backend_specs(specs: Sequence[str]) -> None:
    """Reject backend names that are not registered (a usage error, before any work)."""
    from .. import backends

    for spec in specs:
        if spec in ("auto", "all"):
            continue
        if backends.split(spec)[0] not in backends.names():
            import difflib

            known = [*backends.names(), "all", "auto"]
            close = difflib.get_close_matches(spec, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise errors.UsageError(
                f"unknown backend {spec!r}", hint=hint + f"known: {', '.join(known)}"
            )


# ---------------------------------------------------------------------------- one case


def bench_policy(policy: Any) -> Any:
    """A copy of the policy for benchmarking: guest stdio goes nowhere unless it says so."""
    from ..policy import discover, override

    policy = policy if policy is not None else discover()
    copy = policy.copy()
    for stream in ("stdin", "stdout", "stderr"):
        if f"stdio.{stream}" not in copy.explicit:
            override(copy, f"stdio.{stream}", "null", origin="bench")
    return copy


def run_case(case: Case, progress: Optional[Progress] = None) -> CaseResult:
    """Measure every wanted phase of ``case`` on each of its backends."""
    result = CaseResult(case.name, case.module, case.function, list(case.args), list(case.argv))
    result.settings = case.settings.to_dict()
    try:
        policy = bench_policy(case.policy)
        result.policy = {"source": policy.source, "values": policy.to_dict()}
        prepared = _prepare(case, result, policy)
        targets = resolve_backends(case.backends, policy, prepared["features"], result.kind)
    except errors.WasmsbxError as exc:
        result.error = exc.to_dict()
        return result
    for label, name, compiler, reason in targets:
        if reason:
            result.results.append(
                BackendResult(label, name, compiler, status="skipped", reason=reason)
            )
            continue
        runner = _BackendBench(case, policy, prepared, label, name, compiler, progress)
        result.results.append(runner.run())
    return result


def _prepare(case: Case, result: CaseResult, policy: Any) -> dict:
    """Read the module and check the function and its arguments once, before any backend."""
    from ..backends.base import ExportInfo, Signature
    from ..backends.compiling import check_size
    from ..runner.sandbox import find_signature, parse_args, read_module
    from ..wasm.facts import FactsError, read_facts

    wasm = read_module(case.module, policy)
    # limits.module_size, as run applies it (exit 117; red team round 77)
    check_size(len(wasm), policy.values["limits.module_size"], Path(case.module).name)
    from ..components import is_component

    if is_component(wasm):
        from ..components.bench import prepare

        return prepare(case, result, wasm, policy)
    try:
        facts = read_facts(wasm)
    except FactsError as exc:
        raise errors.ModuleError(f"{case.module}: {exc}", path=case.module) from None
    result.sha256 = facts.sha256
    exports = [
        ExportInfo(e.name, e.kind, Signature(e.type.params, e.type.results) if e.type else None)
        for e in facts.exports
    ]
    name = Path(case.module).name
    if case.function is None:
        if facts.export("_start") is None:
            raise errors.UsageError(
                f"{name} has no _start export, so it cannot run as a command",
                hint="name a function to benchmark: wasmsbx bench MODULE FUNC [ARGS...]",
            )
        result.kind = "command"
        _check_phases(case.settings.phases, "command")
        return {"wasm": wasm, "features": facts.features, "typed": [], "exports": exports}
    result.kind = "call"
    _check_phases(case.settings.phases, "call")
    sig = find_signature(exports, case.function, name)
    typed = parse_args(case.function, sig, case.args)
    return {"wasm": wasm, "features": facts.features, "typed": typed, "exports": exports}


def _check_phases(phases: Sequence[str], kind: str) -> None:
    applicable = CALL_PHASES if kind == "call" else COMMAND_PHASES
    if phases and not any(p in applicable for p in phases):
        what = "a function call" if kind == "call" else "a WASI command"
        raise errors.UsageError(
            f"no phase of {', '.join(phases)} applies to {what}",
            hint=f"phases for {what}: {', '.join(applicable)}",
        )


class _BackendBench:
    """The phases of one case on one backend and compiler."""

    def __init__(
        self,
        case: Case,
        policy: Any,
        prepared: dict,
        label: str,
        name: str,
        compiler: Optional[str],
        progress: Optional[Progress],
    ) -> None:
        from .. import backends

        self.case, self.policy, self.prepared = case, policy, prepared
        self.adapter = backends.get(name)
        self.result = BackendResult(label, name, compiler, version=self.adapter.version())
        self.progress = progress
        self.settings = case.settings
        self.kind = "call" if case.function is not None else "command"

    def wanted(self) -> list:
        applicable = CALL_PHASES if self.kind == "call" else COMMAND_PHASES
        return [p for p in applicable if not self.settings.phases or p in self.settings.phases]

    def run(self) -> BackendResult:
        from ..runner.sandbox import engine_options, limits_from

        phase = "compile"
        try:
            self.engine = self.adapter.engine(engine_options(self.policy, self.result.compiler))
            if self.prepared.get("component"):
                from ..components.bench import BenchEngine

                p = self.prepared
                self.engine = BenchEngine(self.engine, p["wasm"], p["component_exports"])
            self.limits = limits_from(self.policy)
            self.module = self._first_compile()
            for phase in self.wanted():
                self.result.phases[phase] = getattr(self, f"_{phase}")()
        except errors.WasmsbxError as exc:
            self._fail(phase, exc.to_dict())
        except Exception as exc:  # a bug in an adapter must not sink the other backends
            if os.environ.get("WASMSBX_DEBUG"):
                raise
            self._fail(phase, {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
        return self.result

    def _fail(self, phase: str, error: dict) -> None:
        self.result.status = "failed"
        self.result.error = {**error, "phase": phase}

    def _measure(self, phase: str, op: Callable[[int], float]) -> PhaseResult:
        def on_sample(done: int, total: int) -> None:
            if self.progress:
                self.progress(self.case.name, self.result.label, phase, done, total)

        on_sample(0, self.settings.iterations)
        return measure(op, self.settings, phase, on_sample)

    def _wasi(self) -> Any:
        from ..backends.base import WasiSetup

        v = self.policy.values
        return WasiSetup(
            argv=[Path(self.case.module).name, *self.case.argv],
            env=self.policy.env_for_guest(),
            grants=self.policy.grants,
            stdin=v["stdio.stdin"],
            stdout=v["stdio.stdout"],
            stderr=v["stdio.stderr"],
        )

    def _first_compile(self) -> Any:
        """The untrusted module's first compile, bounded by limits.compile_timeout (the
        compile phase then repeats what is known to finish)."""
        from ..backends.compiling import compile_bounded, too_slow

        seconds = self.policy.values["limits.compile_timeout"]
        name = os.path.basename(str(self.case.module))
        return compile_bounded(
            self.engine, self.prepared["wasm"], seconds, lambda: too_slow(name, seconds)
        )

    def _instance(self) -> Any:
        instance = self.engine.instantiate(self.module, self.limits, self._wasi())
        if self.kind == "call" and any(e.name == "_initialize" for e in self.prepared["exports"]):
            instance.call("_initialize", [])
        return instance

    # ------------------------------------------------------------------ phases
    def _compile(self) -> PhaseResult:
        engine, wasm = self.engine, self.prepared["wasm"]

        def op(n: int) -> float:
            started = time.perf_counter()
            for _ in range(n):
                engine.compile(wasm)
            return time.perf_counter() - started

        return self._measure("compile", op)

    def _load(self) -> PhaseResult:
        if not self.adapter.capabilities(self.result.compiler).has("aot"):
            return PhaseResult("load", skipped="the backend cannot serialize compiled code")
        from ..native.trust import Authenticated

        engine = self.engine
        # Code this process just compiled, never stored: nothing to authenticate (the
        # cached load's tag check is measured by benchmarks/cache.py).
        data = Authenticated(engine.serialize(self.module), "this process")
        engine.deserialize(data)  # fail here, with the backend's message, not mid-sample

        def op(n: int) -> float:
            started = time.perf_counter()
            for _ in range(n):
                engine.deserialize(data)
            return time.perf_counter() - started

        return self._measure("load", op)

    def _instantiate(self) -> PhaseResult:
        def op(n: int) -> float:
            started = time.perf_counter()
            for _ in range(n):
                self._instance().close()
            return time.perf_counter() - started

        return self._measure("instantiate", op)

    def _call(self) -> PhaseResult:
        func, typed = self.case.function, self.prepared["typed"]
        instance = self._instance()
        try:
            instance.call(func, typed)  # errors surface here with the adapter's own message
            repeat = instance.repeat(func, typed)
            fuel_before = instance.usage().fuel_used

            def op(n: int) -> float:
                started = time.perf_counter()
                repeat(n)
                return time.perf_counter() - started

            counted = _Counted(op)
            phase = self._measure("call", counted)
            usage = instance.usage()
            self.result.memory_bytes = usage.memory_bytes
            if usage.fuel_used is not None and fuel_before is not None and counted.ops:
                self.result.fuel_per_op = (usage.fuel_used - fuel_before) / counted.ops
            return phase
        finally:
            instance.close()

    def _run(self) -> PhaseResult:
        state: dict = {"fuel": 0, "fuel_known": True, "memory": None, "code": None}

        def op(n: int) -> float:
            elapsed = 0.0
            for _ in range(n):
                started = time.perf_counter()
                instance = self.engine.instantiate(self.module, self.limits, self._wasi())
                state["code"] = instance.run_command()
                elapsed += time.perf_counter() - started
                usage = instance.usage()
                state["memory"] = max(state["memory"] or 0, usage.memory_bytes or 0) or None
                if usage.fuel_used is None:
                    state["fuel_known"] = False
                else:
                    state["fuel"] += usage.fuel_used
            return elapsed

        counted = _Counted(op)
        phase = self._measure("run", counted)
        self.result.exit_code = state["code"]
        self.result.memory_bytes = state["memory"]
        if state["fuel_known"] and self.policy.values["limits.fuel"] is not None:
            self.result.fuel_per_op = state["fuel"] / counted.ops
        return phase


# ---------------------------------------------------------------------------- suites


def run_cases(cases: Sequence[Case], progress: Optional[Progress] = None) -> Report:
    """Run every case (a failing case is recorded, the others still run)."""
    import datetime

    created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    results = [run_case(case, progress) for case in cases]
    return Report(results, environment(), created.isoformat().replace("+00:00", "Z"))


def attach_comparison(
    report: Report, baseline: dict, source: str, threshold: Optional[float]
) -> None:
    """Compare ``report`` with a baseline report dict; the deltas go into report.comparison."""
    from .stats import NOISE_K, compare

    deltas = compare(baseline, report.to_dict(), threshold)
    report.comparison = {
        "baseline": source,
        "baseline_created": baseline.get("created"),
        "threshold": threshold,
        "noise_k": NOISE_K,
        "deltas": [d.to_dict() for d in deltas],
    }


def load_baseline(path: str) -> dict:
    """A saved report, checked enough to compare against."""
    import json

    try:
        from ..inputs import REPORT_MAX_BYTES, read_text_capped

        text = read_text_capped(path, REPORT_MAX_BYTES)
    except FileNotFoundError:
        raise errors.InputError(
            f"{path}: baseline not found", hint="create one with --save-baseline FILE", path=path
        ) from None
    except OSError as exc:
        raise errors.InputError(
            f"{path}: cannot read baseline: {exc.strerror or exc}",
            hint="give the file --save-baseline or --output wrote",
            path=path,
        ) from None
    except UnicodeDecodeError:
        raise errors.UsageError(
            f"{path}: not a bench report (not UTF-8 text)",
            hint="a baseline is a file written by --save-baseline or --output",
        ) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise errors.UsageError(
            f"{path}: not a bench report (invalid JSON: {exc})",
            hint="a baseline is a file written by --save-baseline or --output",
        ) from None
    except RecursionError:  # [[[[... nests deeper than json's recursion can go
        raise errors.UsageError(
            f"{path}: not a bench report (invalid JSON: nested too deeply)",
            hint="a baseline is a file written by --save-baseline or --output",
        ) from None
    version = data.get("report_version") if isinstance(data, dict) else None
    if version is None or not isinstance(data.get("cases"), list):
        raise errors.UsageError(
            f"{path}: not a bench report (no report_version or cases)",
            hint="a baseline is a file written by --save-baseline or --output",
        )
    if version != REPORT_VERSION:
        raise errors.UsageError(
            f"{path}: bench report version {version} is not supported (this is {REPORT_VERSION})",
            hint="save a new baseline with this wasmsbx version",
        )
    problem = _baseline_problem(data["cases"])
    if problem:
        raise errors.UsageError(
            f"{path}: not a bench report ({problem})",
            hint="a baseline is a file written by --save-baseline or --output",
        )
    return data


def _number(value: Any, positive: bool) -> bool:
    if type(value) is int:  # (math.isfinite overflows on 10**400: red team round 70)
        return value.bit_length() < 1024 and (value > 0 if positive else value >= 0)
    if type(value) is not float or not math.isfinite(value):
        return False
    return value > 0 if positive else value >= 0


def _baseline_problem(cases: list) -> str:
    """What makes a report's measurements unusable as a baseline, or "": every summary
    compared must be numbers (a median of "fast", a results object, a summary without
    its MAD were internal errors; a median of 0 or NaN judged any time "same": red team
    round 69)."""
    from ..errors import inert

    for case in cases:
        if not isinstance(case, dict) or not isinstance(case.get("name"), str):
            return "a case without a name"
        name = inert(case["name"], 80)
        results = case.get("results", [])
        if not isinstance(results, list):
            return f"case {name}: results is not a list"
        for result in results:
            if not isinstance(result, dict) or not isinstance(result.get("label"), str):
                return f"case {name}: a result without a backend label"
            phases = result.get("phases") or {}
            if not isinstance(phases, dict):
                return f"case {name}: phases is not an object"
            for phase, data in phases.items():
                if not isinstance(data, dict):
                    return f"case {name}, phase {inert(phase, 40)}: not a summary"
                stats = data.get("stats")
                if stats is not None and not isinstance(stats, dict):
                    return f"case {name}, phase {inert(phase, 40)}: not a summary"
                if not stats:
                    continue
                samples = stats.get("samples", 1)
                median, spread = stats.get("median"), stats.get("mad")
                if not (
                    _number(median, True)
                    and _number(spread, False)
                    and (samples is None or (type(samples) is int and 1 <= samples <= MAX_SAMPLES))
                ):
                    return (
                        f"case {name}, phase {inert(phase, 40)}: its median, mad and samples "
                        "are not positive numbers"
                    )
                if not (MIN_MEDIAN <= median <= MAX_SECONDS and spread <= MAX_SECONDS):
                    return (
                        f"case {name}, phase {inert(phase, 40)}: a median of {median:.3g} s "
                        f"and a mad of {spread:.3g} s are no measurement (a median is "
                        f"{MIN_MEDIAN:g}..{MAX_SECONDS:g} s, a mad at most {MAX_SECONDS:g} s)"
                    )
    return ""


# A baseline's summaries (red team round 129: samples of 10**400 overflowed the noise band,
# an internal error; a mad of 1.7e308 made it infinite, every phase "same", and a median of
# 5e-324 made the change infinite: both wrote "Infinity", which is not JSON). Within these
# the noise band and the change are finite.
MAX_SAMPLES = 10**9
MIN_MEDIAN = 1e-12  # seconds per operation
MAX_SECONDS = 1e9


def exit_code(report: Report, single: bool) -> int:
    """Failures first (the report is incomplete), then regressions.

    A single-module bench that could not measure anything exits with its error's own code.
    """
    failures = report.failures
    if failures:
        case = failures[0]
        if single and not case.measured:
            return int((case.first_error() or {}).get("exit_code", errors.ExitCode.INTERNAL))
        return int(errors.ExitCode.BATCH_FAILURES)
    if single and report.cases and not report.cases[0].measured:
        return int(errors.ExitCode.BACKEND_UNAVAILABLE)
    if report.regressions:
        return int(errors.ExitCode.REGRESSION)
    return 0
