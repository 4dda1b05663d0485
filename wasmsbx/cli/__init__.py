"""The ``wasmsbx`` command line: entry point and error boundary.

``wasmsbx run ...`` is dispatched straight to the lean run path (see options.py), and a
plain ``wasmsbx compile ...`` to its own (commands/compile.py ``lean_args``); every
other command, and their ``--help``, goes through the typer app.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

from .. import fdroom
from ..errors import ExitCode, WasmsbxError
from ..native import flush_hits


def _lean_run(argv: list) -> bool:
    if not argv or argv[0] != "run" or "_WASMSBX_COMPLETE" in os.environ:
        return False
    from .options import own_words

    head = own_words(argv)
    return "--help" not in head and "-h" not in head


def _lean_compile(argv: list) -> Optional[dict]:
    """run_compile's keywords for a plain ``compile`` command line, else None (typer)."""
    if not argv or argv[0] != "compile" or "_WASMSBX_COMPLETE" in os.environ:
        return None
    from .options import own_words

    head = own_words(argv)
    if "--help" in head or "-h" in head:
        return None
    from .commands.compile import lean_args

    return lean_args(argv[1:])


def _fill_closed_stdio() -> None:
    """Put /dev/null on a closed fd 0, 1 or 2 (``>&-``).

    Otherwise the next file opened takes that number (a module, a cache entry being
    written) and output meant for stdout lands in it; and Python's ``sys.stdout`` is
    None, which crashed the first print. Writes to a closed stdout are discarded."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            pass
        else:
            if fd and mode & 0o170000 == 0o100000:  # (S_ISREG: a shell's `>` or `>>`)
                _refuse_astray(fd, name)
            continue
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115


def _refuse_astray(fd: int, name: str) -> None:
    """stdout or stderr redirected into the trust folder or a wasmsbx cache (``run guest
    >> ~/.config/wasmsbx/trust/trusted_keys``): refused as ``-o`` there is, exit 105,
    before anything is written (red team 137: a guest's line made its author a trusted
    signer). Into stderr nothing can be said: it is put on /dev/null first."""
    from ..outfile import refuse_opened_astray_file

    try:
        refuse_opened_astray_file(fd, name)
    except WasmsbxError:
        if fd == 2:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        raise


# Commands whose guests the deadline keeper guards with signals and a hard stop.
GUARDED = ("run", "bench", "compile", "audit")  # (audit compiles a component to read it)


def _hard_stop(error: WasmsbxError) -> None:
    """Called by the deadline keeper's thread when the main thread is stuck in a runtime
    call past its deadline (a guest blocked in a host call, a compile) or ignores Ctrl-C:
    flush what was written, print the error, leave with its exit code."""
    from ..backends.deadline import AT_HARD_STOP

    def last_words() -> None:
        for hook in AT_HARD_STOP:
            try:
                hook(error)
            except Exception:  # noqa: BLE001 - leaving anyway; the error line still goes out
                pass
        _flush_all()
        flush_hits()  # (the run's cache hit, kept in memory; never raises)

    _bounded(last_words)  # a stdout pipe nobody reads must not keep the process alive
    from .output import line, mid_line

    lines = f"{mid_line()}error: {line(error.message)}\n" + (
        f"hint: {line(error.hint)}\n" if error.hint else ""
    )
    report = None
    from .options import json_flag

    json_mode = json_flag(sys.argv[1:])
    if json_mode:
        import json

        # (as the boundary writes it: a timeout reads the same whether an epoch or this
        # hard stop ended the guest)
        report = json.dumps({"error": error.to_dict(), "exit_source": "wasmsbx"}, indent=2)
        report += "\n"

    def error_lines() -> None:
        if report is not None:  # (to stderr beside a batch's or a stream's data)
            _write(2 if json_mode == "stderr" else 1, report)
        _write(2, lines)

    # Written from a thread too, and waited for a bounded time: a stderr pipe nobody
    # reads (`2>&1 | consumer` with a guest flooding it) blocked this write, and with it
    # the timeout, until the reader went away (red team round 23: 30 s for a 2 s timeout).
    _bounded(error_lines)
    os._exit(int(error.exit_code))


def _bounded(work: Any) -> None:
    """``work()`` for at most half a second: in a thread, or, when no thread can start
    (a guest that filled the address space: red team round 28), here, with SIGALRM's
    default action (the process ends) as the bound if it blocks."""
    import threading

    try:
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
    except RuntimeError:
        import signal

        try:
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        except (ValueError, OSError, AttributeError):  # (not the main thread: no handler)
            pass
        work()
        return
    worker.join(0.5)


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _write(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    except OSError:
        pass


def _guard(argv: list) -> None:
    """Ctrl-C/SIGTERM and deadlines that hold even when a runtime call blocks (deadline.py)."""
    if argv and argv[0] in GUARDED:
        from ..backends.deadline import KEEPER

        try:
            KEEPER.install_cli(_hard_stop)
        except RuntimeError as exc:  # (no thread can start: nothing could be bounded)
            from ..errors import ResourceExhausted

            raise ResourceExhausted(
                f"cannot start the deadline thread ({exc})",
                hint="the process is out of threads or memory maps; raise the limits "
                "(ulimit -u, ulimit -v, vm.max_map_count)",
            ) from None
        # One guest, then the process ends: only then may code without epoch checks run
        # (native.artifact.epochless; run's batch and stream modes take it back).
        KEEPER.sole_run = argv[0] == "run"


def main(argv: Optional[list] = None, *, guard: bool = False) -> int:
    """Run one command and return its exit code (``guard``: the console script's
    Ctrl-C/deadline keeper, installed by ``entry``)."""
    try:
        _fill_closed_stdio()  # first: the keeper's pipe must not take a closed fd 1 (>&-)
        fdroom.keep()  # (room to report in, should a guest take every descriptor)
        limit, open_now = fdroom.too_low()
        if limit:
            raise _too_few_files(limit, open_now)
        argv = list(sys.argv[1:] if argv is None else argv)
        if guard:
            _lenient_text_streams()
            _warnings_as_lines()
            _guard(argv)
        lean = _lean_compile(argv)
        if _lean_run(argv):
            from .commands.run import run_main

            code = run_main(argv[1:])
        elif lean is not None:
            from .commands.compile import lean_main

            code = lean_main(lean)
        else:
            from .app import run_app

            code = run_app(argv)
        flush_hits()  # (cache hits kept in memory: entry leaves with os._exit, not atexit)
        code = _stdout_written(code)
    except KeyboardInterrupt:  # before a command's own boundary (while importing)
        fdroom.release()
        from .boundary import interrupted_before

        code = interrupted_before(argv if isinstance(argv, list) else [])
    except WasmsbxError as exc:  # (no thread for the keeper)
        fdroom.release()
        from .boundary import report

        code = report(exc)
    except OSError as exc:  # (typer's own output: `--version > /dev/full`)
        fdroom.release()
        from .boundary import report

        code = report(exc)
    finally:
        _end_sole_run()
    return code


def _too_few_files(limit: int, open_now: int) -> WasmsbxError:
    from ..errors import ResourceExhausted

    return ResourceExhausted(
        f"only {max(0, limit - open_now)} file descriptors are free (the open-files limit "
        f"is {limit}, {open_now} are open): wasmsbx needs at least {fdroom.NEEDED} "
        "(wasmtime, pipes, the command's own files)",
        hint=f"raise the limit: ulimit -n {fdroom.NEEDED * 64}",
    )


def _warnings_as_lines() -> None:
    """Python warnings (wasmsbx's own ``RuntimeWarning``s, a library's) print as the
    command line's other warnings do, ``warning: MESSAGE``, one line: not Python's
    ``file:line: Category: message`` and the source line under it (red team 106). Only
    for the console script: a Python caller's warnings are its own."""
    import warnings

    def show(message: Any, category: Any, *_: Any, **__: Any) -> None:
        from . import output

        output.warning(str(message))

    warnings.showwarning = show


def _lenient_text_streams() -> None:
    """A terminal or variable that asks for an encoding short of the text (an export
    named "héllo" under PYTHONIOENCODING=ascii or LANG=C on an old Python) gets it
    escaped (``\\xe9``) instead of a UnicodeEncodeError out of a report half written
    (exit 100). Only for the console script: a Python caller's streams are its own."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict":
            encoding = (getattr(stream, "encoding", "") or "").lower().replace("-", "")
            if encoding != "utf8":
                try:
                    stream.reconfigure(errors="backslashreplace")
                except (AttributeError, ValueError, OSError):
                    pass


def _stdout_written(code: int) -> int:
    """Flush stdout; a command whose results could not be written (a full disk,
    /dev/full) ends with exit 105 instead of success. A closed pipe (``| head``) is not
    an error of ours: the code stays."""
    from . import output

    output.flush_stdout()
    base = sys.modules.get("wasmsbx.backends.base")  # (a guest's writes to stdout that failed)
    lost = getattr(base, "STDOUT_LOST", None)
    if lost and not output.STDOUT_FAILED:
        output.STDOUT_FAILED.append(lost[0])
    if output.STDOUT_FAILED and code == 0:
        return output.stdout_failure(output.STDOUT_FAILED[0])
    return code


def _end_sole_run() -> None:
    """The run is over: a caller that goes on (``main`` called from Python) gets no more
    leave to load code without epoch checks."""
    # (getattr: another thread may be importing it still, as native.flush_hits says)
    keeper = getattr(sys.modules.get("wasmsbx.backends.deadline"), "KEEPER", None)
    if keeper is not None:
        keeper.sole_run = False


def entry() -> None:
    """The console script and ``python -m wasmsbx``: run, flush, and leave at once.

    Leaving with ``os._exit`` skips interpreter teardown, which is both time saved on
    every command and a workaround: wasmtime-py 50's tokio worker threads abort with
    "panic in a function that cannot unwind" when the interpreter shuts down after a
    WASI guest wrote through Python output callbacks. Everything wasmsbx writes is
    flushed or closed before this point.
    """
    code = main(guard=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass
    # The kernel keeps status & 0xFF: never let a failure wrap to 0 (or raise here).
    os._exit(code if isinstance(code, int) and 0 <= code <= 255 else ExitCode.INTERNAL)
