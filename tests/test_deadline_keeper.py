"""The deadline keeper (wasmsbx.backends.deadline): epochs from the monotonic clock."""

from __future__ import annotations

import os
import time

import pytest

from wasmsbx.backends.deadline import TICK, Keeper


class FakeEngine:
    def __init__(self) -> None:
        self.epoch = 0

    def increment_epoch(self) -> None:
        self.epoch += 1


def wait_for(predicate, seconds: float = 30.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_epochs_follow_the_clock_not_the_number_of_wakeups():
    keeper, engine = Keeper(), FakeEngine()
    clock = keeper.clock(engine)
    started = time.monotonic()  # before enter(), which sets the clock's base: on a loaded
    watch = keeper.enter(clock, 60.0, lambda: None)  # machine the two may be far apart
    time.sleep(0.3)
    keeper._advance()  # a late wake-up catches up in one go
    elapsed = time.monotonic() - started
    assert engine.epoch >= int(0.3 / TICK) - 1
    assert engine.epoch <= int(elapsed / TICK) + 2
    keeper.leave(watch)


def test_arming_is_relative_to_the_clock_of_an_idle_engine():
    keeper, engine = Keeper(), FakeEngine()
    clock = keeper.clock(engine)
    time.sleep(0.2)  # idle: these epochs must never be caught up
    watch = keeper.enter(clock, 1.0, lambda: None)
    assert watch.ticks == int(1.0 / TICK) + 1 or watch.ticks == int(1.0 / TICK) + 2
    keeper._advance()
    assert engine.epoch < watch.ticks  # the fresh deadline has not passed
    keeper.leave(watch)


def test_a_sleeping_command_line_keeper_is_woken_by_a_new_call():
    keeper, engine = Keeper(), FakeEngine()
    keeper.hard_stop = lambda error: None  # what install_cli sets (without the signals)
    keeper.enter(None, 0.01, lambda: None)  # starts the thread
    keeper.leave(next(iter(keeper.watches.values())))
    assert wait_for(lambda: keeper.sleeping)  # after a quiet second it waits long
    watch = keeper.enter(keeper.clock(engine), 60.0, lambda: None)
    assert not keeper.sleeping  # woken: the new call's epochs advance every tick
    assert wait_for(lambda: engine.epoch > 0)
    keeper.leave(watch)
    keeper.hard_stop = None  # let the thread end


def test_interrupt_expires_running_calls_and_marks_them():
    keeper, engine = Keeper(), FakeEngine()
    watch = keeper.enter(keeper.clock(engine), 60.0, lambda: None)
    keeper.interrupt()
    assert watch.interrupted
    assert engine.epoch >= watch.until  # the store's deadline has passed
    assert keeper.signalled is None  # not a signal: no hard stop pending
    keeper.leave(watch)


def test_a_call_stuck_past_its_deadline_is_hard_stopped():
    keeper, stopped = Keeper(), []
    keeper.hard_stop = stopped.append
    watch = keeper.enter(None, 0.05, lambda: "the error")
    assert wait_for(lambda: stopped)
    assert stopped[0] == "the error"
    keeper.hard_stop = None  # let the thread end
    keeper.leave(watch)


def test_many_sandboxes_share_one_deadline_thread():
    """Issue 13: 1,000 sandboxes held 381 threads (one ticker per engine)."""
    import os

    from tests.conftest import GUESTS
    from wasmsbx import Sandbox

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    boxes = [Sandbox(GUESTS / "counter.wat", use_cache=False, backend="wasmtime")]
    boxes[0].call("next")  # the runtime's own threads, and the keeper, exist from here
    before = threads()
    for _ in range(100):  # each its own engine: a ticker per engine would add 100 threads
        box = Sandbox(GUESTS / "counter.wat", use_cache=False, backend="wasmtime")
        box.call("next")
        boxes.append(box)
    assert threads() - before <= 3


def test_an_error_factory_that_raises_still_hard_stops():
    """Red-team regression: a watch whose error factory raised (a caller's signature
    mismatch) ended the keeper's thread, so nothing was ever hard-stopped again."""
    from wasmsbx.errors import TimeoutExceeded

    keeper, stopped = Keeper(), []
    keeper.hard_stop = stopped.append

    def broken() -> None:
        raise TypeError("missing argument")

    watch = keeper.enter(None, 0.05, broken)
    assert wait_for(lambda: stopped)
    assert isinstance(stopped[0], TimeoutExceeded)
    keeper.hard_stop = None  # let the thread end
    keeper.leave(watch)


# ------------------------------------------------------- Ctrl-C: the hard stop's two graces


def started(keeper: Keeper) -> Keeper:
    """The keeper's thread running with a command line's hard stop (as install_cli leaves
    it, without the process-wide signal handlers)."""
    with keeper.lock:
        keeper._start()
    return keeper


def test_a_signal_nobody_handles_is_hard_stopped_after_the_grace():
    """The main thread stuck in a runtime's C code never runs its handler: 130 after GRACE."""
    from wasmsbx.backends.deadline import GRACE
    from wasmsbx.errors import Interrupted

    keeper, stopped = Keeper(), []
    keeper.hard_stop = stopped.append
    started(keeper)
    watch = keeper.enter(None, 600.0, lambda: None)  # the main thread in a runtime call
    signalled = time.monotonic()
    keeper.interrupt(signalled=True)  # what the thread does when SIGINT wakes it
    assert wait_for(lambda: stopped)
    assert time.monotonic() - signalled >= GRACE
    assert isinstance(stopped[0], Interrupted)
    keeper.hard_stop = None
    keeper.leave(watch)


def test_with_no_call_running_the_handler_gets_longer_than_the_grace(monkeypatch):
    """No runtime call runs, so the main thread is in Python code and its handler runs
    once the thread is scheduled, which on a loaded machine took more than GRACE (the
    clean-up test below failed at load 30): the hard stop waits UNWATCHED, and still comes."""
    from wasmsbx.backends import deadline
    from wasmsbx.errors import Interrupted

    monkeypatch.setattr(deadline, "UNWATCHED", 8 * deadline.GRACE)
    keeper, stopped = Keeper(), []
    keeper.hard_stop = stopped.append
    started(keeper)
    signalled = time.monotonic()
    keeper.interrupt(signalled=True)
    time.sleep(4 * deadline.GRACE)  # well past GRACE, and the thread ticks every 10 ms
    assert not stopped
    assert wait_for(stopped.__len__)  # a main thread that never handles it still ends
    assert time.monotonic() - signalled >= deadline.UNWATCHED
    assert isinstance(stopped[0], Interrupted)
    keeper.hard_stop = None


def test_a_main_thread_handling_the_interrupt_gets_the_clean_up_time(monkeypatch):
    """Its handler ran, so it is unwinding (saving a checkpoint): no hard stop after GRACE,
    only after CLEANUP, whichever of the two saw the signal first."""
    from wasmsbx.backends import deadline
    from wasmsbx.errors import Interrupted

    monkeypatch.setattr(deadline, "CLEANUP", 8 * deadline.GRACE)
    for handler_first in (False, True):
        keeper, stopped = Keeper(), []
        keeper.hard_stop = stopped.append
        started(keeper)
        if handler_first:
            keeper.handling_interrupt()
        keeper.interrupt(signalled=True)
        keeper.handling_interrupt()
        handling = keeper.handling
        time.sleep(4 * deadline.GRACE)  # well past GRACE, and the thread ticks every 10 ms
        keeper.handling_interrupt()  # a later call does not push the bound back
        assert not stopped and keeper.handling == handling
        assert wait_for(stopped.__len__)  # a clean-up that hangs still ends
        assert time.monotonic() - handling >= deadline.CLEANUP
        assert isinstance(stopped[0], Interrupted)
        keeper.hard_stop = None


def test_a_call_still_blocked_is_hard_stopped_after_the_grace_even_while_handling(monkeypatch):
    """Handling the interrupt buys clean-up time, never time for a call blocked in a host
    call: it stops GRACE after Ctrl-C, with 130 (not its timeout's code)."""
    from wasmsbx.backends import deadline
    from wasmsbx.errors import Interrupted

    monkeypatch.setattr(deadline, "CLEANUP", 600.0)
    keeper, stopped = Keeper(), []
    keeper.hard_stop = stopped.append
    watch = keeper.enter(None, 600.0, lambda: "its timeout")  # blocked: it never leaves
    keeper.interrupt(signalled=True)
    keeper.handling_interrupt()
    assert wait_for(lambda: stopped)
    assert isinstance(stopped[0], Interrupted)
    keeper.hard_stop = None
    keeper.leave(watch)


def test_settle_ends_the_interrupt_and_a_library_keeper_records_nothing():
    keeper = Keeper()
    keeper.handling_interrupt()  # no hard stop (a library caller): nothing to tell
    assert keeper.handling is None
    keeper.hard_stop = lambda error: None
    keeper.signalled = time.monotonic()
    keeper.handling_interrupt()
    assert keeper.handling is not None
    keeper.settle()
    assert keeper.signalled is None and keeper.handling is None


def test_hold_interrupt_tells_the_keeper_when_it_raises(monkeypatch):
    """The batch's Ctrl-C guard replaces the command line's handler while it is active: the
    KeyboardInterrupt it raises must count as the main thread handling the interrupt."""
    import os
    import signal

    import pytest

    from wasmsbx.backends.deadline import KEEPER, on_interrupt
    from wasmsbx.runner.checkpoint import HoldInterrupt

    monkeypatch.setattr(KEEPER, "hard_stop", lambda error: None)
    monkeypatch.setattr(KEEPER, "handling", None)
    previous = signal.signal(signal.SIGINT, on_interrupt)  # as install_cli leaves it
    try:
        with HoldInterrupt() as guard:
            assert signal.getsignal(signal.SIGINT) == guard._signal  # active over ours too
            guard.hold()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert guard.pending and KEEPER.handling is None  # held: the short grace stays
            with pytest.raises(KeyboardInterrupt):
                guard.release()
            assert KEEPER.handling is not None
        assert signal.getsignal(signal.SIGINT) is on_interrupt
    finally:
        signal.signal(signal.SIGINT, previous)
        KEEPER.settle()


# A command line's keeper and handlers (install_cli), then a Python-level wait that Ctrl-C
# interrupts, and a clean-up slower than GRACE (a checkpoint saved on a loaded machine).
CLEAN_UP_DRIVER = r"""
import os, sys, time
from wasmsbx.backends.deadline import KEEPER
from wasmsbx.cli import _hard_stop
KEEPER.install_cli(_hard_stop)
try:
    print("ready", flush=True)
    time.sleep(600)
except KeyboardInterrupt:
    time.sleep(float(sys.argv[1]))
    print("cleaned up", flush=True)
    os._exit(130)
"""


def test_a_clean_up_slower_than_the_grace_is_not_cut_short():
    """The cluster Ctrl-C test's flake: the hard stop came 250 ms after Ctrl-C while the
    main thread was still writing its checkpoint."""
    import signal
    import subprocess
    import sys

    from wasmsbx.backends.deadline import GRACE

    for signum in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen(
            [sys.executable, "-c", CLEAN_UP_DRIVER, str(4 * GRACE)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
        assert (proc.returncode, out, err) == (130, b"cleaned up\n", b"")


def _blocked(tid: int) -> int:
    """The signal mask (SigBlk) of this process's thread ``tid``."""
    with open(f"/proc/self/task/{tid}/status") as status:
        line = next(line for line in status if line.startswith("SigBlk:"))
    return int(line.split()[1], 16)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux /proc")
def test_threads_wasmsbx_starts_never_take_ctrl_c_from_the_main_thread():
    """The flake of the test above: the kernel gave SIGTERM to the keeper's thread, and
    the main thread, asleep in its clean-up's system call, never ran its handler (the
    hard stop came 5 s later, with no clean-up). Threads started under quiet_threads
    block SIGINT and SIGTERM; the thread that starts them keeps its own mask."""
    import _thread
    import signal
    import threading

    from wasmsbx.backends.deadline import quiet_threads

    wanted = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    here = threading.get_native_id()
    before = _blocked(here)
    seen: list = []
    done = _thread.allocate_lock()
    done.acquire()

    def body():
        seen.append(_blocked(threading.get_native_id()))
        done.release()

    with quiet_threads():
        _thread.start_new_thread(body, ())
    assert done.acquire(timeout=60)
    assert seen[0] & wanted == wanted
    assert _blocked(here) == before and before & wanted == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux /proc")
def test_the_keepers_thread_blocks_ctrl_c():
    import subprocess
    import sys

    driver = (
        "import os, signal\n"
        "from wasmsbx.backends.deadline import KEEPER\n"
        "from wasmsbx.cli import _hard_stop\n"
        "KEEPER.install_cli(_hard_stop)\n"
        "masks = {}\n"
        "for tid in os.listdir('/proc/self/task'):\n"
        "    for line in open(f'/proc/self/task/{tid}/status'):\n"
        "        if line.startswith('SigBlk:'):\n"
        "            masks[int(tid)] = int(line.split()[1], 16)\n"
        "wanted = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))\n"
        "main = masks.pop(os.getpid())\n"
        "print(main & wanted, sorted(m & wanted == wanted for m in masks.values()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split(None, 1) == ["0", "[True]\n"], out.stderr


# ------------------------------------------------------------ red team round 24

SPIN = b'(module (func (export "spin") (loop $l (br $l))) (func (export "nop")))'


def _script(body: str, timeout: float = 60.0):
    """Run ``body`` in a fresh interpreter (this checkout first on sys.path); bounded:
    a call that never times out fails the test instead of hanging it."""
    import subprocess
    import sys
    import textwrap

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    prelude = f"import sys; sys.path.insert(0, {root!r})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_call_in_a_child_forked_just_after_a_call_still_times_out():
    """A fork within a second of a call (the parent's thread still running): the child
    had no thread but a keeper that said 'running', and its calls never timed out."""
    out = _script(
        f"""
        import os, signal, wasmsbx
        from wasmsbx.policy import from_dict
        box = wasmsbx.Sandbox({SPIN!r}, from_dict({{"limits": {{"timeout": "1s"}}}}))
        box.call("nop")
        pid = os.fork()
        if pid == 0:
            signal.alarm(30)  # (the bound: the test fails, it does not hang)
            try:
                box.call("spin")
            except wasmsbx.errors.TimeoutExceeded:
                os._exit(7)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        print("child", os.WEXITSTATUS(status) if os.WIFEXITED(status) else "killed")
        """
    )
    assert out.stdout.strip() == "child 7", out


def test_a_process_with_more_than_1024_descriptors_still_times_out():
    """select() refuses descriptors numbered 1024 and up: the thread died at its first
    wait on a wake pipe that high, and no call of the process ever timed out."""
    out = _script(
        f"""
        import os, resource, signal, wasmsbx
        from wasmsbx.policy import from_dict
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 2048:
            print("skip"); raise SystemExit
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
        box = wasmsbx.Sandbox({SPIN!r}, from_dict({{"limits": {{"timeout": "1s"}}}}))
        signal.alarm(30)
        try:
            box.call("spin")
        except wasmsbx.errors.TimeoutExceeded:
            print("timed out")
        """
    )
    if out.stdout.strip() == "skip":
        pytest.skip("RLIMIT_NOFILE below 2048")
    assert out.stdout.strip() == "timed out", out


def test_a_deadline_thread_that_cannot_start_is_a_resource_error_and_tried_again(monkeypatch):
    import _thread

    from wasmsbx.backends import deadline
    from wasmsbx.errors import ResourceExhausted

    keeper, engine = Keeper(), FakeEngine()
    clock = keeper.clock(engine)
    real = _thread.start_new_thread

    def refuse(*args):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(deadline._thread, "start_new_thread", refuse)
    with pytest.raises(ResourceExhausted, match="cannot start the deadline thread"):
        keeper.enter(clock, 60.0, lambda: None)
    assert not keeper.running and not keeper.watches and clock.active == 0
    monkeypatch.setattr(deadline._thread, "start_new_thread", real)
    watch = keeper.enter(clock, 60.0, lambda: None)  # (the next call starts it)
    assert keeper.running
    keeper.leave(watch)


def test_grace_counts_from_when_the_epoch_reached_the_deadline():
    """CI: a keeper thread woken late (a loaded machine) advanced a busy call's epoch past
    its deadline and, in the same pass, found it GRACE past the deadline and hard-stopped
    it as "blocked in a host call", before its store could trap (exit 112 for a batch
    whose items should each have timed out). GRACE now starts when the epoch got there."""
    from wasmsbx.backends.deadline import GRACE

    keeper, engine, stopped = Keeper(), FakeEngine(), []
    keeper.running = True  # (as if: no thread, the passes below are this test's own)
    clock = keeper.clock(engine)
    watch = keeper.enter(clock, 0.01, lambda: "the error")
    keeper.hard_stop = stopped.append
    time.sleep(GRACE + 0.1)  # the thread "sleeps" through the deadline and the grace
    keeper._advance()  # wakes: the epoch reaches the deadline now
    keeper._overruns()
    assert engine.epoch >= watch.until and watch.reached is not None
    assert not stopped  # the store traps at its next epoch check: no hard stop yet
    watch.reached -= GRACE + 0.01  # still running GRACE after that: blocked in a host call
    keeper._overruns()
    assert stopped == ["the error"]
    keeper.hard_stop = None
    keeper.leave(watch)


def test_the_interrupt_handler_does_not_raise_where_it_would_be_lost(monkeypatch):
    """Red team round 31: a KeyboardInterrupt raised in a finalizer is printed and lost
    (`bench` ran on, exit 0), and one raised at a runtime callback's first bytecode makes
    ctypes return an uninitialised value. There the handler leaves the stop to the keeper
    (which expires the call, or hard-stops with 130)."""
    import types

    from wasmsbx.backends import deadline

    keeper = deadline.Keeper()
    monkeypatch.setattr(deadline, "KEEPER", keeper)

    def frame(name):
        return types.SimpleNamespace(f_code=types.SimpleNamespace(co_name=name))

    assert deadline.on_interrupt(2, frame("__del__")) is None
    with pytest.raises(KeyboardInterrupt):
        deadline.on_interrupt(2, frame("main"))
    clock = deadline.Keeper.clock(types.SimpleNamespace(increment_epoch=lambda: None))
    watch = deadline.Watch(clock, time.monotonic() + 60, lambda: None)
    keeper.watches[id(watch)] = watch  # a guest's call is running: we were called back
    assert deadline.on_interrupt(2, frame("__call__")) is None


def test_a_late_call_that_comes_back_before_the_stop_is_not_stopped(monkeypatch):
    """Round 45: the keeper listed the late calls, let its lock go, then stopped the
    first: a call that came back in between was stopped all the same (a batch worker
    then blamed its next item, or ended the batch). Seen late, then gone: no stop."""
    from wasmsbx.backends import deadline

    class Watches(dict):
        def values(self):  # (a copy: the stand-in below removes one while listing)
            return list(super().values())

    keeper = Keeper()
    keeper.watches = Watches()
    keeper.running = True  # (no thread: _overruns is called here)
    stopped: list = []
    keeper.hard_stop = stopped.append
    watch = keeper.enter(None, 0.0, lambda: RuntimeError("late"))
    watch.bare = True  # (late at once: no grace)
    real_late = deadline._late

    def late_then_back(w, now):
        found = real_late(w, now)
        if found:
            keeper.watches.pop(id(w), None)  # (the call comes back meanwhile)
        return found

    monkeypatch.setattr(deadline, "_late", late_then_back)
    keeper._overruns()
    assert stopped == []
    monkeypatch.setattr(deadline, "_late", real_late)
    watch = keeper.enter(None, 0.0, lambda: RuntimeError("late"))
    watch.bare = True
    keeper._overruns()
    assert [str(e) for e in stopped] == ["late"]
    assert stopped[0].watch_deadline == watch.deadline  # (which call: batch.worker_stopped)
    keeper.leave(watch)


class _HookedLock:
    """The keeper's lock, running ``hook`` once, just after its ``after``-th release."""

    def __init__(self, after: int, hook) -> None:
        import _thread

        self.inner, self.after, self.hook = _thread.allocate_lock(), after, hook

    def acquire(self, *args) -> bool:
        return self.inner.acquire(*args)

    def release(self) -> None:
        self.inner.release()
        self.after -= 1
        if self.after == 0:
            self.hook()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _expire_on(keeper: Keeper, watch, engine: FakeEngine) -> None:
    """Let the keeper's passes (``_expiring``, a TICK of steps each) bring ``watch`` to
    its deadline, as its thread would."""
    for _ in range(100_000):
        # (the flag goes with the pass after the one that reached the deadline, when
        # that pass's TICK ran out on its last step: CI 120 stopped one pass early)
        if engine.epoch >= watch.until and not watch.expiring:
            break
        keeper._expiring()
    assert engine.epoch >= watch.until and not watch.expiring


def test_a_flood_moves_the_epoch_no_further_once_another_call_enters():
    """Red team round 83: a flood's expiry moved the shared epoch in steps, the lock let go
    between them, and a call that entered in between (another tenant's, 60 s) had its
    deadline passed at once. It stops at the entry; the keeper goes on with it once the
    flooding call is alone on its engine again."""
    keeper, engine = Keeper(), FakeEngine()
    keeper.running = True  # (no thread: the test makes the keeper's passes)
    clock = keeper.clock(engine)
    flooded = keeper.enter(clock, 3600.0, lambda: None)
    entered: list = []
    # (1st release: expire_alone's look; 2nd: its first step; then another call enters)
    keeper.lock = _HookedLock(2, lambda: entered.append(keeper.enter(clock, 60.0, lambda: None)))
    assert keeper.expire_alone(flooded) is False
    (other,) = entered
    assert 0 < engine.epoch < other.until  # the other call's deadline is still ahead
    keeper._expiring()
    assert engine.epoch < other.until  # (nor does the keeper's pass move it meanwhile)
    keeper.leave(other)
    _expire_on(keeper, flooded, engine)
    keeper.leave(flooded)


def test_a_flood_beside_a_running_call_waits_until_that_call_is_back():
    keeper, engine = Keeper(), FakeEngine()
    keeper.running = True
    clock = keeper.clock(engine)
    other = keeper.enter(clock, 60.0, lambda: None)
    flooded = keeper.enter(clock, 3600.0, lambda: None)
    assert keeper.expire_alone(flooded) is False and engine.epoch == 0
    keeper._expiring()
    assert engine.epoch == 0
    keeper.leave(other)
    _expire_on(keeper, flooded, engine)
    keeper.leave(flooded)
    gone = keeper.enter(clock, 60.0, lambda: None)
    keeper.leave(gone)  # (a call that is back is never expired)
    assert keeper.expire_alone(gone) is False and engine.epoch == flooded.until


def test_two_floods_on_one_engine_both_end():
    """Red team round 85: each of two floods on one engine saw the other running, so
    neither was stopped: both ran to their own timeouts (a day's kept two cores busy).
    Calls that are all being stopped are stopped; a third, ordinary call entering holds
    the epoch again."""
    keeper, engine = Keeper(), FakeEngine()
    keeper.running = True
    clock = keeper.clock(engine)
    first = keeper.enter(clock, 3600.0, lambda: None)
    second = keeper.enter(clock, 7200.0, lambda: None)
    assert keeper.expire_alone(first) is False and engine.epoch == 0  # (second runs on)
    assert keeper.expire_alone(second) is True  # (both floods now: the epoch moves on)
    assert engine.epoch >= second.until > first.until
    keeper.leave(first)
    keeper.leave(second)
    third = keeper.enter(clock, 3600.0, lambda: None)
    fourth = keeper.enter(clock, 60.0, lambda: None)  # an ordinary call beside a flood
    assert keeper.expire_alone(third) is False
    keeper._expiring()
    assert engine.epoch < fourth.until
    keeper.leave(fourth)
    _expire_on(keeper, third, engine)
    keeper.leave(third)


def test_a_flood_alone_on_its_engine_ends_its_call_at_once():
    keeper, engine = Keeper(), FakeEngine()
    keeper.running = True
    flooded = keeper.enter(keeper.clock(engine), 3600.0, lambda: None)
    assert keeper.expire_alone(flooded) is True
    assert engine.epoch >= flooded.until and not flooded.expiring
    keeper.leave(flooded)


def test_a_call_entering_during_an_expiry_gets_in_between_its_steps():
    """Red team round 83: the expiring thread let the lock go between steps and took it
    straight back (a lock is not fair), so another sandbox's call waited for the whole
    expiry (2.6 s for a 1-day timeout) to enter, its deadline running. It knocks now,
    and the expiry lets it in between two steps."""
    import threading

    wasmtime = pytest.importorskip("wasmtime")
    config = wasmtime.Config()
    config.epoch_interruption = True  # (a real engine: its FFI call lets the GIL go, and
    keeper = Keeper()  # the waiting thread then starved; Python stand-ins did not)
    keeper.running = True
    clock = keeper.clock(wasmtime.Engine(config))
    flooded = keeper.enter(clock, 366 * 86400.0, lambda: None)
    expiring = threading.Thread(target=keeper.expire_alone, args=(flooded,))
    expiring.start()
    try:
        assert wait_for(lambda: clock.done > 0)  # (the expiry has begun)
        before = clock.done
        other = keeper.enter(keeper.clock(FakeEngine()), 60.0, lambda: None)
        moved = clock.done - before
        # (steps of STEP epochs: 2,000,000 is 200 of them, ~1 s; it was seconds)
        assert moved < 2_000_000, moved
        keeper.leave(other)
    finally:
        keeper.leave(flooded)  # (back: the expiry ends at its next step)
        expiring.join(120)
    assert not expiring.is_alive()


def test_a_call_that_waited_for_the_lock_gets_its_whole_timeout():
    import threading

    keeper, engine = Keeper(), FakeEngine()
    keeper.running = True
    released = []

    def hold() -> None:
        time.sleep(0.3)
        released.append(time.monotonic())
        keeper.lock.release()

    keeper.lock.acquire()  # (held as an expiry's step holds it)
    threading.Thread(target=hold).start()
    watch = keeper.enter(keeper.clock(engine), 0.2, lambda: None)
    assert watch.deadline >= released[0] + 0.2  # (counted from when it could enter)
    keeper.leave(watch)
