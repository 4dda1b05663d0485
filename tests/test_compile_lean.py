"""``wasmsbx compile`` parsed without typer (cli/commands/compile.py ``lean_args``): the
plain command lines it takes, and everything it leaves to typer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wasmsbx.cli.commands.compile import lean_args

ADD_WAT = (
    '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
)


def test_plain_command_lines():
    args = lean_args(["m.wasm", "-o", "out.bin", "--export", "a", "--export=b", "--json"])
    assert args == {
        "source": "m.wasm",
        "out": "out.bin",
        "backend": None,
        "all_backends": False,
        "exports": ["a", "b"],
        "policy_path": None,
        "cache_dir": None,
        "force": False,
        "json_output": True,
        "sign": False,
        "interruptible": False,
    }
    assert lean_args(["m.wasm", "-o", "x", "--interruptible"])["interruptible"] is True
    args = lean_args(["--policy=p.toml", "-b", "wasmtime", "--force", "--", "-odd.wasm"])
    assert (args["source"], args["policy_path"], args["backend"], args["force"]) == (
        "-odd.wasm",
        "p.toml",
        "wasmtime",
        True,
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no SOURCE: typer's usage error
        ["a.wasm", "b.wasm"],
        ["a.wasm", "--bogus"],
        ["a.wasm", "-o"],  # a missing value
        ["a.wasm", "-o", "--json"],  # an option where the value should be
        ["a.wasm", "-o", "x", "--output", "y"],  # repeated
        ["a.wasm", "--force", "--force"],
        ["a.wasm", "--force=yes"],
        ["a.wasm", "-ox"],  # clustered short options: typer's business
    ],
)
def test_anything_else_goes_to_typer(argv):
    assert lean_args(argv) is None


def test_a_plain_compile_never_imports_typer(tmp_path):
    module = tmp_path / "add.wat"
    module.write_text(ADD_WAT)
    code = (
        "import sys\n"
        "from wasmsbx.cli import main\n"
        "code = main(['compile', sys.argv[1], '-o', sys.argv[2]])\n"
        "print(code, 'typer' in sys.modules, 'pydantic' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(module), str(tmp_path / "add.bin")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout.split()[-3:] == ["0", "False", "False"], proc.stderr
    assert (tmp_path / "add.bin").stat().st_size > 0


def test_errors_keep_the_house_style(cli_inproc, tmp_path):
    result = cli_inproc("compile", str(tmp_path / "missing.wasm"), "-o", str(tmp_path / "x"))
    assert result.code == 105
    assert result.stderr.startswith("error: ") and "hint: " in result.stderr
    assert "Traceback" not in result.stderr
