"""Red team round 52: hostile input that made the command line fail as a bug.

Input nested deeper than Python's parsers can recurse (a 1 KB policy of ``[[[[...``, an
artifact's unauthenticated header, a baseline), ... : each ends with the documented exit
code of that kind of input and one error line, never "internal error" (exit 100).
"""

from __future__ import annotations

import os

import pytest

from wasmsbx.native import artifact

DEEP = 500  # 1 KB of [[[[...: deeper than tomllib's recursion can go
DEEP_JSON = 200_000  # deeper than json's, whatever the stack depth of the caller


def deep_toml() -> str:
    return "a = " + "[" * DEEP + "]" * DEEP + "\n"


def one_error(result, code: int) -> str:
    """The error line of ``result``, checked: exit ``code``, no traceback."""
    assert result.code == code, result
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert result.stderr.startswith("error: "), result
    return result.stderr.splitlines()[0]


# -------------------------------------------------------------------- nested too deeply
@pytest.mark.parametrize(
    "argv",
    [
        ["run", "MODULE", "add", "1", "2"],
        ["policy", "show"],
        ["audit", "MODULE"],
        ["backends", "--explain"],
    ],
    ids=lambda argv: argv[0],
)
@pytest.mark.parametrize("given", [True, False], ids=["--policy", "discovered"])
def test_a_deeply_nested_policy_is_a_policy_error(cli, add, isolated, argv, given):
    """Was exit 100, "internal error: RecursionError", for any command that loads it."""
    argv = [str(add) if a == "MODULE" else a for a in argv]
    if given:
        policy = isolated / "deep.toml"
        argv += ["--policy", str(policy)]
    else:
        policy = isolated / "sandbox.toml"
    policy.write_text(deep_toml())
    line = one_error(cli(*argv), 101)
    assert "invalid TOML: arrays or tables nested too deeply" in line


def test_a_deeply_nested_suite_is_a_usage_error(cli, isolated):
    """As any other invalid TOML in a suite file (exit 2)."""
    (isolated / "suite.toml").write_text(deep_toml())
    line = one_error(cli("bench", "--suite", "suite.toml"), 2)
    assert "suite.toml: invalid TOML: arrays or tables nested too deeply" in line


def test_a_deeply_nested_baseline_is_a_usage_error(cli, add, isolated):
    """As any other baseline that is not a bench report (exit 2)."""
    (isolated / "deep.json").write_text("[" * DEEP_JSON + "]" * DEEP_JSON)
    result = cli("bench", add, "add", "1", "2", "-n", "1", "--baseline", "deep.json")
    line = one_error(result, 2)
    assert "deep.json: not a bench report (invalid JSON: nested too deeply)" in line


def deep_artifact() -> bytes:
    """An artifact whose (unauthenticated) header nests deeper than json can go."""
    header = b'{"fingerprint":' + b"[" * DEEP_JSON + b"]" * DEEP_JSON + b"}"
    prefix = artifact.PREFIX.pack(len(header), 0)
    return artifact.MAGIC + prefix + header + bytes(artifact.TAG_SIZE)


def test_an_artifact_with_a_deeply_nested_header_is_refused(cli, isolated):
    """`run` asks the header whether it holds a component before authenticating it:
    that read raised RecursionError (exit 100). Now it is refused as unauthenticated."""
    (isolated / "deep.cwasm").write_bytes(deep_artifact())
    line = one_error(cli("run", "deep.cwasm", "add", "1", "2"), 102)
    assert "refused precompiled artifact: it is not authenticated" in line


def test_headers_nested_too_deeply_are_unreadable_not_a_crash():
    data = deep_artifact()
    assert artifact.claims_component(data) is False
    with pytest.raises(artifact.Corrupt, match="unreadable header"):
        artifact.read_header(data)


def test_an_artifact_name_swapped_for_a_fifo_is_not_waited_on(tmp_path):
    """Red team 133: the run looked at an artifact's first byte without waiting, then
    claims_component opened the name again with a blocking open: swapped for a FIFO in
    between (a hostile project's folder), the run waited for a writer for ever, before
    any timeout was armed. It opens without waiting, a regular file only."""
    import threading

    fifo = tmp_path / "m.cwasm"
    os.mkfifo(fifo)
    answer: list = []
    thread = threading.Thread(target=lambda: answer.append(artifact.claims_component(fifo)))
    thread.daemon = True
    thread.start()
    thread.join(60)
    assert answer == [False]
    (tmp_path / "real.cwasm").write_bytes(deep_artifact())
    assert artifact.claims_component(tmp_path / "real.cwasm") is False


def test_a_guests_session_report_nested_too_deeply_is_ignored(tmp_path):
    """The MCP interpreters' guest writes report.json in its own folder: [[[[... there
    raised RecursionError out of the tool call."""
    from wasmsbx.mcp.guest import _session_report

    (tmp_path / ".wasmsbx").mkdir()
    (tmp_path / ".wasmsbx" / "report.json").write_text("[" * DEEP_JSON + "]" * DEEP_JSON)
    assert _session_report(str(tmp_path)) == {"kept": [], "not_kept": {}}


# -------------------------------------------------------------------- mcp --port
@pytest.mark.parametrize("port", ["99999", "65536", "-1", "0"])
def test_a_port_outside_1_to_65535_is_a_usage_error(cli, port):
    """99999 and 65536 printed asyncio's traceback, then exit 100 (OverflowError out of
    uvicorn); -1 said "Servname not supported". 0 would be a port nobody is told. The
    check comes before anything starts, with or without the mcp SDK (Python 3.9)."""
    line = one_error(cli("mcp", "--http", "--port", port, timeout=30), 2)
    assert line == f"error: --port {port}: must be 1-65535"


# -------------------------------------------------------------------- backends' options
@pytest.mark.parametrize("explain", [[], ["--explain"]], ids=["list", "explain"])
@pytest.mark.parametrize(
    "option, code, message",
    [
        (["--policy", "bad.toml"], 101, "error: bad.toml: invalid TOML: "),
        (["--policy", "missing.toml"], 101, "error: missing.toml: policy file not found"),
        (["--kind", "nope"], 2, "error: --kind nope: must be one of call, command, auto"),
        (["--backend", "nope"], 104, "error: backend 'nope' is not known"),
    ],
    ids=["bad-policy", "missing-policy", "kind", "backend"],
)
def test_backends_refuses_what_run_refuses(cli, isolated, explain, option, code, message):
    """Without --explain or a MODULE, a broken or missing --policy and a --backend not
    known were ignored (exit 0); --kind nope was scored as a call even with --explain."""
    (isolated / "bad.toml").write_text("[limits\n")
    line = one_error(cli("backends", *option, *explain), code)
    assert line.startswith(message)


def test_backends_lists_under_a_good_policy_and_ignores_a_broken_discovered_one(cli, isolated):
    (isolated / "good.toml").write_text("[limits]\nmemory = '32MiB'\n")
    (isolated / "sandbox.toml").write_text("[limits\n")  # not asked for: the list does not use it
    result = cli("backends", "--policy", "good.toml", "--kind", "call")
    assert result.code == 0, result
    assert "wasmtime" in result.stdout
    assert cli("backends").code == 0


# -------------------------------------------------------------------- completions install
def bash_target(data) -> object:
    folder = data / "bash-completion" / "completions"
    folder.mkdir(parents=True)
    return folder / "wasmsbx"


def test_completions_install_over_a_directory_is_refused_and_leaves_nothing(cli, isolated):
    """Was exit 100 (IsADirectoryError), with a .wasmsbx.PID.tmp left beside it."""
    target = bash_target(isolated / "data")
    target.mkdir()
    result = cli("completions", "install", "bash", env={"XDG_DATA_HOME": isolated / "data"})
    line = one_error(result, 105)
    assert line == (
        f"error: {target}: is a directory, not a file a shell can load completions from; "
        "nothing was written"
    )
    assert [p.name for p in target.parent.iterdir()] == ["wasmsbx"]


@pytest.mark.parametrize("data", ["/dev/null", "a-file"])
def test_completions_install_where_no_folder_can_be_made_is_an_output_error(cli, isolated, data):
    """XDG_DATA_HOME=/dev/null was exit 100 (NotADirectoryError)."""
    (isolated / "a-file").write_text("")
    if data == "a-file":  # (absolute: a relative XDG_DATA_HOME is ignored, round 77)
        data = str(isolated / data)
    result = cli("completions", "install", "bash", env={"XDG_DATA_HOME": data})
    line = one_error(result, 105)
    assert line.endswith("/bash-completion/completions: cannot create the folder: Not a directory")


def test_completions_install_never_replaces_a_fifo(cli, isolated):
    """A FIFO there was silently replaced by a regular file."""
    import os
    import stat

    target = bash_target(isolated / "data")
    os.mkfifo(target)
    result = cli("completions", "install", "bash", env={"XDG_DATA_HOME": isolated / "data"})
    assert "is a FIFO, not a file a shell can load completions from" in one_error(result, 105)
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert [p.name for p in target.parent.iterdir()] == ["wasmsbx"]


def test_completions_install_replaces_its_own_file(cli, isolated):
    target = bash_target(isolated / "data")
    target.write_text("old")
    result = cli("completions", "install", "bash", env={"XDG_DATA_HOME": isolated / "data"})
    assert result.code == 0, result
    assert target.read_text().startswith("# wasmsbx completion for bash")
    assert [p.name for p in target.parent.iterdir()] == ["wasmsbx"]


# -------------------------------------------------------------------- integers of 4,300+ digits
LONG = "1" * 5000


@pytest.mark.parametrize("arg", [LONG, "-" + LONG, "1_" * 3000 + "1"], ids=["5000", "neg", "_"])
def test_an_integer_of_thousands_of_digits_is_out_of_range_not_unreadable(cli, add, arg):
    """Past 4,300 digits int() refuses to convert: that was "not an integer: '1111...'"
    with all 5,000 digits in the message."""
    line = one_error(cli("run", add, "add", arg, "1"), 2)
    assert line.endswith("...) is out of range for i32")
    assert len(line) < 200


def test_leading_zeros_past_4300_digits_still_read(cli, add):
    result = cli("run", add, "add", "0" * 5000 + "7", "1")
    assert result.code == 0, result
    assert result.stdout.strip() == "8"


def test_what_is_not_an_integer_is_quoted_shortened():
    from wasmsbx.values import ValueTextError, parse_text

    for wasm_type, text in [
        ("i32", "x" * 5000),
        ("f64", "1" + "x" * 5000),
        ("v128", "i32x4:1,2,3,x" + LONG),
    ]:
        with pytest.raises(ValueTextError) as info:
            parse_text(text, wasm_type)
        assert len(str(info.value)) < 100 and "'..." in str(info.value)


def test_a_component_integer_of_thousands_of_digits_is_out_of_range():
    from wasmsbx.components import wave
    from wasmsbx.components.types import WitType
    from wasmsbx.components.values import ValueProblem

    with pytest.raises(ValueProblem) as info:
        wave.parse(LONG, WitType("s32"))
    message = str(info.value)
    assert "is out of range for s32" in message  # (Python 3.9.2 converts any length)
    assert len(message) < 200
    assert wave.parse("0" * 5000 + "7", WitType("s32")) == 7


# -------------------------------------------------------------------- small option checks
def test_an_empty_policy_path_is_a_usage_error_not_discovery(cli, add, isolated):
    """--policy '' fell back to ./sandbox.toml (or the defaults) without a word."""
    (isolated / "sandbox.toml").write_text("[limits]\nmemory = '32MiB'\n")
    for argv in (["run", add, "add", "1", "2"], ["policy", "show"]):
        line = one_error(cli(*argv, "--policy", ""), 2)
        assert line == "error: --policy '': an empty path"


def test_invoke_given_twice_is_a_usage_error(cli, add):
    """The last --invoke was the only one called."""
    line = one_error(cli("run", add, "--invoke", "add", "--invoke", "sub", "1", "2"), 2)
    assert line == "error: --invoke given twice ('add', 'sub'): a run calls one export"


@pytest.mark.parametrize("item", ["", "noDot", ".", "env."])
def test_a_host_import_that_is_not_module_dot_name_is_a_usage_error(cli, add, item):
    """Each matched no import and was accepted."""
    line = one_error(cli("audit", add, "--host-import", item), 2)
    assert line == f"error: --host-import {item!r}: not MODULE.NAME"


def test_host_imports_of_module_dot_name_are_still_taken(cli, add):
    assert cli("audit", add, "--host-import", "env.log", "--host-import", "env.*").code == 0


def test_watch_also_an_empty_path_is_a_usage_error(cli, add):
    """It watched the current folder, whole."""
    line = one_error(cli("watch", add, "add", "1", "2", "--also", "", timeout=30), 2)
    assert line == "error: --also '': an empty path"


def test_cache_clear_of_a_backend_not_known_is_refused(cli, add):
    """-b nope matched nothing: "no matching entries", exit 0. Now what run -b nope says."""
    assert cli("run", add, "add", "1", "2").code == 0
    line = one_error(cli("cache", "clear", "-b", "nope"), 104)
    assert line == "error: backend 'nope' is not known"
    assert cli("cache", "clear", "-b", "wasmtime").code == 0
