"""Source memos (native/located.py): a module file the cache knows is neither read nor
hashed on a later run. The memo only says which entry to look up; it is used only when
authentic and naming exactly the file as it is now (device, inode, size, mtime, ctime),
and anything else (a changed file, a forged or swapped memo, a link, a FIFO) falls back
to reading the file. Bytes read later are checked against the memo's digest."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from wasmsbx import errors
from wasmsbx.native import artifact as aot
from wasmsbx.native import cache, located, trust
from wasmsbx.runner import Group, shared
from wasmsbx.runner import Sandbox as _Sandbox
from wasmsbx.runner import sandbox as sandbox_mod
from wasmsbx.wasm.source import read_module

from .cache_helpers import make_policy
from .trust_helpers import attacker_key

ADD = """(module
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "k") (result i32) i32.const {k}))"""


@pytest.fixture(autouse=True)
def no_margin(monkeypatch):
    """Memos are written for files changed at least MARGIN seconds ago; these tests'
    files are new (test_a_new_file_gets_no_memo keeps the real margin)."""
    monkeypatch.setattr(located, "MARGIN", 0.0)


def binary(tmp_path, k: int = 7, name: str = "m.wasm") -> Path:
    """A binary module (memos are for binaries as the file holds them)."""
    text = tmp_path / (name + ".wat")
    text.write_text(ADD.format(k=k))
    path = tmp_path / name
    path.write_bytes(read_module(text))
    return path


def memo_path(tmp_path, module: Path) -> Path:
    code = tmp_path / "cache" / cache.CODE_DIR
    return Path(located.path_for(code, os.path.abspath(module)))


def fresh(module, policy, **kw):
    """A sandbox as a new process makes it. On wasmtime by name: with more than one
    backend installed (wasmer on Python 3.9), scoring them reads the module's features,
    so the file is read (and checked against the memo's digest) on every first load."""
    shared.clear()
    return _Sandbox(module, policy, backend="wasmtime", **kw)


def test_a_known_file_is_not_read_again(tmp_path, reads):
    module, policy = binary(tmp_path), make_policy()
    assert fresh(module, policy).cache_state == "miss"
    assert memo_path(tmp_path, module).is_file()
    box = fresh(module, policy)
    assert len(reads) == 1, "the second process read the file again"
    assert box.cache_state == "hit"
    assert box["add"](2, 3) == 5 and box["k"]() == 7
    assert [e.name for e in box.exports] == ["add", "k"]
    # again in the process: not read either, and from memory
    again = _Sandbox(module, policy, backend="wasmtime")
    assert again.cache_state == "memory" and len(reads) == 1
    # what needs the bytes reads them then (and they are the module's)
    assert box.wasm == module.read_bytes() and len(reads) == 2


def test_a_changed_file_is_read_and_runs_its_new_code(tmp_path, reads):
    module, policy = binary(tmp_path, k=7), make_policy()
    fresh(module, policy)
    fresh(module, policy)
    before = len(reads)
    changed = read_module_text(tmp_path, k=8)
    assert len(changed) == module.stat().st_size  # same size, new bytes
    stamp = module.stat()
    module.write_bytes(changed)
    os.utime(module, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # mtime put back
    box = fresh(module, policy)
    assert len(reads) == before + 1 and box["k"]() == 8


def read_module_text(tmp_path, k: int) -> bytes:
    text = tmp_path / f"k{k}.wat"
    text.write_text(ADD.format(k=k))
    return read_module(text)


def test_a_file_replaced_by_rename_is_read(tmp_path, reads):
    module, policy = binary(tmp_path, k=7), make_policy()
    fresh(module, policy)
    other = binary(tmp_path, k=9, name="other.wasm")
    os.replace(other, module)
    assert fresh(module, policy)["k"]() == 9


@pytest.mark.parametrize(
    "attack", ["forged", "other-key", "other-path", "other-digest", "truncated", "link", "fifo"]
)
def test_a_memo_that_is_not_authentic_for_this_file_is_ignored(tmp_path, reads, attack):
    module, policy = binary(tmp_path, k=7), make_policy()
    fresh(module, policy)
    memo = memo_path(tmp_path, module)
    data = memo.read_bytes()
    body = data[: -located.TAG_SIZE]
    info = module.stat()
    evil = binary(tmp_path, k=66, name="evil.wasm")
    fresh(evil, policy)  # evil's entry and facts are in the cache too
    evil_digest = aot.digest(evil.read_bytes())
    key = trust.tag_key("cache-source")
    memo.unlink()
    if attack == "forged":  # evil's digest, tag not recomputed
        memo.write_bytes(body.replace(body[:64], evil_digest.encode()) + data[-32:])
    elif attack == "other-key":  # a memo made with someone else's key
        code, text = memo.parent.parent, os.path.abspath(module)
        located.remember(code, text, info, evil_digest, attacker_key())
    elif attack == "other-path":  # evil's own authentic memo, copied to module's name
        os.replace(memo_path(tmp_path, evil), memo)
    elif attack == "other-digest":  # authentic, but for another state of the file
        fields = ("st_mode", "st_dev", "st_ino", "st_size", "st_ctime_ns")
        stale = SimpleNamespace(
            st_mtime_ns=info.st_mtime_ns - 1, **{f: getattr(info, f) for f in fields}
        )
        located.remember(memo.parent.parent, os.path.abspath(module), stale, evil_digest, key)
    elif attack == "truncated":
        memo.write_bytes(data[:40])
    elif attack == "link":
        target = tmp_path / "target.src"
        target.write_bytes(data)
        memo.symlink_to(target)
    elif attack == "fifo":
        os.mkfifo(memo)
    before = len(reads)
    box = fresh(module, policy)
    assert box["k"]() == 7, "a memo that is not the file's made another module run"
    assert len(reads) == before + 1


def test_a_file_changed_after_it_was_known_is_refused_when_read(tmp_path):
    module, policy = binary(tmp_path, k=7), make_policy()
    fresh(module, policy)
    box = fresh(module, policy)
    module.write_bytes(read_module_text(tmp_path, k=5))
    with pytest.raises(errors.ModuleError, match="changed while it was in use"):
        box.wasm  # noqa: B018


def test_a_miss_reads_the_file_then(tmp_path, reads):
    """Memo and facts known, but the entry gone: the bytes are read (and checked) to
    compile."""
    module, policy = binary(tmp_path, k=7), make_policy()
    fresh(module, policy)
    for entry in (tmp_path / "cache" / cache.CODE_DIR).rglob("*" + cache.CODE_SUFFIX):
        entry.unlink()
    before = len(reads)
    box = fresh(module, policy)
    assert box.cache_state == "miss" and box["k"]() == 7 and len(reads) == before + 1


def test_a_group_member_reads_its_file(tmp_path):
    module, policy = binary(tmp_path, k=7), make_policy()
    fresh(module, policy)
    shared.clear()
    with Group(policy) as group:
        member = group.add(module, name="m")
        assert member["k"]() == 7 and member.wasm == module.read_bytes()


def test_text_modules_and_bytes_get_no_memo(tmp_path):
    policy = make_policy()
    text = tmp_path / "t.wat"
    text.write_text(ADD.format(k=1))
    fresh(text, policy)
    fresh(read_module(text), policy)
    assert not list((tmp_path / "cache").rglob("*" + located.SUFFIX))


def test_a_new_file_gets_no_memo(tmp_path, monkeypatch):
    """A file changed within MARGIN seconds could change again in the same timestamp
    tick, keeping its ctime: no memo for it yet."""
    monkeypatch.setattr(located, "MARGIN", 5.0)
    module, policy = binary(tmp_path), make_policy()
    fresh(module, policy)
    fresh(module, policy)
    assert not memo_path(tmp_path, module).exists()
    info = module.stat()
    assert not located.remember(tmp_path, str(module), info, "0" * 64, b"k" * 32)
    old = time.time() - 10
    assert info.st_ctime > old


def test_prune_sweeps_memos_of_modules_the_cache_lost(tmp_path, monkeypatch):
    module, policy = binary(tmp_path), make_policy()
    fresh(module, policy)
    memo = memo_path(tmp_path, module)
    assert memo.is_file()
    store = cache.open_store(policy)
    try:
        cache.prune(store)
        assert memo.is_file(), "a memo of a cached module was swept"
        cache.clear(store, module_sha=aot.sha256(module.read_bytes()))
        monkeypatch.setattr(cache, "ORPHAN_GRACE", -1.0)
        cache.prune(store)
    finally:
        store.close()
    assert not memo.exists()


TWO_MEMORIES = b"""(module (import "env" "m" (memory 1)) (memory $own 1)
  (func (export "grow") (param i32) (result i32) (memory.grow $own (local.get 0))))"""


def test_host_memories_keep_the_modules_caps_for_a_known_file(tmp_path):
    """A host memory or table makes the backend compile the module again with a cap on
    each of its memories (limits.Budget), from its bytes: a known file (not read) must
    not lose them, or each own memory could take all of limits.memory (red team)."""
    import wasmsbx
    from wasmsbx.policy import from_dict

    module = two_memories(tmp_path)
    policy = from_dict({"limits": {"memory": "128KiB"}, "runtime": {"cache_min_size": 0}})
    for state in ("miss", "hit"):
        imports = {"env": {"m": wasmsbx.Memory(1)}}
        with fresh(module, policy, imports=imports) as box:
            assert box.cache_state == state
            assert box.call("grow", 1) == -1  # host 64 KiB + own 64 KiB = the limit
        assert memo_path(tmp_path, module).is_file()


def two_memories(tmp_path) -> Path:
    text, module = tmp_path / "two.wat", tmp_path / "two.wasm"
    text.write_bytes(TWO_MEMORIES)
    module.write_bytes(read_module(text))
    return module


def test_a_standalone_artifact_is_refused_with_host_memories(tmp_path, cli):
    """A standalone artifact has no binary to compile the caps into: with host memories
    (or in a group) it is refused, not run with each memory allowed all of the limit."""
    import wasmsbx
    from wasmsbx.policy import from_dict

    module, out = two_memories(tmp_path), tmp_path / "two.cwasm"
    assert cli("compile", module, "-o", out, "--backend", "wasmtime", "--interruptible").code == 0
    policy = from_dict({"limits": {"memory": "128KiB"}})
    imports = {"env": {"m": wasmsbx.Memory(1)}}
    with pytest.raises(errors.ModuleError, match="binary is not at hand"):
        fresh(out, policy, imports=imports).call("grow", 1)


def test_a_path_through_a_link_and_dotdot_names_the_file_the_kernel_opens(tmp_path, monkeypatch):
    """``proj/link/../m.wasm`` opens m.wasm beside link's target, not proj/m.wasm (what
    os.path.abspath makes of it as text): its memo must not name proj/m.wasm, or a run
    of proj/m.wasm runs the other module (red team)."""
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    (elsewhere / "a" / "b").mkdir(parents=True)
    proj.mkdir()
    mine = binary(proj, k=7)
    other = binary(elsewhere / "a", k=6)
    assert mine.stat().st_size == other.stat().st_size
    (proj / "link").symlink_to(elsewhere / "a" / "b")
    monkeypatch.chdir(tmp_path)
    policy = make_policy()
    through = Path("proj", "link", "..", "m.wasm")
    assert fresh(through, policy)["k"]() == 6
    assert fresh(through, policy)["k"]() == 6
    assert fresh(Path("proj", "m.wasm"), policy)["k"]() == 7
    assert fresh(mine, policy)["k"]() == 7


def test_the_margin_counts_from_the_read_not_from_the_memo(tmp_path, monkeypatch):
    """A file changed just before it was read could change again in the same tick
    after the read; a compile taking longer than MARGIN must not let its memo be
    written (the ctime is recent to the read, however old it is when the memo is)."""
    monkeypatch.setattr(located, "MARGIN", 5.0)
    later = time.time() + 60  # as if the compile after the read took a minute
    monkeypatch.setattr(located, "time", SimpleNamespace(time=lambda: later))
    module, policy = binary(tmp_path), make_policy()
    assert fresh(module, policy).cache_state == "miss"
    assert not memo_path(tmp_path, module).exists()


def test_a_folder_swapped_during_the_read_cannot_bind_one_file_to_anothers_module(
    tmp_path, monkeypatch
):
    """``proj/m.wasm`` with ``proj`` a link the module's owner flips to another folder
    while the file is read, and back: stat() before and after the read names the same
    file, whose bytes were not the ones read. The memo must describe the file the bytes
    came from, or every later run of the first file runs the other's code (red team,
    round 6: audit one file, run another)."""
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    binary(tmp_path / "d1", k=7)
    binary(tmp_path / "d2", k=8)
    proj = tmp_path / "proj"
    proj.symlink_to(tmp_path / "d1")

    def point(target: str) -> None:
        (tmp_path / "next").symlink_to(tmp_path / target)
        os.replace(tmp_path / "next", proj)

    real = sandbox_mod.read_file

    def racing(path, *args, **kw):
        point("d2")
        try:
            return real(path, *args, **kw)
        finally:
            point("d1")

    policy, module = make_policy(), proj / "m.wasm"
    monkeypatch.setattr(sandbox_mod, "read_file", racing)
    assert fresh(module, policy)["k"]() == 8  # (what was read)
    monkeypatch.setattr(sandbox_mod, "read_file", real)
    assert fresh(module, policy)["k"]() == 7, "the memo bound d1/m.wasm to d2's module"


def _fat(info: os.stat_result) -> os.stat_result:
    """``info`` as Linux reports a FAT file's: its ctime is its mtime."""
    fields = {n: getattr(info, n) for n in dir(info) if n.startswith("st_")}
    fields.update(st_ctime=info.st_mtime, st_ctime_ns=info.st_mtime_ns)
    sequence = list(info[:])
    sequence[9] = int(info.st_mtime)
    return os.stat_result(sequence, fields)


# vfat; squashfs, whose one timestamp is the image's; FUSE; NFS
@pytest.mark.parametrize("magic", [0x4D44, 0x73717368, 0x65735546, 0x6969])
def test_no_memo_where_the_file_system_lets_the_ctime_be_set_back(tmp_path, monkeypatch, magic):
    """Linux keeps a FAT file's ctime equal to its mtime (fs/fat: "ctime updates are
    ignored"), which utime() sets: an edit in place with the mtime put back keeps the
    whole identity, and a memo would run the module the file held before (red team,
    round 6). Memos are written only on file systems whose ctime no unprivileged
    process can set (ext4, xfs, btrfs, tmpfs, ...)."""
    real_stat, real_fstat = os.stat, os.fstat
    monkeypatch.setattr(os, "stat", lambda *a, **kw: _fat(real_stat(*a, **kw)))
    monkeypatch.setattr(os, "fstat", lambda fd: _fat(real_fstat(fd)))
    monkeypatch.setattr(located, "_fs_type", lambda fd: magic, raising=False)
    module, policy = binary(tmp_path, k=7), make_policy()
    # (os.stat, not Path.stat: on Python 3.9 pathlib holds the os.stat it imported, so
    # the FAT view patched in above would not apply)
    stamp = os.stat(module)
    fresh(module, policy)
    assert fresh(module, policy)["k"]() == 7
    module.write_bytes(read_module_text(tmp_path, k=8))
    os.utime(module, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert os.stat(module) == stamp, "(not the identity the memo would hold)"
    assert fresh(module, policy)["k"]() == 8, "a FAT file edited in place ran its old code"
    assert not memo_path(tmp_path, module).exists()


def test_clearing_a_module_removes_what_the_cache_knew_of_it(tmp_path):
    """`cache clear --module` leaves no facts record nor source memo of the module (they
    waited for `cache prune` before); another module's stay."""
    from wasmsbx.native import recorded

    module, policy = binary(tmp_path), make_policy()
    other = tmp_path / "other" / module.name
    other.parent.mkdir()
    other.write_bytes(module.read_bytes().replace(b"add", b"sum"))
    for path in (module, other):
        fresh(path, policy)
    memos = [memo_path(tmp_path, path) for path in (module, other)]
    store = cache.open_store(policy)
    try:
        records = {r["module"]["sha256"]: r["module"]["blake3"] for r in store.records()}
        facts = {sha: Path(recorded.path_for(store.code_text, b3)) for sha, b3 in records.items()}
        assert all(m.is_file() for m in memos) and all(f.is_file() for f in facts.values())
        gone = aot.sha256(module.read_bytes())
        assert cache.clear(store, module_sha=gone)["removed"] == 1
    finally:
        store.close()
    assert not memos[0].exists() and not facts[gone].exists()
    kept = [f for sha, f in facts.items() if sha != gone]
    assert memos[1].is_file() and kept and all(f.is_file() for f in kept)
