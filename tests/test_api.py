"""The Python API: wasmsbx.run and Sandbox, on every available backend."""

from __future__ import annotations

import pytest

import wasmsbx
from wasmsbx import policy as P
from wasmsbx.errors import FuelExhausted, TrapError, UsageError

from .conftest import EXAMPLES, GUESTS, require_capability, require_module

ADD = EXAMPLES / "add.wat"


def test_run_function():
    assert wasmsbx.run(ADD, "add", 5, 3) == 8
    assert wasmsbx.run(ADD, "divmod", 17, 5) == (3, 2)
    assert wasmsbx.run(GUESTS / "types.wat", "no_result") is None
    assert wasmsbx.run(ADD, "add", "0x10", "1") == 17  # strings are parsed by type


def test_sandbox_reuses_instance(backend):
    require_module(backend, ADD)  # divmod is multi-value
    box = wasmsbx.Sandbox(ADD, P.defaults(), backend=backend)
    assert box.call("add", 1, 2) == 3
    assert box.call("hypot", 3, 4) == 5.0
    assert [e.name for e in box.exports if e.kind == "func"][:2] == ["add", "mul64"]
    box.close()


def test_sandbox_errors(backend):
    require_module(backend, ADD)  # divmod is multi-value
    box = wasmsbx.Sandbox(ADD, P.defaults(), backend=backend)
    with pytest.raises(UsageError, match="takes 2 arguments"):
        box.call("add", 1)
    with pytest.raises(TrapError, match="divide by zero"):
        box.call("div", 1, 0)
    box.close()


def test_sandbox_fuel(backend):
    require_capability(backend, "fuel")
    pol = P.defaults()
    P.override(pol, "limits.fuel", 1000)
    box = wasmsbx.Sandbox(EXAMPLES / "loop.wat", pol, backend=backend)
    with pytest.raises(FuelExhausted) as info:
        box.call("spin")
    assert info.value.exit_code == 111
    box.close()


def test_run_command_capture(backend):
    box = wasmsbx.Sandbox(EXAMPLES / "wasi" / "hello.wasm", P.defaults(), backend=backend)
    result = box.run_command(["x", "--exit", "7"], capture=True)
    assert result.exit_code == 7
    assert b"argv[1] = x" in result.stdout


def test_run_command_stdin_bytes(backend):
    box = wasmsbx.Sandbox(GUESTS / "fsprobe.wasm", P.defaults(), backend=backend)
    result = box.run_command(["cat-stdin"], stdin=b"abc\x00def", capture=True)
    assert (result.exit_code, result.stdout) == (0, b"abc\x00def")


def test_version():
    assert wasmsbx.__version__.count(".") == 2


# ---------------------------------------------------------------------------- issue 14


def test_sandbox_from_bytes_text_and_binary(backend):
    wat = b'(module (func (export "f") (result i32) i32.const 5))'
    with wasmsbx.Sandbox(wat, P.defaults(), backend=backend) as box:
        assert box.call("f") == 5
    from wasmsbx.runner.sandbox import read_module

    binary = read_module(ADD)
    require_module(backend, ADD)
    with wasmsbx.Sandbox(bytearray(binary), P.defaults(), backend=backend) as box:
        assert box.call("add", 2, 2) == 4
    with pytest.raises(wasmsbx.errors.ModuleError):
        wasmsbx.Sandbox(b"\0asm\x01\0\0\0\xff", P.defaults(), backend=backend)


def test_call_forms(backend):
    require_module(backend, ADD)
    with wasmsbx.Sandbox(ADD, P.defaults(), backend=backend) as box:
        assert box.exports.add(1, 2) == 3
        assert box["add"](3, 4) == 7
        assert str(box["add"].signature) == "(i32, i32) -> i32"
        with pytest.raises(UsageError, match="no export named 'ad'"):
            box["ad"]
        with pytest.raises(AttributeError):
            box.exports.nope  # noqa: B018
    box.close()  # closing twice is fine


def test_per_call_limits_only_lower_the_policy(backend):
    pol = P.defaults()
    P.override(pol, "limits.timeout", 5)
    with wasmsbx.Sandbox(EXAMPLES / "loop.wat", pol, backend=backend) as box:
        with pytest.raises(UsageError, match="above the policy"):
            box.call("spin", timeout=6)
        with pytest.raises(UsageError, match="needs a policy with limits.fuel"):
            box.call("spin", fuel=10)
        for odd in (float("nan"), 0, -1, "1s", True):  # (NaN slipped through: red team 24)
            with pytest.raises(UsageError, match="a positive number of seconds"):
                box.call("spin", timeout=odd)
        assert box.call("count", 7, timeout=1) == 7  # (wasmer's pipe kept in step)
        with pytest.raises(wasmsbx.errors.TimeoutExceeded, match=r"after 200(\.0)? ?ms"):
            box.call("spin", timeout=0.2)  # (the call's timeout is the one reported)


def test_per_call_fuel(backend):
    require_capability(backend, "fuel")
    pol = P.defaults()
    P.override(pol, "limits.fuel", 10_000_000)
    with wasmsbx.Sandbox(EXAMPLES / "loop.wat", pol, backend=backend) as box:
        with pytest.raises(FuelExhausted) as caught:
            box.call("spin", fuel=1000)
        if backend.startswith("wasmtime"):  # (the call's fuel, not the policy's)
            assert "after 1,000 units" in str(caught.value), caught.value
        with pytest.raises(UsageError, match="above the policy"):
            box.call("spin", fuel=10_000_001)


def test_memory_is_range_checked(backend):
    pol = P.defaults()
    P.override(pol, "limits.memory", "2MiB")
    with wasmsbx.Sandbox(EXAMPLES / "reactor.wat", pol, backend=backend) as box:
        memory = box.memory()
        assert memory.size == 65536 and memory.pages == 1
        memory.write(100, b"abc")
        assert memory.read(100, 3) == b"abc"
        for offset, length in ((-1, 1), (65535, 2), (2**64, 1), (0, -1)):
            with pytest.raises(IndexError):
                memory.read(offset, length)
        with pytest.raises(IndexError):
            memory.write(65534, b"xyz")
        assert memory.grow(1) == 1 and memory.size == 2 * 65536
        with pytest.raises(wasmsbx.errors.MemoryLimitExceeded):
            memory.grow(100)
        with pytest.raises(UsageError, match="no memory named"):
            box.memory("other")


def test_memory_view_is_released(backend):
    with wasmsbx.Sandbox(EXAMPLES / "reactor.wat", P.defaults(), backend=backend) as box:
        memory = box.memory()
        if backend.startswith("wasmer"):
            with pytest.raises(wasmsbx.errors.BackendUnavailable), memory.view():
                pass
            return
        with memory.view() as view:
            view[0:2] = b"hi"
        assert memory.read(0, 2) == b"hi"
        with pytest.raises(ValueError):
            view[0]  # released at the end of the block  # noqa: B018


def test_public_names_resolve():
    for name in wasmsbx.__all__:
        assert getattr(wasmsbx, name) is not None
    with pytest.raises(AttributeError):
        wasmsbx.nope  # noqa: B018


def test_sandbox_from_artifact_bytes_is_verified(cli, tmp_path):
    out = tmp_path / "add.cwasm"
    assert cli("compile", ADD, "-o", out, "--backend", "wasmtime", "--interruptible").code == 0
    data = out.read_bytes()
    with wasmsbx.Sandbox(data, P.defaults()) as box:
        assert box.artifact is not None and box.call("add", 2, 3) == 5
    tampered = bytearray(data)
    tampered[-100] ^= 1
    with pytest.raises(wasmsbx.errors.ModuleError, match="refused precompiled artifact"):
        wasmsbx.Sandbox(bytes(tampered), P.defaults())
