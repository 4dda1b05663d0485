"""The client side of a ``--cluster`` batch: connect, ship the job, collect in order.

Faults are Dask's to handle where Dask can: a task whose worker dies is rerun by the
scheduler on another worker, and since a chunk's results only count once its task has
finished (one JSON text for the whole chunk), a rerun chunk is written once, whole, in
its place: nothing lost, nothing repeated. A chunk that kills several workers in a row
(Dask's ``distributed.scheduler.allowed-failures``, 3 by default) stops the job.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Optional

from .. import errors
from ..runner.batch import (
    CHUNK_MAX_BYTES,
    IDLE_TICK,
    REPLY_BYTES,
    Pickled,
    Unsendable,
    _chunk_bytes,
    _Feeder,
    _sendable,
    encode,
)
from . import wire
from .target import DEFAULT_TIMEOUT, ENV_TIMEOUT, as_cluster

CHUNK_TARGET_SECONDS = 0.25  # a task costs ~5 ms of Dask overhead: keep it ~2% of a chunk
CHUNK_MAX_ITEMS = 8192  # and CHUNK_MAX_BYTES (256 KiB) of input, as in a local batch
WINDOW_PER_THREAD = 3  # chunks in flight per worker thread
REFRESH_WORKERS = 2.0  # seconds between looks at how many worker threads there are
_SENT = (Pickled, Unsendable)  # an item's form once _sendable has made it
MAX_RESHIPS = 5  # times in a row the module's bytes are sent again, no chunk done between


def run_cluster(
    box: Any,
    func: str,
    numbered: Iterable,
    *,
    cluster: Any,
    fresh: bool = False,
    encoded: bool = False,
    idle: bool = False,
) -> Iterator:
    """Like batch.run_numbered, with the calls made by the workers of a Dask cluster.

    ``cluster`` is a wasmsbx.cluster.Cluster, an address or a distributed.Client (a client
    given is used as it is and left open; one made here is closed at the end)."""
    target = as_cluster(cluster)
    if box.wasm is None:
        raise errors.UsageError(
            f"{box.path.name} is precompiled native code: a cluster needs the module itself",
            hint="run the .wasm/.wat module; each worker compiles it (or uses its own cache)",
        )
    timeout = _timeout(target.timeout)
    client, owned = connect(target.where, timeout)
    try:
        job = _Job(client, _spec(box, func, fresh), box.wasm, timeout)
    except BaseException:
        if owned:
            _close(client)
        raise
    results = _dispatch(job, owned, numbered, encoded, idle, target.chunk_items)
    if owned:  # (a batch dropped before its first item never runs _dispatch's finally:
        # its client stayed connected, one per batch: red team 128)
        weakref.finalize(results, _close, client)
    return results


def _timeout(given: Optional[float]) -> float:
    if given is not None:
        return float(given)
    text = os.environ.get(ENV_TIMEOUT)
    if not text:
        return DEFAULT_TIMEOUT
    from ..units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise errors.UsageError(f"${ENV_TIMEOUT}: {exc}", hint="e.g. 30s or 2min") from None


def connect(where: Any, timeout: float) -> tuple:
    """``(client, owned)``: a distributed.Client for ``where`` (made here, owned) or
    ``where`` itself. An unreachable scheduler is a ClusterError after ``timeout``."""
    try:
        import distributed
    except ImportError:
        raise errors.ClusterError(
            "--cluster needs Dask, which is not installed",
            hint="pip install 'wasmsbx[dask]' (on the client and on every worker)",
        ) from None
    if not isinstance(where, str):
        if not isinstance(where, distributed.Client):
            raise errors.UsageError(
                f"cluster= takes an address or a distributed.Client, not {type(where).__name__}"
            )
        return where, False
    from distributed.comm import parse_address

    try:
        scheme, place = parse_address(where)
    except ValueError as exc:
        raise errors.UsageError(
            f"--cluster {where}: {exc}", hint="give a scheduler address, e.g. tcp://host:8786"
        ) from None
    if scheme == "tcp":
        _probe(where, place, timeout)
    return _bounded_client(where, timeout), True


def _probe(where: str, place: str, timeout: float) -> None:
    """A Dask scheduler speaks first (its handshake, as a connection is accepted): a tcp://
    peer that says nothing within ``timeout`` is given up before any distributed.Client
    is made (one made for a silent peer could only be abandoned, its thread, event loop
    and socket with it, for good: red team 131). A peer that cannot be reached is left
    to Dask, which retries within the same timeout and says why."""
    import socket

    from distributed.comm.addressing import parse_host_port

    try:
        host, port = parse_host_port(place)
        conn = socket.create_connection((host, port), timeout=timeout)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    try:
        head = _receive(conn, 8, deadline)
        size = int.from_bytes(head, "little") if len(head) == 8 else 0
        if len(head) == 8 and not 0 < size <= PROBE_MAX:  # (a banner: SSH-2.0-...)
            raise errors.ClusterError(
                f"{where} is not a Dask scheduler (it did not answer as one)",
                hint="give the scheduler's address (`dask scheduler` prints it)",
            )
        whole = len(head) == 8 and len(_receive(conn, size, deadline)) == size
    finally:
        conn.close()
    if not whole:  # (silent, or one byte and then silent: red team 132)
        raise _silent(where, timeout)


PROBE_MAX = 1 << 20  # bytes a scheduler's first message may take (its handshake: ~100)


def _receive(conn: Any, size: int, deadline: float) -> bytes:
    """Up to ``size`` bytes from ``conn`` before ``deadline`` (fewer: it went quiet)."""
    got = b""
    while len(got) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            conn.settimeout(left)
            chunk = conn.recv(min(size - len(got), 65536))
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return got


def _quiet_refusals() -> None:
    """distributed logs a result it may not deserialize (a worker's pickled object,
    refused: msgpack only) at CRITICAL with its traceback, before the client sees the
    failure, which the command reports itself in one line (red team 151): that record
    alone is dropped."""
    import logging

    logger = logging.getLogger("distributed.protocol.core")
    if not any(isinstance(f, _RefusalFilter) for f in logger.filters):
        logger.addFilter(_RefusalFilter())


class _RefusalFilter:
    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith("Failed to deserialize")


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` is distributed's refusal of a result that is not msgpack."""
    return isinstance(exc, TypeError) and "only able to deserialize data with" in str(exc)


def _bounded_client(where: str, timeout: float) -> Any:
    """A distributed.Client for ``where``, made within ``timeout`` of wall-clock time,
    else a ClusterError (exit 123). Dask's own timeout covers the TCP connect, not its
    handshake: a peer that accepted and said nothing (the dashboard's port, a stopped
    scheduler) held the client for ever; a peer that is no Dask scheduler was exit 118
    (an HTTP answer read as a frame length) or 100 (red team 128). Results come back as
    msgpack only (a string's form): a worker's pickled object is refused, not run; Dask
    itself still unpickles a failed task's exception (README)."""
    import distributed

    _quiet_refusals()
    made: list = []
    failed: list = []
    gave_up = threading.Event()

    def make() -> None:
        try:
            client = distributed.Client(
                where, timeout=timeout, set_as_default=False, deserializers=["msgpack"]
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            failed.append(exc)
            return
        made.append(client)
        if gave_up.is_set():  # (too late: nobody will use it)
            _close(client)

    thread = threading.Thread(target=make, name="wasmsbx-cluster-connect", daemon=True)
    thread.start()
    thread.join(timeout + CONNECT_GRACE)
    if thread.is_alive() or not (made or failed):
        gave_up.set()
        if made:  # (made as the wait ended)
            _close(made[0])
        raise _silent(where, timeout)
    if made:
        return made[0]
    exc = failed[0]
    if not isinstance(exc, Exception):
        raise exc  # (Ctrl-C and the like)
    raise errors.ClusterError(
        f"cannot reach the Dask scheduler at {where} within {timeout:g} s",
        hint=f"is `dask scheduler` running there? ({_reason(exc)}; ${ENV_TIMEOUT} sets the wait)",
    ) from None


def _silent(where: str, timeout: float) -> errors.ClusterError:
    return errors.ClusterError(
        f"the Dask scheduler at {where} did not answer within {timeout:g} s",
        hint=f"is `dask scheduler` running there, and is this its address (not its "
        f"dashboard's)? ${ENV_TIMEOUT} sets the wait",
    )


CONNECT_GRACE = 5.0  # seconds past the timeout the handshake may take before it is given up


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _spec(box: Any, func: str, fresh: bool) -> str:
    """The job as JSON text: also its identity on the workers (one compile per spec)."""
    from .. import __version__

    backend = f"{box.backend_name}:{box.compiler}" if box.compiler else box.backend_name
    spec = {
        "version": __version__,
        "sha256": hashlib.sha256(box.wasm).hexdigest(),
        "name": box.path.name,
        "policy": wire.policy_to_wire(box.policy, getattr(box, "use_cache", None)),
        "backend": backend,
        "func": func,
        "fresh": bool(fresh),
    }
    return json.dumps(spec, sort_keys=True)


def _ship(client: Any, wasm: bytes, timeout: float) -> Any:
    """The module bytes on every worker, sent once (a worker that joins later fetches them
    from a peer); waits up to ``timeout`` for the scheduler to have a worker at all."""
    import asyncio

    address = client.scheduler.address
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.wait_for_workers(1, timeout=max(0.1, deadline - time.monotonic()))
            # A key of its own (hash=False): a job that ends releases its copy, which must
            # not be the one a job starting at the same moment uses ("lost dependencies").
            return client.scatter(wasm, broadcast=True, hash=False)
        except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on
            raise errors.ClusterError(
                f"the Dask scheduler at {address} has no workers (waited {timeout:g} s)",
                hint=f"start some: dask worker {address}",
            ) from None
        except OSError as exc:  # the scheduler went away (or never answered)
            raise _lost_scheduler(address, exc) from None
        except Exception as exc:  # noqa: BLE001 - the scheduler's, as workers come and go
            # (a worker that left as the bytes went out: the scheduler's replicate raised
            # "Can not use replicate to delete data" through scatter, round 46)
            if time.monotonic() >= deadline:
                raise errors.ClusterError(
                    f"could not send the module to the workers of {address}: {_reason(exc)}",
                    hint="are the workers restarting? with --checkpoint, rerun to resume",
                ) from None
            time.sleep(0.5)


def _lost_scheduler(address: str, exc: BaseException) -> errors.ClusterError:
    return errors.ClusterError(
        f"lost the connection to the Dask scheduler at {address}: {_reason(exc)}",
        hint="is it still running? with --checkpoint, rerun the command to resume",
    )


# ---------------------------------------------------------------------------- dispatch


class _Sizer:
    """Chunks of ``fixed`` items, or small ones until an item's cost is known, then about
    CHUNK_TARGET_SECONDS of work each."""

    def __init__(self, fixed: Optional[int]) -> None:
        self.fixed = fixed
        self.size = fixed or 1

    def learn(self, count: int, seconds: float, nbytes: int = 0) -> None:
        if count and not self.fixed:
            per_item = max(seconds / count, 1e-7)
            size = int(CHUNK_TARGET_SECONDS / per_item)
            if nbytes:  # (and results of about REPLY_BYTES: see worker.run_chunk)
                size = min(size, REPLY_BYTES * count // nbytes)
            self.size = max(1, min(CHUNK_MAX_ITEMS, size))


class _Threads:
    """How many worker threads the cluster has now (looked up every REFRESH_WORKERS s)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.count = 1
        self.looked = 0.0

    def get(self) -> int:
        if time.monotonic() - self.looked >= REFRESH_WORKERS:
            self.looked = time.monotonic()
            try:
                self.count = max(1, sum(self.client.nthreads().values()))
            except Exception:  # noqa: S110 - a lost scheduler shows up in the futures
                pass
        return self.count


class _Job:
    """The job on the cluster: its spec, the module bytes the workers hold, and how a
    chunk is submitted (again, when those bytes were lost with the workers holding them)."""

    def __init__(self, client: Any, spec: str, wasm: bytes, timeout: float) -> None:
        self.client = client
        self.spec = spec
        self.wasm = wasm
        self.timeout = timeout
        self.address = client.scheduler.address
        self.data = _ship(client, wasm, timeout)
        # This run's id: the workers keep the instances it used for it alone (worker._Job)
        self.run = os.urandom(12).hex()
        self.reships = 0
        self.wake = threading.Event()  # set whenever a chunk finishes

    def submit(self, chunk: list) -> tuple:
        from .worker import run_chunk

        # A Python caller's items go pickled one by one (as to -j workers): one Dask
        # cannot pickle (an id that is a lock, a generator) is that item's error, not
        # the whole batch's (red team 128: Dask's TypeError ended it, line 1's result
        # lost). JSON lines (bytes, str) go as they are.
        # (once: a chunk sent again, after a fault or in part, holds them already)
        chunk = [item if type(item[1]) in _SENT else _sendable(item) for item in chunk]
        future = self.client.submit(run_chunk, self.spec, self.data, chunk, self.run, pure=False)
        future.add_done_callback(lambda _: self.wake.set())
        return future, chunk

    def recover(self, pending: deque) -> bool:
        """When every worker holding the module's bytes died (a one-worker cluster whose
        worker restarted), Dask cancels the chunks that needed them: send the bytes again
        and resubmit the unfinished chunks in their places. False if that is not it."""
        # Not gated on the bytes' own future: its "lost" status may arrive after the
        # cancellation of the chunks that needed it.
        if self.client.status != "running" or self.reships >= MAX_RESHIPS:
            return False
        self.reships += 1
        self.data = _ship(self.client, self.wasm, self.timeout)
        for i, (future, chunk) in enumerate(pending):
            if future.status != "finished":
                pending[i] = self.submit(chunk)
        return True


def _dispatch(
    job: _Job,
    owned: bool,
    numbered: Iterable,
    encoded: bool,
    idle: bool,
    chunk_items: Optional[int],
) -> Iterator:
    """Submit chunks, yield their results in input order (``None`` as an idle tick when
    ``idle`` and nothing came for IDLE_TICK seconds). The input is read by a _Feeder
    thread, so a stalled input never holds back finished results."""
    client, wake = job.client, job.wake
    feeder = _Feeder(numbered, wake)
    pending: deque = deque()  # (future, chunk), oldest first
    sizer = _Sizer(chunk_items)
    threads = _Threads(client)
    chunk: list = []
    exhausted = False
    try:
        while True:
            wake.clear()  # before looking: a wake-up during this pass is not lost
            slots = threads.get()
            while len(pending) < slots * WINDOW_PER_THREAD and (chunk or not exhausted):
                if not exhausted:
                    exhausted = not feeder.fill(chunk, sizer.size)
                full = len(chunk) >= sizer.size or exhausted
                starved = sum(not f.done() for f, _ in pending) < slots
                if not chunk or not (full or starved or _chunk_bytes(chunk) >= CHUNK_MAX_BYTES):
                    break
                pending.append(job.submit(chunk))
                chunk = []
            if not pending and exhausted and not chunk:
                feeder.end()  # (a read error, once the items before it are done)
                return
            if not (pending and pending[0][0].done()):
                _check_client(job)
                if not wake.wait(IDLE_TICK) and idle:
                    yield None
                continue
            future, done = pending[0]
            lines = [line for line, _ in done]
            if future.cancelled() and job.recover(pending):
                continue
            try:
                text = _outcome(future, lines)
            except _Cancelled:  # cancelled after the check above (e.g. "already forgotten")
                if job.recover(pending):
                    continue
                raise
            results, seconds = wire.read_results(text, lines)
            job.reships = 0  # (MAX_RESHIPS counts the times in a row with no chunk done)
            pending.popleft()
            future.release()
            if len(results) < len(done):  # (its results grew large: the rest goes again)
                pending.appendleft(job.submit(done[len(results) :]))
            sizer.learn(len(results), seconds, len(text))
            for result in results:
                yield encode(result) if encoded else result
    except (KeyboardInterrupt, GeneratorExit):
        _hush()
        raise
    finally:
        feeder.stop()
        _cancel(client, [f for f, _ in pending])
        if owned:
            _close(client)


def _hush() -> None:
    """Ctrl-C (or a batch dropped): the calls the client's event loop was making for
    this thread fail as they are cut short, and tornado logs each with its traceback
    ("Exception in callback functools.partial(<function sync...>)": seen on CI after a
    Ctrl-C, which the command reports itself). Not logged from here on."""
    import logging

    logger = logging.getLogger("tornado.application")
    if logger.getEffectiveLevel() < logging.CRITICAL:
        logger.setLevel(logging.CRITICAL)


def _outcome(future: Any, lines: list) -> Any:
    """The chunk's JSON text; a chunk Dask gave up on is a ClusterError."""
    from distributed import KilledWorker

    where = f"lines {lines[0]}-{lines[-1]}" if len(lines) > 1 else f"line {lines[0]}"
    try:
        return future.result()
    except KilledWorker:
        raise errors.ClusterError(
            f"the chunk of {where} was retried on several workers and each one died",
            hint="an item there may crash the worker process: run those lines without "
            "--cluster to see which",
        ) from None
    except errors.WasmsbxError:
        raise
    except BaseException as exc:  # the scheduler went away, the task was cancelled
        if not isinstance(exc, Exception) and not _is_cancel(exc):
            raise
        if _refused(exc):
            raise errors.ClusterError(
                f"the result for {where} is not what wasmsbx's task returns (not msgpack: "
                "refused, not unpickled)",
                hint="are the workers running the same wasmsbx version as this client?",
            ) from None
        error = _Cancelled if _is_cancel(exc) else errors.ClusterError
        raise error(
            f"the chunk of {where} was lost: {_reason(exc)}",
            hint="is the Dask scheduler still running? rerun with --checkpoint to resume",
        ) from None


class _Cancelled(errors.ClusterError):
    """A chunk Dask cancelled (its data was lost with its workers): recoverable."""


def _is_cancel(exc: BaseException) -> bool:
    """distributed's FutureCancelledError and the CancelledErrors it derives from."""
    return any(c.__name__ == "CancelledError" for c in type(exc).__mro__)


def _check_client(job: _Job) -> None:
    if job.client.status in ("closed", "closing", "failed"):
        raise _lost_scheduler(job.address, RuntimeError("the client gave up reconnecting"))


def _close(client: Any) -> None:
    """Close a client made here; a failure to say goodbye to a scheduler that is gone must
    not replace the error that ended the job."""
    try:
        client.close()
    except Exception:  # noqa: S110 - the job is over either way
        pass


def _cancel(client: Any, futures: list) -> None:
    if not futures or client.status != "running":
        return
    try:
        client.cancel(futures)
    except Exception:  # noqa: S110 - best effort: the job is over either way
        pass
