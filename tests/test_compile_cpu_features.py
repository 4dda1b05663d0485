"""A process that sees fewer CPU features than its compile worker (run under valgrind,
whose synthetic CPU lacks AVX-VNNI and AVX-512; valgrind does not follow the worker)
could not load any module a worker compiled: "compilation setting "has_avx_vnni" is
enabled, but not available on the host" (found measuring instructions per call, round
40). It learns each feature wasmtime names, and its workers leave them off."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import wasmsbx
from wasmsbx import errors
from wasmsbx.backends import compiling

pytest.importorskip("wasmtime")

MISSING = (
    "cannot load precompiled code: compilation settings of module incompatible with "
    'native host: compilation setting "{}" is enabled, but not available on the host'
)


def _module(n: int) -> bytes:
    return (
        f'(module (func (export "f") (result i32) i32.const {n}) '
        f'(func (export "big") (param i32) (result i32) local.get 0))'
    ).encode()


@pytest.fixture
def worker_only(monkeypatch):
    """Every compile of this test goes to a worker, with nothing learned yet."""
    monkeypatch.setattr(compiling, "ISA_OFF", [])
    monkeypatch.setattr(compiling, "in_child", lambda engine, wasm: True)


def test_a_feature_named_is_left_off_and_the_module_compiled_again(worker_only, monkeypatch):
    from wasmsbx.backends.wasmtime.backend import WasmtimeEngine

    seen: list = []
    load = WasmtimeEngine.deserialize

    def picky(self, native):
        seen.append(self.options.isa_off)
        if len(seen) == 1:  # as a process under valgrind finds the first worker's code
            raise errors.ModuleError(MISSING.format("has_avx512f"))
        return load(self, native)

    monkeypatch.setattr(WasmtimeEngine, "deserialize", picky)
    box = wasmsbx.Sandbox(_module(7), use_cache=False)
    assert box.call("f") == 7
    assert compiling.ISA_OFF == ["has_avx512f"] and len(seen) == 2


def test_the_workers_engine_leaves_the_feature_off():
    """What the worker builds for isa_off: an engine of its own, which compiles."""
    from wasmsbx.backends.base import EngineOptions
    from wasmsbx.backends.wasmtime.backend import engine_for, engine_key

    plain = EngineOptions(compiler="cranelift")
    off = plain._replace(isa_off=("has_avx512f", "has_avx_vnni"))
    assert engine_key(plain) != engine_key(off)
    engine = engine_for(off)
    assert engine is not engine_for(plain)
    assert engine.serialize(engine.compile(_module(3)))


@pytest.mark.parametrize(
    "message",
    [
        'compilation setting "has avx" is enabled, but not available on the host',
        'compilation setting "opt_level" is enabled, but not available on the host',
        'compilation setting "" is enabled, but not available on the host',
        'compilation setting "' + "a" * 65 + '" is enabled, but not available on the host',
        'compilation setting "has_é" is enabled, but not available on the host',
        "invalid module: something else",
    ],
)
def test_only_a_plain_feature_name_is_learned(message):
    assert compiling._unavailable(message) is None


def test_a_named_feature_learned_already_is_an_error(worker_only, monkeypatch):
    """The same feature named again (left off, still refused): the error, not a loop."""
    from wasmsbx.backends.wasmtime.backend import WasmtimeEngine

    def refuse(self, native):
        raise errors.ModuleError(MISSING.format("has_avx512f"))

    monkeypatch.setattr(WasmtimeEngine, "deserialize", refuse)
    with pytest.raises(errors.ModuleError, match="has_avx512f"):
        wasmsbx.Sandbox(_module(8), use_cache=False)
    assert compiling.ISA_OFF == ["has_avx512f"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_a_sandbox_works_under_valgrind(tmp_path):
    script = (
        "import wasmsbx\n"
        "box = wasmsbx.Sandbox(b'(module (func (export \"f\") (result i32) i32.const 41))')\n"
        "print(box.call('f') + 1)\n"
    )
    env = {**os.environ, "WASMSBX_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        ["valgrind", "-q", "--error-exitcode=0", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0 and done.stdout.strip() == "42", done.stderr[-2000:]


def test_a_cache_entry_for_other_cpu_features_is_not_called_tampered(tmp_path, monkeypatch):
    """Round 42: an entry made natively, loaded under valgrind, was reported as failing
    its integrity check (in the audit log too). It is recompiled, and said so plainly."""
    from wasmsbx.backends.wasmtime.backend import WasmtimeEngine
    from wasmsbx.native import cache

    from .cache_helpers import make_policy

    policy = make_policy()
    engine = wasmsbx.Sandbox(_module(11), policy, backend="wasmtime").engine
    first = cache.load_or_compile(engine, _module(12), policy, "m")
    assert first.state == "miss"
    cache._SHARED.clear()
    from wasmsbx.native import entry

    entry.forget_recalled()
    load = WasmtimeEngine.deserialize
    calls = []

    def native_only(self, native):
        calls.append(1)
        if len(calls) == 1:
            raise errors.ModuleError(MISSING.format("has_avx512f"))
        return load(self, native)

    monkeypatch.setattr(WasmtimeEngine, "deserialize", native_only)
    again = cache.load_or_compile(engine, _module(12), policy, "m")
    assert again.state == "miss" and again.module is not None
    assert "CPU features this process cannot use" in again.warnings[0], again.warnings
    assert "integrity" not in again.warnings[0]
