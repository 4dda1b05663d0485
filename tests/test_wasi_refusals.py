"""A WASI call that refuses what the guest passed it (a pointer not aligned or out of
bounds) is the guest's fault at run time: a trap (103, ``trap_code == "wasi"``), after
which a batch gives the next item a new instance. Round 40: it was a ModuleError (102),
as if the module were broken, and batch kept the instance. A WASI call that cannot work
because of the module itself (no memory export) stays a ModuleError.

wasmtime's WASI checks alignment; wasmer's does not (the same call there writes), so
these run on wasmtime."""

from __future__ import annotations

import pytest

import wasmsbx
from wasmsbx import errors

from .conftest import BACKENDS

pytestmark = pytest.mark.skipif("wasmtime" not in BACKENDS, reason="wasmtime's WASI checks")

IMPORT = (
    '(import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))'
)
UNALIGNED = f"""(module {IMPORT} (memory (export "memory") 1)
 (global $n (mut i32) (i32.const 0))
 (func (export "f") (param $iovs i32) (result i32)
  (global.set $n (i32.add (global.get $n) (i32.const 1)))
  (drop (call $w (i32.const 1) (local.get $iovs) (i32.const 1) (i32.const 64)))
  (global.get $n)))"""
NO_MEMORY = f"""(module {IMPORT}
 (func (export "f") (result i32)
  (call $w (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 64))))"""


def test_an_unaligned_pointer_is_a_trap():
    box = wasmsbx.Sandbox(UNALIGNED.encode(), backend="wasmtime")
    with pytest.raises(errors.TrapError) as info:
        box.call("f", 3)
    assert info.value.trap_code == "wasi" and info.value.exit_code == 103
    assert "Pointer not aligned" in info.value.message
    assert not isinstance(info.value, errors.ModuleError)


def test_a_module_without_memory_is_still_a_module_error():
    box = wasmsbx.Sandbox(NO_MEMORY.encode(), backend="wasmtime")
    with pytest.raises(errors.ModuleError, match="missing required memory export"):
        box.call("f")


def test_batch_gives_the_item_after_such_a_trap_a_new_instance():
    box = wasmsbx.Sandbox(UNALIGNED.encode(), backend="wasmtime")
    results = list(box.batch("f", [[0], [0], [3], [0]]))
    assert [r.values for r in results] == [[1], [2], None, [1]]
    assert results[2].error["kind"] == "trap"


def test_the_command_line_exits_103(cli, tmp_path):
    module = tmp_path / "bad.wat"
    module.write_text(UNALIGNED)
    run = cli("run", str(module), "f", "3")
    assert run.code == 103 and "a WASI call refused its arguments" in run.stderr, run


def test_the_whole_chain_of_causes_is_in_the_message():
    """Round 42: only the first of wasmtime's numbered causes was kept ("0: failed to
    call `get-random-bytes`"), not why."""
    wat = """(module
     (import "wasi_snapshot_preview1" "random_get" (func $r (param i32 i32) (result i32)))
     (memory (export "memory") 1)
     (func (export "f") (result i32) (call $r (i32.const 0) (i32.const 0x7fffffff))))"""
    with pytest.raises(errors.TrapError) as info:
        wasmsbx.Sandbox(wat.encode(), backend="wasmtime").call("f")
    assert info.value.trap_code == "wasi"
    assert "get-random-bytes" in info.value.message and "exceeds limit" in info.value.message
