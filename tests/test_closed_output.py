"""Guest output into a closed pipe or a closed stdout exits quietly (issue #13, item 10).

Like the wasmtime CLI: once our stdout is a closed pipe (``| head -1``) the guest's
writes fail inside the guest (EPIPE) and its own exit status stands; a closed stdout
(``>&-``) is /dev/null. Never a traceback, a tokio panic or an abort (exit 134/100).
These need a real process: a pipe the reader closes, a descriptor closed at start.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import EXAMPLES

# The host side (stdio, WASI exit): the same for wasmer's three compilers.
pytestmark = pytest.mark.any_compiler

HELLO = EXAMPLES / "wasi" / "hello.wasm"
# A guest that writes to stdout until a write fails, then exits with 7 (or 0 if never).
FLOOD = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 64))
    (block $fail
      (loop $again
        (br_if $fail (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br $again)))
    (call $exit (i32.const 7))))
"""


def _wasmsbx(*args) -> list:
    return [sys.executable, "-m", "wasmsbx", *map(str, args)]


def _clean(stderr: bytes) -> None:
    text = stderr.decode("utf-8", "replace")
    assert "Traceback" not in text and "panicked" not in text and "internal error" not in text


@pytest.fixture
def flood(tmp_path):
    path = tmp_path / "flood.wat"
    path.write_text(FLOOD)
    return path


def test_guest_flood_into_a_closed_pipe(backend, flood):
    """The guest's write fails once the reader is gone; it exits 7 by its own choice."""
    proc = subprocess.Popen(
        _wasmsbx("run", flood, "--backend", backend),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 7, stderr
    _clean(stderr)


def test_copy_into_head(backend, tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"line of text\n" * 300_000)
    script = f"{' '.join(map(str, _wasmsbx('run', HELLO, '--backend', backend)))} -- --stdin"
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {script} < {big} | head -1"],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith(b"hello from"), proc
    _clean(proc.stderr)


@pytest.mark.parametrize("closed", ["1", "2", "0"])
def test_closed_descriptors(backend, closed):
    proc = subprocess.run(
        [
            "bash",
            "-c",
            " ".join(map(str, _wasmsbx("run", HELLO, "--backend", backend))) + f" {closed}>&-",
        ],
        capture_output=closed != "1",
        timeout=120,
    )
    assert proc.returncode == 0
    if proc.stderr:
        _clean(proc.stderr)


def test_call_result_into_a_closed_stdout():
    proc = subprocess.run(
        [
            "bash",
            "-c",
            " ".join(map(str, _wasmsbx("run", EXAMPLES / "add.wat", "add", 1, 2))) + " >&-",
        ],
        stderr=subprocess.PIPE,
        timeout=120,
    )
    assert proc.returncode == 0
    _clean(proc.stderr)


def test_closed_stdout_does_not_receive_files(tmp_path):
    """With fd 1 closed, nothing wasmsbx opens may take its number."""
    env = dict(os.environ, WASMSBX_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(
        ["bash", "-c", " ".join(map(str, _wasmsbx("run", HELLO, "--", "x"))) + " >&-"],
        stderr=subprocess.PIPE,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1  # hello: x does not exist; said on stderr
    assert b"x: " in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [["backends"], ["backends", "--explain"], ["audit", EXAMPLES / "add.wat"], ["cache", "list"]],
)
def test_tables_into_a_closed_pipe_exit_as_they_would(argv, tmp_path):
    # rich ends the process with exit 1 when its stdout's reader is gone: `wasmsbx
    # backends | head -1` failed where the README says a reader that went away is not
    # an error (exit 0, nothing on stderr)
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "WASMSBX_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        _wasmsbx(*argv), stdout=write, stderr=subprocess.PIPE, timeout=120, env=env
    )
    os.close(write)
    assert proc.returncode == 0, proc
    _clean(proc.stderr)
    assert b"error" not in proc.stderr, proc
