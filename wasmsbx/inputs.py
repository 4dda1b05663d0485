"""Reading files a user names, with a cap: a special file that never ends is an error.

``Path.read_bytes()`` on ``/dev/zero`` (given as ``--policy``, ``--artifact``, a module,
a baseline...) reads until memory runs out. Every input wasmsbx reads whole goes through
:func:`read_capped`: a regular file larger than the cap is refused from its size, before
a byte is read; anything else (a device, a FIFO, /proc) is read in chunks and refused
once it passes the cap.
"""

from __future__ import annotations

import functools
import os
import stat
import threading
import time
from typing import Any, Callable, Optional, Union

# One place for the caps, so a policy key can replace a default later.
MODULE_MAX_BYTES = 256 * 1024 * 1024  # modules (.wasm/.wat): PyPI's python.wasm is 99 MB
ARTIFACT_MAX_BYTES = 1024 * 1024 * 1024  # native code is several times its module
POLICY_MAX_BYTES = 1024 * 1024  # sandbox.toml, bench suites: text a human writes
REPORT_MAX_BYTES = 256 * 1024 * 1024  # bench baselines (every sample of every phase)
STATE_MAX_BYTES = 64 * 1024 * 1024  # checkpoints
_CHUNK = 1 << 20
_SMALL = 1 << 16  # a file read whole before its cap is known (at most this much)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# The open of a FIFO waits for a writer, for ever if none comes, and before any deadline
# is armed (`run fifo --timeout 1s` hung: red team, round 52); without O_NONBLOCK it
# returns at once, and a FIFO is then read by _PipeReader.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
# How long a FIFO without a writer is given for one to come: a writer waiting in its
# own open for a reader (`cat m.wasm > fifo &`) is let go by ours, and connects a moment
# after it (a read at once told it "nothing written", now and then).
WRITER_GRACE = 2.0


class NothingWritten(OSError):
    """A pipe (a FIFO, ``<(...)``) that ended before its first byte: a FIFO nobody came
    to write to within WRITER_GRACE, or a writer that wrote nothing."""

    def __init__(self) -> None:
        super().__init__("nothing was written to the pipe")
        self.strerror = (
            "a named pipe (FIFO) that nothing was written to; give a regular file, or "
            "start the pipe's writer first"
        )


def read_by() -> Optional[tuple]:
    """(time.monotonic() instant, error factory) the reads of a module's sections in
    this thread must end by (wasm.source.bounded_reads: wasm.facts looks), or None."""
    by = getattr(_READS, "by", None)
    return by() if callable(by) else by


_READS = threading.local()
TICK = 4096  # items read between two looks at the clock (Clock.tick)


class Clock:
    """The instant the reads of a module in this thread must end by (``read_by``), looked
    at by the readers of modules and components: ``check()`` now, ``tick()`` every TICK
    items read. Without wasm.source.bounded_reads around the read, it never fires."""

    __slots__ = ("by", "left")

    def __init__(self) -> None:
        self.by = read_by()
        self.left = TICK

    def tick(self, n: int = 1) -> None:
        if self.by is None:
            return
        self.left -= n
        if self.left <= 0:
            self.left = TICK
            self.check()

    def check(self) -> None:
        """The bound's error, if its instant has passed."""
        if self.by is not None and time.monotonic() > self.by[0]:
            raise self.by[1]()


class TooLarge(OSError):
    """The input passed its cap (``limit``); ``size`` is what was seen (or stat'ed)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"larger than {limit:,} bytes")
        self.strerror = f"larger than the {_human(limit)} an input may have"
        self.size = size
        self.limit = limit


def broken_link(path: Any) -> Optional[str]:
    """Why ``path``, a name that does not lead to a file, is a symbolic link that leads
    nowhere ("is a symbolic link to a missing file", "cannot read: Too many levels of
    symbolic links"), or None if it is no link: such a name is not "no such file" (red
    team round 77)."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except FileNotFoundError:
        return "is a symbolic link to a missing file"
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    return None  # (it came into being meanwhile)


def _human(n: int) -> str:
    from .units import format_size

    return format_size(n)


def read_capped(
    path, limit: Union[int, Callable[[bytes], int]], seen: Optional[list] = None
) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them; :class:`TooLarge` beyond that.

    ``limit`` may be a function of the first 16 bytes (a module and an artifact given in
    the same place have different caps). OSError as ``open`` raises it. ``seen``: gets
    the fstat() of the file read, as opened and after the read (the file the bytes came
    from, whatever its path names before or after: native.located). (Unbuffered: a
    buffered file object cost every Sandbox made from a path about 5 µs.)"""
    fd = os.open(path, os.O_RDONLY | _CLOEXEC | _NONBLOCK | _NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISFIFO(info.st_mode):
            os.set_blocking(fd, True)  # (a device: read as before; a file ignores it)
        if seen is None:
            return _read_fd(fd, info, limit, path)
        seen.append(info)
        data = _read_fd(fd, info, limit, path)
        seen.append(os.fstat(fd))
        return data
    finally:
        os.close(fd)


class _PipeReader:
    """``os.read`` of a FIFO opened without waiting (O_NONBLOCK). As long as a writer
    holds the pipe open it waits for data (``run <(curl ...)``: the user's own writer,
    as a read always did); for a first writer to come, WRITER_GRACE only. A read of a
    FIFO without a writer ends at once (b""); poll() then sees a writer that connects
    later (Linux reports one that connected since the open, and only such a one)."""

    def __init__(self, fd: int) -> None:
        import select

        self.fd = fd
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.waited = False

    def __call__(self, size: int) -> bytes:
        while True:
            try:
                data = os.read(self.fd, size)
            except BlockingIOError:  # a writer that has written nothing yet
                self.poller.poll()
                continue
            if data or self.waited:  # (after the first byte, or the grace: b"" is the end)
                self.waited = True
                return data
            self.waited = True
            if not self.poller.poll(WRITER_GRACE * 1000):
                return b""


def read_whole(fd: int, more_than: int, at_most: int) -> Optional[tuple]:
    """(bytes, fstat) of the regular file open as ``fd`` (closed here) if its size is
    more than ``more_than`` and at most ``at_most``, read at once (a byte more than its
    size, to see it grew: the caller compares); None for anything else, errors
    included."""
    try:
        info = os.fstat(fd)
        if not (stat.S_ISREG(info.st_mode) and more_than < info.st_size <= at_most):
            return None
        return os.read(fd, info.st_size + 1), info
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_fd(fd: int, info: os.stat_result, limit: Any, path: Any) -> bytes:
    """read_capped of the file open as ``fd`` (``info``: its fstat())."""
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(21, "Is a directory", str(path))
    if stat.S_ISREG(info.st_mode) and 0 < info.st_size < _SMALL:
        # A small file: read whole at once, its cap judged from what was read (no
        # separate read of its head and seek back: two system calls of every Sandbox
        # made from a path)
        data = _read_full(functools.partial(os.read, fd), info.st_size + 1)
        cap = limit(data[:16]) if callable(limit) else limit
        if len(data) > cap:
            raise TooLarge(len(data), cap)
        if len(data) <= info.st_size:
            return data
        return _read_upto(functools.partial(os.read, fd), data, cap)
    read = _PipeReader(fd) if stat.S_ISFIFO(info.st_mode) else functools.partial(os.read, fd)
    head = _read_full(read, 16) if callable(limit) else b""
    cap = limit(head) if callable(limit) else limit
    if stat.S_ISREG(info.st_mode) and info.st_size > cap:
        raise TooLarge(info.st_size, cap)
    if stat.S_ISREG(info.st_mode) and info.st_size:  # (/proc says 0: read in chunks)
        # One read of the whole file, and a byte more to see whether it grew: no
        # chunks to join, so a module is copied once (a 0.9 MB one twice cost 0.5 ms).
        if head:
            os.lseek(fd, 0, os.SEEK_SET)
        data = _read_full(functools.partial(os.read, fd), info.st_size + 1)
        if data[: len(head)] != head:  # changed meanwhile: the head the cap is for
            data = head + data[len(head) :]
        if len(data) <= info.st_size:
            return data
        return _read_upto(functools.partial(os.read, fd), data, cap)
    data = _read_upto(read, head, cap)
    if not data and stat.S_ISFIFO(info.st_mode):
        raise NothingWritten()
    return data


def _read_full(read: Callable[[int], bytes], size: int) -> bytes:
    """``size`` bytes by ``read`` (``os.read`` of a file), fewer only at its end (a read
    may return fewer)."""
    data = read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        chunk = read(size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _read_upto(read: Callable[[int], bytes], head: bytes, limit: int) -> bytes:
    """``head`` and what ``read`` gives after it, until its end; TooLarge past ``limit``.
    Read in whole chunks (at most one chunk past the limit is held): some files take
    only reads of a multiple of their record size (/proc/self/pagemap: 8 bytes)."""
    parts = [head]
    size = len(head)
    while size <= limit:
        chunk = read(_CHUNK)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
    raise TooLarge(size, limit)


def read_text_capped(path, limit: int) -> str:
    """Like :func:`read_capped`, decoded as UTF-8 (UnicodeDecodeError if it is not)."""
    return read_capped(path, limit).decode("utf-8")
