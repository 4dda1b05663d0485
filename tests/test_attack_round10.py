"""Red team, round 10: verification memos (``KEY.verified``, native/entry.py ``Memo``)
written by ``recorded.write_small`` (b4ab1fb) instead of their own open/O_EXCL/rename.

Tests whose docstring starts with "Held" pin what held; the others are findings."""

from __future__ import annotations

import errno
import multiprocessing
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from wasmsbx.native import cache, entry, recorded

from .cache_helpers import make_policy, new_run_sandbox, stored_entry

WAT = '(module (func (export "f") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'

Sandbox = new_run_sandbox


@pytest.fixture
def module(tmp_path) -> Path:
    path = tmp_path / "m.wat"
    path.write_text(WAT)
    return path


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def first_store(module, tmp_path) -> tuple:
    """An entry stored, not yet verified by a load (so no memo yet)."""
    policy = make_policy()
    assert Sandbox(module, policy).cache_state == "miss"
    path, memo = stored_entry(tmp_path)
    assert not os.path.lexists(memo)
    return policy, path, memo


def temporaries(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def alter(path: Path) -> None:
    """Flip a byte of the native code (the entry's first byte), keeping the mtime."""
    before = os.stat(path)
    with open(path, "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# ----------------------------------------------------------------- planted at the memo path


def test_the_memo_is_a_private_file_renamed_into_place(module, tmp_path, later, hashed):
    """Held: the memo is written (0600, a regular file), no temporary is left, and the
    next load takes the entry on it."""
    policy, path, memo = first_store(module, tmp_path)
    assert Sandbox(module, policy).cache_state == "hit"
    info = os.lstat(memo)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert temporaries(path.parent) == []
    hashed.clear()
    assert Sandbox(module, policy).call("f", 2, 3) == 5
    assert hashed == []


@pytest.mark.parametrize("kind", ["link", "dangling", "fifo", "hardlink"])
def test_a_planted_memo_path_is_replaced_never_written_through(
    module, tmp_path, later, hashed, victim, kind
):
    """Held: a link (to a file of the user's, or dangling), a FIFO with no reader, or a
    hard link to a file of the user's at ``KEY.verified``: the write replaces the name
    (rename), never opens it; the file it led to is untouched; nothing blocks."""
    policy, path, memo = first_store(module, tmp_path)
    if kind == "link":
        memo.symlink_to(victim)
    elif kind == "dangling":
        memo.symlink_to(tmp_path / "created-through-link")
    elif kind == "fifo":
        os.mkfifo(memo)
    else:
        os.link(victim, memo)
    assert Sandbox(module, policy).cache_state == "hit"
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "created-through-link").exists()
    assert stat.S_ISREG(os.lstat(memo).st_mode)
    assert temporaries(path.parent) == []
    alter(path)
    hashed.clear()
    box = Sandbox(module, policy)
    assert hashed, "an altered entry was taken on its memo"
    assert box.cache_state == "miss" and box.call("f", 2, 3) == 5


def test_a_folder_at_the_memo_path_neither_crashes_nor_vouches(module, tmp_path, later, hashed):
    """Held: a folder named ``KEY.verified`` (empty or not): the rename fails, the run
    goes on, the temporary is removed, every load hashes the entry in full, and an altered
    entry is refused."""
    policy, path, memo = first_store(module, tmp_path)
    memo.mkdir()
    (memo / "inside").write_text("x")
    for _ in range(2):
        hashed.clear()
        box = Sandbox(module, policy)
        assert box.cache_state == "hit" and box.call("f", 2, 3) == 5
        assert hashed, "hashed in full"
    assert temporaries(path.parent) == []
    assert (memo / "inside").read_text() == "x"


# ------------------------------------------------------------------- the temporary file


@pytest.mark.parametrize("kind", ["link", "fifo", "folder", "file"])
def test_a_planted_temporary_name_is_never_opened(
    module, tmp_path, later, hashed, victim, monkeypatch, kind
):
    """Held: ``.STEM.PID.RANDOM.tmp`` made predictable (os.urandom pinned) and planted
    first: O_EXCL|O_NOFOLLOW refuses it, no memo is written, the run goes on, the file a
    link names is untouched, and a later load hashes in full."""
    policy, path, memo = first_store(module, tmp_path)
    monkeypatch.setattr(recorded.os, "urandom", lambda n: b"\xab" * n)
    stem = memo.name[:16]
    planted = path.parent / f".{stem}.{os.getpid()}.{'ab' * 4}.tmp"
    if kind == "link":
        planted.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(planted)
    elif kind == "folder":
        planted.mkdir()
    else:
        planted.write_bytes(b"planted")
    assert Sandbox(module, policy).cache_state == "hit"
    assert victim.read_text() == "precious\n"
    assert not os.path.lexists(memo)
    hashed.clear()
    assert Sandbox(module, policy).cache_state == "hit"
    assert hashed


# ------------------------------------------------------ the code folder swapped for a link


def test_a_code_folder_swapped_for_a_link_after_the_check_is_not_written_through(
    module, tmp_path, later, monkeypatch
):
    """Held: ``code/XX`` renamed away and replaced by a link (to a folder elsewhere) while
    the entry is hashed (after it was opened and checked): the memo is not written (the
    folder is refused as a link), nothing lands where the link leads, the run is a hit."""
    policy, path, memo = first_store(module, tmp_path)
    folder = path.parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = entry._hash_mapped

    def swap(fd, stored_size, key):
        hasher = real(fd, stored_size, key)
        os.rename(folder, tmp_path / "moved")
        folder.symlink_to(elsewhere)
        return hasher

    monkeypatch.setattr(entry, "_hash_mapped", swap)
    assert Sandbox(module, policy).cache_state == "hit"
    assert list(elsewhere.iterdir()) == []
    assert not os.path.lexists(tmp_path / "moved" / memo.name)


def test_a_code_folder_swapped_after_write_smalls_own_check(module, tmp_path, later, monkeypatch):
    """Held here by precondition until round 17: swapped after write_small's lstat, the
    memo landed where the link led. Now the memo is created and renamed relative to the
    folder opened without following a link (recorded.open_code_folder): it lands in the
    folder that was checked, nothing where the link leads, and a code folder that is a
    link is not used at all afterwards (the cache is reported unavailable)."""
    policy, path, memo = first_store(module, tmp_path)
    folder = path.parent
    moved, elsewhere = tmp_path / "moved", tmp_path / "elsewhere"
    elsewhere.mkdir()
    real_open = recorded.open_code_folder

    def swapping(where):
        fd = real_open(where)
        if cache.shown(where) == str(folder) and not moved.exists():
            os.rename(folder, moved)
            folder.symlink_to(elsewhere)
        return fd

    monkeypatch.setattr(recorded, "open_code_folder", swapping)
    assert Sandbox(module, policy).cache_state == "hit"
    monkeypatch.setattr(recorded, "open_code_folder", real_open)
    assert (moved / memo.name).is_file()
    assert list(elsewhere.iterdir()) == []
    box = Sandbox(module, policy)
    assert box.cache_state == "error", box.cache_state
    assert any("cache unavailable" in w for w in box.warnings), box.warnings


def test_the_code_folder_gone_before_the_memo_is_written(module, tmp_path, later, hashed):
    """Held: the entry removed (with its folder) between the load's last fstat and its
    memo (removed while hashed, its ctime changes: no memo at all): the memo write makes
    the folder again and leaves an orphan memo, which vouches for no new
    entry stored at that name (another inode, a newer ctime) and `cache prune` removes."""
    policy, path, memo = first_store(module, tmp_path)
    real = entry.write_small

    def gone(*args):  # (after the load's own check that the entry did not change)
        path.unlink()
        os.rmdir(path.parent)
        return real(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(entry, "write_small", gone)
        assert Sandbox(module, policy).cache_state == "hit"
    assert memo.is_file() and not path.exists()
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    hashed.clear()
    assert Sandbox(module, policy).cache_state == "miss"  # a new entry
    hashed.clear()
    assert Sandbox(module, policy).cache_state == "hit"
    assert hashed, "the orphan memo vouched for a new entry"
    path.unlink()
    store = cache.open_store(policy)
    try:
        cache.prune(store)
    finally:
        store.close()
    assert not memo.exists()


# --------------------------------------------------------------------------- concurrency


def _hammer(memo_path: str, entry_path: str, rounds: int, key: bytes, out) -> None:
    memo = entry.Memo(memo_path, lambda: key)
    info = os.stat(entry_path)
    bad = 0
    for i in range(rounds):
        memo.record(info, b"t" * entry.TAG_SIZE, {"n": i % 7})
        got = memo.recall(info)
        if got is not None and (got[0] != b"t" * entry.TAG_SIZE or got[1]["n"] not in range(7)):
            bad += 1
    out.put(bad)


def test_concurrent_writers_of_one_memo(tmp_path, monkeypatch):
    """Held: four processes and four threads writing and reading one memo: every read
    is a whole memo or none, no temporary is left, the last memo vouches."""
    # (an entry this young is remembered: set for this test only, and for the forked
    # writers, which inherit it; set by the writers themselves it outlived the test in
    # this process and made a later test remember a young entry)
    monkeypatch.setattr(entry, "MEMO_MARGIN", -10.0)
    folder = tmp_path / "code" / "ab"
    folder.mkdir(parents=True)
    target = folder / "abkey.entry"
    target.write_bytes(b"x" * 4096)
    memo_path = folder / "abkey.verified"
    key = b"k" * 32
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_hammer, args=(str(memo_path), str(target), 300, key, out))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    threads = [
        threading.Thread(target=_hammer, args=(str(memo_path), str(target), 300, key, out))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert [out.get(timeout=10) for _ in range(8)] == [0] * 8
    assert temporaries(folder) == []
    assert entry.Memo(str(memo_path), lambda: key).recall(os.stat(target)) is not None


# ---------------------------------------------------------------------------- disk full


def test_disk_full_when_the_memo_is_written(module, tmp_path, later, hashed, monkeypatch):
    """Held: os.write failing with ENOSPC while the memo is written: the run is a hit,
    no memo, no temporary; the entry altered afterwards is hashed and refused."""
    policy, path, memo = first_store(module, tmp_path)
    real_write = os.write

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    box = Sandbox(module, policy)
    assert box.cache_state == "hit" and box.call("f", 2, 3) == 5
    monkeypatch.setattr(os, "write", real_write)
    assert not os.path.lexists(memo)
    assert temporaries(path.parent) == []
    alter(path)
    hashed.clear()
    box = Sandbox(module, policy)
    assert hashed and box.cache_state == "miss"


def test_disk_full_everywhere(module, tmp_path, later, monkeypatch):
    """Held: every os.write fails with ENOSPC during a load (the hit journal too): the
    run is still a hit and leaves no temporary."""
    policy, path, memo = first_store(module, tmp_path)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    box = Sandbox(module, policy)
    monkeypatch.undo()
    assert box.cache_state == "hit" and box.call("f", 2, 3) == 5
    assert temporaries(path.parent) == []


def test_a_short_write_leaves_a_memo_that_vouches_for_nothing(
    module, tmp_path, later, hashed, monkeypatch
):
    """Held: a nearly full disk makes os.write write part of the memo and return its
    count. Until round 17 write_small did not loop: the torn memo was renamed into place
    (its MAC failed). Now a short write goes on where it stopped, and a write that makes
    no progress (here: halves down to nothing) fails the memo: none is written, no
    temporary file is left, and the next load hashes in full and writes a whole one."""
    policy, path, memo = first_store(module, tmp_path)
    real_write = os.write

    def short(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            return real_write(fd, bytes(data)[: len(data) // 2])
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short)
    assert Sandbox(module, policy).cache_state == "hit"
    monkeypatch.setattr(os, "write", real_write)
    assert not memo.exists() and not list(memo.parent.glob(".*.tmp"))
    hashed.clear()
    assert Sandbox(module, policy).cache_state == "hit"
    assert hashed, "no memo, yet not hashed"
    assert memo.is_file()
    alter(path)
    hashed.clear()
    assert Sandbox(module, policy).cache_state == "miss"
    assert hashed


# --------------------------------------------------------------------------- cache prune


def test_prune_removes_a_stale_memo_temporary_and_keeps_a_young_one(module, tmp_path, later):
    """Held: a `.STEM.PID.RANDOM.tmp` a crash left in a code folder is removed by `cache
    prune` once older than ORPHAN_GRACE (by its mtime); a young one (a write under way)
    is kept; a planted folder or link named like one is skipped or unlinked (the link,
    not what it names)."""
    policy, path, memo = first_store(module, tmp_path)
    folder = path.parent
    stale = folder / f".{memo.name[:16]}.4242.deadbeef.tmp"
    young = folder / f".{memo.name[:16]}.4243.feedface.tmp"
    odd_dir = folder / ".dir.1.2.tmp"
    odd_link = folder / ".link.1.2.tmp"
    stale.write_bytes(b"torn")
    young.write_bytes(b"writing")
    odd_dir.mkdir()
    (tmp_path / "kept").write_text("kept")
    odd_link.symlink_to(tmp_path / "kept")
    past = time.time() - cache.ORPHAN_GRACE - 5
    for each in (stale, odd_dir, odd_link):
        os.utime(each, (past, past), follow_symlinks=False)
    store = cache.open_store(policy)
    try:
        cache.prune(store)
    finally:
        store.close()
    assert not stale.exists() and young.exists() and odd_dir.is_dir()
    assert not os.path.lexists(odd_link) and (tmp_path / "kept").read_text() == "kept"
    assert path.exists()


def test_prune_cli_removes_a_stale_memo_temporary(cli, module, tmp_path, later):
    """Held: the same through `wasmsbx cache prune`."""
    policy, path, memo = first_store(module, tmp_path)
    stale = path.parent / f".{memo.name[:16]}.4242.deadbeef.tmp"
    stale.write_bytes(b"torn")
    past = time.time() - cache.ORPHAN_GRACE - 5
    os.utime(stale, (past, past))
    result = cli("cache", "prune")
    assert result.code == 0, result
    assert not stale.exists() and path.exists()


# ------------------------------------- findings: a folder at a memo path in a project cache

TAG = "Signature: 8a477f597d28d172789f06886806bc55\n# a wasmsbx cache\n"
KEY = "ab" + "0" * 62


@pytest.fixture
def project(tmp_path):
    """A cloned project that brings its cache (`cache_dir = ".wc"`); git keeps folders
    (with a file in them) wherever the project's author put them."""
    import shutil

    from .conftest import EXAMPLES

    root = tmp_path / "project"
    (root / ".wc").mkdir(parents=True)
    (root / ".wc" / "CACHEDIR.TAG").write_text(TAG)
    (root / "sandbox.toml").write_text('[runtime]\ncache_dir = ".wc"\ncache_min_size = 0\n')
    shutil.copy(EXAMPLES / "wasi" / "hello.wasm", root / "tool.wasm")
    return root


def test_finding_prune_crashes_on_a_folder_named_like_a_memo(cli, project):
    """BROKE (cache.py _orphans, not b4ab1fb itself): a folder `code/ab/KEY.verified/`
    with no entry beside it made `wasmsbx cache prune` fail with an internal error (exit
    100, IsADirectoryError from `memo.unlink(missing_ok=True)`), before it reached the
    `.*.tmp` sweep: the stale temporaries b4ab1fb names so that prune removes them were
    never removed in such a cache."""
    assert cli("run", "tool.wasm", cwd=project).code == 0
    planted = project / ".wc" / "code" / "ab" / (KEY + cache.MEMO_SUFFIX)
    planted.mkdir(parents=True)
    (planted / "keep").write_text("git keeps folders with a file\n")
    stale = next((project / ".wc" / "code").glob("??/*.entry")).parent / ".stem.1.2.tmp"
    stale.write_bytes(b"torn")
    past = time.time() - cache.ORPHAN_GRACE - 5
    os.utime(stale, (past, past))
    result = cli("cache", "prune", cwd=project)
    assert result.code == 0 and "internal error" not in result.stderr, result
    assert not stale.exists()


def test_finding_verify_crashes_on_a_bad_entry_whose_memo_path_is_a_folder(cli, project):
    """BROKE (cache.py Store.remove, not b4ab1fb itself): an entry that fails its check
    with a folder at its memo path made `wasmsbx cache verify` fail with an internal
    error (exit 100): Store.remove unlinks `KEY.verified` catching only
    FileNotFoundError. (A run in that state does not crash: load's caller turns the
    OSError into "cache unavailable ...; compiled without it".)"""
    assert cli("run", "tool.wasm", cwd=project).code == 0
    (path,) = (project / ".wc" / "code").glob("??/*.entry")
    alter(path)
    path.with_suffix(cache.MEMO_SUFFIX).mkdir()
    result = cli("cache", "verify", cwd=project)
    assert "internal error" not in result.stderr, result
    assert result.code != 100, result
    assert not path.exists()


def test_a_folder_in_place_of_an_entry_is_reported_once_and_the_run_says_unstored(cli, project):
    """Red team 129: `cache verify --json` listed a folder in place of an entry twice (by
    its record, then again as code without one once the record was gone) and said
    "removed" of a folder it leaves; the run that could not store over it said "miss
    (compiled, then stored)"."""
    import json

    assert cli("run", "tool.wasm", cwd=project).code == 0
    (path,) = (project / ".wc" / "code").glob("??/*.entry")
    path.unlink()
    path.mkdir()
    (path / "x").write_text("")
    result = cli("cache", "verify", "--json", cwd=project)
    (row,) = json.loads(result.stdout)["bad"]
    assert "a folder: left in place" in row["reason"], row
    result = cli("run", "tool.wasm", "--stats", cwd=project)
    assert "could not store compiled code" in result.stderr, result
    assert "unavailable (see the warning)" in result.stderr and "then stored" not in result.stderr
