"""Shell completions: generated from the real CLI, current, and answering for `run`."""

from __future__ import annotations

import runpy
from importlib.metadata import version

import pytest

from .conftest import ROOT

GEN = runpy.run_path(str(ROOT / "scripts" / "gen-completions"))


@pytest.mark.parametrize("shell", GEN["SHELLS"])
def test_completion_scripts_are_current(shell):
    path = ROOT / "completions" / f"wasmsbx.{shell}"
    text = path.read_text()
    assert "_WASMSBX_COMPLETE" in text and "wasmsbx" in text
    if f"with typer {version('typer')}." not in text.splitlines()[0]:
        pytest.skip("committed scripts were generated with another typer version")
    assert text == GEN["render"](shell), "stale: run scripts/gen-completions"


def test_dynamic_completion_offers_run_options(cli):
    env = {
        "COMP_WORDS": "wasmsbx run --ti",
        "COMP_CWORD": "2",
        "_WASMSBX_COMPLETE": "complete_bash",
    }
    res = cli(env=env)
    assert res.code == 0 and "--timeout" in res.stdout.split()
    env = {"COMP_WORDS": "wasmsbx ba", "COMP_CWORD": "1", "_WASMSBX_COMPLETE": "complete_bash"}
    assert "backends" in cli(env=env).stdout.split()
