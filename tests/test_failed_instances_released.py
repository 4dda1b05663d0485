"""An instance whose start function or ``_initialize`` fails is released at once, not
when the caller drops the error: the error's traceback holds the frames that made it, so
each kept error kept the instance (on wasmtime its store, with a 4 GiB reservation per
memory; on wasmer, a worker process). A caller that collects its failures (a batch
keeping the errors of hostile modules) ran out of address space after some 30,000."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import wasmsbx
from wasmsbx import errors
from wasmsbx.policy import from_dict

from .conftest import BACKENDS, ROOT, require_capability
from .test_memory_layout import vmsize

START_TRAPS = b"""(module (memory (export "memory") 1)
  (func $s unreachable) (start $s)
  (func (export "f") (result i32) i32.const 7))"""

INITIALIZE_TRAPS = b"""(module (memory (export "memory") 1)
  (func (export "_initialize") unreachable)
  (func (export "f") (result i32) i32.const 7))"""

INITIALIZE_SPINS = b"""(module (memory (export "memory") 1)
  (func (export "_initialize") (loop br 0))
  (func (export "f") (result i32) i32.const 7))"""

KEPT = 5
RESERVATION = 4 << 30  # what one memory reserves by default on wasmtime (README "Density")


def children() -> int:
    """Live processes whose parent is this one (wasmer's workers)."""
    me, count = str(os.getpid()), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            count += fields[1] == me and fields[0] != "Z"
    return count


def keep_failures(wat: bytes, backend: str, limits: dict) -> list:
    kept = []
    for _ in range(KEPT):
        box = wasmsbx.Sandbox(wat, from_dict({"limits": limits}), backend=backend)
        with pytest.raises(errors.WasmsbxError) as info:
            box.call("f")
        kept.append(info.value)
        del box
    return kept


@pytest.mark.parametrize(
    "wat, limits, error",
    [
        (START_TRAPS, {}, errors.TrapError),
        (INITIALIZE_TRAPS, {}, errors.TrapError),
        (INITIALIZE_SPINS, {"fuel": 100_000}, errors.FuelExhausted),
    ],
    ids=["start function traps", "_initialize traps", "_initialize out of fuel"],
)
def test_kept_errors_do_not_keep_their_instances(backend, wat, limits, error):
    if "fuel" in limits:
        require_capability(backend, "fuel")
    box = wasmsbx.Sandbox(wat, from_dict({"limits": limits}), backend=backend)  # (warm)
    with pytest.raises(error):
        box.call("f")
    del box
    size, workers = vmsize(), children()
    kept = keep_failures(wat, backend, limits)
    assert all(isinstance(e, error) for e in kept)
    if backend.startswith("wasmtime"):
        grew = vmsize() - size
        assert grew < RESERVATION, f"{grew >> 20} MiB more address space for {KEPT} errors"
    else:
        assert children() <= workers + 1, "a worker process kept per kept error"


def test_an_initialize_timeout_does_not_keep_its_instance():
    if "wasmtime" not in BACKENDS:
        pytest.skip("wasmtime's reservations")
    policy = from_dict({"limits": {"timeout": "30s"}})
    size = vmsize()
    kept = []
    for _ in range(KEPT):
        box = wasmsbx.Sandbox(INITIALIZE_SPINS, policy, backend="wasmtime")
        with pytest.raises(errors.TimeoutExceeded) as info:
            box.call("f", timeout=0.05)
        kept.append(info.value)
    assert vmsize() - size < RESERVATION


def test_a_component_whose_instantiation_traps_does_not_keep_its_store(tmp_path):
    if "wasmtime" not in BACKENDS:
        pytest.skip("components run on wasmtime")
    from .component_guests import tool

    source = tmp_path / "traps.wat"
    source.write_text(
        '(component (core module $m (memory (export "memory") 1)'
        ' (func $s unreachable) (start $s) (func (export "f") (result i32) i32.const 7))'
        " (core instance $i (instantiate $m))"
        ' (func (export "f") (result u32) (canon lift (core func $i "f"))))'
    )
    wasm = tmp_path / "traps.wasm"
    subprocess.run([str(tool("wasm-tools")), "parse", str(source), "-o", str(wasm)], check=True)
    with pytest.raises(errors.TrapError):
        wasmsbx.Sandbox(wasm).call("f")
    size = vmsize()
    kept = []
    for _ in range(KEPT):
        with pytest.raises(errors.TrapError, match="instantiation trapped") as info:
            wasmsbx.Sandbox(wasm).call("f")
        kept.append(info.value)
    assert vmsize() - size < RESERVATION


VIEW_KEPT = """
import sys, wasmsbx
wat = b'''(module (import "env" "peek" (func $peek))
  (memory (export "memory") 1) (data (i32.const 0) "kept")
  (func (export "_initialize") call $peek unreachable)
  (func (export "f") (result i32) i32.const 7))'''
views = []
def peek(caller: wasmsbx.Caller) -> None:
    try:
        with caller.memory().view() as view:
            views.append(view[0:4])  # a slice outlives its block
    except wasmsbx.errors.BackendUnavailable:  # (wasmer: the memory is in its worker)
        views.append(None)
box = wasmsbx.Sandbox(wat, imports={"env": {"peek": peek}}, backend=sys.argv[1])
try:
    box.call("f")
except wasmsbx.errors.TrapError as exc:
    print(type(exc).__name__)
print(bytes(views[0]).decode() if views[0] is not None else "no views")
"""


def test_a_view_a_host_function_kept_stays_readable(backend):
    """The store a memory view's slice still reaches is left to the garbage collector
    (freeing it would unmap what the slice reads: a segfault)."""
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(VIEW_KEPT), backend],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    if run.stdout.split()[-2:] == ["no", "views"]:
        pytest.skip(f"{backend} gives host functions no memory view")
    assert run.stdout.split() == ["TrapError", "kept"]


READS = b"""(module (import "env" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1) (data (i32.const 0) "starting")
  (func (export "_initialize") (call $log (i32.const 0) (i32.const 8)) unreachable)
  (func (export "f") (result i32) i32.const 7))"""


def test_a_host_function_that_read_the_memory_does_not_keep_the_store(backend):
    """A guest cannot keep its failed instances alive by calling a host function that
    reads its memory (``caller.memory().read``, as the README's log does) before it
    fails: only a memory still held is (red team round 67: every such store was kept)."""
    read = []

    def log(caller: wasmsbx.Caller, ptr: wasmsbx.i32, n: wasmsbx.i32) -> None:
        read.append(caller.memory().read(ptr, n))

    def fail() -> None:
        box = wasmsbx.Sandbox(READS, imports={"env": {"log": log}}, backend=backend)
        with pytest.raises(errors.TrapError, match="_initialize") as info:
            box.call("f")
        kept.append(info.value)

    kept: list = []
    fail()
    size, workers = vmsize(), children()
    for _ in range(KEPT):
        fail()
    assert read == [b"starting"] * (KEPT + 1)
    if backend.startswith("wasmtime"):
        assert vmsize() - size < RESERVATION
    else:
        assert children() <= workers + 1


LENT = '''
import threading, wasmsbx
wat = b"""(module (import "env" "h" (func $h)) (memory (export "memory") 16)
  (func (export "_initialize") call $h unreachable)
  (func (export "f") (result i32) i32.const 7))"""
computed, failed = threading.Event(), threading.Event()
import ctypes
real_memmove = ctypes.memmove

def memmove(*args):  # Memory.write copies once the target address is computed
    if threading.current_thread().name == "writer":
        computed.set()
        failed.wait(30)
    return real_memmove(*args)

ctypes.memmove = memmove

done = []
def writer(memory):
    memory.write(0, bytearray(b"\\xaa" * (16 * 65536)))
    done.append("written")

def h(caller: wasmsbx.Caller) -> None:
    threading.Thread(target=writer, args=(caller.memory(),), name="writer").start()
    computed.wait(30)

kept = []
try:
    wasmsbx.Sandbox(wat, imports={"env": {"h": h}}, backend="wasmtime").call("f")
except wasmsbx.errors.TrapError as exc:
    kept.append(exc)
failed.set()
[t for t in threading.enumerate() if t.name == "writer"][0].join(30)
assert computed.is_set()
other = wasmsbx.Sandbox(
    b'(module (memory (export "memory") 16) (func (export "g") (result i32) i32.const 0 i32.load))',
    backend="wasmtime",
)
print(done, hex(other.call("g") & 0xFFFFFFFF))
'''


def test_a_memory_a_host_function_lent_to_a_thread_keeps_its_store():
    """A Memory from ``caller.memory()`` given to a thread is used after the start
    function or ``_initialize`` failed: its store is not freed under it (red team round
    66: freed, the thread's write segfaulted, or landed in the next sandbox's memory)."""
    if "wasmtime" not in BACKENDS:
        pytest.skip("wasmtime frees stores in this process")
    run = subprocess.run(
        [sys.executable, "-c", LENT], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["['written']", "0x0"]
