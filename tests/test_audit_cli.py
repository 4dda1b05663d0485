"""``wasmsbx audit`` through the real entry point: report, options, exit codes, bad input."""

from __future__ import annotations

import pytest

from .conftest import EXAMPLES, GUESTS

HELLO = EXAMPLES / "wasi" / "hello.wasm"  # WSX003 (medium), WSX004 + WSX201 (low)
IMPORTS_ENV = GUESTS / "imports_env.wat"  # WSX001 (high)
ADD = EXAMPLES / "add.wat"  # no findings


def test_rich_report_shows_every_part(cli):
    result = cli("audit", HELLO)
    assert result.code == 0, result
    out = result.stdout
    for text in (
        "sha256",
        "f12612235e8fa7df2e68ca72b1a47831846eb1543436db96aa7394eb6914abe9",
        "39,032 bytes",
        "defaults (no sandbox.toml)",
        "not recorded (no producers section)",
        "imports by capability",
        "filesystem",
        "denied: no directory granted",
        "path_open",
        "open or create a file",
        "process exit & signals",
        "end the program with an exit code",
        "exports",
        "_start",
        "() -> ()",
        "memory 0",
        "128 KiB initial, no maximum",
        "funcref, 6 initial, max 6",
        "2 segments",
        "findings (1 medium, 2 low)",
        "WSX003",
        "WSX004",
        "WSX201",
        "risk score 5/100 (minimal)",
        "min(100, 5 [WSX201]) = 5",
    ):
        assert text in out, text
    assert result.stderr == ""
    assert "\x1b[" not in out  # NO_COLOR


def test_report_for_a_module_without_imports(cli):
    out = cli("audit", ADD).stdout
    assert "imports: none" in out and "findings: none" in out
    assert "risk score 0/100 (minimal)" in out and "no finding adds points: 0" in out
    assert "hypot" in out and "(f64, f64) -> f64" in out


def test_report_reads_the_policy(cli, isolated):
    (isolated / "data").mkdir()
    (isolated / "sandbox.toml").write_text('[filesystem]\nread_only = ["data:/data"]\n')
    out = cli("audit", HELLO).stdout
    assert f"policy     {isolated / 'sandbox.toml'}" in out
    assert "granted: ro" in out and "WSX111" in out and "WSX003" not in out


@pytest.mark.parametrize(
    "module, fail_on, code",
    [
        (HELLO, "medium", 121),
        (HELLO, "low", 121),
        (HELLO, "info", 121),
        (HELLO, "high", 0),
        (IMPORTS_ENV, "high", 121),
        (ADD, "info", 0),
    ],
)
def test_fail_on_exit_codes(cli, module, fail_on, code):
    result = cli("audit", module, "--fail-on", fail_on)
    assert result.code == code, result
    assert "findings" in result.stdout  # the report is printed either way
    if code:
        assert f"at or above {fail_on} (--fail-on {fail_on})" in result.stderr
    else:
        assert result.stderr == ""


def test_fail_on_with_machine_output_keeps_stdout_clean(cli):
    result = cli("audit", HELLO, "--json", "--fail-on", "medium")
    assert result.code == 121
    assert result.json()["summary"]["worst"] == "medium"
    result = cli("audit", IMPORTS_ENV, "--sarif", "--fail-on", "high")
    assert result.code == 121 and result.json()["version"] == "2.1.0"


def test_fail_on_rejects_unknown_severity(cli):
    result = cli("audit", HELLO, "--fail-on", "critical")
    assert result.code == 2
    assert "critical" in result.stderr and "Traceback" not in result.stderr


def test_output_formats_are_exclusive(cli):
    result = cli("audit", HELLO, "--json", "--sarif")
    assert result.code == 2
    assert "error: --json and --sarif cannot be combined" in result.stderr


def test_output_file_needs_a_machine_format(cli):
    result = cli("audit", HELLO, "-o", "x.txt")
    assert result.code == 2 and "--output needs" in result.stderr


@pytest.mark.parametrize("flag", ["--json", "--sarif", "--suggest-policy"])
def test_output_file(cli, isolated, flag):
    result = cli("audit", HELLO, flag, "-o", "out.file")
    assert result.code == 0, result
    assert result.stdout == "" and "wrote out.file" in result.stderr
    text = (isolated / "out.file").read_text()
    assert text == cli("audit", HELLO, flag).stdout
    assert not [p for p in isolated.iterdir() if p.name.startswith(".wasmsbx-")]


def test_output_file_in_a_missing_directory(cli):
    result = cli("audit", HELLO, "--json", "-o", "no/such/dir/a.json")
    assert result.code == 105
    assert result.stderr.startswith("error: no/such/dir/a.json: cannot write")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"\0asm\x01\0\0\0\x01\x05\x01\x60\x00", "not a valid WebAssembly module"),
        (b"\0asm\x0d\x00\x01\x00\x01\xff\x01", "malformed component"),
        (b"(module (func", "invalid WebAssembly text"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe", "not a WebAssembly module"),
    ],
)
def test_malformed_modules_are_one_clear_error(cli, isolated, data, message):
    (isolated / "bad.wasm").write_bytes(data)
    result = cli("audit", "bad.wasm")
    assert result.code == 102, result
    assert result.stderr.startswith("error: bad.wasm:") and message in result.stderr
    assert len(result.stderr.splitlines()) <= 2  # the error, and a hint where there is one
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_malformed_module_with_json_reports_the_error_as_json(cli, isolated):
    (isolated / "bad.wasm").write_bytes(b"\0asm\x01\0\0\0\x05")
    result = cli("audit", "bad.wasm", "--json")
    assert result.code == 102
    assert result.json()["error"]["kind"] == "module"


def test_missing_module_and_bad_policy(cli, isolated):
    missing = cli("audit", "nope.wasm")
    assert missing.code == 105 and "no such file" in missing.stderr
    (isolated / "p.toml").write_text("[limits]\nmemroy = 1\n")
    bad = cli("audit", ADD, "--policy", "p.toml")
    assert bad.code == 101 and "did you mean `memory`?" in bad.stderr


def test_module_controlled_names_cannot_drive_the_terminal(cli, isolated):
    wat = (
        '(module (import "\\1b[2Jenv" "f" (func))'
        ' (func (export "\\1b]0;pwned\\07\\1b[31mred") nop)'
        ' (func (export "[bold]x[/bold]") nop))'
    )
    (isolated / "evil.wat").write_text(wat)
    result = cli("audit", "evil.wat")
    assert result.code == 0, result
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b]0;pwned\\x07\\x1b[31mred" in result.stdout
    assert "[bold]x[/bold]" in result.stdout
    data = cli("audit", "evil.wat", "--json").json()
    assert data["exports"][0]["name"] == "\x1b]0;pwned\x07\x1b[31mred"


def test_help_lists_audit(cli):
    top = cli("--help")
    assert "audit" in top.stdout
    result = cli("audit", "--help")
    assert result.code == 0
    for flag in ("--policy", "--json", "--sarif", "--suggest-policy", "--output", "--fail-on"):
        assert flag in result.stdout
