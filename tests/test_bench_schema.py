"""The documented bench report schema (docs/bench-schema.md) and real reports agree."""

from __future__ import annotations

import copy
import re

import pytest

from wasmsbx.bench import schema as bench_schema

from .conftest import EXAMPLES, ROOT

FAST = ["-n", "2", "--warmup", "0", "--budget", "0.2s", "--sample-time", "1ms"]
DOC = ROOT / "docs" / "bench-schema.md"


def test_document_is_generated_from_the_declaration():
    assert DOC.read_text() == bench_schema.render_doc(), (
        "docs/bench-schema.md is stale: python -m wasmsbx.bench.schema > docs/bench-schema.md"
    )


def documented_fields() -> dict:
    """object -> {field: type} parsed back out of the markdown document."""
    objects: dict = {}
    current = None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^## `(\w+)`$", line)
        if heading:
            current = objects.setdefault(heading.group(1), {})
            continue
        row = re.match(r"^\| `(\w+)` \| `([^`]+)`", line)
        if row and current is not None:
            current[row.group(1)] = row.group(2).replace("\\|", "|")
    return objects


def test_document_tables_list_every_declared_field():
    parsed = documented_fields()
    declared = {
        name: {f.name: f.type for f in fields} for name, fields in bench_schema.OBJECTS.items()
    }
    assert parsed == declared


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Real reports covering a call, a command, a trap, a bad module, a skipped phase and a
    comparison."""
    import json
    import os

    from .conftest import run_cli

    tmp = tmp_path_factory.mktemp("schema")
    env = {"WASMSBX_CACHE_DIR": str(tmp / "cache"), "NO_COLOR": "1"}
    suite = tmp / "suite.toml"
    suite.write_text(
        f"""[bench]
backend = "all"
[[bench.case]]
module = "{EXAMPLES / "add.wat"}"
function = "add"
args = [1, 2]
[[bench.case]]
module = "{EXAMPLES / "wasi" / "hello.wasm"}"
argv = ["--exit", "0"]
[[bench.case]]
module = "{EXAMPLES / "add.wat"}"
function = "div"
args = [1, 0]
[[bench.case]]
module = "{tmp / "missing.wasm"}"
function = "f"
"""
    )
    base = tmp / "base.json"
    save = ["--save-baseline", base, "--fuel", "1000000"]
    compare = ["--baseline", base, "--json", "--fail-on-regression", "50%"]
    first = run_cli("bench", "--suite", suite, *save, *FAST, env=env, cwd=tmp)
    second = run_cli("bench", "--suite", suite, *compare, *FAST, env=env, cwd=tmp)
    assert first.code == 122 and second.code in (120, 122), (first, second)
    assert os.path.exists(base)
    return [json.loads(base.read_text()), second.json()]


def test_real_reports_match_the_schema(reports):
    for report in reports:
        assert bench_schema.validate(report) == []


def test_reports_exercise_the_optional_parts(reports):
    saved, compared = reports
    assert compared["comparison"] is not None and compared["comparison"]["deltas"]
    kinds = [c["kind"] for c in saved["cases"]]
    assert kinds == ["call", "command", "call", None]
    assert saved["cases"][3]["error"]["kind"] == "io"
    trap = saved["cases"][2]["results"][0]
    assert trap["status"] == "failed" and trap["error"]["phase"] == "call"
    assert saved["cases"][0]["results"][0]["fuel_per_op"] is not None


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda r: r.update(extra=1), "$.extra: not documented in the report object"),
        (lambda r: r.pop("created"), "$.created: missing"),
        (lambda r: r.update(report_version="1"), "$.report_version: expected int"),
        (
            lambda r: r["cases"][0]["results"][0]["phases"]["call"]["stats"].update(median=None),
            "$.cases[0].results[0].phases.call.stats.median: expected number",
        ),
        (
            lambda r: r["cases"][0]["results"][0]["phases"]["call"]["stats"]["outliers"].pop("low"),
            "outliers.low: missing",
        ),
        (lambda r: r["environment"].update(cpu_mhz=3000), "$.environment.cpu_mhz: not documented"),
    ],
)
def test_validator_catches_departures(reports, mutate, problem):
    report = copy.deepcopy(reports[0])
    mutate(report)
    problems = bench_schema.validate(report)
    assert any(problem in p for p in problems), problems
