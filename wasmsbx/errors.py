"""One error hierarchy and one exit-code table for the whole tool.

Every expected failure is a :class:`WasmsbxError`: a one-line message, an optional
hint, structured context for ``--json``, and the exit code the CLI returns. The CLI
error boundary prints ``error: <message>`` and ``hint: <hint>`` and exits; only a
bug (any other exception) prints a traceback, and only with ``WASMSBX_DEBUG=1``.
"""

from __future__ import annotations

from typing import Any, Optional


class ExitCode:
    """The documented exit codes (README, "Exit codes").

    A WASI command's own exit code is passed through unchanged, so wasmsbx's own
    failures live at 100 and above, where guests rarely exit. Plain ints on a plain
    class, not an IntEnum: building an enum class costs more start-up time than the
    rest of this module.
    """

    OK = 0
    USAGE = 2
    INTERNAL = 100
    POLICY = 101
    MODULE = 102
    TRAP = 103
    BACKEND_UNAVAILABLE = 104
    IO = 105
    LIMIT_MEMORY = 110
    LIMIT_FUEL = 111
    LIMIT_TIMEOUT = 112
    LIMIT_STACK = 113
    LIMIT_TABLE = 114
    LIMIT_OUTPUT = 115
    LIMIT_INSTANCES = 116
    LIMIT_COMPILE = 117
    RESOURCES = 118  # the host ran out of memory or address space (not a policy limit)
    REGRESSION = 120
    AUDIT_FINDINGS = 121
    BATCH_FAILURES = 122
    CLUSTER = 123
    GUEST_STATUS_OUT_OF_RANGE = 126  # a WASI command's status outside 0..125 (see below)
    INTERRUPTED = 130

    # A WASI command's own status is passed through when it is 0..125. Anything else
    # (WASI's status is a u32: 126..2^32-1, which is also every negative i32) cannot be
    # an exit code as is: the shell keeps 126/127 and 128+N for signals, and status & 0xFF
    # turns 256 into 0, a failure into a success. Those all become 126.
    GUEST_STATUS_MAX = 125


#: A few words for each code: ``wasmsbx --help`` is built from this, and a test checks
#: that the README's exit-code table lists exactly these codes.
EXIT_WORDS = {
    ExitCode.OK: "ok",
    ExitCode.USAGE: "usage",
    ExitCode.INTERNAL: "internal",
    ExitCode.POLICY: "policy",
    ExitCode.MODULE: "module",
    ExitCode.TRAP: "trap",
    ExitCode.BACKEND_UNAVAILABLE: "no backend",
    ExitCode.IO: "i/o",
    ExitCode.LIMIT_MEMORY: "memory",
    ExitCode.LIMIT_FUEL: "fuel",
    ExitCode.LIMIT_TIMEOUT: "timeout",
    ExitCode.LIMIT_STACK: "stack",
    ExitCode.LIMIT_TABLE: "table",
    ExitCode.LIMIT_OUTPUT: "output",
    ExitCode.LIMIT_INSTANCES: "instances",
    ExitCode.LIMIT_COMPILE: "compile",
    ExitCode.RESOURCES: "out of host memory",
    ExitCode.REGRESSION: "regression",
    ExitCode.AUDIT_FINDINGS: "audit findings",
    ExitCode.BATCH_FAILURES: "batch failures",
    ExitCode.CLUSTER: "cluster unavailable",
    ExitCode.GUEST_STATUS_OUT_OF_RANGE: "guest status outside 0-125",
    ExitCode.INTERRUPTED: "interrupted",
}


def guest_exit_code(status: int) -> int:
    """The exit code wasmsbx returns for a WASI command's status (README, Exit codes)."""
    status &= 0xFFFFFFFF
    if status <= ExitCode.GUEST_STATUS_MAX:
        return status
    return ExitCode.GUEST_STATUS_OUT_OF_RANGE


#: How many characters of a module-controlled name a message shows (``inert``): an
#: export name of a megabyte made a one-megabyte hint line (red team, round 52).
NAME_SHOWN = 200


CLOSEST_NAMES = 256  # names compared at most for a "did you mean"
CLOSEST_LENGTH = 64  # characters of each compared


def closest(word: str, names: Any) -> Optional[str]:
    """The name of ``names`` closest to ``word`` (difflib's ratio, 0.6 at least), for a
    "did you mean": None if none is. Bounded whatever a module exports: only names
    within a few characters of its length count, at most CLOSEST_NAMES of them, each
    cut to CLOSEST_LENGTH (difflib over 100,000 exported names of 100 characters took
    85 s, outside every limit: red team 148)."""
    import difflib

    if not isinstance(word, str):
        return None
    size = len(word)
    near: dict = {}
    for name in names:
        if isinstance(name, str) and abs(len(name) - size) <= 3:
            near.setdefault(name[:CLOSEST_LENGTH], name)
            if len(near) >= CLOSEST_NAMES:
                break
    found = difflib.get_close_matches(word[:CLOSEST_LENGTH], list(near), n=1)
    return near[found[0]] if found else None


def quoted(name: str, limit: int = NAME_SHOWN) -> str:
    """A name the caller gave, quoted as ``repr`` quotes it (escapes and all), cut past
    ``limit`` characters with the length said: an export name of 100,000 characters
    asked for made an error of 100,000 (red team round 79)."""
    if len(name) <= limit:
        return repr(name)
    return f"{name[:limit]!r}... ({len(name):,} characters)"


def inert(text: Any, limit: Optional[int] = NAME_SHOWN) -> str:
    """Text from outside (a module's export, import or function names, a file name, a
    guest's message) made safe to print: each non-printable character escaped as Python
    writes it (``\\x1b``, ``\\n``, ``\\u202e``), so an ESC or OSC sequence cannot drive
    the terminal and a CR/LF cannot forge an ``error:`` line; past ``limit`` characters
    (None: no cap) the rest is dropped and the length said."""
    text = str(text)
    cut = ""
    if limit is not None and len(text) > limit:
        cut = f"... ({len(text):,} characters)"
        text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text + cut


def as_bytes(text: Any) -> str:
    """``text`` shown as the bytes it came from: a name Python decoded with
    surrogateescape (a command line's, a file name's bytes that are not UTF-8) shows
    ``\\xff``, not ``\\udcff``; a lone surrogate from Python code as it is."""
    try:
        return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return str(text)


def raised_text(exc: BaseException) -> str:
    """``Type: message`` of an exception a host function raised, for a trap's message.
    Its ``__str__`` is the host code's and may itself raise: that error escaped raw
    instead of the TrapError with the exception as its cause (red team round 83), so
    then its type alone (Ctrl-C and SystemExit go on, as they do from a host function)."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - whatever it raised, the type is known
        return f"{name} (its message could not be read)"
    if len(text) > RAISED_MAX:  # (nested host calls each quoted the one inside: 3 KB)
        text = text[:RAISED_MAX] + f"... ({len(text) - RAISED_MAX:,} characters more)"
    return f"{name}: {text}"


RAISED_MAX = 500  # characters of a host function's exception quoted in a trap's message


class WasmsbxError(Exception):
    """Base of every expected failure."""

    exit_code: int = ExitCode.INTERNAL
    kind: str = "error"
    # What the guest wrote before the failure, when its output was captured
    # (``run_command(capture=True)``, ``--json``): else lost with the instance.
    stdout: Optional[bytes] = None
    stderr: Optional[bytes] = None

    def __init__(self, message: str, *, hint: Optional[str] = None, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.context = context

    def to_dict(self) -> dict:
        data = {"kind": self.kind, "message": self.message, "exit_code": int(self.exit_code)}
        if self.hint:
            data["hint"] = self.hint
        if self.context:
            data["context"] = {k: v for k, v in self.context.items() if v is not None}
        return data


class UsageError(WasmsbxError):
    """Wrong arguments: unknown function, bad value, wrong count."""

    exit_code = ExitCode.USAGE
    kind = "usage"


class InputError(WasmsbxError):
    """A file the user named is missing or unreadable."""

    exit_code = ExitCode.IO
    kind = "io"


class PolicyError(WasmsbxError):
    """A malformed or impossible policy."""

    exit_code = ExitCode.POLICY
    kind = "policy"


class ModuleError(WasmsbxError):
    """An invalid module, or one that cannot be linked under the policy."""

    exit_code = ExitCode.MODULE
    kind = "module"


class LinkError(ModuleError):
    kind = "unlinkable"


class TrapError(WasmsbxError):
    """The guest trapped (unreachable, divide by zero, out of bounds...)."""

    exit_code = ExitCode.TRAP
    kind = "trap"

    def __init__(self, message: str, *, backtrace: Optional[list] = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.backtrace = list(backtrace or [])

    @property
    def trap_code(self) -> Optional[str]:
        """The runtime's trap code (e.g. "integer_division_by_zero", "unreachable_code_reached",
        "host" for an exception in a host function), when the runtime reports one."""
        return self.context.get("trap_code")

    def to_dict(self) -> dict:
        data = super().to_dict()
        if self.backtrace:
            data["backtrace"] = self.backtrace
        return data


class LimitExceeded(TrapError):
    """A policy limit stopped the guest. ``limit`` names which one."""

    limit = "limit"
    kind = "limit"

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["limit"] = self.limit
        return data


class MemoryLimitExceeded(LimitExceeded):
    exit_code = ExitCode.LIMIT_MEMORY
    limit = "memory"


class FuelExhausted(LimitExceeded):
    exit_code = ExitCode.LIMIT_FUEL
    limit = "fuel"


class TimeoutExceeded(LimitExceeded):
    exit_code = ExitCode.LIMIT_TIMEOUT
    limit = "timeout"


class StackExhausted(LimitExceeded):
    exit_code = ExitCode.LIMIT_STACK
    limit = "stack"


class TableLimitExceeded(LimitExceeded):
    exit_code = ExitCode.LIMIT_TABLE
    limit = "table_elements"


class OutputLimitExceeded(LimitExceeded):
    exit_code = ExitCode.LIMIT_OUTPUT
    limit = "output"


class InstanceLimitExceeded(LimitExceeded):
    exit_code = ExitCode.LIMIT_INSTANCES
    limit = "instances"


class CompileLimitExceeded(LimitExceeded):
    """The module is larger than limits.module_size, or compiling it took longer than
    limits.compile_timeout (or than the run's timeout, which covers compiling)."""

    exit_code = ExitCode.LIMIT_COMPILE
    limit = "compile"


class ResourceExhausted(WasmsbxError):
    """The host, not the policy, ran out: memory or address space for a store, an
    instance or a linear memory (too many live sandboxes for this process or machine:
    README "Density"). No guest did anything wrong; close sandboxes, or raise the
    system's limits (``ulimit -v``, ``vm.max_map_count``)."""

    exit_code = ExitCode.RESOURCES
    kind = "resources"


def is_exhaustion(text: str) -> bool:
    """Whether a runtime's error message says the host ran out of memory or address
    space (wasmtime: "mmap failed to reserve ...", "Cannot allocate memory (os error 12)")."""
    lowered = text.lower()
    return any(
        marker in lowered
        for marker in (
            "os error 12",
            "cannot allocate memory",
            "mmap failed",
            "failed to reserve",
            "out of memory",
            "failed to allocate",
            # (file descriptors: a memory's memfd, a pipe; red team 142)
            "cannot create a memfd",
            "os error 24",
            "os error 23",
            "too many open files",
        )
    )


class BackendUnavailable(WasmsbxError):
    """No backend can run this module under this policy, or the named one is missing."""

    exit_code = ExitCode.BACKEND_UNAVAILABLE
    kind = "backend"


class ClusterError(WasmsbxError):
    """A ``--cluster`` batch could not run: no Dask here, the scheduler is unreachable or
    went away, or a chunk lost too many workers."""

    exit_code = ExitCode.CLUSTER
    kind = "cluster"


class Interrupted(WasmsbxError):
    exit_code = ExitCode.INTERRUPTED
    kind = "interrupted"


def real_path(path: Any) -> str:
    """``os.path.realpath(path)``, or an InputError (exit 105) if a link on its way
    changes as it is read: Python's non-strict realpath raises then (``readlink`` of
    what ``lstat`` had just found a link), which was an internal error (exit 100).
    For checks that must not go on without the real path; ``native.trustdir.resolved``
    falls back to the absolute path where that is enough."""
    import os

    try:
        return os.path.realpath(path)
    except OSError as exc:
        shown = inert(os.fspath(path))
        raise InputError(
            f"{shown}: changed while it was read ({exc.strerror or exc})",
            hint="a link on its way was replaced as wasmsbx resolved it; run the command again",
            path=os.fspath(path),
        ) from None
