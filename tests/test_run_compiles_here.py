"""Where ``wasmsbx run`` compiles a large module (backends/compiling.py ``in_child``): in
its own process when the process is the place that can be stopped (one guest, the command
line's hard stop installed, no memory rlimit), in a worker everywhere else. The timeouts
that bound such a compile through the console script are tests/test_deadlines.py's."""

from __future__ import annotations

import resource

import pytest

from wasmsbx import Sandbox
from wasmsbx import policy as policy_mod
from wasmsbx.backends import compiling
from wasmsbx.backends.deadline import KEEPER

from .test_compile_worker import BIG_WAT

wasmtime = pytest.importorskip("wasmtime")


class WorkerUsed(Exception):
    pass


@pytest.fixture
def big(isolated):
    from wasmsbx.runner import shared

    shared.clear()  # (compiled by an earlier test: shared in process, not compiled again)
    path = isolated / "big.wasm"
    path.write_bytes(bytes(wasmtime.wat2wasm(BIG_WAT)))
    assert path.stat().st_size >= compiling.CHILD_MIN
    return path


@pytest.fixture
def no_worker(monkeypatch):
    """compile_in_child raises WorkerUsed."""

    def refuse(*args, **kwargs):
        raise WorkerUsed

    monkeypatch.setattr(compiling, "compile_in_child", refuse)


def _policy():
    policy = policy_mod.defaults()
    policy_mod.override(policy, "runtime.backend", "wasmtime")
    return policy


def _as_run(monkeypatch, sole: bool = True) -> None:
    """This process as `wasmsbx run` sees it: a hard stop installed (a stand-in) and,
    with ``sole``, one guest."""
    monkeypatch.setattr(KEEPER, "hard_stop", lambda error: None)
    monkeypatch.setattr(KEEPER, "sole_run", sole)


def test_run_compiles_a_large_module_itself(monkeypatch, big, no_worker):
    _as_run(monkeypatch)
    with Sandbox(big, _policy(), use_cache=False) as box:
        assert box.call("sext", 0xFF) == -1


def test_batch_and_the_library_compile_it_in_a_worker(monkeypatch, big, no_worker):
    _as_run(monkeypatch, sole=False)  # batch, stream, watch: the process goes on
    with pytest.raises(WorkerUsed):
        Sandbox(big, _policy(), use_cache=False)
    monkeypatch.setattr(KEEPER, "hard_stop", None)  # the Python API: no hard stop
    monkeypatch.setattr(KEEPER, "sole_run", True)
    with pytest.raises(WorkerUsed):
        Sandbox(big, _policy(), use_cache=False)


@pytest.mark.parametrize("which", ["RLIMIT_AS", "RLIMIT_DATA"])
def test_under_a_memory_rlimit_run_uses_the_worker(monkeypatch, big, no_worker, which):
    # Out of memory, the compiler aborts its process (red team round 28): a worker's
    # crash is an error line, the command line's would be exit 134.
    _as_run(monkeypatch)
    real = resource.getrlimit
    limit = getattr(resource, which)

    def limited(what):
        return (1 << 34, resource.RLIM_INFINITY) if what == limit else real(what)

    monkeypatch.setattr(resource, "getrlimit", limited)
    with pytest.raises(WorkerUsed):
        Sandbox(big, _policy(), use_cache=False)


def test_a_compile_that_ends_after_its_deadline_is_too_late(monkeypatch):
    # The hard stop ends a compile GRACE after its deadline; one that returns within the
    # grace is still late (compile_bounded checks once more).
    _as_run(monkeypatch)
    clock = iter([100.0, 100.0 + 5.0])
    monkeypatch.setattr(compiling.time, "monotonic", lambda: next(clock, 200.0))

    class Engine:
        backend = "wasmtime"

        def compile(self, wasm):
            return "module"

    class Late(Exception):
        pass

    def error():
        return Late()

    import types

    monkeypatch.setattr(KEEPER, "enter", lambda *a: types.SimpleNamespace(memory=None))
    monkeypatch.setattr(KEEPER, "leave", lambda watch: None)
    with pytest.raises(Late):
        compiling.compile_bounded(Engine(), b"\0asm", 1.0, error)
    monkeypatch.setattr(KEEPER, "hard_stop", None)  # the library: nothing would end it here
    assert compiling.in_child(Engine(), b"\0asm")  # (so a worker, killed at the deadline)
