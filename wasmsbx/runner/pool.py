"""The worker processes of ``run --batch -j N`` (runner.batch): how they start, how they
talk to the parent, how they end.

Two ways to start them:

* ``prefork``, the command line's: forked from this process before it makes any engine
  (wasmtime and the worker's modules imported first, so a fork costs a few milliseconds
  and no import), while no thread of its own runs but the deadline keeper, whose lock is
  held across the fork (``deadline.Keeper.after_fork_child``). Anything else (another
  thread in ``/proc/self/task``, an engine made, no ``os.fork``) and it forks nothing.
* ``start``, everyone else's (the Python API's ``jobs=N``, whose process may hold
  engines, runtime threads and locks): multiprocessing's fork server, else ``spawn``
  (``batch.pool_context``).

A worker reads its tasks from one pipe and writes its replies to another: first the
WorkerSpec, then chunks of items, one reply per chunk in order. A thread of the worker
reads the tasks as they come, so the parent never blocks on a full task pipe while the
worker waits to send a reply. Nothing else is shared: no queue, no semaphore, no
resource tracker, no thread of the parent's per worker.

The end: the parent closing a worker's task pipe makes it exit; the parent dying, even by
SIGKILL, too (it waits on a pipe only the parent holds open: for a forked worker the
parent's lifeline, for a fork server's multiprocessing's parent sentinel); a worker dying
shows as the end of its reply pipe (``BatchWorkerDied`` in the parent). A worker whose
call is stuck past its deadline ends on purpose (``_hard_stop_to``): its last reply says
so, and the parent sends what it had not answered to a new worker (``Worker.resubmit``).
"""

from __future__ import annotations

import _thread
import errno
import gc
import os
import sys
from collections import deque
from typing import Any, Callable, Optional

from .. import errors
from ..native import flush_hits


class BatchWorkerDied(errors.WasmsbxError):
    kind = "worker"


def _died() -> BatchWorkerDied:
    return BatchWorkerDied(
        "a batch worker process died unexpectedly",
        hint="rerun with -j 1 to see the failure in this process",
    )


class Slot:
    """One chunk sent to a worker: ``parts``, the replies that hold some of its results
    (a chunk whose results are large comes back in parts, see batch.worker_chunk), then
    ``reply`` once it has answered all; ``held``, the bytes of those replies received
    and not yet taken; ``worker``, its worker."""

    __slots__ = ("reply", "parts", "held", "worker", "message", "done")

    def __init__(self, worker: Any = None, message: Any = None) -> None:
        self.reply: Any = None
        self.parts: deque = deque()
        self.held = 0
        self.worker = worker
        self.message = message  # (items, encoded), as sent: resent if its worker stops
        self.done = 0  # how many of its items the replies received so far answer

    def ready(self) -> bool:
        return bool(self.parts) or self.reply is not None

    def take(self) -> tuple:
        """The oldest reply received (a part first): (reply, its bytes, whether it is the
        chunk's last)."""
        if self.parts:
            reply, size = self.parts.popleft()
            last = False
        else:
            reply, size, last = self.reply, self.held, True
            self.reply = None
        self.held -= size
        return reply, size, last


class Worker:
    """The parent's handle on one worker: its two pipes and the chunks it holds."""

    def __init__(self, tasks: Any, replies: Any, pid: int = 0, process: Any = None) -> None:
        self.tasks = tasks
        self.replies = replies
        self.pid = pid
        self.process = process
        self.inflight: deque = deque()
        self.lifeline = -1  # prefork's end of the workers' lifeline, kept by the first
        self.reaped = False  # waited for: its pid may belong to another process now
        self.stopped = False  # it sent a "stopped" reply and is leaving (see resubmit)

    def send(self, message: Any) -> None:
        try:
            self.tasks.send(message)
        except OSError:  # BrokenPipeError: it is gone
            raise _died() from None

    def submit(self, message: Any) -> Slot:
        slot = Slot(self, message)
        self.send(message)
        self.inflight.append(slot)
        return slot

    def resubmit(self, slot: Slot) -> None:
        """Send this worker the items of ``slot`` that no reply has answered (another
        worker stopped before them); the slot keeps its place in the caller's order."""
        items, *rest = slot.message
        slot.message = (items[slot.done :], *rest)
        slot.done = 0
        slot.worker = self
        self.send(slot.message)
        self.inflight.append(slot)

    def receive(self) -> int:
        """Take one reply (one is ready): it belongs to the oldest chunk in flight, which
        it completes unless it is a part. Its size in bytes."""
        try:
            data = self.replies.recv_bytes()
        except (EOFError, OSError):
            raise _died() from None
        slot = self.inflight[0]
        reply = reply_from(data, slot.message[1] if slot.message else None)
        slot.held += len(data)
        if reply[0] in ("part", "stopped"):  # (kind, results, their count, seconds)
            slot.parts.append((("ok", *reply[1:]), len(data)))
            slot.done += reply[2]
            if reply[0] == "stopped":  # its call was stuck: it is leaving (_hard_stop_to)
                self.stopped = True
        else:
            self.inflight.popleft()
            slot.reply = reply
        return len(data)

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.is_alive()
        if self.reaped:
            return False
        try:
            if os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                return True
        except ChildProcessError:
            pass
        self.reaped = True
        return False

    def terminate(self) -> None:
        if self.process is not None:
            self.process.terminate()
            return
        if self.reaped:  # never signal a pid that is no longer our child's
            return
        try:
            os.kill(self.pid, 15)  # SIGTERM: a worker keeps its default action
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Close its task pipe (it exits once it has read what came before) and reap it."""
        self.tasks.close()
        self.reap()

    def reap(self) -> None:
        try:
            if self.process is not None:
                self.process.join()
            elif not self.reaped:
                os.waitpid(self.pid, 0)
                self.reaped = True
        except ChildProcessError:
            pass
        finally:
            self.replies.close()


# ---------------------------------------------------------------------------- replies
#
# A reply is unpickled naming no class but the results' own (runner.batch's BatchResult,
# Encoded, EncodedChunk: JSON-ready values in tuples, lists and dicts); an error that
# ends the batch comes as a plain description (``describe``), rebuilt here only as a
# RuntimeError or one of wasmsbx's own errors (``rebuild``). Nothing a guest writes
# reaches the reply pipe (outfile refuses a link to another process's descriptor: red
# team round 91 had a guest's stdout written there through a planted /proc/self/fd link,
# and the parent unpickled and ran it); if anything ever did, it could make a wrong
# reply at most, never run code in the parent. (A description, not the exception
# pickled: how an exception pickles is anyone's to change, tblib's pickling support,
# which dask installs, pickles every one through a function of its own.)

_REPLY_CLASSES = frozenset(
    {
        ("wasmsbx.runner.batch", "BatchResult"),
        ("wasmsbx.runner.batch", "Encoded"),
        ("wasmsbx.runner.batch", "EncodedChunk"),
    }
)
_REPLY_KINDS = ("ok", "part", "stopped")
_unpickler: Any = None
_PLAIN = (str, int, float, bool, type(None))


def _reply_unpickler() -> Any:
    global _unpickler
    if _unpickler is None:
        import pickle

        class _ReplyUnpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if (module, name) in _REPLY_CLASSES:
                    # (only a module already imported: a reply never imports anything)
                    found = getattr(sys.modules.get(module), name, None)
                    if isinstance(found, type):
                        return found
                raise pickle.UnpicklingError(f"{module}.{name}")

        _unpickler = _ReplyUnpickler
    return _unpickler


def reply_from(data: bytes, encoded: Optional[bool] = None) -> tuple:
    """A worker's reply (``_send``'s bytes): ``(kind, results, count, seconds)`` or
    ``("error", exception)``. Bytes that are not one, or that name any other class, are
    the worker's failure (BatchWorkerDied), never unpickled further. ``encoded``: the
    chunk asked for its results as JSONL (an EncodedChunk), or as BatchResults; None:
    either."""
    import io

    try:
        reply = _reply_unpickler()(io.BytesIO(data)).load()
    except Exception as exc:  # noqa: BLE001 - whatever bytes that are not a reply raise
        raise _not_a_reply(f"{type(exc).__name__}: {exc}") from None
    if type(reply) is not tuple or not reply:
        raise _not_a_reply(f"a {type(reply).__name__}")
    kind = reply[0]
    if kind == "error" and len(reply) == 2:
        return ("error", rebuild(reply[1]))
    shaped = len(reply) == 4 and type(reply[2]) is int and type(reply[3]) is float
    if kind in _REPLY_KINDS and shaped and _results(reply[1], encoded):
        return reply
    raise _not_a_reply(f"a reply of {len(reply)} parts, {str(kind)[:40]!r} first")


def _results(results: Any, encoded: Optional[bool]) -> bool:
    """Whether a reply's results are what a worker sends: a list of BatchResults, or an
    EncodedChunk of a count, a tuple of error kinds and bytes, whichever the chunk asked
    for (``encoded``) (red team rounds 95 and 97: a crafted one ended the run with an
    internal error, after writing its bytes)."""
    # (the classes as the unpickler found them: pool never imports batch, which imports it)
    batch = sys.modules.get("wasmsbx.runner.batch")
    BatchResult = getattr(batch, "BatchResult", None)  # noqa: N806 - classes
    EncodedChunk = getattr(batch, "EncodedChunk", None)  # noqa: N806
    if BatchResult is None or EncodedChunk is None:
        return False
    if type(results) is list:
        return encoded is not True and all(
            type(r) is BatchResult and type(r.line) is int for r in results
        )
    return (
        encoded is not False
        and type(results) is EncodedChunk
        and type(results.count) is int
        and type(results.kinds) is tuple
        and all(type(k) is str for k in results.kinds)
        and type(results.data) is bytes
    )


def _not_a_reply(what: str) -> BatchWorkerDied:
    return BatchWorkerDied(
        f"a batch worker process sent something that is not a reply ({what[:200]})",
        hint="rerun with -j 1 to see the failure in this process",
    )


def describe(error: BaseException) -> tuple:
    """``error`` as plain data: (module, class name, message, its attributes that are
    plain values: text, numbers, and lists, tuples and dicts of them)."""
    message = error.message if isinstance(error, errors.WasmsbxError) else str(error)
    kind = type(error)
    state = {}
    for name, value in getattr(error, "__dict__", {}).items():
        kept = _plain(value)
        if kept is not _NOT_PLAIN:
            state[name] = kept
    return (kind.__module__, kind.__qualname__, str(message), state)


_NOT_PLAIN = object()


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` if it holds only plain values (see describe), else _NOT_PLAIN."""
    if type(value) in _PLAIN:
        return value
    if depth > 8:
        return _NOT_PLAIN
    if type(value) in (list, tuple):
        items = [_plain(item, depth + 1) for item in value]
        return _NOT_PLAIN if any(i is _NOT_PLAIN for i in items) else type(value)(items)
    if type(value) is dict:
        out = {}
        for key, item in value.items():
            kept = _plain(item, depth + 1)
            if type(key) is str and kept is not _NOT_PLAIN:
                out[key] = kept
        return out
    return _NOT_PLAIN


def rebuild(description: Any) -> BaseException:
    """The exception ``describe`` described: of its class if that is a RuntimeError or
    one of wasmsbx's own errors (WasmsbxError), with its attributes; else a RuntimeError
    naming it. BatchWorkerDied if ``description`` is not one."""
    if not (
        type(description) is tuple
        and len(description) == 4
        and all(type(part) is str for part in description[:3])
        and type(description[3]) is dict
    ):
        raise _not_a_reply("an error reply without its error")
    module, name, message, state = description
    found = None
    if module == "builtins":
        # (what a worker sends of Python's own: its internal errors. A crafted
        # BrokenPipeError ended a run with exit 0 and no output, a MemoryError with 118:
        # red team round 96)
        found = RuntimeError if name == "RuntimeError" else None
    elif (module == "wasmsbx" or module.startswith("wasmsbx.")) and "." not in name:
        found = getattr(sys.modules.get(module), name, None)
        if not (isinstance(found, type) and issubclass(found, errors.WasmsbxError)):
            found = None
    # (so never SystemExit, KeyboardInterrupt, GeneratorExit nor an exception group: a
    # crafted one ended the run with exit 0, red team round 95)
    plain = RuntimeError(f"batch worker: {name}: {message}"[:2000])
    if found is None:
        return plain
    try:
        # (by its own __init__: every attribute its class sets is there, a TrapError's
        # backtrace too, which reports and --json read: red team round 97)
        error = found(message)
        for key, value in state.items():
            # (what its class says, an exit code, a kind, a limit, is its class's:
            # state set exit_code 0 on a limit, red team round 95)
            ours = type(key) is str and not key.startswith("__") and not _of_class(found, key)
            if ours and _fits(getattr(error, key, _NOT_PLAIN), value, key):
                setattr(error, key, value)
    except Exception:  # noqa: BLE001 - a class that cannot be made so: its name and text
        return plain
    return error


def _fits(made: Any, value: Any, key: str) -> bool:
    """Whether ``value`` may stand for an attribute that __init__ set to ``made``
    (_NOT_PLAIN: none): of the same type (a hint, text or None), and a list of text
    only (a backtrace of 5, or of dicts, was a traceback where it was printed)."""
    if key == "hint":
        return value is None or type(value) is str
    if made is not _NOT_PLAIN and type(value) is not type(made):
        return False
    return type(value) is not list or all(type(item) is str for item in value)


def _of_class(cls: type, key: str) -> bool:
    """Whether ``key`` is an attribute of the class itself (not an instance's own: the
    message, hint and context are every error's)."""
    return key not in ("message", "hint", "context") and hasattr(cls, key)


def close_all(workers: list) -> None:
    """Close every worker's task pipe, then reap them: they exit at the same time."""
    for worker in workers:
        worker.tasks.close()
    for worker in workers:
        worker.reap()
        if worker.lifeline >= 0:
            os.close(worker.lifeline)
            worker.lifeline = -1


def wait(workers: list, extra: list, timeout: float) -> list:
    """The workers with a reply ready and the ``extra`` connections that are readable."""
    from multiprocessing.connection import wait as _wait

    busy = {w.replies: w for w in workers if w.inflight}
    ready = _wait([*busy, *extra], timeout)
    return [busy.get(r, r) for r in ready]


# ---------------------------------------------------------------------------- starting

_FORKED: dict = {}  # prefork's workers, by the pid of the process that forked them


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def prefork(jobs: int, modules: list, job: tuple) -> bool:
    """Fork ``jobs`` workers from this process now, before it makes any engine; ``take``
    hands them to the batch. ``job``: what a worker runs, ``(make_state(spec),
    run_chunk(state, chunk, encoded))`` (runner.batch's, which this module does not
    import). False (nothing forked) unless it is safe: Linux, and no
    thread but this one and the deadline keeper's."""
    import importlib

    if not hasattr(os, "fork") or not sys.platform.startswith("linux") or jobs < 2:
        return False
    discard()
    import multiprocessing.connection  # noqa: F401 - and what a worker's loop uses
    import queue  # noqa: F401
    import signal  # noqa: F401

    for name in modules:  # what every worker needs, imported once, here
        if name != "__main__":
            try:
                importlib.import_module(name)
            except ImportError:
                pass  # a worker imports what it needs (a backend not installed: its error)
    from ..backends.deadline import KEEPER

    for stream in (sys.stdout, sys.stderr):  # no buffered output is written twice
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    workers: list = []
    with KEEPER.lock:  # the keeper's thread holds no lock of its own across the fork
        if _threads() != 1 + int(KEEPER.running) or _engines_made():
            return False
        # A worker's garbage collector never walks what it inherits: a full collection
        # would write to every object's header, copying most of the parent's memory
        # page by page. Only the parent unfreezes.
        gc.freeze()
        try:
            workers, keep = _fork_all(jobs, KEEPER, job)
        finally:
            gc.unfreeze()
    _FORKED[os.getpid()] = (workers, keep)
    return True


def _engines_made() -> bool:
    """Whether this process has made a runtime engine: a fork would copy it (and a
    worker could pick it up from a backend's table of engines), so prefork declines."""
    engine = getattr(sys.modules.get("wasmsbx.backends.base"), "Engine", None)
    return engine is not None and engine.made > 0


def _fork_all(jobs: int, keeper: Any, job: tuple) -> tuple:
    """prefork's forks (``keeper.lock`` held): the workers and the lifeline's end."""
    workers: list = []
    lifeline, keep = os.pipe()  # only this process holds ``keep``
    ours: list = [keep]
    pending: list = [lifeline]  # (closed here if a pipe or a fork fails)
    try:
        for _ in range(jobs):
            task_r, task_w = os.pipe()
            pending += [task_r, task_w]
            reply_r, reply_w = os.pipe()
            pending += [reply_r, reply_w]
            _roomy(task_w, reply_w)
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                try:
                    for fd in (*ours, task_w, reply_r):
                        os.close(fd)
                    keeper.after_fork_child()
                    _forked_main(task_r, reply_w, lifeline, job)
                finally:
                    os._exit(1)
            for fd in (task_r, reply_w):
                pending.remove(fd)
                os.close(fd)
            workers.append(Worker(*_connections(task_w, reply_r), pid=pid))
            ours += [task_w, reply_r]
            del pending[1:]
    except BaseException:
        # Out of descriptors or processes part way (`ulimit -n 14` with -j 2): every
        # pipe made here is closed, so the error can still be reported (importing what
        # reports it needs a descriptor), and the workers forked end with their pipes:
        # told by the end of their tasks, not SIGTERM, which reached them before they
        # set their own handlers (a traceback per worker, from this process's handler).
        for fd in pending:
            os.close(fd)
        close_all(workers)
        os.close(keep)
        raise
    os.close(lifeline)
    return workers, keep


def _roomy(*fds: int) -> None:
    """Pipes of 1 MiB where Linux allows it (the default 64 KiB holds a few chunks): a
    parent that sends a chunk or a worker that replies then seldom waits for the other
    side's reader to be scheduled. Best effort: a smaller pipe only waits more."""
    import fcntl

    for fd in fds:
        try:
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass


def _connections(write_fd: int, read_fd: int) -> tuple:
    from multiprocessing.connection import Connection

    return Connection(write_fd, readable=False), Connection(read_fd, writable=False)


def take(jobs: int) -> Optional[list]:
    """prefork's workers if there are ``jobs`` of them, all alive (each is used once)."""
    entry = _FORKED.pop(os.getpid(), None)
    if entry is None:
        return None
    workers, keep = entry
    if len(workers) != jobs or not all(w.alive() for w in workers):
        _end(workers, keep)
        return None
    workers[0].lifeline = keep  # closed by close_all, once the workers are done
    return workers


def discard() -> None:
    """End prefork's workers if nothing took them."""
    entry = _FORKED.pop(os.getpid(), None)
    if entry is not None:
        _end(*entry)


def _end(workers: list, keep: int) -> None:
    for worker in workers:
        worker.terminate()
    close_all(workers)
    os.close(keep)


def start(jobs: int, context: Any, job: tuple) -> list:
    """``jobs`` workers started by multiprocessing ``context`` (fork server or spawn);
    ``job`` as for prefork, functions a worker can import."""
    workers: list = []
    try:
        if context.get_start_method() == "forkserver":
            _start_server(context)
        _start_each(jobs, context, job, workers)
    except OSError as exc:
        # Out of descriptors part way (red team 142: a bare OSError out of
        # Sandbox.batch): the workers started end with their pipes, and the error is
        # the host's resource, as the command line reports it.
        close_all(workers)
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise errors.ResourceExhausted(
                f"out of file descriptors starting {jobs} batch workers "
                f"({exc.strerror}): each takes four",
                hint="raise the open-files limit (ulimit -n), or ask for fewer jobs",
            ) from None
        raise
    return workers


def _start_each(jobs: int, context: Any, job: tuple, workers: list) -> None:
    """start's workers, each put in ``workers`` once started."""
    from .importpath import clean

    for _ in range(jobs):
        _room_to_start()
        task_r, task_w = context.Pipe(duplex=False)
        reply_r, reply_w = context.Pipe(duplex=False)
        if sys.platform.startswith("linux"):
            _roomy(task_w.fileno(), reply_w.fileno())
        process = context.Process(
            target=_spawned_main, args=(task_r, reply_w, job), name="wasmsbx-batch", daemon=True
        )
        # multiprocessing gives the worker this process's sys.path as it starts it:
        # without the folders a guest may write (red team round 38: a guest's difflib.py
        # and queue.py ran in both workers); as it is when none is (round 39)
        path = sys.path[:]
        sys.path[:] = clean(path)
        try:
            process.start()
        finally:
            sys.path[:] = path
        task_r.close()
        reply_w.close()
        workers.append(Worker(task_w, reply_r, process=process))


# Descriptors a worker's start takes at its peak: its two pipes, and the fork server's
# socket and two pipes of its own (multiprocessing.forkserver.connect_to_new_process).
_START_PEAK = 9


def _room_to_start() -> None:
    """OSError EMFILE unless a worker's start has the descriptors it takes: run out of
    them part way, the fork server's request was cut short, and the server printed an
    EOFError traceback and ended (Python's, not ours; red team 145)."""
    from .. import fdroom

    free = fdroom.free_now()
    if 0 <= free < _START_PEAK:
        raise OSError(errno.EMFILE, "Too many open files")


def _start_server(context: Any) -> None:
    """Start multiprocessing's fork server (and its resource tracker) with ``''`` and the
    working folder off the path it is given, and PYTHONSAFEPATH set for its own ``-c``:
    both start as ``python -c ...`` in this process's working folder with its
    ``sys.path``, where ``''`` (``python -c``, a REPL, Jupyter) would let a module planted
    there (by a guest granted the folder) run in them as the user (red team round 34).
    PYTHONSAFEPATH is Python 3.11's: before, their own start-up imports still search the
    working folder (README "Limits from Python")."""
    from multiprocessing import forkserver

    from ..backends.compiling import safe_path
    from .importpath import clean_environ

    path, safe = sys.path[:], os.environ.get("PYTHONSAFEPATH")
    sys.path[:] = safe_path()
    os.environ["PYTHONSAFEPATH"] = "1"
    pythonpath = clean_environ(os.environ)
    try:
        forkserver.ensure_running()
    finally:
        sys.path[:] = path
        for name, old in (("PYTHONSAFEPATH", safe), ("PYTHONPATH", pythonpath)):
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


# ---------------------------------------------------------------------------- worker side


def _forked_main(task_fd: int, reply_fd: int, lifeline: int, job: tuple) -> None:
    from multiprocessing.connection import Connection

    _quiet_signals()
    _exit_with(lambda: os.read(lifeline, 1))
    tasks = Connection(task_fd, writable=False)
    code = _serve(tasks, Connection(reply_fd, readable=False), job)
    flush_hits()  # (os._exit skips atexit)
    os._exit(code)


def _spawned_main(tasks: Any, replies: Any, job: tuple) -> None:
    import multiprocessing

    _quiet_signals()
    parent = multiprocessing.parent_process()
    if parent is not None:
        _exit_with(parent.join)
    code = _serve(tasks, replies, job)
    flush_hits()  # (os._exit skips atexit)
    os._exit(code)


def _quiet_signals() -> None:
    """Ctrl-C is the parent's to handle (it stops us); SIGTERM ends us; and a guest
    printing to an inherited stdout must not mix into the results."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.dup2(2, 1)


def _exit_with(wait_for_parent: Callable) -> None:
    """Exit when the parent is gone: ``wait_for_parent`` returns when a pipe only the
    parent holds reaches EOF, however it died (by SIGKILL too). A thread blocked in that
    wait costs no CPU."""
    import _thread

    def watch() -> None:
        try:
            wait_for_parent()
        finally:
            os._exit(1)

    from ..backends.deadline import quiet_threads

    with quiet_threads():
        _thread.start_new_thread(watch, ())


def _serve(tasks: Any, replies: Any, job: tuple) -> int:
    """The worker's loop: the spec, then one reply per chunk, until the task pipe ends."""
    import _thread
    import queue

    inbox: Any = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                try:
                    inbox.put(tasks.recv())
                except (EOFError, OSError):
                    raise
                except Exception as exc:  # noqa: BLE001 - a message it cannot read
                    # (the chunk gets an error reply; this thread dying instead left the
                    # parent waiting for that reply for ever: red team round 41)
                    inbox.put(_Unreadable(f"{type(exc).__name__}: {str(exc)[:200]}"))
        except (EOFError, OSError):
            inbox.put(None)

    from ..backends.deadline import quiet_threads

    with quiet_threads():
        _thread.start_new_thread(read, ())
    make_state, run_chunk, stopped = job
    spec = inbox.get()
    if spec is None:
        return 0
    from .importpath import seal  # (nothing more from the working folder or a grant)

    seal(getattr(getattr(spec, "policy", None), "grants", None) or ())
    _hard_stop_to(replies, stopped)
    state = make_state(spec)
    while True:
        message = inbox.get()
        if message is None:
            return 0
        if isinstance(message, _Unreadable):
            error = RuntimeError(f"batch worker: cannot read a chunk: {message.reason}")
            reply: Any = ("error", error)
        else:
            try:
                # (last, *body) for each reply: all but the last go as parts
                for last, *body in run_chunk(state, *message):
                    if not _deliver(replies, ("ok" if last else "part", *body)):
                        return 1  # the parent is gone
                continue
            except errors.WasmsbxError as exc:
                reply = ("error", exc)
            except Exception as exc:  # an internal error: reported by the parent
                reply = ("error", RuntimeError(f"batch worker: {type(exc).__name__}: {exc}"))
        if not _deliver(replies, reply):
            return 1  # the parent is gone


def _hard_stop_to(replies: Any, stopped: Callable) -> None:
    """A worker's hard stop: a call of this worker stuck past its deadline (a guest
    blocked in a host call: a pipe, a FIFO's open; a WASI sleep ends at the deadline by
    itself, backends/wasmtime/poll.py) ends the worker. It first sends
    ``stopped(error)``: the results of its chunk so far and that item's error, which the
    parent takes before it sends the rest to a new worker (Worker.resubmit), so the
    batch goes on; or, where that gives None (no chunk running, an interrupt), the error
    as the chunk's reply, which ends the whole run with it. Workers had a library's
    keeper, with no hard stop: such an item ran to its end, 100 s under a 1 s timeout
    (red team round 23). Set on the deadline keeper's thread; it runs there."""
    from ..backends.deadline import KEEPER

    def stop(error: Any) -> None:
        # The turn to send first, then what to send: a reply the main thread sends
        # meanwhile (a call that came back just now) cannot go out after ours, answering
        # items twice (red team round 45). If it cannot finish, the parent sees us gone.
        sending = _SENDING.acquire(timeout=STOP_SEND_WAIT)
        try:
            reply = stopped(error)
        except Exception:  # noqa: BLE001 - the error then ends the batch, as before
            reply = None
        if reply is STALE:  # that call came back: nothing to stop (the keeper goes on)
            if sending:
                _SENDING.release()
            return
        if sending:
            try:
                _send(replies, reply or ("error", error))
            except Exception:  # noqa: BLE001 - leaving anyway: the parent sees us gone
                pass
        flush_hits()
        os._exit(int(getattr(error, "exit_code", 1)))

    KEEPER.hard_stop = stop


STOP_SEND_WAIT = 5.0  # seconds a hard stop waits for a reply being sent to finish
STALE = "stale"  # what a job's ``stopped`` says when the late call is no longer running
_SENDING = _thread.allocate_lock()  # held while a reply is written (_deliver, the stop)


class _Unreadable:
    """A task message the worker could not unpickle, with why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _deliver(replies: Any, reply: tuple) -> bool:
    """Send a reply; False if the parent is gone."""
    try:
        with _SENDING:
            _send(replies, reply)
    except OSError:
        return False
    return True


def _send(replies: Any, reply: tuple) -> None:
    """Send a reply; an error goes as its description (see ``describe``)."""
    import pickle

    if reply[0] == "error":
        reply = ("error", describe(reply[1]))
    try:
        data = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - whatever pickling raises
        data = pickle.dumps(("error", describe(RuntimeError(f"batch worker: {exc!r}"))))
    replies.send_bytes(data)
