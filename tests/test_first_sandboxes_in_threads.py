"""The first sandboxes of a process made from several threads at once (a server starting):
on CPython before 3.11 their lazy imports raced ("ImportError: cannot import name
'FactsError' from partially initialized module", 5-7 of 8 threads on 3.9), so there,
once threads exist, a first sandbox imports what sandboxes need, in one thread
(runner.warm_imports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import EXAMPLES, ROOT

CALC = EXAMPLES / "components" / "calc.wasm"
THREADS = r"""
import json, sys, threading
import wasmsbx
kinds = sys.argv[1:]
errors, barrier = [], threading.Barrier(len(kinds))
def make(kind):
    barrier.wait()
    try:
        if kind == "call":
            with wasmsbx.Sandbox(b'(module (func (export "f") (result i32) i32.const 7))') as box:
                assert box.call("f") == 7
        elif kind == "command":
            with wasmsbx.Sandbox(b'(module (memory (export "memory") 1) (func (export "_start")))',
                                 kind="command") as box:
                box.run_command()
        else:
            with wasmsbx.Sandbox(kind) as box:
                assert box.call("add", 2, 3) == 5
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
threads = [threading.Thread(target=make, args=(k,)) for k in kinds]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(errors))
"""


def _python(code: str, *args: str, tmp_path) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WASMSBX_CACHE_DIR": str(tmp_path / "cache"),
        "WASMSBX_TRUST_DIR": str(tmp_path / "trust"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("attempt", range(3))
def test_first_sandboxes_made_at_once_from_threads(tmp_path, attempt):
    kinds = ["call", "command"] * 3
    if CALC.exists():
        kinds += [str(CALC)] * 2
    assert json.loads(_python(THREADS, *kinds, tmp_path=tmp_path)) == []


# Every kind of first sandbox, after warm_imports (called on any Python): the modules it
# imports still. None, or WARM_IMPORTS misses what sandboxes import lazily.
AFTER_WARM = r"""
import json, sys
import wasmsbx
from wasmsbx import runner, policy as policy_mod
runner.warm_imports(runner.WARM_IMPORTS)
if len(sys.argv) > 1:
    runner.warm_imports(runner.WARM_COMPONENTS)
before = set(sys.modules)
policy = policy_mod.defaults()
policy_mod.override(policy, "runtime.cache_min_size", 0)  # through the cache too
with wasmsbx.Sandbox(b'(module (func (export "f") (result i32) i32.const 7))', policy) as box:
    box.call("f")
with wasmsbx.Sandbox(b'(module (memory (export "memory") 1) (func (export "_start")))',
                     policy, kind="command") as box:
    box.run_command()
host = {"env": {"g": wasmsbx.func(lambda x: x + 1, params=["i32"], results=["i32"])}}
wat = (b'(module (import "env" "g" (func $g (param i32) (result i32)))'
       b' (func (export "f") (result i32) (call $g (i32.const 1))))')
with wasmsbx.Sandbox(wat, policy, imports=host) as box:
    box.call("f")
with wasmsbx.Sandbox(b'(module (func (export "t") unreachable))', policy) as box:
    try:
        box.call("t")
    except wasmsbx.errors.TrapError:
        pass
if len(sys.argv) > 1:
    with wasmsbx.Sandbox(sys.argv[1], policy) as box:
        box.call("add", 2, 3)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_warm_imports_cover_what_first_sandboxes_import(tmp_path):
    args = [str(CALC)] if CALC.exists() else []
    assert json.loads(_python(AFTER_WARM, *args, tmp_path=tmp_path)) == []
