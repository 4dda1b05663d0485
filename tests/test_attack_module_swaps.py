"""A module file replaced while a run still has to use it (red team, round 6).

A batch's worker processes rebuild the sandbox from the module's *path* and load the
native code the parent compiled; whatever they read from the file then must be the
module the parent compiled, or the worker describes one module (its memories and tables,
which the limits that are totals are planned from) and runs another's code."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasmsbx import errors
from wasmsbx.native import located
from wasmsbx.policy import from_dict
from wasmsbx.runner import Sandbox, batch, shared
from wasmsbx.wasm.source import read_module

# Two memories of 64 KiB, each grown by the argument: under limits.memory 256 KiB each
# may reach 128 KiB: grow(1) gives 1 + 1 (their old sizes), grow(2) fails in both.
TWO = b"""(module (memory $a 1) (memory $b 1)
  (func (export "grow") (param i32) (result i32)
    (i32.add (memory.grow $a (local.get 0)) (memory.grow $b (local.get 0)))))"""
# What the file holds when the worker reads it: a shared memory that can never grow
# counts for nothing in the totals, so the one other memory is given all of the limit;
# and two memories are allowed.
DECOY = b"""(module (memory $a 0 0 shared) (memory $b 1)
  (func (export "grow") (param i32) (result i32) (i32.const 0)))"""


def module(tmp_path: Path, text: bytes, name: str) -> bytes:
    source = tmp_path / f"{name}.wat"
    source.write_bytes(text)
    return read_module(source)


@pytest.fixture
def policy():
    return from_dict({"limits": {"memory": "256KiB"}, "runtime": {"cache_min_size": 0}})


def test_a_batch_worker_refuses_a_module_file_replaced_after_the_parent_compiled(tmp_path, policy):
    path = tmp_path / "m.wasm"
    path.write_bytes(module(tmp_path, TWO, "two"))
    with Sandbox(str(path), policy, backend="wasmtime") as box:
        assert box.call("grow", 2) == -2
        path.write_bytes(module(tmp_path, DECOY, "decoy"))
        shared.clear()  # a worker is another process
        state = batch.worker_state(batch.worker_spec(box, "grow", False))
    assert isinstance(state, errors.ModuleError), "the worker ran the parent's code"
    assert "changed while it was in use" in str(state)
    assert state.exit_code == errors.ExitCode.MODULE


def test_batch_workers_keep_the_memory_limit_when_the_file_is_replaced(tmp_path, policy):
    """End to end with forked workers: no item may grow two memories past the total."""
    path = tmp_path / "m.wasm"
    path.write_bytes(module(tmp_path, TWO, "two"))
    with Sandbox(str(path), policy, backend="wasmtime") as box:
        path.write_bytes(module(tmp_path, DECOY, "decoy"))
        with pytest.raises(errors.ModuleError, match="changed while it was in use"):
            list(box.batch("grow", [[2]], jobs=2))  # (it gave [2]: 192 KiB in each)


def test_a_batch_worker_of_an_unchanged_file_runs(tmp_path, policy):
    path = tmp_path / "m.wasm"
    path.write_bytes(module(tmp_path, TWO, "two"))
    with Sandbox(str(path), policy, backend="wasmtime") as box:
        state = batch.worker_state(batch.worker_spec(box, "grow", False))
        assert not isinstance(state, Exception), state
        assert state.run(1, [1]).values == [2]  # each was 1 page
        state.close()


def test_a_batch_worker_refuses_a_replaced_file_the_parent_knew_by_its_memo(
    tmp_path, policy, monkeypatch
):
    """The parent did not read the file (an authentic source memo named it): the
    worker's check uses the memo's digest, and the parent still reads nothing."""
    monkeypatch.setattr(located, "MARGIN", 0.0)  # (a file made just now gets no memo)
    path = tmp_path / "m.wasm"
    path.write_bytes(module(tmp_path, TWO, "two"))
    shared.clear()  # (a module this process holds already is not cached again)
    Sandbox(str(path), policy, backend="wasmtime").close()
    shared.clear()
    with Sandbox(str(path), policy, backend="wasmtime") as box:
        assert box._known is not None and box.cache_state == "hit"
        path.write_bytes(module(tmp_path, DECOY, "decoy"))
        spec = batch.worker_spec(box, "grow", False)
        assert box._known._wasm is None, "the parent read the file"
        shared.clear()
        state = batch.worker_state(spec)
    assert isinstance(state, errors.ModuleError), "the worker ran the parent's code"
    assert "changed while it was in use" in str(state)


def test_a_batch_worker_of_a_sandbox_made_from_bytes_never_describes_a_planted_file(
    tmp_path, policy, monkeypatch
):
    """A sandbox made from bytes is named ``<bytes>``, and its workers rebuilt it from
    that name as a path: a file ``<bytes>`` in the working folder (a hostile project's)
    was described while the parent's code ran."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "<bytes>").write_bytes(module(tmp_path, DECOY, "decoy"))
    with Sandbox(module(tmp_path, TWO, "two"), policy, backend="wasmtime") as box:
        state = batch.worker_state(batch.worker_spec(box, "grow", False))
        assert not isinstance(state, Exception), state
        assert state.run(1, [2]).values == [-2], "the worker described the planted file"
        state.close()


def test_a_parallel_batch_of_a_sandbox_made_from_bytes_runs_those_bytes(tmp_path, policy):
    """Its workers get the bytes themselves (no file of that name is read), and the
    limits hold there as in the parent."""
    with Sandbox(module(tmp_path, TWO, "two"), policy, backend="wasmtime") as box:
        results = list(box.batch("grow", [[1], [2]], jobs=2))
    assert [r.values for r in results] == [[2], [-2]]


def test_a_parallel_batch_of_a_component_made_from_bytes_runs_those_bytes(tmp_path, monkeypatch):
    import wasmsbx

    from .component_guests import HERE

    monkeypatch.chdir(tmp_path)
    (tmp_path / "<bytes>").write_bytes(b"(component)")  # never read
    with wasmsbx.Sandbox((HERE / "types.wat").read_bytes()) as box:
        assert getattr(box, "is_component", False)
        results = list(box.batch("add", [[1, 2], [3, 4]], jobs=2))
    assert [r.values for r in results] == [[3], [7]]
