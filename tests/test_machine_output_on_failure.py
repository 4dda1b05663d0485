"""A failed command still gives its machine format: `audit --sarif` a SARIF log whose
invocation failed (no ``results``: absent, not empty), where the log would have gone;
`--json` its error object on Ctrl-C too, as for any other error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .test_audit_formats import sarif_validator
from .test_deadlines import handler_installed


def _failed(log: dict) -> dict:
    sarif_validator().validate(log)
    (run,) = log["runs"]
    assert "results" not in run  # (an empty list would say: audited, nothing found)
    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is False
    return invocation


def test_an_audit_that_fails_writes_a_failed_sarif_log(cli, tmp_path):
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"garbage")
    res = cli("audit", bad, "--sarif")
    assert res.code == 102, res
    invocation = _failed(json.loads(res.stdout))
    assert invocation["exitCode"] == 102
    (note,) = invocation["toolExecutionNotifications"]
    assert note["level"] == "error"
    assert "not a WebAssembly module" in note["message"]["text"]
    assert "hint: give a .wasm binary" in note["message"]["text"]
    assert "error: " in res.stderr  # the one line still comes


def test_it_goes_where_the_log_would_have_gone(cli, tmp_path):
    missing = tmp_path / "missing.wasm"
    out = tmp_path / "audit.sarif"
    res = cli("audit", missing, "--sarif", "--output", out)
    assert res.code == 105, res  # (a module that cannot be read)
    assert res.stdout == ""
    assert _failed(json.loads(out.read_text()))["exitCode"] == 105


def test_an_output_refused_sends_the_log_to_stdout(cli, tmp_path):
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"garbage")
    res = cli("audit", bad, "--sarif", "--output", bad)  # the input itself: refused
    assert res.code == 105, res
    assert bad.read_bytes() == b"garbage"
    assert (
        "same file as the input"
        in _failed(json.loads(res.stdout))["toolExecutionNotifications"][0]["message"]["text"]
    )


def _interrupted(*args: str) -> tuple:
    """``wasmsbx *args`` (stdin a pipe left open) interrupted with SIGINT once ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wasmsbx", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    waited = time.monotonic()
    while not handler_installed(proc.pid, signal.SIGTERM) and time.monotonic() - waited < 60:
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out.decode(), err.decode()


def test_ctrl_c_during_an_audit_writes_a_failed_sarif_log():
    code, out, err = _interrupted("audit", "/dev/stdin", "--sarif")  # waits for its module
    assert code == 130, err
    assert _failed(json.loads(out))["exitCode"] == 130
    assert "error: interrupted" in err


@pytest.mark.parametrize("args", [["audit", "/dev/stdin"], ["run", "-", "f"]])
def test_ctrl_c_gives_json_its_error_object(args):
    code, out, err = _interrupted(*args, "--json")
    assert code == 130, err
    assert json.loads(out) == {
        "error": {"kind": "interrupted", "message": "interrupted", "exit_code": 130},
        "exit_source": "wasmsbx",
    }


def _interrupt_in(monkeypatch, where: str) -> None:
    """Ctrl-C at ``where``: "import" (main, before any command runs) or "dispatch"
    (typer, which turns it into a silent exit 130 before the command's boundary)."""
    from wasmsbx import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "import":
        monkeypatch.setattr(cli, "_lean_run", interrupted)
    else:
        import typer.main

        real = typer.main.get_command

        class Command:
            def __init__(self, command):
                self.command = command

            def __getattr__(self, name):
                return getattr(self.command, name)

            def main(self, *args, **kwargs):
                return 130  # what typer returns for Ctrl-C while it dispatches

        monkeypatch.setattr(typer.main, "get_command", lambda app: Command(real(app)))


@pytest.mark.parametrize("where", ["import", "dispatch"])
def test_an_early_ctrl_c_still_gives_the_machine_formats(monkeypatch, where, tmp_path):
    from .conftest import run_main

    _interrupt_in(monkeypatch, where)
    module = tmp_path / "m.wat"
    module.write_text("(module)")
    res = run_main("audit", module, "--sarif")
    assert res.code == 130, res
    assert _failed(json.loads(res.stdout))["exitCode"] == 130
    assert "error: interrupted" in res.stderr
    res = run_main("audit", module, "--json")
    assert (res.code, json.loads(res.stdout)["error"]["kind"]) == (130, "interrupted"), res
    res = run_main("audit", module)
    assert (res.code, res.stdout) == (130, ""), res
    assert "error: interrupted" in res.stderr


@pytest.mark.parametrize("module", ["good", "bad"])
def test_an_output_that_cannot_be_written_sends_the_log_to_stdout(cli, tmp_path, module):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / "m.wat"
    path.write_text("(module)" if module == "good" else "garbage")
    res = cli("audit", path, "--sarif", "--output", "/dev/full")
    code = 105 if module == "good" else 102  # (the audit's own failure comes first)
    assert res.code == code, res
    assert _failed(json.loads(res.stdout))["exitCode"] == code
    assert res.stderr.count("error:") == 1


ECHO_TRAPS_THIRD = """(module
  (memory (export "memory") 2)
  (global $n (mut i32) (i32.const 0))
  (func (export "alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "process") (param $ptr i32) (param $len i32) (result i32 i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (if (i32.eq (global.get $n) (i32.const 3)) (then unreachable))
    (local.get $ptr) (local.get $len)))"""


def test_a_streams_json_error_goes_to_stderr_not_into_its_output(cli, tmp_path):
    """A stream's stdout is its guest's bytes: the error object was appended to them
    (red team round 69); it goes to stderr, as the stream's success report does."""
    guest = tmp_path / "echo.wat"
    guest.write_text(ECHO_TRAPS_THIRD)
    res = cli("run", guest, "--stream", "--json", "--chunk-size", "1000", input=b"a" * 300_000)
    assert res.code == 103, res
    assert res.stdout_bytes == b"a" * 2000  # the two chunks before the trap, nothing else
    error = json.loads(res.stderr[res.stderr.index("{") : res.stderr.rindex("}") + 1])
    assert error["error"]["kind"] == "trap" and error["exit_source"] == "wasmsbx"


def test_a_batchs_json_error_goes_to_stderr_not_between_its_results(cli, tmp_path):
    missing = tmp_path / "missing.jsonl"
    res = cli("run", tmp_path / "nowhere.wat", "f", f"--batch={missing}", "--json")
    assert res.code != 0 and res.stdout == "", res
    assert '"exit_source": "wasmsbx"' in res.stderr


@pytest.mark.parametrize(
    "argv, where",
    [
        (["run", "m", "f", "--json", "--batch", "x"], "stderr"),
        (["run", "m", "f", "--json", "--batch=x"], "stderr"),
        (["run", "m", "--json", "--stream"], "stderr"),
        (["run", "m", "nosuch", "--json", "--invoke", "--batch"], True),  # (a value)
        (["run", "m", "--json", "--dir-ro", "--stream"], True),
        (["run", "m", "--json", "--", "--batch"], True),  # (the guest's)
        (["audit", "m", "--json"], True),
        (["run", "m", "--batch", "x"], False),
    ],
)
def test_where_the_json_error_object_goes(argv, where):
    from wasmsbx.cli.options import json_flag

    assert json_flag(argv) == where
