"""Streaming bytes through a module in fixed-size chunks, with bounded buffering.

The guest ABI (README "Batch and streaming", examples/stream/):

``memory``
    the guest's exported linear memory.
``alloc(len: i32) -> i32``
    called once, right after instantiation, with the chunk size; returns the address
    of an input buffer of at least ``len`` bytes that stays valid for the instance's
    life (a static buffer is fine).
``FUNC(ptr: i32, len: i32) -> i64`` or ``-> (i32, i32)``
    called once per chunk, the chunk's bytes at ``ptr``. Every chunk is exactly the
    chunk size except the last (which is shorter, never empty). Returns where its
    output is: packed as ``(out_ptr << 32) | out_len`` in one i64, or as the two
    results ``out_ptr, out_len``. The output must stay valid until the next call;
    ``out_len`` 0 means no output for this chunk.
``finish() -> i64`` or ``-> (i32, i32)``, optional
    called once at the end of the input; its output is written last.

The host holds one input chunk and one chunk's output at a time and writes each output
before reading more input, so a slow reader of our output stops us reading (backpressure)
and memory stays bounded whatever the input size. Fuel and the timeout apply to each call
(alloc, every chunk, finish); the memory limit to the instance.
"""

from __future__ import annotations

import functools
import io
import time
from typing import Any, Callable, Optional

from .. import errors
from ..values import parse_args

DEFAULT_CHUNK = 64 * 1024
MAX_CHUNK = 1 << 30
ABI_HINT = (
    "a streaming module exports memory, alloc(i32) -> i32 and FUNC(i32, i32) -> i64 "
    "(or -> (i32, i32)), optionally finish() -> i64; see examples/stream/"
)


class StreamStats:
    """What a stream did: bytes in and out, chunks, time, and the host buffer high-water mark."""

    def __repr__(self) -> str:
        return (
            f"StreamStats(bytes_in={self.bytes_in}, bytes_out={self.bytes_out}, "
            f"chunks={self.chunks}, chunk_size={self.chunk_size}, peak_buffer={self.peak_buffer})"
        )

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.bytes_in = 0
        self.bytes_out = 0
        self.chunks = 0
        self.peak_buffer = 0  # input chunk + output held by the host at once
        self.resumed_at: Optional[int] = None
        self.started = time.perf_counter()
        self.finished: Optional[float] = None

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    def to_dict(self) -> dict:
        seconds = self.seconds
        return {
            "chunk_size": self.chunk_size,
            "chunks": self.chunks,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "peak_buffer": self.peak_buffer,
            "resumed_at_offset": self.resumed_at,
            "seconds": round(seconds, 6),
            "bytes_per_second": round(self.bytes_in / seconds, 1) if seconds > 0 else 0.0,
        }


def _packing(box: Any, name: str, params: tuple) -> str:
    """ "packed" (one i64) or "pair" (two i32): how ``name`` returns its output location."""
    sig = box.signature(name)
    if sig.params != params:
        raise errors.UsageError(
            f"{name} has signature {sig}, the streaming ABI needs {len(params)} i32 "
            f"parameter{'s' if len(params) != 1 else ''}",
            hint=ABI_HINT,
        )
    if sig.results == ("i64",):
        return "packed"
    if sig.results == ("i32", "i32"):
        return "pair"
    raise errors.UsageError(
        f"{name} returns {sig.results or 'nothing'}; the streaming ABI needs i64 "
        "(out_ptr << 32 | out_len) or (i32, i32)",
        hint=ABI_HINT,
    )


def check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise errors.UsageError(
            f"chunk size must be between 1 byte and 1 GiB, got {chunk_size}",
            hint="e.g. --chunk-size 64KiB",
        )


class StreamSession:
    """One instance speaking the streaming ABI: ``feed(chunk) -> bytes``, ``finish()``."""

    def __init__(self, box: Any, func: str = "process", chunk_size: int = DEFAULT_CHUNK) -> None:
        from .batch import guest_wasi

        check_chunk_size(chunk_size)
        names = {e.name: e.kind for e in box.exports}
        if names.get("memory") != "memory" or names.get("alloc") != "func":
            raise errors.UsageError(
                f"{box.path.name} does not speak the streaming ABI "
                f"(missing export {'memory' if names.get('memory') != 'memory' else 'alloc'})",
                hint=ABI_HINT,
            )
        self.func = func
        self.chunk_size = chunk_size
        self.packing = _packing(box, func, ("i32", "i32"))
        alloc_sig = box.signature("alloc")
        if alloc_sig.params != ("i32",) or alloc_sig.results != ("i32",):
            raise errors.UsageError(
                f"alloc has signature {alloc_sig}, the streaming ABI needs (i32) -> i32",
                hint=ABI_HINT,
            )
        self.finish_packing = _packing(box, "finish", ()) if names.get("finish") else None
        self.instance = box.instantiate(guest_wasi(box))
        sig = box.signature(func)
        parse = functools.partial(parse_args, func, sig)
        self.call = self.instance.caller(func, (sig.params, sig.results), parse)
        self.ptr = self.instance.call("alloc", [chunk_size])[0] & 0xFFFFFFFF
        if self.ptr == 0:
            raise errors.TrapError(
                f"alloc({chunk_size}) returned 0: the guest could not allocate its input buffer",
                hint="use a smaller --chunk-size, or raise limits.memory (--memory SIZE)",
            )
        try:  # (a buffer starting past the memory's end was an internal error, exit 100)
            self._check(self.ptr, chunk_size, "alloc")
        except NotImplementedError:
            raise errors.BackendUnavailable(
                f"the {box.backend_name} backend cannot reach guest memory, which --stream needs",
                hint="use --backend wasmtime",
            ) from None
        self.direct = self._memory_view() is not None

    def _memory_view(self) -> Optional[memoryview]:
        """The whole guest memory as a memoryview, taken anew for each use (memory.grow
        may move it); None where the backend has none (wasmer: another process)."""
        try:
            return self.instance.memory("memory").view()
        except (NotImplementedError, errors.BackendUnavailable):
            return None

    def input_buffer(self) -> memoryview:
        """The guest's input buffer itself (``direct`` only), to read a chunk into: no
        host buffer and no copy. Valid until the next call into the guest."""
        return self._memory_view()[self.ptr : self.ptr + self.chunk_size]  # type: ignore[index]

    def process(self, n: int) -> Any:
        """Process the ``n`` bytes already in the input buffer (``direct`` only): the
        guest's output as a view of its memory, valid until the next call into it."""
        values = self.call([self.ptr, n])
        ptr, length = _location(values, self.packing)
        if not length:
            return b""
        memory = self._memory_view()
        if ptr + length > len(memory):  # type: ignore[arg-type]
            raise errors.TrapError(
                f"{self.func} returned output at {ptr}..{ptr + length}, outside guest memory "
                f"({len(memory)} bytes)",  # type: ignore[arg-type]
                hint=ABI_HINT,
            )
        return memory[ptr : ptr + length]  # type: ignore[index]

    def _check(self, ptr: int, length: int, where: str) -> None:
        try:
            self.instance.read_memory(ptr + length, 0)
        except IndexError:  # (its own text names the empty range read at the end: red team 104)
            raise errors.TrapError(
                f"{where} returned the range {ptr}..{ptr + length}, outside guest memory",
                hint=ABI_HINT,
            ) from None

    def _output(self, values: list, packing: str, where: str) -> Any:
        ptr, length = _location(values, packing)
        if not length:
            return b""
        try:
            if length <= _PIECE:
                return self.instance.read_memory(ptr, length)
            # A large output read a piece at a time into one buffer, its range checked
            # first: read whole through the wasmer worker's pipe, the host held three
            # copies of it (1.6 GB for 512 MiB of output, red team 148).
            self.instance.read_memory(ptr + length, 0)
            out = bytearray(length)
            for at in range(0, length, _PIECE):
                out[at : at + _PIECE] = self.instance.read_memory(
                    ptr + at, min(_PIECE, length - at)
                )
            return out
        except IndexError as exc:
            raise errors.TrapError(
                f"{where} returned output at {ptr}..{ptr + length}, outside guest memory: {exc}",
                hint=ABI_HINT,
            ) from None

    def feed(self, chunk: Any) -> bytes:
        """Process one chunk (at most chunk_size bytes); the guest's output for it."""
        if not chunk:
            return b""
        if len(chunk) > self.chunk_size:
            raise ValueError(f"chunk of {len(chunk)} bytes exceeds chunk size {self.chunk_size}")
        self.instance.write_memory(self.ptr, chunk)
        return self._output(self.call([self.ptr, len(chunk)]), self.packing, self.func)

    def finish(self) -> bytes:
        if self.finish_packing is None:
            return b""
        return self._output(self.instance.call("finish", []), self.finish_packing, "finish")

    def close(self) -> None:
        self.instance.close()


_PIECE = 8 << 20  # bytes of a chunk's output read from the guest at once (see _output)


def _location(values: list, packing: str) -> tuple:
    """(out_ptr, out_len) from what FUNC or finish returned."""
    if packing == "packed":
        packed = values[0] & 0xFFFFFFFFFFFFFFFF
        return packed >> 32, packed & 0xFFFFFFFF
    return values[0] & 0xFFFFFFFF, values[1] & 0xFFFFFFFF


# Guest memory is handed straight to these (read into, written from) and to nothing else:
# they copy and keep no reference, so no view of guest memory outlives the call it was
# taken for. Any other file object gets copies.
_PLAIN_FILES = (io.BufferedReader, io.BufferedWriter, io.FileIO)


def _fill(stream: Any, view: memoryview) -> int:
    """Read until ``view`` is full or the input ends; the number of bytes read."""
    got = 0
    size = len(view)
    readinto = getattr(stream, "readinto", None)
    while got < size:
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = stream.read(size - got)
            n = len(data)
            view[got : got + n] = data
        if not n:
            break
        got += n
    return got


def run_stream(
    box: Any,
    func: str,
    source: Any,
    sink: Any,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    checkpoint: Optional[str] = None,
    progress: Optional[Callable] = None,
    warn: Optional[Callable] = None,
) -> StreamStats:
    """Stream ``source`` (checkpoint.Source) through the guest into ``sink`` (checkpoint.Sink).

    With ``checkpoint``, progress is recorded after each written chunk (at most every
    0.25 s) and an existing checkpoint is resumed. Resuming starts a fresh instance at
    the recorded input offset, so it is exact only for guests whose output for a chunk
    depends on that chunk alone (or whose state can be re-derived from it)."""
    from . import checkpoint as cp

    # A component speaks the ABI in WIT (components.stream): the box makes its session.
    make = getattr(box, "stream_session", None)
    session = make(func, chunk_size) if make else StreamSession(box, func, chunk_size)
    stats = StreamStats(chunk_size)
    marker = None
    if checkpoint:
        marker = cp.Checkpoint(
            checkpoint,
            {
                "kind": "stream",
                "module_sha256": cp.module_sha256(box),
                "function": func,
                "chunk_size": chunk_size,
            },
        )
        state = marker.load()
        if state is not None:
            source.resume(state)
            stats.resumed_at = state["input_offset"]
            note = sink.resume(state, "output of the chunks after it")
            if note and warn:
                warn(note)
    # Zero-copy where both ends are plain files: the input is read into the guest's
    # buffer and the output written from guest memory (two copies of each chunk fewer).
    direct = (
        session.direct and type(source.stream) in _PLAIN_FILES and type(sink.stream) in _PLAIN_FILES
    )
    view = None if direct else memoryview(bytearray(chunk_size))
    tick = time.monotonic()
    last = None  # (start, end, sha256) of the last chunk whose output is written
    tail = None
    guard = cp.HoldInterrupt()
    with guard:
        try:
            while True:
                data = session.input_buffer() if direct else view
                n = _fill(source.stream, data)  # type: ignore[arg-type]
                if not n:
                    break
                start = source.offset
                source.offset += n
                if marker is not None:  # before the call: the guest may rewrite its input
                    tail = cp.digest(data[:n])  # type: ignore[index]
                out = session.process(n) if direct else session.feed(data[:n])  # type: ignore[index]
                del data
                guard.hold()  # Ctrl-C waits until ``last`` covers this chunk's output
                sink.write(out)
                sink.flush()
                stats.chunks += 1
                stats.bytes_in += n
                stats.bytes_out += len(out)
                stats.peak_buffer = max(stats.peak_buffer, n + len(out))
                out = None  # no view of guest memory outlives its chunk
                if marker is not None:
                    last = (start, source.offset, tail)
                    if marker.due():
                        marker.save(_stream_state(sink, last))
                guard.release()
                if progress is not None and time.monotonic() - tick >= 0.1:
                    tick = time.monotonic()
                    progress(stats, source)
            out = session.finish()
            sink.write(out)
            stats.bytes_out += len(out)
            sink.flush()
        except BaseException:  # interrupted or trapped: record what did reach the output
            guard.hold()  # a second Ctrl-C waits for this save (the first one is raised)
            if marker is not None and last is not None and not guard.forced:
                try:
                    marker.save(_stream_state(sink, last))
                except Exception:  # noqa: S110 - the original failure is the one to report
                    pass
            raise
        finally:
            stats.finished = time.perf_counter()
            session.close()
        if marker is not None:
            guard.done(marker)
    if progress is not None:
        progress(stats, source)
    return stats


def _stream_state(sink: Any, last: tuple) -> dict:
    start, end, sha = last
    sink.flush()
    return {"input_offset": end, "tail_start": start, "tail_sha256": sha, **sink.state()}
