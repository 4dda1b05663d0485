"""The component examples (examples/components): the committed .wasm files are what
their sources give with the pinned tools, and they do what the README says."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .component_guests import ADAPTER, tool
from .conftest import ROOT

EXAMPLES = ROOT / "examples" / "components"


@pytest.mark.slow
def test_committed_component_examples_are_current():
    tool("wasm-tools")
    pytest.importorskip("ziglang", reason="ziglang is not installed (pip install -e '.[dev]')")
    if not ADAPTER.exists():
        pytest.skip(f"WASI adapter missing: run scripts/fetch-wasi-adapter ({ADAPTER})")
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "build.sh"), "--check"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "argv, out",
    [
        (("calc.wasm", "greet", "World"), "Hello, World\n"),
        (("calc.wasm", "area", "{width: 3, height: 4}"), "12\n"),
        (("calc.wasm", "example:calc/api#double", "21"), "42\n"),
        (("calc.wasm", "divide", "7", "0"), 'err("division by zero")\n'),
        (
            ("cat.wasm", "--dir-ro", f"{EXAMPLES}:/data", "--", "/data/greeting.txt"),
            (EXAMPLES / "greeting.txt").read_text(),
        ),
    ],
)
def test_component_examples_run(cli, argv, out):
    res = cli("run", EXAMPLES / argv[0], *argv[1:])
    assert (res.code, res.stdout) == (0, out), res
