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
from ..runner.batch import REPLY_BYTES, _result_bytes
from . import wire

KEEP_JOBS = 4  # compiled modules kept per worker process, least recently used dropped

_LOCK = threading.Lock()
_JOBS: OrderedDict = OrderedDict()  # job key -> _Job


class _Job:
    """One compiled module under one policy, and the idle Callers of its FUNC."""

    def __init__(self, box: Any, func: str, fresh: bool) -> None:
        self.box = box
        self.func = func
        self.fresh = fresh
        self.idle: list = []
        self.lock = threading.Lock()

    def take(self) -> Any:
        from ..runner.batch import make_caller

        with self.lock:
            if self.idle:
                return self.idle.pop()
        return make_caller(self.box, self.func, self.fresh)  # (a component's: its own)

    def give(self, caller: Any) -> None:
        with self.lock:
            self.idle.append(caller)

    def close(self) -> None:
        with self.lock:
            for caller in self.idle:
                caller.close()
            self.idle.clear()


def run_chunk(spec: str, wasm: bytes, chunk: list) -> str:
    """Call FUNC for each ``(line, payload)`` of ``chunk``; the results as JSON text. Once
    the results pass REPLY_BYTES the rest of the chunk is left for the client to submit
    again (a guest can make its later items' results megabytes each, after quick items
    grew the chunks to thousands: red team round 40).

    An item's failure (bad input, trap, limit) is in its result. A failure that stops the
    job (the module does not compile here, a granted directory is missing here, another
    wasmsbx version) comes back as ``{"error": ...}``, also JSON, never as an exception
    object the client would have to unpickle."""
    try:
        job = _job(spec, wasm)
        caller = job.take()
        try:
            started = time.perf_counter()
            results, held = [], 0
            for line, payload in chunk:
                results.append(caller.run(line, payload))
                held += _result_bytes(results[-1], REPLY_BYTES - held)
                if held >= REPLY_BYTES:  # the client submits the rest again (read_results)
                    break
            seconds = time.perf_counter() - started
        finally:
            job.give(caller)
            flush_hits()  # (a Dask worker may be killed: its cache hits are written now)
        return wire.results_to_wire(results, seconds)
    except Exception as exc:
        return wire.error_to_wire(exc)


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
