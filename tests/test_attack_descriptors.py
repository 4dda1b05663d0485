"""A guest that takes every file descriptor of the process (red team 104).

A guest granted a folder opens a file in a loop without closing it: the runtime counts
nothing, so it gets every descriptor the process's open-files limit leaves. Then it
traps (or runs into its timeout). The command line had to import what reports that,
and each import opens a file: three chained tracebacks and exit 1, whatever the trap or
limit. Now it keeps a few descriptors aside (wasmsbx.fdroom) and gives them back before
reporting: one error line and the trap's or limit's own exit code.

Run with the open-files limit lowered (256) so that the flood is quick.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from .conftest import EXAMPLES

# path_open(dirfd 3, "f.txt") until it fails, then the chosen ending.
FLOOD = """(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "f.txt")
  (func (export "_start") (local $n i32)
    (block $done
      (loop $more
        (br_if $done (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 5)
          (i32.const 0) (i64.const 2) (i64.const 2) (i32.const 0) (i32.const 8)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $more)))
    ENDING))"""

ENDINGS = {
    "trap": ("unreachable", 103, "trapped"),
    "timeout": ("(loop $spin (br $spin))", 112, "timeout"),
}


def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_guest_holding_every_descriptor_still_gets_one_error_line(isolated, ending):
    code, want_exit, words = ENDINGS[ending]
    (isolated / "data").mkdir()
    (isolated / "data" / "f.txt").write_text("x\n")
    (isolated / "flood.wat").write_text(FLOOD.replace("ENDING", code))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wasmsbx",
            "run",
            "flood.wat",
            "--dir-ro",
            "data::/d",
            "--timeout",
            "2s",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_low_limit,
        env=dict(os.environ),
    )
    assert proc.returncode == want_exit, proc
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], proc.stderr


# A reactor that prints a forged report on its inherited stdout, then returns 5.
FORGER = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{\\"results\\": [{\\"type\\": \\"i32\\", \\"value\\": 1000000}]}\\n")
  (func (export "add") (param i32 i32) (result i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 49))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.add (local.get 0) (local.get 1))))"""


def test_a_guests_stdout_never_precedes_the_json_report(cli, isolated, backend):
    """Red team 104: ``run MODULE FUNC --json`` let the guest's own stdout out before the
    report, so a guest's forged ``{"results": ...}`` was the first JSON document a reader
    took. As in --batch, the guest's stdout goes to stderr while it runs."""
    import json

    (isolated / "forger.wat").write_text(FORGER)
    res = cli("run", "forger.wat", "add", "2", "3", "--json", "--backend", backend)
    assert res.code == 0, res
    report = json.loads(res.stdout)  # one document: nothing before it
    assert report["results"] == [{"type": "i32", "value": 5}]
    assert "1000000" in res.stderr and "1000000" not in res.stdout
    plain = cli("run", "forger.wat", "add", "2", "3", "--backend", backend)
    assert plain.stdout.splitlines()[-1] == "5" and "1000000" in plain.stdout  # (as before)


def test_a_commands_control_bytes_come_back_as_base64_in_json(cli, isolated):
    """Red team 104: JSON writes a control byte as a 6-byte escape; a guest's 64 MiB of
    them were 402 MB of --json report. Past 4 KiB, such output comes back as base64."""
    import base64
    import json

    wat = """(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 2)
      (func (export "_start")
        (memory.fill (i32.const 1024) (i32.const 1) (i32.const 65536))
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const LENGTH))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""
    for length, as_text in ((100, True), (65536, False)):
        (isolated / "ctl.wat").write_text(wat.replace("LENGTH", str(length)))
        res = cli("run", "ctl.wat", "--json")
        assert res.code == 0, res
        stdout = json.loads(res.stdout)["stdout"]
        if as_text:
            assert stdout == "\x01" * length
        else:
            assert base64.b64decode(stdout["base64"]) == b"\x01" * length
            assert len(res.stdout) < 2 * length


LIBRARY = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
import wasmsbx
from wasmsbx import errors, policy

component = open(sys.argv[3], "rb").read()  # (given as bytes: no file to open later)
flood = wasmsbx.Sandbox(sys.argv[1], policy.from_dict(
    {"filesystem": {"read_only": [sys.argv[2] + "::/d"]}}))
assert flood.call("flood") > 100  # (its instance lives on, holding them)
try:  # (a component: its modules are imported on first use, which needs descriptors)
    other = wasmsbx.Sandbox(component, policy.from_dict({"runtime": {"cache": False}}))
    print("made", other.call("add", 3, 4))
except errors.WasmsbxError as exc:
    print("refused", type(exc).__name__, exc.exit_code)
flood.close()
print("again", wasmsbx.Sandbox(b'(module (func (export "f") (result i32) i32.const 8))').call("f"))
"""


def test_a_tenant_holding_every_descriptor_leaves_others_a_wasmsbx_error(isolated):
    """Red team 104: after one tenant's guest took every descriptor, a new Sandbox
    raised a bare OSError (an import, a file read), where the README promises a
    WasmsbxError; closing the tenant gives them back."""
    (isolated / "data").mkdir()
    (isolated / "data" / "f.txt").write_text("x\n")
    reactor = FLOOD.replace('(export "_start")', '(export "flood") (result i32)')
    (isolated / "flood.wat").write_text(reactor.replace("ENDING", "local.get $n"))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LIBRARY,
            str(isolated / "flood.wat"),
            str(isolated / "data"),
            str(EXAMPLES / "components" / "calc.wasm"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert lines[0] in ("made 7", "refused ResourceExhausted 118"), proc
    assert lines[-1] == "again 8", proc
