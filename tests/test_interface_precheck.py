"""``run`` checks the interface from the module's bytes before compiling (issue #13,
item 9): a command without ``_start``, a missing export, a wrong argument count, or
imports the sandbox does not provide fail at once, with no compile and no cache entry."""

from __future__ import annotations

import pytest

from wasmsbx import errors
from wasmsbx.runner import Sandbox
from wasmsbx.runner import sandbox as runner

from .conftest import EXAMPLES

ADD = EXAMPLES / "add.wat"
# Big enough (> runtime.cache_min_size) that a compile would be cached.
BIG_LIBRARY = (
    '(module (memory 1) (data (i32.const 0) "' + "x" * 40_000 + '") '
    '(func (export "f") (result i32) i32.const 1))'
)


@pytest.fixture
def no_compile(monkeypatch):
    """Any compile is a test failure: the checks must come first."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("compiled before the interface was checked")

    monkeypatch.setattr(Sandbox, "_compile", refuse)


@pytest.mark.parametrize(
    "kind, function, args, error, text",
    [
        ("command", None, None, errors.UsageError, "has no _start export"),
        ("call", "nope", [], errors.UsageError, "no export named 'nope'"),
        ("call", "add", ["1"], errors.UsageError, "takes 2 arguments, got 1"),
        ("call", "add", ["x", "1"], errors.UsageError, "not a valid i32"),
    ],
)
def test_refused_before_compiling(no_compile, kind, function, args, error, text):
    with pytest.raises(error, match=text):
        Sandbox(ADD, kind=kind, function=function, args=args, use_cache=False)


@pytest.mark.parametrize(
    "imports, text",
    [
        ('(import "env" "mem" (memory 1))', "memory env.mem"),
        ('(import "env" "t" (table 1 funcref))', "table env.t"),
        ('(import "env" "g" (global i32))', "global env.g"),
        ('(import "env" "log" (func (param i32)))', "function env.log"),
        ('(import "wasi_snapshot_preview1" "nope" (func))', "function wasi_snapshot_preview1.nope"),
        ('(import "wasi_unstable" "fd_write" (func))', "function wasi_unstable.fd_write"),
        (
            '(import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))',
            "WASI preview1 has (i32, i32, i32, i32) -> i32",
        ),
    ],
)
def test_imports_the_sandbox_cannot_provide(no_compile, tmp_path, imports, text):
    path = tmp_path / "m.wat"
    path.write_text(f'(module {imports} (func (export "f")))')
    with pytest.raises(errors.LinkError, match="does not provide") as info:
        Sandbox(path, kind="call", function="f", args=[], use_cache=False)
    assert text in info.value.message
    assert info.value.exit_code == 102


def test_wasi_imports_pass(tmp_path):
    path = tmp_path / "m.wat"
    path.write_text(
        '(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))) '
        '(func (export "f") (result i32) i32.const 4))'
    )
    box = Sandbox(path, kind="call", function="f", args=[], use_cache=False)
    assert box.call("f") == 4


@pytest.mark.parametrize(
    "args, code, text",
    [
        ([], 2, "has no _start export"),
        (["nope"], 2, "no export named"),
        (["f", "1"], 2, "takes 0 arguments"),
    ],
)
def test_cli_fails_fast_without_a_cache_entry(cli, isolated, tmp_path, args, code, text):
    module = tmp_path / "big.wat"
    module.write_text(BIG_LIBRARY)
    res = cli("run", module, *args, "--stats")
    assert res.code == code and text in res.stderr, res
    cache = isolated.parent / "cache"
    stored = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert stored == [], stored
    assert "compile time" not in res.stderr


def test_cli_link_error_names_the_kind(cli, tmp_path, backend):
    module = tmp_path / "m.wat"
    module.write_text('(module (import "env" "mem" (memory 1)) (func (export "f")))')
    res = cli("run", module, "f", "--backend", backend)
    assert res.code == 102 and "memory env.mem" in res.stderr and "host functions" not in res.stderr


def test_check_interface_accepts_what_it_cannot_read():
    """Bytes the reader cannot parse are left to the runtime's own error."""
    runner.check_interface(b"\0asm\x01\0\0\0\x63", "x.wasm", "command")


def test_an_import_name_with_a_control_character_keeps_the_error_on_one_line():
    """Found by test_malformed's byte flips: "\\nasi_snapshot_preview1" printed a newline."""
    wat = b'(module (import "\\0aasi" "args_get" (func (param i32 i32) (result i32))))'
    with pytest.raises(errors.LinkError) as caught:
        Sandbox(wat, backend="wasmtime")
    assert "\n" not in caught.value.message and "\\nasi.args_get" in caught.value.message
