"""The MCP face of the service: tools with JSON schemas, typed results, actionable errors.

Imported only by ``wasmsbx mcp`` (the SDK is the optional extra ``wasmsbx[mcp]``).
Every expected failure becomes a tool error (``is_error``) whose text names what was
refused, the limit and its value, and what to do instead; the server keeps serving.
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Any, Optional, Union

from mcp.server.mcpserver import Context
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__, errors
from .service import Service, bounded, scrubbed

INSTRUCTIONS = (
    "wasmsbx runs untrusted code in WebAssembly sandboxes. run_python and run_javascript "
    "run code in interpreters compiled to WebAssembly (CPython 3.11, QuickJS): no network, "
    "no host files, bounded time, memory and output. Start a session (start_session) to keep "
    "Python globals and a private /scratch folder between calls. call_export and "
    "run_wasi_command run WebAssembly modules; audit_module reports what a module can do. "
    "The limits tool lists every limit; a call may tighten them, never loosen them."
)


class CallLimits(BaseModel):
    """Tighter limits for one call (each at most the server's; see the limits tool)."""

    # (an unknown key, a misspelt "timout", is refused: it was ignored and the call ran
    # under the server's limits; red team round 79)
    # (strict: true was taken for 1, a timeout of 1 s and fuel of 1; red team round 92)
    model_config = ConfigDict(extra="forbid", strict=True)

    timeout: Optional[Union[str, float]] = Field(None, description='e.g. "500ms", "2s", or seconds')
    memory: Optional[str] = Field(None, description='guest linear memory, e.g. "32MiB"')
    fuel: Optional[int] = Field(None, description="instructions (only if the server meters fuel)")
    output: Optional[str] = Field(None, description='stdout+stderr bytes, e.g. "64KiB"')


class Stats(BaseModel):
    fuel_used: Optional[int] = None
    memory_bytes: Optional[int] = Field(None, description="guest linear memory at the end")
    cpu_seconds: Optional[float] = Field(None, description="CPU time of the call")
    module_load: Optional[str] = Field(
        None, description="reused (compiled code kept by the worker) | cache hit | compiled"
    )


class CodeResult(BaseModel):
    """The outcome of code that ran: a non-zero exit_code means it raised (see stderr)."""

    exit_code: int
    guest_status: Optional[int] = Field(
        None,
        description="the status the code exited with, whole (a u32: -1 is 4294967295); "
        "exit_code is 126 for any past 125",
    )
    stdout: str
    stderr: str
    stdout_base64: Optional[str] = Field(None, description="set when stdout is not UTF-8")
    stderr_base64: Optional[str] = None
    session: Optional[str] = None
    kept: Optional[list[str]] = Field(None, description="globals the session keeps")
    not_kept: Optional[dict[str, str]] = Field(None, description="globals dropped, and why")
    session_cpu_seconds_left: Optional[float] = None
    stats: Stats


class TypedValue(BaseModel):
    type: str = Field(description="i32, i64, f32, f64, ... or a WIT type (components)")
    value: Any = Field(description="a number, or typed JSON for a WIT type")
    wave: Optional[str] = Field(None, description="the value in WAVE (components only)")


class ExportResult(BaseModel):
    function: str
    results: list[TypedValue]
    stdout: str
    stderr: str
    stdout_base64: Optional[str] = Field(None, description="set when stdout is not UTF-8")
    stderr_base64: Optional[str] = None
    stats: Stats


class SessionInfo(BaseModel):
    session: str = Field(description="pass this as `session` to run_python")
    scratch: str = Field(description="the session's private folder, as the guest sees it")
    calls: int
    cpu_seconds_used: float
    cpu_seconds_left: float
    scratch_bytes: int
    memory_budget: str
    idle_expiry_seconds: float


class Ended(BaseModel):
    session: str
    ended: bool


ModulePath = Annotated[
    Optional[str],
    Field(description="a .wasm/.wat file inside a directory the server allows (see limits)"),
]
ModuleB64 = Annotated[Optional[str], Field(description="the module's bytes, base64")]
Limits = Annotated[Optional[CallLimits], Field(description="tighter limits for this call")]

EXPORT_DESCRIPTION = (
    "the exported function; in a component a root export (greet) or one inside an "
    "interface (ns:pkg/iface#greet; the bare name if only one interface exports it)"
)
ARGS_DESCRIPTION = (
    "one JSON value per parameter. Core module: numbers or their text "
    '(5, -1.5, "0xff", "nan", "inf"). Component: typed JSON by the WIT type: '
    'string/char "text", integers and floats as numbers ("nan", "inf" as strings), '
    "list and tuple as arrays, record as an object keyed by field name, enum as the "
    'case name, flags as an array of names, option as null or the value (or {"some": v} / '
    '{"none": null}), result as {"ok": v} / {"err": e}, variant as {"case": payload}'
)
WAVE_DESCRIPTION = (
    "components only: each argument is a string of WAVE text, as `wasmtime run --invoke` "
    'and `wasmsbx run` take them: ["{x: 1, y: 2}", "some(5)", "ok(\\"y\\")", "[1, 2]"]'
)


# The runtime's hints speak to a person at a shell ("--timeout 30s"); a model calling a
# tool cannot raise a limit, so the hint says what it can do instead.
LIMIT_HINTS = {
    "timeout": "the code ran out of time: make it do less per call, or ask for no tighter "
    "limits.timeout than the server's (see the limits tool)",
    "fuel": "the code ran out of fuel (instructions): make it do less per call",
    "memory": "the code needed more memory than allowed: use less, or process in parts",
    "output": "the code wrote more than the output limit: print less (summarise, truncate)",
    "stack": "the call stack overflowed: look for unbounded recursion",
    "table_elements": "the module grew a table beyond the limit",
}


def tool_error(exc: errors.WasmsbxError) -> Exception:
    """One actionable message: what happened, which limit, and the hint."""
    from mcp.server.mcpserver.exceptions import ToolError

    text = f"{exc.kind}: {exc.message}"
    limit = getattr(exc, "limit", None)
    hint = exc.hint
    if isinstance(exc, errors.LimitExceeded) and limit and limit != "limit":
        text += f" [limit: {limit}]"
        if hint and ("--" in hint or "raise limits" in hint):  # the runtime's, for a shell
            hint = LIMIT_HINTS.get(limit, hint)
    if hint:
        text += f"\nhint: {hint}"
    frames = getattr(exc, "backtrace", None)
    if frames:
        text += "\nwasm backtrace: " + " <- ".join(frames[:6])
    # What the code printed before it failed (an assert's message, progress before a
    # timeout), as a result's stdout and stderr carry it: it was lost (round 155). As
    # JSON, one line each: printed as it came, the guest's stdout could forge a stderr
    # section of its own (red team 156); {"base64": ...} when it is not UTF-8.
    import json

    for name, written in zip(("stdout", "stderr"), getattr(exc, "guest_output", None) or ()):
        if written:
            text += f"\n{name} before the failure: {json.dumps(written)}"  # (ASCII: U+2028
            # began a line in a reader's eyes, red team 157)
    return ToolError(text)


# Each tool's argument names (a tool is named after its function): what a call may pass
ARGUMENTS: dict = {}


def guarded(func: Any) -> Any:
    """WasmsbxError -> ToolError; anything else is a bug, reported without internals."""
    import inspect

    ARGUMENTS[func.__name__] = tuple(
        name for name in inspect.signature(func).parameters if name != "ctx"
    )

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except errors.WasmsbxError as exc:
            raise tool_error(exc) from None

    return wrapper


def _code_result(data: dict) -> CodeResult:
    stats = data.get("stats") or {}
    return CodeResult(
        exit_code=int(data.get("exit_code") or 0),
        guest_status=data.get("guest_status"),
        **_streams(data),
        session=data.get("session"),
        kept=data.get("kept"),
        not_kept=data.get("not_kept"),
        session_cpu_seconds_left=data.get("session_cpu_seconds_left"),
        stats=Stats(
            fuel_used=stats.get("fuel_used"),
            memory_bytes=stats.get("memory_bytes"),
            cpu_seconds=data.get("cpu_seconds"),
            module_load=data.get("module_load"),
        ),
    )


def _program(label: str) -> str:
    """The guest's ``argv[0]``: the name the client gave the module (``module.wasm`` for
    bytes), as ``wasmsbx run`` gives the file's name. It was the server's private copy,
    a name that changed on every call (red team round 79)."""
    return os.path.basename(label) or "module.wasm"


def _limits(limits: Optional[CallLimits]) -> Optional[dict]:
    return limits.model_dump(exclude_none=True) if limits is not None else None


def build(service: Service) -> Any:
    """The MCPServer with every tool bound to ``service``."""
    from mcp.server.mcpserver import MCPServer
    from mcp.types import ToolAnnotations

    server = MCPServer(
        "wasmsbx", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )
    sandboxed = ToolAnnotations(readOnlyHint=False, destructiveHint=False, openWorldHint=False)

    @server.tool(annotations=sandboxed)
    @guarded
    async def run_python(
        code: Annotated[
            str, Field(description="Python 3.11 source; a last bare expression is printed")
        ],
        session: Annotated[
            Optional[str], Field(description="a session id from start_session: keep globals")
        ] = None,
        stdin: Annotated[Optional[str], Field(description="text the code reads from stdin")] = "",
        limits: Limits = None,
        ctx: Context = None,
    ) -> CodeResult:
        """Run Python code in CPython 3.11 compiled to WebAssembly (WASI). No network, no host
        files (a session adds a private /scratch), only the standard library; no threads,
        subprocesses or time.sleep. Returns stdout, stderr and the exit code (1 with a
        traceback on stderr if the code raised)."""
        stdin = stdin or ""  # (null as no stdin, as session and limits take it: round 84)
        service.check_request(code, stdin, session)
        service.argv_text("code", code)
        req = {
            "op": "python",
            "module": str(service.interpreter("python")),
            "sha256": _sha("python"),
            "source": str(service.interpreter("python")),
            "code": code,
            "stdin": stdin,
        }
        owner = _client(ctx, service)
        data = await service.run("run_python", req, _limits(limits), session, owner=owner)
        return _code_result(data)

    @server.tool(annotations=sandboxed)
    @guarded
    async def run_javascript(
        code: Annotated[
            str, Field(description="JavaScript (ES2023) source; the completion value is printed")
        ],
        limits: Limits = None,
    ) -> CodeResult:
        """Run JavaScript in QuickJS compiled to WebAssembly. console.log/print write to stdout;
        no network, no host files, no timers or event loop (synchronous code only)."""
        service.check_request(code)
        req = {
            "op": "javascript",
            "module": str(service.interpreter("javascript")),
            "sha256": _sha("javascript"),
            "source": str(service.interpreter("javascript")),
            "code": code,
        }
        return _code_result(await service.run("run_javascript", req, _limits(limits)))

    @server.tool(annotations=sandboxed)
    @guarded
    async def call_export(
        function: Annotated[str, Field(description=EXPORT_DESCRIPTION)],
        args: Annotated[list[Any], Field(description=ARGS_DESCRIPTION, max_length=MAX_ARGS)] = [],  # noqa: B006
        wave: Annotated[bool, Field(description=WAVE_DESCRIPTION)] = False,
        module_path: ModulePath = None,
        module_base64: ModuleB64 = None,
        limits: Limits = None,
    ) -> ExportResult:
        """Call an exported function of a WebAssembly core module or component in a fresh
        instance. Results come back typed: {"type": "i32", "value": 8} for a module;
        {"type": "result<s64, string>", "value": {"err": "..."}, "wave": "err(...)"} for a
        component (value in typed JSON, as args take it). audit_module lists the exports
        and their signatures."""
        service.check_request(module_base64, module_path, function, _json_size(args))
        module, digest, label = service.module(module_path, module_base64)
        req = {
            "op": "call",
            "module": module,
            "sha256": digest,
            "source": module_path,
            "cached": service.cacheable(module),
            "program": _program(label),
            "function": function,
            "args": list(args),
            "wave": wave,
        }
        data = await service.run("call_export", req, _limits(limits), log_args=list(args))
        return ExportResult(
            function=data["function"],
            results=[TypedValue(**r) for r in data["results"]],
            **_streams(data),
            stats=Stats(**_stat_fields(data)),
        )

    @server.tool(annotations=sandboxed)
    @guarded
    async def run_wasi_command(
        argv: Annotated[
            list[str], Field(description="arguments after the program name", max_length=MAX_ARGV)
        ] = [],  # noqa: B006
        stdin: Annotated[Optional[str], Field(description="text on the command's stdin")] = "",
        module_path: ModulePath = None,
        module_base64: ModuleB64 = None,
        limits: Limits = None,
    ) -> CodeResult:
        """Run a WebAssembly module as a WASI command (its _start) with argv and stdin; the
        command's exit code, stdout and stderr come back."""
        stdin = stdin or ""  # (null as no stdin)
        service.check_request(module_base64, module_path, argv, stdin)
        for i, arg in enumerate(argv):
            service.argv_text(f"argv[{i}]", arg)
        module, digest, label = service.module(module_path, module_base64)
        import base64

        req = {
            "op": "command",
            "module": module,
            "sha256": digest,
            "source": module_path,
            "cached": service.cacheable(module),
            "program": _program(label),
            "argv": list(argv),
            "stdin": base64.b64encode(stdin.encode("utf-8", "replace")).decode(),
        }
        data = await service.run("run_wasi_command", req, _limits(limits), log_args=list(argv))
        return _code_result(data)

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False))
    @guarded
    async def audit_module(
        module_path: ModulePath = None, module_base64: ModuleB64 = None
    ) -> dict[str, Any]:
        """Audit a module without running it: the same report as `wasmsbx audit --json`
        (schema wasmsbx.audit/1): imports by capability, exports, limits, findings, risk."""
        service.check_request(module_base64, module_path)
        module, digest, _ = service.module(module_path, module_base64)
        req = {"op": "audit", "module": module, "sha256": digest}
        label = service.label(module) or module_path or "module.wasm"
        data = await service.run("audit_module", req)
        # (the report names the module as the client did, never by the server's private
        # copy: red team round 40 saw its path in report.module.path)
        return bounded(scrubbed(data["report"], label), service.config.output_ceiling())

    @server.tool()
    @guarded
    async def start_session(ctx: Context = None) -> SessionInfo:
        """Start a session: run_python calls that pass its id keep their globals and share a
        private /scratch folder. It expires when idle (see limits) and is removed then."""
        started = service.start_session(owner=_client(ctx, service))
        return SessionInfo(**started.to_dict(service.config))

    @server.tool()
    @guarded
    async def end_session(
        session: Annotated[str, Field(description="the id from start_session")],
        ctx: Context = None,
    ) -> Ended:
        """End a session now: its globals and /scratch folder are deleted."""
        return Ended(session=session, ended=service.sessions.end(session, _client(ctx, service)))

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False))
    async def limits() -> dict[str, Any]:
        """The server's limits (the ceiling every call is held to) and where modules may be
        read from."""
        data = service.config.describe()
        data["module_dirs"] = [str(d) for d in service.allowed_dirs()]
        data["interpreters"] = {
            n: "installed" if not isinstance(p, Exception) else "missing: wasmsbx mcp setup"
            for n, p in service.interpreters.items()
        }
        return data

    ARGUMENTS["limits"] = ()
    _plain_validation_errors(server)
    return server


def _plain_validation_errors(server: Any) -> None:
    """Arguments of the wrong type or missing: the SDK's text was pydantic's, "1
    validation error for run_pythonArguments ... For further information visit
    https://errors.pydantic.dev/..."; it is now ``usage: ...`` with a hint, as every
    other refused argument (red team round 79). ``_handle_call_tool`` calls
    ``self.call_tool``, so the instance's attribute is the one used."""
    from mcp.server.mcpserver.exceptions import ToolError
    from pydantic import ValidationError

    call_tool = server.call_tool

    async def checked(name: str, arguments: dict, context: Any = None) -> Any:
        _refuse_unknown(name, arguments)
        try:
            return await call_tool(name, arguments, context)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            raise tool_error(_usage(name, exc.__cause__)) from None

    server.call_tool = checked


def _refuse_unknown(tool: str, arguments: Any) -> None:
    """An argument the tool does not take is refused, not dropped: ``session`` given to
    run_javascript, or a misspelt ``limts``, was ignored without a word and the call ran
    as if it had not been given (red team round 79)."""
    known = ARGUMENTS.get(tool)
    if known is None or not isinstance(arguments, dict):
        return
    unknown = [name for name in arguments if name not in known]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise tool_error(
            errors.UsageError(
                f"{tool}: argument {errors.quoted(str(unknown[0]))} is not one this tool "
                f"takes{more}",
                hint=f"{tool} takes: {', '.join(known) or 'no arguments'}",
            )
        )


def _usage(tool: str, exc: Any) -> errors.UsageError:
    """The first problem pydantic found, said as a usage error (the value never quoted:
    it is the caller's, and may be huge). Built from the problems' places only, and the
    places of at most PROBLEMS_READ of them: 300,000 items of the wrong type in argv
    held the event loop 1.9 s here (red team 124; list arguments are capped too)."""
    problems = exc.errors(include_url=False, include_context=False, include_input=False)
    first = problems[0] if problems else {}
    places = list(dict.fromkeys(_place(p.get("loc", ())) for p in problems[:PROBLEMS_READ]))
    where = places[0] if places else "arguments"
    what = str(first.get("msg", "is not valid"))[:200]
    more = f" (and {len(places) - 1} more)" if len(places) > 1 else ""
    return errors.UsageError(
        f"{tool}: argument {errors.inert(where)}: {what}{more}",
        hint="see the tool's input schema (tools/list) for each argument's type",
    )


# The parts of a pydantic error's location that name the alternative of a union it
# tried ("limits.timeout.str"), not an argument
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "tuple"})


PROBLEMS_READ = 100
# Items of the list arguments (checked before their items: a list of 640,000 items of
# the wrong type, under --max-request, held the event loop 5 s, red team 124)
MAX_ARGS = 1000  # call_export's args (a function has at most 1,000 parameters)
MAX_ARGV = 10_000  # run_wasi_command's argv


def _place(loc: Any) -> str:
    parts = [str(p) for p in loc if str(p) not in _UNION_TAGS and "[" not in str(p)]
    return ".".join(parts) or "arguments"


def _client(ctx: Any, service: Any) -> Optional[tuple]:
    """Who is calling, over HTTP: (the bearer token's principal, the MCP session id), either
    None when absent; None over stdio, where the process has one client. The token was
    checked by serve.BearerAuth before the request got here; it is kept only as a digest.
    On a server without tokens, an Authorization header is no one: anyone may send one,
    a new one for each session, and count as many holders (red team 123)."""
    try:
        request = ctx.request_context.request if ctx is not None else None
    except ValueError:  # no request context
        return None
    headers = getattr(request, "headers", None)
    if headers is None:
        return None
    auth = headers.get("authorization") if service.tokens else None
    principal = None
    if auth:
        import hashlib

        principal = hashlib.sha256(auth.encode("utf-8", "replace")).hexdigest()[:32]
    mcp_session = headers.get("mcp-session-id")
    return (principal, mcp_session) if principal or mcp_session else None


def _sha(name: str) -> str:
    from .interpreters import INTERPRETERS

    return INTERPRETERS[name].sha256


def _streams(data: dict) -> dict:
    """stdout/stderr as text, or in *_base64 when the guest wrote bytes that are not UTF-8."""
    out = {}
    for name in ("stdout", "stderr"):
        value = data.get(name)
        binary = isinstance(value, dict)
        out[name] = "" if binary else (value or "")
        out[f"{name}_base64"] = value.get("base64") if binary else None
    return out


def _json_size(value: Any) -> int:
    """Bytes of a JSON argument as sent (nested values included), as check_request
    counts them (``Measured``)."""
    import json

    from .service import Measured

    text = json.dumps(value, ensure_ascii=False, default=str)
    return Measured(len(text.encode("utf-8", "replace")))


def _stat_fields(data: dict) -> dict:
    stats = data.get("stats") or {}
    return {
        "fuel_used": stats.get("fuel_used"),
        "memory_bytes": stats.get("memory_bytes"),
        "cpu_seconds": data.get("cpu_seconds"),
        "module_load": data.get("module_load"),
    }
