"""Checkpoints for ``--batch`` and ``--stream``: resume an interrupted run exactly.

A checkpoint is a small JSON file that says how far the input has been consumed and how
far the output has been written *for the same items*. The order of every step is what
makes resuming exact:

1. the results of items up to input offset N are written and flushed to the output;
2. then the checkpoint (input offset N, output offset M) replaces the old one
   atomically: a temp file in the same directory, fsync, ``os.replace``.

A kill between 1 and 2 leaves output past M that the checkpoint does not cover. On
resume, when the output is the same regular file (same device and inode), it is cut
back to M and the items after N run again: nothing lost, nothing repeated. When the
output is a pipe or another file, that cut is impossible, so the results after the
checkpoint may appear twice (at least once); resuming says so on stderr.

The input is identified by the SHA-256 of the last item (or chunk) before N; resuming
against different input, another module or another function is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any, Optional

from .. import errors

VERSION = 1
# The longest last item a batch checkpoint can name: a batch line (batch.MAX_LINE) and
# its newline. A stream's is its chunk size (in its identity).
MAX_TAIL = (1 << 20) + 1
INTERVAL = 0.25  # seconds between checkpoint writes while running


def digest(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


def module_sha256(box: Any) -> str:
    """The identity of the module a checkpoint belongs to: its SHA-256, or for a
    precompiled artifact run alone, the SHA-256 its authenticated header records."""
    return digest(box.wasm) if box.wasm is not None else box.artifact.module_sha256


class Checkpoint:
    """One checkpoint file: ``identity`` must match for a resume; ``state`` is progress."""

    def __init__(self, path, identity: dict) -> None:
        self.path = Path(path)
        self.identity = dict(identity)
        self.last_save = 0.0
        self.saves = 0
        # (device, inode) of the file the last save wrote: the one remove() removes
        self.saved_file: Optional[tuple] = None

    def load(self) -> Optional[dict]:
        """The saved progress, or None when there is no checkpoint yet."""
        self._check_kind()
        try:
            from ..inputs import STATE_MAX_BYTES, read_capped

            seen: list = []  # (the file read, through a link too: what remove() removes)
            text = read_capped(self.path, STATE_MAX_BYTES, seen)  # bytes: json.loads decodes
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise errors.InputError(
                f"{self.path}: cannot read checkpoint: {exc.strerror}", path=str(self.path)
            ) from None
        try:
            data = json.loads(text)
            state = data["state"]
            identity = data["identity"]
            version = data["version"]
        except (ValueError, KeyError, TypeError, RecursionError):  # [[[[... too deep for json
            raise self._refuse("is not a wasmsbx checkpoint (or is damaged)") from None
        if version != VERSION:
            raise self._refuse(f"was written by checkpoint format {version}, not {VERSION}")
        if not isinstance(identity, dict):
            raise self._refuse("is not a wasmsbx checkpoint (or is damaged)")
        for key, value in self.identity.items():
            if identity.get(key) != value:
                raise self._refuse(
                    f"belongs to another run ({key}: {identity.get(key)!r}, now {value!r})"
                )
        why = self._odd_state(state)
        if why:
            raise self._refuse(f"is damaged ({why})")
        self.saved_file = (seen[0].st_dev, seen[0].st_ino)
        return state

    def _odd_state(self, state: Any) -> str:
        """What is wrong with a checkpoint's state, "" if nothing: every field the resume
        reads, of its type and in its range. Trusted as it was, a damaged one ended in
        an internal error (a missing field, a string offset, a negative one) or read
        terabytes (an input offset of 10**13; red team 106)."""

        def count(value: Any) -> bool:  # (below 2**62: a file offset, red team 108)
            return type(value) is int and 0 <= value < 1 << 62

        if not isinstance(state, dict):
            return "its state is not a table"
        for key in ("input_offset", "tail_start", "output_offset"):
            if not count(state.get(key)):
                return f"{key} is not a file offset (a whole number, 0 to 2**62)"
        tail = state["input_offset"] - state["tail_start"]
        # (the last item's line, or chunk: at most what the run reads at once)
        most = self.identity.get("chunk_size") or MAX_TAIL
        if not 0 <= tail <= (most if type(most) is int else MAX_TAIL):
            return "its last item's place in the input is out of range"
        digest_ = state.get("tail_sha256")
        if not (isinstance(digest_, str) and len(digest_) == 64):
            return "tail_sha256 is not a digest"
        if not all(c in "0123456789abcdef" for c in digest_):
            return "tail_sha256 is not a digest"
        found = state.get("output_file")
        if found is not None and not (
            isinstance(found, list) and len(found) == 2 and all(count(v) for v in found)
        ):
            return "output_file is not a file's identity"
        batch = self.identity.get("kind") == "batch"
        if batch or "next_line" in state:
            line = state.get("next_line")
            # (each line before it took a byte at least, its newline: red team 107 gave
            # 10**20 and every later result was numbered from there)
            if not (count(line) and 1 <= line <= state["input_offset"] + 2):
                return "next_line is not a line number of the input read"
        for key in ("ok", "failed"):
            if key in state and not count(state[key]):
                return f"{key} is not a count"
        errors_ = state.get("errors", {})
        if (
            not isinstance(errors_, dict)
            or len(errors_) > 64
            or not all(isinstance(k, str) and count(v) for k, v in errors_.items())
        ):
            return "errors is not a table of counts"
        # (the kinds a batch counts: "trap", "limit:fuel"; printed in its summary, where
        # a planted escape sequence reached the terminal: red team 107)
        if not all(len(k) <= 32 and k.replace(":", "").replace("_", "").isalnum() for k in errors_):
            return "errors names a kind of error no batch counts"
        if batch and sum(errors_.values()) != state.get("failed", 0):
            return "errors does not add up to failed"
        return ""

    def _check_kind(self) -> None:
        """A checkpoint is a regular file wasmsbx rewrites and deletes: anything else there
        (a FIFO, whose open would block for ever; a device; a directory) is refused before
        any work, and so is a path it could not write later (a missing folder, a link to
        nothing), as for every output, or a sandbox.toml (red team round 77)."""
        from ..outfile import refuse_policy_name

        refuse_policy_name(os.fspath(self.path))
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            from ..outfile import check_output

            check_output(self.path)
            return
        except OSError:
            return  # load() reports it with the path
        from ..outfile import refuse_guarded_output

        # (before it is read: one in the trust folder or the cache by any path or link
        # is not a checkpoint to resume, but a file not to write; red team 146)
        refuse_guarded_output(self.path)
        if not stat.S_ISREG(info.st_mode):
            from ..outfile import kind_of

            raise errors.InputError(
                f"{self.path}: is {kind_of(info.st_mode)}; a checkpoint must be a regular "
                "file (it is rewritten and deleted)",
                hint="give the name of a new or existing checkpoint file",
                path=str(self.path),
            )

    def _refuse(self, why: str) -> errors.UsageError:
        return errors.UsageError(
            f"checkpoint {self.path} {why}",
            hint="rerun the interrupted command unchanged, or delete the checkpoint to start over",
            path=str(self.path),
        )

    def due(self) -> bool:
        return time.monotonic() - self.last_save >= INTERVAL

    def save(self, state: dict) -> None:
        """Replace the checkpoint atomically (a reader sees the old or the new one, whole)."""
        payload = {"version": VERSION, "identity": self.identity, "state": state}
        from ..outfile import write_output

        written: list = []
        write_output(self.path, json.dumps(payload), durable=True, written=written)
        self.saved_file = written[0] if written else None
        self.last_save = time.monotonic()
        self.saves += 1

    def remove(self) -> None:
        """Remove the checkpoint, the run done (outfile.remove_output: in its folder as
        opened and checked; a folder swapped meanwhile cannot aim it elsewhere). Only the
        file this run resumed from or saved: with neither (a batch of no items), what is
        at the name now is someone else's, and it was removed by name (red team 141:
        the name's folder swapped for a bind mount of the trust folder, the secret key).
        """
        from ..outfile import remove_output

        if self.saved_file is None:
            return
        remove_output(os.fspath(self.path), self.saved_file)


class HoldInterrupt:
    """Defers Ctrl-C (SIGINT, and SIGTERM on the command line) between ``hold()`` and
    ``release()``, which then raises it:
    writing output and recording what it covers is one step, so a checkpoint saved on
    Ctrl-C never covers output of an item (or chunk) it does not count as done.

    Outside that span Ctrl-C raises KeyboardInterrupt at once as usual (so waiting for a
    result stays interruptible). A second Ctrl-C inside the span raises at once too (a
    write to a stalled pipe must not make the process unstoppable) and sets ``forced``:
    what the span was recording is then unknown, so no checkpoint may be saved from it.
    Active only in the main thread and only while SIGINT has Python's default handler or
    the command line's (``deadline.on_interrupt``); otherwise it changes nothing. When it
    raises, it tells the deadline keeper that the main thread is handling the interrupt
    (its hard stop then leaves the checkpoint the time to be saved); while it holds, the
    keeper's short grace still applies, so a write stuck in a stalled pipe is not waited
    for."""

    def __init__(self) -> None:
        self.busy = False
        self.pending = False
        self.forced = False
        self.previous: Any = None

    def __enter__(self) -> HoldInterrupt:
        import signal
        import threading

        from ..backends.deadline import on_interrupt

        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) in (signal.default_int_handler, on_interrupt):
            self.previous = signal.signal(signal.SIGINT, self._signal)
            # SIGTERM too, where the command line stops on it (deadline.on_interrupt): it
            # came between a stream's write and its record, so the checkpoint counted a
            # chunk it had not written down (its output then came twice: red team 108)
            if signal.getsignal(signal.SIGTERM) is on_interrupt:
                self.previous_term = signal.signal(signal.SIGTERM, self._signal)
        return self

    previous_term: Any = None

    finished = False  # done() ran: the run is complete, its checkpoint removed
    dropped = False  # done() dropped an interrupt: the next one stops the process

    def __exit__(self, *exc: Any) -> None:
        import signal

        from ..backends.deadline import on_interrupt

        # On the command line, a finished run has only its summary left to write: the
        # first interrupt from here on is dropped (_Late)
        late = None
        if self.finished and self.previous is on_interrupt:
            late = _Late(seen=self.dropped)
        if self.previous is not None:
            signal.signal(signal.SIGINT, late or self.previous)
            self.previous = None
        if self.previous_term is not None:
            signal.signal(signal.SIGTERM, late or self.previous_term)
            self.previous_term = None
        if self.finished and self.pending:
            # One came after done() (as what is between it and here ran, or as the
            # handlers were swapped back): dropped as done() drops one (red team 114:
            # before, two more were needed to stop the process, and the keeper's hard
            # stop for it stayed armed). Looked at after the swap, so none is missed.
            # If done() dropped one already, this is the second: it stops the process.
            if self.dropped:
                self.pending = False
                _raise_interrupt()
            self._drop()
            if late is not None:
                late.seen = True

    def _signal(self, signum: int, frame: Any) -> None:
        if self.busy and not self.pending:
            self.pending = True
            return
        self.forced = self.busy
        _raise_interrupt()

    def hold(self) -> None:
        self.busy = True

    def release(self) -> None:
        self.busy = False
        if self.pending:
            self.pending = False
            _raise_interrupt()

    def done(self, marker: Checkpoint) -> None:
        """The run is done: remove its checkpoint, held, and drop an interrupt that came
        meanwhile (red team 109: removed after the handlers were restored, a late Ctrl-C
        or SIGTERM exited 130 "interrupted" with the checkpoint gone, and the rerun it
        asked for wrote the whole output again). Call it inside the ``with``."""
        self.hold()
        marker.remove()
        if self.pending:  # (dropped: its hard stop too)
            self._drop()
        self.finished = True

    def _drop(self) -> None:
        from ..backends.deadline import KEEPER

        self.pending = False
        self.dropped = True
        KEEPER.forgive()


class _Late:
    """The command line's SIGINT and SIGTERM handler once a checkpointed run has finished
    (its checkpoint removed) and only its summary is left to write: the first signal is
    dropped, a second stops the process as usual (a write to a stalled terminal or pipe
    stays stoppable). Stopped there, it exited 130 "interrupted" with every result
    written and no checkpoint left, and the rerun that asked for wrote them all again
    (red team 110: 5 to 9 runs in 10 with the signal sent as the summary appeared)."""

    def __init__(self, seen: bool = False) -> None:
        self.seen = seen  # (one dropped already, by HoldInterrupt.done)

    def __call__(self, signum: int, frame: Any) -> None:
        from ..backends.deadline import KEEPER, on_interrupt

        if self.seen:  # (on_interrupt may return: in a finalizer, its hard stop ends it)
            on_interrupt(signum, frame)
            return
        self.seen = True
        KEEPER.forgive()  # (its thread saw the signal too: no hard stop for it)


def _raise_interrupt() -> None:
    """Raise KeyboardInterrupt in the main thread, which from here on handles it."""
    from ..backends.deadline import KEEPER

    KEEPER.handling_interrupt()
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------- input


class Source:
    """A binary input read front to back, with the offset consumed and (for files) the size."""

    def __init__(self, stream: Any, name: str = "-") -> None:
        self.stream = stream
        self.name = name
        self.offset = 0
        self.size: Optional[int] = None
        self.seekable = False
        try:
            st = os.fstat(stream.fileno())
            if stat.S_ISREG(st.st_mode):
                self.size = st.st_size
                self.seekable = True
                self.offset = stream.tell()
        except (AttributeError, OSError, ValueError):
            pass

    def resume(self, state: dict) -> None:
        """Move to the checkpoint's input offset, checking the input is the one it saw."""
        start, end = state["tail_start"], state["input_offset"]
        try:
            if self.seekable:
                self.stream.seek(start)
            else:
                self._discard(start)
        except (OSError, ValueError, OverflowError):  # (past what a file can hold: 108)
            start = -1
        if start < 0:
            raise errors.UsageError(
                f"input {self.name} is not the input of the interrupted run (it cannot "
                f"be read at the checkpoint's offset {state['tail_start']})",
                hint="resume with the same input, or delete the checkpoint to start over",
            )
        tail = self._read_exactly(end - start)
        if len(tail) != end - start or digest(tail) != state["tail_sha256"]:
            raise errors.UsageError(
                f"input {self.name} is not the input of the interrupted run "
                f"(its bytes {start}..{end} differ from the checkpoint's)",
                hint="resume with the same input, or delete the checkpoint to start over",
            )
        self.offset = end

    def _discard(self, count: int) -> None:
        while count > 0:
            data = self.stream.read(min(count, 1 << 20))
            if not data:
                break
            count -= len(data)

    def _read_exactly(self, count: int) -> bytes:
        parts, left = [], count
        while left > 0:
            data = self.stream.read(left)
            if not data:
                break
            parts.append(data)
            left -= len(data)
        return b"".join(parts)


# ---------------------------------------------------------------------------- output


class Sink:
    """The output: writes, flushes, and knows its offset and identity (for a regular file)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.written = 0
        self.fd: Optional[int] = None
        self.file_id: Optional[list] = None
        try:
            fd = stream.fileno()
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                self.fd = fd
                self.file_id = [st.st_dev, st.st_ino]
        except (AttributeError, OSError, ValueError):
            pass
        self.base = self._size() if self.fd is not None else 0

    def write(self, data: bytes) -> None:
        self.stream.write(data)
        self.written += len(data)

    def flush(self) -> None:
        self.stream.flush()

    def _size(self) -> int:
        return os.fstat(self.fd).st_size

    def offset(self) -> int:
        """Bytes of output so far (flush first): the file's size, or bytes written to a pipe."""
        return self._size() if self.fd is not None else self.base + self.written

    def resume(self, state: dict, what: str) -> Optional[str]:
        """Cut the output back to the checkpoint; a warning when that is impossible."""
        recorded = state["output_offset"]
        same = self.fd is not None and self.file_id == state.get("output_file")
        if not same:
            self.base = recorded if self.fd is None else self.base
            return (
                f"output is not the file the interrupted run wrote to, so it cannot be cut "
                f"back to the checkpoint: {what} written after the checkpoint may appear twice"
            )
        size = self._size()
        if size < recorded:
            raise errors.UsageError(
                f"output file has {size} bytes but the checkpoint recorded {recorded}: "
                "it was truncated since the interrupted run",
                hint="resume appending to the same output (>> out.jsonl), or delete the "
                "checkpoint to start over",
            )
        if size > recorded:
            os.ftruncate(self.fd, recorded)
        os.lseek(self.fd, recorded, os.SEEK_SET)
        return None

    def state(self) -> dict:
        return {"output_offset": self.offset(), "output_file": self.file_id}
