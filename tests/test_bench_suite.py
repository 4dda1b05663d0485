"""Suite files for wasmsbx bench --suite: good ones run every case, bad ones fail clearly."""

from __future__ import annotations

import pytest

from wasmsbx.bench.suite import SuiteError, build_cases, read_suite

from .conftest import EXAMPLES

FAST = ["-n", "2", "--warmup", "0", "--budget", "0.2s", "--sample-time", "1ms"]


def write(tmp_path, text: str, name: str = "bench.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = f"""
[bench]
iterations = 2
warmup = 0
budget = "200ms"
sample_time = "1ms"
phases = ["call", "run"]

[[bench.case]]
name = "add"
module = "{EXAMPLES / "add.wat"}"
function = "add"
args = [5, 3]

[[bench.case]]
name = "hypot"
module = "{EXAMPLES / "add.wat"}"
function = "hypot"
args = [3.0, "4"]
iterations = 3

[[bench.case]]
name = "unknown function"
module = "{EXAMPLES / "add.wat"}"
function = "nope"

[[bench.case]]
name = "missing module"
module = "missing.wasm"
function = "f"

[[bench.case]]
name = "hello"
module = "{EXAMPLES / "wasi" / "hello.wasm"}"
argv = ["--exit", "0"]
"""


def test_suite_runs_every_case_and_reports_failures_per_case(cli, tmp_path):
    suite = write(tmp_path, GOOD)
    r = cli("bench", "--suite", suite, "--json")
    assert r.code == 122, r  # BATCH_FAILURES: some cases failed, the others ran
    cases = {c["name"]: c for c in r.json()["cases"]}
    assert list(cases) == ["add", "hypot", "unknown function", "missing module", "hello"]
    for name in ("add", "hypot", "hello"):
        assert cases[name]["error"] is None
        assert cases[name]["results"][0]["status"] == "ok"
    assert cases["add"]["results"][0]["phases"]["call"]["stats"]["samples"] == 2
    assert cases["hypot"]["results"][0]["phases"]["call"]["stats"]["samples"] == 3
    assert list(cases["hello"]["results"][0]["phases"]) == ["run"]
    assert cases["unknown function"]["error"]["kind"] == "usage"
    assert "no export named 'nope'" in cases["unknown function"]["error"]["message"]
    assert cases["missing module"]["error"]["kind"] == "io"
    assert r.json()["summary"] == {"cases": 5, "failed": 2, "regressions": 0}
    assert "unknown function: add.wat has no export named 'nope'" in r.stderr
    assert "missing module:" in r.stderr
    assert "Traceback" not in r.stderr


def test_suite_all_good_exits_zero_and_command_line_overrides_win(cli, tmp_path):
    suite = write(
        tmp_path,
        """
[bench]
iterations = 50
[[bench.case]]
module = "add.wat"
function = "add"
args = [1, 2]
""",
    )
    (tmp_path / "add.wat").write_text((EXAMPLES / "add.wat").read_text())
    r = cli("bench", "--suite", suite, "--phase", "call", "--json", *FAST)
    assert r.code == 0, r
    case = r.json()["cases"][0]
    assert case["name"] == "add.wat:add"  # the default name
    assert case["settings"]["iterations"] == 2  # -n 2 beat iterations = 50
    assert case["results"][0]["phases"]["call"]["stats"]["samples"] == 2


def test_suite_policy_is_relative_to_the_suite_file(tmp_path):
    (tmp_path / "tight.toml").write_text('[limits]\nmemory = "1MiB"\n')
    suite = write(
        tmp_path,
        f"""
[bench]
policy = "tight.toml"
backend = ["wasmtime"]
[[bench.case]]
module = "{EXAMPLES / "add.wat"}"
function = "add"
args = [1, 2]
""",
    )
    from wasmsbx.policy import load

    specs = read_suite(str(suite))
    (case,) = build_cases(specs, {}, lambda path: load(path))
    assert case.policy.values["limits.memory"] == 1 << 20
    assert case.backends == ("wasmtime",)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[bench\n", "invalid TOML"),
        ("[other]\nx = 1\n", "other: unknown table"),
        ("[bench]\n", "bench.case: no cases"),
        ("x = 1\n", "x: unknown table"),
        ('[bench]\niteratons = 3\n[[bench.case]]\nmodule = "m.wat"\n', "did you mean `iterations`"),
        ('[bench]\n[[bench.case]]\nfunction = "f"\n', "bench.case[0].module: missing"),
        ('[[bench.case]]\nmodule = "m.wat"\nargs = "1 2"\nfunction = "f"\n', "bench.case[0].args"),
        (
            '[[bench.case]]\nmodule = "m.wat"\nfunction = "f"\nargv = ["a"]\n',
            "both function and argv",
        ),
        ('[[bench.case]]\nmodule = "m.wat"\nargs = [1]\n', "args but no function"),
        ('[[bench.case]]\nmodule = "m.wat"\niterations = 0\n', "bench.case[0].iterations"),
        ('[[bench.case]]\nmodule = "m.wat"\nbudget = "soon"\n', "bench.case[0].budget"),
        ('[[bench.case]]\nmodule = "m.wat"\nphases = ["cmopile"]\n', "unknown phase 'cmopile'"),
        ('[[bench.case]]\nmodule = "a.wat"\n[[bench.case]]\nmodule = "a.wat"\n', "duplicate case"),
        ("[[bench.case]]\nmodule = 5\n", "bench.case[0].module: expected a non-empty string"),
    ],
)
def test_bad_suite_files_are_one_clear_error(cli, tmp_path, text, needle):
    suite = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        read_suite(str(suite))
    assert needle in f"{info.value.message} {info.value.hint}"
    assert str(suite) in info.value.message
    r = cli("bench", "--suite", suite)
    assert r.code == 2, r
    assert needle in r.stderr
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_bad_suite_backend_and_missing_file(cli, tmp_path):
    suite = write(tmp_path, '[bench]\nbackend = "wasmtiem"\n[[bench.case]]\nmodule = "a.wat"\n')
    r = cli("bench", "--suite", suite)
    assert r.code == 2 and "did you mean 'wasmtime'" in r.stderr
    r = cli("bench", "--suite", tmp_path / "nope.toml")
    assert r.code == 105 and "suite file not found" in r.stderr
    r = cli("bench", EXAMPLES / "add.wat", "--suite", suite)
    assert r.code == 2 and "not both" in r.stderr


def test_bad_policy_in_suite_is_a_policy_error(cli, tmp_path):
    suite = write(tmp_path, '[bench]\npolicy = "nope.toml"\n[[bench.case]]\nmodule = "a.wat"\n')
    r = cli("bench", "--suite", suite)
    assert r.code == 101 and "policy file not found" in r.stderr


def test_readme_suite_example_is_valid(tmp_path):
    import re

    from .conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## bench", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```toml\n(.*?)```", section, re.S)
    (tmp_path / "examples").symlink_to(EXAMPLES)
    specs = read_suite(str(write(tmp_path, block)))
    assert [s["name"] for s in specs] == ["add", "hello.wasm"]
    assert specs[0]["iterations"] == 20 and specs[0]["backend"] == ("all",)
    assert specs[1]["argv"] == ["--exit", "0"] and specs[1]["budget"] == 1.0
