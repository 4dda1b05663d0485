"""The typer application: one module per command, one error boundary for all.

Each command module exposes ``register(app)``; heavy imports stay inside the commands.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Optional

import typer

from .._version import __version__
from ..errors import EXIT_WORDS
from . import options as run_options
from .boundary import boundary, report  # noqa: F401 - boundary re-exported for commands

_ARGV: list = []  # the raw argv, for the typer face of `run`

# Command modules, in the order ``wasmsbx --help`` lists them.
COMMANDS = ["run", "compile", "cache", "trust", "bench", "audit", "watch", "backends", "mcp"]

HELP = (
    "Run untrusted WebAssembly under an explicit policy (sandbox.toml).\n\n"
    "Exit codes: "
    + ", ".join(f"{code} {words}" for code, words in EXIT_WORDS.items())
    + "; a WASI command's own exit status 0-125 is passed through."
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wasmsbx {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="wasmsbx",
        help=HELP,
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
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
            importlib.import_module(f"wasmsbx.cli.{name}_cmd").register(app)
    return app


def register_run(app: typer.Typer) -> None:
    """The typer face of ``run``: help and completions, built from RUN_OPTIONS."""

    def run(ctx: typer.Context, **kwargs: Any) -> None:
        from .run import run_main

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
    try:
        _ARGV[:] = argv
        command.main(args=argv, prog_name="wasmsbx", standalone_mode=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    return 0
