"""``wasmsbx run --audit-log FILE``: one JSON line per security-relevant event."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from .conftest import EXAMPLES, GUESTS, require_capability, require_module

ADD = EXAMPLES / "add.wat"
FSPROBE = GUESTS / "fsprobe.wasm"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def events(path) -> list:
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        assert record["v"] == 1 and TIME.match(record["time"]), record
        assert re.fullmatch(r"[0-9a-f]{16}", record["run"])
    return records


def names(records) -> list:
    return [r["event"] for r in records]


def by_event(records, name) -> dict:
    (found,) = [r for r in records if r["event"] == name]
    return found


def test_a_clean_call(cli, backend, isolated):
    require_module(backend, ADD)
    res = cli("run", ADD, "add", "5", "3", "--backend", backend, "--audit-log", "a.log")
    assert (res.code, res.stdout) == (0, "8\n")
    records = events(isolated / "a.log")
    assert names(records) == ["start", "sandbox", "exit"]
    assert len({r["run"] for r in records}) == 1
    start = by_event(records, "start")
    assert (start["module"], start["kind"], start["function"], start["args"]) == (
        str(ADD),
        "call",
        "add",
        ["5", "3"],
    )
    sandbox = by_event(records, "sandbox")
    assert len(sandbox["sha256"]) == 64 and sandbox["backend"] == backend.split(":")[0]
    assert sandbox["limits"]["memory"] == 256 * 2**20 and sandbox["grants"] == []
    end = by_event(records, "exit")
    assert (end["exit_code"], end["outcome"]) == (0, "ok") and end["seconds"] >= 0


@pytest.mark.parametrize("call", [["--invoke", "add", "5", "3"], ["--invoke", "add(5, 3)"]])
def test_the_start_names_the_call_invoke_makes(cli, isolated, call):
    # red team round 30: `--invoke add 5 3` was logged as function "5", args ["3"]
    res = cli("run", ADD, *call, "--audit-log", "a.log")
    assert (res.code, res.stdout) == (0, "8\n"), res
    start = by_event(events(isolated / "a.log"), "start")
    assert (start["kind"], start["function"], start["args"]) == ("call", "add", ["5", "3"])


def test_command_exit_code_and_grants(cli, backend, isolated):
    require_capability(backend, "wasi-readonly", "fs-confined")  # --dir-ro below
    (isolated / "data").mkdir()
    res = cli(
        "run", FSPROBE, "--backend", backend, "--dir-ro", "data", "--env", "TOKEN=s3cret",
        "--audit-log", "a.log", "--", "exit", "3",
    )  # fmt: skip
    assert res.code == 3
    records = events(isolated / "a.log")
    assert "s3cret" not in (isolated / "a.log").read_text()  # names only, never values
    sandbox = by_event(records, "sandbox")
    assert sandbox["env"] == ["TOKEN"]
    assert sandbox["grants"] == [
        {"host": str(isolated / "data"), "guest": "data", "writable": False}
    ]
    end = by_event(records, "exit")
    assert (end["exit_code"], end["guest_exit_code"], end["outcome"]) == (3, 3, "guest_exit")
    assert by_event(records, "start")["args"] == ["exit", "3"]


def test_fuel_limit(cli, backend, isolated):
    require_capability(backend, "fuel")
    res = cli(
        "run", EXAMPLES / "loop.wat", "spin", "--fuel", "10000", "--backend", backend,
        "--audit-log", "a.log",
    )  # fmt: skip
    assert res.code == 111
    records = events(isolated / "a.log")
    assert names(records) == ["start", "sandbox", "limit", "exit"]
    limit = by_event(records, "limit")
    assert (limit["limit"], limit["fatal"], limit["limit_value"]) == ("fuel", True, 10000)
    assert by_event(records, "exit")["outcome"] == "limit"


def test_timeout_limit(cli, backend, isolated):
    require_capability(backend, "timeout")
    res = cli(
        "run", EXAMPLES / "loop.wat", "spin", "--timeout", "100ms", "--backend", backend,
        "--audit-log", "a.log",
    )  # fmt: skip
    assert res.code == 112
    assert by_event(events(isolated / "a.log"), "limit")["limit"] == "timeout"


def test_memory_limit_that_does_not_stop_the_guest(cli, backend, isolated):
    require_capability(backend, "memory-limit")
    res = cli(
        "run", EXAMPLES / "memory_hog.wat", "hog", "--memory", "64MiB", "--backend", backend,
        "--audit-log", "a.log",
    )  # fmt: skip
    assert (res.code, res.stdout) == (0, "1024\n")
    records = events(isolated / "a.log")
    limit = by_event(records, "limit")
    assert (limit["limit"], limit["fatal"]) == ("memory", False)
    assert by_event(records, "exit")["memory_bytes"] == 64 * 2**20


def test_trap(cli, backend, isolated):
    res = cli("run", GUESTS / "trap.wat", "div0", "--backend", backend, "--audit-log", "a.log")
    assert res.code == 103
    trap = by_event(events(isolated / "a.log"), "trap")
    assert "divide by zero" in trap["message"] and trap["exit_code"] == 103
    assert trap["backtrace"]


def test_proc_exit_inside_a_call(cli, backend, isolated):
    (isolated / "quit.wat").write_text(
        '(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'
        ' (memory (export "memory") 1)'
        ' (func (export "quit") (call $exit (i32.const 7))))'
    )
    res = cli("run", "quit.wat", "quit", "--backend", backend, "--audit-log", "a.log")
    assert res.code == 103
    trap = by_event(events(isolated / "a.log"), "trap")
    assert trap["guest_exit_code"] == 7


def test_import_refused(cli, backend, isolated):
    res = cli("run", GUESTS / "imports_env.wat", "f", "--backend", backend, "--audit-log", "a.log")
    assert res.code == 102
    records = events(isolated / "a.log")
    refused = by_event(records, "import_refused")
    assert refused["imports"] == ["env.host_log"]
    assert by_event(records, "exit")["outcome"] == "import_refused"


def test_grant_denied(cli, isolated):
    res = cli("run", ADD, "add", "1", "2", "--dir", "missing", "--audit-log", "a.log")
    assert res.code == 101
    records = events(isolated / "a.log")
    assert names(records) == ["start", "grant_denied", "exit"]
    denied = by_event(records, "grant_denied")
    assert denied["key"] == "filesystem.read_write" and "missing" in denied["message"]


def test_policy_error_and_module_error(cli, isolated):
    (isolated / "p.toml").write_text("[limits]\nmemory = 0\n")
    cli("run", ADD, "add", "1", "2", "--policy", "p.toml", "--audit-log", "a.log")
    (isolated / "bad.wasm").write_bytes(b"\0asm\x01\0\0\0\x05")
    cli("run", "bad.wasm", "f", "--audit-log", "a.log")
    records = events(isolated / "a.log")
    assert names(records) == ["start", "policy_error", "exit", "start", "error", "exit"]
    assert records[1]["key"] == "limits.memory"
    assert records[4]["kind"] == "module" and records[4]["exit_code"] == 102
    assert len({r["run"] for r in records}) == 2  # appended, one id per run


def test_unwritable_log_stops_before_running(cli, isolated):
    res = cli("run", ADD, "add", "1", "2", "--audit-log", "no/such/dir/a.log")
    assert res.code == 105 and res.stdout == ""
    assert res.stderr.startswith("error: --audit-log no/such/dir/a.log: cannot open")


def test_no_log_no_import():
    """Without --audit-log the run path neither imports the log module nor opens a file."""
    code = (
        "import sys; from wasmsbx.cli import main; "
        f"main(['run', {str(ADD)!r}, 'add', '1', '2']); "
        "print('wasmsbx.auditlog' in sys.modules, 'wasmsbx.audit.report' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.splitlines() == ["3", "False False"]


def test_run_help_lists_the_option(cli):
    res = cli("run", "--help")
    assert "--audit-log" in res.stdout


def test_the_log_is_never_an_input_nor_a_stand_in(cli, isolated):
    """Red team round 52: --audit-log was checked only when the file existed, and only
    against the module and --policy: its lines went into a signed artifact (refused as
    unauthenticated from then on), a batch input (read back as items), a discovered
    ./sandbox.toml (broken for good), a checkpoint; `-` made a file of that name and ''
    turned the log off. Each is refused now (exit 105) and the file is left as it was."""
    module = isolated / "add.wat"
    module.write_bytes(ADD.read_bytes())
    assert cli("compile", module, "-o", isolated / "add.cwasm").code == 0
    items = isolated / "in.jsonl"
    items.write_text("[1, 2]\n")
    ckpt = isolated / "run.ckpt"
    ckpt.write_text("{}")
    cases = [
        (["add", "1", "2", "--artifact", "add.cwasm"], "add.cwasm"),
        (["add", "--batch", "in.jsonl"], "in.jsonl"),
        (["add", "--batch", "in.jsonl", "--checkpoint", "run.ckpt"], "run.ckpt"),
        (["add", "1", "2"], "add.wat"),
    ]
    for extra, log in cases:
        before = (isolated / log).read_bytes()
        r = cli("run", "add.wat", *extra, "--audit-log", log, cwd=isolated)
        said = ("same file as the input", "would write into what it reads")
        assert r.code == 105 and any(s in r.stderr for s in said), (extra, r)
        assert (isolated / log).read_bytes() == before, extra
    (isolated / "sandbox.toml").write_text('[limits]\ntimeout = "5s"\n')
    r = cli("run", "add.wat", "add", "1", "2", "--audit-log", "sandbox.toml", cwd=isolated)
    assert r.code == 105 and (isolated / "sandbox.toml").read_text().startswith("[limits]")
    for name in ("-", ""):
        r = cli("run", "add.wat", "add", "1", "2", "--audit-log", name, cwd=isolated)
        assert r.code == 105 and "Traceback" not in r.stderr, (name, r)
    assert not (isolated / "-").exists()
    r = cli("run", "add.wat", "add", "1", "2", "--audit-log", "new.jsonl", cwd=isolated)
    assert r.code == 0 and (isolated / "new.jsonl").stat().st_size > 0, r


@pytest.mark.parametrize("name", ["sandbox.toml", "sub/sandbox.toml", "SANDBOX.TOML", "link"])
def test_the_log_never_becomes_a_policy_wasmsbx_discovers(cli, isolated, name):
    """Red team round 77: in a folder without one, `--audit-log sandbox.toml` created
    ./sandbox.toml, and every later command there failed (invalid TOML, exit 101). Also
    in another folder (discovered there), in any case, through a link, with --policy."""
    (isolated / "add.wat").write_bytes(ADD.read_bytes())
    (isolated / "p.toml").write_text("")
    (isolated / "sub").mkdir()
    (isolated / "sub" / "sandbox.toml").write_text("")
    (isolated / "link").symlink_to(isolated / "sub" / "sandbox.toml")
    for policy in ([], ["--policy", "p.toml"]):
        r = cli("run", "add.wat", "add", "1", "2", *policy, "--audit-log", name, cwd=isolated)
        assert r.code == 105 and "sandbox.toml, the policy file" in r.stderr, (policy, r)
        assert "choose another name" in r.stderr and "Traceback" not in r.stderr, r
    assert not (isolated / "sandbox.toml").exists() and not (isolated / "SANDBOX.TOML").exists()
    assert (isolated / "sub" / "sandbox.toml").read_text() == ""
    assert cli("run", "add.wat", "add", "1", "2", cwd=isolated).code == 0


def test_a_device_or_a_fifo_with_a_reader_is_written_as_any_output(cli, isolated):
    """Red team round 77 found the README saying a FIFO or a device is refused; like
    every output, they are written as they are (the README says so now)."""
    (isolated / "add.wat").write_bytes(ADD.read_bytes())
    r = cli("run", "add.wat", "add", "1", "2", "--audit-log", "/dev/null", cwd=isolated)
    assert (r.code, r.stdout) == (0, "3\n"), r
    fifo = isolated / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # (open at once, no writer yet)
    try:
        r = cli("run", "add.wat", "add", "1", "2", "--audit-log", fifo, cwd=isolated)
        out = os.read(reader, 1 << 16)  # (three short lines: well within a pipe's buffer)
    finally:
        os.close(reader)
    assert (r.code, r.stdout) == (0, "3\n"), r
    lines = [json.loads(line)["event"] for line in out.decode().splitlines()]
    assert lines == ["start", "sandbox", "exit"], out
    reader_less = cli("run", "add.wat", "add", "1", "2", "--audit-log", fifo, cwd=isolated)
    assert reader_less.code == 105 and "no process is reading" in reader_less.stderr, reader_less


def test_values_json_cannot_hold_are_logged_as_strings(tmp_path):
    # (red team 151: an MCP client's call_export args [NaN, 1e400] were logged as
    # "args":[NaN,Infinity], which strict JSON readers refuse)
    import json as json_mod
    import math

    from wasmsbx.auditlog import AuditLog

    path = tmp_path / "log.jsonl"
    log = AuditLog(str(path))
    log.start(None, "f", [math.nan, 1e400, -math.inf, 1.5, [math.nan]])
    log.start(None, "g", [1, 2])
    log.fh.close()

    def strict(name):
        raise ValueError(name)

    records = [
        json_mod.loads(line, parse_constant=strict) for line in path.read_text().splitlines()
    ]
    assert records[0]["args"] == ["nan", "inf", "-inf", 1.5, ["nan"]]
    assert records[1]["args"] == [1, 2]
