"""wasmsbx bench: phases, backends, JSON report, baselines and the regression exit code."""

from __future__ import annotations

import json

import pytest

from wasmsbx.backends import get, split
from wasmsbx.backends.base import EngineOptions, Limits
from wasmsbx.bench import measure as bench
from wasmsbx.bench import schema as bench_schema
from wasmsbx.errors import FuelExhausted, TimeoutExceeded, TrapError

from .conftest import BACKENDS, EXAMPLES, capabilities_of

FAST = ["-n", "3", "--warmup", "0", "--budget", "0.3s", "--sample-time", "1ms"]
ADD = EXAMPLES / "add.wat"
HELLO = EXAMPLES / "wasi" / "hello.wasm"

COUNTER = """
(module
  (memory (export "memory") 2)
  (global $n (mut i32) (i32.const 0))
  (func (export "bump") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (global.get $n))
  (func (export "count") (result i32) (global.get $n))
  (func (export "spin") (loop $l (br $l)))
  (func (export "boom") (unreachable)))
"""


# No multi-value (add.wat's divmod has it), so every backend and compiler can run it.
PLAIN_ADD = """
(module
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1))))
"""


@pytest.fixture
def plain_add(tmp_path):
    path = tmp_path / "add.wat"
    path.write_text(PLAIN_ADD)
    return path


@pytest.fixture
def counter(tmp_path):
    path = tmp_path / "counter.wat"
    path.write_text(COUNTER)
    return path


def fast_settings(**kw) -> bench.Settings:
    base = {"iterations": 3, "warmup": 0, "budget": 0.3, "sample_time": 0.001}
    base.update(kw)
    return bench.Settings(**base)


# ---------------------------------------------------------------------------- Instance.repeat


def instance_for(label: str, path, limits: Limits, fuel: bool = False):
    import wasmtime

    name, compiler = split(label)
    adapter = get(name)
    engine = adapter.engine(EngineOptions(compiler=compiler or adapter.default_compiler, fuel=fuel))
    module = engine.compile(bytes(wasmtime.wat2wasm(path.read_text())))
    return engine.instantiate(module, limits)


LIMITS = Limits(memory=1 << 24, timeout=5.0, table_elements=10000, instances=1)


def test_repeat_runs_n_calls(backend, counter):
    instance = instance_for(backend, counter, LIMITS)
    run = instance.repeat("bump", [])
    run(5)
    run(7)
    assert instance.call("count", []) == [12]


def test_repeat_maps_traps_like_call(backend, counter):
    instance = instance_for(backend, counter, LIMITS)
    with pytest.raises(TrapError) as info:
        instance.repeat("boom", [])(3)
    assert "unreachable" in info.value.message


def test_repeat_block_is_bounded_by_the_timeout(backend, counter):
    if not capabilities_of(backend).has("timeout"):
        pytest.skip(f"{backend} does not declare timeout")
    # 3 s, not less: on wasmer the instance's worker process starts within the timeout
    # (0.2 s failed CI on a loaded machine before `spin` ran); `spin` never ends anyway
    instance = instance_for(backend, counter, LIMITS._replace(timeout=3.0))
    with pytest.raises(TimeoutExceeded):
        instance.repeat("spin", [])(1)


def test_repeat_meters_fuel_per_block(backend, counter):
    if not capabilities_of(backend).has("fuel"):
        pytest.skip(f"{backend} does not declare fuel")
    instance = instance_for(backend, counter, LIMITS._replace(fuel=1000), fuel=True)
    instance.call("bump", [])
    one = instance.usage().fuel_used
    instance.repeat("bump", [])(10)
    assert instance.usage().fuel_used == pytest.approx(11 * one)
    with pytest.raises(FuelExhausted):
        instance.repeat("spin", [])(2)


def test_default_repeat_loops_over_call():
    from wasmsbx.backends.base import Instance, Usage

    class Recorder(Instance):
        def __init__(self):
            self.calls = []

        def call(self, name, args):
            self.calls.append((name, tuple(args)))
            return []

        def run_command(self):
            return 0

        def usage(self):
            return Usage()

    rec = Recorder()
    rec.repeat("f", [1, 2])(3)
    assert rec.calls == [("f", (1, 2))] * 3


# ---------------------------------------------------------------------------- the core


def test_run_case_measures_every_call_phase(backend, plain_add):
    case = bench.Case(
        "add", str(plain_add), "add", [5, 3], backends=(backend,), settings=fast_settings()
    )
    result = bench.run_case(case)
    assert result.kind == "call" and result.error is None
    (res,) = result.results
    assert res.status == "ok", res.error
    expected = ["compile", "instantiate", "call"]
    if capabilities_of(backend).has("aot"):
        expected.insert(1, "load")
    assert [p for p in res.phases if res.phases[p].stats] == expected
    for entry in res.phases.values():
        if entry.stats:
            assert 1 <= entry.stats.samples <= 3
            assert entry.stats.median > 0
    assert res.phases["call"].stats.ops_per_sample >= 1


def test_progress_callback_reports_each_sample():
    seen = []
    case = bench.Case("add", str(ADD), "add", [1, 2], settings=fast_settings(phases=("call",)))
    bench.run_case(case, lambda *event: seen.append(event))
    assert seen[0] == ("add", "wasmtime", "call", 0, 3)
    assert seen[-1][3] == len(seen) - 1  # one event per measured sample


def test_budget_stops_sampling_early():
    settings = fast_settings(iterations=1000, budget=0.05, sample_time=0.01, phases=("call",))
    res = bench.run_case(bench.Case("add", str(ADD), "add", [1, 2], settings=settings)).results[0]
    phase = res.phases["call"]
    assert phase.budget_exhausted
    assert 1 <= phase.stats.samples < 1000


def test_calibration_stops_where_the_next_block_would_pass_the_budget():
    # (a suite's sample_time of 30 s under a budget of 1 s grew blocks to 20,000
    # compiles, 81 s: red team 129). Simulated: each operation "takes" 10 ms.
    import time

    blocks = []

    def op(n: int) -> float:
        blocks.append(n)
        return n * 0.01

    ops = bench._calibrate(op, 30.0, time.perf_counter() + 1.0)
    assert ops == 10 and blocks == [1, 1, 10], blocks  # (a block of 100 would take 1 s)
    blocks.clear()  # without a deadline in sight, the sample time decides
    assert bench._calibrate(op, 0.5, time.perf_counter() + 3600) == 50  # 0.5 s a block


def test_settings_are_checked():
    from wasmsbx.errors import UsageError

    for bad in ({"iterations": 0}, {"warmup": -1}, {"budget": 0}, {"phases": ("cmopile",)}):
        with pytest.raises(UsageError):
            bench.Settings(**bad).check()


# ---------------------------------------------------------------------------- the CLI


def test_cli_json_report_on_every_backend(cli, backend, plain_add):
    r = cli("bench", plain_add, "add", "5", "3", "--backend", backend, "--json", *FAST)
    assert r.code == 0, r.stderr
    data = r.json()
    assert bench_schema.validate(data) == []
    (case,) = data["cases"]
    assert case["name"] == "add.wat:add" and case["kind"] == "call"
    (res,) = case["results"]
    assert res["label"] == backend and res["status"] == "ok"
    assert res["version"]
    call = res["phases"]["call"]["stats"]
    assert call["samples"] == 3 and len(call["values"]) == 3
    assert call["throughput"] == pytest.approx(1 / call["median"])
    assert data["environment"]["cpu"] and data["environment"]["python"]
    assert case["policy"]["values"]["limits"]["memory"] == 256 * 1024 * 1024


def test_cli_human_report_has_a_table_per_phase(cli):
    r = cli("bench", ADD, "add", "5", "3", *FAST)
    assert r.code == 0, r.stderr
    for phase in ("compile", "load", "instantiate", "call"):
        assert f"{phase}: " in r.stdout
    for column in ("samples", "min", "median", "mean", "p95", "stdev", "outliers", "ops/s"):
        assert column in r.stdout
    assert "\x1b[" not in r.stdout and "\x1b[" not in r.stderr  # not a TTY: no progress, no colour
    assert r.stderr == ""


def test_cli_all_backends_lists_every_backend_and_compiler(cli):
    r = cli("bench", ADD, "add", "1", "2", "--backend", "all", "--phase", "call", "--json", *FAST)
    assert r.code == 0, r.stderr
    labels = [res["label"] for res in r.json()["cases"][0]["results"]]
    assert set(BACKENDS) <= set(labels)
    for res in r.json()["cases"][0]["results"]:
        assert res["status"] in ("ok", "skipped")
        if res["status"] == "skipped":
            assert res["reason"]


def test_cli_wasi_command_whole_run(cli, backend):
    r = cli("bench", HELLO, "--backend", backend, "--json", *FAST, "--", "--exit", "3")
    assert r.code == 0, r.stderr
    case = r.json()["cases"][0]
    assert case["kind"] == "command" and case["argv"] == ["--exit", "3"]
    res = case["results"][0]
    assert res["exit_code"] == 3
    assert "run" in res["phases"] and "call" not in res["phases"]
    assert res["memory_bytes"] and res["memory_bytes"] > 0


def test_cli_fuel_and_memory_per_call(cli, counter, backend):
    if not capabilities_of(backend).has("fuel"):
        pytest.skip(f"{backend} does not declare fuel")
    r = cli("bench", counter, "bump", "--fuel", "100000", "--backend", backend, "--json", *FAST)
    assert r.code == 0, r.stderr
    res = r.json()["cases"][0]["results"][0]
    assert res["fuel_per_op"] and 0 < res["fuel_per_op"] < 100
    assert res["memory_bytes"] == 2 * 65536


def test_cli_negative_arguments_after_double_dash(cli):
    r = cli("bench", ADD, "add", "--phase", "call", "--json", *FAST, "--", "-5", "3")
    assert r.code == 0, r.stderr
    assert r.json()["cases"][0]["args"] == ["-5", "3"]


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["nope.wasm", "f"], 105, "no such file"),
        ([ADD, "ad", "1", "2"], 2, "did you mean 'add'"),
        ([ADD, "add", "1"], 2, "add takes 2 arguments"),
        ([ADD, "div", "1", "0"], 103, "integer divide by zero"),
        ([ADD], 2, "no _start export"),
        ([ADD, "add", "1", "2", "--backend", "wasmtiem"], 2, "did you mean 'wasmtime'"),
        ([ADD, "add", "1", "2", "--phase", "cmopile"], 2, "unknown phase"),
        ([ADD, "add", "1", "2", "-n", "0"], 2, "iterations must be at least 1"),
        ([ADD, "add", "1", "2", "--budget", "soon"], 2, "--budget"),
        ([ADD, "add", "1", "2", "--fail-on-regression", "10%"], 2, "needs --baseline"),
        ([], 2, "missing MODULE"),
    ],
)
def test_cli_errors_are_one_line_with_the_documented_code(cli, args, code, needle):
    r = cli("bench", *FAST, *args)
    assert r.code == code, r
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.count("error:") == 1


def test_cli_trap_in_json_mode_still_prints_the_report(cli):
    r = cli("bench", ADD, "div", "1", "0", "--json", *FAST)
    assert r.code == 103
    res = r.json()["cases"][0]["results"][0]
    assert res["status"] == "failed"
    assert res["error"]["kind"] == "trap" and res["error"]["phase"] == "call"
    assert "compile" in res["phases"]  # what was measured before the failure is kept


def test_cli_output_file_matches_stdout(cli, tmp_path):
    out = tmp_path / "report.json"
    r = cli("bench", ADD, "add", "1", "2", "--json", "--output", out, "--phase", "call", *FAST)
    assert r.code == 0, r.stderr
    assert json.loads(out.read_text()) == r.json()


@pytest.mark.parametrize("flag", ["--output", "--save-baseline"])
def test_reports_never_replace_the_discovered_policy(cli, isolated, flag):
    """Red team round 52: `bench ... -o sandbox.toml` in a folder whose sandbox.toml it
    had just run under replaced the policy with the report (exit 0); `compile -o` and
    `audit -o` refused it. Refused now (exit 105), the policy as it was."""
    policy = isolated / "sandbox.toml"
    policy.write_text('[limits]\ntimeout = "5s"\n')
    r = cli("bench", ADD, "add", "1", "2", flag, "sandbox.toml", "--phase", "call", *FAST,
            cwd=isolated)  # fmt: skip
    assert r.code == 105 and "same file as the input" in r.stderr, r
    assert policy.read_text() == '[limits]\ntimeout = "5s"\n'


@pytest.mark.parametrize("flag", ["--output", "--save-baseline"])
@pytest.mark.parametrize("target", ["add.wat", "p.toml"])
def test_reports_never_replace_what_a_suite_reads(cli, tmp_path, flag, target):
    """Red team round 53: `bench --suite s.toml -o add.wat` replaced the module a case
    names with the report (exit 0), `--save-baseline p.toml` a case's policy. Refused
    (exit 105) before anything runs, the files as they were."""
    (tmp_path / "add.wat").write_bytes(ADD.read_bytes())
    (tmp_path / "p.toml").write_text('[limits]\ntimeout = "5s"\n')
    suite = tmp_path / "s.toml"
    suite.write_text(
        '[bench]\nphases = ["call"]\n[[bench.case]]\nmodule = "add.wat"\nfunction = "add"\n'
        'args = [1, 2]\npolicy = "p.toml"\n'
    )
    before = (tmp_path / target).read_bytes()
    r = cli("bench", "--suite", suite, flag, tmp_path / target, *FAST)
    assert r.code == 105 and "same file as the input" in r.stderr, r
    assert (tmp_path / target).read_bytes() == before


# ---------------------------------------------------------------------------- baselines

# Ten samples: the noise band shrinks with sqrt(samples), so a busy machine cannot hide
# a thousandfold slowdown (with three it sometimes can, which is the point of the band).
# Comparisons need enough samples that a loaded machine's jitter cannot widen the noise
# band past a 1000x difference (the band shrinks with the square root of the samples).
STEADY = [*FAST, "-n", "50", "--budget", "10s"]


def saved_baseline(cli, tmp_path, *extra):
    path = tmp_path / "base.json"
    r = cli("bench", ADD, "add", "1", "2", "--save-baseline", path, *STEADY, *extra)
    assert r.code == 0, r.stderr
    return path, json.loads(path.read_text())


def rewrite(data: dict, factor: float, mad: float) -> dict:
    """A synthetic baseline: every median scaled by ``factor``, every MAD set to ``mad``."""
    for case in data["cases"]:
        for res in case["results"]:
            for entry in res["phases"].values():
                if entry["stats"]:
                    entry["stats"]["median"] *= factor
                    entry["stats"]["mad"] = mad
    return data


def test_baseline_deltas_and_regression_exit_code(cli, tmp_path):
    path, data = saved_baseline(cli, tmp_path, "--phase", "call")
    # The baseline claims the call was 1000x faster with no spread: a clear regression.
    path.write_text(json.dumps(rewrite(data, 0.001, 0.0)))
    r = cli("bench", ADD, "add", "1", "2", "--baseline", path, "--fail-on-regression", "10%",
            "--phase", "call", "--json", *STEADY)  # fmt: skip
    assert r.code == 120, r
    report = r.json()
    assert bench_schema.validate(report) == []
    (delta,) = report["comparison"]["deltas"]
    assert (delta["case"], delta["backend"], delta["phase"]) == ("add.wat:add", "wasmtime", "call")
    assert delta["verdict"] == "regression" and delta["change"] > 10
    assert report["summary"]["regressions"] == 1
    assert report["comparison"]["threshold"] == pytest.approx(0.10)
    assert "regression: add.wat:add [wasmtime] call" in r.stderr
    # The same comparison in the terminal report
    r = cli("bench", ADD, "add", "1", "2", "--baseline", path, "--fail-on-regression", "10%",
            "--phase", "call", *STEADY)  # fmt: skip
    assert r.code == 120
    assert "against baseline" in r.stdout and "regression" in r.stdout


def test_failures_take_precedence_over_regressions(cli, tmp_path):
    path, data = saved_baseline(cli, tmp_path, "--phase", "call")
    path.write_text(json.dumps(rewrite(data, 0.001, 0.0)))
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f"""[bench]
phases = ["call"]
[[bench.case]]
name = "add.wat:add"
module = "{ADD}"
function = "add"
args = [1, 2]
[[bench.case]]
module = "missing.wasm"
function = "f"
"""
    )
    r = cli("bench", "--suite", suite, "--baseline", path, "--fail-on-regression", "10%", *STEADY)
    assert r.code == 122, r
    assert "regression:" in r.stderr and "missing.wasm: no such file" in r.stderr


def test_baseline_without_threshold_only_reports(cli, tmp_path):
    path, data = saved_baseline(cli, tmp_path, "--phase", "call")
    path.write_text(json.dumps(rewrite(data, 0.001, 0.0)))
    r = cli("bench", ADD, "add", "1", "2", "--baseline", path, "--phase", "call", *STEADY)
    assert r.code == 0, r
    assert "against baseline" in r.stdout and "slower" in r.stdout


def test_regression_within_noise_does_not_fail(cli, tmp_path):
    path, data = saved_baseline(cli, tmp_path, "--phase", "call")
    # 1000x faster on paper, but with a spread (MAD 1000 s) far larger than any difference:
    # two measurements on a loaded machine can differ by 10x, so the margins are wide.
    path.write_text(json.dumps(rewrite(data, 0.001, 1000.0)))
    r = cli("bench", ADD, "add", "1", "2", "--baseline", path, "--fail-on-regression", "10%",
            "--phase", "call", "--json", *STEADY)  # fmt: skip
    assert r.code == 0, r
    (delta,) = r.json()["comparison"]["deltas"]
    assert delta["verdict"] == "same" and delta["change"] > 0.10


def test_faster_than_baseline_passes(cli, tmp_path):
    path, data = saved_baseline(cli, tmp_path, "--phase", "call")
    path.write_text(json.dumps(rewrite(data, 100.0, 0.0)))
    r = cli("bench", ADD, "add", "1", "2", "--baseline", path, "--fail-on-regression", "10%",
            "--phase", "call", "--json", *STEADY)  # fmt: skip
    assert r.code == 0, r
    assert r.json()["comparison"]["deltas"][0]["verdict"] == "faster"


@pytest.mark.parametrize(
    "content, code, needle",
    [
        (None, 105, "baseline not found"),
        ("not json", 2, "invalid JSON"),
        ('{"hello": 1}', 2, "not a bench report"),
        ('{"report_version": 99, "cases": []}', 2, "version 99 is not supported"),
        (b"\xff\xfe{", 2, "not UTF-8 text"),
        ("folder", 105, "cannot read baseline: Is a directory"),
    ],
)
def test_bad_baseline_files(cli, tmp_path, content, code, needle):
    path = tmp_path / "base.json"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    r = cli("bench", ADD, "add", "1", "2", "--baseline", path, *FAST)
    assert r.code == code, r
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert "Errno" not in r.stderr  # (the OS's words, not Python's repr of them)


def _stats_set(data: dict, **values) -> dict:
    for case in data["cases"]:
        for res in case["results"]:
            for entry in res["phases"].values():
                if entry["stats"]:
                    for key, value in values.items():
                        if value is ...:
                            entry["stats"].pop(key)
                        else:
                            entry["stats"][key] = value
    return data


@pytest.mark.parametrize(
    "change",
    [{"median": "fast"}, {"median": 0}, {"median": -1.0}, {"median": None}, {"mad": ...},
     {"mad": [1]}, {"samples": "3"}, {"samples": 0}, {"median": 10**400},
     {"samples": 10**400}, {"samples": 10**9 + 1}, {"mad": 1.7e308}, {"median": 5e-324},
     {"median": 1e300, "mad": 1e300}],
    ids=["median text", "median 0", "median negative", "median null", "no mad", "mad list",
         "samples text", "samples 0", "median 10**400", "samples 10**400",
         "samples past 10**9", "mad 1.7e308", "median 5e-324", "median 1e300"],
)  # fmt: skip
def test_a_baseline_whose_measurements_are_not_numbers_is_refused(cli, tmp_path, change):
    """Valid JSON of the wrong types was an internal error (exit 100); a median of 0
    judged any time "same" (red team round 69). Samples of 10**400 were an internal error
    too; a mad of 1.7e308 made the noise band infinite (every phase "same"), a median of
    5e-324 the change: both wrote "Infinity", which is not JSON (red team round 129)."""
    path, data = saved_baseline(cli, tmp_path, "--phase", "call")
    path.write_text(json.dumps(_stats_set(data, **change)))
    r = cli("bench", ADD, "add", "1", "2", "--baseline", path, "--phase", "call", *FAST)
    assert r.code == 2, r
    assert "not a bench report" in r.stderr and "Traceback" not in r.stderr


def test_a_baseline_whose_results_are_not_a_list_is_refused(cli, tmp_path):
    path, data = saved_baseline(cli, tmp_path, "--phase", "call")
    data["cases"][0]["results"] = {"a": 1}
    path.write_text(json.dumps(data))
    r = cli("bench", ADD, "add", "1", "2", "--baseline", path, "--phase", "call", *FAST)
    assert r.code == 2 and "results is not a list" in r.stderr, r


def test_bar_chart_compares_backends():
    """The chart needs two backends; build a report with two results from one real run."""
    import copy
    import io

    from rich.console import Console

    from wasmsbx.cli import bench_view

    case = bench.run_case(
        bench.Case("add", str(ADD), "add", [1, 2], settings=fast_settings(phases=("call",)))
    )
    twin = copy.deepcopy(case.results[0])
    twin.label = "other"
    twin.phases["call"].stats.median *= 2
    case.results.append(twin)
    buffer = io.StringIO()
    bench_view._bars(Console(file=buffer, width=120), ["call"], case.results)
    text = buffer.getvalue()
    assert "median by backend" in text
    lines = [line for line in text.splitlines() if "█" in line]
    assert len(lines) == 2
    assert lines[1].count("█") == bench_view.BAR_WIDTH  # the slowest fills the bar
    assert lines[0].count("█") == bench_view.BAR_WIDTH // 2
    assert "×2.00" in lines[1]


def test_phases_that_do_not_apply_are_a_usage_error(cli):
    r = cli("bench", ADD, "add", "1", "2", "--phase", "run", *FAST)
    assert r.code == 2 and "no phase of run applies to a function call" in r.stderr
    r = cli("bench", HELLO, "--phase", "call", *FAST)
    assert r.code == 2 and "applies to a WASI command" in r.stderr


def test_progress_shows_only_on_a_terminal(monkeypatch):
    import io
    import sys

    from wasmsbx.cli import bench_view

    with bench_view.Progress() as progress:  # pytest's stderr is not a terminal
        assert progress.bar is None
        progress.update("c", "wasmtime", "call", 1, 3)  # a no-op
    fake = io.StringIO()
    fake.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", fake)
    with bench_view.Progress() as progress:
        assert progress.bar is not None
        progress.update("add", "wasmtime", "call", 2, 3)
        task = progress.bar.tasks[0]
        from rich.text import Text

        shown = Text.from_markup(task.description).plain  # the label, not eaten as markup
        assert (shown, task.completed, task.total) == ("add [wasmtime] call", 2, 3)
    with bench_view.Progress(enabled=False) as progress:  # --json: never
        assert progress.bar is None


# CLI calls run in this process (see the cli fixture): none here needs the real entry point.
pytestmark = pytest.mark.inprocess
