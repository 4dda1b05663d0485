"""The deadline holds whatever the guest does (issue 13, attacks 2-5).

Blocked in a WASI call (a sleep, a raw poll_oneoff, a stdin pipe that never closes, a FIFO
inside a grant), busy in wasm, or compiling: ``wasmsbx run`` ends with exit 112 (117 for
a compile) near the deadline, and Ctrl-C or SIGTERM ends it with 130. Every bound on
elapsed time here is a generous upper bound ("it stopped at all"), never a tight one:
the guests would otherwise run for an hour.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import GUESTS, require_capability

FSPROBE = GUESTS / "fsprobe.wasm"
HOUR_MS = "3600000"
STOPPED_WITHIN = 60.0  # seconds: a generous "it stopped at all" for a 1 s timeout

# _start: poll_oneoff with one relative clock subscription of an hour (realtime clock).
POLL_WAT = """
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))                  ;; tag: clock
    (i32.store (i32.const 16) (i32.const 0))                  ;; clock id: realtime
    (i64.store (i32.const 24) (i64.const 3600000000000))      ;; timeout: 1 hour (ns)
    (i64.store (i32.const 32) (i64.const 0))                  ;; precision
    (i32.store16 (i32.const 40) (i32.const 0))                ;; flags: relative
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))
"""


def popen(*args, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wasmsbx", *[str(a) for a in args]],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen, started: float) -> tuple:
    """(exit code, stderr, seconds since ``started``); kills a process that hangs."""
    try:
        _, err = proc.communicate(timeout=STOPPED_WITHIN + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        # A leftover holding the pipes (a worker that outlived wasmsbx) must not hang us.
        err = b"(killed: it did not stop)"
        proc.wait()
    return proc.returncode, err.decode("utf-8", "replace"), time.monotonic() - started


def warm(backend: str) -> None:
    """Compile fsprobe into the cache first, so a 1 s timeout is spent running it (the
    timeout covers compiling, and wasmer:llvm takes longer than that to compile it)."""
    proc = popen("run", FSPROBE, "--timeout", "10m", "--backend", backend, "--", "sleep", "0")
    assert finish(proc, time.monotonic())[0] == 0


def run_blocked(*args, stdin=subprocess.DEVNULL) -> tuple:
    if FSPROBE in args:
        warm(args[args.index("--backend") + 1])
    started = time.monotonic()
    return finish(popen(*args, stdin=stdin), started)


@pytest.mark.any_compiler  # blocked in a host call: not the compiler's code
def test_sleep_in_a_wasi_call_times_out(backend):
    code, err, took = run_blocked(
        "run", FSPROBE, "--timeout", "1s", "--backend", backend, "--", "sleep", HOUR_MS
    )
    assert code == 112, err
    assert "timeout" in err
    assert took < STOPPED_WITHIN


@pytest.mark.any_compiler  # blocked in a host call: not the compiler's code
def test_raw_poll_oneoff_times_out(backend, tmp_path):
    module = tmp_path / "poll.wat"
    module.write_text(POLL_WAT)
    code, err, took = run_blocked("run", module, "--timeout", "1s", "--backend", backend)
    assert code == 112, err
    assert took < STOPPED_WITHIN


@pytest.mark.any_compiler  # blocked in a host call: not the compiler's code
def test_stdin_pipe_that_never_closes_times_out(backend):
    read, write = os.pipe()  # the write end stays open (and silent) until the end
    try:
        code, err, took = run_blocked(
            "run", FSPROBE, "--timeout", "1s", "--backend", backend, "--", "cat-stdin", stdin=read
        )
    finally:
        os.close(read)
        os.close(write)
    assert code == 112, err
    assert took < STOPPED_WITHIN


@pytest.mark.any_compiler  # blocked in a host call: not the compiler's code
def test_fifo_inside_a_grant_times_out(backend, tmp_path):
    require_capability(backend, "fs-confined")  # grants are refused where not confinable
    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "fifo")  # nobody ever opens the other end
    code, err, took = run_blocked(
        "run", FSPROBE, "--dir-ro", f"{data}:/d", "--timeout", "1s", "--backend", backend,
        "--", "read", "/d/fifo",
    )  # fmt: skip
    assert code == 112, err
    assert took < STOPPED_WITHIN


def test_python_api_sleep_is_bounded_by_the_caller_process(backend, tmp_path):
    """From Python (no hard stop), a busy guest is still interrupted in process."""
    from wasmsbx import Sandbox, errors, policy

    pol = policy.discover()
    policy.override(pol, "limits.timeout", "300ms")
    box = Sandbox(GUESTS / "spin.wat", pol, backend=backend)
    with pytest.raises(errors.TimeoutExceeded):
        box.call("spin")


# ---------------------------------------------------------------------------- signals


def handler_installed(pid: int, signum: int) -> bool:
    """True once the process catches ``signum`` (its Python handler is in place)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    except OSError:
        pass
    return False


def interrupt(proc: subprocess.Popen, signum: int, settle: float = 1.0) -> tuple:
    """Send ``signum`` once the process handles it and the guest had ``settle`` s to start.

    Ready means the deadline keeper is installed, which is when a SIGTERM handler appears
    (Python's own SIGINT handler is there from the first instant, long before wasmsbx has
    even been imported on a loaded machine)."""
    waited = time.monotonic()
    while not handler_installed(proc.pid, signal.SIGTERM) and time.monotonic() - waited < 60:
        time.sleep(0.02)
    time.sleep(settle)
    started = time.monotonic()
    proc.send_signal(signum)
    return finish(proc, started)


SIGNALS = [signal.SIGINT, signal.SIGTERM]


@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_stops_a_busy_guest(backend, signum):
    proc = popen("run", GUESTS / "spin.wat", "spin", "--timeout", "10m", "--backend", backend)
    code, err, took = interrupt(proc, signum)
    assert code == 130, err
    assert "interrupted" in err
    assert took < STOPPED_WITHIN


@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_stops_a_busy_guest_with_the_longest_timeout(backend, signum):
    """A call 366 days from its deadline is 3.2 billion epochs away: the keeper advanced
    them one FFI call at a time before any hard stop, 23 s for a 7-day timeout and
    about 20 minutes for this one."""
    proc = popen("run", GUESTS / "spin.wat", "spin", "--timeout", "366d", "--backend", backend)
    code, err, took = interrupt(proc, signum)
    assert code == 130, err
    assert took < STOPPED_WITHIN


FLOOD = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
  (func (export "flood")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 64))
    (loop $l (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l))))
"""


@pytest.mark.any_compiler
def test_an_output_flood_under_the_longest_timeout_stops_at_the_output_limit(backend, tmp_path):
    """A guest that ignores its failing writes was stopped by moving the epoch to its
    deadline one FFI call at a time: 20 minutes past limits.output for 366 days."""
    guest = tmp_path / "flood.wat"
    guest.write_text(FLOOD)
    policy = tmp_path / "sandbox.toml"
    policy.write_text('[limits]\noutput = "1KiB"\ntimeout = "366d"\n')
    started = time.monotonic()
    proc = popen("run", guest, "flood", "--policy", policy, "--backend", backend)
    code, err, took = finish(proc, started)
    assert code == 115, err
    assert took < STOPPED_WITHIN


@pytest.mark.any_compiler  # blocked in a host call: not the compiler's code
@pytest.mark.parametrize("signum", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_stops_a_guest_blocked_in_a_host_call(backend, signum):
    proc = popen("run", FSPROBE, "--timeout", "10m", "--backend", backend, "--", "sleep", HOUR_MS)
    code, err, took = interrupt(proc, signum)
    assert code == 130, err
    assert took < STOPPED_WITHIN


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_signal_stops_a_batch(backend, jobs, tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("[]\n" * 4)
    proc = popen(
        "run", GUESTS / "spin.wat", "spin", "--batch", items, "-j", jobs,
        "--timeout", "10m", "--backend", backend,
    )  # fmt: skip
    code, err, took = interrupt(proc, signal.SIGINT, settle=2.0)
    assert code == 130, err
    assert took < STOPPED_WITHIN


def test_sigterm_stops_a_stream(backend, tmp_path):
    module = tmp_path / "spin_stream.wat"
    module.write_text(
        '(module (memory (export "memory") 2) (func (export "alloc") (param i32) (result i32) '
        'i32.const 1024) (func (export "process") (param i32 i32) (result i64) '
        "(loop $l (br $l)) i64.const 0))"
    )
    proc = popen("run", module, "--stream", "--timeout", "10m", "--backend", backend,
                 stdin=subprocess.PIPE)  # fmt: skip
    proc.stdin.write(b"x" * 10)
    proc.stdin.close()
    proc.stdin = None  # closed: communicate() must not flush it
    code, err, took = interrupt(proc, signal.SIGTERM, settle=2.0)
    assert code == 130, err
    assert took < STOPPED_WITHIN


def test_signal_stops_bench(backend):
    proc = popen(
        "bench", GUESTS / "spin.wat", "spin", "--timeout", "10m", "--backend", backend,
        "--phase", "call",
    )  # fmt: skip
    code, err, took = interrupt(proc, signal.SIGINT, settle=2.0)
    assert code == 130, err
    assert took < STOPPED_WITHIN


# ---------------------------------------------------------------------------- compiling


def many_functions(count: int, ops: int = 30) -> bytes:
    """A valid module of ``count`` identical functions (~6 bytes per op each): 100,000
    functions of 30 ops is ~18 MB, the size of issue 13's attack."""

    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def section(sid: int, body: bytes) -> bytes:
        return bytes([sid]) + leb(len(body)) + body

    body = bytearray(b"\x00\x20\x00")
    for k in range(ops):
        body += b"\x41" + leb(k + 1) + b"\x6a\x20\x00\x6c"  # i32.const, add, local.get, mul
    body += b"\x0b"
    entry = leb(len(body)) + bytes(body)
    return (
        b"\0asm\x01\0\0\0"
        + section(1, b"\x01\x60\x01\x7f\x01\x7f")
        + section(3, leb(count) + b"\x00" * count)
        + section(7, b"\x01\x01f\x00\x00")
        + section(10, leb(count) + entry * count)
    )


@pytest.mark.slow
def test_huge_module_compile_is_stopped_by_the_timeout(backend, tmp_path):
    module = tmp_path / "huge.wasm"
    module.write_bytes(many_functions(100_000))
    assert len(module.read_bytes()) > 15_000_000
    code, err, took = run_blocked("run", module, "f", "1", "--timeout", "1s", "--backend", backend)
    assert code == 112, err  # the run's timeout covers compiling
    assert "still compiling" in err
    assert took < STOPPED_WITHIN


def test_compile_timeout_key_stops_a_large_compile(backend, tmp_path):
    module = tmp_path / "large.wasm"
    module.write_bytes(many_functions(20_000))
    policy = tmp_path / "sandbox.toml"
    policy.write_text('[limits]\ncompile_timeout = "200ms"\n')
    code, err, _ = run_blocked(
        "run", module, "f", "1", "--policy", policy, "--backend", backend, "--no-cache"
    )
    assert code == 117, err
    assert "limits.compile_timeout" in err


def test_module_size_refuses_before_compiling(cli, backend, tmp_path):
    module = tmp_path / "m.wasm"
    module.write_bytes(many_functions(100))
    policy = tmp_path / "sandbox.toml"
    policy.write_text('[limits]\nmodule_size = "1KiB"\n')
    res = cli("run", module, "f", "1", "--policy", policy, "--backend", backend)
    assert res.code == 117, res
    assert "limits.module_size" in res.stderr


def test_large_module_compiled_in_a_child_runs(cli, backend, tmp_path):
    """Above CHILD_MIN the code comes back from a child process and runs like any other."""
    from wasmsbx.backends.compiling import CHILD_MIN

    module = tmp_path / "m.wasm"
    count = CHILD_MIN // 180 + 10
    module.write_bytes(many_functions(count))
    assert len(module.read_bytes()) >= CHILD_MIN
    res = cli("run", module, "f", "0", "--backend", backend, "--no-cache", "--timeout", "60s")
    assert res.code == 0, res
    assert res.stdout.strip() == "0"  # ((0 + 1) * 0 + 2) * 0 ...


def test_keeper_interrupt_stops_a_running_call_from_another_thread(backend):
    """The library's Ctrl-C: KEEPER.interrupt() from any thread; later calls are unaffected."""
    import threading

    from wasmsbx import Sandbox, policy
    from wasmsbx.backends.deadline import KEEPER

    require_capability(backend, "interrupt")
    pol = policy.discover()
    policy.override(pol, "limits.timeout", "10m")
    box = Sandbox(GUESTS / "spin.wat", pol, backend=backend)
    timer = threading.Timer(0.5, KEEPER.interrupt)
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        box.call("spin")  # the 10 min timeout would end it much later
    assert time.monotonic() - started < STOPPED_WITHIN
    timer.join()
    assert KEEPER.signalled is None  # no hard stop is pending in a library


def test_output_into_a_pipe_nobody_reads_still_times_out(backend):
    """The guest floods stdout; the reader never reads, so wasmsbx's own write blocks."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wasmsbx", "run", FSPROBE, "--timeout", "1s",
         "--backend", backend, "--", "flood", "100000000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    started = time.monotonic()
    try:
        code = proc.wait(timeout=STOPPED_WITHIN + 60)  # stdout is never read
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    err = proc.stderr.read().decode("utf-8", "replace")
    proc.stdout.close()
    proc.stderr.close()
    assert code in (112, 115), err  # the timeout (or the output limit, if it came first)
    assert time.monotonic() - started < STOPPED_WITHIN


def test_sigint_while_compiling_in_a_child(backend, tmp_path):
    module = tmp_path / "large.wasm"
    module.write_bytes(many_functions(60_000))
    proc = popen("run", module, "f", "1", "--timeout", "10m", "--backend", backend, "--no-cache")
    code, err, took = interrupt(proc, signal.SIGINT, settle=0.5)
    assert code == 130, err
    assert took < STOPPED_WITHIN


def test_a_hard_stopped_call_still_writes_its_audit_log(backend, tmp_path):
    """A guest blocked in a host call is ended by the keeper's hard stop (os._exit): the
    --audit-log still gets the limit and exit events before the process leaves."""
    read, write = os.pipe()  # stdin that never closes: the guest blocks in fd_read
    log = tmp_path / "a.log"
    try:
        code, err, took = run_blocked(
            "run", FSPROBE, "--timeout", "1s", "--backend", backend, "--audit-log", log,
            "--", "cat-stdin", stdin=read,
        )  # fmt: skip
    finally:
        os.close(read)
        os.close(write)
    assert code == 112, err
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-2:] == ["limit", "exit"], kinds
    assert events[-2]["limit"] == "timeout" and events[-1]["exit_code"] == 112


# _start: writes 4 KiB to stderr forever.
FLOOD_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))     ;; iovec: base
    (i32.store (i32.const 4) (i32.const 4096))   ;; iovec: length
    (loop $l
      (drop (call $write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 16)))
      (br $l))))
"""


@pytest.mark.any_compiler
def test_the_timeout_holds_when_stderr_is_a_pipe_nobody_reads(tmp_path, backend):
    """`wasmsbx run flood 2>&1 | consumer` where the consumer stops reading: the guest
    blocks writing, the hard stop ends the run at the deadline; its own error line then
    blocked on the same full pipe, until the reader went away (red team round 23)."""
    module = tmp_path / "flood.wat"
    module.write_text(FLOOD_WAT)
    read_end, write_end = os.pipe()  # never read
    try:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "wasmsbx", "run", str(module), "--timeout", "1s"]
            + ["--backend", backend],
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
        )
        os.close(write_end)
        write_end = -1
        try:
            code = proc.wait(timeout=STOPPED_WITHIN)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("still running with its stderr full, past the timeout")
        assert code == 112, code
        assert time.monotonic() - started < STOPPED_WITHIN
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
