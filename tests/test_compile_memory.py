"""Compiling is bounded in memory, not only in time (backends/compiling.py HEAVY): a small
module of one function whose locals stay live across many loops makes the compiler's
memory grow with locals x size (160 KB took cranelift 2.6 GB). A module with a function
that heavy compiles in a worker whatever its size, and the worker's data is capped
(WASMSBX_COMPILE_MEMORY, default 2 GiB): exit 117, not an exhausted machine."""

from __future__ import annotations

import pytest

from wasmsbx import Sandbox, errors
from wasmsbx import policy as policy_mod
from wasmsbx.backends import compiling
from wasmsbx.backends.base import EngineOptions
from wasmsbx.wasm.facts import compile_weight

wasmtime = pytest.importorskip("wasmtime")


def heavy_wat(locals_: int, loops: int) -> str:
    """One function: ``locals_`` i64 locals, ``loops`` loops each updating one of them,
    and a sum of all of them at the end (so all stay live through every loop)."""
    out = ['(module (func (export "f") (param i32) (result i64)']
    out.append("(local " + " ".join(["i64"] * locals_) + ")")
    for b in range(loops):
        i, j = 1 + b % locals_, 1 + (b * 7) % locals_
        out.append(
            f"(loop $l{b} (local.set {i} (i64.add (local.get {j}) (i64.const 1)))"
            f" (br_if $l{b} (local.get 0)))"
        )
    out.append("(i64.const 0)")
    out.extend(f"(local.get {i}) i64.add" for i in range(1, locals_ + 1))
    out.append("))")
    return "\n".join(out)


@pytest.fixture(scope="module")
def heavy_file(tmp_path_factory):
    """40 KB, weight 8e7: 250 MB of compiler memory (4,000 x 4,000 takes 840 MB)."""
    path = tmp_path_factory.mktemp("heavy") / "heavy.wasm"
    path.write_bytes(bytes(wasmtime.wat2wasm(heavy_wat(2000, 2000))))
    return path


@pytest.fixture
def heavy(heavy_file, isolated):
    from wasmsbx.runner import shared

    shared.clear()  # (compiled by an earlier test: shared in process, not compiled again)
    return heavy_file


def test_the_weight_is_locals_times_size(heavy):
    data = heavy.read_bytes()
    assert compile_weight(data) > compiling.HEAVY
    assert len(data) < compiling.CHILD_MIN  # small: it compiled in process before
    light = bytes(wasmtime.wat2wasm(heavy_wat(20, 20)))
    assert compile_weight(light) < compiling.HEAVY
    # Functions compile in parallel: four of a quarter of the weight weigh as much.
    one = heavy_wat(1000, 1000)
    body = one[one.index("(func") : one.rindex(")")]
    four = "(module " + "\n".join(body.replace('(export "f")', "") for _ in range(4)) + ")"
    assert compile_weight(bytes(wasmtime.wat2wasm(four))) > compiling.HEAVY
    assert compile_weight(bytes(wasmtime.wat2wasm(one))) < compiling.HEAVY
    params = "(module (func (param i64 i64 i64) (local i32 i32) (nop)))"
    assert compile_weight(bytes(wasmtime.wat2wasm(params))) == 5 * 5  # 3 params + 2, 5 bytes


def test_a_heavy_module_compiles_in_a_worker(heavy, monkeypatch):
    # The command line (its hard stop installed) compiles a small light module itself,
    # and sends a heavy one to a worker whatever its size.
    from wasmsbx.backends import get
    from wasmsbx.backends.deadline import KEEPER

    engine = get("wasmtime").engine(EngineOptions())
    light = bytes(wasmtime.wat2wasm(heavy_wat(20, 20)))
    monkeypatch.setattr(KEEPER, "hard_stop", lambda error: None)
    assert compiling.in_child(engine, heavy.read_bytes())
    assert not compiling.in_child(engine, light)
    monkeypatch.setattr(KEEPER, "hard_stop", None)  # the Python API: every module
    assert compiling.in_child(engine, light)


def test_the_library_compiles_every_module_in_a_worker(monkeypatch, heavy, isolated):
    # Nothing could end a compile in the caller's process (no hard stop): a light module
    # goes to the worker too, where the compile timeout and the memory bound hold.
    used = []
    real = compiling.compile_in_child

    def spy(*args, **kwargs):
        used.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(compiling, "compile_in_child", spy)
    light = bytes(wasmtime.wat2wasm(heavy_wat(20, 20)))
    with Sandbox(light, use_cache=False) as box:
        box.call("f", 0)
    assert used == [True]


def test_the_worker_runs_out_of_memory_cleanly(cli, heavy, isolated, monkeypatch):
    # 250 MB needed, 64 MiB allowed: the worker's allocation fails, the run says why.
    monkeypatch.setenv("WASMSBX_COMPILE_MEMORY", "64MiB")
    res = cli("run", heavy, "f", "0", "--no-cache", env={"WASMSBX_COMPILE_MEMORY": "64MiB"})
    assert res.code == 117, res
    assert "compiling the module ran out of memory" in res.stderr
    assert "64 MiB" in res.stderr
    assert "Traceback" not in res.stderr
    res = cli("compile", heavy, "-o", isolated / "h.cwasm", env={"WASMSBX_COMPILE_MEMORY": "64MiB"})
    assert res.code == 117, res
    assert not (isolated / "h.cwasm").exists()


def test_the_library_gets_the_same_error(heavy, isolated, monkeypatch):
    monkeypatch.setenv("WASMSBX_COMPILE_MEMORY", "64MiB")
    with pytest.raises(errors.CompileLimitExceeded, match="ran out of memory"):
        Sandbox(heavy, policy_mod.defaults(), use_cache=False)


def test_a_bad_compile_memory_is_a_usage_error(heavy, isolated, monkeypatch):
    monkeypatch.setenv("WASMSBX_COMPILE_MEMORY", "lots")
    with pytest.raises(errors.UsageError, match="WASMSBX_COMPILE_MEMORY"):
        Sandbox(heavy, policy_mod.defaults(), use_cache=False)


def nested_loops_wat(values: int, depth: int) -> str:
    """Red team round 31: ``values`` i32s carried as parameters through ``depth`` nested
    loops (multi-value block types). No locals, so a weight of 0, and 9 KB at 1,000 x
    1,000, yet cranelift's memory grows about 1 GB a second compiling it."""
    params = " ".join(["i32"] * values)
    lines = [f"(module (type $t (func (param {params}) (result {params})))"]
    lines.append('(func (export "f") (result i32)')
    lines += [f"i32.const {i}" for i in range(values)]
    lines += ["loop (type $t)"] * depth + ["end"] * depth
    lines += ["i32.add"] * (values - 1)
    lines.append("))")
    return "\n".join(lines)


def test_an_in_process_compile_is_watched_for_memory(cli, isolated):
    # weight 0: it compiles in the command's own process, where the deadline thread
    # ends it once the process has grown by the bound (exit 117), not the machine
    module = isolated / "loops.wasm"
    module.write_bytes(bytes(wasmtime.wat2wasm(nested_loops_wat(200, 200))))
    assert compile_weight(module.read_bytes()) == 0
    env = {"WASMSBX_COMPILE_MEMORY": "32MiB"}  # (about 270 MB needed)
    res = cli("run", module, "f", "--no-cache", env=env)
    assert res.code == 117, res
    assert "compiling the module ran out of memory" in res.stderr
    res = cli("compile", module, "-o", isolated / "l.cwasm", env=env)
    assert res.code == 117, res
    assert not (isolated / "l.cwasm").exists()
    res = cli("run", module, "f", "--no-cache")  # within the default bound: it runs
    assert res.code == 0, res


def test_the_library_bounds_a_light_modules_compile_in_memory(isolated, monkeypatch):
    # weight 0 and small, so the command line would compile it itself: from Python it
    # compiled in the caller's process and nothing bounded it (red team round 31)
    wasm = bytes(wasmtime.wat2wasm(nested_loops_wat(200, 200)))
    monkeypatch.setenv("WASMSBX_COMPILE_MEMORY", "32MiB")
    with pytest.raises(errors.CompileLimitExceeded, match="ran out of memory"):
        Sandbox(wasm, policy_mod.defaults(), use_cache=False)
    monkeypatch.delenv("WASMSBX_COMPILE_MEMORY")
    with Sandbox(wasm, policy_mod.defaults(), use_cache=False) as box:
        assert isinstance(box.call("f"), int)


def test_the_library_bounds_a_light_modules_compile_in_time(isolated):
    # 9 KB of the nested loops above: about 6 s of CPU (and 1.7 GB) to compile. The
    # library ran it to the end in the caller's process under a 0.5 s compile timeout.
    import time

    wasm = bytes(wasmtime.wat2wasm(nested_loops_wat(20, 3000)))
    policy = policy_mod.defaults()
    policy_mod.override(policy, "limits.compile_timeout", "500ms")
    started = time.monotonic()
    with pytest.raises(errors.CompileLimitExceeded, match="compile_timeout"):
        Sandbox(wasm, policy, use_cache=False)
    assert time.monotonic() - started < 30  # (ended at the deadline, not at its end)


@pytest.mark.parametrize("which", ["RLIMIT_DATA", "RLIMIT_AS"])
def test_under_a_memory_rlimit_the_command_compiles_in_a_worker(isolated, which):
    # red team round 31: under ulimit -d/-v a compile that runs out aborts its process
    # (exit 134, no error line): the command line compiles every module in a worker then
    import resource
    import subprocess
    import sys

    module = isolated / "loops.wasm"
    module.write_bytes(bytes(wasmtime.wat2wasm(nested_loops_wat(50, 1000))))  # ~600 MB
    limit = getattr(resource, which)
    cap = (1 << 30) if which == "RLIMIT_AS" else (400 << 20)

    def bounded() -> None:
        resource.setrlimit(limit, (cap, cap))

    proc = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "run", str(module), "f", "--no-cache"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=bounded,
    )
    assert proc.returncode == 117, proc
    assert "ran out of memory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_audit_of_a_component_is_watched_too(cli, isolated):
    # red team round 32: `audit` compiled a component under a time watch only (1.9 GB
    # for an 11 KB component of the nested loops above)
    import subprocess

    from .component_guests import tool

    text = isolated / "loops.wat"
    text.write_text(
        "(component " + nested_loops_wat(200, 200).replace("(module", "(core module", 1) + ")"
    )
    component = isolated / "loops.wasm"
    subprocess.run([str(tool("wasm-tools")), "parse", str(text), "-o", str(component)], check=True)
    res = cli("audit", component, env={"WASMSBX_COMPILE_MEMORY": "32MiB"})
    assert res.code == 117, res
    assert "compiling the module ran out of memory" in res.stderr
    res = cli("audit", component)
    assert res.code == 0, res
