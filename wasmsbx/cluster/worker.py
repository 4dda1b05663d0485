"""The worker side of a ``--cluster`` batch: the one task a Dask worker runs, ``run_chunk``.

A worker process keeps, per job (module digest + policy + backend + FUNC + ``fresh``), one
compiled Sandbox and a few Callers: the module is compiled once per worker (or loaded from
the worker's own cache, which authenticates its entries with the worker user's key; nothing
native ever comes from the client), and instances are reused from chunk to chunk exactly
as the local batch reuses them. Dask may run several tasks at once in a worker's threads,
so each running chunk takes a Caller (an instance) of its own.

Never imports Dask: the task is plain Python that returns JSON text.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .. import errors
from ..native import flush_hits
from ..runner.batch import REPLY_BYTES, _received, _result_bytes
from . import wire

KEEP_JOBS = 4  # compiled modules kept per worker process, least recently used dropped

_LOCK = threading.Lock()
_JOBS: OrderedDict = OrderedDict()  # job key -> _Job


KEEP_RUNS = 2  # runs per job whose idle Callers a worker keeps, least recently used closed


class _Job:
    """One compiled module under one policy, and the idle Callers of its FUNC, per run.

    A Caller (an instance: its memory and globals) goes back to the run that used it and
    to no other: a run is one ``wasmsbx run --batch --cluster`` (its client's random
    ``run`` id), which reuses its instances from chunk to chunk as a local batch does.
    Before, any later job of the same spec took them, from any client: a run that stored
    its input in a global had it returned to the next run (red team 105)."""

    def __init__(self, box: Any, func: str, fresh: bool) -> None:
        self.box = box
        self.func = func
        self.fresh = fresh
        self.idle: OrderedDict = OrderedDict()  # run id -> its idle Callers
        self.lock = threading.Lock()
        # Calls run in this process (wasmtime): a blocked one is given up from another
        # thread (_Calls.watch). wasmer runs each in a child process it ends at the
        # deadline, and its objects may not change threads (pyo3 "unsendable").
        self.in_process = str(getattr(box, "backend_name", "")).startswith("wasmtime")

    def take(self, run: str) -> Any:
        from ..runner.batch import make_caller

        with self.lock:
            kept = self.idle.get(run)
            if kept:
                return kept.pop()
        return make_caller(self.box, self.func, self.fresh)  # (a component's: its own)

    def give(self, caller: Any, run: str) -> None:
        if not run:  # (no run named: no later chunk can be known to be the same run's)
            caller.close()
            return
        closing = []
        with self.lock:
            self.idle.setdefault(run, []).append(caller)
            self.idle.move_to_end(run)
            while len(self.idle) > KEEP_RUNS:
                closing += self.idle.popitem(last=False)[1]
        for old in closing:
            old.close()

    def close(self) -> None:
        with self.lock:
            callers = [c for kept in self.idle.values() for c in kept]
            self.idle.clear()
        for caller in callers:
            caller.close()


def run_chunk(spec: str, wasm: bytes, chunk: list, run: str = "") -> str:
    """Call FUNC for each ``(line, payload)`` of ``chunk``; the results as JSON text.
    ``run``: the client's id of this run (the instances it used are kept for it alone,
    see _Job). Once
    the results pass REPLY_BYTES the rest of the chunk is left for the client to submit
    again (a guest can make its later items' results megabytes each, after quick items
    grew the chunks to thousands: red team round 40).

    On wasmtime the calls run in a thread of their own (``_Calls``), watched from the
    task's: an item still running STUCK_GRACE past twice its timeout (its instantiation
    may take one) is blocked in a host call (a pipe, a FIFO's open), which no
    epoch can stop and nothing can stop in a process that is not ours to end. It is
    given up: the item is a timeout, the chunk's results so far are returned (the client
    submits the rest again) and its thread and instance are left to finish by
    themselves, never used again. Before, the task waited for the call: one item
    blocked (or, before poll.py, sleeping) for days held a Dask worker thread and the
    whole batch that long. Past STUCK_MAX calls left running, the worker process ends
    (``_too_many``). wasmer's calls run in the task's thread: each is in a child process
    ended at its deadline.

    An item's failure (bad input, trap, limit) is in its result. A failure that stops the
    job (the module does not compile here, a granted directory is missing here, another
    wasmsbx version) comes back as ``{"error": ...}``, also JSON, never as an exception
    object the client would have to unpickle (an honest worker's; see wire.py)."""
    try:
        job = _job(spec, wasm)
        calls = _Calls(job.take(run), chunk)
        try:
            if job.in_process:
                results, seconds = calls.watch(_timeout(job), job.func)
            else:  # (wasmer: each call in a child process, ended at its deadline)
                results, seconds = calls.run_here()
        finally:
            if calls.given_up:
                _too_many()
            else:
                job.give(calls.caller, run)
            flush_hits()  # (a Dask worker may be killed: its cache hits are written now)
        return wire.results_to_wire(results, seconds)
    except BaseException as exc:  # noqa: BLE001 - never out of a Dask task (see below)
        # (a BaseException that is not an Exception, such as pyo3's PanicException from
        # wasmer, left the task and the Dask worker never reported it: the client waited
        # for ever, round 47)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return wire.error_to_wire(exc)


STUCK_GRACE = 1.0  # seconds past twice its timeout an item may run before it is given up
# Calls given up and still running before the worker process ends. Each holds a thread
# and an instance that is not growing (it is blocked; back, it traps at once): the
# memory is Dask's to watch (its nanny restarts a worker past its memory limit). An end
# costs the job the module bytes on a one-worker cluster (the client sends them again):
# at 8, a batch whose every item slept ended after 40-65 items (red team round 46).
STUCK_MAX = 128
STUCK_EXIT_DELAY = 5.0  # seconds from then to its end (its task's results go first)
_STUCK = [0]  # calls given up and still running in this process (under _LOCK)


def _timeout(job: _Job) -> float:
    policy = getattr(job.box, "policy", None)
    timeout = getattr(policy, "timeout", None)
    return float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 0.0


class _Calls:
    """One chunk's calls, made in a thread of their own so that the task's thread can
    give up a call blocked in a host call (run_chunk). ``item``: the item in progress
    and when it began; ``results`` those made; both read and written under ``lock``."""

    def __init__(self, caller: Any, chunk: list) -> None:
        self.caller, self.chunk = caller, chunk
        self.results: list = []
        self.item: Any = None
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.given_up = False
        self.failure: Any = None
        self.started = time.perf_counter()
        self.seconds = 0.0

    def run(self) -> None:
        try:
            held = 0
            for line, payload in self.chunk:
                payload = _received(payload)  # (a Python caller's item, pickled alone)
                with self.lock:
                    if self.given_up:
                        return
                    self.item = (line, payload, time.monotonic())
                result = self.caller.run(line, payload)
                with self.lock:
                    if self.given_up:  # (it came back after all: too late, not used)
                        return
                    self.results.append(result)
                    self.item = None
                held += _result_bytes(result, REPLY_BYTES - held)
                if held >= REPLY_BYTES:  # the client submits the rest again (read_results)
                    break
        except BaseException as exc:  # noqa: BLE001 - the task's thread raises it
            self.failure = exc
        finally:
            self.seconds = time.perf_counter() - self.started
            self.done.set()
            if self.given_up:
                self._finish_late()

    def run_here(self) -> tuple:
        """The calls made in this thread, none given up: (results, seconds)."""
        self.run()
        if self.failure is not None:
            raise self.failure
        return self.results, self.seconds

    def _finish_late(self) -> None:
        """The call given up has come back: its instance goes (it is nobody's now)."""
        try:
            self.caller.close()
        except Exception:  # noqa: BLE001 - a late clean-up must never raise in a thread
            pass
        with _LOCK:
            _STUCK[0] -= 1

    def watch(self, timeout: float, func: str) -> tuple:
        """Run the calls and wait for them; (results, seconds). With a ``timeout``, an
        item still running STUCK_GRACE past twice it is given up (the item's timeout ends
        the results)."""
        from ..backends.deadline import quiet_threads

        with quiet_threads():
            thread = threading.Thread(target=self.run, name="wasmsbx-cluster-calls", daemon=True)
            thread.start()
        while True:
            wait = None
            if timeout:
                with self.lock:
                    item = self.item
                if item is not None:
                    # (an item may instantiate, a fresh one or the first of a new caller,
                    # under a timeout of its own before its call: round 46)
                    wait = item[2] + 2 * timeout + STUCK_GRACE - time.monotonic()
                    if wait <= 0:
                        given = self._give_up(item, timeout, func)
                        if given is not None:
                            return given
                        continue
                else:
                    wait = min(timeout, 1.0)  # (the next item's start is seen within)
            if self.done.wait(wait):
                break
        if self.failure is not None:
            raise self.failure
        return self.results, self.seconds

    def _give_up(self, item: tuple, timeout: float, func: str) -> Any:
        """The results with ``item``'s timeout last, or None if it came back meanwhile."""
        from ..runner.batch import BatchResult, _given_id, error_record
        from ..units import format_duration

        with self.lock:
            if self.item is not item or self.done.is_set():
                return None
            self.given_up = True
            results = list(self.results)
        with _LOCK:
            _STUCK[0] += 1
        line, payload, began = item
        error = errors.TimeoutExceeded(
            f"timeout: {func} still running after {format_duration(timeout)} "
            "(blocked in a host call)",
            hint="raise limits.timeout (--timeout 30s) if the guest needs longer",
            limit_value=timeout,
        )
        ident = _given_id(payload, line)
        seconds = time.monotonic() - began
        results.append(BatchResult(line, ident, None, error_record(error), seconds))
        return results, time.perf_counter() - self.started


def _too_many() -> None:
    """Past STUCK_MAX calls given up and still running (each holds a thread and an
    instance, up to limits.memory), this worker process ends STUCK_EXIT_DELAY after
    the task that gave up the last one has returned: Dask's nanny starts a new one, and
    Dask runs again elsewhere the tasks that were running here (README "Faults")."""
    with _LOCK:
        if _STUCK[0] <= STUCK_MAX or _ENDING:
            return
        _ENDING.append(True)

    def leave() -> None:
        flush_hits()
        os._exit(70)

    timer = threading.Timer(STUCK_EXIT_DELAY, leave)
    timer.daemon = True
    timer.start()


_ENDING: list = []  # the worker process is about to end (_too_many)


def _job(key: str, wasm: bytes) -> _Job:
    with _LOCK:
        job = _JOBS.get(key)
        if job is not None:
            _JOBS.move_to_end(key)
            return job
        # Compiling under the lock: a second thread of this worker waits for this compile
        # instead of compiling the same module again.
        job = _build(json.loads(key), wasm)
        _JOBS[key] = job
        while len(_JOBS) > KEEP_JOBS:
            _JOBS.popitem(last=False)[1].close()
        return job


def _build(spec: dict, wasm: bytes) -> _Job:
    from .. import __version__
    from ..runner.sandbox import Sandbox, _is_component_file

    where = _where()
    if spec["version"] != __version__:
        raise errors.ClusterError(
            f"{where} runs wasmsbx {__version__}, the client {spec['version']}",
            hint="install the same wasmsbx version on the client and every worker",
        )
    if hashlib.sha256(wasm).hexdigest() != spec["sha256"]:
        raise errors.ClusterError(f"{where}: the module bytes do not match their digest")
    policy = wire.policy_from_wire(spec["policy"], where)
    path = _module_file(spec["sha256"], spec["name"], wasm)
    try:
        kind: Any = Sandbox
        if _is_component_file(path):  # the worker calls; batch and stream stay client-side
            from ..components.sandbox import ComponentSandbox as kind
        box = kind(path, policy, backend=spec["backend"], kind="call")
    finally:
        path.unlink()
        path.parent.rmdir()
    return _Job(box, spec["func"], spec["fresh"])


def _module_file(sha256: str, name: str, wasm: bytes) -> Path:
    """The module written where only this user can read it, under the client's file name
    (messages and a WASI guest's argv[0] name it as a local run does)."""
    folder = Path(tempfile.mkdtemp(prefix=f"wasmsbx-{sha256[:16]}-"))
    base = Path(name).name
    path = folder / (base if base not in ("", ".", "..") else "module.wasm")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(wasm)
    return path


def _where() -> str:
    import socket

    return f"worker {socket.gethostname()} (pid {os.getpid()})"
