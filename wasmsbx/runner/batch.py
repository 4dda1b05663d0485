"""Batch calls: one export called once per input item, results in input order.

The module is compiled once. With one job the calls run in this process on one reused
instance; with ``jobs=N`` they run in N worker processes (runner.pool), each with its own
instance of the precompiled module. ``fresh=True`` instantiates afresh for every call instead
(state isolation). Limits apply per call: fuel and the timeout are re-armed before each
call; memory and table caps hold per instance. After a call traps or hits a limit its
instance is replaced, so a half-finished call never leaks state into the next item.

Memory stays bounded for any input size: items are read lazily, at most
``WINDOW_PER_JOB`` chunks per worker are in flight, and results are yielded as soon as
their turn comes.

Input items (``parse_item``): a JSON array of arguments, or an object ``{"args": [...],
"id": ...}``; the Python API also takes lists, tuples and dicts directly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Callable, NamedTuple, Optional, Union

from .. import errors
from ..errors import ExitCode
from ..values import MAX_DIGITS
from .pool import (
    STALE,
    BatchWorkerDied,  # noqa: F401 - where callers look for it
)
from .sandbox import json_value, parse_args

perf_counter = time.perf_counter
monotonic = time.monotonic

MAX_LINE = 1 << 20  # longer input lines are refused (item error), never loaded whole
MAX_SKIP = 64 << 20  # an overlong line is skipped up to this; longer ends the batch
WINDOW_PER_JOB = 4  # chunks in flight per worker
CHUNK_MAX_ITEMS = 1024
CHUNK_MAX_BYTES = 256 * 1024
CHUNK_TARGET_SECONDS = 0.02  # a chunk should keep a worker busy about this long: a chunk
# costs the parent ~1 ms (submit, pickle both ways, wake-up), 2% of this
FEED_AHEAD = 256  # items read ahead of their call by the input thread
IDLE_TICK = 0.05  # seconds without progress before an idle tick (``idle=True``)
PROGRESS_EVERY = 0.1  # seconds


class BadItem(errors.WasmsbxError):
    """An input line that is not a call: bad JSON, wrong shape, too long."""

    exit_code = ExitCode.USAGE
    kind = "input"
    ident: Any = None  # the item's own id, when it gave a good one (its result echoes it)

    @classmethod
    def of(cls, message: str, ident: Any) -> BadItem:
        exc = cls(message)
        exc.ident = ident
        return exc


class BatchResult(NamedTuple):
    """One item's outcome. ``values`` are JSON-ready (inf/nan as strings); ``error`` is
    ``{"kind", "message"}`` plus ``"limit"`` for limits, when the item failed."""

    line: int
    id: Any
    values: Optional[list]
    error: Optional[dict]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_kind(self) -> Optional[str]:
        """ "trap", "usage", "input", "limit:fuel", ... (the summary's counting key)."""
        if self.error is None:
            return None
        limit = self.error.get("limit")
        return f"limit:{limit}" if limit else self.error["kind"]

    def to_dict(self) -> dict:
        data: dict = {"line": self.line, "id": self.id, "ok": self.error is None}
        if self.error is None:
            data["results"] = self.values
        else:
            data["error"] = self.error
        data["time_ms"] = round(self.seconds * 1000, 3)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


class Encoded(NamedTuple):
    """A result already rendered as its JSONL line (what ``run_jsonl`` writes)."""

    line: int
    error_kind: Optional[str]
    data: bytes

    @property
    def ok(self) -> bool:
        return self.error_kind is None


def encode(result: BatchResult) -> Encoded:
    return Encoded(result.line, result.error_kind, result.to_json().encode() + b"\n")


class EncodedChunk(NamedTuple):
    """A chunk's results as one piece of JSONL (what -j N workers send back): ``count``
    lines, in input order; ``kinds`` the error kind of each item that failed."""

    count: int
    kinds: tuple
    data: bytes


def encode_chunk(results: list) -> EncodedChunk:
    kinds = tuple(r.error_kind for r in results if r.error_kind is not None)
    return EncodedChunk(len(results), kinds, b"".join(r.data for r in results))


class Summary:
    """Counts over a batch (across resumed runs too) and this run's throughput."""

    def __init__(self, saved: Optional[dict] = None) -> None:
        saved = saved or {}
        self.ok = saved.get("ok", 0)
        self.failed = saved.get("failed", 0)
        self.errors: dict = dict(saved.get("errors", {}))
        self.resumed_at = saved.get("next_line") if saved else None
        self.this_run = 0
        self.started = time.perf_counter()
        self.finished: Optional[float] = None

    def add(self, result: Any) -> None:
        """Count a BatchResult or an Encoded one."""
        self.this_run += 1
        kind = result.error_kind
        if kind is None:
            self.ok += 1
        else:
            self.failed += 1
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def add_chunk(self, chunk: EncodedChunk) -> None:
        """Count an EncodedChunk's items."""
        self.this_run += chunk.count
        self.ok += chunk.count - len(chunk.kinds)
        self.failed += len(chunk.kinds)
        for kind in chunk.kinds:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def items(self) -> int:
        return self.ok + self.failed

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def rate(self) -> float:
        return self.this_run / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict:
        return {"ok": self.ok, "failed": self.failed, "errors": dict(self.errors)}

    def to_dict(self) -> dict:
        return {
            "items": self.items,
            "ok": self.ok,
            "failed": self.failed,
            "errors": dict(sorted(self.errors.items())),
            "this_run": self.this_run,
            "resumed_at_line": self.resumed_at,
            "seconds": round(self.seconds, 6),
            "items_per_second": round(self.rate, 1),
        }


# ---------------------------------------------------------------------------- items


class Unsendable(NamedTuple):
    """In place of an item a worker process could not be sent (jobs > 1: pickled), with
    why: the worker answers it as a bad item, and the batch goes on (red team round 40:
    an id that was a lambda ended the batch with a PicklingError)."""

    reason: str


class Pickled(NamedTuple):
    """An item of a Python caller's (not a JSON line), pickled by the parent on its own
    and read back by the worker on its own: one the worker cannot read (an id of a class
    defined under ``python -c`` or in a notebook, which the worker's ``__main__`` lacks)
    is that item's input error. Pickled with its chunk, it failed the whole chunk's read
    in the worker's reader thread, which died, and the batch waited for ever (red team
    round 41)."""

    data: bytes


def parse_item(payload: Any) -> tuple:
    """``(args, id)`` from a JSON line (bytes/str) or a list/tuple/dict; BadItem if neither."""
    if type(payload) is Unsendable:
        raise BadItem(payload.reason)
    if isinstance(payload, (bytes, bytearray, str)):
        if len(payload) > MAX_LINE:
            raise BadItem(f"line longer than {MAX_LINE} bytes")
        if not isinstance(payload, str):
            # (UTF-8, as JSON lines are: json.loads of bytes guessed UTF-16 or UTF-32
            # from where NULs fell, and ran "[40,2]" in UTF-16: red team 121)
            try:
                payload = payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadItem(
                    f"not UTF-8 text (byte {exc.start + 1}: {exc.reason}); a line is JSON in UTF-8"
                ) from None
        if payload[:1] == "\ufeff":  # (a byte-order mark, as a Windows editor saves it)
            payload = payload[1:]
        try:
            if len(payload) <= ID_DIGITS or not _long_digits(payload):
                payload = json.loads(payload)
            else:
                # An integer of more digits than Python 3.11+ converts was "not JSON" in
                # Python's words there, and read on 3.9, in time quadratic in its length
                # (38 s for a line of 1 MiB: red team rounds 69 and 70): out of every
                # type's range as an argument, refused as an id, never converted.
                payload = json.loads(payload, parse_int=_long_int)
        except ValueError as exc:
            raise BadItem(f"not JSON: {exc}") from None
        except RecursionError:  # [[[[... a line of 1 MB nests deeper than json can
            raise BadItem("not JSON this reader accepts: nested too deeply") from None
    if isinstance(payload, (list, tuple)):
        return list(payload), None
    if isinstance(payload, dict):
        # (the id first: an item refused for its args or keys is still answered under
        # its own id, not its line number, which may be another item's id: round 155)
        ident = payload.get("id")
        if ident is not None and (type(ident) is not int or ident.bit_length() > 4096):
            _check_id(ident)
        unknown = sorted(set(payload) - {"args", "id"})
        if unknown:
            raise BadItem.of(
                f"unknown key {unknown[0]!r} (an item has 'args' and optional 'id')", ident
            )
        args = payload.get("args")
        if not isinstance(args, list):
            raise BadItem.of("'args' must be a JSON array of arguments", ident)
        return args, ident
    raise BadItem(
        f"expected a JSON array of arguments or an object with 'args', got {type(payload).__name__}"
    )


def _long_int(text: str) -> int:
    """json's ``parse_int`` for a line holding an integer too long for ``int()``: one
    of more than ID_DIGITS digits stands for ±10**ID_DIGITS, past every type's range
    (an f64 too: 2**128 in its place read as 3.4e38), marked as too long for an id."""
    if len(text.lstrip("-")) <= ID_DIGITS:
        return int(text)
    return _LongInt(-(10**ID_DIGITS) if text[0] == "-" else 10**ID_DIGITS)


def _long_digits(payload: Any) -> bool:
    """Whether ``payload`` (a line) holds a run of more than ID_DIGITS digits: each run
    looked at once (a search for 4,301 digits in a row tried every start again)."""
    import re

    pattern = rb"[0-9]+" if isinstance(payload, (bytes, bytearray)) else r"[0-9]+"
    return any(m.end() - m.start() > ID_DIGITS for m in re.finditer(pattern, payload))


class _LongInt(int):
    """An integer of more than ID_DIGITS digits: an argument out of range, an id
    refused."""


ID_DIGITS = MAX_DIGITS  # (the digits Python 3.11+ converts: values.long_decimal's too)
ID_LIMIT = 10**ID_DIGITS  # the least integer of more digits (compared, never printed)


def _check_id(ident: Any) -> None:
    """An id is echoed in the result line: one that strict JSON cannot hold (NaN,
    Infinity, 1e999, a lone surrogate such as "\\ud800") made the output something jq
    and other strict readers reject (red team round 23). BadItem for those."""
    try:
        if isinstance(ident, _LongInt) or (  # (compared with 10**4300: printing it to
            type(ident) is int and abs(ident) >= ID_LIMIT  # count its digits is quadratic)
        ):
            raise ValueError("too many digits")
        json.dumps(ident, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError, TypeError, RecursionError):
        # (also: an id a Python caller gave that is not JSON at all, bytes or an object,
        # and an integer of more digits than Python prints: round 40, a raw exception
        # that ended the batch)
        raise BadItem(
            "'id' must be plain JSON (no NaN, Infinity, lone surrogates, or Python values "
            "JSON has not, such as bytes; integers of at most 4,300 digits): it is written "
            "back in the result"
        ) from None


def error_record(exc: errors.WasmsbxError) -> dict:
    data = {"kind": exc.kind, "message": exc.message}
    if isinstance(exc, errors.LimitExceeded):
        data["limit"] = exc.limit
    if exc.hint:
        data["hint"] = exc.hint
    return data


def json_result(value: Any, wasm_type: str) -> Any:
    """A result as JSON (values.json_value): f32 in its shortest round-tripping form;
    inf, NaNs, v128 and references as strings in the command line's spellings."""
    return json_value(value, wasm_type)


def guest_wasi(box: Any) -> Any:
    """The guest's WASI setup in batch/stream mode: it never reads the host's stdin."""
    stdin = box.policy.values["stdio.stdin"]
    return box.wasi_setup(stdin="null" if stdin == "inherit" else stdin)


class Caller:
    """One worker's state: the export's signature, the instance calls reuse and its
    caller (``Instance.caller``: the export's converters and arrays, made once per
    instance, so a replaced instance gets a new one)."""

    def __init__(self, box: Any, func: str, fresh: bool = False) -> None:
        self.box = box
        self.func = func
        self.sig = box.signature(func)
        self.types = (self.sig.params, self.sig.results)
        self.parse = functools.partial(parse_args, func, self.sig)
        # Integer results are JSON as they are; other types go through json_result.
        self.plain = all(t in ("i32", "i64") for t in self.sig.results)
        self.fresh = fresh
        self.wasi = guest_wasi(box)
        self.instance: Any = None
        self.call: Any = None

    def ready(self) -> None:
        """Instantiate now, so a module that cannot start fails the batch, not each item."""
        self._new_instance()

    def _new_instance(self) -> None:
        self.instance = self.box.instantiate(self.wasi)
        self.call = self.instance.caller(self.func, self.types, self.parse)

    def _results(self, payload: Any) -> tuple:
        """(id given by the item or None, JSON-ready results); raises WasmsbxError."""
        args, given = parse_item(payload)
        if self.call is None:
            self._new_instance()
        values = self.call(args)
        if self.fresh:
            self._drop()  # the next item gets an instance no call has touched
        if self.plain:
            return given, values
        return given, [json_result(v, t) for v, t in zip(values, self.sig.results)]

    def _failed(self, exc: errors.WasmsbxError) -> dict:
        if isinstance(exc, errors.TrapError):
            self._drop()  # its state may be half-updated: the next item gets a new one
        return error_record(exc)

    def run(self, line: int, payload: Any) -> BatchResult:
        started = perf_counter()
        try:
            given, out = self._results(payload)
        except errors.WasmsbxError as exc:
            ident = _given_id(payload, line)
            return BatchResult(line, ident, None, self._failed(exc), perf_counter() - started)
        ident = line if given is None else given
        return BatchResult(line, ident, out, None, perf_counter() - started)

    def run_encoded(self, line: int, payload: Any) -> Encoded:
        """``encode(self.run(line, payload))`` without the record: an item that succeeds
        is formatted straight into its JSONL line (the same bytes, see BatchResult)."""
        started = perf_counter()
        try:
            given, out = self._results(payload)
        except errors.WasmsbxError as exc:
            ident = _given_id(payload, line)
            return encode(
                BatchResult(line, ident, None, self._failed(exc), perf_counter() - started)
            )
        ms = round((perf_counter() - started) * 1000, 3)
        ident = line if given is None else _dumps(given)
        data = _OK_LINE % (line, ident, _dumps(out), ms)
        return Encoded(line, None, data.encode())

    def _drop(self) -> None:
        self.call = None
        if self.instance is not None:
            self.instance.close()
            self.instance = None

    def close(self) -> None:
        self._drop()


# BatchResult.to_json of an item that succeeded, as a format: json.dumps writes ints with
# int.__repr__ and floats with float.__repr__ (%r), and the keys in this order.
_OK_LINE = '{"line":%d,"id":%s,"ok":true,"results":%s,"time_ms":%r}\n'
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _given_id(payload: Any, line: int) -> Any:
    """The id an item that failed gives, or its line (the item may not even parse)."""
    try:
        given = parse_item(payload)[1]
    except BadItem as exc:
        given = exc.ident
    except errors.WasmsbxError:
        return line
    return line if given is None else given


def make_caller(box: Any, func: str, fresh: bool = False) -> Any:
    """A Caller, or a component's (``box.batch_caller``: WIT values as typed JSON)."""
    factory = getattr(box, "batch_caller", None)
    return factory(func, fresh) if factory is not None else Caller(box, func, fresh)


# ---------------------------------------------------------------------------- running


def run_batch(
    box: Any,
    func: str,
    items: Iterable,
    *,
    fresh: bool = False,
    jobs: int = 1,
    start_line: int = 1,
    remote: Optional[Callable[..., Iterator]] = None,
) -> Iterator[BatchResult]:
    """Call ``func`` once per item; yield one BatchResult per item, in input order.

    FUNC and instantiation are checked now (errors raise here); items are read lazily.
    ``jobs > 1`` takes the workers ``prestart`` forked, else starts worker processes
    (``pool_context``: forks of a fork server, else ``spawn``), which import the main
    module: in a script, call it under ``if __name__ == "__main__":``.

    ``remote``: who makes the calls instead of this process (``wasmsbx.cluster``'s
    ``run_cluster`` bound to a cluster); passed in by the caller so that the runner never
    imports the cluster feature, which sits above it."""
    numbered = enumerate(items, start_line)
    return run_numbered(box, func, numbered, fresh=fresh, jobs=jobs, remote=remote)


# More worker processes than this is a fork bomb, not a speed-up (each compiles the
# module and holds its own instance).
MAX_JOBS = 256


def check_jobs(jobs: int) -> None:
    """-j/--jobs: 1 .. MAX_JOBS worker processes (UsageError otherwise)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise errors.UsageError(f"--jobs: expected a whole number >= 1, found {jobs!r}")
    if jobs > MAX_JOBS:
        raise errors.UsageError(
            f"-j/--jobs must be at most {MAX_JOBS}, got {jobs}",
            hint="one worker process per CPU core is usually the most that helps",
        )


def run_numbered(
    box: Any,
    func: str,
    numbered: Iterable,
    *,
    fresh: bool = False,
    jobs: int = 1,
    encoded: bool = False,
    idle: bool = False,
    remote: Optional[Callable[..., Iterator]] = None,
    running: Optional[_Running] = None,
) -> Iterator:
    """Like run_batch over ``(line, payload)`` pairs. Checks FUNC and instantiation first.
    With ``encoded``, yields Encoded lines; with ``jobs > 1`` an EncodedChunk per chunk
    (rendered in the workers, not in this process).

    With ``idle``, the input is read in a thread and ``None`` is yielded whenever no
    result has come for IDLE_TICK seconds (e.g. a pipe that stays open but sends
    nothing), so the consumer can make the results it has durable meanwhile.

    ``running`` (jobs=1 in this process only): told the item each call is at, for a
    hard stop that ends the process while a call is stuck (run_jsonl's ``_StuckItem``)."""
    check_jobs(jobs)
    if remote is not None and jobs != 1:
        raise errors.UsageError(
            "-j/--jobs does not apply with a cluster (its workers run the calls)"
        )
    if jobs != 1 and getattr(box, "imports", None):  # (they failed to link: LinkError)
        raise errors.UsageError(
            "host functions (imports=) stay in this process: worker processes (jobs > 1) "
            "cannot call them",
            hint="run the batch with jobs=1",
        )
    caller = make_caller(box, func, fresh)  # an unknown export fails here, before any item
    caller.ready()
    if remote is not None:  # e.g. the workers of a Dask cluster make the calls
        caller.close()
        return remote(box, func, numbered, fresh=fresh, encoded=encoded, idle=idle)
    if jobs == 1:
        serial = _serial_fed if idle else _serial
        return serial(caller, numbered, encoded, running)
    caller.close()
    return _parallel(box, func, fresh, jobs, numbered, encoded, idle)


def _runner(caller: Any, encoded: bool) -> Callable:
    """``caller.run``, or what gives its result as an Encoded line."""
    if not encoded:
        return caller.run
    run_encoded = getattr(caller, "run_encoded", None)  # a component's caller has none
    return run_encoded or (lambda line, payload: encode(caller.run(line, payload)))


def _tracked(run: Callable, running: Optional[_Running]) -> Callable:
    """``run``, telling ``running`` (if any) the item it is at while it runs it."""
    if running is None:
        return run

    def tracked(line: int, payload: Any) -> Any:
        running.item = (line, payload, monotonic())
        result = run(line, payload)
        with running.lock:  # (a hard stop reads it under the lock: see _StuckItem)
            running.item = None
        return result

    return tracked


def _serial(
    caller: Caller, numbered: Iterable, encoded: bool, running: Optional[_Running] = None
) -> Iterator:
    run = _tracked(_runner(caller, encoded), running)
    try:
        for line, payload in numbered:
            yield run(line, payload)
    finally:
        caller.close()


def _serial_fed(
    caller: Caller, numbered: Iterable, encoded: bool, running: Optional[_Running] = None
) -> Iterator:
    """_serial with the input read by a _Feeder thread and idle ticks while it stalls."""
    import threading

    wake = threading.Event()
    feeder = _Feeder(numbered, wake)
    run = _tracked(_runner(caller, encoded), running)
    try:
        while True:
            wake.clear()  # before looking: an item arriving during this pass is not lost
            chunk: list = []
            more = feeder.fill(chunk, CHUNK_MAX_ITEMS)
            for line, payload in chunk:
                yield run(line, payload)
            if not more:
                feeder.end()
                return
            if not chunk and not wake.wait(IDLE_TICK):
                yield None
    finally:
        feeder.stop()
        caller.close()


class WorkerSpec(NamedTuple):
    """Everything a worker process needs to rebuild the sandbox without recompiling."""

    module: Union[str, bytes]  # the module's path, or the bytes a sandbox was made from
    policy: Any
    backend: str
    artifact: Optional[bytes]  # the engine's serialized module; None: compile in the worker
    func: str
    fresh: bool
    kind: Any = None  # the sandbox class to rebuild (ComponentSandbox); None: a core Sandbox
    digest: Optional[str] = None  # BLAKE3 of the binary the parent compiled (module_digest)


def module_digest(box: Any) -> Optional[str]:
    """BLAKE3 of the binary ``box`` was made from (a module file the cache knows is not
    read for it: its digest is the authentic memo's); None for a standalone artifact,
    which a worker authenticates on its own."""
    prepared = getattr(box, "_prepared", None)  # (a known file's too: Sandbox._known is it)
    if prepared is not None and prepared.digest:
        return prepared.digest
    wasm = box.wasm
    if wasm is None:
        return None
    from ..native.artifact import digest

    return digest(wasm)


def worker_spec(box: Any, func: str, fresh: bool) -> WorkerSpec:
    from ..native.trust import seal

    try:  # sealed with the user's key: the worker loads only what this process compiled
        artifact: Optional[bytes] = seal(box.engine.serialize(box.module))
    except (errors.WasmsbxError, NotImplementedError):
        artifact = None
    backend = f"{box.backend_name}:{box.compiler}" if box.compiler else box.backend_name
    kind = getattr(box, "worker_kind", None)
    digest = module_digest(box)
    given = getattr(box, "_given", None)  # made from bytes: not from a file of that name
    module = given if given is not None else str(box.path)
    return WorkerSpec(module, box.policy, backend, artifact, func, fresh, kind, digest)


class _ChunkSizer:
    """Small chunks until the cost of an item is known, then ~CHUNK_TARGET_SECONDS each."""

    def __init__(self) -> None:
        self.size = 1

    def learn(self, count: int, seconds: float, nbytes: int = 0) -> None:
        """From a reply of ``count`` items that took ``seconds`` and ``nbytes``: chunks
        of about CHUNK_TARGET_SECONDS, and of results under REPLY_BYTES."""
        if count:
            per_item = max(seconds / count, 1e-7)
            size = int(CHUNK_TARGET_SECONDS / per_item)
            if nbytes:
                size = min(size, REPLY_BYTES * count // nbytes)
            self.size = max(1, min(CHUNK_MAX_ITEMS, size))


_END = object()  # the feeder's last entry: the input is exhausted


class _Feeder:
    """Reads the input in a thread, so waiting for input (a pipe that stays open) never
    keeps finished results from being collected, written and checkpointed.

    At most ``FEED_AHEAD`` items wait in the queue (memory stays bounded); ``wake`` is set
    whenever an item arrives. The queue is a SimpleQueue (a put or a get takes no Python
    lock); the reader waits for ``room``, which the consumer sets once per ``take``."""

    def __init__(self, numbered: Iterable, wake: Any) -> None:
        import queue
        import threading

        self.queue: Any = queue.SimpleQueue()
        self.room = threading.Event()
        self.wake = wake
        self.stopped = False
        self.failed: Optional[BaseException] = None  # what reading the input raised
        self.thread = threading.Thread(
            target=self._read, args=(iter(numbered),), name="wasmsbx-batch-input", daemon=True
        )
        from ..backends.deadline import quiet_threads

        with quiet_threads():
            self.thread.start()

    def _read(self, iterator: Iterator) -> None:
        try:
            for item in iterator:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # a read error belongs to the consumer
            self._put(exc)

    def _put(self, entry: Any) -> bool:
        while self.queue.qsize() >= FEED_AHEAD:
            self.room.clear()
            if self.queue.qsize() < FEED_AHEAD:  # taken between the check and the clear
                break
            self.room.wait(0.1)
            if self.stopped:
                return False
        if self.stopped:
            return False
        self.queue.put(entry)
        self.wake.set()
        return True

    def fill(self, chunk: list, size: int) -> bool:
        """Move queued items into ``chunk`` (without waiting) until it holds ``size`` items
        or CHUNK_MAX_BYTES; False once the input is exhausted, or failed: a read error
        ends the input, and ``end`` raises it once the items read before it are done."""
        return self.take(chunk, size, _chunk_bytes(chunk))[0]

    def take(self, chunk: list, size: int, nbytes: int) -> tuple:
        """``fill`` for a caller that keeps count of ``chunk``'s bytes (``nbytes``):
        (False once the input is exhausted, the bytes now in ``chunk``)."""
        import queue

        get = self.queue.get_nowait
        while len(chunk) < size and nbytes < CHUNK_MAX_BYTES:
            try:
                entry = get()
            except queue.Empty:
                self.room.set()
                return True, nbytes
            if entry is _END:
                return False, nbytes
            if isinstance(entry, BaseException):
                # (raised only by ``end``: raised here, it lost the results of every
                # item read before it, red team round 78)
                self.failed = entry
                return False, nbytes
            chunk.append(entry)
            nbytes += _item_bytes(entry)
        self.room.set()
        return True, nbytes

    def end(self) -> None:
        """At the end of the input: raise what reading it raised, if anything."""
        if self.failed is not None:
            failed, self.failed = self.failed, None
            raise failed

    def stop(self) -> None:
        self.stopped = True


def _item_bytes(item: tuple) -> int:
    payload = item[1]
    return len(payload) if isinstance(payload, (bytes, str)) else 64


def _parallel(
    box: Any, func: str, fresh: bool, jobs: int, numbered: Iterable, encoded: bool, idle: bool
) -> Iterator:
    """Dispatch chunks to the workers (runner.pool) and yield results in order: with
    ``encoded``, one EncodedChunk per chunk (its lines rendered by the worker), else
    BatchResults.

    Never blocks on the input while results are ready: the input is read by a _Feeder
    thread, and this loop sleeps only until an item arrives or a worker replies. A chunk
    goes out when it is full, at the end of the input, or early (partly filled) when a
    worker would otherwise sit idle waiting for more input."""
    from . import pool

    spec = worker_spec(box, func, fresh)
    workers = pool.take(jobs) or pool.start(jobs, pool_context(spec.backend), _JOB)
    wake = _PipeWake()
    feeder = _Feeder(numbered, wake)
    pending: deque = deque()  # the slots of the chunks sent, oldest first
    sizer = _ChunkSizer()
    chunk: list = []
    nbytes = 0  # the bytes of ``chunk``'s payloads
    exhausted = False
    window = jobs * WINDOW_PER_JOB
    ahead = 0  # bytes of replies received and not yet yielded
    try:
        for worker in workers:
            worker.send(spec)
        while True:
            wake.clear()
            # At most WINDOW_PER_JOB chunks a worker sent and not yet yielded (a worker
            # that has replied may not run ahead of one that is slow: memory is bounded).
            while len(pending) < window and (chunk or not exhausted):
                worker = min(workers, key=_load)
                if not exhausted:
                    more, nbytes = feeder.take(chunk, sizer.size, nbytes)
                    exhausted = not more
                full = len(chunk) >= sizer.size or exhausted or nbytes >= CHUNK_MAX_BYTES
                if not chunk or not (full or not worker.inflight):
                    break
                pending.append(_submit(worker, chunk, encoded))
                chunk, nbytes = [], 0
            if not pending and exhausted and not chunk:
                feeder.end()
                return
            if pending and pending[0].ready():
                (status, *reply), size, last = pending[0].take()
                ahead -= size
                if last:
                    pending.popleft()
                if status == "error":
                    raise reply[0]
                results, count, seconds = reply
                sizer.learn(count, seconds, size)
                if encoded:
                    yield results
                else:
                    yield from results
                continue
            # Wait for a reply, and for input only when a chunk could go out for it:
            # while the window is full, arriving items wake nobody. Past AHEAD_BYTES of
            # replies taken ahead of their turn, only the oldest chunk's worker is heard:
            # the others wait to send (a guest's large results stay in its worker).
            wanted = len(pending) < window and not exhausted
            if wanted and not wake.arm(feeder.queue):
                continue  # items came in meanwhile: look again
            heard = workers if ahead <= AHEAD_BYTES or not pending else [pending[0].worker]
            ready = pool.wait(heard, [wake.reader] if wanted else [], IDLE_TICK)
            for worker in ready:
                if worker is not wake.reader:
                    ahead += worker.receive()
                    if worker.stopped:  # its call was stuck: its replacement goes on
                        workers[workers.index(worker)] = _replace(worker, spec)
            if not ready and idle:
                yield None
    except BaseException:
        # Ctrl-C or a failure: stop the workers now rather than wait for their chunks (a
        # guest may have minutes left of its timeout).
        for worker in workers:
            worker.terminate()
        raise
    finally:
        feeder.stop()
        wake.close()
        pool.close_all(workers)


def _replace(worker: Any, spec: WorkerSpec) -> Any:
    """A new worker in place of one that stopped (worker_stopped), given the spec and
    then every chunk the old one held, from the first item no reply answered; the old
    one is reaped (it exits once its reply is sent)."""
    from . import pool

    new = pool.start(1, pool_context(spec.backend), _JOB)[0]
    new.lifeline, worker.lifeline = worker.lifeline, -1  # (prefork's: kept open to the end)
    try:
        new.send(spec)
        for slot in worker.inflight:
            new.resubmit(slot)
    except BaseException:
        new.terminate()
        pool.close_all([new])
        raise
    finally:
        worker.inflight.clear()
        worker.terminate()
        pool.close_all([worker])
    return new


def _load(worker: Any) -> int:
    return len(worker.inflight)


def _submit(worker: Any, chunk: list, encoded: bool) -> Any:
    """``worker.submit`` of a chunk whose items a Python caller gave (not JSON lines)
    each go pickled on their own (``Pickled``); one that cannot be pickled (a lambda, a
    local class) goes as Unsendable, answered as a bad item."""
    return worker.submit(([_sendable(item) for item in chunk], encoded))


def _sendable(item: tuple) -> tuple:
    line, payload = item
    if type(payload) in (bytes, str):
        return item
    import pickle

    try:
        return line, Pickled(pickle.dumps(payload, pickle.HIGHEST_PROTOCOL))
    except Exception as exc:  # noqa: BLE001 - whatever pickling an item raises
        return line, _unsendable("sent to", exc)


def _received(payload: Any) -> Any:
    """A worker's item as the parent gave it (``Pickled`` read back), or Unsendable."""
    if type(payload) is not Pickled:
        return payload
    import pickle

    try:
        return pickle.loads(payload.data)
    except Exception as exc:  # noqa: BLE001 - whatever unpickling an item raises
        return _unsendable("read in", exc)


def _unsendable(how: str, exc: Exception) -> Unsendable:
    """An item that cannot be ``how`` a worker process, with why (a bad item)."""
    return Unsendable(
        f"cannot be {how} a worker process (jobs > 1): {type(exc).__name__}: {str(exc)[:200]}"
    )


class _PipeWake:
    """The feeder's wake-up for a loop that waits on pipes: ``set`` writes a byte to
    ``reader`` only when the loop is about to wait for input (``arm``), so items arriving
    while it is busy or has no room for them cost no system call and no wake-up."""

    def __init__(self) -> None:
        from multiprocessing.connection import Connection

        r, self.w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(self.w, False)
        self.reader = Connection(r, writable=False)
        self.armed = False

    def clear(self) -> None:
        self.armed = False
        try:
            while os.read(self.reader.fileno(), 4096):
                pass
        except BlockingIOError:
            pass

    def arm(self, queue: Any) -> bool:
        """Armed for the next item; False if one came before (don't wait then): an item
        is either seen here or, put after this, sets the wake-up."""
        self.armed = True
        return queue.empty()

    def set(self) -> None:
        if self.armed:
            self.armed = False
            try:
                os.write(self.w, b"\0")
            except BlockingIOError:  # full: a wake-up is pending anyway
                pass

    def close(self) -> None:
        self.reader.close()
        os.close(self.w)


def pool_context(backend: str) -> Any:
    """How ``pool.start`` starts workers (when ``prestart`` forked none): from a fork
    server where there is one (Linux), else ``spawn``. Never ``fork``: the parent may hold
    runtime threads (the epoch ticker) and locks.

    The fork server is one fresh interpreter that imports the worker's modules (wasmsbx's
    runner, the backend and its runtime: most of a worker's start-up) once and holds no
    engine and no thread; each worker is a fork of it. It is multiprocessing's, one per
    process: a server already running keeps the modules it was started with (workers
    import the rest)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_preload(backend))
    return context


def prestart(jobs: int, backend: str = "wasmtime") -> None:
    """The command line's, before it makes any engine (``jobs > 1``): import the worker's
    modules and fork the workers now (``pool.prefork``; they wait for the module the
    parent compiles), or where that is not safe start the fork server, so that it imports
    them while this process reads the policy and compiles the module."""
    from . import pool

    if jobs < 2 or pool.prefork(jobs, _preload(backend), _JOB):
        return
    if pool_context(backend).get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


# What a worker imports beyond this module to rebuild and call the sandbox (a module
# missing here is imported by each worker: slower, never wrong).
_WORKER_MODULES = [
    "wasmsbx.native.trust",
    "wasmsbx.backends.select",
    "wasmsbx.backends.compiling",
    "wasmsbx.runner.shared",
    "wasmsbx.wasm.facts",
    "wasmsbx.host",
    "wasmsbx.inputs",
    "blake3",
]


def _preload(backend: str) -> list:
    """What the fork server imports: the main module (as spawn would in every worker),
    the worker's side of wasmsbx, and the backend's adapter and runtime package."""
    from ..backends import REGISTRY, split

    name, compiler = split(backend)
    modules = ["__main__", __name__, *_WORKER_MODULES]
    if name in REGISTRY:
        modules += [REGISTRY[name].partition(":")[0], name]  # e.g. wasmtime, wasmer
        if compiler:
            modules.append(f"{name}_compiler_{compiler}")
    return modules


def _chunk_bytes(chunk: list) -> int:
    return sum(_item_bytes(item) for item in chunk)


# ---------------------------------------------------------------------------- worker side


def worker_state(spec: WorkerSpec) -> Any:
    """A worker's caller, made from the parent's spec; or the error that made it fail
    (raised for every chunk, so the parent reports it)."""
    try:
        caller = make_caller(_worker_box(spec), spec.func, spec.fresh)
        # Instantiated now, not in the first item's time: a worker that replaces one
        # stopped (worker_stopped) starts on a loaded machine, and its first item's
        # timeout paid for the instance (red team round 45: quick items timed out).
        caller.ready()
        return caller
    except errors.WasmsbxError as exc:
        return exc


def worker_chunk(state: Any, chunk: list, encoded: bool) -> Iterator:
    """One chunk's replies, as (last, results, their count, seconds), results an
    EncodedChunk with ``encoded``: one reply, unless the results pass REPLY_BYTES before
    the chunk's end, when what the worker holds goes out as a part and the rest follows.
    A chunk grows to CHUNK_MAX_ITEMS while items are quick, and a guest can make the
    items that follow return megabytes each (a component's ``list<string>`` of one
    string many times): held whole, a chunk's results took 1.6 GB in the worker and as
    much again in the parent (red team round 40)."""
    if isinstance(state, errors.WasmsbxError):
        raise state
    run = _runner(state, encoded)
    weigh = _encoded_bytes if encoded else _result_bytes
    running = _RUNNING
    started = perf_counter()
    results: list = []
    held = 0
    left = len(chunk)
    running.begin(results, encoded, started)
    try:
        for line, payload in chunk:
            payload = _received(payload)
            running.item = (line, payload, monotonic())
            result = run(line, payload)
            with running.lock:  # (worker_stopped reads both at once)
                results.append(result)
                running.item = None
            left -= 1
            held += weigh(result, REPLY_BYTES - held)
            if held >= REPLY_BYTES and left:
                seconds = perf_counter() - started
                out, count = (encode_chunk(results) if encoded else results), len(results)
                results, held, started = [], 0, perf_counter()
                running.begin(results, encoded, started)
                yield False, out, count, seconds
        seconds = perf_counter() - started
    finally:
        running.end()
    yield True, (encode_chunk(results) if encoded else results), len(results), seconds


class _Running:
    """The chunk this worker is running and the item it is at, for its hard stop
    (``worker_stopped``): the results made and not yet sent, and the item in progress
    with when it began. Only the worker's main thread writes it; the hard stop, on the
    deadline keeper's thread, reads it under ``lock``."""

    __slots__ = ("lock", "results", "encoded", "started", "item", "served")

    def __init__(self) -> None:
        import _thread

        self.lock = _thread.allocate_lock()
        self.results: Optional[list] = None
        self.encoded = False
        self.started = 0.0
        self.item: Optional[tuple] = None  # (line, payload, its time.monotonic() start)
        self.served = False  # a chunk has begun: past setting up

    def begin(self, results: list, encoded: bool, started: float) -> None:
        with self.lock:
            self.results, self.encoded, self.started = results, encoded, started
            self.served = True

    def end(self) -> None:
        with self.lock:
            self.results, self.item = None, None


_RUNNING = _Running()


def worker_stopped(error: Any) -> Optional[tuple]:
    """The reply a worker's hard stop sends (runner.pool) when its call is stuck past
    the deadline (a guest blocked in a host call: a pipe that never delivers, a FIFO):
    ``("stopped", results, count, seconds)``, the chunk's results made and not yet
    sent, then the item in progress with ``error`` as its result (a ``timeout``, as a
    call that ends past its deadline is). The parent takes them, starts another worker
    and sends it the rest of the chunk (and the worker's other chunks): the batch goes
    on. Before, the error ended the whole batch (README "Limits from Python").

    None (the batch ends with ``error``, as before) while the worker sets up, or for an
    interrupt, which is the whole batch's. ``pool.STALE`` (no stop) when the late call
    is not running any more: the keeper saw it late, then it came back and the worker
    went on with another item, or to wait for work (red team round 45: the next item
    was given the timeout, or the batch ended). The call running now began before the
    late one's deadline (``watch_deadline``, set by the keeper); a later one did not."""
    if not isinstance(error, errors.WasmsbxError) or isinstance(error, errors.Interrupted):
        return None
    running = _RUNNING
    with running.lock:
        if running.results is None:
            return STALE if running.served else None
        results, item, encoded = list(running.results), running.item, running.encoded
        started = running.started
    result = stuck_result(item, error)
    if result is None:
        return STALE
    results.append(encode(result) if encoded else result)
    out = encode_chunk(results) if encoded else results
    return ("stopped", out, len(results), perf_counter() - started)


def stuck_result(item: Optional[tuple], error: Any) -> Optional[BatchResult]:
    """The result of ``item`` ((line, payload, its monotonic start), the item a call is
    at) when a hard stop ends that call with ``error``: its ``timeout``, as a call that
    ends past its deadline gets. None if there is no item, or it began at or after the
    deadline of the call that overran (``watch_deadline``): a later call, not the stuck
    one (worker_stopped, _StuckItem)."""
    deadline = getattr(error, "watch_deadline", None)
    if item is None or (deadline is not None and item[2] >= deadline):
        return None
    line, payload, began = item
    record = error_record(error)
    return BatchResult(line, _given_id(payload, line), None, record, monotonic() - began)


REPLY_BYTES = 4 << 20  # a worker sends what it holds of a chunk's results past this
AHEAD_BYTES = 16 << 20  # replies the parent takes in ahead of their turn (then one more)


def _encoded_bytes(result: Any, room: int) -> int:
    return len(result.data)


def _result_bytes(result: Any, room: int) -> int:
    """About how many bytes a BatchResult's values take (text and bytes by their length,
    anything else 16 each), counted only until past ``room``."""
    values = result.values
    if not values:
        return 64
    total, todo = 64, [values]
    while todo and total <= room:
        value = todo.pop()
        kind = type(value)
        if kind is str or kind is bytes or kind is bytearray:
            total += 16 + len(value)
        elif kind is list or kind is tuple:
            total += 16 + 8 * len(value)
            todo.extend(value)
        elif kind is dict:
            total += 16 + 16 * len(value)
            todo.extend(value.keys())
            todo.extend(value.values())
        else:
            total += 16
    return total


_JOB = (worker_state, worker_chunk, worker_stopped)  # what a worker runs (runner.pool)


def _worker_box(spec: WorkerSpec) -> Any:
    from ..native.trust import unseal
    from .sandbox import Sandbox

    # The parent names the class (a component's is ComponentSandbox): the runner does not
    # import the components feature, which sits above it.
    base: Any = spec.kind or Sandbox
    native = None if spec.artifact is None else unseal(spec.artifact)
    if native is None:
        box = base(spec.module, spec.policy, backend=spec.backend, use_cache=True)
    else:

        class Precompiled(base):
            def _compile(self, use_cache: bool) -> Any:
                return self.engine.deserialize(native)

        box = Precompiled(spec.module, spec.policy, backend=spec.backend, use_cache=False)
        box.cache_state = "precompiled"
    _same_module(box, spec)
    return box


def _same_module(box: Any, spec: WorkerSpec) -> None:
    """The worker read the module file again: it must hold what the parent compiled.
    Else the worker would describe one module (the memories and tables the limits that
    are totals are planned from, its exports) and run the other's native code (red
    team, round 6: a file replaced after the parent compiled let two memories each take
    all of limits.memory)."""
    if spec.digest is None or module_digest(box) == spec.digest:
        return
    box.close()
    raise errors.ModuleError(
        f"{box.path}: the module file changed while it was in use",
        hint="run it again (the new file is read then)",
        path=str(box.path),
    )


# ---------------------------------------------------------------------------- JSONL files


class _Reader:
    """JSONL lines with their byte offsets, read lazily; over-long lines are cut, not loaded."""

    def __init__(self, source: Any, first_line: int) -> None:
        self.source = source
        self.line = first_line - 1
        self.spans: deque = deque()  # (line, start, end, raw) of items handed out, oldest first

    def __iter__(self) -> Iterator:
        stream = self.source.stream
        while True:
            start = self.source.offset
            raw = stream.readline(MAX_LINE + 1)
            if not raw:
                return
            self.line += 1
            if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                self.source.offset += len(raw) + self._skip_rest(stream)
                self.spans.append((self.line, self.source.offset, self.source.offset, b""))
                yield self.line, raw  # parse_item refuses it as too long
                continue
            self.source.offset += len(raw)
            if not raw.strip():
                continue  # blank lines are not items (but they keep their line numbers)
            self.spans.append((self.line, start, self.source.offset, raw))
            yield self.line, raw

    def _skip_rest(self, stream: Any) -> int:
        """Skip the rest of an overlong line, up to MAX_SKIP: a line that never ends
        (``--batch /dev/zero``) is an input error, not a loop that never ends."""
        skipped = 0
        while skipped <= MAX_SKIP:
            part = stream.readline(1 << 16)
            skipped += len(part)
            if not part or part.endswith(b"\n"):
                return skipped
        raise errors.InputError(
            f"input line {self.line} goes on for more than {MAX_SKIP >> 20} MiB without "
            "a newline: not a JSONL file (a device that never ends?)",
            hint="give a file or pipe of JSON lines",
        )


def run_jsonl(
    box: Any,
    func: str,
    source: Any,
    sink: Any,
    *,
    fresh: bool = False,
    jobs: int = 1,
    checkpoint: Optional[str] = None,
    progress: Optional[Callable] = None,
    warn: Optional[Callable] = None,
    remote: Optional[Callable[..., Iterator]] = None,
) -> Summary:
    """Read JSONL calls from ``source`` (checkpoint.Source), write JSONL results to ``sink``
    (checkpoint.Sink), in input order. Returns the summary; resumes from ``checkpoint``."""
    from . import checkpoint as cp

    box.signature(func)  # an unknown export is a usage error before anything is read
    marker = None
    state = None
    if checkpoint:
        marker = cp.Checkpoint(
            checkpoint,
            {"kind": "batch", "module_sha256": cp.module_sha256(box), "function": func},
        )
        state = marker.load()
        if state is not None:
            source.resume(state)
            note = sink.resume(state, f"results from line {state['next_line']} on")
            if note and warn:
                warn(note)
    summary = Summary(state)
    reader = _Reader(source, state["next_line"] if state else 1)
    # A pipe may stall with items done: idle ticks let us save them meanwhile.
    idle = not source.seekable
    stuck = _StuckItem(sink, summary, reader, marker) if jobs == 1 and remote is None else None
    results = run_numbered(
        box, func, reader, fresh=fresh, jobs=jobs, encoded=True, idle=idle, remote=remote,
        running=stuck and stuck.running,
    )  # fmt: skip
    last = None
    saved = None  # the span ``last`` had at the latest save (or flush, without a checkpoint)
    tick = time.monotonic()
    guard = cp.HoldInterrupt()
    # (stuck.writing: the hard stop's writer and this loop's never write at once)
    writing = stuck.writing if stuck is not None else contextlib.nullcontext()
    with guard, _at_hard_stop(stuck):
        try:
            for result in results:
                if result is None:  # no result for a while: make those written so far durable
                    if last is not saved and (marker is None or marker.due()):
                        guard.hold()
                        with writing:
                            if marker is not None:
                                _save_batch(marker, sink, summary, last)
                            else:
                                sink.flush()
                        saved = last
                        guard.release()
                    continue
                # Writing a result, counting it and taking its span is one step that Ctrl-C
                # waits for: a checkpoint never covers output whose item it does not count.
                guard.hold()
                with writing:
                    sink.write(result.data)
                    if isinstance(result, EncodedChunk):  # -j N: a chunk's lines at once
                        summary.add_chunk(result)
                        for _ in range(result.count):
                            last = reader.spans.popleft()
                    else:
                        summary.add(result)
                        last = reader.spans.popleft()
                    if marker is not None and marker.due():
                        _save_batch(marker, sink, summary, last)
                        saved = last
                guard.release()
                if progress is not None and time.monotonic() - tick >= PROGRESS_EVERY:
                    tick = time.monotonic()
                    progress(summary, source)
        except BaseException:  # interrupted or failed: record what did reach the output
            guard.hold()  # a second Ctrl-C waits for this save (the first one is raised)
            summary.finished = time.perf_counter()
            if marker is not None and last is not None and not guard.forced:
                try:
                    with writing:
                        _save_batch(marker, sink, summary, last)
                except Exception:  # noqa: S110 - the original failure is the one to report
                    pass
            raise
        summary.finished = time.perf_counter()
        sink.flush()
        if marker is not None:
            guard.done(marker)
    if progress is not None:
        progress(summary, source)
    return summary


class _StuckItem:
    """With jobs=1 the calls run in this process, so a call stuck in a host call past
    its deadline (a pipe that never delivers, a FIFO's open) can only be ended with the
    process: the command line's hard stop, exit 112. Called by it first
    (``deadline.AT_HARD_STOP``, on the keeper's thread), this writes the stuck item's
    result, the ``timeout`` it gets under -j N (``worker_stopped``), and saves the
    checkpoint past it, so a rerun with the same ``--checkpoint`` goes on at the next
    item. Before, the checkpoint stopped short of the item and every rerun blocked on it
    again. The hard stop's hint says which of the two applies.

    ``writing`` is held by run_jsonl while it writes and saves, and taken here for good
    (the process ends next): the item's row is written once, by one of them. Nothing is
    written for a call other than the stuck one (its watch's deadline, as for a worker),
    nor for an interrupt (the whole batch's, saved by run_jsonl itself)."""

    def __init__(self, sink: Any, summary: Summary, reader: _Reader, marker: Any) -> None:
        import threading

        self.running = _Running()
        self.writing = threading.Lock()
        self.sink, self.summary, self.reader, self.marker = sink, summary, reader, marker

    def __call__(self, error: Any) -> None:
        if not isinstance(error, errors.WasmsbxError) or isinstance(error, errors.Interrupted):
            return
        if not self.writing.acquire(timeout=STUCK_WAIT):
            return  # (run_jsonl is stuck writing, not calling: nothing to add)
        running, spans = self.running, self.reader.spans
        with running.lock:
            stopped = stuck_result(running.item, error)
            if stopped is None or not spans or spans[0][0] != stopped.line:
                self.writing.release()
                return
            running.item = None
        line = stopped.line
        result = encode(stopped)
        self.sink.write(result.data)
        self.summary.add(result)
        last = spans.popleft()
        if self.marker is None:
            self.sink.flush()
            error.hint = (
                f"line {line}'s timeout is the last result; with -j 2 or more a blocked "
                "item is its own timeout and the batch goes on (--checkpoint FILE: a "
                "rerun resumes after it)"
            )
            return
        _save_batch(self.marker, self.sink, self.summary, last)
        error.hint = (
            f"line {line}'s timeout is the last result and {self.marker.path} is saved "
            f"past it: run the same command again to go on from line {line + 1} (with -j 2 "
            "or more a blocked item is its own timeout and the batch goes on)"
        )


STUCK_WAIT = 0.2  # seconds the hard stop's writer waits for run_jsonl to finish a write


class _at_hard_stop:
    """``with _at_hard_stop(hook)``: ``hook`` in deadline.AT_HARD_STOP meanwhile, first
    (before the command line's flush of the results); nothing for None."""

    __slots__ = ("hook",)

    def __init__(self, hook: Any) -> None:
        self.hook = hook

    def __enter__(self) -> None:
        if self.hook is not None:
            from ..backends.deadline import AT_HARD_STOP

            AT_HARD_STOP.insert(0, self.hook)

    def __exit__(self, *exc: Any) -> None:
        if self.hook is not None:
            from ..backends.deadline import AT_HARD_STOP

            if self.hook in AT_HARD_STOP:
                AT_HARD_STOP.remove(self.hook)


def _save_batch(marker: Any, sink: Any, summary: Summary, last: tuple) -> None:
    """Checkpoint once the result of item ``last`` (and all before it) is in the output.

    The input is identified by the SHA-256 of that item's line (over-long lines, which
    are not kept, identify nothing)."""
    from .checkpoint import digest

    line, start, end, raw = last
    sink.flush()
    state = {
        "input_offset": end,
        "tail_start": start,
        "tail_sha256": digest(raw),
        "next_line": line + 1,
        **sink.state(),
        **summary.counts(),
    }
    marker.save(state)
