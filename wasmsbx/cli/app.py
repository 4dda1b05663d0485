"""The typer application: one module per command, one error boundary for all.

Each command module exposes ``register(app)``; heavy imports stay inside the commands.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Optional

import typer
from typer.core import TyperCommand

from .._version import __version__
from ..errors import EXIT_WORDS, ExitCode
from . import options as run_options
from .boundary import report

_ARGV: list = []  # the raw argv, for the typer face of `run`
_PASSTHROUGH: list = []  # the words the user wrote after `--` (see FuncArgsCommand)

# Command modules, in the order ``wasmsbx --help`` lists them.
COMMANDS = [
    "run",
    "compile",
    "cache",
    "trust",
    "bench",
    "audit",
    "watch",
    "backends",
    "policy",
    "completions",
    "mcp",
]

HELP = (
    "Run untrusted WebAssembly under an explicit policy (sandbox.toml).\n\n"
    "Exit codes: "
    + ", ".join(f"{code} {words}" for code, words in EXIT_WORDS.items())
    + "; a WASI command's own exit status 0-125 is passed through."
)


class FuncArgsCommand(TyperCommand):
    """A command taking ``MODULE [FUNC [ARGS...]] [-- ARGV...]``, parsed like ``run``.

    After FUNC, words that look like negative numbers (``-5``, ``-inf``, ``-0x10``) are
    arguments, not options; click alone would reject them (``No such option: -5``).
    """

    def parse_args(self, ctx: Any, args: list) -> list:
        return super().parse_args(ctx, func_args_first(self, ctx, list(args)))


def func_args_first(command: Any, ctx: Any, args: list) -> list:
    """``args`` with the options first and every positional word after one ``--``."""
    with_value, flags = set(), set(ctx.help_option_names)
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option":
            names = [*param.opts, *param.secondary_opts]
            (flags if param.is_flag or param.count else with_value).update(names)
    options: list = []
    words: list = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            _PASSTHROUGH[:] = args[i:]
            return options + ["--"] + words + args[i:]
        name = token.split("=", 1)[0]
        if not token.startswith("-") or token == "-":
            words.append(token)
        elif name in with_value:
            options.append(token)
            if "=" not in token and i < len(args):
                options.append(args[i])
                i += 1
        elif len(words) >= 2 and name not in flags and not run_options._looks_like_flag(token):
            words.append(token)  # after FUNC: a value such as -5 or -inf
        else:
            options.append(token)  # a flag, or unknown: click says so
    _PASSTHROUGH[:] = []
    return options + ["--"] + words


def run_opt(dest: str, help: Optional[str] = None) -> Any:
    """A typer option spelled, and by default explained, like the same option of ``run``,
    so every command has the same flag letters (``-e`` is always ``--env``)."""
    opt = RUN_OPTS[dest]
    if opt.kind == "flag":
        return typer.Option(False, *opt.flags, help=help or opt.help)
    return typer.Option(None, *opt.flags, help=help or opt.help, metavar=opt.metavar)


RUN_OPTS = {opt.dest: opt for opt in run_options.RUN_OPTIONS}


def split_passthrough(words: list) -> tuple:
    """(words before the user's ``--``, words after it): click drops the ``--`` itself."""
    cut = max(0, len(words) - len(_PASSTHROUGH))
    return words[:cut], words[cut:]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wasmsbx {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="wasmsbx",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,  # static scripts instead: `wasmsbx completions install`
        pretty_exceptions_enable=False,
        # Plain help: no boxes, and no markup, so `pip install 'wasmsbx[wasmer]'` in a help
        # text prints as written; no `<bool>` type placeholders either.
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def main(
        version: Optional[bool] = typer.Option(
            None,
            "--version",
            "-V",
            callback=_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ) -> None:
        """Run untrusted WebAssembly under an explicit policy."""

    for name in COMMANDS:
        if name == "run":
            register_run(app)
        else:
            module = "completion" if name == "completions" else name
            importlib.import_module(f"wasmsbx.cli.commands.{module}").register(app)
    return app


def register_run(app: typer.Typer) -> None:
    """The typer face of ``run``: help and completions, built from RUN_OPTIONS."""

    def run(ctx: typer.Context, **kwargs: Any) -> None:
        from .commands.run import run_main

        raise typer.Exit(run_main(list(_ARGV[1:])))

    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter(
            "module",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=str,
            default=typer.Argument(..., metavar="MODULE", help="A .wasm or .wat module."),
        ),
        inspect.Parameter(
            "func_and_args",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Optional[list[str]],
            default=typer.Argument(
                None,
                metavar="[FUNC [ARGS...]] [-- ARGS...]",
                help="An export to call and its arguments, or, after --, a WASI command's argv.",
            ),
        ),
    ]
    annotations = {"ctx": typer.Context, "module": str, "func_and_args": Optional[list[str]]}
    for opt in run_options.RUN_OPTIONS:
        if opt.kind == "flag":
            annotation, default = bool, typer.Option(False, *opt.flags, help=opt.help)
        elif opt.kind == "multi":
            annotation = Optional[list[str]]
            default = typer.Option(None, *opt.flags, help=opt.help, metavar=opt.metavar)
        else:
            annotation = Optional[opt.value_type]
            default = typer.Option(None, *opt.flags, help=opt.help, metavar=opt.metavar)
        params.append(
            inspect.Parameter(
                opt.dest, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
            )
        )
        annotations[opt.dest] = annotation
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = annotations
    app.command(
        "run",
        help="Run MODULE: call FUNC with ARGS typed by its signature, or run a WASI "
        "command (_start) with the argv after --.\n\nExamples: wasmsbx run add.wat add 5 3;  "
        "wasmsbx run tool.wasm --dir data:/data -- --flag input",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )(run)


def run_app(argv: list) -> int:
    app = build_app()
    command = typer.main.get_command(app)
    _plain_help(command)
    _ARGV[:] = argv
    from . import boundary

    boundary.REPORTED[0] = False
    try:
        code = command.main(args=argv, prog_name="wasmsbx", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        if not _is_click_error(exc):
            raise
        return _click_error(exc, argv)
    if code == int(ExitCode.INTERRUPTED) and not boundary.REPORTED[0]:
        # typer turns Ctrl-C before the command's boundary (while it parses and
        # dispatches) into exit 130 and says nothing (red team round 30)
        return boundary.interrupted_before(argv)
    return code if isinstance(code, int) else 0


def _is_click_error(exc: BaseException) -> bool:
    """click's parse errors, from the click typer uses (vendored since typer 0.2x, or not)."""
    return any(c.__name__ in ("ClickException", "Abort") for c in type(exc).__mro__)


def _click_error(exc: Any, argv: list) -> int:
    """A usage error found by click, in the house style: ``error:`` and ``hint:``, exit 2."""
    from .. import errors

    if type(exc).__name__ == "Abort":  # EOF or Ctrl-C at a prompt
        return report(KeyboardInterrupt())
    if type(exc).__name__ == "NoArgsIsHelpError":  # `wasmsbx` or `wasmsbx cache` alone
        import sys

        sys.stderr.write(exc.format_message().rstrip("\n") + "\n")
        return int(errors.ExitCode.USAGE)
    message = exc.format_message().rstrip(".")
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "wasmsbx"
    hint = f"see `{where} --help`"
    if ctx is not None:
        hint = f"{ctx.get_usage().replace('Usage: ', 'usage: ', 1)}; {hint}"
    error = errors.UsageError(message[:1].lower() + message[1:], hint=hint)
    return report(error, run_options.json_flag(argv))


def _plain_help(command: Any) -> None:
    """Arguments in help as their metavar alone: no ``<str>``/``<list[str]>`` and no braces.

    typer >= 0.2x prints an argument's Python type beside its name, and marks required
    ones as ``{NAME}`` in the usage line; our metavars already say what goes there.
    """
    for param in getattr(command, "params", ()):
        if getattr(param, "param_type_name", "") == "argument" and param.metavar:
            metavar = param.metavar
            param.display_type_rich = lambda ctx: None
            param._usage_display_name = lambda m=metavar: m
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)
