"""A batch worker's replies are unpickled naming only the classes a reply holds: bytes
that reach the reply pipe from anywhere else can make a wrong reply at most, never run
code in the parent (runner.pool.reply_from)."""

from __future__ import annotations

import os
import pickle
from multiprocessing.connection import Connection

import pytest

from wasmsbx import errors
from wasmsbx.runner import pool
from wasmsbx.runner.batch import BatchResult, Encoded, EncodedChunk, encode_chunk


class _Runs:
    """Pickles as a call of ``func(*args)``, as a crafted reply would."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _worker_pair():
    """A parent's Worker whose reply pipe this test writes to, and that write end."""
    task_r, task_w = os.pipe()
    reply_r, reply_w = os.pipe()
    os.close(task_r)
    worker = pool.Worker(Connection(task_w, readable=False), Connection(reply_r, writable=False))
    slot = pool.Slot(worker, ([], False))
    worker.inflight.append(slot)
    return worker, slot, Connection(reply_w, readable=False)


@pytest.mark.parametrize(
    "reply",
    [
        ("ok", [BatchResult(1, 1, [8], None, 0.001)], 1, 0.002),
        ("part", [BatchResult(2, "b", None, {"kind": "trap", "message": "x"}, 0.5)], 1, 0.5),
        ("ok", encode_chunk([Encoded(1, None, b'{"line":1}\n')]), 1, 0.25),
        ("stopped", EncodedChunk(0, (), b""), 0, 0.0),
        ("error", errors.TimeoutExceeded("call exceeded limits.timeout", hint="raise it")),
        ("error", RuntimeError("batch worker: KeyError: 'x'")),
        ("ok", [BatchResult(3, {"nested": [1.5, None, True, "t"]}, [2**70], None, 0.0)], 1, 0.0),
    ],
)
def test_every_kind_of_reply_comes_through(reply):
    sent = ("error", pool.describe(reply[1])) if reply[0] == "error" else reply
    got = pool.reply_from(pickle.dumps(sent, pickle.HIGHEST_PROTOCOL))
    assert type(got) is tuple and got[0] == reply[0]
    if reply[0] == "error":
        assert type(got[1]) is type(reply[1]) and str(got[1]) == str(reply[1])
    else:
        assert got == reply


def test_an_error_keeps_its_attributes():
    error = errors.TimeoutExceeded("call exceeded limits.timeout", hint="raise it")
    error.watch_deadline = 12.5
    sent = ("error", pool.describe(error))
    (_, got) = pool.reply_from(pickle.dumps(sent, pickle.HIGHEST_PROTOCOL))
    assert got.hint == "raise it" and got.watch_deadline == 12.5
    assert got.exit_code == error.exit_code


@pytest.mark.parametrize(
    "payload",
    [
        _Runs(os.system, "touch {marker}"),  # posix.system
        _Runs(eval, "open({marker!r}, 'w')"),  # builtins.eval: a function, not a class
        _Runs(open, "{marker}", "w"),  # io.open
        _Runs(getattr, _Runs(__import__, "os"), "system"),  # builtins.__import__, getattr
    ],
    ids=["os.system", "eval", "open", "getattr"],
)
def test_a_reply_that_would_call_anything_else_runs_nothing(tmp_path, payload):
    marker = str(tmp_path / "ran")
    payload.args = tuple(a.format(marker=marker) if isinstance(a, str) else a for a in payload.args)
    data = pickle.dumps(("ok", [payload], 1, 0.0), pickle.HIGHEST_PROTOCOL)
    with pytest.raises(pool.BatchWorkerDied) as caught:
        pool.reply_from(data)
    assert not os.path.exists(marker)
    assert "not a reply" in caught.value.message and "-j 1" in caught.value.hint


def test_a_function_of_wasmsbx_is_not_a_class_a_reply_holds(tmp_path):
    from wasmsbx import fstree

    victim = tmp_path / "keep"
    victim.mkdir()
    (victim / "file").write_text("x")
    data = pickle.dumps(("ok", [_Runs(fstree.remove_tree, str(victim))], 1, 0.0))
    with pytest.raises(pool.BatchWorkerDied):
        pool.reply_from(data)
    assert (victim / "file").read_text() == "x"


def test_a_class_of_wasmsbx_that_is_not_in_a_reply_is_refused():
    from wasmsbx.runner.sandbox import Sandbox

    data = pickle.dumps(("ok", [_Runs(Sandbox, b"(module)")], 1, 0.0))
    with pytest.raises(pool.BatchWorkerDied, match="Sandbox"):
        pool.reply_from(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a pickle at all",
        pickle.dumps(["ok", [], 0, 0.0]),  # a list, not a tuple
        pickle.dumps(("ok", [], 0)),  # a part short
        pickle.dumps(("ok", [], "0", 0.0)),  # a count that is not one
        pickle.dumps(("sure", [], 0, 0.0)),
        pickle.dumps(()),
        pickle.dumps(("ok", [], 0, 0.0))[:-3],  # cut short
    ],
)
def test_bytes_that_are_not_a_reply_are_the_workers_failure(data):
    with pytest.raises(pool.BatchWorkerDied, match="not a reply"):
        pool.reply_from(data)


def test_the_parent_takes_a_crafted_reply_as_a_failed_worker(tmp_path):
    marker = tmp_path / "ran"
    worker, slot, reply_end = _worker_pair()
    try:
        reply_end.send_bytes(pickle.dumps(("ok", [_Runs(os.system, f"touch {marker}")], 1, 0.0)))
        with pytest.raises(pool.BatchWorkerDied):
            worker.receive()
        assert not marker.exists()
        reply_end.send_bytes(pickle.dumps(("ok", [BatchResult(1, 1, [2], None, 0.0)], 1, 0.0)))
        assert worker.receive() > 0
        assert not worker.inflight and slot.reply[0] == "ok" and slot.reply[1][0].values == [2]
    finally:
        reply_end.close()
        worker.tasks.close()
        worker.replies.close()


def test_an_error_comes_as_its_class_whatever_pickles_exceptions():
    """tblib's pickling support (dask installs it) pickles every exception through a
    function of its own, which no reply may name: errors go as descriptions."""
    tblib = pytest.importorskip("tblib.pickling_support")
    tblib.install()  # (process-wide; what a Python caller who uses dask has)
    error = errors.FuelExhausted("fuel exhausted", hint="raise limits.fuel")
    got = pool.reply_from(pickle.dumps(("error", pool.describe(error))))[1]
    assert type(got) is errors.FuelExhausted and got.hint == "raise limits.fuel"


@pytest.mark.parametrize(
    "description",
    [
        ("os", "system", "rm -rf ~", {}),  # not an exception class: a RuntimeError
        ("wasmsbx.fstree", "remove_tree", "/", {}),
        ("wasmsbx.runner.sandbox", "Sandbox", "(module)", {}),
        ("builtins", "eval", "1", {}),
        ("builtins", "object", "x", {}),
    ],
)
def test_an_error_names_only_an_exception_class(description):
    got = pool.reply_from(pickle.dumps(("error", description)))[1]
    assert type(got) is RuntimeError and description[1] in str(got)


@pytest.mark.parametrize(
    "description", ["text", ("a", "b"), ("a", "b", 3, {}), ("a", "b", "c", []), None]
)
def test_an_error_reply_without_its_error_is_the_workers_failure(description):
    with pytest.raises(pool.BatchWorkerDied, match="not a reply"):
        pool.reply_from(pickle.dumps(("error", description)))


def test_a_worker_sends_an_error_holding_what_no_reply_may_as_its_class_and_text():
    from pathlib import Path

    error = errors.ModuleError("guest.wasm: not a module", hint="check it", path=Path("/x"))
    worker, slot, sender = _worker_pair()
    try:
        pool._send(sender, ("error", error))
        worker.receive()
        (kind, got) = slot.reply
        assert kind == "error" and type(got) is errors.ModuleError
        assert got.message == "guest.wasm: not a module" and got.hint == "check it"
        assert got.exit_code == errors.ModuleError.exit_code
    finally:
        sender.close()
        worker.tasks.close()
        worker.replies.close()


@pytest.mark.parametrize(
    "description",
    [
        ("builtins", "SystemExit", "0", {"code": 0}),  # (ended the run with exit 0)
        ("builtins", "KeyboardInterrupt", "", {}),
        ("builtins", "GeneratorExit", "", {}),
        ("builtins", "BaseExceptionGroup", "g", {}),
        ("builtins", "ExceptionGroup", "g", {}),  # (its __new__ raised past the check)
        ("builtins", "BrokenPipeError", "x", {}),  # (exit 0, no output: red team 96)
        ("builtins", "MemoryError", "x", {}),  # (exit 118)
        ("builtins", "ValueError", "x", {}),
    ],
)
def test_an_error_reply_is_never_one_that_ends_the_process(description):
    """Red team round 95: a crafted SystemExit ended a -j 2 batch with exit 0."""
    got = pool.reply_from(pickle.dumps(("error", description)))[1]
    assert type(got) is RuntimeError and description[1] in str(got)


def test_an_error_replys_hint_and_context_are_what_they_are_everywhere():
    description = ("wasmsbx.errors", "TrapError", "t", {"hint": ["a"], "context": 5})
    got = pool.reply_from(pickle.dumps(("error", description)))[1]
    assert type(got) is errors.TrapError and got.hint is None and got.context == {}


def test_an_error_reply_cannot_set_what_its_class_says():
    """Red team round 95: a MemoryLimitExceeded whose state said exit_code 0 ended the
    run with exit 0."""
    description = ("wasmsbx.errors", "MemoryLimitExceeded", "x", {"exit_code": 0, "kind": "ok"})
    got = pool.reply_from(pickle.dumps(("error", description)))[1]
    assert type(got) is errors.MemoryLimitExceeded
    assert got.exit_code == 110 and got.kind == errors.MemoryLimitExceeded.kind


@pytest.mark.parametrize(
    "reply",
    [
        ("ok", 5, 1, 0.1),
        ("ok", EncodedChunk(1, 5, b"x\n"), 1, 0.1),  # (wrote its bytes, then a TypeError)
        ("ok", EncodedChunk("1", (), b""), 1, 0.1),
        ("ok", EncodedChunk(1, ("trap", 3), b""), 1, 0.1),
        ("ok", [1, 2], 2, 0.1),
        ("ok", [BatchResult("1", 1, [8], None, 0.0)], 1, 0.1),
        ("part", {"a": 1}, 1, 0.1),
    ],
)
def test_results_that_are_not_what_a_worker_sends_are_its_failure(reply):
    with pytest.raises(pool.BatchWorkerDied, match="not a reply"):
        pool.reply_from(pickle.dumps(reply))


@pytest.mark.parametrize(
    "state",
    [{}, {"backtrace": 5}, {"backtrace": {"a": 1}}, {"backtrace": [1, 2]}, {"context": 5}],
)
def test_a_trap_error_reply_is_one_a_report_can_print(state):
    """Red team round 97: a crafted TimeoutExceeded had no backtrace (made without its
    __init__), and one whose state set it to 5 or a dict: a traceback where the error
    was printed (--json), exit 1."""
    description = ("wasmsbx.errors", "TimeoutExceeded", "x", state)
    got = pool.reply_from(pickle.dumps(("error", description)))[1]
    assert type(got) is errors.TimeoutExceeded and got.backtrace == [] and got.context == {}
    assert got.to_dict()["message"] == "x"


def test_a_trap_error_reply_keeps_a_backtrace_of_frames():
    error = errors.TrapError("t", backtrace=["f @ 0x1", "g"])
    got = pool.reply_from(pickle.dumps(("error", pool.describe(error))))[1]
    assert got.backtrace == ["f @ 0x1", "g"]


@pytest.mark.parametrize("encoded", [True, False])
def test_results_of_the_kind_the_chunk_did_not_ask_for_are_the_workers_failure(encoded):
    """Red team round 97: a list of results to the command line's batch, which asks for
    JSONL, was an internal error (AttributeError), exit 100."""
    results = [] if encoded else EncodedChunk(0, (), b"")
    with pytest.raises(pool.BatchWorkerDied, match="not a reply"):
        pool.reply_from(pickle.dumps(("ok", results, 0, 0.1)), encoded)
    fitting = EncodedChunk(0, (), b"") if encoded else []
    assert pool.reply_from(pickle.dumps(("ok", fitting, 0, 0.1)), encoded)[1] == fitting
