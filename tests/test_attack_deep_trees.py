"""Trees of any depth, where a guest or a planted folder can make one (red team round
73): removed and measured by descriptors, never by recursion or whole paths."""

from __future__ import annotations

import os

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


def test_remove_tree_takes_any_depth_and_never_follows_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    top = tmp_path / "top"
    top.mkdir()
    _chain(top, 2500)
    _chain(top, 40, "y" * 250)  # (a path of 10,000 characters)
    (top / "to-outside").symlink_to(outside)
    assert fstree.tree_bytes(str(top), 10**6, 10**4) == 200 + 2 * len("/") + len(str(outside))
    assert fstree.remove_tree(str(top)) and not top.exists()
    assert (outside / "keep").read_text() == "keep"
    link = tmp_path / "link"
    link.symlink_to(outside)
    assert fstree.remove_tree(str(link)) and not os.path.lexists(link) and outside.exists()


def test_tree_bytes_caps_depth_and_entries(tmp_path):
    _chain(tmp_path, 50)
    assert fstree.tree_bytes(str(tmp_path), 10**6, 51) == 100 + 1
    assert fstree.tree_bytes(str(tmp_path), 10**6, 20) is None
    assert fstree.tree_bytes(str(tmp_path), 10, 1000) is None


def test_cache_clear_removes_a_planted_deep_tree(cli, tmp_path):
    """A project's cache folder (it comes with a repository) holding a chain of 1,500
    folders under code/: `cache clear` died with "internal error: RecursionError"."""
    cache = tmp_path / "wc"
    assert cli("compile", EXAMPLES / "add.wat", "--cache-dir", cache).code == 0
    _chain(cache / "code", 1500)
    result = cli("cache", "clear", "--cache-dir", cache)
    assert result.code == 0, result.stderr
    assert not (cache / "code").exists()
