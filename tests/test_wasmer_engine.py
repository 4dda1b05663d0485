"""The wasmer adapter's own machinery: the child process per instance, artifacts, refusals.

These run where wasmer:cranelift is available (the Python 3.9 leg); the shared behaviour
tests cover what every backend must do.
"""

from __future__ import annotations

import os
import time

import pytest
import wasmtime

from wasmsbx import backends, errors, f64, i64
from wasmsbx.backends.base import EngineOptions, Limits, WasiSetup
from wasmsbx.native.trust import Authenticated

from .conftest import GUESTS

pytestmark = pytest.mark.skipif(
    not backends.get("wasmer").probe_compiler("cranelift").available,
    reason="wasmer:cranelift is not available here",
)

COUNTER = """
(module
  (global $n (mut i32) (i32.const 0))
  (func (export "inc") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "spin") (loop $l (br $l)))
)
"""
LIMITS = Limits(memory=1 << 20, timeout=5.0, table_elements=100, instances=1, output=1 << 20)


@pytest.fixture
def engine():
    return backends.get("wasmer").engine(EngineOptions(compiler="cranelift", memory_cap=1 << 20))


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_each_instance_is_one_child_and_close_reaps_it(engine):
    module = engine.compile(wat(COUNTER))
    first = engine.instantiate(module, LIMITS)
    second = engine.instantiate(module, LIMITS)
    try:
        assert first.pid != second.pid != os.getpid()
        assert [first.call("inc", []) for _ in range(3)] == [[1], [2], [3]]
        assert second.call("inc", []) == [1]  # separate state
    finally:
        pids = (first.pid, second.pid)
        first.close()
        second.close()
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(errors.TrapError, match="this wasmer instance is gone"):
        first.call("inc", [])


def test_a_timeout_kills_the_child_and_the_instance_is_gone(engine):
    module = engine.compile(wat(COUNTER))
    # (3 s: the worker process starts within the timeout, 0.2 s failed on a loaded machine)
    instance = engine.instantiate(module, LIMITS._replace(timeout=3.0))
    pid = instance.pid
    started = time.monotonic()
    with pytest.raises(errors.TimeoutExceeded, match="spin still running after"):
        instance.call("spin", [])
    assert time.monotonic() - started < 30  # it stopped at all (a generous bound: load)
    assert not alive(pid)
    with pytest.raises(errors.TrapError, match="stopped after the 3.00 s timeout"):
        instance.call("inc", [])


def test_extra_arguments_are_refused_not_dropped(engine):
    instance = engine.instantiate(engine.compile(wat(COUNTER)), LIMITS)
    try:
        with pytest.raises(errors.UsageError, match="add takes 2 arguments, got 3"):
            instance.call("add", [1, 2, 3])
        with pytest.raises(errors.UsageError, match="add: "):
            instance.call("add", [1.5, 2])
        assert instance.call("add", [1, 2]) == [3]
    finally:
        instance.close()


def test_serialized_artifact_keeps_its_caps(engine):
    module = engine.compile(wat((GUESTS / "memgrow_loop.wat").read_text()))
    data = engine.serialize(module)
    assert data.startswith(b"WSBXWMR1")
    loaded = engine.deserialize(Authenticated(data, "this test"))
    assert loaded.caps == module.caps == (16, None)
    instance = engine.instantiate(loaded, LIMITS)
    try:
        assert instance.call("run", []) == [16]
    finally:
        instance.close()
    with pytest.raises(errors.ModuleError, match="not a wasmsbx wasmer artifact"):
        engine.deserialize(Authenticated(b"junk", "this test"))
    with pytest.raises(TypeError, match="must be authenticated"):
        engine.deserialize(data)  # raw bytes: never, whatever they hold


def test_engine_refuses_what_it_cannot_enforce(engine, tmp_path):
    module = engine.compile(wat(COUNTER))

    class Grant:
        host, guest, writable = str(tmp_path), "/data", False

    cases = [
        (LIMITS._replace(fuel=100), WasiSetup(), "cannot meter fuel"),
        (LIMITS._replace(stack=1 << 20), WasiSetup(), "stack size is fixed"),
        (LIMITS, WasiSetup(grants=[Grant()]), "CVE-2024-38358"),
    ]
    for limits, wasi, message in cases:
        with pytest.raises(errors.BackendUnavailable, match=message):
            engine.instantiate(module, limits, wasi)
    with pytest.raises(errors.InstanceLimitExceeded):
        engine.instantiate(module, LIMITS._replace(instances=0))


def test_table_too_big_at_start(engine):
    module = engine.compile(wat("(module (table 500 funcref))"))
    with pytest.raises(errors.TableLimitExceeded, match="table limit 100 elements"):
        engine.instantiate(module, LIMITS)


def test_a_compiler_lacking_a_feature_says_so():
    singlepass = backends.get("wasmer").engine(EngineOptions(compiler="singlepass"))
    with pytest.raises(
        errors.BackendUnavailable, match="uses multi-value, which wasmer:singlepass"
    ):
        singlepass.compile(
            wat('(module (func (export "f") (result i32 i32) i32.const 1 i32.const 2))')
        )


def test_fingerprint_names_compiler_and_caps(engine):
    print_ = engine.fingerprint()
    assert print_["backend"] == "wasmer" and print_["compiler"] == "cranelift"
    assert print_["memory_cap_pages"] == 16 and print_["version"] == "1.1.0"


def test_memory_access_and_repeat_go_through_the_child(engine):
    module = engine.compile(
        wat(
            '(module (memory (export "memory") 1) (global $n (mut i32) (i32.const 0))'
            '(func (export "inc") (global.set $n (i32.add (global.get $n) (i32.const 1))))'
            '(func (export "n") (result i32) (global.get $n)))'
        )
    )
    instance = engine.instantiate(module, LIMITS)
    try:
        instance.write_memory(100, b"hello")
        assert instance.read_memory(98, 9) == b"\0\0hello\0\0"
        with pytest.raises(IndexError, match="outside the 65536-byte memory"):
            instance.read_memory(65530, 10)
        with pytest.raises(IndexError, match="no memory named 'other'"):
            instance.write_memory(0, b"x", memory="other")
        instance.repeat("inc", [])(1000)
        assert instance.call("n", []) == [1000]
    finally:
        instance.close()


def test_the_workers_start_up_is_not_the_guests_time(engine, monkeypatch):
    """A worker process that takes long to come up (a fork on a loaded host) does not
    use up the guest's timeout: the timeout starts when the worker says it is set up,
    and still bounds the guest after that."""
    from wasmsbx.backends.wasmer import engine as wasmer_engine

    setup = wasmer_engine._child_output

    def slow_setup(*args):  # runs in the forked child, before it answers "loaded"
        time.sleep(1.0)
        return setup(*args)

    monkeypatch.setattr(wasmer_engine, "_child_output", slow_setup)
    module = engine.compile(wat(COUNTER))
    instance = engine.instantiate(module, LIMITS._replace(timeout=0.3))
    try:
        assert instance.call("add", [2, 3]) == [5]
        started = time.monotonic()
        with pytest.raises(errors.TimeoutExceeded, match="300.0 ms"):
            instance.call("spin", [])
        assert time.monotonic() - started < 30  # bounded by the timeout, not the start-up
    finally:
        instance.close()


def test_a_worker_that_never_comes_up_is_reported(engine, monkeypatch):
    from wasmsbx.backends.wasmer import engine as wasmer_engine

    monkeypatch.setattr(wasmer_engine, "WORKER_START", 0.5)
    monkeypatch.setattr(wasmer_engine, "_child_output", lambda *args: time.sleep(60))
    module = engine.compile(wat(COUNTER))
    with pytest.raises(errors.TrapError, match="did not start within"):
        engine.instantiate(module, LIMITS)


class _Planted:
    """What a guest that escaped wasmer in the child could send: a pickle that calls a
    function of the parent's choosing (here os.mkdir of a marker) as it is unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("how", ["global", "not a tuple"])
def test_a_childs_message_runs_no_code_in_the_parent(engine, monkeypatch, tmp_path, how):
    """The parent unpickles its child's messages as plain data only: a message naming a
    function is the worker's failure (TrapError, the worker killed), and the function
    is never called."""
    from wasmsbx.backends.wasmer import engine as wasmer_engine

    marker = str(tmp_path / "ran")
    send = wasmer_engine._send

    def planted(fd, message):  # runs in the forked child
        if message[:1] == ("ok",):
            message = ("ok", [_Planted(marker)], 0) if how == "global" else ["ok", [5], 0]
        return send(fd, message)

    monkeypatch.setattr(wasmer_engine, "_send", planted)
    module = engine.compile(wat(COUNTER))
    instance = engine.instantiate(module, LIMITS)
    try:
        with pytest.raises(errors.TrapError, match="not"):
            instance.call("add", [2, 3])
        assert not os.path.exists(marker)
        with pytest.raises(errors.TrapError):  # the worker is gone, and said so
            instance.call("add", [2, 3])
    finally:
        instance.close()


def test_a_fifo_stdin_without_a_writer_is_the_guests_time(engine, tmp_path):
    """Opening a FIFO stdin waits for a writer: after "loaded", under the timeout (it
    once came before it, and waited WORKER_START, 60 s)."""
    fifo = tmp_path / "in"
    os.mkfifo(fifo)
    module = engine.compile(wat(COUNTER))
    started = time.monotonic()
    with pytest.raises(errors.TimeoutExceeded, match="500.0 ms"):
        engine.instantiate(module, LIMITS._replace(timeout=0.5), WasiSetup(stdin=str(fifo)))
    assert time.monotonic() - started < 30


def test_an_instance_child_that_does_not_end_is_killed_not_waited_for(monkeypatch):
    """The CI's wasmer leg once stopped for good in two workers at once, each in a test
    with nothing to wait on: a cycle-collected instance's close() may run anywhere, and
    it waited on its child with a blocking waitpid. The wait is bounded now: a child that
    has not ended REAP_WAIT seconds after it was asked is killed, and not waited on."""
    import signal
    import subprocess
    import sys
    import time
    import types

    engine = pytest.importorskip("wasmsbx.backends.wasmer.engine")
    monkeypatch.setattr(engine, "REAP_WAIT", 0.2)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    holder = types.SimpleNamespace(pid=child.pid)
    started = time.monotonic()
    status = engine.WasmerInstance._reap(holder)
    assert time.monotonic() - started < 10
    assert holder.pid is None
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    child.returncode = -9  # (reaped here, not by Popen)


def test_trap_frames_keep_names_with_line_breaks_and_parentheses():
    # A name section's name may hold line breaks: the frame was dropped (or cut at the
    # break) when each line was read alone. The location is read from the frame's end.
    from wasmsbx.backends.wasmer.engine import _frames

    class Same:
        @staticmethod
        def original_offset(offset: int) -> int:
            return offset

    rest = (
        "    at \x1b]0;t\x07\r\nerror: fake (<module>[0]:0x23)\n"
        "    at a\nb (c) @ 0x99 (<module>[1]:0x27)\n"
        "    at plain (<module>[2]:0xffffffff)\n"
        "    at no location here\n"
        "    at f (x[y]:0x1)"
    )
    assert _frames(rest, Same) == [
        "\\x1b]0;t\\x07\\r\\nerror: fake @ 0x23",
        "a\\nb (c) @ 0x99 @ 0x27",
        "plain",
    ]
    assert len(_frames("    at f (<module>[0]:0x1)\n" * 100, Same)) == 12
    # linear: a long name of " (" and "]:0x" pieces reads in a blink, and is cut
    start = time.process_time()
    (frame,) = _frames("    at " + " ([1]:0x" * 200_000 + " (<module>[0]:0x5)", Same)
    assert time.process_time() - start < 5 and frame.endswith("characters) @ 0x5")


def _singlepass() -> None:
    if not backends.get("wasmer").probe_compiler("singlepass").available:
        pytest.skip("wasmer:singlepass is not available here")


def test_singlepass_passes_mixed_float_arguments_right():
    """Red team 154: through the helper module, singlepass handed an export the wrong
    arguments once it had two or more and a float among them, and some of them came
    from the host's stack (the upper half of a host address reached the guest)."""
    import wasmsbx
    from wasmsbx.values import F32

    _singlepass()
    mixed = (
        '(module (func (export "f") (param i32 f32 i64 f64 i32 f32 i64 f64) (result f64) '
        "local.get 3)"
        ' (func (export "g") (param f64 f32 f32 i64 f32 f64 i32 i32 i64 f64 f64 f32 f32 f64 '
        "f32 i64 f32 f32) (result i64) (i64.reinterpret_f64 (local.get 5)))"
        ' (func (export "id32") (param f32) (result f32) local.get 0))'
    )
    with wasmsbx.Sandbox(mixed.encode(), backend="wasmer:singlepass") as box:
        assert box.call("f", 1, 1.5, 2, 3.25, 5, 6.5, 7, 8.25) == 3.25
        assert box.call("g", *range(1, 19)) == 0x4018000000000000  # 6.0
        signalling = F32.from_bits(0x7FA00001)  # one argument: the helper, exact
        assert box.call("id32", signalling).bits == 0x7FA00001


def test_singlepass_host_functions_get_their_arguments_or_are_refused():
    import wasmsbx

    _singlepass()
    seen = []

    def whole(a: f64, b: f64, c: f64, d: f64, e: f64, f: f64) -> i64:
        seen.append((a, b, c, d, e, f))
        return 7

    def fifth(a: f64, b: f64, c: f64, d: f64, e: f64, f: f64) -> f64:
        return e

    wat = (
        '(module (import "env" "h" (func $h (param f64 f64 f64 f64 f64 f64) (result {r})))'
        ' (func (export "go") (result {r}) (call $h (f64.const 0) (f64.const 1) '
        "(f64.const 2) (f64.const 3) (f64.const 4) (f64.const 5))))"
    )
    with wasmsbx.Sandbox(
        wat.format(r="i64").encode(), imports={"env": {"h": whole}}, backend="wasmer:singlepass"
    ) as box:
        assert box.call("go") == 7
    assert [float(x) for x in seen[0]] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(errors.BackendUnavailable, match="env.h wrongly"):
        wasmsbx.Sandbox(
            wat.format(r="f64").encode(), imports={"env": {"h": fifth}}, backend="wasmer:singlepass"
        ).call("go")


def test_singlepass_refuses_to_read_a_reference_global():
    """Red team 154: its worker panicked (a Rust backtrace on stderr, a bare
    RuntimeError); cranelift's helper reads them."""
    import wasmsbx

    _singlepass()
    wat = b'(module (func $f) (global (export "gf") funcref (ref.func $f)) (elem declare func $f))'
    box = wasmsbx.Sandbox(wat, backend="wasmer:singlepass")
    with pytest.raises(errors.BackendUnavailable, match="global gf"):
        box.globals["gf"]  # noqa: B018 - the read is the test
    box.close()
    with wasmsbx.Sandbox(wat, backend="wasmer:cranelift") as box:
        assert box.globals["gf"] is not None


def test_singlepass_refuses_a_group_member_calling_another_with_mixed_arguments():
    """Red team 156: a member's call to another member's f(f32, i32) got the i32's bits
    as its f32 on singlepass; cranelift calls it right."""
    import wasmsbx
    from wasmsbx.policy import from_dict

    _singlepass()
    lib = b'(module (func (export "f") (param f32 i32) (result f32) local.get 0))'
    app = (
        b'(module (import "lib" "f" (func $f (param f32 i32) (result f32)))'
        b' (func (export "run") (result f32) f32.const 1.5 i32.const 42 call $f))'
    )
    policy = from_dict({"limits": {"instances": 2}})
    with wasmsbx.Group(policy, backend="wasmer:singlepass") as group:
        group.add(lib, name="lib")
        with pytest.raises(errors.BackendUnavailable, match="lib.f wrongly"):
            group.add(app)
    with wasmsbx.Group(policy, backend="wasmer:cranelift") as group:
        group.add(lib, name="lib")
        assert group.add(app).call("run") == 1.5
