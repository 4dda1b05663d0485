"""Batch calls: `wasmsbx run MODULE FUNC --batch INPUT` and `Sandbox.batch`."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from wasmsbx import errors
from wasmsbx.policy import defaults, override
from wasmsbx.runner import Sandbox, batch
from wasmsbx.runner.checkpoint import Sink, Source

from .conftest import EXAMPLES, GUESTS, require_capability, require_module

ADD = EXAMPLES / "add.wat"
LOOP = EXAMPLES / "loop.wat"
COUNTER = GUESTS / "counter.wat"


def jsonl(text: str) -> list:
    return [json.loads(line) for line in text.splitlines()]


def write_lines(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def box_for(module, backend, **limits) -> Sandbox:
    policy = defaults()
    for key, value in limits.items():
        override(policy, f"limits.{key}", value)
    return Sandbox(module, policy, backend=backend)


# ---------------------------------------------------------------------------- CLI basics


def test_batch_results_in_order_with_ids_and_summary(cli, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('[5, 3]\n{"args": [1, 2], "id": "x"}\n\n[2147483647, 1]\n')
    r = cli("run", ADD, "add", "--batch", src)
    assert r.code == 0, r
    rows = jsonl(r.stdout)
    assert [(row["line"], row["id"], row["results"]) for row in rows] == [
        (1, 1, [8]),
        (2, "x", [3]),
        (4, 4, [-2147483648]),  # blank line 3 is not an item; wrapping i32 add
    ]
    assert all(row["ok"] and row["time_ms"] >= 0 for row in rows)
    assert "batch: 3 items, 3 ok, 0 failed" in r.stderr
    assert "items/s" in r.stderr


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_item_refused_for_its_args_or_keys_keeps_its_own_id(cli, tmp_path, jobs):
    """Round 155: such an item was answered under its line number, which may be another
    item's id (a consumer matching on ids got two items under the wrong ones)."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"args": "x", "id": 2}\n{"args": [1], "id": "a", "extra": 1}\n[1, 1]\n')
    r = cli("run", ADD, "add", "--batch", src, "--jobs", jobs)
    assert r.code == 122, r
    rows = jsonl(r.stdout)
    assert [(row["line"], row["id"], row["ok"]) for row in rows] == [
        (1, 2, False),
        (2, "a", False),
        (3, 3, True),
    ]
    assert "'args' must be a JSON array" in rows[0]["error"]["message"]
    assert "unknown key 'extra'" in rows[1]["error"]["message"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_id_strict_json_cannot_hold_is_an_item_error(cli, tmp_path, jobs):
    """Red team round 23: ids 1e999, NaN and "\\ud800" were echoed as Infinity, NaN and a
    lone surrogate, which jq and other strict JSON readers reject."""
    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"args": [1, 2], "id": 1e999}\n{"args": [1, 2], "id": NaN}\n'
        '{"args": [1, 2], "id": "\\ud800"}\n{"args": [1, 2], "id": [1, {"a": 2.5}]}\n'
    )
    r = cli("run", ADD, "add", "--batch", src, "-j", jobs)
    assert r.code == 122, r
    for line in r.stdout.splitlines():  # (strict: no NaN/Infinity, no lone surrogate)
        json.loads(line, parse_constant=lambda name, line=line: pytest.fail(f"{name}: {line}"))
        line.encode("utf-8")
        assert "\\ud800" not in line, line
    rows = jsonl(r.stdout)
    assert [row["id"] for row in rows] == [1, 2, 3, [1, {"a": 2.5}]]
    assert [row["ok"] for row in rows] == [False, False, False, True]
    assert "plain JSON" in rows[0]["error"]["message"]


def test_integers_too_long_for_python_are_the_same_errors_on_every_python(cli, tmp_path):
    """Python 3.11+ converts at most 4,300 digits: an argument of 100,000 was "not
    JSON" in Python's words there (an input error) and out of range on 3.9, and a
    5,000-digit id was refused there and echoed whole on 3.9 (red team round 69)."""
    src = tmp_path / "in.jsonl"
    src.write_text(
        f"[{'9' * 100_000}, 1]\n[-{'9' * 5000}, 1]\n"
        f'{{"args": [1, 2], "id": {"7" * 5000}}}\n{{"args": [1, 2], "id": {"7" * 4000}}}\n'
    )
    rows = jsonl(cli("run", ADD, "add", "--batch", src).stdout)
    assert [row["ok"] for row in rows] == [False, False, False, True]
    assert [row["error"]["kind"] for row in rows[:3]] == ["usage", "usage", "input"]
    assert "out of range" in rows[0]["error"]["message"]
    assert "4,300 digits" in rows[2]["error"]["message"]
    assert rows[2]["id"] == 3 and rows[3]["id"] == int("7" * 4000)


def test_batch_per_line_errors_do_not_stop_the_batch(cli, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        "\n".join(
            [
                "[6, 3]",
                "not json",
                "[1]",
                '["x", 1]',
                "[1, 0]",
                '{"args": [8, 2], "extra": 1}',
                '{"args": 5}',
                "42",
                "[9, 3]",
            ]
        )
        + "\n"
    )
    r = cli("run", ADD, "div", "--batch", src)
    assert r.code == 122, r
    rows = jsonl(r.stdout)
    assert [row["line"] for row in rows] == list(range(1, 10))
    assert rows[0]["results"] == [2] and rows[-1]["results"] == [3]
    kinds = [row["error"]["kind"] if not row["ok"] else None for row in rows]
    assert kinds == [None, "input", "usage", "usage", "trap", "input", "input", "input", None]
    assert "integer divide by zero" in rows[4]["error"]["message"]
    assert "signature" in rows[2]["error"]["hint"]
    assert "unknown key 'extra'" in rows[5]["error"]["message"]
    assert "batch: 9 items, 2 ok, 7 failed (input 4, trap 1, usage 2)" in r.stderr
    assert "Traceback" not in r.stderr


def test_batch_over_long_line_is_one_item_error(cli, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"[1, 2]\n[" + b"1, " * (batch.MAX_LINE // 3 + 10) + b"1]\n[3, 4]\n")
    r = cli("run", ADD, "add", "--batch", src)
    rows = jsonl(r.stdout)
    assert [row.get("results") for row in rows] == [[3], None, [7]]
    assert rows[1]["line"] == 2 and "longer than" in rows[1]["error"]["message"]
    assert r.code == 122


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_batch_deeply_nested_line_is_one_item_error(cli, tmp_path, jobs):
    """A line of nested brackets (within MAX_LINE) is too deep for json: an input error
    for that item, not an internal error that ends the batch (in a worker too)."""
    src = tmp_path / "in.jsonl"
    deep = b"[" * 200_000 + b"]" * 200_000
    src.write_bytes(b"[1, 2]\n" + deep + b"\n" + b'{"args": ' + deep + b"}\n[3, 4]\n")
    r = cli("run", ADD, "add", "--batch", src, "-j", jobs)
    rows = jsonl(r.stdout)
    assert [row.get("results") for row in rows] == [[3], None, None, [7]]
    assert all("nested too deeply" in row["error"]["message"] for row in rows[1:3])
    assert r.code == 122 and "Traceback" not in r.stderr


def test_batch_empty_input(cli, tmp_path):
    for content in ("", "\n\n  \n"):
        src = tmp_path / "empty.jsonl"
        src.write_text(content)
        r = cli("run", ADD, "add", "--batch", src)
        assert r.code == 0, r
        assert r.stdout == ""
        assert "batch: 0 items, 0 ok, 0 failed" in r.stderr


def test_batch_from_stdin_and_json_summary(cli):
    r = cli("run", ADD, "add", "--batch", "-", "--json", input=b"[1, 1]\n[2, 2]\n[1]\n")
    assert r.code == 122
    assert [row.get("results") for row in jsonl(r.stdout)] == [[2], [4], None]
    summary = json.loads(r.stderr)["summary"]
    assert summary["items"] == 3 and summary["ok"] == 2 and summary["failed"] == 1
    assert summary["errors"] == {"usage": 1}
    assert summary["items_per_second"] > 0


def test_batch_float_and_multi_value_results(cli, tmp_path):
    f32 = tmp_path / "f32.wat"
    f32.write_text(
        '(module (func (export "add_f32") (param f32 f32) (result f32) '
        "(f32.add (local.get 0) (local.get 1))))"
    )
    lines = b'[3, 4]\n["inf", 0]\n'
    r = cli("run", ADD, "hypot", "--batch", "-", input=lines)
    assert [row["results"] for row in jsonl(r.stdout)] == [[5.0], ["inf"]]
    r = cli("run", ADD, "divmod", "--batch", "-", input=b"[17, 5]\n")
    assert jsonl(r.stdout)[0]["results"] == [3, 2]
    r = cli("run", f32, "add_f32", "--batch", "-", input=b"[0.1, 0.2]\n")
    assert jsonl(r.stdout)[0]["results"] == [0.3]  # f32 in its shortest round-trip form


@pytest.mark.parametrize(
    "argv, code, text",
    [
        (["add", "--batch", "missing.jsonl"], 105, "missing.jsonl: no such file"),
        (["nope", "--batch", "-"], 2, "no export named 'nope'"),
        (["--batch", "-"], 2, "--batch needs FUNC"),
        (["add", "1", "--batch", "-"], 2, "no arguments after FUNC"),
        (["add", "--jobs", "2"], 2, "--jobs only applies with --batch"),
        (["add", "1", "2", "-j", "0"], 2, "--jobs: expected a whole number >= 1, found 0"),
        (["add", "--stream", "-j", "0"], 2, "--jobs: expected a whole number >= 1, found 0"),
        (["add", "--batch", "-", "-j", "-1"], 2, "--jobs: expected a whole number >= 1, found -1"),
        (["add", "--fresh"], 2, "--fresh only applies"),
        (["add", "--batch", "-", "-j", "0"], 2, "expected a whole number >= 1, found 0"),
        (["add", "--batch", "-", "-j", "x"], 2, "expected a whole number"),
        (["add", "--batch", "-", "--stream"], 2, "cannot be combined"),
        (["add", "--batch", "-", "--chunk-size", "1KiB"], 2, "--chunk-size only applies"),
    ],
)
def test_batch_usage_errors(cli, argv, code, text):
    module = [] if argv and str(argv[0]).endswith(".wat") else [ADD]
    r = cli("run", *module, *argv, input=b"[1, 2]\n")
    assert r.code == code, r
    assert text in r.stderr
    assert r.stderr.count("\n") <= 2 and "Traceback" not in r.stderr


def test_batch_passes_every_value_type(cli):
    """v128 and references in batch items, in the command line's spellings (README Values)."""
    r = cli(
        "run", GUESTS / "types.wat", "takes_v128", "--batch", "-",
        input=b'["i32x4:9,0,0,0"]\n["0x7"]\n["x"]\n',
    )  # fmt: skip
    assert r.code == 122, r
    rows = jsonl(r.stdout)
    assert [row.get("results") for row in rows[:2]] == [[9], [7]]
    assert "not a valid v128" in rows[2]["error"]["message"]
    r = cli("run", GUESTS / "types.wat", "takes_ref", "--batch", "-", input=b'["null"]\n')
    assert (r.code, jsonl(r.stdout)[0]["results"]) == (0, [1]), r


def test_batch_guest_output_does_not_mix_into_results(cli):
    r = cli("run", GUESTS / "say.wat", "say", "--batch", "-", input=b"[7]\n[8]\n")
    assert r.code == 0, r
    assert [row["results"] for row in jsonl(r.stdout)] == [[7], [8]]
    assert r.stderr.count("hi\n") == 2


# ---------------------------------------------------------------------------- jobs and order


@pytest.mark.parametrize("jobs", ["1", "2", "3"])
def test_batch_order_is_input_order_with_jobs(cli, tmp_path, jobs):
    # Items of very different cost, so workers finish out of order.
    sizes = [(i * 7919) % 200_000 for i in range(600)]
    src = tmp_path / "in.jsonl"
    write_lines(src, [{"args": [n], "id": f"item-{i}"} for i, n in enumerate(sizes)])
    r = cli("run", LOOP, "count", "--batch", src, "-j", jobs)
    assert r.code == 0, r
    rows = jsonl(r.stdout)
    assert [row["line"] for row in rows] == list(range(1, 601))
    assert [row["id"] for row in rows] == [f"item-{i}" for i in range(600)]
    assert [row["results"][0] for row in rows] == sizes


def test_batch_jobs_errors_keep_their_place(cli):
    lines = b"".join(b"[%d, %d]\n" % (i, i % 3) for i in range(300))
    r = cli("run", ADD, "div", "--batch", "-", "-j", "2", input=lines)
    assert r.code == 122
    rows = jsonl(r.stdout)
    for i, row in enumerate(rows):
        if i % 3 == 0:
            assert row["error"]["kind"] == "trap", row
        else:
            assert row["results"] == [i // (i % 3)], row


def test_api_batch_reads_input_lazily(backend):
    """A bounded window: an endless input is consumed only a bounded distance ahead."""
    require_module(backend, ADD)
    box = box_for(ADD, backend)
    consumed = itertools.count()

    def endless():
        for i in consumed:
            yield [i, 1]

    # The design's bound for -j 2: the chunks in flight, the one being filled and the
    # input thread's queue (plus the item it holds); -j 1 stays far below it.
    bound = (2 * batch.WINDOW_PER_JOB + 1) * batch.CHUNK_MAX_ITEMS + batch.FEED_AHEAD + 1
    for jobs in (1, 2):
        results = box.batch("add", endless(), jobs=jobs)
        got = list(itertools.islice(results, 5000))
        results.close()
        first = got[0].values[0]
        assert [r.values[0] for r in got] == list(range(first, first + 5000))
        ahead = next(consumed) - got[-1].values[0]
        assert ahead <= bound + 2, f"jobs={jobs}: read {ahead} items ahead"


# ---------------------------------------------------------------------------- instances


def test_batch_reuses_one_instance_by_default(backend):
    box = box_for(COUNTER, backend)
    assert [r.values for r in box.batch("next", [[]] * 4)] == [[1], [2], [3], [4]]


def test_batch_fresh_gives_every_call_a_new_instance(backend):
    box = box_for(COUNTER, backend)
    assert [r.values for r in box.batch("next", [[]] * 4, fresh=True)] == [[1]] * 4


def test_batch_replaces_an_instance_after_a_trap(backend):
    box = box_for(COUNTER, backend)
    results = list(box.batch("bump", [[0], [0], [1], [0], [0]]))
    assert [r.values for r in results] == [[1], [2], None, [1], [2]]
    assert results[2].error["kind"] == "trap"


def test_batch_fresh_isolation_cli_with_jobs(cli):
    lines = b"[]\n" * 50
    r = cli("run", COUNTER, "next", "--batch", "-", "--fresh", "-j", "2", input=lines)
    assert r.code == 0
    assert {row["results"][0] for row in jsonl(r.stdout)} == {1}
    r = cli("run", COUNTER, "next", "--batch", "-", input=lines)
    assert [row["results"][0] for row in jsonl(r.stdout)] == list(range(1, 51))


# ---------------------------------------------------------------------------- limits per call


def test_batch_fuel_is_per_call(backend):
    require_capability(backend, "fuel")
    box = box_for(LOOP, backend, fuel=5_000_000)
    # 20 calls of 200k iterations: far more than 5M units in total, well under it each.
    items = [[200_000]] * 20 + [[50_000_000], [10]]
    results = list(box.batch("count", items))
    assert all(r.ok for r in results[:20])
    assert results[20].error["kind"] == "limit" and results[20].error["limit"] == "fuel"
    assert results[21].values == [10]


def test_batch_fuel_limit_cli_counts_the_kind(cli):
    r = cli("run", LOOP, "count", "--batch", "-", "--fuel", "5000000", input=b"[10]\n[50000000]\n")
    assert r.code == 122
    assert "limit:fuel 1" in r.stderr


def test_batch_timeout_is_per_call(backend):
    require_capability(backend, "timeout")
    box = box_for(LOOP, backend, timeout="300ms")
    started = time.monotonic()
    spin = list(box.batch("spin", [[], []]))
    assert [r.error["limit"] for r in spin] == ["timeout", "timeout"]
    assert time.monotonic() - started >= 0.55  # each call got its own full timeout
    # Short calls in one batch that outlives the timeout all succeed. Each call (~10 ms of
    # work, less with an optimising compiler) has a 100x margin under its 1 s timeout, so
    # even a machine loaded 20x over cannot fail it; items keep coming (the batch reads
    # them lazily) until the batch has run 1.5 s, however fast or slow the machine is.
    box = box_for(LOOP, backend, timeout="1s")
    started = time.monotonic()

    def items():
        while time.monotonic() - started < 1.5:
            yield [6_000_000]

    calls = list(box.batch("count", items()))
    assert len(calls) > 1 and all(r.ok for r in calls), [r.error for r in calls if not r.ok][:1]


def test_batch_memory_limit_is_an_item_error(cli):
    r = cli(
        "run",
        GUESTS / "memgrow_loop.wat",
        "run",
        "--batch",
        "-",
        "--memory",
        "1MiB",
        input=b"[]\n[]\n",
    )
    rows = jsonl(r.stdout)
    assert [row["results"] for row in rows] == [[16], [16]]  # limit holds per instance


# ---------------------------------------------------------------------------- checkpoints


def _spawn(args, stdin, stdout, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "wasmsbx", *[str(a) for a in args]],
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        **kw,
    )


def _wait_for_checkpoint(path, key, minimum, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = json.loads(path.read_text())["state"]
            if state[key] >= minimum:
                return state
        except (FileNotFoundError, ValueError):
            pass
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_batch_resumes_after_sigkill_nothing_lost_nothing_repeated(tmp_path, jobs):
    n = 3000
    base = 300_000  # iterations: about a millisecond per item
    lines = b"".join(b'{"args": [%d], "id": %d}\n' % (base + i, i) for i in range(n))
    src = tmp_path / "in.jsonl"
    src.write_bytes(lines)
    out = tmp_path / "out.jsonl"
    ckpt = tmp_path / "run.ckpt"
    args = ["run", LOOP, "count", "--batch", "-", "-j", jobs, "--checkpoint", ckpt]
    # Run 1 reads a pipe we feed partly, then is killed with SIGKILL mid-batch.
    with open(out, "ab") as sink:
        proc = _spawn(args, subprocess.PIPE, sink)
        proc.stdin.write(lines[: len(lines) // 2])
        proc.stdin.flush()
        state = _wait_for_checkpoint(ckpt, "next_line", 200, proc)
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        proc.stderr.close()
    assert state["next_line"] < n
    # Run 2: the same command over the whole input, appending to the same file.
    with open(out, "ab") as sink, open(src, "rb") as stdin:
        proc = _spawn(args, stdin, sink)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    rows = jsonl(out.read_text())
    assert [row["id"] for row in rows] == list(range(n)), "lost or repeated items"
    assert [row["results"][0] for row in rows] == [base + i for i in range(n)]
    assert not ckpt.exists()
    assert b"resumed at line" in err and b"3,000 items" in err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_batch_from_an_open_pipe_checkpoints_everything_it_has_read(tmp_path, jobs):
    # The input pipe stays open: no EOF and no further items. Every item already read must
    # still be called, written and checkpointed (not wait for a full chunk or for more input).
    n = 100
    out = tmp_path / "out.jsonl"
    ckpt = tmp_path / "run.ckpt"
    args = ["run", LOOP, "count", "--batch", "-", "-j", jobs, "--checkpoint", ckpt]
    with open(out, "ab") as sink:
        proc = _spawn(args, subprocess.PIPE, sink)
        try:
            proc.stdin.write(b"".join(b"[%d]\n" % (1000 + i) for i in range(n)))
            proc.stdin.flush()
            state = _wait_for_checkpoint(ckpt, "next_line", n + 1, proc)
            assert state["next_line"] == n + 1 and state["ok"] == n
            assert state["output_offset"] == out.stat().st_size
            assert [row["results"][0] for row in jsonl(out.read_text())] == [
                1000 + i for i in range(n)
            ]
        finally:
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stderr.close()


def _process_table() -> dict:
    """pid -> (parent pid, state letter) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            table[int(entry)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set:
    table = _process_table()
    found: set = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = {p for p, (ppid, _) in table.items() if ppid == parent} - found
        found |= children
        frontier.extend(children)
    return found


def _running(pids: set) -> set:
    """Those of ``pids`` still running (a zombie has exited; it only awaits its reaper)."""
    table = _process_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the process table in /proc")
def test_batch_workers_never_outlive_a_parent_killed_with_sigkill(tmp_path):
    # The workers (forks of wasmsbx itself; elsewhere of multiprocessing's fork server) must
    # notice the death of wasmsbx (which no signal handler sees) and exit, however busy
    # they are: each waits on a pipe only the parent holds open.
    n = 400
    out = tmp_path / "out.jsonl"
    with open(out, "wb") as sink:
        proc = _spawn(["run", LOOP, "count", "--batch", "-", "-j", "2"], subprocess.PIPE, sink)
        try:
            proc.stdin.write(b"[1000]\n" * n)
            proc.stdin.flush()  # and the pipe stays open: the batch never ends by itself
            deadline = time.monotonic() + 120
            while out.read_bytes().count(b"\n") < n:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the workers made no results"
                time.sleep(0.02)
            family = _descendants(proc.pid)
            assert len(family) >= 2, family  # the workers run
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + 60
            while _running(family) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _running(family), "processes outlived the batch that started them"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdin.close()
            proc.stderr.close()


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_batch_ctrl_c_saves_the_checkpoint_and_exits_130(tmp_path, jobs):
    n = 3000
    lines = b"".join(b"[%d]\n" % (300_000 + i) for i in range(n))
    src = tmp_path / "in.jsonl"
    src.write_bytes(lines)
    out = tmp_path / "out.jsonl"
    ckpt = tmp_path / "run.ckpt"
    common = ["run", LOOP, "count", "-j", jobs, "--checkpoint", ckpt]
    # Run 1 reads half the items from a pipe that stays open, so it cannot finish before
    # the Ctrl-C lands however slow this machine is; run 2 resumes from the whole file.
    with open(out, "ab") as sink:
        proc = _spawn([*common, "--batch", "-"], subprocess.PIPE, sink)
        proc.stdin.write(lines[: len(lines) // 2])
        proc.stdin.flush()
        _wait_for_checkpoint(ckpt, "next_line", 100, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)  # closes stdin: an ignored Ctrl-C would exit 0
    assert proc.returncode == 130
    assert f"interrupted; progress is saved in {ckpt}".encode() in err
    assert b"Traceback" not in err
    state = json.loads(ckpt.read_text())["state"]
    assert state["output_offset"] == out.stat().st_size  # saved exactly at the output's end
    # Only half the items ever reached the pipe: the run may have done all of them (next
    # line n/2 + 1, on a fast machine before the signal lands) but never more.
    assert state["next_line"] <= n // 2 + 1
    with open(out, "ab") as sink:
        proc = _spawn([*common, "--batch", src], subprocess.DEVNULL, sink)
        proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert [row["results"][0] for row in jsonl(out.read_text())] == [300_000 + i for i in range(n)]


def test_batch_checkpoint_refuses_other_module_or_truncated_output(cli, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("[1, 2]\n[3, 4]\n")
    ckpt = tmp_path / "c.json"
    box = Sandbox(ADD)
    # A checkpoint as an interrupted run would leave it: one item done, 60 bytes written.
    from wasmsbx.runner.checkpoint import Checkpoint, digest

    marker = Checkpoint(
        ckpt, {"kind": "batch", "module_sha256": digest(box.wasm), "function": "add"}
    )
    marker.save(
        {
            "input_offset": 7,
            "tail_start": 0,
            "tail_sha256": digest(b"[1, 2]\n"),
            "next_line": 2,
            "output_offset": 60,
            "output_file": None,
            "ok": 1,
            "failed": 0,
            "errors": {},
        }
    )
    r = cli("run", ADD, "div", "--batch", src, "--checkpoint", ckpt)
    assert r.code == 2 and "belongs to another run (function: 'add', now 'div')" in r.stderr
    other = tmp_path / "other.jsonl"
    other.write_text("[9, 9]\n[3, 4]\n")
    r = cli("run", ADD, "add", "--batch", other, "--checkpoint", ckpt)
    assert r.code == 2 and "is not the input of the interrupted run" in r.stderr
    # Output is a pipe here: resuming works but warns that results may repeat.
    r = cli("run", ADD, "add", "--batch", src, "--checkpoint", ckpt)
    assert r.code == 0, r
    assert [row["line"] for row in jsonl(r.stdout)] == [2]
    assert "may appear twice" in r.stderr
    assert "2 items, 2 ok" in r.stderr and not ckpt.exists()


def test_sink_resume_cuts_back_the_same_file_and_refuses_a_shorter_one(tmp_path):
    from wasmsbx.errors import UsageError

    path = tmp_path / "out"
    path.write_bytes(b"x" * 100)
    with open(path, "ab") as f:
        sink = Sink(f)
        state = {"output_offset": 40, "output_file": sink.file_id}
        assert sink.resume(state, "results") is None
        sink.write(b"yz")
        sink.flush()
    assert path.read_bytes() == b"x" * 40 + b"yz"
    path.write_bytes(b"short")
    with open(path, "ab") as f:
        sink = Sink(f)
        with pytest.raises(UsageError, match="truncated"):
            sink.resume({"output_offset": 40, "output_file": sink.file_id}, "results")


def test_checkpoint_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    from wasmsbx.runner.checkpoint import Checkpoint

    where = tmp_path / "ckpt"
    where.mkdir()
    marker = Checkpoint(where / "c.json", {"kind": "batch"})
    for i in range(20):
        marker.save({**_GOOD_STATE, "input_offset": 100, "next_line": i + 1})
    assert marker.load() == {**_GOOD_STATE, "input_offset": 100, "next_line": 20}
    assert sorted(p.name for p in where.iterdir()) == ["c.json"]
    (where / "c.json").write_text("{garbage")
    with pytest.raises(Exception, match="not a wasmsbx checkpoint"):
        marker.load()
    (where / "c.json").write_text("[" * 200_000 + "]" * 200_000)  # too deep for json
    with pytest.raises(errors.WasmsbxError, match="not a wasmsbx checkpoint"):
        marker.load()


def test_run_jsonl_over_api_with_source_and_sink(tmp_path):
    import io

    box = Sandbox(ADD)
    out = io.BytesIO()
    summary = batch.run_jsonl(box, "add", Source(io.BytesIO(b"[1, 2]\n[x]\n")), Sink(out))
    assert (summary.ok, summary.failed, summary.errors) == (1, 1, {"input": 1})
    assert [row["ok"] for row in jsonl(out.getvalue().decode())] == [True, False]


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_right_after_a_result_is_written_checkpoints_that_result(tmp_path, jobs):
    """Ctrl-C between writing a result and recording it: the checkpoint must still match
    the output exactly, so resuming repeats and loses nothing (it once repeated an item)."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(b"[%d, 1]\n" % i for i in range(40)))
    out = tmp_path / "out.jsonl"
    ckpt = tmp_path / "run.ckpt"

    class CtrlCAfterWrite(Sink):
        def write(self, data: bytes) -> None:
            super().write(data)
            if b'"line":10,' in data:
                os.kill(os.getpid(), signal.SIGINT)  # lands before the result is recorded

    box = Sandbox(ADD)
    with open(src, "rb") as f, open(out, "ab") as o, pytest.raises(KeyboardInterrupt):
        batch.run_jsonl(box, "add", Source(f), CtrlCAfterWrite(o), jobs=jobs, checkpoint=ckpt)
    state = json.loads(ckpt.read_text())["state"]
    assert state["output_offset"] == out.stat().st_size
    written = len(jsonl(out.read_text()))
    if jobs == 1:
        assert (state["next_line"], state["ok"]) == (11, 10)
    else:  # a worker's chunk is written, counted and checkpointed as one
        assert 10 <= state["ok"] == written == state["next_line"] - 1 <= 40
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with open(src, "rb") as f, open(out, "ab") as o:
        summary = batch.run_jsonl(box, "add", Source(f), Sink(o), jobs=jobs, checkpoint=ckpt)
    assert (summary.ok, summary.this_run) == (40, 40 - written)
    assert [row["results"][0] for row in jsonl(out.read_text())] == [i + 1 for i in range(40)]


def test_hold_interrupt_defers_one_ctrl_c_and_lets_a_second_through():
    from wasmsbx.runner.checkpoint import HoldInterrupt

    with HoldInterrupt() as guard:
        guard.hold()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler has run: the interrupt is held, not raised
        assert guard.pending
        with pytest.raises(KeyboardInterrupt):
            guard.release()
        guard.hold()
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        assert guard.forced
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------------------- progress


def stderr_on_a_terminal(argv: list, stdin, stdout) -> str:
    """Run wasmsbx with stderr on a pseudo-terminal; what it drew there."""
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="120")
    proc = subprocess.Popen(
        [sys.executable, "-m", "wasmsbx", *map(str, argv)],
        stdin=stdin,
        stdout=stdout,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        seen += data
    os.close(master)
    assert proc.wait() == 0, seen
    return seen.decode("utf-8", "replace")


@pytest.mark.slow
def test_batch_progress_on_a_terminal_only(tmp_path):
    src = tmp_path / "in.jsonl"
    write_lines(src, [[300_000]] * 3000)
    with open(tmp_path / "out", "wb") as out:
        text = stderr_on_a_terminal(["run", LOOP, "count", "--batch", src], None, out)
    assert "items" in text and "ETA" in text and "%" in text  # size known: bar and ETA
    assert "batch: 3,000 items, 3,000 ok" in text
    # Not on a terminal: no progress, just the summary.
    r = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "run", LOOP, "count", "--batch", src],
        capture_output=True,
    )
    assert r.stderr.decode().count("\n") == 1


@pytest.mark.slow
def test_stream_progress_on_a_terminal(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"abcdefgh" * (40 * 1024 * 1024 // 8))
    upper = EXAMPLES / "stream" / "upper.wat"
    with open(src, "rb") as stdin, open(tmp_path / "out", "wb") as out:
        text = stderr_on_a_terminal(["run", upper, "--stream", "--chunk-size", "4KiB"], stdin, out)
    assert "MiB in" in text and "/s" in text and "ETA" in text
    assert (tmp_path / "out").stat().st_size == src.stat().st_size


def test_batch_and_stream_in_the_audit_log(cli, tmp_path):
    log = tmp_path / "audit.jsonl"
    r = cli("run", ADD, "div", "--batch", "-", "--audit-log", log, input=b"[4, 2]\n[1, 0]\n")
    assert r.code == 122
    r = cli("run", EXAMPLES / "stream" / "upper.wat", "--stream", "--audit-log", log, input=b"ab")
    assert r.code == 0 and r.stdout == "AB"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names == ["start", "sandbox", "batch", "exit", "start", "sandbox", "stream", "exit"]
    assert events[2]["failed"] == 1 and events[2]["errors"] == {"trap": 1}
    assert events[3]["outcome"] == "batch_failures" and events[3]["exit_code"] == 122
    assert events[6]["bytes_in"] == 2 and events[7]["outcome"] == "ok"


@pytest.mark.parametrize("jobs", [1, 2])
def test_ids_a_caller_gives_that_json_or_a_worker_cannot_take_are_bad_items(jobs):
    """Round 40: an id of 10**5000 (more digits than Python prints), bytes, an object or
    a lambda (which a worker process cannot be sent) ended the whole batch with a raw
    ValueError, TypeError or PicklingError. Each is that item's input error now."""
    box = Sandbox(ADD, defaults())
    items = [
        {"args": [1, 2], "id": 10**5000},
        {"args": [1, 2], "id": b"x"},
        {"args": [1, 2], "id": object()},
        {"args": [1, 2], "id": lambda: 1},
        {"args": [1, 2], "id": 2**4000},
        [2, 3],
    ]
    results = list(box.batch("add", items, jobs=jobs))
    # (an id of more than 4,300 digits is refused on every Python: 3.9 prints it)
    assert [r.values for r in results] == [None, None, None, None, [3], [5]]
    assert all(r.error["kind"] == "input" for r in results[:4] if r.error)
    if jobs == 1:  # (in this process, a lambda is not JSON: refused as the others)
        assert results[3].error is not None
    assert [r.id for r in results[1:4]] == [2, 3, 4] and results[4].id == 2**4000


def test_an_id_of_exactly_4300_digits_is_written_back(cli, tmp_path):
    """The id bound said "at most 4,300 digits" but counted bits: ids of 4,300 digits
    above 2**14284 were refused. The bound is now 10**4300 itself."""
    module = ADD
    largest, over = "9" * 4300, "1" + "0" * 4300
    lines = f'{{"args": [1, 2], "id": {largest}}}\n{{"args": [1, 2], "id": -{largest}}}\n'
    lines += f'{{"args": [1, 2], "id": {over}}}\n'
    result = cli("run", module, "add", "--batch", "-", input=lines.encode())
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row.get("results") for row in rows] == [[3], [3], None], result.stderr
    assert rows[0]["id"] == int(largest) and rows[1]["id"] == -int(largest)
    assert "4,300 digits" in rows[2]["error"]["message"]


class _Unloadable:
    """Pickles as a call that fails when read back (as a class a worker's __main__ lacks
    fails: one defined under python -c or in a notebook)."""

    def __reduce__(self):
        return (int, ("not a number",))


def test_an_item_a_worker_cannot_read_back_is_that_items_error():
    """Round 41: an item that pickles but cannot be unpickled in the worker killed the
    worker's reader thread, and the batch waited for ever. Items go pickled one by one:
    that item is an input error and the batch goes on."""
    box = Sandbox(ADD, defaults())
    items = [{"args": [1, 2], "id": _Unloadable()}, [3, 4], {"args": [5, 6], "id": "x"}]
    results = list(box.batch("add", items, jobs=2))
    assert [r.values for r in results] == [None, [7], [11]]
    assert results[0].error["kind"] == "input"
    assert "cannot be read in a worker process" in results[0].error["message"]
    assert results[2].id == "x"


def _run_into(args: list, stdout_path, stdin_path=None) -> subprocess.CompletedProcess:
    """The CLI with its standard output appended to ``stdout_path`` (``>>``)."""
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        with open(stdout_path, "ab") as sink:
            return subprocess.run(
                [sys.executable, "-m", "wasmsbx", *map(str, args)],
                stdin=stdin,
                stdout=sink,
                stderr=subprocess.PIPE,
                timeout=120,
            )
    finally:
        if stdin_path:
            stdin.close()


def test_results_appended_to_an_input_are_refused(tmp_path):
    """Red team round 52: ``--batch L.jsonl >> L.jsonl`` read its own results back as
    items and never ended (55 MB in 5 s), as did ``--stream < F >> F`` (4 GB). Standard
    output that is the batch input, standard input, the module, the policy or the
    checkpoint is refused before anything runs (exit 105), and the file is left as it
    was."""
    items = tmp_path / "in.jsonl"
    items.write_bytes(b"".join(b"[%d, 1]\n" % i for i in range(200)))
    module = tmp_path / "add.wat"
    module.write_bytes(ADD.read_bytes())
    policy = tmp_path / "p.toml"
    policy.write_text('[limits]\ntimeout = "5s"\n')
    ckpt = tmp_path / "run.ckpt"
    upper = EXAMPLES / "stream" / "upper.wat"
    text = tmp_path / "text.txt"
    text.write_bytes(b"shout\n")
    cases = [
        (["run", module, "add", "--batch", items], items, None, "the batch input"),
        (["run", module, "add", "--batch", "-"], items, items, "standard input"),
        (["run", upper, "--stream"], text, text, "standard input"),
        (["run", module, "add", "--batch", items], module, None, "the module"),
        (["run", module, "add", "--batch", items, "--policy", policy], policy, None, "the policy"),
        (["run", module, "add", "--batch", items, "--checkpoint", ckpt], ckpt, None,
         "the checkpoint"),
    ]  # fmt: skip
    for args, out, stdin, what in cases:
        before = out.read_bytes() if out.exists() else None
        r = _run_into(args, out, stdin)
        err = r.stderr.decode()
        assert r.returncode == 105, (args, err)
        assert what in err and "nothing was run" in err and "Traceback" not in err, err
        assert (out.read_bytes() if out.exists() else None) in (before, b""), args
    r = _run_into(["run", module, "add", "--batch", items], tmp_path / "out.jsonl")
    assert r.returncode == 0 and len(jsonl((tmp_path / "out.jsonl").read_text())) == 200


def _run_with(args: list, cwd, stdin=None, stdout=None, stderr=None) -> tuple:
    """(exit code, stderr text) of the CLI with its standard streams opened as given:
    (path, mode) pairs, else /dev/null (stderr: a pipe)."""
    opened = []

    def stream(spec):
        if spec is None:
            return subprocess.DEVNULL
        opened.append(open(*spec))  # noqa: SIM115 - closed below
        return opened[-1]

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "wasmsbx", *map(str, args)],
            cwd=cwd,
            stdin=stream(stdin),
            stdout=stream(stdout),
            stderr=stream(stderr) if stderr else subprocess.PIPE,
            timeout=120,
        )
    finally:
        for f in opened:
            f.close()
    err = proc.stderr.decode() if proc.stderr else ""
    return proc.returncode, err


ECHO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "[1]\\n")
  (func (export "f") (param i32) (result i32)
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 4))
    (drop (call $w (local.get 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.get 0)))"""


def test_nothing_the_run_writes_is_what_it_reads_or_keeps(tmp_path):
    """Red team round 53, past round 52's check of standard output: a discovered
    sandbox.toml whose stdio.stdout named the batch input emptied it (exit 0); one naming
    the --audit-log replaced the log with the guest's bytes; `2>> input` made a batch
    that never ended (the guest's stdout goes to stderr in a batch); --audit-log was the
    stream's input through stdin; a new --checkpoint and --audit-log of one name; plain
    `run m.wat ... >> m.wat` spoilt the module. Each is refused before anything runs
    (exit 105) and the files are as they were."""
    work = tmp_path
    (work / "t.wat").write_text(ECHO_WAT)
    items = work / "items.jsonl"
    items.write_text("[1]\n[2]\n")
    log = work / "audit.jsonl"
    log.write_text('{"old": 1}\n')
    upper = EXAMPLES / "stream" / "upper.wat"
    cases = [
        # (sandbox.toml, args, stdin, stdout, stderr, the file that must not change)
        ('[stdio]\nstdout = "items.jsonl"\n', ["run", "t.wat", "f", "--batch", "items.jsonl"],
         None, None, None, items),
        ('[stdio]\nstderr = "items.jsonl"\n', ["run", "t.wat", "f", "--batch", "-"],
         (items, "rb"), None, None, items),
        ('[stdio]\nstdout = "audit.jsonl"\n', ["run", "t.wat", "f", "1",
         "--audit-log", "audit.jsonl"], None, None, None, log),
        (None, ["run", "t.wat", "f", "--batch", "items.jsonl"], None, None, (items, "ab"), items),
        (None, ["run", upper, "--stream", "--audit-log", "items.jsonl"], (items, "rb"), None,
         None, items),
        (None, ["run", "t.wat", "f", "--batch", "-", "--audit-log", "items.jsonl"],
         (items, "rb"), None, None, items),
        (None, ["run", "t.wat", "f", "2"], None, (work / "t.wat", "ab"), None, work / "t.wat"),
        (None, ["run", "t.wat", "f", "--batch", "items.jsonl", "--checkpoint", "items.jsonl"],
         None, None, None, items),
    ]  # fmt: skip
    for policy, args, stdin, stdout, stderr, kept in cases:
        if policy is None:
            (work / "sandbox.toml").unlink(missing_ok=True)
        else:
            (work / "sandbox.toml").write_text(policy)
        before = kept.read_bytes()
        code, err = _run_with(args, work, stdin, stdout, stderr)
        if stderr is not None:
            err = "(stderr is the file)"
        assert code == 105, (args, policy, err)
        after = kept.read_bytes()
        if kept == log:  # (the run's own log records it: start, error, exit; no guest bytes)
            assert after.startswith(before) and b"[1]" not in after, after
        elif stderr is not None:  # (the error line goes where stderr goes; nothing else)
            assert after.startswith(before) and after.count(b"\n") == 4, after
        else:
            assert after == before, (args, policy)
        assert "Traceback" not in err
    (work / "sandbox.toml").unlink(missing_ok=True)
    code, err = _run_with(["run", "t.wat", "f", "--batch", "items.jsonl", "--checkpoint",
                           "new.ckpt", "--audit-log", "new.ckpt"], work)  # fmt: skip
    assert code == 105 and "is the checkpoint" in err and not (work / "new.ckpt").exists(), err
    items.write_text("[1]\n[2]\n")  # (the 2>> case left its error line there)
    code, err = _run_with(["run", "t.wat", "f", "--batch", "items.jsonl"], work, None,
                          (work / "out.jsonl", "ab"), None)  # fmt: skip
    assert code == 0 and len(jsonl((work / "out.jsonl").read_text())) == 2, err


def test_crossed_files_in_other_spellings_and_commands(tmp_path):
    """Red team round 54, on the check above: a module spelled `t.wat/.` (the loaders
    drop the `/.`), a guest stdout of `/proc/self/fd/5` (the batch input's number once
    opened: emptied it), an audit log that is the guest's stdin file (its first line
    went in before the refusal), `watch` and `bench` appending to the module (watch
    looped, 75 runs in 8 s); and no refusal for /dev/null named on both sides."""
    work = tmp_path
    (work / "t.wat").write_text(ECHO_WAT)
    items = work / "items.jsonl"
    items.write_text("[1]\n[2]\n")
    (work / "in.txt").write_text("data\n")
    (work / "p5.toml").write_text('[stdio]\nstdout = "/proc/self/fd/5"\n')
    (work / "pin.toml").write_text('[stdio]\nstdin = "in.txt"\n')
    (work / "pnull.toml").write_text('[stdio]\nstdin = "/dev/null"\nstdout = "/dev/null"\n')
    module = work / "t.wat"
    cases = [
        (["run", "t.wat/.", "f", "3"], (module, "ab"), module),
        (["run", "t.wat", "f", "--batch", "items.jsonl", "--policy", "p5.toml"], None, items),
        (["run", "t.wat", "f", "1", "--policy", "pin.toml", "--audit-log", "in.txt"], None,
         work / "in.txt"),
        (["watch", "t.wat", "f", "1"], (module, "ab"), module),
        (["bench", "t.wat", "f", "1", "-n", "3", "--warmup", "0", "--phase", "call"],
         (module, "ab"), module),
    ]  # fmt: skip
    for args, stdout, kept in cases:
        before = kept.read_bytes()
        code, err = _run_with(args, work, None, stdout, None)
        assert code == 105, (args, err)
        assert kept.read_bytes() == before and "Traceback" not in err, (args, err)
    code, err = _run_with(["run", "t.wat", "f", "1", "--policy", "pnull.toml",
                           "--audit-log", "/dev/null"], work)  # fmt: skip
    assert code == 0, err


def test_what_a_run_keeps_has_one_name_while_the_guest_may_write(tmp_path):
    """Red team 130: a policy hard-linked into the folder granted read-write (as a
    tarball ships one) was rewritten by the guest through its other name, and the next
    run granted what the guest chose. While a folder is granted read-write, the policy
    (given or discovered), the batch input and the checkpoint may have one name only;
    read-only grants, and no grants, leave them be."""
    work = tmp_path
    (work / "t.wat").write_text(ECHO_WAT)
    out = work / "out"
    out.mkdir()
    (work / "p.toml").write_text('[limits]\ntimeout = "5s"\n')
    os.link(work / "p.toml", out / "p.toml")
    probe = os.path.join(os.path.dirname(__file__), "guests", "fsprobe.wasm")
    shutil.copy(probe, work / "probe.wasm")
    run = ["run", "probe.wasm", "--policy", "p.toml", "--dir", "out::/o", "--"]
    code, err = _run_with([*run, "append", "/o/p.toml", "[filesystem]"], work)
    assert code == 105 and "the policy (p.toml) has 2 names (hard links)" in err, err
    assert (work / "p.toml").read_text() == '[limits]\ntimeout = "5s"\n'
    for args in (["watch", "t.wat", "f", "1"], ["bench", "t.wat", "f", "1", "-n", "3"]):
        code, err = _run_with([*args, "--policy", "p.toml", "--dir", "out"], work)
        assert code == 105 and "has 2 names" in err, (args, err)
    code, err = _run_with(["run", "t.wat", "f", "1", "--policy", "p.toml", "--dir-ro", "out"],
                          work)  # fmt: skip
    assert code == 0, err
    code, err = _run_with(["run", "t.wat", "f", "1", "--policy", "p.toml"], work)
    assert code == 0, err
    # a discovered sandbox.toml; the batch input; the checkpoint
    os.link(work / "p.toml", work / "sandbox.toml")
    code, err = _run_with(["run", "t.wat", "f", "1", "--dir", "out"], work)
    assert code == 105 and "sandbox.toml) has 3 names" in err, err
    os.unlink(work / "sandbox.toml")
    (work / "items.jsonl").write_text("[1]\n")
    os.link(work / "items.jsonl", out / "items.jsonl")
    code, err = _run_with(["run", "t.wat", "f", "--batch", "items.jsonl", "--dir", "out"], work)
    assert code == 105 and "the batch input (items.jsonl) has 2 names" in err, err
    (work / "run.ckpt").write_text("")
    os.link(work / "run.ckpt", out / "run.ckpt")
    code, err = _run_with(["run", "t.wat", "f", "--batch", "-", "--checkpoint", "run.ckpt",
                           "--dir", "out"], work)  # fmt: skip
    assert code == 105 and "the checkpoint (run.ckpt) has 2 names" in err, err
    # standard input opened by a name removed since, its other name in the grant (red
    # team 131: the stat of "... (deleted)" failed, and the check passed)
    with open(work / "items.jsonl", "rb") as held:
        os.unlink(work / "items.jsonl")
        proc = subprocess.run(
            [sys.executable, "-m", "wasmsbx", "run", "t.wat", "f", "--batch", "-", "--dir",
             "out"], cwd=work, stdin=held, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 105 and "whose name was removed" in proc.stderr, proc.stderr


def test_what_a_run_keeps_never_lies_where_the_guest_writes(tmp_path):
    """Red team round 55: a guest granted the folder of the --audit-log (read-write)
    erased its record and wrote one of its own; the batch input and the checkpoint there
    could be changed under the run the same way. Refused (exit 105) before anything runs;
    a read-only grant is fine. And a guest stdout naming a descriptor not open, however
    spelled (round 55: //proc/self/fd/5, a link to /proc/self/fd), is refused."""
    work = tmp_path
    (work / "t.wat").write_text(ECHO_WAT)
    granted = work / "d"
    granted.mkdir()
    (granted / "items.jsonl").write_text("[1]\n")
    (granted / "log.jsonl").write_text('{"old": 1}\n')
    cases = [
        ["--batch", "d/items.jsonl"],
        ["--batch", "-", "--audit-log", "d/log.jsonl"],
        ["--batch", "-", "--checkpoint", "d/run.ckpt"],
    ]
    # (stdin from a file there, as --batch FILE; round 56)
    code, err = _run_with(["run", "t.wat", "f", "--batch", "-", "--dir", "d"], work,
                          (granted / "items.jsonl", "rb"))  # fmt: skip
    assert code == 105 and "standard input" in err and "guest can write" in err, err
    for extra in cases:
        before = {p.name: p.read_bytes() for p in granted.iterdir()}
        code, err = _run_with(["run", "t.wat", "f", *extra, "--dir", "d"], work)
        assert code == 105 and "folder the guest can write" in err, (extra, err)
        assert {p.name: p.read_bytes() for p in granted.iterdir()} == before, extra
    code, err = _run_with(["run", "t.wat", "f", "--batch", "d/items.jsonl", "--dir-ro", "d"],
                          work, None, (work / "out.jsonl", "ab"), None)  # fmt: skip
    assert code == 0, err
    # A policy the guest could rewrite for the next run (more grants, higher limits)
    (granted / "p.toml").write_text('[limits]\ntimeout = "5s"\n')
    code, err = _run_with(["run", "t.wat", "f", "1", "--policy", "d/p.toml", "--dir", "d"], work)
    assert code == 105 and "the policy (d/p.toml) lies in a folder" in err, err
    code, err = _run_with(["run", "t.wat", "f", "1", "--policy", "d/p.toml", "--dir-ro", "d"],
                          work)  # fmt: skip
    assert code == 0, err
    for args in (["watch", "t.wat", "f", "1"], ["bench", "t.wat", "f", "1", "-n", "3"]):
        code, err = _run_with([*args, "--policy", "d/p.toml", "--dir", "d"], work)
        assert code == 105 and "lies in a folder the guest can write" in err, (args, err)
    # A discovered sandbox.toml too (round 58): `--dir .` let the guest rewrite the
    # policy every later run in that folder discovers (its limits up to the defaults)
    (granted / "sandbox.toml").write_text('[limits]\ntimeout = "5s"\n')
    probe = os.path.join(os.path.dirname(__file__), "guests", "fsprobe.wasm")
    shutil.copy(probe, granted / "probe.wasm")
    module = str(work / "t.wat")
    for args in (["run", module, "f", "1"], ["watch", module, "f", "1"],
                 ["bench", module, "f", "1", "-n", "3"],
                 ["run", "probe.wasm", "--", "append", "sandbox.toml", "#x"]):  # fmt: skip
        code, err = _run_with([args[0], "--dir", ".", *args[1:]], granted)
        assert code == 105 and "the policy" in err and "guest can write" in err, (args, err)
    assert (granted / "sandbox.toml").read_text() == '[limits]\ntimeout = "5s"\n'
    code, err = _run_with(["run", module, "f", "1", "--dir-ro", "."], granted)
    assert code == 0, err
    os.symlink("/proc/self/fd", work / "fds")
    items = work / "items.jsonl"
    for target in ("//proc/self/fd/5", "/proc/self/root/dev/fd/5", str(work / "fds" / "5")):
        items.write_text("[1]\n[2]\n")
        (work / "p.toml").write_text(f'[stdio]\nstdout = "{target}"\n')
        code, err = _run_with(
            ["run", "t.wat", "f", "--batch", "items.jsonl", "--policy", "p.toml"], work
        )
        assert code == 105 and "not open" in err, (target, err)
        assert items.read_text() == "[1]\n[2]\n", target


_GOOD_STATE = {
    "input_offset": 6,
    "tail_start": 0,
    "tail_sha256": "0" * 64,
    "next_line": 2,
    "output_offset": 0,
}
DAMAGED_STATES = {
    "empty": {},
    "a list": [1],
    "a text offset": {**_GOOD_STATE, "tail_start": "x"},
    "negative offsets": {**_GOOD_STATE, "tail_start": -5, "input_offset": -1},
    "a huge last item": {**_GOOD_STATE, "input_offset": 10**13},
    "a bool offset": {**_GOOD_STATE, "output_offset": True},
    "a short digest": {**_GOOD_STATE, "tail_sha256": "x"},
    "line zero": {**_GOOD_STATE, "next_line": 0},
    "odd counts": {**_GOOD_STATE, "errors": {"trap": "many"}},
    "odd output file": {**_GOOD_STATE, "output_file": "x"},
    # red team 107
    "no next line": {k: v for k, v in _GOOD_STATE.items() if k != "next_line"},
    "a line far past the input": {**_GOOD_STATE, "next_line": 10**20},
    "escapes in an error kind": {**_GOOD_STATE, "failed": 5, "errors": {"\x1b]0;PWNED\x07": 5}},
    "errors not adding up": {**_GOOD_STATE, "failed": 1, "errors": {"trap": 5}},
    # red team 108: past what a file offset can be (EINVAL, or no C integer at all)
    "an offset of 2**62": {**_GOOD_STATE, "tail_start": 2**62, "input_offset": 2**62 + 5},
    "an offset of 10**30": {**_GOOD_STATE, "tail_start": 10**30, "input_offset": 10**30 + 5},
}


@pytest.mark.parametrize(
    "mode, damage",
    [
        (mode, damage)
        for mode in ("batch", "stream")
        for damage in sorted(DAMAGED_STATES)
        # (a stream's state has no lines and no counts)
        if mode == "batch" or damage not in ("no next line", "errors not adding up")
    ],
)
def test_a_damaged_checkpoint_is_a_usage_error(cli, isolated, damage, mode):
    """Red team 106: a checkpoint of the right version and identity whose state was
    damaged ended in an internal error (a missing field, a text or negative offset) or
    read terabytes of input (an offset of 10**13)."""
    from wasmsbx import Sandbox
    from wasmsbx.runner import checkpoint as cp

    (isolated / "in.jsonl").write_text("[1,2]\n[3,4]\n")
    if mode == "batch":
        module, func, args = EXAMPLES / "add.wat", "add", ["add", "--batch", "in.jsonl"]
    else:
        module, func, args = EXAMPLES / "stream" / "upper.wat", "process", ["--stream"]
    identity = {"kind": mode, "module_sha256": cp.module_sha256(Sandbox(module)), "function": func}
    if mode == "stream":
        identity["chunk_size"] = 65536
    state = DAMAGED_STATES[damage]
    (isolated / "cp.json").write_text(
        json.dumps({"version": cp.VERSION, "identity": identity, "state": state})
    )
    res = cli("run", module, *args, "--checkpoint", "cp.json", input=b"abc\n")
    assert res.code == 2, res
    assert "checkpoint" in res.stderr and ("damaged" in res.stderr or "not a wasmsbx" in res.stderr)
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr


def test_a_checkpoints_longest_last_item_is_a_batch_line():
    from wasmsbx.runner import batch, checkpoint

    assert checkpoint.MAX_TAIL == batch.MAX_LINE + 1


def test_sigterm_waits_for_a_record_as_ctrl_c_does():
    """Red team 108: the command line stops on SIGTERM as on Ctrl-C, but only Ctrl-C was
    held between a stream's write and its record: in 7 of 25 SIGTERMs the checkpoint
    counted a chunk it had not recorded, and resuming wrote it twice."""
    import signal

    from wasmsbx.backends.deadline import on_interrupt
    from wasmsbx.runner.checkpoint import HoldInterrupt

    before = signal.signal(signal.SIGTERM, on_interrupt), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with HoldInterrupt() as guard:
            guard.hold()
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # (handled at the next bytecode)
                written = True  # (the record that goes with the write: made)
            except KeyboardInterrupt:
                written = False
            with pytest.raises(KeyboardInterrupt):
                guard.release()
        assert written and not guard.forced
        assert signal.getsignal(signal.SIGTERM) is on_interrupt  # (given back)
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])


@pytest.mark.slow
def test_sigterm_stops_a_checkpointed_stream_as_ctrl_c_does(tmp_path):
    """Red team 108, end to end: SIGTERM into `run --stream --checkpoint` (upper.wat maps
    n bytes to n bytes) ended with exit 112 and a false "timeout ... blocked in a host
    call" in 16 of 25 rounds, and once saved a checkpoint one chunk ahead of its output.
    Each round now ends with 130 and a checkpoint whose offsets agree."""
    import random

    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        for _ in range(400):
            f.write(os.urandom(75_000).hex().encode() + b"\n")  # (60 MB of text)
    upper = EXAMPLES / "stream" / "upper.wat"
    for _ in range(6):
        ckpt, out = tmp_path / "s.ckpt", tmp_path / "out.txt"
        for leftover in (ckpt, out):
            if leftover.exists():
                leftover.unlink()
        with open(big, "rb") as stdin, open(out, "ab") as stdout:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wasmsbx", "run", upper, "--stream",
                 "--chunk-size", "64KiB", "--checkpoint", ckpt],
                stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(0.4 + random.random() * 0.6)
            proc.send_signal(signal.SIGTERM)
            err = proc.communicate(timeout=120)[1].decode()
        if proc.returncode == 0:
            continue  # (done before the signal: nothing to check)
        assert proc.returncode == 130, err
        if ckpt.exists():
            state = json.loads(ckpt.read_text())["state"]
            assert state["input_offset"] == state["output_offset"], state


def test_an_interrupt_before_any_checkpoint_says_nothing_was_saved(tmp_path):
    """Red team 108: interrupted before its first save, a run still said "progress is
    saved in s.ckpt", where no file was."""
    from wasmsbx.cli.commands.run_batch import _interrupted

    ckpt = tmp_path / "run.ckpt"
    before = _interrupted({"checkpoint": str(ckpt)})
    assert "before any progress was saved" in before.message, before.message
    ckpt.write_text("{}")
    after = _interrupted({"checkpoint": str(ckpt)})
    assert after.message == f"interrupted; progress is saved in {ckpt}"
    assert after.exit_code == before.exit_code == 130


@pytest.mark.parametrize("kind", ["batch", "stream"])
def test_an_interrupt_while_the_done_checkpoint_is_removed_is_dropped(tmp_path, monkeypatch, kind):
    """Red team 109: a run removed its checkpoint after its Ctrl-C handling was given
    back, so an interrupt landing then exited 130 ("interrupted", progress saved) with
    the checkpoint already gone, and the rerun that asked for wrote everything again. The
    run is done once its checkpoint is removed: an interrupt then is dropped."""
    from wasmsbx.runner import checkpoint, stream

    remove = checkpoint.Checkpoint.remove

    def interrupted_remove(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # (handled at the next bytecode)
        remove(self)

    monkeypatch.setattr(checkpoint.Checkpoint, "remove", interrupted_remove)
    ckpt = tmp_path / "run.ckpt"
    out = tmp_path / "out"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with open(out, "ab") as o:
        if kind == "batch":
            src = io.BytesIO(b"".join(b"[%d, 1]\n" % i for i in range(5)))
            box = Sandbox(ADD)
            summary = batch.run_jsonl(box, "add", Source(src), Sink(o), checkpoint=ckpt)
            assert summary.ok == 5
        else:
            box = Sandbox(EXAMPLES / "stream" / "upper.wat")
            src = io.BytesIO(b"abc" * 1000)
            stream.run_stream(box, "process", Source(src), Sink(o), checkpoint=ckpt)
    assert not ckpt.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_on_the_command_line_a_first_interrupt_after_a_finished_run_is_dropped(tmp_path):
    """Red team 110: after done() the command line still writes its summary, and a
    Ctrl-C or SIGTERM landing then exited 130 "interrupted" with every result written and
    the checkpoint gone (5 to 9 runs in 10 with the signal sent as the summary appeared).
    The first is dropped now; a second still stops the process."""
    from wasmsbx.backends.deadline import KEEPER, on_interrupt
    from wasmsbx.runner.checkpoint import Checkpoint, HoldInterrupt

    marker = Checkpoint(tmp_path / "run.ckpt", {"kind": "test"})
    marker.save({"x": 1})
    KEEPER.settle()  # (what earlier tests left in this process's keeper)
    KEEPER.drop_signals = 0
    before = signal.signal(signal.SIGINT, on_interrupt), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, on_interrupt)
    try:
        with HoldInterrupt() as guard:
            guard.done(marker)
        assert not (tmp_path / "run.ckpt").exists()
        os.kill(os.getpid(), signal.SIGTERM)  # (handled at the next bytecode: dropped)
        time.sleep(0.01)
        assert KEEPER.drop_signals == 1  # (its thread passes over the one dropped here)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
        KEEPER.drop_signals = 0
        KEEPER.settle()


def test_the_keeper_passes_over_the_signal_a_finished_run_drops():
    """Red team 112: the dropped signal had reached the deadline keeper's thread too,
    which hard-stopped the process 5 s later (exit 130, "interrupted") when its summary
    could not be written at once. Forgiven, it is passed over whether the keeper's thread
    had read it already or reads it later."""
    from wasmsbx.backends.deadline import Keeper

    keeper = Keeper()
    keeper.wake_r, keeper.wake_w = os.pipe()
    try:
        keeper.forgive()  # (before the thread reads it)
        os.write(keeper.wake_w, bytes([signal.SIGTERM]))
        keeper._signals()
        assert keeper.signalled is None and keeper.drop_signals == 0
        os.write(keeper.wake_w, bytes([signal.SIGINT]))
        keeper._signals()
        assert keeper.signalled is not None
        keeper.forgive()  # (after it was read)
        assert keeper.signalled is None and keeper.drop_signals == 0
        os.write(keeper.wake_w, bytes([signal.SIGINT]))
        keeper._signals()
        assert keeper.signalled is not None  # (a second one stops as before)
    finally:
        os.close(keeper.wake_r)
        os.close(keeper.wake_w)


def _interrupt() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # (handled at the next bytecode: held)
    time.sleep(0.01)


@contextlib.contextmanager
def _finishing_run(tmp_path, interrupt_on_remove: bool):
    """A saved checkpoint (whose remove() sends SIGINT first, if ``interrupt_on_remove``)
    with the deadline keeper's SIGINT handler installed and settled; all undone after."""
    from wasmsbx.backends.deadline import KEEPER, on_interrupt
    from wasmsbx.runner import checkpoint

    class Interrupted(checkpoint.Checkpoint):
        def remove(self) -> None:
            if interrupt_on_remove:
                _interrupt()
            super().remove()

    marker = Interrupted(tmp_path / "run.ckpt", {"kind": "test"})
    marker.save({"x": 1})
    KEEPER.settle()
    KEEPER.drop_signals = 0
    before = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield marker
    finally:
        signal.signal(signal.SIGINT, before)
        KEEPER.drop_signals = 0
        KEEPER.settle()


@pytest.mark.parametrize("when", ["as done() removes it", "after done(), in the guard"])
def test_an_interrupt_dropped_as_a_run_finishes_is_the_first(tmp_path, when):
    """The README's "done is done": the first interrupt after a finished run is ignored, a
    second stops it. One that landed while done() removed the checkpoint is that first
    (without this, two more were needed); so is one that landed after done() but before
    the guard's ``with`` ended (red team 114: batch runs its hard-stop guard's exit
    there; it was only held, two more were needed, and the deadline keeper's hard stop
    for it was never forgiven)."""
    from wasmsbx.backends.deadline import KEEPER
    from wasmsbx.runner import checkpoint

    with _finishing_run(tmp_path, when == "as done() removes it") as marker:
        with checkpoint.HoldInterrupt() as guard:
            guard.done(marker)
            if when != "as done() removes it":
                _interrupt()
        assert not (tmp_path / "run.ckpt").exists()
        assert guard.dropped and not guard.pending
        time.sleep(0.2)  # (the keeper's thread reads the signal too)
        assert KEEPER.signalled is None, "forgiven: no hard stop for the dropped one"
        with pytest.raises(KeyboardInterrupt):
            _interrupt()


def test_a_second_interrupt_as_a_run_finishes_stops_it(tmp_path):
    """The first interrupt as a finished run removes its checkpoint is dropped; a second
    before the guard's ``with`` ends stops the process (both had been dropped: done()
    dropped the first, and the guard's exit the second)."""
    from wasmsbx.runner import checkpoint

    with _finishing_run(tmp_path, True) as marker:
        with pytest.raises(KeyboardInterrupt), checkpoint.HoldInterrupt() as guard:
            guard.done(marker)
            _interrupt()
        assert guard.dropped


@pytest.mark.parametrize(
    "line",
    ["[40,2]".encode("utf-16-be"), "[40,2]".encode("utf-32-be"), "[40,2]".encode("utf-16")],
    ids=["utf-16-be", "utf-32-be", "utf-16-bom"],
)
def test_a_line_that_is_not_utf8_is_an_item_error_not_a_call(line):
    """json.loads of bytes guessed UTF-16 or UTF-32 from where the NULs fell: a line of
    "[40,2]" in UTF-16 ran add(40, 2) (red team 121)."""
    from wasmsbx.runner.batch import BadItem, parse_item

    with pytest.raises(BadItem, match="not (JSON|UTF-8)"):
        parse_item(line)


def test_a_utf8_line_with_a_byte_order_mark_is_read():
    from wasmsbx.runner.batch import BadItem, parse_item

    assert parse_item(b"\xef\xbb\xbf[1,2]") == ([1, 2], None)
    assert parse_item("\ufeff[1,2]") == ([1, 2], None)  # (a line given as text too)
    assert parse_item('{"args": ["é"], "id": "ü"}'.encode()) == (["é"], "ü")
    with pytest.raises(BadItem, match=r"not UTF-8 text \(byte 3: invalid start byte\)"):
        parse_item(b"[1\xff]")
