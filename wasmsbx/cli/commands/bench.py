"""``wasmsbx bench``: per-phase timings for one module or a suite, with baselines for CI."""

from __future__ import annotations

from typing import Any, Optional

import typer

from ... import errors
from .. import output
from ..app import FuncArgsCommand, run_opt
from ..boundary import boundary

HELP = (
    "Benchmark MODULE: compile, cached load, instantiate, and a warm call of FUNC with ARGS "
    "(or, without FUNC, the whole run of a WASI command with the argv after --). Each phase "
    "gets min, median, mean, p95, stdev, outliers and throughput, per backend.\n\n"
    "Examples: wasmsbx bench add.wat add 5 3 --backend all;  "
    "wasmsbx bench --suite bench.toml --baseline base.json --fail-on-regression 10%\n\n"
    "Exit codes: 0 ok, 120 a phase regressed beyond --fail-on-regression, 122 a suite case "
    "failed; a single module that cannot be measured exits with its error's code."
)


def register(app: typer.Typer) -> None:
    @app.command("bench", help=HELP, cls=FuncArgsCommand)
    @boundary
    def bench(
        module: Optional[str] = typer.Argument(None, metavar="MODULE", help="A .wasm or .wat."),
        func_and_args: Optional[list[str]] = typer.Argument(
            None, metavar="[FUNC [ARGS...]] [-- ARGV...]", help="Function and its arguments."
        ),
        suite: Optional[str] = typer.Option(
            None, "--suite", metavar="FILE", help="Run every case of a suite file (TOML)."
        ),
        backend: Optional[list[str]] = typer.Option(
            None,
            "--backend",
            "-b",
            metavar="NAME",
            help="Backend(s) to compare: auto, all, wasmtime, wasmer:llvm, ... "
            "(repeatable or comma-separated).",
        ),
        iterations: Optional[int] = typer.Option(
            None, "--iterations", "-n", metavar="N", help="Samples per phase (default 30)."
        ),
        warmup: Optional[int] = typer.Option(
            None, "--warmup", metavar="N", help="Discarded warm-up samples per phase (default 3)."
        ),
        budget: Optional[str] = typer.Option(
            None,
            "--budget",
            metavar="DURATION",
            help="Time budget per phase and backend (default 10s).",
        ),
        sample_time: Optional[str] = typer.Option(
            None, "--sample-time", metavar="DURATION", help="Target time per sample (default 5ms)."
        ),
        phase: Optional[list[str]] = typer.Option(
            None,
            "--phase",
            metavar="NAME",
            help="Only these phases: compile, load, instantiate, call, run (repeatable).",
        ),
        json_output: bool = typer.Option(False, "--json", help="Print the JSON report."),
        output_file: Optional[str] = typer.Option(
            None, "--output", "-o", metavar="FILE", help="Also write the JSON report to FILE."
        ),
        save_baseline: Optional[str] = typer.Option(
            None, "--save-baseline", metavar="FILE", help="Write this run as a baseline."
        ),
        baseline: Optional[str] = typer.Option(
            None, "--baseline", metavar="FILE", help="Compare with a saved baseline."
        ),
        fail_on_regression: Optional[str] = typer.Option(
            None,
            "--fail-on-regression",
            metavar="PCT",
            help="Exit 120 if a phase's median is slower than the baseline by more than PCT "
            "(e.g. 10%) and by more than the noise.",
        ),
        policy: Optional[str] = run_opt("policy"),
        memory: Optional[str] = run_opt("memory"),
        fuel: Optional[int] = run_opt("fuel", "Meter fuel (reports fuel per call)."),
        timeout: Optional[str] = run_opt("timeout", "Override limits.timeout (per call)."),
        stack: Optional[str] = run_opt("stack"),
        dir: Optional[list[str]] = run_opt("dir"),
        dir_ro: Optional[list[str]] = run_opt("dir_ro"),
        env: Optional[list[str]] = run_opt("env"),
    ) -> int:
        from ...bench import measure as core
        from ..bench_view import Progress, render

        threshold = _threshold(fail_on_regression, baseline)
        # What the reports must not overwrite: the policy too when it is the one discovery
        # reads (red team round 52: `-o sandbox.toml` replaced it with the report).
        from ...policy import POLICY_FILENAME

        inputs = [module, suite, baseline, policy or POLICY_FILENAME]
        from ...outfile import check_output

        for path in filter(None, (output_file, save_baseline)):
            check_output(path, inputs)
        flags = {"policy": policy, "memory": memory, "fuel": fuel, "timeout": timeout}
        flags.update({"stack": stack, "dir": dir or [], "dir_ro": dir_ro or [], "env": env or []})
        overrides = _overrides(backend, iterations, warmup, budget, sample_time, phase)
        cases = _cases(module, func_and_args or [], suite, overrides, flags)
        # ...and neither what a suite's cases read: their modules and policies (red team
        # round 53: `--suite s.toml -o add.wat` replaced a case's module with the report)
        for case in cases:
            inputs += [case.module, getattr(case.policy, "source", None)]
        for path in filter(None, (output_file, save_baseline)):
            check_output(path, inputs)
        # Nor its standard streams, nor a guest's stdio files (`bench t.wat f >> t.wat`
        # spoilt the module, exit 0: round 54; cli/crossed.py)
        from ..crossed import guest_writes, refuse, refuse_in_grants, standard_writes

        writes = standard_writes()
        for case in cases:
            writes += guest_writes(case.policy) if case.policy is not None else []
        refuse([("an input", path) for path in inputs if path], [], writes)
        for case in cases:  # (a policy the guest could rewrite for the next run)
            if case.policy is not None and getattr(case.policy, "source", None):
                refuse_in_grants(case.policy, [("the policy", case.policy.source)])
        base = core.load_baseline(baseline) if baseline else None
        with Progress(enabled=not json_output) as progress:
            report = core.run_cases(cases, progress.update)
        if base is not None:
            core.attach_comparison(report, base, baseline, threshold)
        data = report.to_dict()
        for path in filter(None, (output_file, save_baseline)):
            _write(path, data, inputs)
        if json_output:
            output.emit_json(data)
        else:
            render(report)
        _report_problems(report)
        return core.exit_code(report, single=suite is None)


def _threshold(text: Optional[str], baseline: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    if not baseline:
        raise errors.UsageError(
            "--fail-on-regression needs --baseline FILE", hint="save one with --save-baseline"
        )
    from ...bench.stats import parse_threshold

    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise errors.UsageError(f"--fail-on-regression: {exc}") from None


def _duration(flag: str, text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    from ...units import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise errors.UsageError(f"{flag}: {exc}") from None
    if seconds <= 0:
        raise errors.UsageError(f"{flag}: must be greater than zero")
    return seconds


def _overrides(backend, iterations, warmup, budget, sample_time, phase) -> dict:
    """Command-line settings (None where not given); they win over a suite file."""
    from ...bench.measure import check_backend_specs

    specs = tuple(s.strip() for b in (backend or []) for s in b.split(",") if s.strip())
    check_backend_specs(specs)
    phases = tuple(p.strip() for ph in (phase or []) for p in ph.split(",") if p.strip())
    return {
        "backend": specs or None,
        "iterations": iterations,
        "warmup": warmup,
        "budget": _duration("--budget", budget),
        "sample_time": _duration("--sample-time", sample_time),
        "phases": phases or None,
    }


def _cases(module, func_and_args: list, suite, overrides: dict, flags: dict) -> list:
    from ...bench.suite import build_cases, read_suite

    def make_policy(path: Optional[str]) -> Any:
        from .run import build_policy

        if path is None or flags["policy"] is not None:
            return build_policy(flags)
        # A policy the suite file names came with the suite (a project's bench.toml), not
        # from you: it is held as a found sandbox.toml is, to its own folder and the
        # default limits (red team round 99: `bench --suite` ran one that `run` refused,
        # whose stdout was ~/.bashrc). --policy FILE trusts a file as it is.
        from ... import policy as policy_mod
        from .run import apply_flags, warn_capped

        found = policy_mod.load_found(path, "named by the bench suite")
        return warn_capped(apply_flags(found, flags))

    if suite:
        if module:
            raise errors.UsageError(
                "give MODULE or --suite FILE, not both", hint="list the module in the suite"
            )
        specs = read_suite(suite)
        for spec in specs:  # the suite's backends are checked like the command line's
            from ...bench.measure import check_backend_specs

            check_backend_specs(spec.get("backend", ()))
        return build_cases(specs, overrides, make_policy)
    if not module:
        raise errors.UsageError(
            "missing MODULE", hint="usage: wasmsbx bench MODULE [FUNC [ARGS...]] or --suite FILE"
        )
    function, args, argv = _split_positionals(func_and_args)
    from pathlib import Path

    name = f"{Path(module).name}:{function}" if function else Path(module).name
    spec = {"name": name, "module": module, "function": function, "args": args, "argv": argv}
    return build_cases([spec], overrides, make_policy)


def _split_positionals(values: list) -> tuple:
    """(function, args, argv): words after a literal -- are argv when no FUNC came before."""
    from ..app import split_passthrough

    before, tail = split_passthrough(values)
    if not before:
        return None, [], tail
    return before[0], before[1:] + tail, []


def _write(path: str, data: dict, inputs: list) -> None:
    import json

    from ...outfile import write_output

    write_output(path, json.dumps(data, indent=2) + "\n", inputs=inputs)


def _report_problems(report: Any) -> None:
    """One error line per failed case or backend, on stderr."""
    for case in report.cases:
        if case.error:
            message = case.error["message"]  # (it may name the file already: round 155
            if not message.startswith(f"{case.name}: "):  # read "x.wasm: x.wasm: no such file")
                message = f"{case.name}: {message}"
            output.error(message, case.error.get("hint"))
        for result in case.results:
            if result.error:
                phase = result.error.get("phase")
                output.error(f"{case.name} [{result.label}, {phase}]: {result.error['message']}")
        if not case.error and not case.failed and not case.measured:
            reasons = "; ".join(f"{r.label}: {r.reason}" for r in case.results if r.reason)
            output.error(f"{case.name}: no backend could run it ({reasons})")
    for delta in report.regressions:
        output.error(
            f"regression: {delta['case']} [{delta['backend']}] {delta['phase']} "
            f"{delta['change'] * 100:+.1f}% (threshold {report.comparison['threshold'] * 100:g}%)"
        )
