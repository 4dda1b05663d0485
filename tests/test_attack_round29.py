"""Red team round 29: where the command line's own output and threads fail.

A stdout that cannot be written (a full disk, ``/dev/full``) or whose reader is gone, a
guest output callback that runs out of memory, an ``--audit-log`` named pipe nobody
reads, a process that cannot start the deadline thread: each ends with a documented exit
code and one error line, never a traceback, an abort or a hang.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from tests.test_deadlines import STOPPED_WITHIN

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
FULL = "/dev/full"


def run_to(stdout, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wasmsbx", *map(str, args)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=STOPPED_WITHIN + 60,
    )


@pytest.mark.skipif(not os.path.exists(FULL), reason="no /dev/full")
@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_results_that_cannot_be_written_are_exit_105(add, json_flag):
    """Was exit 100 ("internal error: OSError") in text, a traceback and 1 in --json."""
    with open(FULL, "wb") as full:
        proc = run_to(full, "run", add, "add", "1", "2", *json_flag)
    err = proc.stderr.decode()
    assert proc.returncode == 105, err
    assert err.startswith("error: cannot write the results to stdout: No space left")
    assert "Traceback" not in err


@pytest.mark.skipif(not os.path.exists(FULL), reason="no /dev/full")
@pytest.mark.parametrize("argv", [["--version"], ["backends"], ["audit", "MODULE"]])
def test_any_command_whose_output_cannot_be_written_is_exit_105(add, argv):
    """typer's echo, rich's tables: an OSError out of them was "internal error" (100) or
    a traceback (--version)."""
    argv = [str(add) if a == "MODULE" else a for a in argv]
    with open(FULL, "wb") as full:
        proc = run_to(full, *argv)
    assert proc.returncode == 105, proc.stderr
    assert proc.stderr.decode().startswith("error: cannot write the results to stdout")


@pytest.mark.skipif(not os.path.exists(FULL), reason="no /dev/full")
def test_a_failed_run_keeps_its_own_code_when_stdout_is_full(isolated):
    spin = isolated / "spin.wat"
    spin.write_text('(module (func (export "spin") (loop (br 0))))')
    with open(FULL, "wb") as full:
        proc = run_to(full, "run", spin, "spin", "--timeout", "300ms", "--json")
    assert proc.returncode == 112, proc.stderr
    assert b"Traceback" not in proc.stderr


def test_a_reader_that_went_away_is_not_an_error(add):
    """`| head`: the results have nowhere to go, and that is the reader's choice."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = run_to(write, "run", add, "add", "1", "2", "--json")
    finally:
        os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""


def test_an_audit_log_fifo_nobody_reads_is_refused_at_once(add, isolated):
    """It blocked the run before any deadline was armed, past --timeout, forever."""
    fifo = isolated / "log"
    os.mkfifo(fifo)
    proc = run_to(subprocess.PIPE, "run", add, "add", "1", "2", "--audit-log", fifo)
    assert proc.returncode == 105, proc.stderr
    assert b"a named pipe that no process is reading" in proc.stderr


def test_no_deadline_thread_is_exit_118(add):
    """Out of threads before anything runs (ulimit -v/-s, -u): a traceback before."""
    code = (
        "import _thread, sys\n"
        'def refuse(*a): raise RuntimeError("can\'t start new thread")\n'
        "_thread.start_new_thread = refuse\n"
        "from wasmsbx.cli import main\n"
        f"sys.exit(main(['run', {str(add)!r}, 'add', '1', '2'], guard=True))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 118, proc
    assert proc.stderr.startswith("error: cannot start the deadline thread")
    assert "Traceback" not in proc.stderr


def test_a_guest_output_callback_never_raises():
    """wasmtime-py turns an exception out of the callback into a print() on stdout and a
    garbage byte count, and tokio aborts the process (exit 134 when a --json capture
    ran out of memory under ulimit -v)."""
    pytest.importorskip("wasmtime")
    from wasmsbx.backends.wasmtime.backend import _Budget, _Output

    def failing(exc):
        def write(data):
            raise exc

        return write

    for exc, code in (
        (MemoryError(), -errno.ENOMEM),
        (OSError(errno.ENOSPC, "full"), -errno.ENOSPC),  # (told so since red team 137)
        (OSError(errno.EIO, "broken"), -errno.EPIPE),
        (KeyboardInterrupt(), -errno.EPIPE),
        (RuntimeError("anything"), -errno.EPIPE),
    ):
        sink = _Output("capture", _Budget(None, None), None)
        sink.write = failing(exc)
        assert sink(b"data") == code, exc


def run_limited(path, *args, size: int = 1024, stdin=None) -> subprocess.CompletedProcess:
    """The CLI with stdout to ``path`` and a file size limit of ``size`` bytes
    (``ulimit -f``; Python ignores SIGXFSZ, so a write past it fails with EFBIG)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    with open(path, "wb") as out:
        return subprocess.run(
            [sys.executable, "-m", "wasmsbx", *map(str, args)],
            stdout=out, stderr=subprocess.PIPE, stdin=stdin, preexec_fn=limit,
            timeout=STOPPED_WITHIN + 60,
        )  # fmt: skip


def test_a_report_cut_short_by_a_file_size_limit_is_exit_105(isolated):
    """CPython's buffered writer took the short write of a large report for the whole:
    a 338 KB audit report was cut to 1 KB, exit 0 (red team round 69)."""
    many = "".join(f'(func (export "f{i}") (result i32) i32.const {i})' for i in range(400))
    module = isolated / "many.wat"
    module.write_text(f"(module {many})")
    whole = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "audit", module, "--json"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert whole.returncode == 0 and len(whole.stdout) > 8192
    proc = run_limited(isolated / "report.json", "audit", module, "--json")
    err = proc.stderr.decode()
    assert proc.returncode == 105, err
    assert err.startswith("error: cannot write the results to stdout: File too large")
    assert "ulimit -f" in err and "Traceback" not in err


def test_results_past_a_file_size_limit_are_exit_105_not_an_internal_error(add, isolated):
    """An EFBIG on stdout was "internal error: OSError: File too large", exit 100."""
    items = b"[1, 2]\n" * 2000
    for jobs in ("1", "2"):
        source = isolated / "items.jsonl"
        source.write_bytes(items)
        proc = run_limited(isolated / "out.jsonl", "run", add, "add", "--batch", source, "-j", jobs)
        err = proc.stderr.decode()
        assert proc.returncode == 105, err
        assert "File too large" in err and "internal error" not in err


def test_a_non_blocking_stdout_pipe_gets_the_whole_report(isolated):
    """A reader that leaves a non-blocking pipe full for a while: the long text's write
    failed with EAGAIN, exit 100 and a report cut short (red team round 70); it waits
    for the reader, as a blocking write would."""
    import fcntl
    import time

    many = "".join(f'(func (export "f{i}") (result i32) i32.const {i})' for i in range(4000))
    module = isolated / "many.wat"
    module.write_text(f"(module {many})")
    read_end, write_end = os.pipe()
    flags = fcntl.fcntl(write_end, fcntl.F_GETFL)
    fcntl.fcntl(write_end, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    proc = subprocess.Popen(
        [sys.executable, "-m", "wasmsbx", "audit", str(module), "--json"],
        stdout=write_end, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(write_end)
    time.sleep(1.0)  # (the pipe fills meanwhile; the wait is the test, not a bound)
    data = b""
    while True:
        chunk = os.read(read_end, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    import json

    assert len(data) > 1 << 16  # (more than a pipe holds)
    assert json.loads(data)["schema"].startswith("wasmsbx.audit")
