"""A component's stdout and stderr through pipes that wasmtime writes synchronously.

Why not the output callbacks a core module's WASI gets (``WasiConfig.stdout_custom``):
for WASI 0.2, wasmtime's C API wraps a custom output in an ``AsyncWriteStream``, whose
``[method]output-stream.write`` only queues the bytes for a task on wasmtime's tokio
runtime. The callback ran on a worker thread after the call had returned: ``wasmsbx
run`` exited (or dropped the store, which cancels the task) before the bytes came, so a
command's two writes of 600 bytes printed nothing; the limit was judged before they were
counted (exit 0 past ``limits.output``), and a late refusal stopped whatever call ran
then (red team round 76). Blocking writes (``blocking-write-and-flush``, what wasi-libc
and Rust's std use) waited for the task, so only non-blocking writes showed it.

A file output (``WasiConfig.stdout_file``) is written in the guest's own thread, before
its host call returns. Given the write end of a pipe (``/proc/self/fd/N``), every byte
the guest wrote is in the pipe when a call returns: ``drain`` reads the pipe empty, in
the calling thread, before the call's result (or its limit) is judged. A reader thread
passes the bytes on while the call runs (output streams live, a full pipe blocks the
guest as a full terminal would). Both hand each chunk to the same counting sink as a
module's callback (``_Output``: ``limits.output``, capture, files), in order, one at a
time (``lock``). A refused chunk (the limit, or a closed stdout) closes that pipe: the
guest's later writes fail inside it (EPIPE), as they did when the callback refused them.
"""

from __future__ import annotations

import errno
import os
import queue
import select
import threading
from typing import Any, Optional

CHUNK = 1 << 16  # bytes read at a time (a pipe's default capacity)
THREAD_NAME = "wasmsbx-output-pipes"  # (teardown: these threads never enter a store)
IDLE = 30.0  # seconds a reader thread waits for the next instance before it ends


def fd_path(fd: int) -> str:
    """A path that opens ``fd`` again (the pipe, not a copy of the descriptor)."""
    folder = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    return f"{folder}/{fd}"


def _pipe() -> tuple:
    """``os.pipe()``; out of descriptors is the host's trouble (exit 118), not a bug."""
    try:
        return os.pipe()
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        raise _no_descriptors(exc.strerror or "") from None


def _no_descriptors(why: str) -> Exception:
    from ... import errors

    return errors.ResourceExhausted(
        "out of file descriptors for a component's output pipes (each live component "
        f"that imports wasi:cli/stdout or stderr holds six): {why}",
        hint="raise the open-files limit (ulimit -n) or close sandboxes you are done with",
    )


class OutputPipes:
    """The pipes of one instance's stdout and stderr and the thread that reads them.

    Only that thread closes a pipe (or, before it starts, ``attach``), under ``lock``: a
    pipe it waits on is never closed under it, so its number is never another file's by
    the time it reads. ``drain`` and ``close`` ask for it through the wake-up pipe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.readers: list = []  # [fd or None, sink, done]: done, the thread closes it
        self.wake: Optional[tuple] = None  # (read, write): the thread looks again
        self.stopping = False
        self.closed = False
        # The process whose reader thread serves them. A fork's child shares the pipes
        # with its parent, whose thread read (and counted, and printed) what the
        # child's guest wrote: the child refuses such an instance (``forked``) and
        # never touches the pipes or the lock (the parent's thread may have held it at
        # the fork: red team round 80).
        self.home = os.getpid()

    @property
    def forked(self) -> bool:
        """Whether this process is a fork's child of the one that made the pipes."""
        return self.home != os.getpid()

    def attach(self, config: Any, sinks: list) -> None:
        """Give ``config`` (a WasiConfig) pipes for stdout and stderr, whose bytes go to
        ``sinks`` (callables as ``_Output``: bytes -> count, or a negative errno)."""
        try:
            self.wake = _pipe()
            for fd in self.wake:
                os.set_blocking(fd, False)
            for name, sink in zip(("stdout_file", "stderr_file"), sinks):
                read, write = _pipe()
                self.readers.append([read, sink, False])
                os.set_blocking(read, False)
                try:
                    setattr(config, name, fd_path(write))  # wasmtime opens its own
                except Exception as exc:  # (its open of our own pipe: out of descriptors)
                    raise _no_descriptors(str(exc).splitlines()[0] if str(exc) else "") from None
                finally:
                    os.close(write)  # (so the pipe ends when wasmtime lets go of it)
            READERS.serve(self)
        except BaseException:
            self._close_all()
            raise

    def drain(self) -> None:
        """Pass on every byte in the pipes now: all that the guest wrote before its call
        returned (wasmtime's writes are done when the host call returns)."""
        if self.forked:
            return
        with self.lock:
            if self.closed or self.wake is None:
                return
            for entry in self.readers:
                self._pump(entry)
            if any(entry[2] for entry in self.readers):
                self._wake()  # (a pipe refused: the thread closes it)

    def close(self) -> None:
        """No more output: the thread closes the pipes and ends (wasmtime's write ends
        stay with the store; the guest's writes then fail)."""
        if self.forked:
            return
        with self.lock:
            self.stopping = True
            if not self.closed and self.wake is not None:  # (None: never attached)
                self._wake()

    def _wake(self) -> None:
        try:
            os.write(self.wake[1], b"x")  # type: ignore[index]
        except BlockingIOError:  # (full: wake-ups are waiting already)
            pass

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            while self._wait():
                with self.lock:
                    for entry in self.readers:
                        self._pump(entry)
        finally:
            self._close_all()

    def _wait(self) -> bool:
        """Until a pipe has bytes or ends, or a wake-up; False when there is nothing more
        to read (both pipes ended or refused, or ``close`` was called)."""
        with self.lock:
            for entry in self.readers:
                if entry[2] and entry[0] is not None:  # (ended or refused: the guest's
                    os.close(entry[0])  # later writes fail, EPIPE)
                    entry[0] = None
            live = [entry[0] for entry in self.readers if entry[0] is not None]
            if self.stopping or not live:
                return False
            wake = self.wake[0]  # type: ignore[index]
        poller = select.poll()  # (not select(): descriptors past 1023 are common)
        for fd in [wake, *live]:
            poller.register(fd, select.POLLIN)
        if any(fd == wake for fd, _ in poller.poll()):
            try:
                os.read(wake, CHUNK)
            except BlockingIOError:
                pass
        return True

    def _pump(self, entry: list) -> None:
        """Read ``entry``'s pipe empty into its sink (under ``lock``)."""
        while entry[0] is not None and not entry[2]:
            try:
                data = os.read(entry[0], CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data or entry[1](data) < 0:  # the end, or refused: closed by the thread
                entry[2] = True

    def _close_all(self) -> None:
        with self.lock:
            self.closed = True
            for entry in self.readers:
                if entry[0] is not None:
                    os.close(entry[0])
                    entry[0] = None
            if self.wake is not None:
                for fd in self.wake:
                    os.close(fd)
                self.wake = None


class Readers:
    """The reader threads, one per instance whose pipes are open, kept for the next
    instance when it ends: starting a thread cost more than the rest of a component's
    instantiation (~120 us of ~500). Each instance gets a thread of its own, so a sink
    that blocks (a full terminal) holds up only its own guest."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """None waiting (a forked child has none of its parent's threads)."""
        self.lock = threading.Lock()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.idle = 0  # threads waiting for a job, each job put for one of them

    def serve(self, pipes: OutputPipes) -> None:
        with self.lock:
            if self.idle:
                self.idle -= 1  # (taken now: another instance cannot count on it too)
                self.jobs.put(pipes)
                return
        threading.Thread(target=self._work, args=(pipes,), name=THREAD_NAME, daemon=True).start()

    def _work(self, pipes: Optional[OutputPipes]) -> None:
        while pipes is not None:
            pipes._run()
            pipes = self._next()

    def _next(self) -> Optional[OutputPipes]:
        with self.lock:
            self.idle += 1
        while True:
            try:
                return self.jobs.get(timeout=IDLE)
            except queue.Empty:
                with self.lock:
                    if self.idle and self.jobs.empty():  # (else a job is on its way)
                        self.idle -= 1
                        return None


READERS = Readers()
os.register_at_fork(after_in_child=READERS.reset)
