"""Findings of earlier red team rounds fixed later: what the Python API handed out must
never reach freed memory, whatever the host code keeps."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Each case runs in a child: on the code before the fix it dies with SIGSEGV.
KEPT_SLICE = """
import gc
import wasmsbx

WAT = b'(module (memory (export "memory") 1) (func (export "f")))'
box = wasmsbx.Sandbox(WAT, backend="wasmtime")
with box.memory().view() as view:
    kept = view[0:16]  # outlives the block (the view itself is released there)
    kept[0] = 7
del box, view
gc.collect()
others = [wasmsbx.Sandbox(WAT, backend="wasmtime") for _ in range(50)]
del others
gc.collect()
kept[1] = 8
print(bytes(kept[:2]).hex())
"""

KEPT_BY_A_HOST_FUNCTION = r"""
import gc
import wasmsbx

kept = []

def grab(caller: wasmsbx.Caller) -> None:
    with caller.memory().view() as view:
        kept.append(view[0:16])

WAT = b'''(module (import "env" "grab" (func $grab)) (memory (export "memory") 1)
  (data (i32.const 0) "\\05")
  (func (export "f") (call $grab)))'''
box = wasmsbx.Sandbox(WAT, backend="wasmtime", imports={"env": {"grab": grab}})
box.call("f")
del box
gc.collect()
def idle(caller: wasmsbx.Caller) -> None:
    pass

others = [wasmsbx.Sandbox(WAT, backend="wasmtime", imports={"env": {"grab": idle}})
          for _ in range(50)]
del others
gc.collect()
kept[0][1] = 9
print(bytes(kept[0][:2]).hex())
"""


def _run(script: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, timeout=120
    )
    assert out.returncode == 0, (out.returncode, out.stderr.decode()[-2000:])
    return out.stdout.decode().strip()


def test_a_slice_of_a_memory_view_keeps_the_memory_after_the_sandbox_is_dropped():
    assert _run(KEPT_SLICE) == "0708"


def test_a_slice_a_host_function_keeps_of_its_callers_memory_stays_valid():
    assert _run(KEPT_BY_A_HOST_FUNCTION) == "0509"


# A cycle through the runtime: the store keeps the externref, which keeps the object,
# which keeps the sandbox, which keeps the store. No collector sees it; the store was
# freed last at exit, after the code that releases its externrefs (SIGSEGV or SIGILL).
EXTERNREF_CYCLE = """
import wasmsbx

WAT = b'''(module (table $t 1 externref)
  (func (export "keep") (param externref) (table.set $t (i32.const 0) (local.get 0))))'''


class Holder:
    pass


box = wasmsbx.Sandbox(WAT, backend="wasmtime")
holder = Holder()
holder.box = box
box.call("keep", holder)
del holder, box
print("done")
"""


def test_an_externref_that_holds_its_own_sandbox_does_not_crash_the_exit():
    assert _run(EXTERNREF_CYCLE) == "done"
