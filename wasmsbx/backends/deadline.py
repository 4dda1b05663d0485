"""One deadline keeper per process: epochs read off a monotonic clock, signals, a watchdog.

wasmtime interrupts a guest with *epochs*: a store traps once its engine's epoch counter
reaches the deadline the store was armed with. This module owns the only thread that
advances epochs, for every engine of the process (1,000 sandboxes: one thread, not one
per engine). Epoch n of an engine means "TICK * n seconds after the engine's base instant
on ``time.monotonic``": the thread computes the epoch the clock says and increments up to
it, so a late wake-up on a loaded machine catches up instead of stretching the timeout
(the old ticker counted ``sleep(TICK)`` calls: 1 s fired at 2.3 s under load).

Arming a call stays one FFI call (``store.set_epoch_deadline``): ``Keeper.enter`` turns
the deadline instant into ticks from the engine's current epoch with plain arithmetic.

What an epoch cannot stop: a guest blocked inside a host call (a read of a pipe that
never closes, a FIFO; wasmtime's WASI sleeps end at the deadline by themselves,
backends/wasmtime/poll.py) or a compile, since wasmtime checks epochs only in wasm
code. The keeper knows every running call's deadline instant; when one is overrun by
GRACE, it calls the *hard stop* a command line installed (``install_cli``), which writes
the error, flushes the output and ends the process with that error's exit code. A library
caller has no hard stop: see README "Limits from Python" for what holds there.

Signals (command line only): SIGINT and SIGTERM reach this thread through
``signal.set_wakeup_fd`` even while the main thread sits in a runtime's C code, where a
Python handler cannot run. The thread then expires every running call at once (the call
returns, the main thread raises KeyboardInterrupt: exit 130), and if the process is still
there GRACE later (blocked in a host call or a compile), it hard-stops with 130.

Unless the main thread has begun handling the interrupt: its Python signal handler
(``on_interrupt``, installed by ``install_cli``) runs only while it executes Python code,
so once it has run the main thread is not stuck in a runtime call but unwinding, and its
clean-up (a batch or cluster run saving its checkpoint, a pool stopping its workers) may
take longer than GRACE on a loaded machine. The hard stop then waits CLEANUP instead. A
call still running is not helped by that: it stays watched, and GRACE after its (expired)
deadline it is hard-stopped as before. With no runtime call running, the main thread
is in Python code and its handler will run once the thread is scheduled: the hard stop
waits UNWATCHED for it rather than GRACE.
"""

from __future__ import annotations

import _thread
import os
import time
from typing import Any, Callable, Optional

TICK = 0.01  # seconds per epoch: the timeout's resolution
GRACE = 0.25  # seconds a blocked call may overrun its deadline before a hard stop
# Seconds the main thread may take to clean up once it has begun handling Ctrl-C/SIGTERM
# (it saves a checkpoint in milliseconds; seconds when the machine is loaded). A bound, so
# a clean-up that hangs still ends in the hard stop.
CLEANUP = 20.0
# Seconds a signal may wait for the main thread's Python handler when no runtime call is
# running: the main thread is then in Python code or an interruptible system call, where
# the handler runs as soon as the thread is scheduled; on a loaded machine that took more
# than GRACE. A bound, so a process stuck elsewhere still ends in the hard stop.
UNWATCHED = 5.0
IDLE = 1.0  # seconds without calls before the thread exits (restarted on demand)
FAR = 100_000  # epochs (16 minutes of timeout, ~0.1 s of FFI calls): a far deadline
# Epochs expire() moves with the lock held (~10 ms of FFI calls): a call entering meanwhile
# waits that long at most, and expire_alone() looks again between steps.
STEP = 10_000


class quiet_threads:
    """``with quiet_threads(): start a thread``: the threads started inside begin with
    SIGINT and SIGTERM blocked (a new thread inherits its creator's signal mask), so the
    kernel never hands them one. It gives a process's signal to any thread that does not
    block it, and Python runs its handlers only in the main thread, which notices a
    signal another thread took only when it next runs Python code: a main thread asleep
    in a system call (waiting for a checkpoint's clean-up, a pipe, a sleep) slept on
    until the keeper's hard stop ended the process with no clean-up (seen in CI, the
    signal taken by this module's own thread). Where the platform has no
    ``pthread_sigmask``, nothing changes."""

    __slots__ = ("old",)

    def __enter__(self) -> quiet_threads:
        import _signal

        self.old = None
        if hasattr(_signal, "pthread_sigmask"):
            self.old = _signal.pthread_sigmask(_signal.SIG_BLOCK, (_signal.SIGINT, _signal.SIGTERM))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.old is not None:
            import _signal

            _signal.pthread_sigmask(_signal.SIG_SETMASK, self.old)


class _EngineClock:
    """One engine's epoch bookkeeping: epoch ``done`` is the instant ``base + done*TICK``."""

    __slots__ = ("active", "base", "done", "engine")

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.base = time.monotonic()
        self.done = 0
        self.active = 0


class Watch:
    """One running call (or compile) the keeper watches: its deadline and what to say."""

    __slots__ = (
        "bare", "clock", "deadline", "error", "expiring", "interrupted", "memory", "reached",
        "ticks", "until",
    )  # fmt: skip

    def __init__(self, clock: Optional[_EngineClock], deadline: float, error: Callable) -> None:
        self.bare = False  # a guest's call with no epochs to stop it: only the hard stop can
        self.clock = clock
        self.deadline = deadline
        self.error = error  # () -> WasmsbxError, for the hard stop's message and exit code
        self.ticks = 0
        self.until = 0  # the engine epoch at which the call's store traps
        self.interrupted = False  # set by Keeper.interrupt(): report KeyboardInterrupt
        # Set by Keeper.expire_alone(): the keeper moves the epoch on toward ``until``
        # whenever the call is alone on its engine, until it gets there.
        self.expiring = False
        # (resident bytes, error): a compile in this process (compiling.compile_bounded)
        # that must not grow the process's RSS past the first; the hard stop ends it with
        # the second.
        self.memory: Optional[tuple] = None
        # When the keeper saw the engine's epoch reach ``until`` (the store's trap is
        # due): GRACE is counted from then, not from the deadline, for a thread woken
        # late on a loaded machine both advances the epoch and checks for overruns.
        self.reached: Optional[float] = None

    def overran(self) -> bool:
        """Whether the call, back now, came back past its deadline (a host call that
        blocked past it): a timeout all the same, never a result (round 40). By the
        clock too, not only once the keeper marked it: its thread may not have run yet
        on a loaded machine (round 45)."""
        return self.reached is not None or time.monotonic() > self.deadline


class Keeper:
    """The process's deadline thread and its table of running calls."""

    def __init__(self) -> None:
        self.lock = _thread.allocate_lock()
        self.watches: dict = {}  # id -> Watch
        self.running = False
        self.sleeping = False  # the thread waits IDLE, not TICK: enter() must wake it
        self.wake_r, self.wake_w = -1, -1
        self.hard_stop: Optional[Callable] = None  # (error) -> never returns
        # Set by `wasmsbx run` (one guest, then the process ends) when it has a hard stop:
        # then, and only then, a sandbox may load native code without epoch checks.
        self.sole_run = False
        self.stopping = False  # the hard stop has begun: the process is ending
        self.signalled: Optional[float] = None  # monotonic instant of the last SIGINT/SIGTERM
        self.handling: Optional[float] = None  # when the main thread began handling it
        # SIGINT/SIGTERMs to pass over when this thread reads them (forgive)
        self.drop_signals = 0
        self.forgiving = _thread.allocate_lock()
        # Held from start_new_thread until the thread runs: a thread that only
        # bootstraps once the interpreter is finalizing crashes it (SIGSEGV seen on 3.9),
        # so an atexit hook waits for it.
        self.starting = _thread.allocate_lock()
        self.hooked = False
        self.knocked = False  # a thread waits to enter (_knock): an expiry lets it in

    def after_fork_child(self) -> None:
        """In a child forked with ``self.lock`` held (runner.pool): the thread did not come
        along, so start afresh, as a library's keeper (no hard stop, no signal wake-ups):
        the parent's wake pipe and handlers are its own."""
        import signal

        try:
            signal.set_wakeup_fd(-1)
        except ValueError:  # (forked from a thread other than the main one)
            pass
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                os.close(fd)
        hooked = self.hooked
        self.__init__()  # type: ignore[misc]
        self.hooked = hooked

    # ------------------------------------------------------------------ engines
    @staticmethod
    def clock(engine: Any) -> _EngineClock:
        return _EngineClock(engine)

    # ------------------------------------------------------------------ watches
    def enter(
        self,
        clock: Optional[_EngineClock],
        timeout: float,
        error: Callable,
        arm: Optional[Callable] = None,
    ) -> Watch:
        """Start watching a call that must end ``timeout`` seconds from now.

        ``arm(ticks)`` (the store's ``set_epoch_deadline``) is called with the epoch delta
        (+1 tick: the guest always gets at least the full timeout) while no epoch can
        advance, so ``watch.until`` is exactly the epoch at which the store traps. An
        engine with no call running is rebased to now, so epochs it missed while idle
        are never caught up. The timeout counts from when the lock is taken: an expiry
        (``expire_alone``) holds it for a step at a time, and a call that waited for it
        lost that time (red team round 83).
        """
        watch = Watch(clock, 0.0, error)
        if clock is None and arm is not None:
            # A call into code compiled without epoch checks (a `compile -o` artifact,
            # which only `wasmsbx run` loads: KEEPER.sole_run): the hard stop ends it at
            # its deadline, with no GRACE, since nothing else will.
            watch.bare = True
        lock = self.lock
        if not lock.acquire(False):
            self._knock()
        try:
            now = time.monotonic()
            watch.deadline = now + timeout
            if clock is not None:
                if not clock.active:
                    clock.base = now - clock.done * TICK
                clock.active += 1
                target = int((watch.deadline - clock.base) / TICK) + 1
                watch.ticks = max(1, target - clock.done)
                watch.until = clock.done + watch.ticks
                if arm is not None:
                    arm(watch.ticks)
            self.watches[id(watch)] = watch
            if not self.running:
                try:
                    self._start()
                except (RuntimeError, OSError) as exc:  # (no thread, or no descriptor
                    # for its wake pipe, red team 143: nothing would ever time out)
                    self.watches.pop(id(watch), None)
                    if clock is not None:
                        clock.active -= 1
                    from ..errors import ResourceExhausted

                    raise ResourceExhausted(
                        f"cannot start the deadline thread ({exc})",
                        hint="the process is out of threads, memory maps or file "
                        "descriptors; end some sandboxes or raise the limits (ulimit -u, "
                        "vm.max_map_count, ulimit -n)",
                    ) from None
            elif self.sleeping:  # only after a quiet second: busy calls pay no syscall
                self.sleeping = False
                self._wake()
        finally:
            lock.release()
        return watch

    def _knock(self) -> None:
        """Take the lock, which another thread holds: say so (``knocked``), again every
        millisecond of the wait, so that an expiry between two of its steps lets this
        thread in (``_let_in``). A lock is not fair: the expiring thread took it straight
        back, and another sandbox's call waited 2.6 s to enter (red team round 83)."""
        self.knocked = True
        while not self.lock.acquire(True, 0.001):
            self.knocked = True

    def _let_in(self) -> None:
        """Between two steps of an expiry (the lock let go): a thread waiting for the lock
        (``_knock``) gets a moment to take it first."""
        if self.knocked:
            self.knocked = False
            time.sleep(0.001)

    def _wake(self) -> None:
        try:
            os.write(self.wake_w, b"\0")
        except OSError:  # the pipe is full: the thread is awake anyway
            pass

    def leave(self, watch: Watch) -> None:
        with self.lock:
            if self.watches.pop(id(watch), None) is not None and watch.clock is not None:
                watch.clock.active -= 1

    def _start(self) -> None:
        """Start the thread (lock held)."""
        if self.wake_r < 0:
            self.wake_r, self.wake_w = os.pipe()
            os.set_blocking(self.wake_w, False)
        self.starting.acquire()
        if not self.hooked:
            import atexit

            atexit.register(self._started)
            self.hooked = True
        try:
            with quiet_threads():
                _thread.start_new_thread(self._loop, ())
        except BaseException:
            self.starting.release()  # (not running: the next call tries again)
            raise
        self.running = True

    def _started(self) -> None:
        if self.starting.acquire(timeout=2):
            self.starting.release()

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        import select

        # poll, not select: select() refuses a descriptor numbered 1024 or more, which a
        # busy server's wake pipe is (red team round 24: the thread died at its first
        # wait, and no call of the process ever timed out again).
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        self.starting.release()
        idle_since = time.monotonic()
        while True:
            with self.lock:
                busy = bool(self.watches) or self.signalled is not None
                now = time.monotonic()
                if busy:
                    idle_since = now
                elif now - idle_since >= IDLE:
                    if self.hard_stop is None:
                        self.running = False
                        return
                    self.sleeping = True  # a command line's thread stays, waiting long
                wait = IDLE if self.sleeping else TICK
            if poller.poll(wait * 1000.0):
                self._signals()
            self._expiring()
            self._advance()
            self._overruns()

    def _signals(self) -> None:
        try:
            data = os.read(self.wake_r, 64)
        except OSError:
            return
        import signal

        count = sum(b in (signal.SIGINT, signal.SIGTERM) for b in data)
        with self.forgiving:
            dropped = min(count, self.drop_signals)
            self.drop_signals -= dropped
            if count > dropped:
                self.interrupt(signalled=True)

    def forgive(self) -> None:
        """The main thread has dropped a SIGINT/SIGTERM (a finished checkpointed run:
        checkpoint.HoldInterrupt.done, _Late): no hard stop for it, whether this thread
        has seen it already or will (red team 112: it hard-stopped the process 5 s later,
        exit 130 "interrupted", when the summary could not be written at once)."""
        with self.forgiving:
            if self.signalled is not None:
                self.settle()
            else:
                self.drop_signals += 1

    def _advance(self) -> None:
        """Bring every engine with a running call up to the epoch the clock says."""
        now = time.monotonic()
        with self.lock:
            clocks = {id(w.clock): w.clock for w in self.watches.values() if w.clock is not None}
            for clock in clocks.values():
                target = int((now - clock.base) / TICK)
                while clock.done < target:
                    clock.engine.increment_epoch()
                    clock.done += 1
            for w in self.watches.values():
                if w.reached is None and w.clock is not None and w.clock.done >= w.until:
                    w.reached = now

    def _expiring(self) -> None:
        """Go on moving the epoch of calls ``expire_alone`` could not finish, each while
        it is alone on its engine; a TICK of steps a pass at most, so the thread still
        advances the other engines' epochs and sees signals and overruns in time."""
        with self.lock:
            expiring = [w for w in self.watches.values() if w.expiring]
        end = time.monotonic() + TICK
        for watch in expiring:
            while time.monotonic() < end:
                with self.lock:
                    if not self._alone(watch, watch.clock):
                        break
                    if not self._step(watch, watch.clock):
                        watch.expiring = False  # (there)
                        break
                self._let_in()

    def _overruns(self) -> None:
        """Hard-stop a call stuck past its deadline, or a process that ignores a signal."""
        if self.hard_stop is None:
            return
        now = time.monotonic()
        signalled, handling = self.signalled, self.handling
        with self.lock:
            late = [w for w in self.watches.values() if _late(w, now)]
            busy = bool(self.watches)
        if signalled is not None and (
            now - handling > CLEANUP
            if handling is not None
            else now - signalled > (GRACE if busy else UNWATCHED)
        ):
            self._stop(_interrupted())
        if late:
            with self.lock:  # (still running: the call may have come back meanwhile)
                late = [w for w in late if self.watches.get(id(w)) is w]
            if late:
                self._stop(_late_error(late[0]))
        with self.lock:
            capped = [w.memory for w in self.watches.values() if w.memory is not None]
        if capped:
            resident = resident_bytes()
            for limit, error in capped:
                if resident > limit:
                    self._stop(error())

    def _stop(self, error: Any) -> None:
        """The hard stop, which must end the process whatever happens in it: if it fails
        (it starts threads to write without blocking, and a guest that filled the address
        space leaves none to start: red team round 28), this thread, the only one that
        can stop code without epoch checks and the one signals reach, would die with it
        and the guest run on. So leave anyway, with the error's exit code."""
        hard_stop = self.hard_stop
        if hard_stop is None:
            return
        self.stopping = True  # the guest's further output is dropped (backend _Output)
        try:
            hard_stop(error)  # (never returns, but for tests' stand-ins)
            self.stopping = False
            return
        except BaseException:  # noqa: BLE001 - nothing may keep this process alive now
            pass
        try:
            code = int(error.exit_code)
        except Exception:  # noqa: BLE001
            code = 1
        os._exit(code)

    # ------------------------------------------------------------------ interrupts
    def interrupt(self, signalled: bool = False) -> None:
        """Stop every running call now (Ctrl-C): its epoch deadline passes at once, and
        the call raises KeyboardInterrupt. Safe from any thread."""
        if signalled:
            self.signalled = time.monotonic()
        with self.lock:
            watches = list(self.watches.values())
            for watch in watches:
                watch.interrupted = True
                watch.deadline = min(watch.deadline, time.monotonic())
        # (a signal's: a call with days left is minutes of epochs away, and Ctrl-C on
        # `--timeout 7d` waited for them, this thread busy and no hard stop checked; the
        # command line stops at once instead, as the hard stop after GRACE would)
        error = _interrupted if signalled else None
        for watch in watches:
            if watch.clock is not None:
                self.expire(watch, error)

    def expire(self, watch: Watch, error: Optional[Callable] = None) -> None:
        """Make a running call pass its deadline now (this ends every call running on
        that engine: it is used for Ctrl-C; an output flood's is ``expire_alone``). One
        FFI call per epoch still ahead of it: ~1 us each, so ~60 ms for a call with 10
        minutes left.

        ``error()``: why (a signal, an output flood). A call farther than FAR epochs from its
        deadline is minutes of those calls away, so a command line hard-stops with it
        at once instead (red team round 27: an output flood under `--timeout 366d` ran
        on for 20 minutes past limits.output, and starved Ctrl-C meanwhile)."""
        clock = watch.clock
        if clock is None:
            if watch.bare and error is not None and self.hard_stop is not None:
                self._stop(error())  # (no epochs to move: the process must end)
            return
        if error is not None and self.hard_stop is not None:
            with self.lock:
                far = watch.until - clock.done > FAR
            if far:
                self._stop(error())
        while True:  # in steps, the lock let go between them: other calls go on meanwhile
            with self.lock:
                if not self._step(watch, clock):
                    return
            self._let_in()

    def expire_alone(self, watch: Watch, error: Optional[Callable] = None) -> bool:
        """``expire(watch, error)`` for one call's own reason (an output flood), which must
        end no other call: the engine's epoch is shared by every store of the engine, so
        it moves only while ``watch`` is the one call running on it, looked at with the
        lock held at each step. A call that enters meanwhile stops the expiry (its
        deadline, armed from the epoch then, stays ahead). Red team round 83: the check
        ran once, outside the lock, and the steps went on past a call that entered
        between them: another tenant's call, 60 s timeout, got TimeoutExceeded after
        milliseconds. Returns whether the call's deadline has passed; if not, the
        keeper's thread goes on with it whenever the call is alone on its engine again
        (its writes are refused meanwhile), or its own timeout ends it first."""
        clock = watch.clock
        if clock is None:
            self.expire(watch, error)
            return True
        with self.lock:
            watch.expiring = True
            if not self._alone(watch, clock):
                return False
            far = watch.until - clock.done > FAR
        if far and error is not None and self.hard_stop is not None:
            self._stop(error())
        while True:
            with self.lock:
                if not self._alone(watch, clock):
                    return watch.until <= clock.done
                if not self._step(watch, clock):
                    watch.expiring = False
                    return True
            self._let_in()

    def _alone(self, watch: Watch, clock: _EngineClock) -> bool:
        """Whether ``watch`` is running and every call on its engine is one being stopped
        for its own reason (``expiring``: an output flood), ``watch`` the one call or
        among them (lock held). Two floods on one engine each saw the other running, so
        neither was stopped: both ran to their own timeouts, a day's keeping two cores
        busy (red team round 85); moving the epoch ends only calls that are to end."""
        if self.watches.get(id(watch)) is not watch:
            return False
        if clock.active == 1:
            return True
        ending = sum(1 for w in self.watches.values() if w.clock is clock and w.expiring)
        return ending == clock.active

    @staticmethod
    def _step(watch: Watch, clock: _EngineClock) -> bool:
        """Move the engine's epoch up to STEP epochs toward ``watch``'s deadline (lock
        held); False once it is there."""
        ahead = min(STEP, max(0, watch.until - clock.done))
        if not ahead:
            return False
        for _ in range(ahead):
            clock.engine.increment_epoch()
        clock.done += ahead
        clock.base -= ahead * TICK  # the clock stays in step with ``done``
        return True

    def handling_interrupt(self) -> None:
        """The main thread has begun handling Ctrl-C/SIGTERM (its Python signal handler ran,
        so it is not stuck in a runtime call): give its clean-up CLEANUP, not GRACE.
        Only the first call of an interrupt counts, so the bound cannot be pushed back;
        without a hard stop (a library caller) there is nothing to tell."""
        if self.hard_stop is not None and self.handling is None:
            self.handling = time.monotonic()

    def settle(self) -> None:
        """The main thread has handled the interrupt: no hard stop for it."""
        self.signalled = None
        self.handling = None

    # ------------------------------------------------------------------ the command line
    def install_cli(self, hard_stop: Callable) -> None:
        """For the command line (main thread only): SIGINT/SIGTERM wake this thread, and a
        call stuck past its deadline ends the process through ``hard_stop(error)``."""
        import signal

        with self.lock:
            self.hard_stop = hard_stop
            if not self.running:
                self._start()
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, on_interrupt)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, on_interrupt)


def on_interrupt(signum: int, frame: Any) -> None:
    """The command line's SIGINT and SIGTERM handler (SIGTERM ends a run like Ctrl-C: exit
    130 with the usual clean-up). Python runs it in the main thread, between bytecodes:
    the main thread is not stuck in a runtime call, so tell the keeper before unwinding."""
    if frame is not None and frame.f_code.co_name == "__del__":
        # Raised in a finalizer, it is printed and lost (red team round 31: `bench` ran
        # on and exited 0): the keeper's hard stop ends the process instead (exit 130).
        return
    if any(w.clock is not None for w in list(KEEPER.watches.values())):
        # A guest's call is running, so this Python code was called back by the runtime
        # (an output sink, a host function); an exception at a callback's first bytecode
        # leaves ctypes returning an uninitialised value, which wasmtime may free
        # (abort). The keeper has expired the call: it returns with the interrupt, and
        # the caller raises KeyboardInterrupt there.
        return
    KEEPER.handling_interrupt()
    raise KeyboardInterrupt


KEEPER = Keeper()
# Any fork, not only runner.pool's: the child has no deadline thread, yet its keeper said
# "running" for a second after the parent's last call, and a call made in the child
# then never timed out (red team round 24: a multiprocessing "fork" pool started right
# after a call in the parent). The child starts afresh, as a library's keeper.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=KEEPER.after_fork_child)
# Called with the error on the keeper's thread just before the command line's hard stop
# leaves the process (e.g. --audit-log writes its last events); see cli._hard_stop.
AT_HARD_STOP: list = []


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident memory (/proc/self/statm), 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _interrupted() -> Any:
    from ..errors import Interrupted

    return Interrupted("interrupted")


def _late(watch: Watch, now: float) -> bool:
    """Past its deadline for good: a call with no epochs to stop it (bare) at once; one
    the epochs should have stopped GRACE after the keeper moved its engine's epoch to
    its deadline (red team round 23's blocked host call; before, GRACE after the
    deadline itself, and a keeper woken late on a loaded CI machine both advanced the
    epoch and hard-stopped a busy guest that was about to trap, exit 112 "blocked in a
    host call" instead of the item's timeout); anything else (a compile, a stdin open)
    GRACE after its deadline."""
    if watch.bare:
        return now > watch.deadline
    if watch.clock is not None:
        return watch.reached is not None and now - watch.reached > GRACE
    return now - watch.deadline > GRACE


def _late_error(watch: Watch) -> Any:
    """The overrunning call's own error (an interrupted call's is the interrupt: exit 130,
    also when the main thread had begun handling it); a generic timeout if building it
    fails, since an exception here would end this thread and with it every deadline of
    the process."""
    if watch.interrupted:
        return _interrupted()
    try:
        error = watch.error()
    except Exception:
        from ..errors import TimeoutExceeded

        error = TimeoutExceeded("timeout: a call is still running past its deadline")
    try:  # (which call: a batch worker's stop checks it is the item it is running)
        error.watch_deadline = watch.deadline
    except AttributeError:
        pass
    return error
