"""The in-memory layer over the disk cache (runner.shared ``loaded``/``keep``): a second
sandbox of a cached module in the same process reads no cache entry, and reports
``cache_state`` "memory". What it must never do: serve a module whose file changed, a
module for another engine configuration, or trust an entry altered on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasmsbx.runner import Sandbox, shared

from .cache_helpers import make_policy

ADD = '(module (func (export "f") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
SUB = '(module (func (export "f") (param i32 i32) (result i32) local.get 0 local.get 1 i32.sub))'


@pytest.fixture
def module(tmp_path) -> Path:
    path = tmp_path / "m.wat"
    path.write_text(ADD)
    return path


def entries(tmp_path) -> list:
    return sorted((tmp_path / "cache").rglob("*.entry"))


def test_a_second_sandbox_reads_no_entry(module, tmp_path):
    policy = make_policy()
    first = Sandbox(module, policy)
    assert first.cache_state == "miss"
    (path,) = entries(tmp_path)
    path.unlink()  # were the entry read, this would be a miss
    second = Sandbox(module, policy)
    assert second.cache_state == "memory"
    assert "load" not in second.timings and "compile" not in second.timings
    assert second.call("f", 5, 3) == 8
    shared.forget_loaded()  # a new process: back to the disk cache, which lost the entry
    assert Sandbox(module, policy).cache_state == "miss"


def test_a_hit_is_kept_too(module):
    policy = make_policy()
    Sandbox(module, policy)
    shared.forget_loaded()
    assert Sandbox(module, policy).cache_state == "hit"
    assert Sandbox(module, policy).cache_state == "memory"


def test_a_module_changed_on_disk_is_not_served_stale(module):
    policy = make_policy()
    assert Sandbox(module, policy).call("f", 5, 3) == 8
    module.write_text(SUB)  # same path, other code
    box = Sandbox(module, policy)
    assert box.cache_state == "miss"
    assert box.call("f", 5, 3) == 2
    module.write_text(ADD)  # back: the first module, still held
    again = Sandbox(module, policy)
    assert again.cache_state == "memory"
    assert again.call("f", 5, 3) == 8


def test_another_engine_configuration_is_not_served(module):
    Sandbox(module, make_policy())
    other = Sandbox(module, make_policy(runtime__optimize="none"))
    assert other.cache_state == "miss"


def test_an_entry_altered_on_disk_is_never_trusted(module, tmp_path):
    """Within the process the module held is the one verified when it was loaded (the
    altered entry is not read); a process that reads the entry refuses it, and what it
    then keeps is the module it compiled, never the entry's code."""
    policy = make_policy()
    Sandbox(module, policy)
    (path,) = entries(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    held = Sandbox(module, policy)
    assert held.cache_state == "memory" and held.call("f", 5, 3) == 8
    shared.forget_loaded()  # a new process
    box = Sandbox(module, policy)
    assert box.cache_state == "miss"
    assert "not tagged with your key" in box.warnings[0]
    assert box.call("f", 5, 3) == 8
    path.write_bytes(bytes(data))  # altered again: the process holds the compiled module
    kept = Sandbox(module, policy)
    assert kept.cache_state == "memory" and kept.warnings == []
    shared.forget_loaded()
    assert "not tagged with your key" in Sandbox(module, policy).warnings[0]


def test_bytes_and_paths_share_the_layer_by_content(module):
    policy = make_policy()
    Sandbox(module, policy)
    assert Sandbox(module.read_bytes(), policy).cache_state == "memory"
    assert Sandbox(SUB.encode(), policy).cache_state == "miss"
