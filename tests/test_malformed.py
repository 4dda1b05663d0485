"""Malformed input never produces a traceback: truncated and random modules, bad policies."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmsbx import policy as P
from wasmsbx.errors import ModuleError, PolicyError, UsageError, WasmsbxError
from wasmsbx.runner import Sandbox

from .conftest import EXAMPLES, GUESTS

VALID = (EXAMPLES / "wasi" / "hello.wasm").read_bytes()


def attempt(tmp_path, data: bytes, name: str = "m.wasm") -> None:
    path = tmp_path / name
    path.write_bytes(data)
    try:
        box = Sandbox(path, P.defaults())
        if any(e.name == "_start" for e in box.exports):
            box.run_command(capture=True)
    except WasmsbxError as exc:
        assert exc.message and "\n" not in exc.message.strip()
        return


@pytest.mark.parametrize("cut", [0, 1, 4, 9, 20, 100, len(VALID) // 2, len(VALID) - 1])
def test_truncated_module(tmp_path, cut):
    with pytest.raises((ModuleError, UsageError)):
        Sandbox(write(tmp_path, VALID[:cut]), P.defaults())


def write(tmp_path, data: bytes):
    path = tmp_path / "m.wasm"
    path.write_bytes(data)
    return path


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_random_bytes_after_header(tmp_path, tail):
    attempt(tmp_path, b"\0asm\x01\0\0\0" + tail)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_random_bytes(tmp_path, data):
    attempt(tmp_path, data)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=200))
def test_random_text_as_wat(tmp_path, text):
    attempt(tmp_path, text.encode("utf-8"), name="m.wat")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=8, max_value=len(VALID) - 1), st.integers(0, 255))
def test_flipped_byte(tmp_path, index, value):
    data = bytearray(VALID)
    data[index] = value
    attempt(tmp_path, bytes(data))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=300))
def test_random_policy_text(tmp_path, text):
    path = tmp_path / "sandbox.toml"
    path.write_text(text, encoding="utf-8")
    try:
        P.load(path)
    except PolicyError as exc:
        assert str(path) in exc.message


VALUES = st.one_of(
    st.integers(),
    st.text(max_size=10),
    st.booleans(),
    st.floats(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(P.KEYS)), VALUES)
def test_every_key_rejects_wrong_values_cleanly(dotted, value):
    section, name = dotted.split(".")
    try:
        P.from_dict({section: {name: value}}, "fuzz.toml")
    except PolicyError as exc:
        assert exc.message.startswith(f"fuzz.toml: {dotted}")


def test_cli_random_module_no_traceback(cli, tmp_path):
    for i, data in enumerate(
        [
            b"\0asm",
            b"\0asm\x01\0\0\0\x01\xff\xff\xff\xff\x0f",
            b"\0asm\x0d\0\x01\0\x01\xff\x01",  # a component whose section runs past the end
            VALID[: len(VALID) // 3],
        ]
    ):
        path = tmp_path / f"m{i}.wasm"
        path.write_bytes(data)
        res = cli("run", path, "--", "x")
        assert res.code == 102, res
        assert "Traceback" not in res.stderr and res.stderr.startswith("error: ")


def test_malformed_component_is_refused_clearly(cli, tmp_path):
    path = tmp_path / "component.wasm"
    path.write_bytes(b"\0asm\x0d\0\x01\0\x01\xff\x01")  # a section past the end
    res = cli("run", path, "f")
    assert res.code == 102 and "Traceback" not in res.stderr
    assert "malformed component" in res.stderr


def test_guest_imports_reported(cli):
    res = cli("run", GUESTS / "imports_env.wat", "f")
    assert res.code == 102 and "env.host_log" in res.stderr
