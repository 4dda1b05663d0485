"""Our own spec-style scripts (tests/data/spec/*.wast: the spectest host module,
values, register/linking and every assertion kind) through benchmarks/spectest.py,
which drives only the public API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT

SPEC = ROOT / "tests" / "data" / "spec"


def spectest(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "spectest.py"), str(SPEC), "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout[proc.stdout.index("{") :])


@pytest.fixture(autouse=True)
def need_wabt():
    if shutil.which("wast2json") is None:
        pytest.skip("wast2json (wabt) is missing: scripts/install-toolchain installs it")


def test_wasmtime_expresses_and_passes_everything():
    report = spectest("--backend", "wasmtime")
    assert report["unconverted_files"] == []
    assert report["commands"] >= 50
    assert (report["failed"], report["not_expressible"]) == (0, 0), report
    assert report["passed"] == report["commands"]


def test_wasmer_fails_nothing_and_says_why(backend):
    if not backend.startswith("wasmer:cranelift"):
        pytest.skip("runs once, on wasmer:cranelift")
    report = spectest("--backend", backend)
    assert report["failed"] == 0, report
    reasons = " ".join(report["not_expressible_reasons"])
    # Host globals, memories, tables and linked modules work on wasmer too (one child
    # process per group): the one thing left is a non-null externref from Python.
    for reason in report["not_expressible_reasons"]:
        assert "non-null externref" in reason, reasons
    assert report["not_expressible"] <= 2, report
    assert report["passed"] >= report["commands"] - 2
