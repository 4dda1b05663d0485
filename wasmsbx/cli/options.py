"""The options of ``wasmsbx run``, declared once.

``run`` is the hot path: importing typer (and the click it carries) costs more than
the whole bare wasmtime script we benchmark against, so ``run`` is parsed by the small
parser below, straight from this table. The same table builds the typer command, so
``wasmsbx run --help`` and the shell completions describe exactly what the parser
accepts (tests/test_cli_options.py checks the two agree).

The parser also does what click cannot for a wasm runner: after FUNC, tokens such as
``-5`` or ``-inf`` are arguments, not options.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from ..errors import UsageError


class Opt(
    namedtuple(
        "Opt",
        "flags dest kind help metavar value_type",
        defaults=(
            "",
            str,
        ),
    )
):
    # flags: tuple  ("--policy", "-p")
    # dest: str
    # kind: str  value | flag | multi
    # help: str
    # metavar: str
    # value_type: type
    __slots__ = ()


RUN_OPTIONS: tuple = (
    Opt(
        ("--policy", "-p"),
        "policy",
        "value",
        "Policy file (default: ./sandbox.toml, else the secure defaults).",
        "PATH",
    ),
    Opt(
        ("--backend", "-b"),
        "backend",
        "value",
        "Backend: auto, wasmtime, wasmer, wasmer:llvm, wasmer:cranelift, wasmer:singlepass.",
        "NAME",
    ),
    Opt(("--memory",), "memory", "value", "Override limits.memory, e.g. 64MiB.", "SIZE"),
    Opt(
        ("--fuel",),
        "fuel",
        "value",
        "Override limits.fuel (units, roughly instructions).",
        "N",
        int,
    ),
    Opt(("--timeout",), "timeout", "value", "Override limits.timeout, e.g. 500ms, 2s.", "DURATION"),
    Opt(("--stack",), "stack", "value", "Override limits.stack, e.g. 1MiB.", "SIZE"),
    Opt(
        ("--dir",),
        "dir",
        "multi",
        "Grant a directory read-write (repeatable); GUEST defaults to HOST; "
        "HOST:GUEST also works when HOST has no ':'.",
        "HOST[::GUEST]",
    ),
    Opt(
        ("--dir-ro",),
        "dir_ro",
        "multi",
        "Grant a directory read-only (repeatable), spelled like --dir.",
        "HOST[::GUEST]",
    ),
    Opt(
        ("--env", "-e"),
        "env",
        "multi",
        "Set NAME=VALUE, or pass host NAME through; NAME may be a glob ('APP_*') (repeatable).",
        "NAME[=VALUE]",
    ),
    Opt(
        ("--invoke",),
        "invoke",
        "value",
        "Call this export (the wasmtime CLI's spelling): --invoke add 5 3, or with the "
        "arguments inline, --invoke 'add(5, 3)' (for a component, inline arguments are "
        "WAVE: --invoke 'greet(\"World\")').",
        "FUNC",
    ),
    Opt(("--json",), "json", "flag", "Print the result as JSON."),
    Opt(("--stats",), "stats", "flag", "Print fuel, memory, cache and phase timings (stderr)."),
    Opt(("--explain",), "explain", "flag", "Print why this backend was chosen (stderr)."),
    Opt(("--no-cache",), "no_cache", "flag", "Compile afresh; do not read or write the cache."),
    Opt(
        ("--audit-log",),
        "audit_log",
        "value",
        "Append one JSON line per security-relevant event (limit, trap, refused import...).",
        "FILE",
    ),
    Opt(
        ("--batch",),
        "batch",
        "value",
        "Call FUNC once per line of INPUT (- for stdin): a JSON array of arguments or "
        '{"args": [...], "id": ...}; JSONL results in input order on stdout.',
        "INPUT",
    ),
    Opt(("--jobs", "-j"), "jobs", "value", "With --batch: worker processes (default 1).", "N", int),
    Opt(("--fresh",), "fresh", "flag", "With --batch: a fresh instance for every call."),
    Opt(
        ("--cluster",),
        "cluster",
        "value",
        "With --batch: make the calls on the workers of this Dask scheduler (default: "
        "$WASMSBX_CLUSTER; needs the dask extra).",
        "ADDRESS",
    ),
    Opt(
        ("--stream",),
        "stream",
        "flag",
        "Stream stdin through FUNC (default: process) chunk by chunk to stdout; the module "
        "speaks the streaming ABI (alloc, FUNC, optional finish).",
    ),
    Opt(
        ("--chunk-size",),
        "chunk_size",
        "value",
        "With --stream: bytes per chunk (default 64KiB). With --batch --cluster: items per "
        "task (default: sized to about 0.25 s of work).",
        "SIZE",
    ),
    Opt(
        ("--checkpoint",),
        "checkpoint",
        "value",
        "With --batch/--stream: record progress in FILE; rerun the same command to resume.",
        "FILE",
    ),
    Opt(
        ("--cache-dir",),
        "cache_dir",
        "value",
        "Cache directory (default: runtime.cache_dir, $WASMSBX_CACHE_DIR, the user cache dir).",
        "PATH",
    ),
    Opt(
        ("--artifact",),
        "artifact",
        "value",
        "Load native code precompiled by `wasmsbx compile -o FILE`; MODULE is compiled "
        "instead if FILE is refused.",
        "FILE",
    ),
)

_BY_FLAG = {flag: opt for opt in RUN_OPTIONS for flag in opt.flags}


class RunArgs(namedtuple("RunArgs", "options positionals passthrough")):
    # options: dict
    # positionals: list
    # passthrough: Optional[list]  after "--", None when absent
    __slots__ = ()


def _value(opt: Opt, raw: str) -> object:
    if opt.value_type is int:
        from ..units import parse_count

        # ASCII digits, 0x, "_"; never negative (-j: never 0, said the same way for -1
        # and 0, red team 108); the option's own range comes later
        try:
            return parse_count(raw, minimum=1 if opt.dest == "jobs" else 0)
        except ValueError as exc:
            raise UsageError(f"{opt.flags[0]}: {exc}", hint=opt.help) from None
    return raw


def _unknown(token: str) -> UsageError:
    import difflib

    close = difflib.get_close_matches(token.split("=")[0], list(_BY_FLAG), n=1)
    hint = f"did you mean {close[0]}?" if close else "see wasmsbx run --help"
    return UsageError(f"unknown option {token}", hint=hint)


def defaults() -> dict:
    return {
        o.dest: ([] if o.kind == "multi" else (False if o.kind == "flag" else None))
        for o in RUN_OPTIONS
    }


def parse(argv: list) -> RunArgs:
    """Options anywhere; MODULE, then FUNC and its ARGS; everything after ``--`` verbatim."""
    options = defaults()
    positionals: list = []
    passthrough = None
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            passthrough = list(argv[i:])
            break
        name, eq, inline = token.partition("=")
        opt = _BY_FLAG.get(name) if token.startswith("-") else None
        if opt is None:
            if token.startswith("--") or (
                token.startswith("-") and not positionals[1:] and _looks_like_flag(token)
            ):
                raise _unknown(token)
            positionals.append(token)
            continue
        if opt.kind == "flag":
            if eq:
                raise UsageError(f"{name} takes no value", hint=opt.help)
            options[opt.dest] = True
            continue
        if not eq:
            # (`--env -- env`: the "--" that ends the options was taken for the value, and
            # the guest's argv for FUNC; round 155)
            if i >= len(argv) or argv[i] == "--":
                raise UsageError(f"{name} needs a value ({opt.metavar})", hint=opt.help)
            inline = argv[i]
            i += 1
        value = _value(opt, inline)
        if opt.kind == "multi":
            options[opt.dest].append(value)
        elif opt.dest == "invoke" and options["invoke"] is not None:
            # (any other option's last value wins, as with click: an alias's value can be
            # overridden; a second export was silently the only one called)
            raise UsageError(
                f"--invoke given twice ({options['invoke']!r}, {value!r}): a run calls one export",
                hint="give --invoke once",
            )
        else:
            options[opt.dest] = value
    return RunArgs(options, positionals, passthrough)


def _looks_like_flag(token: str) -> bool:
    """``-x`` before FUNC is an unknown flag; ``-5``/``-inf`` are values."""
    body = token[1:]
    return bool(body) and not (body[0].isdigit() or body[0] == "." or body in ("inf", "nan"))


def own_words(argv: list) -> list:
    """wasmsbx's own arguments: those before ``--`` (a word after it is the guest's)."""
    return argv[: argv.index("--")] if "--" in argv else argv


def json_flag(argv: list) -> Any:
    """``--json`` among wasmsbx's own arguments: True, or "stderr" when stdout carries a
    batch's results or a stream's output, where the error object goes to stderr (it
    was appended to the stream's bytes, or put between JSONL results: red team round
    69), as their success report does; else False."""
    words = own_words(argv)
    if "--json" not in words:
        return False
    valued = {flag for o in RUN_OPTIONS if o.kind != "flag" for flag in o.flags}
    after_value = False  # (a word that is an option's value, ``--invoke --batch``, is
    for word in words:  # no option: red team round 70)
        if after_value:
            after_value = False
        elif word.split("=", 1)[0] in ("--batch", "--stream"):
            return "stderr"
        else:
            after_value = word in valued
    return True
