"""`wasmsbx run` through the real entry point, on every available backend."""

from __future__ import annotations

import pytest

from .conftest import EXAMPLES, GUESTS, capabilities_of, require_module

ADD = EXAMPLES / "add.wat"
TYPES = GUESTS / "types.wat"
HELLO = EXAMPLES / "wasi" / "hello.wasm"


def test_add_prints_8(cli, backend):
    require_module(backend, ADD)  # skips labels lacking a feature they use
    res = cli("run", ADD, "add", "5", "3", "--backend", backend)
    assert (res.code, res.stdout, res.stderr) == (0, "8\n", "")


@pytest.mark.parametrize(
    "func, args, out",
    [
        ("add", ["-5", "3"], "-2"),
        ("add", ["0x10", "1_000"], "1016"),
        ("add", ["4294967295", "1"], "0"),  # u32 max wraps to -1
        ("add", ["2147483647", "1"], "-2147483648"),
        ("mul64", ["4294967296", "3"], "12884901888"),
        ("mul64", ["-0x8000000000000000", "1"], "-9223372036854775808"),
        ("hypot", ["3", "4"], "5.0"),
        ("hypot", ["inf", "1"], "inf"),
        ("divmod", ["17", "5"], "3\n2"),
    ],
)
def test_typed_arguments(cli, backend, func, args, out):
    require_module(backend, ADD)  # skips labels lacking a feature they use
    res = cli("run", ADD, func, *args, "--backend", backend)
    assert res.code == 0, res
    assert res.stdout == out + "\n"


def test_float_types(cli, backend):
    require_module(backend, TYPES)  # skips labels lacking a feature they use
    res = cli("run", TYPES, "id_f32", "0.1", "--backend", backend)
    assert res.stdout == "0.1\n"  # shortest f32 form, not 0.10000000149011612
    res = cli("run", TYPES, "id_f64", "nan", "--backend", backend)
    assert res.stdout == "nan\n"
    res = cli("run", TYPES, "id_f64", "-inf", "--backend", backend)
    assert res.stdout == "-inf\n"
    res = cli("run", TYPES, "id_i64", "-0x7fffffffffffffff", "--backend", backend)
    assert res.stdout == "-9223372036854775807\n"


def test_no_result_and_two_results(cli, backend):
    require_module(backend, TYPES)  # skips labels lacking a feature they use
    assert cli("run", TYPES, "no_result", "--backend", backend).stdout == ""
    res = cli("run", TYPES, "two_results", "4", "--backend", backend, "--json")
    data = res.json()
    assert data["results"] == [{"type": "i32", "value": 5}, {"type": "i64", "value": 40000000000}]


def test_json_output(cli, backend):
    require_module(backend, ADD, TYPES)  # skips labels lacking a feature they use
    res = cli("run", ADD, "hypot", "3", "4", "--json", "--backend", backend)
    data = res.json()
    assert data["function"] == "hypot"
    assert data["results"] == [{"type": "f64", "value": 5.0}]
    assert data["stats"]["backend"] == backend.split(":")[0]
    res = cli("run", TYPES, "id_f64", "inf", "--json", "--backend", backend)
    assert res.json()["results"][0]["value"] == "inf"


def test_options_after_args_and_double_dash(cli, backend):
    require_module(backend, ADD)  # skips labels lacking a feature they use
    assert cli("run", "--backend", backend, ADD, "add", "--", "-5", "-3").stdout == "-8\n"
    assert cli("run", ADD, "add", "-1", "-1", f"--backend={backend}").stdout == "-2\n"


@pytest.mark.parametrize(
    "args, needle, hint",
    [
        (["add", "1"], "add takes 2 arguments, got 1", "signature: add (i32, i32) -> i32"),
        (["add", "1", "2", "3"], "add takes 2 arguments, got 3", "signature"),
        (["add", "x", "2"], "argument 1 ('x') is not a valid i32", "0xff"),
        (["add", "4294967296", "0"], "out of range for i32", "-2147483648 .. 4294967295"),
        (["hypot", "abc", "1"], "not a valid f64", "inf"),
        (["ad", "1", "2"], "no export named 'ad'", "did you mean 'add'?"),
    ],
)
def test_usage_errors(cli, backend, args, needle, hint):
    require_module(backend, ADD)  # skips labels lacking a feature they use
    res = cli("run", ADD, *args, "--backend", backend)
    assert res.code == 2, res
    assert res.stdout == ""
    assert needle in res.stderr and hint in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ")


def test_v128_and_ref_params(cli, backend):
    """v128 and references come from the command line too (README "Values")."""
    require_module(backend, TYPES)  # skips labels lacking a feature they use
    res = cli("run", TYPES, "takes_v128", "i32x4:7,2,3,4", "--backend", backend)
    assert (res.code, res.stdout) == (0, "7\n"), res
    res = cli("run", TYPES, "takes_ref", "null", "--backend", backend)
    assert (res.code, res.stdout) == (0, "1\n"), res
    res = cli("run", TYPES, "takes_ref", "1", "--backend", backend)
    assert res.code == 2 and "not a valid externref" in res.stderr, res


def test_trap_with_backtrace(cli, backend):
    res = cli("run", GUESTS / "trap.wat", "boom", "--backend", backend)
    assert res.code == 103, res
    assert "boom trapped" in res.stderr and "unreachable" in res.stderr
    require = __import__("tests.conftest", fromlist=["capabilities_of"]).capabilities_of
    if require(backend).has("backtrace"):
        assert "inner" in res.stderr and "outer" in res.stderr
    for func, text in (("div0", "divide by zero"), ("oob", "out of bounds")):
        res = cli("run", GUESTS / "trap.wat", func, "--backend", backend)
        assert res.code == 103 and text in res.stderr, res


def test_trap_json(cli, backend):
    res = cli("run", GUESTS / "trap.wat", "div0", "--json", "--backend", backend)
    assert res.code == 103
    err = res.json()["error"]
    assert err["kind"] == "trap" and err["exit_code"] == 103


# A WASI command that writes a line to stdout and one to stderr, then traps.
PRINTS_THEN_TRAPS = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "partial output\\n")
  (data (i32.const 96) "about to abort\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 15))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 96)) (i32.store (i32.const 4) (i32.const 15))
    (drop (call $w (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    unreachable))
"""


def test_a_captured_commands_output_survives_its_failure(cli, backend, tmp_path):
    """What a command printed before it trapped reaches the --json report and the
    exception (an assert's message was lost with the instance, round 155)."""
    import wasmsbx

    module = tmp_path / "abort.wat"
    module.write_text(PRINTS_THEN_TRAPS)
    res = cli("run", module, "--json", "--backend", backend)
    assert res.code == 103, res
    data = res.json()
    assert data["error"]["kind"] == "trap"
    assert (data["stdout"], data["stderr"]) == ("partial output\n", "about to abort\n")
    from wasmsbx.errors import TrapError
    from wasmsbx.policy import from_dict

    policy = from_dict({"runtime": {"backend": backend}})
    with wasmsbx.Sandbox(str(module), policy, kind="command") as box:
        with pytest.raises(TrapError) as raised:
            box.run_command(capture=True)
        assert (raised.value.stdout, raised.value.stderr) == (
            b"partial output\n",
            b"about to abort\n",
        )
        with pytest.raises(TrapError) as raised:  # not captured: nothing held
            box.run_command()
        assert raised.value.stdout is None


def test_start_function_trap(cli, backend):
    res = cli("run", GUESTS / "start_trap.wat", "f", "--backend", backend)
    assert res.code == 103 and "start function" in res.stderr, res


def test_missing_file(cli):
    res = cli("run", "nope.wasm", "add")
    assert res.code == 105
    assert res.stderr.startswith("error: nope.wasm: no such file")


def test_directory_as_module(cli, tmp_path):
    res = cli("run", tmp_path, "add")
    assert res.code == 105 and "is a directory" in res.stderr


def test_missing_module_argument(cli):
    res = cli("run")
    assert res.code == 2 and "missing MODULE" in res.stderr


def test_unknown_option(cli):
    res = cli("run", ADD, "--jsn", "add", "1", "2")
    assert res.code == 2 and "unknown option --jsn" in res.stderr and "--json" in res.stderr


def test_option_needs_value(cli):
    res = cli("run", ADD, "add", "1", "2", "--fuel")
    assert res.code == 2 and "--fuel needs a value" in res.stderr
    res = cli("run", ADD, "add", "1", "2", "--fuel", "lots")
    assert res.code == 2 and "expected a whole number" in res.stderr


def test_invalid_module_files(cli, tmp_path):
    empty = tmp_path / "empty.wasm"
    empty.write_bytes(b"")
    res = cli("run", empty, "f")
    assert res.code == 102 and "empty file" in res.stderr
    trunc = tmp_path / "trunc.wasm"
    trunc.write_bytes(b"\0asm\1\0\0\0\1")
    res = cli("run", trunc, "f")
    assert res.code == 102 and "invalid module" in res.stderr
    bad_wat = tmp_path / "bad.wat"
    bad_wat.write_text('(module (func (export "f") (result i32) i32.const))')
    res = cli("run", bad_wat, "f")
    assert res.code == 102 and "invalid WebAssembly text" in res.stderr
    mismatch = tmp_path / "mismatch.wat"  # valid text, invalid module: wasmtime's reason
    mismatch.write_text('(module (func (export "f") (result i32) i32.const 1 i32.add))')
    res = cli("run", mismatch, "f", "--backend", "wasmtime")  # (was its first cause alone)
    assert res.code == 102 and "type mismatch: expected i32 but nothing on stack" in res.stderr
    binary = tmp_path / "junk.bin"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    res = cli("run", binary, "f")
    assert res.code == 102 and "not a WebAssembly module" in res.stderr


def test_unlinkable_imports(cli, backend):
    res = cli("run", GUESTS / "imports_env.wat", "f", "--backend", backend)
    assert res.code == 102, res
    assert "env.host_log" in res.stderr


def test_bad_policy_exit_code(cli, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text("[limits]\nmemroy = 1\n")
    res = cli("run", ADD, "add", "1", "2", "--policy", policy)
    assert res.code == 101 and "did you mean `memory`?" in res.stderr
    res = cli("run", ADD, "add", "1", "2", "--memory", "huge")  # a bad flag: a usage error
    assert res.code == 2 and "--memory: limits.memory" in res.stderr


def test_policy_discovered_in_cwd(cli, isolated):
    (isolated / "sandbox.toml").write_text("[limits]\nfuel = 1000\n")
    res = cli("run", EXAMPLES / "loop.wat", "spin")
    assert res.code == 111 and "1,000 units" in res.stderr


def test_stats_and_explain(cli, backend):
    require_module(backend, ADD)
    metered = capabilities_of(backend).has("fuel")
    fuel = ("--fuel", "1000") if metered else ()
    res = cli("run", ADD, "add", "1", "2", "--stats", *fuel, "--backend", backend)
    assert res.code == 0 and res.stdout == "3\n"
    assert "backend" in res.stderr and "compile time" in res.stderr and "run time" in res.stderr
    if metered:
        assert "fuel used" in res.stderr
    res = cli("run", ADD, "add", "1", "2", "--explain")
    assert res.code == 0 and res.stdout == "3\n"
    assert "winner:" in res.stderr and "requirements:" in res.stderr


def test_version_and_help(cli):
    res = cli("--version")
    assert res.code == 0 and res.stdout.startswith("wasmsbx ")
    for command in ("run", "backends"):
        res = cli(command, "--help")
        assert res.code == 0 and "Usage" in res.stdout


def test_wasi_command_argv_and_exit_code(cli, backend):
    res = cli("run", HELLO, "--backend", backend, "--", "alpha", "--exit", "42")
    assert res.code == 42, res
    assert "argv[1] = alpha" in res.stdout


def test_wasi_command_stdin(cli, backend):
    res = cli("run", HELLO, "--backend", backend, "--", "--stdin", input=b"piped text\n")
    assert res.code == 0 and "piped text" in res.stdout, res


def test_wasi_command_json_captures_output(cli, backend):
    res = cli("run", HELLO, "--json", "--backend", backend, "--", "--exit", "3")
    assert res.code == 3
    data = res.json()
    assert data["exit_code"] == 3 and "argv[0] = hello.wasm" in data["stdout"]


def test_not_a_command(cli):
    res = cli("run", ADD)
    assert res.code == 2 and "no _start export" in res.stderr and "add" in res.stderr


def test_stdio_policy_files(cli, backend, isolated):
    (isolated / "in.txt").write_bytes(b"from a file\n")
    (isolated / "sandbox.toml").write_text(
        '[stdio]\nstdin = "in.txt"\nstdout = "out.txt"\nstderr = "null"\n'
    )
    fsprobe = GUESTS / "fsprobe.wasm"
    res = cli("run", fsprobe, "--backend", backend, "--", "cat-stdin")
    assert res.code == 0 and res.stdout == "", res
    assert (isolated / "out.txt").read_bytes() == b"from a file\n"
    res = cli("run", fsprobe, "--backend", backend, "--", "read", "/nope")
    assert res.code == 1 and res.stderr == ""  # guest stderr went to null


def test_stdin_null_by_policy(cli, backend, isolated):
    (isolated / "sandbox.toml").write_text('[stdio]\nstdin = "null"\n')
    res = cli(
        "run", GUESTS / "fsprobe.wasm", "--backend", backend, "--", "cat-stdin", input=b"ignored"
    )
    assert res.code == 0 and res.stdout == ""


# CLI calls run in this process (see the cli fixture): none here needs the real entry point.
pytestmark = pytest.mark.inprocess


def test_a_limit_the_policy_file_set_is_named_with_the_file(cli, tmp_path):
    """Round 155: a sandbox.toml found in the working folder set a limit that later runs
    hit, and nothing said where it came from. A flag's limit is the user's own."""
    (tmp_path / "sandbox.toml").write_text("[limits]\nfuel = 1000\n")
    res = cli("run", EXAMPLES / "loop.wat", "spin", cwd=tmp_path)
    assert res.code == 111, res
    assert f"limits.fuel is 1000 in {tmp_path / 'sandbox.toml'}" in res.stderr, res.stderr
    res = cli("run", EXAMPLES / "loop.wat", "spin", "--fuel", "1000", cwd=tmp_path)
    assert res.code == 111 and " is 1000 in " not in res.stderr, res


def test_output_past_the_limit_then_a_trap_is_the_output_limit(cli, backend, tmp_path):
    """Red team 156: one write past limits.output, then a trap before the stop landed,
    was exit 103 on wasmtime (115 when the guest ended normally, and on wasmer)."""
    module = tmp_path / "big.wat"  # (one write of 60,000 bytes, then unreachable)
    module.write_text(
        '(module (import "wasi_snapshot_preview1" "fd_write"'
        " (func $w (param i32 i32 i32 i32) (result i32)))"
        ' (memory (export "memory") 1)'
        ' (func (export "_start") (i32.store (i32.const 0) (i32.const 64))'
        " (i32.store (i32.const 4) (i32.const 60000))"
        " (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))"
        " unreachable))"
    )
    (tmp_path / "p.toml").write_text("[limits]\noutput = 1000\n")
    for json_flag in ([], ["--json"]):
        res = cli("run", module, "--policy", tmp_path / "p.toml", "--backend", backend, *json_flag)
        assert res.code == 115, (json_flag, res)
