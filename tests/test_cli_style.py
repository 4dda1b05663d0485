"""One face for every command: errors, flags, help, values after FUNC, output width.

Parsing and rendering are tested in process (``cli_inproc``, ~0.3 s less per call than a
new interpreter); what needs the real entry point goes through ``cli``.
"""

from __future__ import annotations

import json
import re

import pytest

from .conftest import EXAMPLES

ADD = str(EXAMPLES / "add.wat")
HELLO = str(EXAMPLES / "wasi" / "hello.wasm")

# Every typer command and a way to give it an unknown option.
COMMANDS = [
    ["compile", "x.wat"],
    ["cache", "list"],
    ["cache", "stats"],
    ["bench", ADD, "add"],
    ["audit", ADD],
    ["backends"],
    ["policy", "show"],
    ["watch", ADD, "add"],
]
HELP_PAGES = [c[:2] if c[0] in ("cache", "policy") else c[:1] for c in COMMANDS] + [[], ["run"]]


def assert_house_style(result, code=2):
    lines = result.stderr.splitlines()
    assert result.code == code, result
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), result
    assert not re.search(r"[╭╮╰╯│─]|Traceback|Usage:", result.stderr), result


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]).split("/")[0])
def test_unknown_option_is_one_error_line_and_exit_2(cli_inproc, argv):
    result = cli_inproc(*argv, "--no-such-flag")
    assert_house_style(result)
    assert "no such option: --no-such-flag" in result.stderr
    assert f"see `wasmsbx {argv[0]}" in result.stderr


def test_missing_argument_and_bad_choice(cli_inproc):
    result = cli_inproc("audit")
    assert_house_style(result)
    assert result.stderr.startswith("error: missing argument 'MODULE'\n")
    assert "usage: wasmsbx audit [OPTIONS] MODULE" in result.stderr
    result = cli_inproc("audit", ADD, "--fail-on", "severe")
    assert_house_style(result)
    assert "--fail-on" in result.stderr.splitlines()[0]


def test_usage_error_with_json_is_also_json_on_stdout(cli_inproc):
    result = cli_inproc("audit", ADD, "--json", "--bogus")
    assert_house_style(result)
    error = result.json()["error"]
    assert error["kind"] == "usage" and error["exit_code"] == 2
    assert "--bogus" in error["message"]


def test_real_entry_point_uses_the_same_style(cli):
    assert_house_style(cli("compile", "--bogus", "x"))


@pytest.mark.parametrize("argv", HELP_PAGES, ids=lambda a: " ".join(a) or "top")
def test_help_has_no_type_placeholders_or_boxes(cli_inproc, argv):
    result = cli_inproc(*argv, "--help")
    assert result.code == 0 and "Usage: wasmsbx" in result.stdout
    assert not re.search(r"<(bool|str|int|list\[str\])>|\{[A-Z]+\}|[╭╮╰╯│]", result.stdout)


def test_e_is_env_in_every_command(cli_inproc):
    for argv in (["run"], ["bench"], ["watch"], ["audit"], ["policy", "show"]):
        text = cli_inproc(*argv, "--help").stdout
        assert re.search(r"-e, --env NAME\[=VALUE\]", text), argv
    compile_help = cli_inproc("compile", "--help").stdout
    assert "--export NAME" in compile_help and "-e," not in compile_help


def test_bench_accepts_flag_like_values_after_func(cli_inproc):
    args = ("--phase", "call", "-n", "3", "--warmup", "0", "--sample-time", "1ms", "--json")
    result = cli_inproc("bench", ADD, "add", "-5", "3", *args)
    assert result.code == 0, result
    case = result.json()["cases"][0]
    assert case["args"] == ["-5", "3"] or case["args"] == [-5, 3]
    # before FUNC a dash word is still an option, and click says so in the house style
    assert_house_style(cli_inproc("bench", ADD, "-x"))


def test_func_args_first_keeps_options_and_passthrough():
    from wasmsbx.cli import app

    cmd = app.typer.main.get_command(app.build_app()).commands["bench"]
    ctx = cmd.make_context("bench", ["x.wat"], resilient_parsing=True)
    args = ["-n", "3", "m.wat", "f", "-5", "--json", "-inf", "--", "-1"]
    assert app.func_args_first(cmd, ctx, args) == [
        "-n", "3", "--json", "--", "m.wat", "f", "-5", "-inf", "-1",
    ]  # fmt: skip
    assert app.split_passthrough(["f", "-5", "-inf", "-1"]) == (["f", "-5", "-inf"], ["-1"])


def test_markup_in_data_is_printed_as_written(cli_inproc, isolated):
    (isolated / "[red]x.wat").write_text((EXAMPLES / "add.wat").read_text())
    args = ("--phase", "call", "-n", "2", "--warmup", "0", "--sample-time", "1ms")
    result = cli_inproc("bench", "[red]x.wat", "add", "1", "2", *args)
    assert result.code == 0, result
    assert "[red]x.wat" in result.stdout
    result = cli_inproc("bench", ADD, "add", "1", "2", "--backend", "wasmer", *args)
    if "unavailable" in result.stdout:  # the install hint keeps its extra
        assert "pip install 'wasmsbx[wasmer]'" in result.stdout


def test_cache_list_in_a_pipe_is_not_cut(cli_inproc, isolated):
    assert cli_inproc("compile", ADD).code == 0
    result = cli_inproc("cache", "list", env={"COLUMNS": ""})
    assert result.code == 0, result
    row = next(line for line in result.stdout.splitlines() if "add.wat" in line)
    assert "…" not in result.stdout and re.search(r"\d+ s\b", row), result.stdout


def test_audit_on_a_narrow_terminal_wraps_identifiers(cli_inproc):
    result = cli_inproc("audit", HELLO, env={"COLUMNS": "50"})
    assert result.code == 0, result
    assert "…" not in result.stdout
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256(Path(HELLO).read_bytes()).hexdigest()
    assert digest in re.sub(r"\s+", "", result.stdout.replace("sha256", ""))
    assert max(len(line) for line in result.stdout.splitlines()) <= 50


# ---------------------------------------------------------------------------- run spellings


def test_dir_with_the_wasmtime_spelling_and_a_colon_in_the_host_name(cli, isolated):
    folder = isolated / "a:b"
    folder.mkdir()
    (folder / "note.txt").write_text("inside\n")
    result = cli("run", HELLO, "--dir-ro", "a:b::/data", "--", "/data/note.txt")
    assert result.code == 0 and "inside" in result.stdout, result
    result = cli("run", HELLO, "--dir-ro", "a:b::a:b", "--", "a:b/note.txt")
    assert result.code == 0 and "inside" in result.stdout, result
    result = cli("run", HELLO, "--dir-ro", "a:b:/data", "--", "/data")
    assert result.code == 101 and "HOST::GUEST" in result.stderr, result


def test_grant_spellings_parse():
    from wasmsbx import policy

    here = policy.parse_grant(".", False)
    assert policy.parse_grant(".::/data", False) == here._replace(guest="/data")
    assert policy.parse_grant(".:/data", False) == here._replace(guest="/data")
    assert policy.parse_grant(".::a:b", False).guest == "a:b"  # first :: splits
    with pytest.raises(ValueError):
        policy.parse_grant(".::", False)


def test_invoke_spellings(cli_inproc):
    assert cli_inproc("run", ADD, "--invoke", "add(5, -3)").stdout == "2\n"
    assert cli_inproc("run", ADD, "--invoke", "add", "5", "-3").stdout == "2\n"
    assert cli_inproc("run", ADD, "--invoke", "divmod( 17 ,5 )").stdout == "3\n2\n"
    for bad in ("add(1,)", "add(1", "a b(1)"):
        result = cli_inproc("run", ADD, "--invoke", bad)
        assert result.code == 2 and "--invoke" in result.stderr, (bad, result)
    # red team round 34 L9: `--invoke 'add(1)' 2` merged the two lists (as a component's
    # call refuses, so does a core module's)
    for after in (["2"], ["--", "2"]):
        result = cli_inproc("run", ADD, "--invoke", "add(1)", *after)
        assert result.code == 2 and "parentheses" in result.stderr, (after, result)


def test_module_from_stdin(cli_inproc, cli):
    wat = (EXAMPLES / "add.wat").read_bytes()
    assert cli_inproc("run", "-", "add", "5", "3", input=wat).stdout == "8\n"
    result = cli(
        "run", "-", "--", "--exit", "4", input=EXAMPLES.joinpath("wasi", "hello.wasm").read_bytes()
    )
    assert result.code == 4 and "argv[0] = <stdin>" in result.stdout, result
    result = cli_inproc("run", "-", "f", input=b'(module (func (export "f") i32.const))')
    assert result.code == 102 and result.stderr.startswith("error: <stdin>: invalid"), result
    assert "(<stdin>:1:" in result.stderr and "wasmsbx-stdin" not in result.stderr
    result = cli_inproc("run", "-", "add", "--batch", "-", input=wat)
    assert result.code == 2 and "stdin" in result.stderr


def test_argv_without_its_double_dash_gets_a_hint(cli_inproc):
    result = cli_inproc("run", HELLO, "a", "b c")
    assert result.code == 2
    assert "has no export named 'a'; it is a WASI command" in result.stderr
    assert f"hint: its arguments go after --: wasmsbx run {HELLO} -- a 'b c'" in result.stderr


def test_the_double_dash_hint_comes_from_the_run_s_own_read(cli_inproc, isolated, monkeypatch):
    """The hint is told from what the sandbox read within the run's limits: the module
    is not read again (that second read was bounded by nothing), and a command written
    as text gets it too (only binary files were read again)."""
    from wasmsbx.wasm import source

    (isolated / "cmd.wat").write_text(
        '(module (memory (export "memory") 1) (func (export "_start")))'
    )
    reads = []
    real = source.read_file
    monkeypatch.setattr(source, "read_file", lambda *a, **k: reads.append(a) or real(*a, **k))
    result = cli_inproc("run", str(isolated / "cmd.wat"), "a")
    assert result.code == 2, result
    assert "has no export named 'a'; it is a WASI command" in result.stderr
    assert len(reads) <= 1, reads


def test_wat_errors_name_the_file_and_text_files_are_refused(cli_inproc, isolated):
    (isolated / "bad.wat").write_text('(module (func (export "f") (result i32) i32.const))')
    result = cli_inproc("run", "bad.wat", "f")
    assert result.code == 102 and "(bad.wat:1:" in result.stderr and "<anon>" not in result.stderr
    (isolated / "notes.txt").write_text("hello world\n(module)\n")
    result = cli_inproc("run", "notes.txt")
    assert result.code == 102, result
    assert "notes.txt: not a WebAssembly module" in result.stderr
    assert "does not start with `(`" in result.stderr
    commented = ";; a comment\n(; block (; nested ;) ;)\n" + (EXAMPLES / "add.wat").read_text()
    (isolated / "c.wat").write_text(commented)
    assert cli_inproc("run", "c.wat", "add", "1", "2").stdout == "3\n"


# ---------------------------------------------------------------------------- policy show


def test_policy_show_names_each_source(cli_inproc, isolated):
    (isolated / "sandbox.toml").write_text(
        '[limits]\nmemory = "32MiB"\n[filesystem]\nread_only = ["."]\n'
        '[env]\nset = {A = "1", "B C" = "q\\"x"}\n'
    )
    (isolated / "data").mkdir()
    result = cli_inproc("policy", "show", "--timeout", "2s", "--dir-ro", "data::/d", "-e", "LANG")
    assert result.code == 0, result
    lines = {line.split("=")[0].strip(): line for line in result.stdout.splitlines()}
    assert re.search(r'memory = "32MiB" +# .*sandbox\.toml$', lines["memory"])
    assert re.search(r'timeout = "2s" +# --timeout$', lines["timeout"])
    assert lines["read_only"].endswith("sandbox.toml + --dir-ro")
    assert re.search(r"# default$", lines["optimize"]) and "inherit = " in result.stdout
    assert lines["# fuel"].startswith("# fuel = (unset)")
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib

    from wasmsbx import policy

    shown = policy.from_dict(tomllib.loads(result.stdout), "shown", base=isolated)
    expected = cli_inproc("policy", "show", "--timeout", "2s", "--dir-ro", "data::/d", "-e", "LANG")
    assert shown.to_dict() == policy.from_dict(tomllib.loads(expected.stdout), "again").to_dict()
    assert shown.values["env.set"] == {"A": "1", "B C": 'q"x'}


def test_policy_show_json(cli_inproc, isolated):
    result = cli_inproc("policy", "show", "--json", "--memory", "64MiB")
    assert result.code == 0, result
    data = result.json()
    assert data["file"] is None and data["policy"]["limits"]["memory"] == 64 * 2**20
    assert data["sources"]["limits.memory"] == "--memory"
    assert data["sources"]["limits.timeout"] == "default"
    result = cli_inproc("policy", "show", "--memory", "lots")
    assert result.code == 2 and result.stderr.startswith("error: "), result


def test_audit_takes_the_run_flags(cli_inproc, isolated):
    (isolated / "data").mkdir()
    base = cli_inproc("audit", HELLO, "--json").json()
    granted = cli_inproc("audit", HELLO, "--json", "--dir-ro", "data::/d", "-e", "A=1").json()
    assert json.dumps(base) != json.dumps(granted)
    text = json.dumps(granted)
    assert "/d" in text and str(isolated / "data") in text
    result = cli_inproc("audit", HELLO, "--dir", "missing::/x")
    assert result.code == 101 and "--dir missing::/x" in result.stderr


class _Interrupted:
    """A module whose every attribute raises KeyboardInterrupt: Ctrl-C while importing."""

    def __getattr__(self, name):
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("module", "argv"),
    [("wasmsbx.cli.app", ["backends"]), ("wasmsbx.cli.commands.run", ["run", "x.wat"])],
)
def test_ctrl_c_while_a_command_is_imported_is_exit_130_not_a_traceback(
    monkeypatch, capsys, module, argv
):
    import sys

    from wasmsbx.cli import main

    monkeypatch.setitem(sys.modules, module, _Interrupted())
    assert main(argv) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_a_diagnostic_line_is_cut_however_long_what_it_quotes(cli):
    """A 100,000-character argument was quoted whole in its error line (red team round
    69): a line is at most output.LINE_MAX characters, its length said."""
    res = cli("trust", "remove", "k" * 100_000)
    assert res.code != 0
    first = res.stderr.splitlines()[0]
    assert first.startswith("error: ") and len(first) < 4100, len(first)
    assert "characters)" in first


def test_a_line_cut_keeps_the_reason_at_its_end(cli, tmp_path):
    # (a module path of 5,000 characters: the line was cut at its end, and the reason,
    # "File name too long", with it)
    path = "/tmp/" + "/".join(["b" * 200] * 25) + "/x.wasm"
    res = cli("run", path)
    assert res.code == 105, res
    first = res.stderr.splitlines()[0]
    assert len(first) <= 4000 and "characters) ..." in first, first[-300:]
    assert first.endswith("File name too long"), first[-300:]
