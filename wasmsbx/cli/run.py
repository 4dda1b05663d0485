"""``wasmsbx run MODULE FUNC [ARGS...]`` and ``wasmsbx run MODULE [-- ARGS...]``."""

from __future__ import annotations

from typing import Any

from .. import errors
from . import options as opts
from . import output
from .progress import progress_factory
from .run_view import render_explain, render_stats

# Options handled by run_batch.py.
BATCH_OPTIONS = ("batch", "stream", "jobs", "fresh", "cluster", "chunk_size", "checkpoint")
FLAG_KEYS = {
    "memory": "limits.memory",
    "fuel": "limits.fuel",
    "timeout": "limits.timeout",
    "stack": "limits.stack",
}


def build_policy(options: dict) -> Any:
    """The policy file (or defaults) with the command-line overrides applied."""
    from .. import policy as policy_mod

    policy = policy_mod.discover(options.get("policy"))
    for dest, dotted in FLAG_KEYS.items():
        if options.get(dest) is not None:
            flag = "--" + dest.replace("_", "-")
            policy_mod.override(policy, dotted, options[dest], flag=flag)
    if options.get("backend"):
        policy_mod.override(policy, "runtime.backend", options["backend"], flag="--backend")
    for spec in options.get("dir", []):
        policy_mod.add_grant(policy, spec, writable=True)
    for spec in options.get("dir_ro", []):
        policy_mod.add_grant(policy, spec, writable=False)
    for spec in options.get("env", []):
        policy_mod.add_env(policy, spec)
    return policy


def run_main(argv: list) -> int:
    json_mode = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    log = None
    try:
        args = opts.parse(argv)
        log = _audit_log(args)
        code = execute(args, log)
    except (Exception, KeyboardInterrupt) as exc:
        from .boundary import report

        code = report(exc, json_mode)
        if log is not None:
            log.failure(exc)
    if log is not None:
        log.exit(code)
    return code


def _audit_log(args: opts.RunArgs) -> Any:
    """--audit-log FILE: the event log (imported and opened only when asked for)."""
    if not args.options.get("audit_log"):
        return None
    import os

    from ..auditlog import AuditLog

    path = args.options["audit_log"]
    if os.path.lexists(path):  # appended to, never replaced; but not an input or a disk
        from ..outfile import check_output

        check_output(path, [(args.positionals or [None])[0], args.options.get("policy")])
    log = AuditLog(path)
    func = (args.positionals[1:2] or [None])[0]
    extra = args.positionals[2:] + (args.passthrough or [])
    log.start((args.positionals or [None])[0], func, extra)
    return log


def execute(args: opts.RunArgs, log: Any = None) -> int:
    o = args.options
    if not args.positionals:
        raise errors.UsageError(
            "missing MODULE", hint="usage: wasmsbx run MODULE [FUNC [ARGS...]] [-- ARGS...]"
        )
    module, func = args.positionals[0], (args.positionals[1:2] or [None])[0]
    if o.get("invoke"):
        if func is not None or args.passthrough:
            raise errors.UsageError(
                "--invoke names the function and carries its arguments: give no FUNC or ARGS",
                hint="wasmsbx run c.wasm --invoke 'greet(\"World\")'",
            )
        func = wave_call_args(o["invoke"])[0]
    policy = build_policy(o)
    if any(o[dest] not in (None, False) for dest in BATCH_OPTIONS):
        from .run_batch import execute as execute_batch

        return execute_batch(args, policy, log)
    import time

    from ..runner import Sandbox

    kind = "call" if func else "command"
    call_args = args.positionals[2:] + (args.passthrough or [])
    # One deadline instant for the whole run: a timeout set by a flag or the policy covers
    # compiling too. The default timeout does not (limits.compile_timeout bounds that):
    # a slow compiler (wasmer:llvm) on a busy machine must not fail a default run.
    deadline = None
    if "limits.timeout" in policy.explicit:
        deadline = time.monotonic() + policy.values["limits.timeout"]
    box = Sandbox(
        module,
        policy,
        kind=kind,
        use_cache=False if o["no_cache"] else None,
        artifact=o["artifact"],
        cache_dir=o["cache_dir"],
        progress=progress_factory(),
        function=func,
        args=call_args if func and not o.get("invoke") else None,
        deadline=deadline,
    )
    for warning in box.warnings:  # at once: the run itself may still fail
        output.warning(warning)
    if log is not None:
        log.sandbox(box)
    if o["explain"]:
        render_explain(box.explain(kind))
    if func is None:
        return _command(box, args.passthrough or [], o, log)
    result = _invoke(box, func, call_args, o)
    if o["json"]:
        output.emit_json(result.to_dict())
    elif hasattr(result, "text_lines"):  # a component's: WAVE for compound values
        import sys

        for line in result.text_lines(terminal=sys.stdout.isatty()):
            output.out(line)
    else:
        from ..runner import format_value

        for value, wasm_type in zip(result.values, result.types):
            output.out(format_value(value, wasm_type))
    _after(result.stats, o, log, box.warnings)
    return 0


def _invoke(box: Any, func: str, call_args: list, o: dict) -> Any:
    """The call: FUNC ARGS..., or ``--invoke 'NAME(ARGS)'`` (WAVE, as the wasmtime CLI)."""
    if not o.get("invoke"):
        return box.invoke(func, call_args)
    if getattr(box, "is_component", False):
        return box.invoke(func, wave_call_args(o["invoke"])[1], wave_args=True)
    return box.invoke(func, wave_call_args(o["invoke"])[1])


def wave_call_args(text: str) -> tuple:
    from ..components.wave import WaveError, parse_call

    try:
        return parse_call(text)
    except WaveError as exc:
        raise errors.UsageError(f"--invoke: {exc}") from None


def _command(box: Any, argv: list, o: dict, log: Any = None) -> int:
    result = box.run_command(argv, capture=o["json"])
    if o["json"]:
        data = result.to_dict()
        data["stdout"] = _text(result.stdout)
        data["stderr"] = _text(result.stderr)
        output.emit_json(data)
    _after(result.stats, o, log, box.warnings)
    _explain_status(result)
    return result.exit_code


def _explain_status(result: Any) -> None:
    """A guest status that could be mistaken for one of ours gets one line on stderr."""
    status, code = result.guest_status, result.exit_code
    if status is None or code < errors.ExitCode.INTERNAL:
        return
    if status > errors.ExitCode.GUEST_STATUS_MAX:
        signed = f" ({status - 2**32} as an i32)" if status >= 2**31 else ""
        output.warning(
            f"the guest exited with status {status}{signed}, outside 0..125: exit code "
            f"{code} (see README, Exit codes)"
        )
    else:
        output.warning(f"exit code {code} is the guest's own status, not a wasmsbx error")


def _text(data: Any) -> Any:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        return {"base64": base64.b64encode(data).decode("ascii")}


def _after(stats: Any, o: dict, log: Any = None, shown: Any = ()) -> None:
    if log is not None:
        log.usage(stats)
    for warning in stats.warnings:
        if warning not in shown:
            output.warning(warning)
    if o["stats"]:
        render_stats(stats)
