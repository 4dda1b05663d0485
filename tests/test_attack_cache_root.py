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

from .cache_helpers import make_policy, own_pins

pytestmark = pytest.mark.skipif(not cache._PIN, reason="folders are pinned on Linux only")


@pytest.fixture(autouse=True)
def _own_pins(monkeypatch):
    yield from own_pins(monkeypatch)


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


def test_wipe_deletes_in_the_folder_whose_database_failed(cli, tmp_path, victim, monkeypatch):
    """`cache clear` of a cache whose database is damaged wipes the folder whose database
    failed to open, never the name looked up again: another of the user's caches
    swapped in at that name in between was wiped whole (red team round 20, F1)."""
    import sqlite3

    root = tmp_path / "project" / ".wc"
    root.parent.mkdir()
    _store(root).close()
    (root / "cache.db").write_bytes(b"not a database" * 100)
    other = tmp_path / "other-cache"  # another healthy cache of the user's
    _store(other).close()
    (other / "code" / "01").mkdir(parents=True)
    (other / "code" / "01" / "keep.entry").write_text("precious\n")
    with pytest.raises(sqlite3.DatabaseError) as caught:
        _store(root)
    moved = _swap(root, other)
    cache.wipe(root, caught.value.cache_where)
    assert (other / "code" / "01" / "keep.entry").read_text() == "precious\n"
    assert (other / "cache.db").is_file() and (other / "CACHEDIR.TAG").is_file()
    assert not moved.exists() or list(moved.iterdir()) == []
    assert root.is_symlink()  # (the name is not removed: it is no longer the folder wiped)


def test_a_wipe_that_fails_halfway_leaves_a_cache_clear_still_knows(tmp_path, monkeypatch):
    """The tag goes last (red team round 20, F7: it went first, in listing order, and a
    wipe failing on the next name left a folder every command refused as not a cache)."""
    from wasmsbx import fstree

    root = tmp_path / "c"
    where = cache.prepare_dir(root)
    (root / "code" / "01").mkdir(parents=True)
    (root / "cache.db").write_bytes(b"damaged")
    monkeypatch.setattr(fstree, "remove_tree", lambda *a, **k: False)  # (permissions)
    with pytest.raises(cache.CacheUnavailable, match="could not remove everything"):
        cache.wipe(root, where)
    assert (root / "CACHEDIR.TAG").is_file()


def test_a_folder_replaced_between_uses_is_checked_and_used_anew(tmp_path):
    """A long-lived process (watch, the MCP server): another process's `cache clear`
    removed the folder, and it was made again. The store of the run path must use the
    new folder, with a database of its own, not the removed one; the descriptor the
    folder is used through is the same number, now the new folder's (no descriptor more
    per replacement)."""
    root = tmp_path / "c"
    policy = make_policy(runtime__cache_dir=str(root))
    first = cache.shared_store(policy)
    first.miss("wasmtime")
    for n in range(20):
        os.rename(root, tmp_path / f"old{n}")
        root.mkdir()
        second = cache.shared_store(policy)
        assert second is not first and second.where == first.where
        second.miss("wasmtime")
        assert (root / "cache.db").is_file() and (root / "CACHEDIR.TAG").is_file()
        first = second
    assert _held(root) == 1


def _held(folder) -> int:
    """Descriptors of this process open on ``folder``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            continue
    return found.count(str(folder))


def test_a_process_using_many_folders_pins_a_bounded_number(tmp_path, monkeypatch):
    """Red team round 20 (F5): every folder pinned for good let a process using thousands
    of cache folders run out of descriptors, and then fail unrelated work. Past
    _PIN_MAX folders are used by name."""
    monkeypatch.setattr(cache, "_PINNED", {})
    monkeypatch.setattr(cache, "_PIN_MAX", 8)
    before = len(os.listdir("/proc/self/fd"))
    wheres = [_store(tmp_path / f"c{n}", connect=False).where for n in range(30)]
    assert sum(w.startswith("/proc/self/fd/") for w in wheres) == 8
    assert wheres[-1] == str(tmp_path / "c29")
    assert len(os.listdir("/proc/self/fd")) - before <= 8
    for fd, _ in cache._PINNED.values():  # (this test's own: closed again)
        os.close(fd)


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
    assert _held(root) == 1


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


@pytest.mark.parametrize("there", [True, False], ids=["folder there", "to be made"])
@pytest.mark.parametrize("metadata", [".git", ".hg", ".GIT"])
def test_a_discovered_policys_cache_folder_swapped_for_version_control_metadata_is_refused(
    tmp_path, metadata, there
):
    """Red team 102: a found policy's ``cache_dir = "sub/c"`` is checked when the policy
    is read (inside its folder, away from ``.git``). ``sub`` swapped for a link to the
    project's own ``.git`` afterwards still leads inside the folder, so the test of the
    folder opened (inside, only) let the cache write its files in ``.git``. The folder
    opened is now tested against version-control metadata as well."""
    from wasmsbx import policy as policy_mod

    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "sandbox.toml").write_text('[runtime]\ncache_dir = "sub/c"\n')
    vcs = project / metadata
    vcs.mkdir()
    if there:
        (vcs / "c").mkdir()
    policy = policy_mod.discover(cwd=project)
    assert policy.confined == os.path.realpath(project)
    os.rename(project / "sub", project / "old-sub")
    (project / "sub").symlink_to(metadata)
    why = "version-control metadata" if there else "leads through sub, now a link"
    for opener in (cache.shared_store, cache.open_store):
        with pytest.raises(cache.CacheUnavailable, match=why):
            opener(policy)
    # nothing made there, not even the folder c; nothing written in the one there
    assert [p.name for p in vcs.rglob("*")] == (["c"] if there else [])


def _plant(folder, layout: str) -> None:
    if layout == "probes holding data":
        (folder / "probes" / "data").mkdir(parents=True)
        (folder / "probes" / "data" / "results.csv").write_text("1,2\n")
    elif layout == "a folder named like a tag being written":
        (folder / ".CACHEDIR.TAG.backup" / "sub").mkdir(parents=True)
        (folder / ".CACHEDIR.TAG.backup" / "sub" / "thesis.tex").write_text("x\n")
    elif layout == "a folder named CACHEDIR.TAG":
        (folder / "CACHEDIR.TAG").mkdir()
        (folder / "code" / "src").mkdir(parents=True)
        (folder / "code" / "src" / "main.c").write_text("int main;\n")
    elif layout == "another tool's tag":
        (folder / "CACHEDIR.TAG").write_text(
            "Signature: 8a477f597d28d172789f06886806bc55\n# created by sometool\n"
        )
        (folder / "code").mkdir()
        (folder / "code" / "notes.txt").write_text("precious\n")
    elif layout == "another tool's tag and links":
        (folder / "CACHEDIR.TAG").write_text(
            "Signature: 8a477f597d28d172789f06886806bc55\n# created by sometool\n"
        )
        (folder / "real-code").mkdir()
        (folder / "code").symlink_to("real-code")
        (folder / "hits.log").symlink_to("/dev/null")


@pytest.mark.parametrize(
    "layout",
    [
        "probes holding data",
        "a folder named like a tag being written",
        "a folder named CACHEDIR.TAG",
        "another tool's tag",
        "another tool's tag and links",
    ],
)
def test_folders_that_only_look_like_a_cache_are_left_alone(cli, tmp_path, layout):
    """Red team round 20 (F2-F4): `probes/` and `.CACHEDIR.TAG.*` were exempt from the
    "not empty" rule whatever they held, any `CACHEDIR.TAG` (a folder, another tool's)
    made a folder a cache, and `cache clear` removed links in any tagged folder: each
    ended with the user's files deleted. Such a folder is not a cache: nothing in it is
    written, chmodded or deleted, by a run or by `cache clear`."""
    folder = tmp_path / "mine"
    folder.mkdir(mode=0o755)
    _plant(folder, layout)

    def snapshot():
        return sorted(
            (str(p.relative_to(folder)), p.is_symlink(), p.lstat().st_mode)
            for p in folder.rglob("*")
        )

    before = snapshot()
    run = cli("run", str(_example()), "--cache-dir", str(folder))
    assert run.code == 0 and "cache unavailable" in run.stderr, run
    cleared = cli("cache", "clear", "--cache-dir", str(folder))
    assert cleared.code in (0, 105) and "internal error" not in cleared.stderr, cleared
    assert snapshot() == before
    assert oct(folder.stat().st_mode & 0o777) == "0o755"


def test_wasmer_probe_results_alone_do_not_stop_a_folder_becoming_a_cache(tmp_path):
    folder = tmp_path / "c"
    (folder / "probes").mkdir(parents=True)
    (folder / "probes" / "wasmer-0123456789abcdef.txt").write_text("v1\n")
    (folder / ".CACHEDIR.TAG.12345").write_text("a tag being written")
    _store(folder).close()
    assert b"wasmsbx" in (folder / "CACHEDIR.TAG").read_bytes()


def test_a_cache_tagged_by_another_run_while_this_one_looked_is_used(tmp_path, monkeypatch):
    """Runs starting together on a new cache folder: this one saw no tag, then another
    tagged the folder and made its database before this one listed it. It is a cache
    (found by tests/test_cache_cli.py's sixteen concurrent runs)."""
    root = tmp_path / "c"
    root.mkdir(mode=0o700)
    real_listdir = os.listdir

    def other_run_first(path):
        if not (root / "CACHEDIR.TAG").exists():
            (root / "CACHEDIR.TAG").write_text(cache.TAG_TEXT)
            (root / "cache.db").write_bytes(b"")
        return real_listdir(path)

    real_ours = cache._ours
    looked = []

    def untagged_at_first(where):
        looked.append(where)
        return real_ours(where) if len(looked) > 1 else False

    monkeypatch.setattr(cache, "_ours", untagged_at_first)
    monkeypatch.setattr(os, "listdir", other_run_first)
    cache.prepare_dir(root)
    monkeypatch.undo()
    assert (root / "CACHEDIR.TAG").read_text() == cache.TAG_TEXT


def test_a_cache_folder_made_then_refused_is_removed_again(tmp_path, monkeypatch):
    """Red team round 20 (F6): `cache_dir = "sub/.wc"` in a discovered sandbox.toml with
    `sub` swapped for a link to elsewhere as the folder was made: the empty folder was
    made elsewhere, then refused as outside the project, and left there. It is removed
    again (it is empty, and this command made it)."""
    from wasmsbx import policy as policy_mod

    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "sandbox.toml").write_text('[runtime]\ncache_dir = "sub/.wc"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    policy = policy_mod.discover(cwd=project)
    real_mkdir = os.mkdir

    def swapping(path, *args, **kwargs):
        if str(path).endswith(".wc") and not (project / "sub").is_symlink():
            os.rename(project / "sub", project / "sub.old")
            (project / "sub").symlink_to(elsewhere)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", swapping)
    # Made in `sub` as it was opened before the swap (now sub.old, in the project), and
    # used through that descriptor: never looked up through the link again.
    store = cache.open_store(policy)
    store.close()
    monkeypatch.undo()
    assert list(elsewhere.iterdir()) == []
    assert (project / "sub.old" / ".wc" / "CACHEDIR.TAG").is_file()


def test_a_pinned_descriptor_closed_by_other_code_is_never_written_through(tmp_path):
    """Paths through /proc/self/fd/N outlive nothing but the number: code elsewhere in the
    process that closes that number by mistake (a double close) lets it be reused for
    another folder, and the cache's writes, removals and journal would land there. Each
    use checks the number still holds the folder pinned."""
    root = tmp_path / "c"
    store = _store(root)
    store.close()
    fd = int(store.where.rsplit("/", 1)[1])
    other = tmp_path / "other"
    other.mkdir()
    # The mistake of some other code, and the number reused for another folder (dup2:
    # the two at once, no other thread can take the number between them)
    elsewhere = os.open(other, os.O_RDONLY | os.O_DIRECTORY)
    os.dup2(elsewhere, fd)
    os.close(elsewhere)
    try:
        with pytest.raises(OSError, match="closed by other code"):
            store.write_blob("01" + "ab" * 31, b"native code")
        with pytest.raises(OSError, match="closed by other code"):
            store.clear()
        with pytest.raises(OSError, match="closed by other code"):
            store.db  # noqa: B018
        store.hit("01" + "ab" * 31, "wasmtime")
        cache.flush_hits()
        assert list(other.iterdir()) == []
    finally:
        back = os.open(root, os.O_RDONLY | os.O_DIRECTORY)  # (as it was, for the others)
        os.dup2(back, fd, inheritable=False)
        os.close(back)


def test_a_pinned_number_closed_and_reused_by_another_pin_is_never_taken_back(tmp_path):
    """Red team round 22: after a double close let folder B be pinned at A's old number,
    messages named A for B's paths, and opening A again replaced the number (dup2),
    taking B's descriptor for A. A number that no longer holds its pin is not ours:
    A gets a number of its own, and B's keeps B."""
    a, b = tmp_path / "a", tmp_path / "b"
    where_a = cache.prepare_dir(a)
    fd = int(where_a.rsplit("/", 1)[1])
    os.close(fd)  # the mistake of some other code
    where_b = cache.prepare_dir(b)
    if where_b != where_a:  # (another thread took the number first)
        pytest.skip("the closed number was not reused for B")
    assert cache.shown(where_b + "/code/01") == str(b / "code" / "01")
    again = cache.prepare_dir(a)
    assert again != where_b
    assert os.path.samefile(where_b, b) and os.path.samefile(again, a)
    assert cache.shown(again + "/code") == str(a / "code")
    assert cache.shown(where_b + "/code") == str(b / "code")
