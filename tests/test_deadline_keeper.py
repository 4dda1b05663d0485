"""The deadline keeper (wasmsbx.backends.deadline): epochs from the monotonic clock."""

from __future__ import annotations

import time

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
    watch = keeper.enter(clock, 60.0, lambda: None)
    started = time.monotonic()
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
