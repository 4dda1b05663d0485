"""The same behaviour on every available backend and compiler (the ``backend`` fixture).

Each test runs once per label (wasmtime, and on the Python 3.9 leg wasmer:cranelift,
wasmer:llvm, wasmer:singlepass) and is skipped only when the label does not declare a
capability it needs. CLI tests pass ``--backend <label>``; library tests use Sandbox.
"""

from __future__ import annotations

import pytest

from wasmsbx import errors
from wasmsbx import policy as policy_mod
from wasmsbx.runner import Sandbox

from .conftest import EXAMPLES, GUESTS, capabilities_of, require_capability

FSPROBE = GUESTS / "fsprobe.wasm"

# No multi-value and no SIMD, so every compiler can run it.
BASIC = """
(module
  (global $count (mut i32) (i32.const 0))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "mul64") (param i64 i64) (result i64) (i64.mul (local.get 0) (local.get 1)))
  (func (export "add_f32") (param f32 f32) (result f32) (f32.add (local.get 0) (local.get 1)))
  (func (export "hypot") (param f64 f64) (result f64)
    (f64.sqrt (f64.add (f64.mul (local.get 0) (local.get 0))
                       (f64.mul (local.get 1) (local.get 1)))))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "inc") (result i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (global.get $count))
  (func (export "nothing"))
)
"""

QUIT = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "quit") (param i32) (call $exit (local.get 0)))
)
"""


@pytest.fixture
def basic(tmp_path):
    path = tmp_path / "basic.wat"
    path.write_text(BASIC)
    return path


def box(path, backend, **overrides) -> Sandbox:
    policy = policy_mod.defaults()
    for dotted, value in overrides.items():
        policy_mod.override(policy, dotted.replace("__", "."), value)
    return Sandbox(path, policy, backend=backend)


# ---------------------------------------------------------------------------- invoke


def test_invoke_typed_args(cli, backend, basic):
    assert cli("run", basic, "add", "5", "3", "--backend", backend).stdout == "8\n"
    assert cli("run", basic, "add", "-5", "0x10", "--backend", backend).stdout == "11\n"
    assert cli("run", basic, "add", "2147483647", "1", "--backend", backend).stdout == (
        "-2147483648\n"
    )
    result = cli("run", basic, "mul64", "4000000000", "3", "--backend", backend)
    assert result.stdout == "12000000000\n"
    assert cli("run", basic, "add_f32", "0.1", "0.2", "--backend", backend).stdout == "0.3\n"
    assert cli("run", basic, "hypot", "3", "4", "--json", "--backend", backend).json()[
        "results"
    ] == [{"type": "f64", "value": 5.0}]
    assert cli("run", basic, "nothing", "--backend", backend).stdout == ""


def test_invoke_through_the_library_keeps_instance_state(backend, basic):
    sandbox = box(basic, backend)
    try:
        assert sandbox.call("inc") == 1
        assert sandbox.call("inc") == 2
        assert sandbox.call("add", 2, 3) == 5
        assert sandbox.call("inc") == 3
        result = sandbox.invoke("add", ["1", "2"])
        assert result.values == [3] and result.stats.backend == backend.split(":")[0]
    finally:
        sandbox.close()


def test_multi_value(cli, backend):
    require_capability(backend, "multi-value")
    result = cli("run", EXAMPLES / "add.wat", "divmod", "17", "5", "--backend", backend)
    assert (result.code, result.stdout) == (0, "3\n2\n")
    result = cli("run", GUESTS / "types.wat", "two_results", "3", "--backend", backend)
    assert (result.code, result.stdout) == (0, "4\n30000000000\n")


def test_bad_arguments_are_usage_errors(cli, backend, basic):
    result = cli("run", basic, "add", "1", "--backend", backend)
    assert result.code == 2 and "add takes 2 arguments, got 1" in result.stderr
    result = cli("run", basic, "add", "1", "2", "3", "--backend", backend)
    assert result.code == 2 and "got 3" in result.stderr
    result = cli("run", basic, "add", "x", "1", "--backend", backend)
    assert result.code == 2 and "is not a valid i32" in result.stderr
    result = cli("run", basic, "nope", "--backend", backend)
    assert result.code == 2 and "no export named 'nope'" in result.stderr


# ---------------------------------------------------------------------------- errors


def test_trap_backtrace_names_functions(cli, backend):
    require_capability(backend, "backtrace")
    result = cli("run", GUESTS / "trap.wat", "boom", "--backend", backend, "--json")
    assert result.code == 103
    error = result.json()["error"]
    assert error["kind"] == "trap" and "unreachable" in error["message"]
    names = [frame.split()[0].split("!")[-1] for frame in error["backtrace"]]
    assert names[:4] == ["inner", "middle", "outer", "boom"]


def test_invalid_module_is_a_module_error(cli, backend, tmp_path):
    path = tmp_path / "bad.wasm"
    path.write_bytes(b"\0asm\x01\0\0\0\x01\xff")
    result = cli("run", path, "f", "--backend", backend)
    assert result.code == 102 and result.stderr.startswith("error: ")


def test_proc_exit_in_a_called_function(backend, tmp_path):
    path = tmp_path / "quit.wat"
    path.write_text(QUIT)
    sandbox = box(path, backend)
    try:
        with pytest.raises(errors.TrapError) as info:
            sandbox.call("quit", 7)
        assert info.value.context["exit_code_guest"] == 7
        assert "proc_exit(7)" in info.value.message
    finally:
        sandbox.close()


# ---------------------------------------------------------------------------- WASI


def test_wasi_argv_exit_codes_and_binary_stdin(cli, backend):
    result = cli("run", FSPROBE, "--backend", backend, "--", "args", "a b", "", "-x")
    assert (result.code, result.stdout) == (0, "a b\n\n-x\n")
    for code in (0, 3, 125):
        assert cli("run", FSPROBE, "--backend", backend, "--", "exit", str(code)).code == code
    data = bytes(range(256)) * 300  # more than a pipe buffer, every byte value
    result = cli("run", FSPROBE, "--backend", backend, "--", "cat-stdin", input=data)
    assert result.code == 0 and result.stdout_bytes == data


def test_no_grant_means_no_host_files(cli, backend):
    """Without grants the guest reaches nothing, absolute paths included."""
    for path in ("/etc/passwd", "etc/passwd", "/", "../etc/passwd"):
        result = cli("run", FSPROBE, "--backend", backend, "--", "read", path)
        assert result.code == 1 and result.stdout == "", (path, result)
        assert result.stderr.startswith("err E"), result


# ---------------------------------------------------------------------------- limits


def test_timeout_stops_a_guest_blocked_in_a_host_call(cli, backend):
    args = ("run", FSPROBE, "--timeout", "300ms", "--backend", backend, "--", "sleep", "5000")
    result = cli(*args)
    assert result.code == 112


def test_timeout_in_the_library_and_after(backend):
    sandbox = box(GUESTS / "spin.wat", backend, limits__timeout="200ms")
    try:
        with pytest.raises(errors.TimeoutExceeded) as info:
            sandbox.call("spin")
        assert info.value.exit_code == 112
    finally:
        sandbox.close()


def test_memory_grow_beyond_the_cap_returns_minus_one(cli, backend):
    result = cli(
        "run", GUESTS / "memgrow_loop.wat", "run", "--memory", "1MiB", "--backend", backend
    )
    assert (result.code, result.stdout) == (0, "16\n")
    assert "memory limit 1 MiB reached" in result.stderr


def test_memory_cap_is_per_policy_in_one_process(backend):
    """Two sandboxes of one module with different caps (wasmer recompiles per cap)."""
    small = box(GUESTS / "memgrow_loop.wat", backend, limits__memory="640KiB")
    large = box(GUESTS / "memgrow_loop.wat", backend, limits__memory="2MiB")
    try:
        assert small.call("run") == 10
        assert large.call("run") == 32
        assert small.invoke("run").stats.memory_bytes == 10 * 65536
    finally:
        small.close()
        large.close()


def test_table_grow_stops_at_the_table_limit(cli, backend, tmp_path):
    policy = tmp_path / "sandbox.toml"
    policy.write_text("[limits]\ntable_elements = 50\n")
    result = cli("run", GUESTS / "table_grow.wat", "grow_table", "-p", policy, "--backend", backend)
    assert (result.code, result.stdout) == (0, "50\n")


def test_limits_a_backend_lacks_are_refused_not_ignored(backend, basic):
    """A limit or grant the backend cannot enforce never runs silently unenforced."""
    caps = capabilities_of(backend)
    cases = [("fuel", {"limits__fuel": 1000}), ("stack-limit", {"limits__stack": "1MiB"})]
    for capability, overrides in cases:
        if caps.has(capability):
            box(basic, backend, **overrides).close()
        else:
            with pytest.raises(errors.BackendUnavailable) as info:
                box(basic, backend, **overrides)
            assert f"lacks {capability}" in info.value.message
