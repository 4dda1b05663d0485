"""``run --batch -j N``'s worker processes (runner.pool): forked by the command line before
it makes an engine, elsewhere from a fork server; what each start leaves behind, a
worker that dies, limits inside forked workers, results sent back a chunk at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from wasmsbx.errors import ExitCode
from wasmsbx.runner import Sandbox, batch, pool

from .blocking import BLOCK_MS_WAT, fifo_grant
from .conftest import EXAMPLES
from .test_batch import _descendants, _running, _spawn, jsonl

ADD = EXAMPLES / "add.wat"
LOOP = EXAMPLES / "loop.wat"

needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="reads the process table in /proc"
)


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def _wait_for_lines(path, n: int, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while path.read_bytes().count(b"\n") < n:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no results came"
        time.sleep(0.02)


@needs_proc
def test_cli_workers_are_forks_of_wasmsbx_itself_and_nothing_else_runs(tmp_path):
    """The command line forks its workers before it compiles: exactly two processes, its
    own children, running wasmsbx's command line (no fork server, no resource tracker,
    no fresh interpreter); they end with the batch."""
    out = tmp_path / "out.jsonl"
    with open(out, "wb") as sink:
        proc = _spawn(["run", LOOP, "count", "--batch", "-", "-j", "2"], subprocess.PIPE, sink)
        try:
            proc.stdin.write(b"[1000]\n" * 50)
            proc.stdin.flush()  # the pipe stays open: the workers are waiting for more
            _wait_for_lines(out, 50, proc)
            family = _descendants(proc.pid)
            assert len(family) == 2, [_cmdline(p) for p in family]
            for pid in family:
                with open(f"/proc/{pid}/stat") as f:
                    assert int(f.read().rsplit(")", 1)[1].split()[1]) == proc.pid
                assert _cmdline(pid) == _cmdline(proc.pid)
            proc.stdin.close()
            assert proc.wait(timeout=120) == 0, proc.stderr.read()
            assert not _running(family)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
    rows = jsonl(out.read_text())
    assert [r["line"] for r in rows] == list(range(1, 51))
    assert all(r["results"] == [1000] for r in rows)


@needs_proc
def test_a_worker_that_dies_fails_the_batch_and_a_resume_loses_and_repeats_nothing(tmp_path):
    """SIGKILL one worker mid-batch: one error line and the internal-error exit, the
    checkpoint covers exactly what was written, and the rerun completes the rest."""
    n = 3000
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(b'{"args": [20000], "id": %d}\n' % i for i in range(n)))
    out = tmp_path / "out.jsonl"
    ckpt = tmp_path / "run.ckpt"
    args = ["run", LOOP, "count", "--batch", src, "-j", "2", "--checkpoint", ckpt]
    with open(out, "ab") as sink:
        proc = _spawn(args, subprocess.DEVNULL, sink)
        try:
            _wait_for_lines(out, 1, proc)
            victim = min(_descendants(proc.pid))
            os.kill(victim, signal.SIGKILL)
            code = proc.wait(timeout=120)
            err = proc.stderr.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
    if code == 0:  # the batch won the race: nothing left to check of a death
        pytest.skip("the batch finished before the worker was killed")
    assert code == ExitCode.INTERNAL, err
    assert "worker process died" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 2, err  # the error and its hint
    with open(out, "ab") as sink:
        again = subprocess.run(
            [sys.executable, "-m", "wasmsbx", *map(str, args)],
            stdout=sink,
            stderr=subprocess.PIPE,
            timeout=300,
        )
    assert again.returncode == 0, again.stderr.decode()
    ids = [row["id"] for row in jsonl(out.read_text())]
    assert ids == list(range(n))  # each item once, in order


def test_timeouts_hold_in_forked_workers(cli):
    """A forked worker starts its own deadline keeper (the parent's thread did not come
    along, and its lock was held across the fork): every call is stopped at its own
    timeout, and the batch ends."""
    r = cli("run", LOOP, "spin", "--batch", "-", "-j", "2", "--timeout", "200ms", input=b"[]\n" * 4)
    assert r.code == 122, r.stderr
    rows = jsonl(r.stdout)
    assert [row["error"].get("limit") for row in rows] == ["timeout"] * 4


def test_a_worker_blocked_in_a_host_call_is_ended_at_its_timeout(cli, tmp_path):
    """Workers had a library's deadline keeper, with no hard stop: an item blocked in a
    host call ran to its end (100 s under a 1 s timeout; red team round 23). Such a call
    then ended the whole run (exit 112); now the item is a timeout, its worker is
    replaced and the batch goes on (exit 122: some items failed). (Blocked: the open of
    a FIFO nobody writes, tests/blocking.py; a WASI sleep now ends at the deadline.)"""
    module = tmp_path / "block.wat"
    module.write_text(BLOCK_MS_WAT)
    started = time.monotonic()
    with fifo_grant(tmp_path) as folder:
        r = cli("run", module, "sleep", "--batch", "-", "-j", "2", "--timeout", "1s",
                "--dir-ro", folder, input=b"[60000]\n" * 2)  # fmt: skip
    assert r.code == 122, r
    rows = jsonl(r.stdout)
    assert [row["line"] for row in rows] == [1, 2]
    assert all("blocked in a host call" in row["error"]["message"] for row in rows), rows
    assert "Traceback" not in r.stderr
    assert time.monotonic() - started < 60  # (not for good)


def test_chunks_come_back_whole_and_are_counted_as_items(tmp_path):
    """-j 2 through run_jsonl: each worker's chunk is one EncodedChunk, written at once;
    the summary counts its items, failures by kind, and the lines are -j 1's."""
    from wasmsbx.runner.checkpoint import Sink, Source

    data = b"".join(b"[%d, %d]\n" % (i, i % 3) for i in range(300)) + b"[1]\nnot json\n"
    outputs, summaries = {}, {}
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}.jsonl"
        src = tmp_path / "in.jsonl"
        src.write_bytes(data)
        with open(src, "rb") as f, open(out, "wb") as o:
            summaries[jobs] = batch.run_jsonl(Sandbox(ADD), "div", Source(f), Sink(o), jobs=jobs)
        outputs[jobs] = [
            {k: v for k, v in r.items() if k != "time_ms"} for r in jsonl(out.read_text())
        ]
    assert outputs[1] == outputs[2]
    assert summaries[1].to_dict()["errors"] == summaries[2].to_dict()["errors"]
    assert summaries[2].errors == {"trap": 100, "usage": 1, "input": 1}
    assert (summaries[2].ok, summaries[2].failed, summaries[2].this_run) == (200, 102, 302)


def test_encode_chunk_is_the_items_lines_in_order():
    caller = batch.make_caller(Sandbox(ADD), "div")
    items = [(1, b"[6, 3]"), (2, b"[1, 0]"), (4, b"[9, 3]")]
    singles = [caller.run_encoded(line, raw) for line, raw in items]
    chunk = batch.encode_chunk(singles)
    assert chunk.count == 3 and chunk.kinds == ("trap",)
    assert chunk.data == b"".join(e.data for e in singles)
    summary = batch.Summary()
    summary.add_chunk(chunk)
    assert summary.counts() == {"ok": 2, "failed": 1, "errors": {"trap": 1}}


def test_prefork_refuses_while_another_thread_runs():
    """A fork while a thread it does not know runs could copy a lock that thread holds:
    prefork forks nothing then, and the batch falls back to the fork server."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert pool.prefork(2, [], batch._JOB) is False
        assert pool.take(2) is None
    finally:
        stop.set()
        thread.join()
    results = list(Sandbox(ADD).batch("add", [[1, 2], [3, 4]], jobs=2))
    assert [r.values for r in results] == [[3], [7]]


PREFORKED_API = """
import json, os, sys
from wasmsbx.runner import Sandbox, batch, pool
batch.prestart(2)
workers, keep = pool._FORKED[os.getpid()]
forked = [w.pid for w in workers]
ours = [keep, *(c.fileno() for w in workers for c in (w.tasks, w.replies))]
box = Sandbox(sys.argv[1])
assert pool._FORKED  # compiling did not touch them
values = [r.values for r in box.batch("add", [[i, 1] for i in range(500)], jobs=2)]
assert not pool._FORKED  # the batch took them
assert values == [[i + 1] for i in range(500)], values[:5]
for fd in ours:  # none left open
    try:
        os.fstat(fd)
    except OSError:
        continue
    raise SystemExit(f"fd {fd} is still open")
print(json.dumps(forked))
"""


@needs_proc
def test_prestart_forks_the_workers_a_later_batch_takes(tmp_path):
    """In a process with no other thread, prestart forks the workers; the batch uses
    them (no fork server starts), reaps them when it ends and leaves no pipe open."""
    r = subprocess.run(
        [sys.executable, "-c", PREFORKED_API, str(ADD)],
        capture_output=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 0, r.stderr.decode()
    forked = json.loads(r.stdout)
    assert len(forked) == 2
    assert not _running(set(forked))


@needs_proc
def test_prefork_refuses_once_an_engine_was_made():
    """A fork would copy a live engine (and a worker could take it from the backend's
    table of engines): after the first sandbox, prefork forks nothing."""
    code = (
        "import os, sys\n"
        "from wasmsbx.backends.base import EngineOptions\n"
        "from wasmsbx.backends.wasmtime.backend import WasmtimeEngine\n"
        "from wasmsbx.runner import Sandbox, batch, pool\n"
        "engine = WasmtimeEngine(EngineOptions())\n"
        "assert len(os.listdir('/proc/self/task')) == 1  # no thread: the engine says no\n"
        "assert pool.prefork(2, [], batch._JOB) is False\n"
        "box = Sandbox(sys.argv[1])\n"
        "assert pool.take(2) is None\n"
        "print([r.values for r in box.batch('add', [[1, 2], [3, 4]], jobs=2)])\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(ADD)],
        capture_output=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 0 and r.stdout == b"[[3], [7]]\n", r.stderr.decode()


def test_unused_preforked_workers_are_ended_by_discard():
    code = (
        "import os\n"
        "from wasmsbx.runner import batch, pool\n"
        "assert pool.prefork(2, [], batch._JOB)\n"
        "pids = [w.pid for w in pool._FORKED[os.getpid()][0]]\n"
        "pool.discard()\n"
        "for pid in pids:\n"
        "    try:\n"
        "        os.kill(pid, 0)\n"
        "    except ProcessLookupError:\n"
        "        continue\n"
        "    raise SystemExit(f'{pid} still there')\n"
        "print('ok')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 0 and r.stdout == b"ok\n", r.stderr.decode()


def test_a_reply_that_cannot_be_pickled_arrives_as_its_text():
    from multiprocessing import Pipe

    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no pickling here")

    reader, writer = Pipe(duplex=False)
    pool._send(writer, ("error", Unpicklable("guest said no")))
    status, error = pool.reply_from(reader.recv_bytes())
    assert status == "error" and isinstance(error, RuntimeError)
    assert "guest said no" in str(error)
    pool._send(writer, ("ok", [lambda: 0], 1, 0.5))  # (results that cannot be pickled)
    status, error = pool.reply_from(reader.recv_bytes())
    assert status == "error" and "batch worker" in str(error)
    from wasmsbx.runner.batch import EncodedChunk

    chunk = EncodedChunk(1, (), b"{}\n")
    pool._send(writer, ("ok", chunk, 1, 0.5))
    assert pool.reply_from(reader.recv_bytes()) == ("ok", chunk, 1, 0.5)


def test_a_reaped_worker_is_never_signalled(monkeypatch):
    """alive() reaps a worker that has exited; its pid may then belong to any process of
    the user, so terminate() and reap() must leave it alone (found by a red team)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    reader, writer = os.pipe()
    worker = pool.Worker(None, os.fdopen(reader, "rb"), pid=pid)
    os.close(writer)
    deadline = time.monotonic() + 60
    while worker.alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sent = []
    monkeypatch.setattr(os, "kill", lambda *args: sent.append(args))
    worker.terminate()
    worker.reap()
    assert sent == [] and not worker.alive()


def test_results_made_before_a_hard_stop_are_written(cli, tmp_path):
    """Red team round 25: with -j 1 the hard stop (an item blocked in a host call past
    its deadline) left with the results already made still in the writer's buffer.
    (-j 1 runs its calls in this process: such a call ends the run, exit 112.)"""
    module = tmp_path / "block.wat"
    module.write_text(BLOCK_MS_WAT)
    with fifo_grant(tmp_path) as folder:
        r = cli("run", module, "sleep", "--batch", "-", "-j", "1", "--timeout", "1s",
                "--dir-ro", folder, input=b"[10]\n[60000]\n[20]\n")  # fmt: skip
    assert r.code == 112, r
    rows = jsonl(r.stdout)
    assert rows and rows[0]["line"] == 1 and rows[0]["results"] == [10], r


def _rerun_until_done(args: list, out, stdin_bytes: bytes = b"", runs: int = 8) -> list:
    """Run the same batch command, its results appended to ``out``, until it ends with
    something other than the hard stop (112): [(exit code, stderr)] of each run."""
    seen = []
    for _ in range(runs):
        with open(out, "ab") as sink:
            proc = subprocess.run(
                [sys.executable, "-m", "wasmsbx", *map(str, args)],
                input=stdin_bytes,
                stdout=sink,
                stderr=subprocess.PIPE,
                timeout=300,
            )
        seen.append((proc.returncode, proc.stderr.decode()))
        if proc.returncode != ExitCode.LIMIT_TIMEOUT:
            return seen
    raise AssertionError(f"still stopping after {runs} runs: {seen}")


@pytest.mark.parametrize("piped", [False, True])
def test_with_one_job_a_rerun_goes_on_past_a_blocked_item(tmp_path, piped):
    """With -j 1 a call blocked in a host call ends the process (exit 112), and the
    checkpoint stopped short of its item: every rerun with the same --checkpoint blocked
    on it again, for ever. Now the hard stop writes the item's timeout (its id kept, as
    under -j N) and saves the checkpoint past it, so each rerun gets past one more
    blocked item and the results come out exactly once, in order. The hint says so.
    Input from a file (seeked) and from a pipe (read again and skipped)."""
    module = tmp_path / "block.wat"
    module.write_text(BLOCK_MS_WAT)
    items = [60000, 5, 60000, 60000, 7]
    text = "".join(
        json.dumps({"args": [i], "id": f"item{n}"}) + "\n" for n, i in enumerate(items, 1)
    ).encode()
    src = tmp_path / "in.jsonl"
    src.write_bytes(text)
    out, ckpt = tmp_path / "out.jsonl", tmp_path / "run.ckpt"
    with fifo_grant(tmp_path) as folder:
        args = ["run", module, "sleep", "--batch", "-" if piped else src, "-j", "1",
                "--timeout", "1s", "--dir-ro", folder, "--checkpoint", ckpt]  # fmt: skip
        seen = _rerun_until_done(args, out, text if piped else b"")
    codes = [code for code, _ in seen]
    assert codes == [112, 112, 112, ExitCode.BATCH_FAILURES], seen
    first = seen[0][1]
    assert "line 1's timeout is the last result" in first, first
    assert "go on from line 2" in first and str(ckpt) in first, first
    assert all("Traceback" not in err for _, err in seen), seen
    rows = jsonl(out.read_text())
    assert [(r["line"], r["id"]) for r in rows] == [(n, f"item{n}") for n in range(1, 6)]
    assert _sleep_rows(rows) == [(1, "timeout"), (2, [5]), (3, "timeout"), (4, "timeout"),
                                 (5, [7])]  # fmt: skip
    assert "3 failed (limit:timeout 3)" in seen[-1][1], seen[-1][1]
    assert not ckpt.exists()  # removed once the batch is through


def test_with_one_job_and_no_checkpoint_the_blocked_item_is_the_last_result(cli, tmp_path):
    """Without --checkpoint the stuck item's timeout is written as its result too (the
    output says how far the run got), and the hint names -j 2 and --checkpoint."""
    module = tmp_path / "block.wat"
    module.write_text(BLOCK_MS_WAT)
    with fifo_grant(tmp_path) as folder:
        r = cli("run", module, "sleep", "--batch", "-", "--timeout", "1s", "--dir-ro", folder,
                input=b'[10]\n{"args": [60000], "id": "x"}\n[20]\n')  # fmt: skip
    assert r.code == 112, r
    rows = jsonl(r.stdout)
    assert [(row["line"], row["id"]) for row in rows] == [(1, 1), (2, "x")], r
    assert _sleep_rows(rows) == [(1, [10]), (2, "timeout")], r
    assert "line 2's timeout is the last result; with -j 2" in r.stderr, r.stderr
    assert "--checkpoint FILE" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _sleep_rows(rows: list) -> list:
    return [(row["line"], row.get("results") or row["error"]["limit"]) for row in rows]


@pytest.mark.parametrize("fresh", [False, True])
def test_with_jobs_a_blocked_item_is_a_timeout_and_the_batch_goes_on(cli, tmp_path, fresh):
    """With -j N an item blocked in a host call past its deadline ended the whole run
    (exit 112; the rest of the input was never run). Now it is that item's timeout: its
    worker sends the chunk's results so far and leaves, another takes the rest of its
    chunks, and every item is answered in order (exit 122: some failed)."""
    module = tmp_path / "block.wat"
    module.write_text(BLOCK_MS_WAT)
    items = [60000 if i % 4 == 2 else i for i in range(1, 13)]
    flags = ["--fresh"] if fresh else []
    with fifo_grant(tmp_path) as folder:
        r = cli("run", module, "sleep", "--batch", "-", "-j", "2", "--timeout", "1s", *flags,
                "--dir-ro", folder, input="".join(f"[{i}]\n" for i in items).encode())  # fmt: skip
    assert r.code == 122, r
    rows = jsonl(r.stdout)
    want = [(n, "timeout" if i == 60000 else [i]) for n, i in enumerate(items, 1)]
    assert _sleep_rows(rows) == want, r
    assert "3 failed (limit:timeout 3)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_from_python_a_blocked_item_is_a_timeout_and_the_batch_goes_on(tmp_path):
    """The same from Python (jobs=2, workers from the fork server): the batch raised
    TimeoutExceeded at the first blocked item. Ids are kept, every item comes back."""
    from wasmsbx import policy as policy_mod

    policy = policy_mod.defaults()
    policy_mod.override(policy, "limits.timeout", 1.0)
    items = [[1], {"args": [60000], "id": "stuck"}, [3], [4], [60000], [6]] * 2
    with fifo_grant(tmp_path) as folder:
        policy_mod.override(policy, "filesystem.read_only", [str(folder)])
        box = Sandbox(BLOCK_MS_WAT.encode(), policy)
        got = [(r.line, r.id, r.values, r.error and r.error["limit"]) for r in
               box.batch("sleep", items, jobs=2)]  # fmt: skip
    want = []
    for line, item in enumerate(items, 1):
        args = item["args"] if isinstance(item, dict) else item
        ident = item["id"] if isinstance(item, dict) else line
        stuck = args == [60000]
        want.append((line, ident, None, "timeout") if stuck else (line, ident, args, None))
    assert got == want
    box.close()
