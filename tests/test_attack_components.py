"""Components under hostile stdio (red-team): the component runtime kept its own copy of
the WASI setup, without the core's watched opening of stdin. With `stdio.stdin` naming a
FIFO nobody writes (a discovered sandbox.toml can name one inside its folder), wasmtime's
open waits for a writer: on 398d538 `wasmsbx run cmd.wasm` hung past a 2 s timeout until
it was killed, where a core module stops at the deadline with exit 112."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from .component_guests import c_command


@pytest.fixture(scope="module")
def command():
    return c_command()


@pytest.mark.slow
def test_a_stdin_fifo_without_a_writer_ends_at_the_deadline(cli, isolated, command):
    shutil.copy(command, isolated / "cmd.wasm")
    # (compiled first, into the cache: the 2 s deadline covers compiling, which a loaded
    # machine took most of, and the run ended "still compiling" instead; CI, cic103)
    assert cli("compile", "cmd.wasm", cwd=isolated).code == 0
    os.mkfifo(isolated / "in.fifo")
    (isolated / "sandbox.toml").write_text('[stdio]\nstdin = "in.fifo"\n[limits]\ntimeout = "2s"\n')
    started = time.monotonic()
    result = cli("run", "cmd.wasm", "--", "stdin", cwd=isolated, timeout=60)
    assert result.code == 112, result
    assert "stdin" in result.stderr, result
    assert time.monotonic() - started < 45  # stopped at all (generous: a loaded machine)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_an_unreadable_stdin_is_an_io_error(cli, isolated, command, make):
    shutil.copy(command, isolated / "cmd.wasm")
    if make == "directory":
        (isolated / "in").mkdir()
    (isolated / "sandbox.toml").write_text('[stdio]\nstdin = "in"\n')
    result = cli("run", "cmd.wasm", "--", "stdin", cwd=isolated)
    assert result.code == 105, result


def test_a_component_cannot_write_its_output_over_its_module(cli, isolated, command):
    """The core checks a policy's stdio paths before anything runs; components did not:
    `stdout = "cmd.wasm"` in a discovered policy replaced the component with its output."""
    shutil.copy(command, isolated / "cmd.wasm")
    before = (isolated / "cmd.wasm").read_bytes()
    (isolated / "sandbox.toml").write_text('[stdio]\nstdout = "cmd.wasm"\n')
    result = cli("run", "cmd.wasm", "--", "x", cwd=isolated)
    assert result.code == 105, result
    assert (isolated / "cmd.wasm").read_bytes() == before


def test_a_components_stdout_cannot_replace_the_secret_key(cli, isolated, command):
    trust = isolated.parent / "trust"
    assert cli("compile", command).code == 0  # makes the secret key
    before = (trust / "secret.key").read_bytes()
    (isolated / "mine.toml").write_text(f'[stdio]\nstdout = "{trust / "secret.key"}"\n')
    result = cli("run", command, "--policy", isolated / "mine.toml", "--", "x")
    assert result.code == 105 and "trust folder" in result.stderr, result
    assert (trust / "secret.key").read_bytes() == before
