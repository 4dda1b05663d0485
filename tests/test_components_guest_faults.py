"""A component that breaks the canonical ABI at call time is a guest fault (#15).

Found comparing with the wasmtime CLI 49: a function returning a string that is not
UTF-8 made wasmtime fail the call ("invalid utf-8 sequence"), and wasmsbx reported it as
"cannot instantiate component" (exit 102, a setup error) although the instance was up
and the call was made: it is the guest's fault, exit 103 as a trap.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .component_guests import wasmtime_cli

# bad() -> string: 2 bytes at offset 32, "\xc3(" (a lead byte, then no continuation).
BAD_UTF8 = """
(component
  (core module $m
    (memory (export "memory") 1)
    (data (i32.const 32) "\\c3(")
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
    (func (export "bad") (result i32)
      (i32.store (i32.const 16) (i32.const 32))
      (i32.store (i32.const 20) (i32.const 2))
      (i32.const 16))
    (func (export "ok") (result i32) (i32.const 7)))
  (core instance $i (instantiate $m))
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "cabi_realloc" (core func $realloc))
  (func (export "bad") (result string)
    (canon lift (core func $i "bad") (memory $mem) (realloc $realloc)))
  (func (export "ok") (result s32) (canon lift (core func $i "ok")))
)
"""


@pytest.fixture
def bad(tmp_path):
    import wasmtime

    path = tmp_path / "bad.wasm"
    path.write_bytes(bytes(wasmtime.wat2wasm(BAD_UTF8)))
    return path


def test_invalid_utf8_result_is_a_trap_not_a_setup_error(cli, bad):
    out = cli("run", "--json", str(bad), "bad")
    assert out.code == 103, out.stderr
    error = json.loads(out.stdout)["error"]
    assert error["kind"] == "trap"
    assert "bad failed: invalid utf-8" in error["message"]
    assert "instantiate" not in error["message"]


def test_the_instance_is_replaced_after_it(bad):
    from wasmsbx import Sandbox, errors

    box = Sandbox(bad)
    with pytest.raises(errors.TrapError, match="invalid utf-8"):
        box.call("bad")
    assert box.call("ok") == 7  # a fresh instance: wasmtime refuses the old one
    box.close()


def test_wasmtime_cli_fails_the_same_call(bad):
    proc = subprocess.run(
        [str(wasmtime_cli()), "run", "--invoke", "bad()", str(bad)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert b"invalid utf-8" in proc.stderr
