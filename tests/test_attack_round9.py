"""Red team, round 9: the kernel's answer for realpath (trustdir.real), the cache
folder's privacy walk, prepare_dir and the trust folder made with os.mkdir, and memos
read with recorded.read_small."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from wasmsbx.native import cache, entry, trust
from wasmsbx.native.trustdir import real

root_only = pytest.mark.skipif(
    not hasattr(os, "getuid") or os.getuid() != 0, reason="fakes other users with chown"
)


@pytest.fixture
def odd(tmp_path, monkeypatch):
    """A folder of odd things: links, a loop, a FIFO, a folder named "(deleted)"."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("d/e")
    open("f", "w").close()
    os.symlink("d", "ld")
    os.symlink("d/e", "lde")
    os.symlink("nowhere", "dang")
    os.symlink("l2", "l1")
    os.symlink("l1", "l2")
    os.mkfifo("fifo")
    os.mkdir("x (deleted)")
    os.mkdir("nl\nname")
    os.symlink(str(tmp_path / "ld" / "e" / ".."), "dotdot")
    return tmp_path


CASES = [
    *("d", "d/", "d/.", "d/..", "ld", "ld/", "ld/e/..", "lde/..", "lde/../..", "f", "f/"),
    *("f/..", "dang", "dang/x", "dang/..", "l1", "l1/x", "fifo", "fifo/", "x (deleted)"),
    *("x (deleted)/", "nl\nname", "dotdot", "missing/../d", "ld/missing/../e", "", ".", ".."),
    *("//tmp", "///tmp", "/", "/..", "/dev/null", "/dev/zero", "/proc/self/cwd/ld"),
    *("/proc/self/root/tmp", "/proc/self", "/proc/self/ns/mnt", "a" * 300, "/" + "./" * 3000),
]


@pytest.mark.parametrize("path", CASES)
def test_real_agrees_with_realpath(odd, path):
    """Held: links, loops, "..", trailing slashes, FIFOs, devices, /proc, a folder named
    "... (deleted)", too-long names: the kernel's answer is realpath's."""
    assert real(path) == os.path.realpath(path)


def test_real_of_a_deleted_folder_and_a_nul(odd):
    fd = os.open("d/e", os.O_RDONLY)
    try:
        os.rmdir("d/e")
        for path in (f"/proc/self/fd/{fd}", f"/proc/self/fd/{fd}/x"):
            assert real(path) == os.path.realpath(path)
            assert real(path).endswith(" (deleted)" + path[len(f"/proc/self/fd/{fd}") :])
    finally:
        os.close(fd)
    # A NUL: whatever realpath does (3.11 raises ValueError, 3.9 answers), real does too
    try:
        expected = os.path.realpath("a\0b")
    except ValueError:
        with pytest.raises(ValueError):
            real("a\0b")
    else:
        assert real("a\0b") == expected


def test_real_never_blocks_on_a_fifo_or_opens_a_device(odd):
    """O_PATH: a FIFO without a writer and a terminal are named, never opened."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from wasmsbx.native.trustdir import real;"
        "print(real('fifo'), real('/dev/tty'), real('/dev/console'))"
    )
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", code, here], cwd=odd, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == str(odd / "fifo")


def test_a_cache_inside_the_trust_folder_is_refused_through_proc_and_deleted_names(
    tmp_path, monkeypatch
):
    """Held: the trust folder named "keys (deleted)", the cache named through
    /proc/self/cwd, through a link, with "..": refused before anything is made."""
    keys = tmp_path / "keys (deleted)"
    keys.mkdir(mode=0o700)
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(keys))
    monkeypatch.chdir(tmp_path)
    os.symlink(keys, "link")
    for target in (
        "/proc/self/cwd/keys (deleted)/c",
        f"{tmp_path}/link/c",
        f"{tmp_path}/link/x/../c",
        f"{tmp_path}/keys (deleted)",
        str(tmp_path),
    ):
        with pytest.raises(cache.CacheUnavailable, match="overlaps the trust folder"):
            cache.prepare_dir(cache.Path(target))
    assert os.listdir(keys) == []


def test_in_cache_roots_is_not_fooled_by_names(tmp_path, monkeypatch):
    """Held: a sibling whose name starts with the root's, a "(deleted)" name, /proc."""
    mine = tmp_path / "wsx (deleted)"
    mine.mkdir()
    (tmp_path / "wsx (deleted)2").mkdir()
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(mine))
    monkeypatch.chdir(tmp_path)
    assert trust.in_cache_roots(str(mine))
    assert trust.in_cache_roots("/proc/self/cwd/wsx (deleted)")
    assert not trust.in_cache_roots(str(tmp_path / "wsx (deleted)2"))
    assert not trust.in_cache_roots(str(tmp_path))


@root_only
def test_a_foreign_link_reached_through_a_link_of_yours_is_not_mapped_in_place(
    tmp_path, monkeypatch
):
    """Broke (before perf7 too): `WASMSBX_CACHE_DIR=~/wsx`, ~/wsx a link of yours to
    /tmp/wsx, a link another user made (to a folder of yours, so every check passes).
    _private_path looked at the path as written and where realpath ends, never at the
    links in between: the other user could swap /tmp/wsx, yet entries were mapped in
    place."""
    safe = tmp_path / "mine" / "wsx"
    safe.mkdir(parents=True)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)
    theirs = shared / "wsx"
    theirs.symlink_to(safe)
    os.lchown(theirs, 12345, 12345)
    link = tmp_path / "link"
    link.symlink_to(theirs)
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(link))
    assert not cache.Store.open(link, 1 << 30).protected
    relative = tmp_path / "rel"
    relative.symlink_to("shared/wsx")  # the same, relative
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(relative))
    assert not cache.Store.open(relative, 1 << 30).protected
    # a folder others could change, reached only inside a link's target
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)
    (tmp_path / "open" / "wsx").mkdir()
    hop = tmp_path / "hop"
    hop.symlink_to("open/wsx")
    assert not cache._private_path(str(hop))


def test_the_privacy_walk_follows_links_of_yours(tmp_path, monkeypatch):
    """Links of your own (relative, absolute, chained, with "..") still lead to a cache
    mapped in place; dangling links do not, nor (since the walk of round 9) a link loop,
    which perf7 called private (harmless there: prepare_dir refuses a loop first)."""
    safe = tmp_path / "mine" / "wsx"
    safe.mkdir(parents=True)
    (tmp_path / "a").symlink_to("mine")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "c").symlink_to("b/../a/wsx")
    monkeypatch.chdir(tmp_path)
    for path in (safe, tmp_path / "b" / "wsx", tmp_path / "c", "c", "./b/../c", "/proc/self/cwd/c"):
        assert cache._private_path(str(path)), path
    (tmp_path / "l1").symlink_to("l2")
    (tmp_path / "l2").symlink_to("l1")
    (tmp_path / "dang").symlink_to("nowhere")
    for path in ("l1", "l1/x", "dang", "missing"):
        assert not cache._private_path(path), path
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(tmp_path / "c"))
    assert cache.Store.open(tmp_path / "c", 1 << 30).protected


@root_only
def test_prepare_dir_refuses_what_is_not_a_folder_of_yours(tmp_path, monkeypatch):
    """Held: a file, a dangling link (nothing made through it), a link to another user's
    folder, another user's folder; missing parents are made, the leaf private."""
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(tmp_path / "trust"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(cache.CacheUnavailable, match="not a directory"):
        cache.prepare_dir(tmp_path / "file")
    (tmp_path / "dang").symlink_to(tmp_path / "target")
    with pytest.raises(cache.CacheUnavailable, match="cannot create"):
        cache.prepare_dir(tmp_path / "dang")
    assert not (tmp_path / "target").exists()
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, 12345, 12345)
    (tmp_path / "to-other").symlink_to(other)
    for path in (other, tmp_path / "to-other"):
        with pytest.raises(cache.CacheUnavailable, match="belongs to another user"):
            cache.prepare_dir(path)
    assert os.listdir(other) == []
    deep = tmp_path / "p" / "q" / "wsx"
    cache.prepare_dir(deep)
    assert stat.S_IMODE(os.stat(deep).st_mode) == 0o700
    assert (deep / "CACHEDIR.TAG").is_file()


def test_a_trust_folder_that_is_a_dangling_link_is_a_key_problem(tmp_path, monkeypatch):
    """Broke: with os.mkdir first, the FileExistsError of a dangling link was ignored,
    private_dir(create=True) then answered None, and `trust rotate`/`keygen` failed
    an assert (secret(create=True): silently no key) instead of naming the problem."""
    link = tmp_path / "trust"
    link.symlink_to(tmp_path / "nowhere")
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(link))
    for call in (lambda: trust.secret(create=True), trust.rotate, trust.keygen):
        with pytest.raises(trust.KeyProblem, match="cannot create the trust folder"):
            call()
    assert not (tmp_path / "nowhere").exists()


@root_only
def test_a_trust_folder_that_is_not_a_private_folder_of_yours(tmp_path, monkeypatch):
    """Held: a file, another user's folder (direct or through a link) are refused; a
    folder of yours open to all is closed to 0700."""
    place = tmp_path / "t"
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(place))
    place.write_text("x")
    with pytest.raises(trust.KeyProblem, match="not a directory"):
        trust.secret(create=True)
    place.unlink()
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 12345, 12345)
    place.symlink_to(other)
    for where in (place, other):
        monkeypatch.setenv("WASMSBX_TRUST_DIR", str(where))
        with pytest.raises(trust.KeyProblem, match="belongs to another user"):
            trust.secret(create=True)
    assert os.listdir(other) == []
    mine = tmp_path / "open"
    mine.mkdir()
    os.chmod(mine, 0o777)
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(mine / "deeper" / "trust"))
    assert trust.secret(create=True) is not None
    os.chmod(mine / "deeper" / "trust", 0o777)
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(mine / "deeper" / "trust"))
    assert trust.secret(create=True) is not None
    assert stat.S_IMODE(os.stat(mine / "deeper" / "trust").st_mode) == 0o700


def test_a_memo_is_read_only_from_a_small_regular_file(tmp_path, monkeypatch):
    """Held: a genuine memo vouches; the same memo through a link, a FIFO (no writer:
    never blocks), an oversized or too-short file there vouch for nothing."""
    key = b"k" * 32
    target = tmp_path / "e.entry"
    target.write_bytes(b"x" * 1000)
    info = os.stat(target)
    memo_path = tmp_path / "e.memo"
    memo = entry.Memo(str(memo_path), lambda: key)
    monkeypatch.setattr(entry, "MEMO_MARGIN", -10)
    tag = b"t" * entry.TAG_SIZE
    memo.record(info, tag, {"a": 1})
    assert memo.recall(info) == (tag, {"a": 1})
    # (each recall below as a new process makes it: this one holds what it found,
    # native.entry _RECALLED, and would not read the file again)
    recall = _as_a_new_process(memo.recall)
    genuine = memo_path.read_bytes()
    memo_path.unlink()
    (tmp_path / "real.memo").write_bytes(genuine)
    memo_path.symlink_to(tmp_path / "real.memo")
    assert recall(info) is None
    memo_path.unlink()
    os.mkfifo(memo_path)
    assert recall(info) is None
    memo_path.unlink()
    memo_path.write_bytes(genuine + b"\0" * entry.MEMO_MAX)
    assert recall(info) is None
    memo_path.write_bytes(genuine[: 2 * entry.TAG_SIZE])
    assert recall(info) is None
    memo_path.write_bytes(genuine)
    assert recall(info) == (tag, {"a": 1})


def _as_a_new_process(recall):
    def fresh(info):
        entry.forget_recalled()
        return recall(info)

    return fresh
