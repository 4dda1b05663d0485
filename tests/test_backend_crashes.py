"""Crashes found by attacking the backends, each fixed at its cause (issue #13, item 12).

wasmer: the module was capped (its memory maximum rewritten) before it was validated, so
``(memory 0 65537)`` ran and a truncated memory section raised IndexError; pyo3's
PanicException (a BaseException) escaped ``except`` as a raw traceback when a compiler
was named (an exception tag on any compiler; a v128 global on singlepass) and when a
guest polled the monotonic clock. wasmtime: a runtime error lost its cause.
"""

from __future__ import annotations

import pytest

from wasmsbx import errors

from .conftest import capabilities_of

POLL_MONOTONIC = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))    ;; a clock subscription
    (i32.store (i32.const 16) (i32.const 1))    ;; on the monotonic clock
    (i64.store (i32.const 24) (i64.const 1000)) ;; for 1 us
    (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 256)))))
"""


def _clean(res) -> None:
    assert "Traceback" not in res.stderr and "error: internal error" not in res.stderr, res


def _write(tmp_path, name: str, text) -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_invalid_memory_maximum_is_refused(cli, backend, tmp_path):
    module = _write(tmp_path, "m.wat", '(module (memory 0 65537) (func (export "_start")))')
    res = cli("run", module, "--backend", backend)
    assert res.code == 102 and "65536" in res.stderr, res
    _clean(res)


@pytest.mark.parametrize(
    "data",
    [
        b"\0asm\x01\0\0\0\x05\x03\x01\x01",  # memory section cut inside its limits
        b"\0asm\x01\0\0\0\x05\x02\x01\x05",  # unknown limits flags
        b"\0asm\x01\0\0\0\x04\x04\x01\x70\x01",  # table section cut
    ],
)
def test_truncated_limits_are_module_errors(cli, backend, tmp_path, data):
    res = cli("run", _write(tmp_path, "m.wasm", data), "--backend", backend)
    assert res.code == 102, res
    _clean(res)


def test_exception_tag_on_a_named_compiler(cli, backend, tmp_path):
    module = _write(tmp_path, "tag.wat", '(module (tag $e (param i32)) (func (export "_start")))')
    res = cli("run", module, "--backend", backend)
    if capabilities_of(backend).has("exceptions"):
        assert res.code == 0, res
    else:
        assert res.code == errors.ExitCode.BACKEND_UNAVAILABLE and "exceptions" in res.stderr
    _clean(res)


def test_v128_global_on_a_named_compiler(cli, backend, tmp_path):
    module = _write(
        tmp_path,
        "g.wat",
        "(module (global $g (mut v128) (v128.const i32x4 1 2 3 4)) "
        '(func (export "f") (result i32) (global.get $g) (i32x4.extract_lane 1)))',
    )
    res = cli("run", module, "f", "--backend", backend)
    if capabilities_of(backend).has("simd"):
        assert res.code == 0 and res.stdout == "2\n", res
    else:
        assert res.code == errors.ExitCode.BACKEND_UNAVAILABLE and "simd" in res.stderr, res
    _clean(res)


def test_poll_oneoff_on_the_monotonic_clock(cli, backend, tmp_path):
    res = cli("run", _write(tmp_path, "poll.wat", POLL_MONOTONIC), "--backend", backend)
    _clean(res)
    if backend.startswith("wasmer"):  # wasmer 2.1 panics: a clear error, not exit 100
        assert res.code == errors.ExitCode.TRAP and "wasmer panicked" in res.stderr, res
    else:
        assert res.code == 0, res


def test_runtime_error_keeps_its_cause(cli, tmp_path):
    """wasmtime's "error while executing at wasm backtrace:" is followed by the cause.
    (A WASI call refusing a misaligned pointer is the guest's trap, 103, since round
    40: it was a module error, 102.)"""
    bad = POLL_MONOTONIC.replace("(i32.const 128)", "(i32.const 100)")  # misaligned events
    res = cli("run", _write(tmp_path, "poll.wat", bad), "--backend", "wasmtime")
    assert res.code == 103 and "aligned" in res.stderr, res
    assert "wasm backtrace:" not in res.stderr


# A function section and an export, but no type section (found by tests/test_fuzz.py).
NO_TYPES = (
    b"\0asm\x01\0\0\0"
    b"\x03\x02\x01\x00"  # one function of type 0, which does not exist
    b"\x07\x05\x01\x01f\x00\x00"  # export "f"
    b"\x0a\x04\x01\x02\x00\x0b"  # its body
)


@pytest.mark.parametrize("command", ["run", "bench"])
def test_export_without_a_type_section(cli, tmp_path, command):
    extra = ["-n", "1", "--budget", "1s"] if command == "bench" else []
    res = cli(command, _write(tmp_path, "m.wasm", NO_TYPES), "f", *extra)
    assert res.code == 102 and "no valid function type" in res.stderr, res
    _clean(res)
