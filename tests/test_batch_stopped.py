"""A batch worker whose call is stuck past its deadline hands back its chunk's progress.

A guest blocked in a host call (a WASI sleep, a pipe that never delivers) cannot be
interrupted in process: the worker's hard stop ends the worker. It used to send the
timeout as the chunk's reply, which ended the whole batch. It now sends the results it
made and the stuck item's timeout (``worker_stopped``), and the parent sends every item
no reply answered to a new worker (``Worker.resubmit``). The behaviour end to end is in
test_batch_workers.py; these check the bookkeeping with stand-ins, without timing.
"""

from __future__ import annotations

import time

import pytest

from wasmsbx import errors
from wasmsbx.runner import batch, pool


def _timeout() -> errors.TimeoutExceeded:
    return errors.TimeoutExceeded("timeout: f still running after 1.00 s (blocked in a host call)")


class _StopsAt:
    """A caller whose call of item ``line`` is where the hard stop comes: it calls
    worker_stopped from inside the call, as the keeper's thread does meanwhile."""

    def __init__(self, line: int, error: errors.WasmsbxError) -> None:
        self.line, self.error, self.reply = line, error, None

    def run(self, line, payload):
        if line == self.line:
            self.reply = batch.worker_stopped(self.error)
        return batch.BatchResult(line, line, [line], None, 0.0)

    run_encoded = None


@pytest.mark.parametrize("encoded", [False, True])
def test_the_stop_sends_what_was_made_and_the_stuck_items_timeout(monkeypatch, encoded):
    """Items 1-10 go out as parts (REPLY_BYTES), 11-13 are made and held: the stop at
    14 sends 11-13 and 14's timeout, counted 4; the parent has then had 14 items."""
    monkeypatch.setattr(batch, "REPLY_BYTES", 640)  # (ten 64-byte results, or lines)
    monkeypatch.setattr(batch, "_encoded_bytes", lambda result, room: 64)
    monkeypatch.setattr(batch, "_result_bytes", lambda result, room: 64)
    caller = _StopsAt(14, _timeout())
    chunk = [(i, b'{"args": [], "id": "n%d"}' % i) for i in range(1, 21)]
    replies = list(batch.worker_chunk(caller, chunk, encoded))
    sent = sum(count for _, _, count, _ in replies[:-1])
    assert sent == 10
    kind, results, count, seconds = caller.reply
    assert kind == "stopped" and count == 4 and seconds >= 0
    if encoded:
        lines = results.data.decode().splitlines()
        assert results.count == 4 and results.kinds == ("limit:timeout",)
        assert [batch.json.loads(x)["line"] for x in lines] == [11, 12, 13, 14]
        stuck = batch.json.loads(lines[-1])
        assert stuck["id"] == "n14" and stuck["error"]["limit"] == "timeout"
    else:
        assert [r.line for r in results] == [11, 12, 13, 14]
        stuck = results[-1]
        assert stuck.id == "n14" and stuck.error["limit"] == "timeout"
        assert "blocked in a host call" in stuck.error["message"]


@pytest.fixture(autouse=True)
def _new_worker(monkeypatch):
    """Each test is a worker of its own (what it has run is module state)."""
    monkeypatch.setattr(batch, "_RUNNING", batch._Running())


def test_no_stop_reply_while_setting_up_or_for_an_interrupt():
    """While the worker sets up (before its first chunk) and for Ctrl-C (the whole
    batch's) there is nothing to hand back: the error ends the batch, as before."""
    assert batch.worker_stopped(_timeout()) is None
    caller = _StopsAt(2, errors.Interrupted("interrupted"))
    list(batch.worker_chunk(caller, [(1, b"[]"), (2, b"[]")], False))
    assert caller.reply is None


def test_a_late_call_that_came_back_is_not_stopped():
    """Round 45: the keeper saw a call late, the call came back, and the stop then
    gave its timeout to the next item (or, the worker waiting for work, ended the
    batch). A call that began after the late one's deadline is not it; between items
    and between chunks nothing is."""
    late = _timeout()
    late.watch_deadline = time.monotonic()  # (the late call's deadline: passed)
    caller = _StopsAt(2, late)
    list(batch.worker_chunk(caller, [(1, b"[]"), (2, b"[]")], False))
    assert caller.reply == pool.STALE  # (item 2 began after that deadline)
    assert batch.worker_stopped(_timeout()) == pool.STALE  # (waiting for work)
    own = _timeout()
    own.watch_deadline = time.monotonic() + 60  # (the running item's own call)
    caller = _StopsAt(2, own)
    list(batch.worker_chunk(caller, [(1, b"[]"), (2, b"[]")], False))
    assert caller.reply[0] == "stopped" and caller.reply[2] == 2


def test_a_stale_stop_leaves_the_worker_running(monkeypatch):
    """The worker's hard stop, told the late call is gone, returns (the keeper goes
    on) and lets others send; it neither sends nor exits."""
    from wasmsbx.backends.deadline import KEEPER

    monkeypatch.setattr(KEEPER, "hard_stop", None)
    sent: list = []
    exited: list = []

    class Replies:
        def send_bytes(self, data):
            sent.append(data)

    monkeypatch.setattr(pool.os, "_exit", exited.append)
    pool._hard_stop_to(Replies(), lambda error: pool.STALE)
    KEEPER.hard_stop(_timeout())
    assert sent == [] and exited == []
    assert pool._SENDING.acquire(False)
    pool._SENDING.release()


def test_an_item_that_came_back_meanwhile_is_not_stopped(monkeypatch):
    """The stuck call returns just as the stop comes: once its result is recorded it is
    no longer in progress, so there is nothing to stop (and nothing counted twice)."""
    stops = []

    def weigh(result, room):  # (right after item 2's result is recorded)
        if result.line == 2:
            stops.append(batch.worker_stopped(_timeout()))
        return 64

    class Caller:
        def run(self, line, payload):
            return batch.BatchResult(line, line, [line], None, 0.0)

    monkeypatch.setattr(batch, "_result_bytes", weigh)
    replies = list(batch.worker_chunk(Caller(), [(1, b"[]"), (2, b"[]"), (3, b"[]")], False))
    assert stops == [pool.STALE]
    assert [r.line for r in replies[-1][1]] == [1, 2, 3]


class _Pipe:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, message) -> None:
        self.sent.append(message)


def test_a_stopped_workers_chunks_go_to_its_replacement_from_the_first_unanswered():
    """The parent: a "stopped" reply is a part of its chunk (yielded in turn) and marks
    the worker; every chunk it held goes to the new worker from the first item no reply
    answered, keeping its slot (its place in the order)."""
    import pickle

    old = pool.Worker(_Pipe(), None)
    first = old.submit(([(1, b"[]"), (2, b"[]"), (3, b"[]"), (4, b"[]")], False))
    second = old.submit(([(5, b"[]"), (6, b"[]")], False))

    class Replies:
        def __init__(self, *replies):
            self.data = [pickle.dumps(r) for r in replies]

        def recv_bytes(self):
            return self.data.pop(0)

    from wasmsbx.runner.batch import BatchResult

    r1, r2, t3 = (BatchResult(n, n, [n], None, 0.0) for n in (1, 2, 3))
    old.replies = Replies(("part", [r1], 1, 0.1), ("stopped", [r2, t3], 2, 1.2))
    old.receive()
    old.receive()
    assert old.stopped and first.done == 3 and list(old.inflight) == [first, second]
    new = pool.Worker(_Pipe(), None)
    for slot in old.inflight:
        new.resubmit(slot)
    assert new.tasks.sent == [([(4, b"[]")], False), ([(5, b"[]"), (6, b"[]")], False)]
    assert first.worker is new and second.worker is new and first.done == 0
    assert first.take()[0] == ("ok", [r1], 1, 0.1)
    assert first.take()[0] == ("ok", [r2, t3], 2, 1.2)
    assert not first.ready()  # (its last reply comes from the new worker)
