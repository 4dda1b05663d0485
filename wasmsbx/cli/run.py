"""``wasmsbx run MODULE FUNC [ARGS...]`` and ``wasmsbx run MODULE [-- ARGS...]``."""

from __future__ import annotations

from typing import Any

from .. import errors
from . import options as opts
from . import output

_STDIN_DIR: list = []  # the private folder of a module read from stdin (MODULE "-")
BATCH_OPTIONS = ("batch", "stream", "jobs", "fresh", "chunk_size", "checkpoint")  # run_batch.py
FLAG_KEYS = {
    "memory": "limits.memory",
    "fuel": "limits.fuel",
    "timeout": "limits.timeout",
    "stack": "limits.stack",
}


def build_policy(options: dict) -> Any:
    """The policy file (or defaults) with the command-line overrides applied."""
    from .. import policy as policy_mod

    return apply_flags(policy_mod.discover(options.get("policy")), options)


def apply_flags(policy: Any, options: dict) -> Any:
    """Apply run's policy flags (--memory, --dir, --env, ...) to ``policy``; return it."""
    from .. import policy as policy_mod

    for dest, dotted in FLAG_KEYS.items():
        if options.get(dest) is not None:
            policy_mod.override(policy, dotted, options[dest])
    if options.get("backend"):
        policy_mod.override(policy, "runtime.backend", options["backend"])
    for spec in options.get("dir", []):
        policy_mod.add_grant(policy, spec, writable=True)
    for spec in options.get("dir_ro", []):
        policy_mod.add_grant(policy, spec, writable=False)
    for spec in options.get("env", []):
        policy_mod.add_env(policy, spec)
    return policy


def flag_keys(options: dict) -> dict:
    """The policy keys the flags in ``options`` set: {dotted key: "--flag"}."""
    keys = {dotted: f"--{dest}" for dest, dotted in FLAG_KEYS.items() if options.get(dest)}
    if options.get("backend"):
        keys["runtime.backend"] = "--backend"
    if options.get("dir"):
        keys["filesystem.read_write"] = "--dir"
    if options.get("dir_ro"):
        keys["filesystem.read_only"] = "--dir-ro"
    for spec in options.get("env", []):
        keys["env.set" if "=" in spec else "env.inherit"] = "--env"
    return keys


def run_main(argv: list) -> int:
    json_mode = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    log = None
    _STDIN_DIR[:] = []
    try:
        args = opts.parse(argv)
        log = _audit_log(args)
        code = execute(args, log)
    except (Exception, KeyboardInterrupt) as exc:
        from . import report

        if _STDIN_DIR and isinstance(exc, errors.WasmsbxError):
            exc.message = exc.message.replace(_STDIN_DIR[0], "")
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
    from ..auditlog import AuditLog

    log = AuditLog(args.options["audit_log"])
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
    module, func, call_args = _target(args)
    policy = build_policy(o)
    if module == "-":  # read stdin once, before anything else may want it
        path = _module_path(module, o)
        args = args._replace(positionals=[path, *args.positionals[1:]])
    if any(o[dest] not in (None, False) for dest in BATCH_OPTIONS):
        from .run_batch import execute as execute_batch

        return execute_batch(args, policy, log)
    from ..runner import Sandbox

    kind = "call" if func else "command"
    box = Sandbox(
        args.positionals[0],
        policy,
        kind=kind,
        use_cache=False if o["no_cache"] else None,
        artifact=o["artifact"],
        cache_dir=o["cache_dir"],
        progress=output.progress_factory(),
    )
    for warning in box.warnings:  # at once: the run itself may still fail
        output.warning(warning)
    if log is not None:
        log.sandbox(box)
    if o["explain"]:
        render_explain(box.explain(kind))
    if func is None:
        return _command(box, args.passthrough or [], o, log)
    _check_func(box, func, module, call_args)
    result = box.invoke(func, call_args)
    if o["json"]:
        output.emit_json(result.to_dict())
    else:
        from ..runner import format_value

        for value, wasm_type in zip(result.values, result.types):
            output.out(format_value(value, wasm_type))
    _after(result.stats, o, log, box.warnings)
    return 0


def _target(args: opts.RunArgs) -> tuple:
    """(MODULE, FUNC or None, the call's arguments), from the positionals or --invoke."""
    module, words, after = args.positionals[0], args.positionals[1:], args.passthrough or []
    invoke = args.options.get("invoke")
    if invoke is None:
        return module, (words[:1] or [None])[0], words[1:] + after
    name, inline = parse_invoke(invoke)
    return module, name, inline + words + after


def parse_invoke(text: str) -> tuple:
    """``--invoke add`` or ``--invoke 'add(5, -3)'`` (core modules: comma-separated
    numbers, as the wasmtime CLI writes them) -> ("add", ["5", "-3"])."""
    import re

    match = re.fullmatch(r"\s*([^()\s]+)\s*(?:\((.*)\))?\s*", text, re.S)
    if not match:
        raise errors.UsageError(
            f"--invoke {text!r}: expected FUNC or FUNC(ARG, ...)",
            hint="for example --invoke add 5 3, or --invoke 'add(5, 3)'",
        )
    name, inside = match.group(1), match.group(2)
    if inside is None or not inside.strip():
        return name, []
    values = [part.strip() for part in inside.split(",")]
    if any(not v for v in values):
        raise errors.UsageError(
            f"--invoke {text!r}: an empty argument", hint="separate arguments with one comma"
        )
    return name, values


def _module_path(module: str, o: dict) -> str:
    """MODULE, or for ``-`` the module read from stdin into a private temporary file."""
    if module != "-":
        return module
    if o.get("batch") == "-" or o.get("stream"):
        raise errors.UsageError(
            "MODULE and the input cannot both come from stdin",
            hint="give the module as a file, or --batch FILE",
        )
    import atexit
    import shutil
    import sys
    import tempfile

    folder = tempfile.mkdtemp(prefix="wasmsbx-stdin-")
    atexit.register(shutil.rmtree, folder, True)
    _STDIN_DIR[:] = [folder + "/"]  # cut from messages, which then read "<stdin>: ..."
    path = f"{folder}/<stdin>"
    with open(path, "wb") as fh:
        shutil.copyfileobj(sys.stdin.buffer, fh)
    return path


def _check_func(box: Any, func: str, module: str, call_args: list) -> None:
    """An unknown FUNC on a WASI command most likely is argv missing its ``--``."""
    names = {e.name for e in box.exports}
    if func in names or "_start" not in names:
        return
    import shlex

    words = [func, *call_args]
    raise errors.UsageError(
        f"{box.path.name} has no export named {func!r}; it is a WASI command",
        hint=f"its arguments go after --: wasmsbx run {shlex.join([module, '--', *words])}",
        function=func,
    )


def _command(box: Any, argv: list, o: dict, log: Any = None) -> int:
    result = box.run_command(argv, capture=o["json"])
    if o["json"]:
        data = result.to_dict()
        data["stdout"] = _text(result.stdout)
        data["stderr"] = _text(result.stderr)
        output.emit_json(data)
    _after(result.stats, o, log, box.warnings)
    return result.exit_code


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


CACHE_STATES = {
    "hit": "hit (native code loaded from the cache)",
    "miss": "miss (compiled, then stored)",
    "off": "off (--no-cache or runtime.cache = false)",
    "skip": "skipped (module smaller than runtime.cache_min_size)",
    "error": "unavailable (see the warning)",
    "artifact": "not used (precompiled artifact loaded)",
}


def render_stats(stats: Any) -> None:
    from ..units import format_count, format_duration, format_size

    rows = [("backend", f"{stats.backend}" + (f" ({stats.compiler})" if stats.compiler else ""))]
    rows.append(("cache", CACHE_STATES.get(stats.cache or "off", stats.cache)))
    for phase, seconds in stats.timings.items():
        rows.append((f"{phase} time", format_duration(seconds)))
    if stats.fuel_used is not None:
        rows.append(("fuel used", format_count(stats.fuel_used)))
    if stats.memory_bytes is not None:
        rows.append(("memory", format_size(stats.memory_bytes)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        output.err(f"{key.ljust(width)}  {value}")


def render_explain(selection: Any) -> None:
    from .explain import render

    render(selection, stderr=True)
