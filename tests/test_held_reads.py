"""Module files read once per process (runner.shared.read_before, issue #16): a sandbox
per tenant made from a path does not read the file again while it is the same file,
unchanged, under the source memos' rule (native.located): its last change preceded the
read by MARGIN seconds, and its file system keeps ctimes honest."""

from __future__ import annotations

import os
import time

import pytest

from wasmsbx.native import located
from wasmsbx.runner import Sandbox, shared
from wasmsbx.runner import sandbox as sandbox_mod
from wasmsbx.wasm.source import module_bytes

ADD = """(module
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "k") (result i32) i32.const {k}))"""


def write(path, k: int) -> None:
    path.write_bytes(module_bytes(ADD.format(k=k).encode(), path))


@pytest.fixture(autouse=True)
def fresh_tables():
    shared.clear()
    yield
    shared.clear()


@pytest.fixture
def no_margin(monkeypatch):
    """The test's files are new: let a read stand for the next one at once (the tests
    that change a file wait for its ctime to move first)."""
    monkeypatch.setattr(shared, "MARGIN", 0.0)


def changed(path, k: int) -> None:
    """Rewrite ``path`` with the same size and mtime, once its ctime can move."""
    before = os.stat(path)
    while True:
        time.sleep(0.02)
        write(path, k)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(path)
        if after.st_ctime_ns != before.st_ctime_ns:
            assert after.st_size == before.st_size and after.st_mtime_ns == before.st_mtime_ns
            return


def test_the_identity_is_the_source_memos(tmp_path):
    path = tmp_path / "m.wasm"
    write(path, 1)
    info = os.stat(path)
    assert sandbox_mod._file_identity(info) == located.identity(info)
    assert shared.MARGIN == located.MARGIN


def test_a_file_read_before_is_not_read_again(tmp_path, reads, no_margin):
    path = tmp_path / "m.wasm"
    write(path, 7)
    time.sleep(0.02)
    boxes = [Sandbox(str(path)) for _ in range(5)]
    assert [b.call("k") for b in boxes] == [7] * 5
    assert len(reads) == 1
    assert boxes[-1].wasm == path.read_bytes()


def test_a_file_changed_in_place_is_read_again(tmp_path, reads, no_margin):
    path = tmp_path / "m.wasm"
    write(path, 1)
    time.sleep(0.02)
    assert Sandbox(str(path)).call("k") == 1
    changed(path, 2)  # same size, mtime put back: only the ctime tells
    assert Sandbox(str(path)).call("k") == 2
    assert len(reads) == 2


def test_a_file_changed_just_before_its_read_is_read_every_time(tmp_path, reads):
    path = tmp_path / "m.wasm"
    write(path, 3)  # (the real margin: 5 s)
    assert [Sandbox(str(path)).call("k") for _ in range(3)] == [3, 3, 3]
    assert len(reads) == 3


def test_a_file_system_without_honest_ctimes_is_read_every_time(
    tmp_path, reads, no_margin, monkeypatch
):
    monkeypatch.setattr(located, "_keeps_ctime", lambda path, info: False)
    path = tmp_path / "m.wasm"
    write(path, 4)
    time.sleep(0.02)
    assert [Sandbox(str(path)).call("k") for _ in range(3)] == [4, 4, 4]
    assert len(reads) == 3


def test_a_link_swapped_to_another_file_is_read(tmp_path, reads, no_margin):
    first, second, link = tmp_path / "a.wasm", tmp_path / "b.wasm", tmp_path / "m.wasm"
    write(first, 5)
    write(second, 6)  # same size, another inode
    os.symlink(first, link)
    time.sleep(0.02)
    assert Sandbox(str(link)).call("k") == 5
    tmp = tmp_path / "tmp-link"
    os.symlink(second, tmp)
    os.replace(tmp, link)
    assert Sandbox(str(link)).call("k") == 6
    assert len(reads) == 2


def test_a_file_replaced_by_rename_is_read(tmp_path, reads, no_margin):
    path, other = tmp_path / "m.wasm", tmp_path / "new.wasm"
    write(path, 8)
    time.sleep(0.02)
    assert Sandbox(str(path)).call("k") == 8
    write(other, 9)
    os.replace(other, path)
    assert Sandbox(str(path)).call("k") == 9
    assert len(reads) == 2


def test_forgetting_drops_what_was_read(tmp_path, reads, no_margin):
    path = tmp_path / "m.wasm"
    write(path, 1)
    time.sleep(0.02)
    Sandbox(str(path))
    shared.forget_loaded()
    Sandbox(str(path))
    assert len(reads) == 2


def test_without_the_cache_too(tmp_path, reads, no_margin):
    path = tmp_path / "m.wasm"
    write(path, 2)
    time.sleep(0.02)
    assert [Sandbox(str(path), use_cache=False).call("k") for _ in range(3)] == [2, 2, 2]
    assert len(reads) == 1
