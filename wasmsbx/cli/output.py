"""All terminal output in one place.

Results go to stdout, diagnostics to stderr. The plain functions here need no rich, so
the hot path of ``wasmsbx run`` stays lean; ``console()`` builds a rich console only for
commands that draw tables. rich honours NO_COLOR and drops colour when not on a TTY.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, Optional

# The first failure to write stdout that is not a closed pipe (a full disk, /dev/full,
# EIO): the command then ends with exit 105 if it would have succeeded (see cli.main).
STDOUT_FAILED: list = []


def out(text: str) -> None:
    try:
        write_stdout(text + "\n")
    except (OSError, ValueError) as exc:
        stdout_failed(exc)


WHOLE = 8192  # characters: longer texts go to fd 1 by write_stdout's own loop


def write_stdout(text: str) -> None:
    """``text`` on stdout, every byte or an OSError. CPython's buffered writer takes a
    short write of a large text (a file size limit, a file system filling up) for the
    whole and drops the rest without an error: a 338 KB report was cut to 1 KB, exit 0
    (red team round 69). A long text is written to fd 1 here, in a loop, after what is
    buffered; a stream without a descriptor (``io.StringIO``) gets it as it is."""
    stream = sys.stdout
    if text.endswith("\n"):
        ended_line(1)
    if len(text) <= WHOLE:
        stream.write(text)
        return
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        stream.write(text)
        return
    stream.flush()
    encoding = getattr(stream, "encoding", None) or "utf-8"
    data = memoryview(text.encode(encoding, getattr(stream, "errors", None) or "strict"))
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:  # a non-blocking pipe, full: wait for its reader, as a
            import select  # blocking write would (it failed, red team round 70)

            select.select([], [fd], [])


def stdout_failed(exc: BaseException) -> None:
    """Writing stdout failed: later writes go nowhere; a closed pipe (``| head``) is not
    an error of ours, anything else is remembered for the exit code."""
    if not isinstance(exc, BrokenPipeError) and not STDOUT_FAILED:
        STDOUT_FAILED.append(exc)
    _to_null(1)


def stdout_error(exc: BaseException) -> Optional[int]:
    """The exit code for ``exc`` if it is stdout failing (a command's own print, rich's,
    typer's echo), else None: 105 with one error line, or 0 for a reader that went away
    (``| head``). Told by asking fd 1 again: an empty write fails on ``/dev/full``, and
    a full file system has no block left; a file of the command's own that failed is
    neither."""
    if not isinstance(exc, OSError):
        return None
    if not isinstance(exc, BrokenPipeError):
        try:
            os.write(1, b"")
            full = exc.errno == errno.ENOSPC and not os.fstatvfs(1).f_bavail
            if not full and not (exc.errno == errno.EFBIG and _at_size_limit(1)):
                return None
        except OSError:
            pass
    stdout_failed(exc)
    return stdout_failure(exc) if STDOUT_FAILED else 0


def _at_size_limit(fd: int) -> bool:
    """Whether ``fd`` is a file as large as this process may write (``ulimit -f``): an
    EFBIG was then its (it was an internal error, exit 100: red team round 69)."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return limit != resource.RLIM_INFINITY and os.fstat(fd).st_size >= limit


def stdout_failure(exc: BaseException) -> int:
    """Say that stdout could not be written; its exit code (105, I/O)."""
    why = getattr(exc, "strerror", None) or str(exc)
    if getattr(exc, "errno", None) == errno.EFBIG:
        hint = "stdout is a file at this process's size limit (ulimit -f): raise it"
    else:
        hint = "free space, or redirect stdout"
    error(f"cannot write the results to stdout: {why}", hint)
    from ..errors import ExitCode

    return int(ExitCode.IO)


def flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError) as exc:
        stdout_failed(exc)


def err(text: str) -> None:
    """A line on stderr; dropped when stderr is a closed pipe (``2>&1 | head -1``), so
    the exit code stays the run's (the uncaught BrokenPipeError made it 1)."""
    try:
        sys.stderr.write(mid_line() + text + "\n")
    except (OSError, ValueError):
        _to_null(2)


def mid_line() -> str:
    """A newline if a guest's last write to our stderr, or to our stdout where that is
    the same file (a terminal, ``2>&1``), ended mid-line and nothing of ours has ended
    that line since (``ended_line``): the line about to be written then starts a line of
    its own (once). Else ""."""
    base = sys.modules.get("wasmsbx.backends.base")  # (not imported: no guest has run)
    if base is None or not base.LAST_WRITE[1]:
        return ""
    base.LAST_WRITE[1] = False
    return "\n" if _same_file(base.LAST_WRITE[0], 2) else ""


def ended_line(fd: int) -> None:
    """What wasmsbx wrote to ``fd`` ended a line (a result, a batch's rows): a guest's
    write to the same file before it no longer leaves that file mid-line (the next
    stderr line got a blank line before it: red team 122)."""
    base = sys.modules.get("wasmsbx.backends.base")
    if base is not None and base.LAST_WRITE[1] and _same_file(base.LAST_WRITE[0], fd):
        base.LAST_WRITE[1] = False


def stdout_moving() -> None:
    """Before fd 1 is pointed back at stdout (it pointed at stderr during a batch): a
    guest's mid-line write that reached stderr's file through fd 1 stays counted as
    stderr's."""
    base = sys.modules.get("wasmsbx.backends.base")
    if base is not None and base.LAST_WRITE[1] and _same_file(base.LAST_WRITE[0], 2):
        base.LAST_WRITE[0] = sys.stderr


def _same_file(stream: Any, fd: int) -> bool:
    """Whether ``stream`` (a guest's output stream of ours) writes where ``fd`` does."""
    try:  # (nothing flushed here: the guest's writes were, each as it came)
        mine = stream.fileno()
        if mine == fd:
            return True
        here, there = os.fstat(mine), os.fstat(fd)
    except (OSError, ValueError, AttributeError):
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _to_null(fd: int) -> None:
    """Put /dev/null on a descriptor whose reader has gone: later writes and the final
    flush succeed silently."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


def error(message: str, hint: Optional[str] = None) -> None:
    err(f"error: {line(message)}")
    if hint:
        err(f"hint: {line(hint)}")


def warning(message: str) -> None:
    err(f"warning: {line(message)}")


def line(text: str) -> str:
    """``text`` as one inert line: the last line of defence for what error, hint and
    warning lines quote (names are escaped where they are read too, and cut there). A
    module's names, a file's name, a runtime's message quoting them: a control character
    in any of them reached the terminal (an OSC title, a CR/LF and a forged ``error:``
    line: red team, round 52), so none but the newline ending the line gets there."""
    from ..errors import inert

    text = str(text)
    body = LINE_MAX - len("warning: ")  # (the whole line, label and all, is at most LINE_MAX)
    if len(text) <= body:
        shown = inert(text, None)
        if len(shown) <= body:
            return shown
    # Its middle goes (escapes can make it longer: cut again): the end of a message says
    # why (a path of 5,000 characters, then "File name too long", which was cut off).
    note = f"... ({len(text):,} characters) ..."
    tail = inert(text[-LINE_TAIL:], None)[-LINE_TAIL:]
    head = inert(text[:body], None)
    return head[: body - len(note) - len(tail)] + note + tail


# Characters of one diagnostic line: a message quoting 100,000 characters of an argument
# or a name (``trust remove``, an unknown export, a malformed --invoke) printed them all
# (red team round 69); what each message quotes is cut much shorter where it is made.
LINE_MAX = 4000
LINE_TAIL = 300  # characters kept from the end of a line cut


def markup(text: Any, limit: Optional[int] = None) -> str:
    """Text from outside (a module's names, a file's name, a message quoting them) for a
    rich table or line: its control characters escaped and cut past ``limit`` characters
    (errors.inert, as ``line``), and its markup inert (a module named ``[red]x`` prints as
    named; ``pip install 'wasmsbx[wasmer]'`` keeps its ``[wasmer]``)."""
    from rich.markup import escape

    from ..errors import inert

    return escape(inert(text, limit))


def emit_json(data: Any, stream=None) -> None:
    import json

    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    if stream is not None:
        stream.write(text)
        return
    try:
        write_stdout(text)
    except (OSError, ValueError) as exc:
        stdout_failed(exc)


def console(stderr: bool = False):
    """A rich Console for tables and progress (imported on first use)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None
    columns = _columns()
    if columns is None and not _isatty(stream):
        # In a pipe or a file, rich would assume 80 columns and wrap; a line as long as
        # its content is what grep and awk want (and tables wrap, never cut, where the
        # width is known: see overflow="fold" on their columns).
        width = 1000
    elif columns is None and os.environ.get("COLUMNS"):
        width = _terminal_width(stream)  # (rich would take COLUMNS=0 as it is)

    class Quiet(Console):
        def on_broken_pipe(self) -> None:
            """A reader that went away (``| head``): later writes go nowhere, and the
            command learns of it as of its own writes' (a BrokenPipeError: exit 0 at the
            command line's boundary, `watch` stops), not by rich's exit 1, which the
            README's exit codes do not have."""
            self.quiet = True
            _to_null(2 if stderr else 1)
            raise BrokenPipeError(errno.EPIPE, "the reader went away")

    return Quiet(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def _columns() -> Optional[int]:
    """COLUMNS, if it is a width: a positive number. Anything else counts as unset:
    rich drew at ``COLUMNS=0`` a width of nothing, so `audit` and `backends` printed
    nothing and exited 0 (red team, round 52)."""
    text = os.environ.get("COLUMNS", "")
    return int(text) if text.isdigit() and int(text) > 0 else None


def _terminal_width(stream: Any) -> int:
    """The terminal's own width (80 where it does not say)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def _isatty(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
