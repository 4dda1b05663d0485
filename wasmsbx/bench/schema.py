"""The ``wasmsbx bench --json`` report layout, declared once.

``OBJECTS`` lists every object in the report with each field's type and meaning. The
documentation (docs/bench-schema.md) is rendered from it by :func:`render_doc`, and
:func:`validate` checks a report against it, so a test can hold the report, the
declaration and the document to one another.

Types: ``int``, ``number`` (int or float), ``string``, ``bool``, ``object`` (free-form),
``any``,
``NAME`` (an object declared here), ``array<T>``, ``map<T>`` (an object whose keys are
data and whose values are T); ``T|null`` where the value may be null.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Field(NamedTuple):
    name: str
    type: str
    doc: str


OBJECTS: dict = {
    "report": (
        Field(
            "report_version",
            "int",
            "Layout version (1). Fields may be added within a "
            "version; a field that changes meaning or disappears bumps it.",
        ),
        Field("tool", "tool", "The program that wrote the report."),
        Field("created", "string", "When the run started, UTC, ISO 8601 (`2025-01-31T12:00:00Z`)."),
        Field("environment", "environment", "The machine and Python that measured."),
        Field("cases", "array<case>", "One entry per benchmarked case, in order."),
        Field("comparison", "comparison|null", "Deltas against `--baseline`, else null."),
        Field("summary", "summary", "Counts for a quick verdict."),
    ),
    "tool": (
        Field("name", "string", "`wasmsbx`."),
        Field("version", "string", "wasmsbx's version."),
    ),
    "environment": (
        Field("python", "string", "Python version, e.g. `3.11.2`."),
        Field("python_implementation", "string", "`CPython`, `PyPy`, ..."),
        Field("platform", "string", "`platform.platform()`: OS, kernel, libc."),
        Field("system", "string", "`Linux`, `Darwin`, `Windows`."),
        Field("machine", "string", "CPU architecture, e.g. `x86_64`."),
        Field("cpu", "string", "CPU model name (Linux: /proc/cpuinfo)."),
        Field("cpu_count", "int|null", "Logical CPUs."),
        Field("executable", "string", "The Python interpreter that ran the benchmark."),
    ),
    "case": (
        Field("name", "string", "The case's name (suite `name`, else `MODULE:FUNC`)."),
        Field("module", "string", "The module path as given."),
        Field("function", "string|null", "The function called; null for a WASI command."),
        Field("args", "array<any>", "Its arguments as given (numbers or strings)."),
        Field("argv", "array<string>", "A WASI command's arguments (after the program name)."),
        Field("kind", "string|null", "`call` or `command`; null if the module could not be read."),
        Field("sha256", "string|null", "Digest of the module's binary."),
        Field("policy", "policy|null", "The policy in force (guest stdio defaults to null)."),
        Field("settings", "settings", "How the case was sampled."),
        Field(
            "error",
            "error|null",
            "Why the whole case could not run (bad module, unknown "
            "function, wrong arguments, no backend).",
        ),
        Field("results", "array<result>", "One entry per backend and compiler."),
    ),
    "policy": (
        Field("source", "string|null", "The policy file, or null for the defaults."),
        Field(
            "values",
            "object",
            "Every policy key by section (`Policy.to_dict()`, as "
            "`wasmsbx` reads sandbox.toml; sizes in bytes, durations in seconds).",
        ),
    ),
    "settings": (
        Field("iterations", "int", "Measured samples wanted per phase."),
        Field("warmup", "int", "Warm-up samples per phase (discarded)."),
        Field("budget", "number", "Time budget per phase and backend, seconds (warm-up included)."),
        Field("sample_time", "number", "Target duration of one sample, seconds."),
        Field("phases", "array<string>", "Phases asked for; empty means every phase that applies."),
    ),
    "result": (
        Field("label", "string", "`wasmtime`, `wasmer:llvm`, ...: the key for comparisons."),
        Field("backend", "string", "Backend name."),
        Field("compiler", "string|null", "Compiler used (`cranelift`, `llvm`, `singlepass`)."),
        Field("version", "string|null", "The runtime's version."),
        Field("status", "string", "`ok`, `failed` (see error) or `skipped` (see reason)."),
        Field(
            "reason",
            "string|null",
            "Why it was skipped (unavailable, or not eligible under the policy).",
        ),
        Field("error", "error|null", "What failed, with the phase it failed in."),
        Field(
            "phases",
            "map<phase>",
            "Measured phases by name: `compile`, `load`, "
            "`instantiate`, `call` (function cases), `run` (WASI commands).",
        ),
        Field(
            "memory_bytes",
            "int|null",
            "Peak guest linear memory, bytes (after the call "
            "or run phase), where the backend reports it.",
        ),
        Field(
            "fuel_per_op",
            "number|null",
            "Fuel per call (or per command run) when the policy meters fuel (`limits.fuel`).",
        ),
        Field("exit_code", "int|null", "The WASI command's exit code (last run)."),
    ),
    "phase": (
        Field("phase", "string", "The phase's name."),
        Field("stats", "stats|null", "Statistics; null when skipped."),
        Field("warmup", "int", "Warm-up samples actually taken."),
        Field("budget_exhausted", "bool", "The time budget ended sampling before `iterations`."),
        Field(
            "skipped",
            "string|null",
            "Why the phase was not measured (e.g. the backend "
            "cannot serialize code, so there is no cached load).",
        ),
    ),
    "stats": (
        Field("samples", "int", "Measured samples."),
        Field(
            "ops_per_sample",
            "int",
            "Operations timed together in one sample (calibrated "
            "so a sample lasts about `sample_time`).",
        ),
        Field("min", "number", "Fastest sample, seconds per operation."),
        Field("max", "number", "Slowest sample, seconds per operation."),
        Field(
            "median",
            "number",
            "Median, seconds per operation: the figure compared against baselines.",
        ),
        Field("mean", "number", "Mean of the samples inside the outlier fences."),
        Field("p95", "number", "95th percentile (linear interpolation)."),
        Field("stdev", "number", "Sample standard deviation inside the outlier fences."),
        Field("mad", "number", "Median absolute deviation (unscaled)."),
        Field("q1", "number", "First quartile."),
        Field("q3", "number", "Third quartile."),
        Field("iqr", "number", "Interquartile range, q3 - q1."),
        Field(
            "throughput", "number|null", "Operations per second at the median (calls/s for `call`)."
        ),
        Field("outliers", "outliers", "Samples outside Tukey's fences."),
        Field(
            "values",
            "array<number>",
            "Every measured sample, seconds per operation, in the order taken.",
        ),
    ),
    "outliers": (
        Field("method", "string", "`tukey-1.5iqr`: outside q1 - 1.5 iqr .. q3 + 1.5 iqr."),
        Field("low", "int", "Samples below the low fence."),
        Field("high", "int", "Samples above the high fence."),
    ),
    "error": (
        Field(
            "kind",
            "string",
            "Error kind: `usage`, `io`, `module`, `unlinkable`, `trap`, "
            "`limit`, `backend`, `internal`, ...",
        ),
        Field("message", "string", "One line, as printed after `error:`."),
        Field("exit_code", "int", "The exit code this error has on its own (see README)."),
        Field("hint", "string", "What to do about it (when there is a hint)."),
        Field("context", "object", "Structured details (path, function, limit)."),
        Field("backtrace", "array<string>", "Wasm frames, innermost first (traps)."),
        Field("limit", "string", "The limit that stopped the guest (limit errors)."),
        Field("phase", "string", "The phase that failed (backend errors)."),
    ),
    "comparison": (
        Field("baseline", "string", "The baseline file."),
        Field("baseline_created", "string|null", "When the baseline was measured."),
        Field("threshold", "number|null", "`--fail-on-regression` as a fraction (0.1 = 10 %)."),
        Field("noise_k", "number", "Noise multiplier k: standard errors (see above)."),
        Field("deltas", "array<delta>", "One entry per case, backend and phase in either report."),
    ),
    "delta": (
        Field("case", "string", "Case name."),
        Field("backend", "string", "Backend label."),
        Field("phase", "string", "Phase name."),
        Field("base_median", "number|null", "Baseline median, seconds (null: new)."),
        Field("median", "number|null", "This run's median, seconds (null: missing now)."),
        Field("change", "number|null", "median / base_median - 1 (+0.12 = 12 % slower)."),
        Field("noise", "number|null", "The noise band, relative to base_median."),
        Field(
            "verdict",
            "string",
            "`faster`, `slower`, `same` (within noise), `regression`, `new` or `missing`.",
        ),
    ),
    "summary": (
        Field("cases", "int", "Cases run."),
        Field("failed", "int", "Cases with an error (in the case or in any backend)."),
        Field("regressions", "int", "Deltas judged `regression`."),
    ),
}

# Fields that may be absent (error dicts carry only what applies).
OPTIONAL = {
    ("error", "hint"),
    ("error", "context"),
    ("error", "backtrace"),
    ("error", "limit"),
    ("error", "phase"),
}

_SCALARS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "any": lambda v: True,
}


def validate(data: Any, type_name: str = "report", path: str = "$") -> list:
    """Every place where ``data`` departs from the declared layout, as readable strings."""
    problems: list = []
    _check(data, type_name, path, problems)
    return problems


def _check(value: Any, type_name: str, path: str, problems: list) -> None:
    if type_name.endswith("|null"):
        if value is None:
            return
        type_name = type_name[: -len("|null")]
    if type_name in _SCALARS:
        if not _SCALARS[type_name](value):
            problems.append(f"{path}: expected {type_name}, found {value!r:.60}")
        return
    if type_name.startswith("array<"):
        if not isinstance(value, list):
            problems.append(f"{path}: expected an array, found {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, type_name[6:-1], f"{path}[{i}]", problems)
        return
    if type_name.startswith("map<"):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object, found {type(value).__name__}")
            return
        for key, item in value.items():
            _check(item, type_name[4:-1], f"{path}.{key}", problems)
        return
    _check_object(value, type_name, path, problems)


def _check_object(value: Any, type_name: str, path: str, problems: list) -> None:
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a {type_name} object, found {type(value).__name__}")
        return
    fields = {f.name: f for f in OBJECTS[type_name]}
    for name in value:
        if name not in fields:
            problems.append(f"{path}.{name}: not documented in the {type_name} object")
    for name, spec in fields.items():
        if name not in value:
            if (type_name, name) not in OPTIONAL:
                problems.append(f"{path}.{name}: missing")
            continue
        _check(value[name], spec.type, f"{path}.{name}", problems)


# ---------------------------------------------------------------------------- the document

INTRO = """\
# `wasmsbx bench` report schema

`wasmsbx bench --json` prints this report; `--output FILE` and `--save-baseline FILE`
write it; `--baseline FILE` reads it back. This page is generated from
`wasmsbx/bench/schema.py` (`python -m wasmsbx.bench.schema > docs/bench-schema.md`), and
a test checks that real reports match it field for field.

Times are seconds per operation (one compile, one load, one instantiation, one call, one
command run). Types: `int`, `number`, `string`, `bool`, `object` (free-form), `any`, an object
named below, `array<T>`, `map<T>` (keys are data, e.g. phase names); `T|null` may be null.
Fields marked *optional* appear only when they apply.

## How samples are taken

Each phase is sampled `iterations` times after `warmup` discarded samples, stopping early
when the phase's time `budget` is spent (at least one sample is always taken;
`budget_exhausted` says so). One sample times a block of `ops_per_sample` operations with
`perf_counter` around a tight loop; the block size is calibrated so a sample lasts about
`sample_time`. For `call` the loop runs inside the backend over its raw function
(`Instance.repeat`), with the policy's limits armed once per block: the whole block must
finish within `limits.timeout`, and it gets `ops_per_sample` times `limits.fuel`.

## Statistics

`min`, `median`, `p95` and `max` use every sample; quartiles and percentiles use linear
interpolation. Outliers are samples outside Tukey's fences (`q1 - 1.5 iqr`,
`q3 + 1.5 iqr`); they are counted (`outliers.low`, `outliers.high`) and left out of `mean`
and `stdev`. `throughput` is `1 / median`.

## Baselines and regressions

Deltas match phases by case name, backend label and phase name. With
`base = base_median` and `now = median`: `change = now / base - 1`. The noise band is
`k * sqrt(se_base^2 + se_now^2)` with `k = noise_k` (2) and, for each run,
`se = 1.2533 * 1.4826 * mad / sqrt(samples)`: the MAD scaled to a standard deviation,
times the standard error of a median (normal approximation). So the band is about a 95 %
interval for the difference of the two medians. A difference within the band is `same`;
a faster one is `faster`; a slower one is `regression` when `change` exceeds
`--fail-on-regression`, else `slower`. A phase fails only when it is slower by more than
the threshold *and* by more than the noise; `noise` is reported relative to `base`.
"""


def render_doc() -> str:
    lines = [INTRO]
    for name, fields in OBJECTS.items():
        lines += [f"## `{name}`", "", "| field | type | meaning |", "| --- | --- | --- |"]
        for f in fields:
            optional = " *optional*" if (name, f.name) in OPTIONAL else ""
            type_text = f.type.replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{type_text}`{optional} | {f.doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - regenerates the doc
    import sys

    sys.stdout.write(render_doc())
