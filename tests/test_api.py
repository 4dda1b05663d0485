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
