"""Trees of any depth, where a guest or a planted folder can make one (red team round
73): removed and measured by descriptors, never by recursion or whole paths."""

from __future__ import annotations

import os

import pytest

from wasmsbx import fstree

from .conftest import EXAMPLES


def chain(top, depth: int, name: str = "z") -> int:
    """A chain of ``depth`` folders under ``top``, made relative to each other as a
    guest's WASI calls make them (any path length); a descriptor of the deepest."""
    fd = os.open(top, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        deeper = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    return fd


def _chain(top, depth: int, name: str = "z") -> None:
    fd = chain(top, depth, name)
    out = os.open("blob", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
    os.write(out, b"x" * 100)
    os.close(out)
    os.symlink("/", "root-link", dir_fd=fd)  # (never followed)
    os.close(fd)


def du(path) -> int:
    """What tree_bytes should say of a shallow tree, worked out another way: what every
    entry takes (its lstat size, or its blocks if more) plus ENTRY_COST, and the top
    folder's own."""

    def takes(info) -> int:
        return max(info.st_size, info.st_blocks * 512)

    total = takes(os.lstat(path))
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            total += takes(os.lstat(os.path.join(folder, name))) + fstree.ENTRY_COST
    return total


def test_remove_tree_takes_any_depth_and_never_follows_links(deep_tmp):
    tmp_path = deep_tmp
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    top = tmp_path / "top"
    top.mkdir()
    _chain(top, 2500)
    _chain(top, 40, "y" * 250)  # (a path of 10,000 characters)
    (top / "to-outside").symlink_to(outside)
    measured = fstree.tree_bytes(str(top), 10**6, 10**4)
    # (2,540 folders of a block each, 2 files, 3 links: far from what the outside holds)
    assert 2540 * 4096 + 200 <= measured < 2545 * (8192 + fstree.ENTRY_COST)
    assert fstree.remove_tree(str(top)) and not top.exists()
    assert (outside / "keep").read_text() == "keep"
    link = tmp_path / "link"
    link.symlink_to(outside)
    assert fstree.remove_tree(str(link)) and not os.path.lexists(link) and outside.exists()


def test_tree_bytes_counts_folders_and_caps_depth_and_entries(tmp_path):
    """Folders count, by their own size (a folder emptied of 20,000 long names keeps
    its blocks; 100,000 empty folders held 412 MB uncounted: red team round 74)."""
    _chain(tmp_path, 50)
    assert fstree.tree_bytes(str(tmp_path), 10**6, 51) == du(tmp_path)
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(2000):
        (wide / f"{i:0>200}").write_bytes(b"")
    for name in os.listdir(wide):
        os.unlink(wide / name)
    assert os.lstat(wide).st_size > 4096  # (an emptied folder keeps its size)
    assert fstree.tree_bytes(str(tmp_path), 10**6, 51) == du(tmp_path)
    assert fstree.tree_bytes(str(tmp_path), 10**6, 20) is None
    assert fstree.tree_bytes(str(tmp_path), 10, 1000) is None


def test_cache_clear_removes_a_planted_deep_tree(cli, deep_tmp):
    """A project's cache folder (it comes with a repository) holding a chain of 1,500
    folders under code/: `cache clear` died with "internal error: RecursionError"."""
    tmp_path = deep_tmp
    cache = tmp_path / "wc"
    assert cli("compile", EXAMPLES / "add.wat", "--cache-dir", cache).code == 0
    _chain(cache / "code", 1500)
    result = cli("cache", "clear", "--cache-dir", cache)
    assert result.code == 0, result.stderr
    assert not (cache / "code").exists()


def test_remove_tree_ends_when_a_folder_cannot_be_moved(tmp_path):
    """A subfolder of a read-only folder (or an immutable one, a mount point) cannot be
    renamed: each pass counted the refused rename as progress and looped forever."""
    import threading

    top = tmp_path / "t"
    (top / "a" / "b").mkdir(parents=True)
    real_rename = os.rename

    def refuse(*args, **kw):
        raise PermissionError(13, "Permission denied")

    os.rename = refuse
    try:
        done = []
        worker = threading.Thread(
            target=lambda: done.append(fstree.remove_tree(str(top))), daemon=True
        )
        worker.start()
        worker.join(60)
    finally:
        os.rename = real_rename
    assert done == [False]
    assert fstree.remove_tree(str(top)) and not top.exists()


def test_tiny_files_count_by_the_blocks_they_take(tmp_path):
    """Red team round 84: a file counted by its size, so 82,177 one-byte files held 323
    MiB of disk under a 48 MiB session budget (a block each). A sparse file counts by its
    size, not by the blocks it lacks."""
    for i in range(100):
        (tmp_path / f"f{i}").write_bytes(b"x")
    block = os.lstat(tmp_path / "f0").st_blocks * 512
    if block < 512:
        pytest.skip("this file system stores tiny files without blocks of their own")
    measured = fstree.tree_bytes(str(tmp_path), 10**6, 10)
    assert measured >= 100 * (block + fstree.ENTRY_COST), (measured, block)
    with open(tmp_path / "sparse", "wb") as fh:
        fh.truncate(1 << 30)
    assert fstree.tree_bytes(str(tmp_path), 10**6, 10) >= measured + (1 << 30)
