"""``compile -o`` without importing wasmtime-py (backends/wasmtime/bare.py): the same
native code as wasmtime-py's engine for every engine setting, the same errors, and the
command really never imports wasmtime."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("wasmtime")

from wasmsbx import errors  # noqa: E402
from wasmsbx.backends.base import EngineOptions  # noqa: E402
from wasmsbx.backends.reserve import reservation  # noqa: E402
from wasmsbx.backends.wasmtime import bare  # noqa: E402
from wasmsbx.backends.wasmtime.backend import WasmtimeEngine  # noqa: E402

# A module with a memory, a data segment, a loop and a call: code that every setting
# below changes (fuel and epoch checks, stack checks, bounds checks for the layout).
WAT = """
(module
  (memory (export "mem") 1 4)
  (data (i32.const 16) "hello")
  (func $sum (param $n i32) (result i32) (local $acc i32)
    (loop $l
      (local.set $acc (i32.add (local.get $acc) (i32.load8_u (local.get $n))))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $n) (i32.const 0))))
    (local.get $acc))
  (func (export "run") (result i32) (call $sum (i32.const 20))))
"""

SETTINGS = [
    EngineOptions(),
    EngineOptions(epoch=False),
    EngineOptions(fuel=True),
    EngineOptions(stack=256 * 1024),
    EngineOptions(optimize="none"),
    EngineOptions(optimize="size"),
    EngineOptions(reservation=reservation("dense", 8 << 20)),
    EngineOptions(copy_data=True),
    EngineOptions(fuel=True, epoch=False, stack=512 * 1024, copy_data=True),
]


def _api():
    api = bare._api()
    if api is None:
        pytest.skip("wasmtime-py's library is not where bare.py looks on this platform")
    return api


@pytest.fixture(scope="module")
def wasm():
    import wasmtime

    return bytes(wasmtime.wat2wasm(WAT))


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: repr(tuple(o)))
def test_the_same_native_code_as_wasmtime_py(wasm, options):
    ours = bare.BareEngine(_api(), options)
    theirs = WasmtimeEngine(options)
    code = ours.serialize(ours.compile(wasm))
    assert code == theirs.serialize(theirs.compile(wasm))
    assert ours.fingerprint() == theirs.fingerprint()


def test_its_code_loads_only_in_an_engine_of_the_same_settings(wasm):
    import wasmtime

    ours = bare.BareEngine(_api(), EngineOptions(epoch=False))
    code = ours.serialize(ours.compile(wasm))
    plain = wasmtime.Engine(wasmtime.Config())  # (epoch off, as above)
    store = wasmtime.Store(plain)
    module = wasmtime.Module.deserialize(plain, code)
    assert wasmtime.Instance(store, module, []).exports(store)["run"](store) == sum(b"hello")
    config = wasmtime.Config()
    config.epoch_interruption = True
    with pytest.raises(wasmtime.WasmtimeError):
        wasmtime.Module.deserialize(wasmtime.Engine(config), code)


def test_a_module_the_runtime_rejects_is_the_same_module_error(wasm):
    broken = wasm[:-3]  # (cut inside the code section)
    ours = bare.BareEngine(_api(), EngineOptions())
    with pytest.raises(errors.ModuleError) as mine:
        ours.compile(broken)
    with pytest.raises(errors.ModuleError) as reference:
        WasmtimeEngine(EngineOptions()).compile(broken)
    assert mine.value.message == reference.value.message
    assert mine.value.exit_code == reference.value.exit_code == 102


def test_a_cpu_feature_left_off_is_set_as_wasmtime_py_sets_it(wasm):
    if os.uname().machine != "x86_64":
        pytest.skip("x86-64 flags")
    options = EngineOptions(isa_off=("has_avx512f",))
    ours = bare.BareEngine(_api(), options)
    theirs = WasmtimeEngine(options)
    assert ours.serialize(ours.compile(wasm)) == theirs.serialize(theirs.compile(wasm))


def test_no_bare_engine_where_wasmtime_is_imported_or_its_library_missing(monkeypatch):
    assert "wasmtime" in sys.modules  # (this process: wasmtime-py's own engine then)
    assert bare.engine(EngineOptions()) is None
    from wasmsbx.backends import get

    engine = get("wasmtime").compile_engine(EngineOptions())
    assert type(engine) is WasmtimeEngine
    monkeypatch.delitem(sys.modules, "wasmtime")
    monkeypatch.setattr(bare, "_API", None)
    monkeypatch.setattr(bare, "library", lambda: None)
    assert bare.engine(EngineOptions()) is None


def _no_wasmtime(tmp_path, argv):
    """Run the console command ``argv`` in a fresh interpreter as ``entry`` does (hard
    stop installed); print whether wasmtime-py got imported."""
    script = tmp_path / "probe.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            from wasmsbx.cli import main
            code = main({argv!r}, guard=True)
            print("wasmtime" in sys.modules, code, file=sys.stderr)
            """
        )
    )
    env = dict(os.environ, WASMSBX_TRUST_DIR=str(tmp_path / "trust"))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    return proc.stderr.strip().splitlines()[-1]


def test_compile_o_never_imports_wasmtime_and_run_loads_what_it_wrote(tmp_path, wasm):
    source = tmp_path / "m.wasm"
    source.write_bytes(wasm)
    out = tmp_path / "m.wasmsbx"
    assert _no_wasmtime(tmp_path, ["compile", str(source), "-o", str(out)]) == "False 0"
    proc = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "run", str(out), "--invoke", "run"],
        capture_output=True,
        text=True,
        env=dict(os.environ, WASMSBX_TRUST_DIR=str(tmp_path / "trust")),
        cwd=tmp_path,
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, str(sum(b"hello"))), proc.stderr
    # --interruptible: the code keeps its epoch checks, made the same way
    kept = tmp_path / "k.wasmsbx"
    argv = ["compile", str(source), "--interruptible", "-o", str(kept)]
    assert _no_wasmtime(tmp_path, argv) == "False 0"


def test_a_module_it_rejects_is_worded_without_importing_wasmtime(tmp_path, wasm):
    # (red team 136: the error was worded by backend.py, whose import of wasmtime-py took
    # ~3 MB more of a compile worker's capped memory: exit 117 for an invalid module)
    source = tmp_path / "bad.wasm"
    source.write_bytes(wasm[:-3])
    out = tmp_path / "bad.wasmsbx"
    assert _no_wasmtime(tmp_path, ["compile", str(source), "-o", str(out)]) == "False 102"
    assert not out.exists()
