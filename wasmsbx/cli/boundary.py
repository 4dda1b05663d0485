"""The one error boundary of the command line: an expected failure becomes one ``error:``
line (and a ``hint:``) and its exit code from the table; a bug becomes "internal error"
(a traceback only with WASMSBX_DEBUG=1)."""

from __future__ import annotations

import errno
import functools
import os
from typing import Any, Callable

from ..errors import ExitCode, WasmsbxError

REPORTED = [False]  # report() ran in this process (run_app: was an interrupt reported?)


def _json_stream(json_mode: Any) -> Any:
    """Where the error object goes: stdout, or stderr (``json_flag``: "stderr")."""
    import sys

    return sys.stderr if json_mode == "stderr" else None


def report(exc: BaseException, json_mode: Any = False) -> int:
    """Print an expected failure as one line (plus hint); return its exit code."""
    from . import output

    REPORTED[0] = True

    if isinstance(exc, WasmsbxError):
        if json_mode:  # exit_source: the code is wasmsbx's, not a guest's status
            data = {"error": exc.to_dict(), "exit_source": "wasmsbx"}
            if exc.stdout is not None or exc.stderr is not None:  # (what the guest wrote)
                from ..runner.captured import as_json

                data["stdout"], data["stderr"] = as_json(exc.stdout), as_json(exc.stderr)
            output.emit_json(data, _json_stream(json_mode))
        output.error(exc.message, exc.hint)
        for frame in getattr(exc, "backtrace", [])[:12]:
            output.err(f"  at {output.line(frame)}")
        return int(exc.exit_code)
    if isinstance(exc, MemoryError):  # Python itself could not allocate: the host ran out
        from ..errors import ResourceExhausted

        return report(
            ResourceExhausted(
                "out of memory: the process could not allocate what it needed",
                hint="close sandboxes you no longer use, or give the process more memory",
            ),
            json_mode,
        )
    if isinstance(exc, OSError):  # stdout full or gone (a table or an echo to /dev/full)
        code = output.stdout_error(exc)
        if code is not None:
            return code
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # (not a bug: a host's limit)
            from ..errors import ResourceExhausted

            return report(
                ResourceExhausted(
                    f"out of file descriptors ({exc.strerror}): the process reached its "
                    f"open-files limit{_open_files_limit()}",
                    hint="raise it (ulimit -n), or ask for less at once (fewer --jobs)",
                ),
                json_mode,
            )
    if isinstance(exc, KeyboardInterrupt):
        from ..backends.deadline import KEEPER

        KEEPER.settle()  # handled here: the keeper's hard stop is not needed
        if json_mode:  # (as the hard stop writes it: --json always gets its error object)
            from ..errors import Interrupted

            output.emit_json(
                {"error": Interrupted("interrupted").to_dict(), "exit_source": "wasmsbx"},
                _json_stream(json_mode),
            )
        output.error("interrupted")
        return int(ExitCode.INTERRUPTED)
    if os.environ.get("WASMSBX_DEBUG"):
        raise exc
    output.error(
        f"internal error: {type(exc).__name__}: {exc}",
        "this is a bug in wasmsbx; rerun with WASMSBX_DEBUG=1 for a traceback",
    )
    return int(ExitCode.INTERNAL)


def _open_files_limit() -> str:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - POSIX has it
        return ""
    return "" if soft == getattr(resource, "RLIM_INFINITY", -1) else f" ({soft})"


def interrupted_before(argv: list) -> int:
    """Ctrl-C before a command's own boundary could report it (while importing, parsing,
    dispatching): the error line, and the machine format the command would have given
    (``--json``'s error object; ``audit --sarif``'s failed log, on stdout, since its
    ``--output`` was not checked yet)."""
    from .options import json_flag, own_words

    interrupt = KeyboardInterrupt()
    if argv[:1] == ["audit"] and "--sarif" in own_words(argv):
        import json
        import sys

        from ..audit.formats import sarif_failure_of

        try:
            sys.stdout.write(json.dumps(sarif_failure_of(interrupt), indent=2) + "\n")
        except (OSError, KeyboardInterrupt):
            pass
    return report(interrupt, json_flag(argv))


def boundary(func: Callable) -> Callable:
    """Turn expected failures into one line and an exit code; ints returned are exit codes."""
    import typer  # only typer commands are wrapped; the lean run path never loads it

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = func(*args, **kwargs)
        except typer.Exit:
            raise
        except (Exception, KeyboardInterrupt) as exc:
            code = report(exc, json_mode=bool(kwargs.get("json_output")))
        if code:
            raise typer.Exit(int(code))

    return wrapper
