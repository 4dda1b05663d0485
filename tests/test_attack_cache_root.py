"""The cache folder itself swapped for a link while a command uses it (red team, round 19).

A project's cache (`cache_dir = ".wc"`) sits in a folder that a process of the user, or a
guest granted the project read-write, can rename in. The round-19 helper exchanged `.wc`
with a link to another folder (renameat2 RENAME_EXCHANGE) in a loop while `wasmsbx cache
clear` ran: in 36-51 runs the other folder's `code/` was deleted, and a `cache.db` and a
tag were made there. Everything below the folder was already reached without following
a link (tests/test_attack_cache_links.py); the folder itself was still reached by name.

Now the folder is opened once, when its checks pass (cache.prepare_dir), and used through
that descriptor (/proc/self/fd/N): these tests swap the name at the moments the race
hit, deterministically, and the folder the link leads to must come out untouched."""

from __future__ import annotations

import os
import sys

import pytest

from wasmsbx.native import cache

from .cache_helpers import make_policy

pytestmark = pytest.mark.skipif(not cache._PIN, reason="folders are pinned on Linux only")


@pytest.fixture
def victim(tmp_path):
    """Another folder of the user's, with a `code/` folder of its own."""
    folder = tmp_path / "victim"
    (folder / "code" / "01").mkdir(parents=True)
    (folder / "code" / "01" / "keep.entry").write_text("precious\n")
    (folder / "notes.txt").write_text("precious\n")
    return folder


def _untouched(victim) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["code", "notes.txt"]
    assert (victim / "code" / "01" / "keep.entry").read_text() == "precious\n"


def _swap(root, victim):
    """The name ``root`` now leads to ``victim``; the folder checked is at the return."""
    moved = root.parent / "moved"
    os.rename(root, moved)
    root.symlink_to(victim)
    return moved


def _store(root, connect=True):
    return cache.Store.open(root, 1 << 30, connect=connect)


def test_clear_clears_the_folder_checked_not_where_its_name_now_leads(tmp_path, victim):
    root = tmp_path / "project" / ".wc"
    root.parent.mkdir()
    store = _store(root)
    (root / "code" / "01").mkdir(parents=True)
    (root / "code" / "01" / "x.entry").write_bytes(b"x")
    moved = _swap(root, victim)
    store.clear()
    store.close()
    _untouched(victim)
    assert not (moved / "code").exists()


def test_the_database_opens_in_the_folder_checked(tmp_path, victim):
    root = tmp_path / "project" / ".wc"
    root.parent.mkdir()
    store = _store(root, connect=False)  # (the database is opened on first use)
    moved = _swap(root, victim)
    store.miss("wasmtime")
    store.close()
    _untouched(victim)
    assert (moved / "cache.db").is_file()


def test_a_store_of_the_run_path_writes_entries_in_the_folder_checked(tmp_path, victim):
    root = tmp_path / "project" / ".wc"
    root.parent.mkdir()
    store = _store(root)
    moved = _swap(root, victim)
    key = "01" + "ab" * 31
    store.put(key, b"native code", {"size": 11})
    store.hit(key, "wasmtime")
    cache.flush_hits()
    store.close()
    _untouched(victim)
    assert (moved / "code" / "01" / (key + cache.CODE_SUFFIX)).read_bytes() == b"native code"


def test_wipe_deletes_in_the_folder_it_opened(tmp_path, victim, monkeypatch):
    """`cache clear` of a cache whose database is damaged: the name swapped right after
    the folder was opened (where the tag is read)."""
    root = tmp_path / "project" / ".wc"
    root.parent.mkdir()
    _store(root).close()
    (root / "cache.db").write_bytes(b"not a database")
    (victim / "CACHEDIR.TAG").write_text(cache.TAG_TEXT)
    real_head = cache._tag_head
    swapped = []

    def swapping(where):
        if not swapped:
            swapped.append(_swap(root, victim))
        return real_head(where)

    monkeypatch.setattr(cache, "_tag_head", swapping)
    cache.wipe(root)
    assert (victim / "CACHEDIR.TAG").is_file()
    (victim / "CACHEDIR.TAG").unlink()
    _untouched(victim)
    assert not (swapped[0] / "cache.db").exists()
    assert root.is_symlink()  # (the name is not removed: it is no longer the folder wiped)


def test_a_folder_replaced_between_uses_is_checked_and_used_anew(tmp_path):
    """A long-lived process (watch, the MCP server): another process's `cache clear`
    removed the folder, and it was made again. The store of the run path must use the
    new folder, not the removed one (whose descriptor it holds)."""
    root = tmp_path / "c"
    policy = make_policy(runtime__cache_dir=str(root))
    first = cache.shared_store(policy)
    first.miss("wasmtime")
    os.rename(root, tmp_path / "old")
    root.mkdir()
    second = cache.shared_store(policy)
    assert second is not first and second.where != first.where
    second.miss("wasmtime")
    assert (root / "cache.db").is_file()
    assert (root / "CACHEDIR.TAG").is_file()


def test_users_see_the_folder_by_name(tmp_path):
    """Messages name the folder as the user gave it, never /proc/self/fd/N."""
    root = tmp_path / "c"
    store = _store(root)
    (root / "code").mkdir()
    (root / "code" / "01").write_text("a file where a folder belongs")
    with pytest.raises(cache.CacheUnavailable) as caught:
        store.write_blob("01" + "ab" * 31, b"x")
    assert str(root / "code" / "01") in str(caught.value)
    assert "/proc/self/fd" not in str(caught.value)
    try:
        os.open(os.path.join(store.code_text, "01", "x"), os.O_RDONLY)
    except OSError as exc:
        text = cache.reason(exc)
    assert str(root / "code" / "01") in text and "/proc/self/fd" not in text
    store.close()


def test_one_descriptor_per_folder_however_often_it_is_opened(tmp_path):
    root = tmp_path / "c"
    wheres = {_store(root, connect=False).where for _ in range(50)}
    assert len(wheres) == 1

    def held():
        found = []
        for name in os.listdir("/proc/self/fd"):
            try:
                found.append(os.readlink(f"/proc/self/fd/{name}"))
            except OSError:
                continue
        return found.count(str(root))

    assert held() == 1


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux's")
def test_clear_racing_an_exchange_of_the_folder_with_a_link(cli, tmp_path, victim):
    """The round-19 race itself, through the real entry point: `.wc` and a link to the
    victim exchanged (renameat2 RENAME_EXCHANGE) by another process for as long as 20
    runs and `cache clear`s take. Its `code/` was deleted on 0db6ddf; it stays, and so
    does everything else of the victim's but what sqlite makes (below)."""
    import subprocess
    import textwrap

    project = tmp_path / "project"
    project.mkdir()
    (project / "sandbox.toml").write_text('[runtime]\ncache_dir = ".wc"\ncache_min_size = 0\n')
    (project / ".wcl").symlink_to(victim)
    stop = tmp_path / "stop"
    swapper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import ctypes, os
                libc = ctypes.CDLL(None, use_errno=True)
                a, b = b"{project}/.wc", b"{project}/.wcl"
                rename = getattr(libc, "renameat2", None)
                while not os.path.exists("{stop}"):
                    if os.path.lexists(a):
                        rename(-100, a, -100, b, 2) if rename else None
                """
            ),
        ]
    )
    try:
        for _ in range(20):
            cli("run", str(_example()), cwd=project)
            result = cli("cache", "clear", cwd=project)
            # (101: the discovered policy's cache_dir was the link, outside its folder)
            assert result.code in (0, 101, 105), result
            assert "internal error" not in result.stderr, result
    finally:
        stop.write_text("")
        swapper.wait(timeout=60)
    assert not (victim / "CACHEDIR.TAG").exists() and not (victim / "hits.log").exists()
    # sqlite opens its files by name: it resolves /proc/self/fd/N to the folder's path
    # then (os_unix.c follows every link in the name) and opens that, so in this race it
    # can make or open a `cache.db` (and its -wal, -shm) in the folder the link leads to.
    # That is the one surface left (README, "The cache folder"); nothing else is touched.
    for name in ("cache.db", "cache.db-wal", "cache.db-shm", "cache.db-journal"):
        (victim / name).unlink(missing_ok=True)
    _untouched(victim)


def _example():
    from .conftest import EXAMPLES

    return EXAMPLES / "wasi" / "hello.wasm"


@pytest.mark.parametrize("name", ["code", "cache.db", "hits.log"])
def test_a_folder_holding_only_names_a_cache_uses_is_not_adopted(cli, tmp_path, name):
    """A folder of the user's that holds a `code/` folder (or a file named like one of a
    cache's) and nothing else, but no CACHEDIR.TAG, was taken for a cache: tagged, used,
    and `cache clear` deleted its `code/` (red team round 20). wasmsbx tags a folder
    before it writes anything there, so such a folder is not one of its caches."""
    folder = tmp_path / "mine"
    folder.mkdir()
    if name == "code":
        (folder / "code" / "src").mkdir(parents=True)
        (folder / "code" / "src" / "main.c").write_text("int main;\n")
    else:
        (folder / name).write_text("precious\n")
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    run = cli("run", str(_example()), "--cache-dir", str(folder))
    assert run.code == 0 and "cache unavailable" in run.stderr, run
    assert "not a wasmsbx cache" in run.stderr, run
    cleared = cli("cache", "clear", "--cache-dir", str(folder))
    if name == "hits.log":  # (no database, no code folder: no cache there yet)
        assert cleared.code == 0 and "no cache at" in cleared.stdout, cleared
    else:
        assert cleared.code == 105 and "not a wasmsbx cache" in cleared.stderr, cleared
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before


def test_a_folder_holding_only_wasmer_probes_is_adopted(tmp_path):
    """`wasmsbx backends` writes the wasmer compilers' probe results in `probes/` of the
    cache folder before anything has tagged it."""
    folder = tmp_path / "c"
    (folder / "probes").mkdir(parents=True)
    store = _store(folder)
    store.close()
    assert (folder / "CACHEDIR.TAG").is_file()


def test_a_discovered_policys_cache_folder_swapped_after_its_check_is_refused(
    tmp_path, monkeypatch
):
    """A sandbox.toml found in the working folder may only name a cache folder inside its
    own folder (policy.confine, by name). The name swapped for a link to elsewhere after
    that check and before the folder is opened: the folder opened is checked again."""
    from wasmsbx import policy as policy_mod

    project = tmp_path / "project"
    project.mkdir()
    (project / "sandbox.toml").write_text('[runtime]\ncache_dir = ".wc"\n')
    (project / ".wc").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    policy = policy_mod.discover(cwd=project)
    assert policy.confined == os.path.realpath(project)
    os.rename(project / ".wc", project / ".moved")
    (project / ".wc").symlink_to(elsewhere)
    with pytest.raises(cache.CacheUnavailable, match="outside the folder of the sandbox.toml"):
        cache.shared_store(policy)
    with pytest.raises(cache.CacheUnavailable, match="outside the folder of the sandbox.toml"):
        cache.open_store(policy)
    assert list(elsewhere.iterdir()) == []
