"""``wasmsbx run MODULE FUNC [ARGS...]`` and ``wasmsbx run MODULE [-- ARGS...]``."""

from __future__ import annotations

from typing import Any

from ... import errors, fdroom
from .. import options as opts
from .. import output
from ..progress import progress_factory
from ..run_view import render_explain, render_stats

_STDIN_DIR: list = []  # the private folder of a module read from stdin (MODULE "-")
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
    from ... import policy as policy_mod

    return warn_capped(apply_flags(policy_mod.discover(options.get("policy")), options))


def warn_capped(policy: Any) -> Any:
    """``policy``, once a warning says each limit of a found policy held to its default."""
    from ... import policy as policy_mod

    for message, hint in policy_mod.capped_warnings(policy):
        output.warning(f"{message}; {hint}")
    return policy


def apply_flags(policy: Any, options: dict) -> Any:
    """Apply run's policy flags (--memory, --dir, --env, ...) to ``policy``; return it."""
    from ... import policy as policy_mod

    for dest, dotted in FLAG_KEYS.items():
        if options.get(dest) is not None:
            flag = "--" + dest.replace("_", "-")
            policy_mod.override(policy, dotted, options[dest], flag=flag)
    if options.get("backend"):
        policy_mod.override(policy, "runtime.backend", options["backend"], flag="--backend")
    given: dict = {}  # guest path -> the flag that granted it (one each: round 155)
    for dest, writable in (("dir", True), ("dir_ro", False)):
        for spec in options.get(dest, []):
            grant = policy_mod.add_grant(policy, spec, writable=writable)
            flag = f"--{dest.replace('_', '-')} {spec}"
            where = policy_mod._guest_key(grant.guest)
            if where in given:
                raise errors.PolicyError(
                    f"{given[where]} and {flag} both grant the guest path {where}",
                    hint="give each guest path one host folder",
                    key="filesystem",
                )
            given[where] = flag
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
    json_mode = opts.json_flag(argv)
    log = None
    _STDIN_DIR[:] = []
    try:
        args = opts.parse(argv)
        policy = _checked_before_the_log(args)
        log = _audit_log(args)
        code = execute(args, log, policy)
    except (Exception, KeyboardInterrupt) as exc:
        fdroom.release()  # (a guest may hold every other descriptor: importing needs some)
        from ..boundary import report

        if _STDIN_DIR and isinstance(exc, errors.WasmsbxError):
            exc.message = exc.message.replace(_STDIN_DIR[0], "")
        code = report(exc, json_mode)
        if log is not None:
            log.failure(exc)
    if _STDIN_DIR:  # (the console script leaves with os._exit: its atexit hook never runs)
        import shutil

        shutil.rmtree(_STDIN_DIR[0].rstrip("/"), True)
    if log is not None:
        log.exit(code)
    return code


def _checked_before_the_log(args: opts.RunArgs) -> Any:
    """With --audit-log, the policy, built now, and what the run writes checked against
    what it reads (cli/crossed.py) before the log is opened: its first line would
    otherwise go into an input the check then refuses (round 54). None without a log, or
    when the policy fails (execute reports that, and the log records it)."""
    if args.options.get("audit_log") is None or not args.positionals:
        return None
    try:
        policy = build_policy(args.options)
    except errors.WasmsbxError:
        return None
    _refuse_before_the_work(args, policy)
    return policy


def _refuse_before_the_work(args: opts.RunArgs, policy: Any) -> None:
    """What the policy asks that is refused whatever the module: a file the run writes
    that it reads or keeps (cli/crossed.py), and a grant of the trust folder, a cache or
    a procfs, checked by path here (and again on the folders opened as the guest is
    given them), before a compile caches the module: such a run was refused only once
    compiled (red team 147)."""
    from ..crossed import refuse_crossed

    refuse_crossed(args, policy)
    if policy.grants:
        from ...native import trust

        trust.refuse_key_grants(policy.grants)


def _audit_log(args: opts.RunArgs) -> Any:
    """--audit-log FILE: the event log (imported and opened only when asked for)."""
    if args.options.get("audit_log") is None:
        return None
    import os

    from ...auditlog import AuditLog
    from ...outfile import check_output

    path = args.options["audit_log"]
    # Appended to, never replaced; but never '' or '-', a folder, block device or socket
    # (a character device or a FIFO is written as it is, as any output), the trust folder,
    # a sandbox.toml (red team round 77), nor any file the run reads, which the log's
    # lines would change under it or for good (red team round 52: an artifact, a batch
    # input, a discovered policy).
    if not path or path.startswith("-") or os.path.lexists(path):
        check_output(path, _inputs(args))  # (a new file: AuditLog says why it cannot be)
    from ..crossed import refuse_log_early

    refuse_log_early(path, args)
    log = AuditLog(path)
    from ...backends.deadline import AT_HARD_STOP

    AT_HARD_STOP.append(log.last_words)  # a call the keeper must stop still leaves its events
    module = (args.positionals or [None])[0]
    try:  # (the call as run makes it: --invoke's function and arguments too)
        _, func, extra = _target(args) if args.positionals else (None, None, [])
    except errors.UsageError:  # (run reports it: the log names what was asked)
        func, extra = args.options.get("invoke"), args.positionals[1:]
    log.start(module, func, extra)
    return log


def _inputs(args: opts.RunArgs) -> list:
    """The files a run reads, as named: the module, the policy (given, or the one
    discovery would find), the artifact, the batch input and the checkpoint."""
    from ...policy import POLICY_FILENAME

    o = args.options
    named = [(args.positionals or [None])[0], o.get("policy") or POLICY_FILENAME]
    named += [o.get("artifact"), o.get("batch"), o.get("checkpoint")]
    return [path for path in named if path not in (None, "", "-")]


def execute(args: opts.RunArgs, log: Any = None, policy: Any = None) -> int:
    held: list = [] if policy is None else [policy]  # (the run's policy, once built)
    try:
        return _execute(args, log, policy, held)
    except errors.LimitExceeded as exc:
        if held:
            _say_where_set(exc, held[0], args.options)
        raise


def _say_where_set(exc: errors.LimitExceeded, policy: Any, options: dict) -> None:
    """A limit the policy file set, not a flag, is named with the file in the hint: a
    sandbox.toml found in the working folder (one `audit --suggest-policy -o` wrote for
    another module) made later runs fail with exit 114, and nothing said where the 6
    came from (round 155)."""
    import os

    key = f"limits.{exc.limit}"
    source = getattr(policy, "source", None)
    if (
        key not in policy.explicit
        or key in flag_keys(options)
        or not isinstance(source, str)
        or not os.path.isfile(source)
    ):
        return
    try:  # (as the file spells it: "1MiB", not 1048576, red team 156)
        shown = policy.to_toml_dict()["limits"][exc.limit]
    except (KeyError, TypeError, ValueError):
        shown = policy.values.get(key)
    where = f"{key} is {shown!r} in {errors.inert(source)}"
    exc.hint = f"{exc.hint} ({where})" if exc.hint else where


def _execute(args: opts.RunArgs, log: Any, policy: Any, held: list) -> int:
    o = args.options
    if not args.positionals:
        raise errors.UsageError(
            "missing MODULE", hint="usage: wasmsbx run MODULE [FUNC [ARGS...]] [-- ARGS...]"
        )
    module, func, call_args = _target(args)
    if policy is None:  # (else built and checked before the audit log was opened)
        policy = build_policy(o)
        held.append(policy)
        _refuse_before_the_work(args, policy)
    if module == "-":  # read stdin once, before anything else may want it
        path = _module_path(module, o, policy.values["limits.module_size"])
        args = args._replace(positionals=[path, *args.positionals[1:]])
    # (`is not`: -j 0 == False, so `not in (None, False)` took it for no -j at all and
    # ran the call, where -j 4 without --batch is a usage error: red team 106)
    if any(o[dest] is not None and o[dest] is not False for dest in BATCH_OPTIONS):
        from ...backends.deadline import KEEPER
        from .run_batch import execute as execute_batch

        KEEPER.sole_run = False  # many guests: every one must be stoppable in process
        return execute_batch(args, policy, log)
    import time

    from ...runner import Sandbox

    kind = "call" if func else "command"
    # One deadline instant for the whole run: a timeout set by a flag or the policy covers
    # compiling too. The default timeout does not (limits.compile_timeout bounds that):
    # a slow compiler (wasmer:llvm) on a busy machine must not fail a default run.
    deadline = None
    if "limits.timeout" in policy.explicit:
        deadline = time.monotonic() + policy.values["limits.timeout"]
    try:
        box = Sandbox(
            args.positionals[0],
            policy,
            kind=kind,
            use_cache=False if o["no_cache"] else None,
            artifact=o["artifact"],
            cache_dir=o["cache_dir"],
            progress=progress_factory(),
            function=func,
            args=call_args if func and "(" not in (o.get("invoke") or "") else None,
            deadline=deadline,
        )
    except errors.UsageError as exc:
        if func is not None and exc.message.endswith(f"has no export named {errors.quoted(func)}"):
            _check_func(exc, args.positionals[0], func, module, call_args)
        raise
    for warning in box.warnings:  # at once: the run itself may still fail
        output.warning(warning)
    if log is not None:
        log.sandbox(box)
    if o["explain"]:
        render_explain(box.explain(kind))
    if func is None:
        return _command(box, args.passthrough or [], o, log)
    if o["json"]:
        # The guest's own stdout goes to stderr meanwhile, as in --batch: printed before
        # the report, a guest's {"results": ...} was the first JSON document a reader
        # took (red team 104).
        with _stdout_to_stderr():
            result = _invoke(box, func, call_args, o)
        output.emit_json(result.to_dict())
    else:
        result = _invoke(box, func, call_args, o)
        if hasattr(result, "text_lines"):  # a component's: WAVE for compound values
            import sys

            for line in result.text_lines(terminal=sys.stdout.isatty()):
                output.out(line)
        else:
            from ...runner.sandbox import format_value

            for value, wasm_type in zip(result.values, result.types):
                output.out(format_value(value, wasm_type))
    _after(result.stats, o, log, box.warnings)
    return 0


class _stdout_to_stderr:
    """fd 1 points at stderr for the block (what the guest writes to its inherited
    stdout lands there), and at stdout again after it, or before a hard stop leaves."""

    def __enter__(self) -> None:
        import os
        import sys

        from ...backends.deadline import AT_HARD_STOP

        sys.stdout.flush()
        self.saved = os.dup(1)
        os.dup2(2, 1)
        AT_HARD_STOP.append(self.restore)

    def restore(self, error: Any = None) -> None:
        import os

        if self.saved is not None:
            os.dup2(self.saved, 1)
            os.close(self.saved)
            self.saved = None

    def __exit__(self, *exc: Any) -> None:
        from ...backends.deadline import AT_HARD_STOP

        if self.restore in AT_HARD_STOP:
            AT_HARD_STOP.remove(self.restore)
        self.restore()


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
    # At top-level commas: a component's arguments are WAVE, whose strings, lists and
    # records hold commas of their own (a core module's are numbers: the same split)
    from ...components.wave import WaveError, parse_call

    try:
        values = parse_call(text)[1]
    except WaveError as exc:
        raise errors.UsageError(
            f"--invoke {text!r}: {exc}", hint="for example --invoke 'greet(\"a, b\")'"
        ) from None
    if any(not v for v in values) or inside.rstrip().endswith(","):
        raise errors.UsageError(
            f"--invoke {text!r}: an empty argument", hint="separate arguments with one comma"
        )
    return name, values


def _module_path(module: str, o: dict, limit: Any = None) -> str:
    """MODULE, or for ``-`` the module read from stdin into a private temporary file,
    at most ``limit`` bytes of it (limits.module_size: past it, exit 117 once that much
    is read, not once all of it is: red team 148)."""
    if module != "-":
        return module
    if o.get("batch") == "-" or o.get("stream"):
        raise errors.UsageError(
            "MODULE and the input cannot both come from stdin",
            hint="give the module as a file, or --batch FILE",
        )
    import shutil
    import sys
    import tempfile

    folder = tempfile.mkdtemp(prefix="wasmsbx-stdin-")  # (removed as run_main ends)
    from ...backends.deadline import AT_HARD_STOP  # (which leaves with os._exit: no atexit)

    AT_HARD_STOP.append(lambda error: shutil.rmtree(folder, True))
    _STDIN_DIR[:] = [folder + "/"]  # cut from messages, which then read "<stdin>: ..."
    path = f"{folder}/<stdin>"
    from ...inputs import MODULE_MAX_BYTES, TooLarge, _read_upto

    cap = MODULE_MAX_BYTES if limit is None else min(limit, MODULE_MAX_BYTES)
    try:  # capped like a module file: `run - < /dev/zero` must not fill the disk
        data = _read_upto(sys.stdin.buffer.read, b"", cap)
    except TooLarge:
        if cap < MODULE_MAX_BYTES:
            from ...units import format_limit

            raise errors.CompileLimitExceeded(
                f"<stdin>: more than limits.module_size {format_limit(limit)}",
                hint="raise limits.module_size in the policy if you trust this module",
                limit_value=limit,
            ) from None
        raise errors.InputError(
            f"<stdin>: more than {MODULE_MAX_BYTES >> 20} MiB, larger than any module "
            "wasmsbx reads",
            hint="give the module as a file",
        ) from None
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _check_func(exc: errors.UsageError, path: str, func: str, module: str, call_args: list) -> None:
    """An unknown FUNC on a WASI command most likely is argv missing its ``--``. Told by
    what the sandbox read of the module (``exc.exports_start``), within the run's limits:
    the module is not read again (a second read, of a file that may have changed since,
    was bounded by nothing)."""
    if not getattr(exc, "exports_start", False):
        return
    import shlex
    from pathlib import Path

    words = [func, *call_args]
    raise errors.UsageError(
        f"{Path(path).name} has no export named {errors.quoted(func)}; it is a WASI command",
        hint=f"its arguments go after --: wasmsbx run {shlex.join([module, '--', *words])}",
        function=func,
    )


def _invoke(box: Any, func: str, call_args: list, o: dict) -> Any:
    """The call. ``--invoke 'NAME(ARGS)'`` on a component: the arguments are WAVE, as in
    the wasmtime CLI (parse_invoke splits them at top-level commas)."""
    invoke = o.get("invoke")
    if invoke and "(" in invoke:
        inline = parse_invoke(invoke)[1]
        if len(call_args) > len(inline):  # (one list with both: which would come first?)
            raise errors.UsageError(
                f"--invoke {invoke!r} gives the arguments in its parentheses; "
                f"{' '.join(call_args[len(inline) :])!r} after it too",
                hint="give them all inside --invoke's parentheses, or all after --invoke NAME",
            )
        if getattr(box, "is_component", False):
            return box.invoke(func, call_args, wave_args=True)
    return box.invoke(func, call_args)


def _command(box: Any, argv: list, o: dict, log: Any = None) -> int:
    result = box.run_command(argv, capture=o["json"])
    if o["json"]:
        data = result.to_dict()
        from ...runner.captured import as_json

        data["stdout"] = as_json(result.stdout)
        data["stderr"] = as_json(result.stderr)
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


def _after(stats: Any, o: dict, log: Any = None, shown: Any = ()) -> None:
    if log is not None:
        log.usage(stats)
    for warning in stats.warnings:
        if warning not in shown:
            output.warning(warning)
    if o["stats"]:
        render_stats(stats)
