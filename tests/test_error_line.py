"""The command line's error line starts a line of its own after a guest's output that
ended mid-line (it landed at the end of the guest's "no newline": ``oopserror: ...``),
where that output shares a file with stderr; nothing is added where it does not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "%s")
  (data (i32.const 0) "\\10\\00\\00\\00\\%02x\\00\\00\\00")
  (func (export "_start")
    (drop (call $w (i32.const %d) (i32.const 0) (i32.const 1) (i32.const 8)))
    unreachable))
"""


def _guest(tmp_path, fd: int, text: bytes) -> str:
    path = tmp_path / "g.wat"
    path.write_text(WAT % ("".join(f"\\{b:02x}" for b in text), len(text), fd))
    return str(path)


def _run(guest: str, backend: str, tmp_path, together: bool) -> tuple:
    """(exit code, stdout, stderr): stderr into stdout's pipe (``2>&1``) if together."""
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "wasmsbx", "run", guest, "--backend", backend],
            stdout=out,
            stderr=subprocess.STDOUT if together else err,
            env=dict(os.environ),
            timeout=120,
        )
    return proc.returncode, (tmp_path / "out").read_bytes(), (tmp_path / "err").read_bytes()


@pytest.mark.parametrize("fd", [1, 2], ids=["stdout", "stderr"])
def test_an_error_after_output_without_a_newline_starts_its_own_line(backend, tmp_path, fd):
    code, out, _ = _run(_guest(tmp_path, fd, b"no newline"), backend, tmp_path, together=True)
    assert code == 103, out
    assert out.startswith(b"no newline\nerror: "), out
    assert b"no newline\n\n" not in out


def test_output_ending_its_line_gets_no_blank_line(backend, tmp_path):
    code, _, err = _run(_guest(tmp_path, 2, b"a line\n"), backend, tmp_path, together=False)
    assert code == 103, err
    assert err.startswith(b"a line\nerror: "), err


def test_stdout_apart_from_stderr_is_left_as_the_guest_wrote_it(backend, tmp_path):
    code, out, err = _run(_guest(tmp_path, 1, b"no newline"), backend, tmp_path, together=False)
    assert code == 103, err
    assert out == b"no newline"
    assert err.startswith(b"error: "), err


VAL = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "no newline")
  (func (export "val") (param i32 i32) (result i32)
    (i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) (i32.const 10))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.add (local.get 0) (local.get 1))))
"""


def _run_val(tmp_path, backend: str, args: list, together: bool) -> tuple:
    """``run val.wat val ARGS`` (its guest writes "no newline" to stdout first)."""
    guest = tmp_path / "val.wat"
    guest.write_text(VAL)
    (tmp_path / "in.jsonl").write_text("[1,2]\n[3,4]\n")
    argv = [sys.executable, "-m", "wasmsbx", "run", str(guest), "val", *args]
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        proc = subprocess.run(
            [*argv, "--backend", backend],
            stdout=out,
            stderr=subprocess.STDOUT if together else err,
            cwd=tmp_path,
            timeout=120,
        )
    return proc.returncode, (tmp_path / "out").read_bytes(), (tmp_path / "err").read_bytes()


def test_a_line_wasmsbx_ended_itself_gets_no_blank_line_after_it(backend, tmp_path):
    """The result (and a batch's rows) ended the guest's line: the stats table and the
    batch summary after them on stderr got a blank line before them (red team 122)."""
    code, out, _ = _run_val(tmp_path, backend, ["1", "2", "--stats"], together=True)
    assert code == 0 and out.startswith(b"no newline3\n") and b"\n\n" not in out, out
    code, out, _ = _run_val(tmp_path, backend, ["--batch", "in.jsonl"], together=True)
    assert code == 0 and b"\n\n" not in out and out.count(b"\nbatch: 2 items") == 1, out


def test_a_batch_summary_after_guest_output_left_mid_line_on_stderr(backend, tmp_path):
    """In a batch, a guest's stdout goes to stderr (the rows own stdout): its summary
    line starts a line of its own after the guest's "no newline"."""
    code, out, err = _run_val(tmp_path, backend, ["--batch", "in.jsonl"], together=False)
    assert code == 0, err
    assert err.startswith(b"no newlineno newline\nbatch: 2 items"), err
    assert out.count(b'"ok":true') == 2, out
