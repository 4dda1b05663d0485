"""Red team round 52: what a module, a file name or a working folder can make the command
line print or wait for.

Names from an untrusted module (exports, the name section's function names) and file
names reached the terminal raw: an OSC sequence set its title, a CR/LF forged an
``error:`` line, a name of a megabyte made a megabyte of hint.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

# Control characters: what must not reach the terminal from an error line (the newline
# that ends each line aside).
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")

# An OSC title, a CR/LF and a forged error line, as the wat escapes of a name.
FORGED = r"\1b]0;title\07\0d\0aerror: fake"


def _clean(text: str) -> bool:
    return not CONTROL.search(text) and "\nerror: fake" not in text


@pytest.mark.parametrize("func", [[], ["nosuch"]], ids=["command", "unknown-function"])
def test_export_names_are_escaped_in_the_hint(cli, isolated, func):
    (isolated / "esc.wat").write_text(
        f'(module (func (export "{FORGED}") (result i32) i32.const 7))'
    )
    result = cli("run", "esc.wat", *func)
    assert result.code == 2, result
    assert _clean(result.stderr), result
    assert "\\x1b]0;title\\x07\\r\\nerror: fake" in result.stderr


def test_a_long_export_name_is_cut_in_the_hint(cli, isolated):
    (isolated / "long.wat").write_text(f'(module (func (export "{"x" * 100_000}")))')
    result = cli("run", "long.wat", "nosuch")
    assert result.code == 2, result
    assert len(result.stderr) < 2000 and "(100,000 characters)" in result.stderr


def test_name_section_names_are_escaped_in_the_backtrace(cli, isolated, backend):
    (isolated / "t.wat").write_text(f'(module (func $"{FORGED}" (export "t") unreachable))')
    result = cli("run", "t.wat", "t", "--backend", backend)
    assert result.code == 103, result
    assert _clean(result.stderr), result


def test_json_carries_the_export_name_and_an_escaped_backtrace(cli, isolated, backend):
    # (as the README says: a message's names unchanged, JSON escaping them itself; a
    # backtrace's frames are text lines, escaped as printed)
    import json

    (isolated / "t.wat").write_text(f'(module (func $"{FORGED}" (export "t{FORGED}") unreachable))')
    name = "t\x1b]0;title\x07\r\nerror: fake"
    result = cli("run", "t.wat", name, "--json", "--backend", backend)
    assert result.code == 103, result
    error = json.loads(result.stdout)["error"]
    assert f"{name} trapped" in error["message"]
    frames = error["backtrace"]
    assert frames and all(_clean(frame) for frame in frames), frames
    assert frames[0].startswith("\\x1b]0;title\\x07\\r\\nerror: fake"), frames
    assert _clean(result.stderr), result


def test_a_file_name_is_escaped_in_errors_and_the_cache_listing(cli, isolated):
    name = "\x1b]0;pwn\x07\x1b[31mred.wat"
    (isolated / name).write_text('(module (func (export "f")))')
    result = cli("run", name)
    assert result.code == 2 and _clean(result.stderr), result
    assert "\\x1b]0;pwn\\x07\\x1b[31mred.wat" in result.stderr
    built = cli("compile", name)
    assert built.code == 0 and _clean(built.stdout + built.stderr), built
    listing = cli("cache", "list")
    assert listing.code == 0 and _clean(listing.stdout), listing
    assert "\\x1b]0;pwn\\x07\\x1b[31mred.wat" in listing.stdout


def test_error_lines_are_escaped_where_they_are_printed(capsys):
    """The last line of defence: whatever a message quotes, one inert line."""
    from wasmsbx.cli import output

    output.error("a\x1b[2Jb\r\nerror: c", "d\x07e")
    output.warning("f\x9bg")
    err = capsys.readouterr().err
    assert err == "error: a\\x1b[2Jb\\r\\nerror: c\nhint: d\\x07e\nwarning: f\\x9bg\n"


# ------------------------------------------------------------------ FIFOs as inputs

# Where a FIFO nobody writes to was given: each waited in open(2) for ever, before any
# deadline (--timeout) was armed. (What each command says, and its exit code.)
FIFO_INPUTS = {
    "module": (["run", "{fifo}", "add", "1", "2", "--timeout", "1s"], 105),
    "policy": (["run", "{add}", "add", "1", "2", "--policy", "{fifo}"], 101),
    "artifact": (["run", "{add}", "add", "1", "2", "--artifact", "{fifo}"], 0),
    "baseline": (["bench", "{add}", "add", "1", "2", "-n", "1", "--baseline", "{fifo}"], 105),
    "cache-clear": (["cache", "clear", "-m", "{fifo}"], 105),
    "audit": (["audit", "{fifo}"], 105),
}


@pytest.mark.parametrize("where", list(FIFO_INPUTS))
def test_a_fifo_without_a_writer_is_refused_at_once(cli, isolated, add, where):
    os.mkfifo(isolated / "in.wasm")
    words, code = FIFO_INPUTS[where]
    args = [w.format(fifo=isolated / "in.wasm", add=add) for w in words]
    result = cli(*args, timeout=30)  # (was: waited for ever)
    assert result.code == code, result
    assert "named pipe (FIFO) that nothing was written to" in result.stderr, result


def _bash(command: str, cwd) -> subprocess.CompletedProcess:
    """``command`` in bash, with ``W`` for the CLI: for bash's own process substitution."""
    script = f'W() {{ "{sys.executable}" -m wasmsbx "$@"; }}; {command}'
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(not shutil.which("bash"), reason="no bash")
def test_a_pipe_with_a_writer_is_read_as_before(isolated, add):
    """`run <(cat m.wasm)`: a pipe whose writer writes it at once, or after a while. Was
    an "empty file" even before this round: the component check read the pipe's bytes."""
    for writer in ("cat add.wat", "sleep 1; cat add.wat"):
        proc = _bash(f"W run <({writer}) add 1 2", isolated)
        assert (proc.returncode, proc.stdout) == (0, "3\n"), proc
    policy = _bash("W run add.wat add 1 2 --policy <(printf '[limits]\\nfuel = 1\\n')", isolated)
    assert policy.returncode == 111, policy
    empty = _bash("W run <(true) add 1 2", isolated)
    assert empty.returncode == 105 and "nothing was written to" in empty.stderr, empty


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "dangling"])
def test_a_discovered_policy_that_is_no_file_is_refused(cli, isolated, add, kind):
    """Was: silently ignored, the defaults in force instead of what the project meant."""
    planted = isolated / "sandbox.toml"
    if kind == "directory":
        planted.mkdir()
    elif kind == "fifo":
        os.mkfifo(planted)
    else:
        planted.symlink_to("/dev/zero" if kind == "device" else isolated / "nowhere")
    result = cli("run", add, "add", "1", "2", timeout=30)
    assert result.code == 101, result
    assert "sandbox.toml: found in the working folder" in result.stderr, result
    assert "--policy FILE" in result.stderr
    named = cli("run", add, "add", "1", "2", "--policy", "/dev/null", timeout=30)
    assert named.code == 0 and named.stdout == "3\n", named


# ------------------------------------------------------------------ COLUMNS


@pytest.mark.parametrize("columns", ["0", "00"])
def test_a_terminal_width_of_zero_is_the_default(cli, add, columns):
    """rich drew tables at COLUMNS=0 as nothing at all: empty output, exit 0."""
    audit = cli("audit", add, env={"COLUMNS": columns})
    assert audit.code == 0 and "sha256" in audit.stdout and "add" in audit.stdout, audit
    listing = cli("backends", env={"COLUMNS": columns})
    assert listing.code == 0 and "wasmtime" in listing.stdout, listing


# ------------------------------------------------------------------ variable names

BAD_ENV_POLICIES = {
    "nul-in-name": '[env]\nset = {"A\\u0000B" = "1"}\n',  # the guest saw A=1
    "newline-in-name": '[env]\nset = {"A\\nB" = "1"}\n',
    "escape-in-name": '[env]\nset = {"A\\u001bB" = "1"}\n',
    "nul-in-value": '[env]\nset = {"A" = "1\\u0000x"}\n',
    "newline-in-inherit": '[env]\ninherit = ["A\\nB"]\n',
}


@pytest.mark.parametrize("toml", list(BAD_ENV_POLICIES.values()), ids=list(BAD_ENV_POLICIES))
def test_variable_names_with_control_characters_are_policy_errors(cli, isolated, add, toml):
    (isolated / "p.toml").write_text(toml)
    result = cli("run", add, "add", "1", "2", "--policy", "p.toml")
    assert result.code == 101, result
    assert "env." in result.stderr and _clean(result.stderr), result


@pytest.mark.parametrize("spec", ["A\nB=1", "A\x1bB=1", "A\tB"])
def test_env_flag_names_with_control_characters_are_refused(cli, add, spec):
    result = cli("run", add, "add", "1", "2", "--env", spec)
    assert result.code == 101, result  # (as --env =1 and a bad --dir)
    assert "invalid variable name" in result.stderr and _clean(result.stderr), result


def test_values_may_hold_newlines(cli, add):
    result = cli("run", add, "add", "1", "2", "--env", "A=line 1\nline 2")
    assert result.code == 0 and result.stdout == "3\n", result


def test_a_file_name_is_escaped_in_the_bench_report(cli, isolated, add):
    name = "e\x1b]0;t\x07.wat"
    (isolated / name).write_text(add.read_text())
    result = cli("bench", name, "add", "1", "2", "-n", "2")
    assert result.code == 0, result
    assert _clean(result.stdout) and "e\\x1b]0;t\\x07.wat" in result.stdout, result


def test_a_fifo_whose_writer_connects_after_the_open_is_read(tmp_path):
    """The open no longer waits for a writer; one that connects a moment later (a writer
    waiting in its own open, let go by ours) is waited for (inputs.WRITER_GRACE)."""
    import threading
    import time

    from wasmsbx import inputs

    fifo = tmp_path / "m.fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        time.sleep(0.3)
        with open(fifo, "wb") as f:
            f.write(b"(module)")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert inputs.read_capped(fifo, 1 << 20) == b"(module)"
    thread.join(5)
