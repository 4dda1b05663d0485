"""Links planted in a cache folder (red-team). A cloned project may bring its cache
(`sandbox.toml` with `cache_dir = ".wc"`, a `.wc/CACHEDIR.TAG`), and git keeps symbolic
links. On 3be5a46 a planted `.wc/hits.log -> ../../victim` made two `wasmsbx run`s
overwrite the victim, a file outside the project, with a hit line, and `wasmsbx cache list`
empty it (folding the journal truncates it); `cache.db-wal` and the other files wasmsbx
writes there are opened by name the same way. A cache folder holding such a link is not
used (warning; compiled without it), and the journal is never opened through a link."""

from __future__ import annotations

import shutil

import pytest

from wasmsbx.native import cache

from .conftest import EXAMPLES

TAG = "Signature: 8a477f597d28d172789f06886806bc55\n# a wasmsbx cache\n"


@pytest.fixture
def project(tmp_path):
    (tmp_path / "victim.txt").write_text("precious\n")
    root = tmp_path / "project"
    (root / ".wc").mkdir(parents=True)
    (root / ".wc" / "CACHEDIR.TAG").write_text(TAG)
    (root / "sandbox.toml").write_text('[runtime]\ncache_dir = ".wc"\n')
    shutil.copy(EXAMPLES / "wasi" / "hello.wasm", root / "tool.wasm")  # cached: 39 KB
    return root


@pytest.mark.parametrize("name", ["hits.log", "cache.db", "cache.db-wal", "cache.db-shm", "code"])
def test_a_planted_link_in_the_cache_never_writes_through(cli, project, name):
    (project / ".wc" / name).symlink_to("../../victim.txt")
    for _ in range(2):
        result = cli("run", "tool.wasm", cwd=project)
        assert result.code == 0, result
        assert "cache unavailable" in result.stderr and "link" in result.stderr, result
    cli("cache", "list", cwd=project)
    cli("cache", "verify", cwd=project)
    assert (project.parent / "victim.txt").read_text() == "precious\n"


def test_a_journal_replaced_by_a_link_later_is_not_followed(tmp_path):
    """A guest with a read-write grant over the cache could swap it in mid-run."""
    (tmp_path / "victim.txt").write_text("precious\n")
    root = tmp_path / "c"
    store = cache.Store.open(root, 1 << 30)
    (root / cache.HITS).symlink_to("../victim.txt")
    store.hit("k" * 64, "wasmtime")
    store.fold_hits()
    store.close()
    assert (tmp_path / "victim.txt").read_text() == "precious\n"
