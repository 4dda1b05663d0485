"""The facts records of the cache (native/recorded.py): what a run needs to know of a
module, kept beside its entries so that a cached module is not parsed again. A record
is used only if it is authentic, for these module bytes, and made by this wasmsbx;
anything else (altered, forged, another user's key, another module's record swapped
in, a link, a FIFO, another version) is ignored and the module parsed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from blake3 import blake3

from wasmsbx import errors
from wasmsbx.native import artifact as aot
from wasmsbx.native import cache, recorded, trust
from wasmsbx.runner import Sandbox as _Sandbox
from wasmsbx.runner import shared
from wasmsbx.wasm.source import read_module

from .cache_helpers import make_policy
from .trust_helpers import attacker_key

# A command with WASI imports and a memory (layout, hidden export, start: all recorded).
COMMAND = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1 3)
  (memory 2)
  (table 4 funcref)
  (global (export "g") (mut i32) (i32.const 5))
  (func (export "_start") i32.const 7 call $exit)
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))"""
# A library without _start: as a command it must be refused, whatever a record says.
LIBRARY = """(module
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))"""
# Imports of every kind (the record keeps all of an import's fields).
IMPORTS = """(module
  (import "env" "mem" (memory 1 2))
  (import "env" "tab" (table 3 funcref))
  (import "env" "g" (global (mut i64)))
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"""


def new_process() -> None:
    """Forget what this process holds (as a new process starts)."""
    shared.clear()


@pytest.fixture
def parses(monkeypatch) -> list:
    """The modules the run path parsed (native.recorded.read calls)."""
    calls: list = []
    real = recorded.read

    def spy(wasm):
        calls.append(len(wasm))
        return real(wasm)

    monkeypatch.setattr(recorded, "read", spy)
    return calls


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def record_path(module, folder) -> Path:
    """Where the record of ``module`` is in the cache ``folder``."""
    return Path(recorded.path_for(folder / cache.CODE_DIR, aot.digest(read_module(module))))


def own_key() -> bytes:
    return trust.tag_key("cache-facts")


def test_a_cached_module_is_parsed_once_then_read_from_its_record(tmp_path, parses):
    module, policy = write(tmp_path, "cmd.wat", COMMAND), make_policy()
    new_process()
    assert _Sandbox(module, policy, kind="command").cache_state == "miss"
    assert len(parses) == 1
    assert record_path(module, tmp_path / "cache").is_file()
    new_process()
    box = _Sandbox(module, policy, kind="command")
    assert box.cache_state == "hit" and len(parses) == 1, "a hit with a record parses nothing"
    result = box.run_command()
    assert result.guest_status == 7
    assert [e.name for e in box.exports] == ["memory", "g", "_start", "add"]
    assert box["add"](2, 3) == 5
    # What the record gave is what parsing gives (the layout: limits that are totals).
    wasm = read_module(module)
    code = tmp_path / "cache" / cache.CODE_DIR
    assert recorded.recall(code, aot.digest(wasm), own_key()) == recorded.read(wasm)


@pytest.mark.parametrize("text", [COMMAND, IMPORTS, LIBRARY])
def test_a_record_reads_back_as_parsed(tmp_path, text):
    wasm = read_module(write(tmp_path, "m.wat", text))
    digest, facts = aot.digest(wasm), recorded.read(wasm)
    key = trust.tag_key("cache-facts", create=True)
    recorded.remember(tmp_path, digest, facts, key)
    assert recorded.recall(tmp_path, digest, key) == facts
    assert recorded.recall(tmp_path, digest, attacker_key()) is None


def stored_record(tmp_path, text: str = COMMAND, name: str = "cmd.wat"):
    module, policy = write(tmp_path, name, text), make_policy()
    new_process()
    _Sandbox(module, policy, kind="command" if text == COMMAND else "call")
    path = record_path(module, tmp_path / "cache")
    assert path.is_file()
    return module, policy, path


def reused(module, policy, parses, kind: str = "command") -> bool:
    """Whether a new process's sandbox of ``module`` took its facts from the record."""
    new_process()
    before = len(parses)
    box = _Sandbox(module, policy, kind=kind)
    assert box.cache_state == "hit"
    if kind == "command":
        assert box.run_command().guest_status == 7
    return len(parses) == before


def test_an_altered_record_is_ignored_and_written_again(tmp_path, parses):
    module, policy, path = stored_record(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.index(b"_start")
    data[at : at + 6] = b"_stop_"  # the record now says there is no _start
    path.write_bytes(bytes(data))
    assert not reused(module, policy, parses), "an altered record is not used"
    assert reused(module, policy, parses), "and a good one is written in its place"


def test_a_record_tagged_with_another_key_is_ignored(tmp_path, parses):
    """Another user's record (their key), or a forger's: the same bytes a record holds,
    tagged with any key but this user's, say nothing."""
    module, policy, path = stored_record(tmp_path)
    wasm = read_module(module)
    digest = aot.digest(wasm)
    lie = recorded.read(read_module(write(tmp_path, "lib.wat", LIBRARY)))
    recorded.remember(tmp_path / "cache" / "code", digest, lie, attacker_key())
    assert not reused(module, policy, parses)


def test_a_record_swapped_in_for_another_module_is_ignored(tmp_path, parses):
    """The library's authentic record under the command's name, or the command's under
    the library's, is refused: a record names its module in its tag."""
    library, policy, lib_record = stored_record(tmp_path, LIBRARY, "lib.wat")
    command, _, cmd_record = stored_record(tmp_path)
    lib_facts, cmd_facts = lib_record.read_bytes(), cmd_record.read_bytes()
    cmd_record.write_bytes(lib_facts)  # no _start, no imports: would refuse the command
    assert not reused(command, policy, parses)
    lib_record.write_bytes(cmd_facts)  # a _start the library does not have
    new_process()
    with pytest.raises(errors.UsageError, match="no _start"):
        _Sandbox(library, policy, kind="command")


def test_an_authentic_record_of_another_version_is_ignored(tmp_path, parses, monkeypatch):
    """Another wasmsbx may read modules otherwise: its records (the version is in the
    tag) are not used."""
    module, policy, path = stored_record(tmp_path)
    wasm = read_module(module)
    with monkeypatch.context() as patch:
        patch.setattr(recorded, "__version__", "0.0.0-other")
        code = tmp_path / "cache" / "code"
        recorded.remember(code, aot.digest(wasm), recorded.read(wasm), own_key())
    assert not reused(module, policy, parses)


def test_a_record_made_by_an_edited_reader_is_ignored(tmp_path, parses, monkeypatch):
    """A development build keeps its version string across edits; a record written
    before the reader changed (its sources' sizes and mtimes are in the tag) is not used,
    since the old reader may have read the module otherwise (found by a red team)."""
    module, policy, path = stored_record(tmp_path)
    wasm = read_module(module)
    with monkeypatch.context() as patch:
        patch.setattr(recorded, "_reader_stamp", lambda: b"an older reader")
        code = tmp_path / "cache" / "code"
        recorded.remember(code, aot.digest(wasm), recorded.read(wasm), own_key())
    assert not reused(module, policy, parses)
    stamp = recorded._reader_stamp()
    assert stamp.count(b",") == len(recorded._READERS) - 1 and b"-" not in stamp.split(b",")


def test_a_linked_record_is_not_followed(tmp_path, parses):
    """A record that is a symbolic link (to a good record elsewhere, say one a project's
    cache carries) is ignored, and never written through."""
    module, policy, path = stored_record(tmp_path)
    elsewhere = tmp_path / "elsewhere.facts"
    os.replace(path, elsewhere)
    os.symlink(elsewhere, path)
    kept = elsewhere.read_bytes()
    assert not reused(module, policy, parses)
    assert elsewhere.read_bytes() == kept, "the link's target was not written through"


def test_a_fifo_as_record_does_not_hang_the_run(tmp_path, parses):
    module, policy, path = stored_record(tmp_path)
    os.unlink(path)
    os.mkfifo(path)
    assert not reused(module, policy, parses)


def test_an_oversized_or_truncated_record_is_ignored(tmp_path, parses):
    module, policy, path = stored_record(tmp_path)
    path.write_bytes(path.read_bytes()[:-1])
    assert not reused(module, policy, parses)
    with open(path, "wb") as f:
        f.truncate(recorded.MAX_SIZE + 1)
    assert not reused(module, policy, parses)


def test_records_in_a_cache_folder_a_policy_chose(tmp_path, parses):
    """Records are read once into memory and checked there, so a folder anyone could
    write (a policy's cache_dir) is no weaker: a good record is used, an altered one
    ignored."""
    module = write(tmp_path, "cmd.wat", COMMAND)
    policy = make_policy(runtime__cache_dir=str(tmp_path / "project-cache"))
    new_process()
    assert _Sandbox(module, policy, kind="command").cache_state == "miss"
    path = record_path(module, tmp_path / "project-cache")
    assert path.is_file()
    assert reused(module, policy, parses)
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    assert not reused(module, policy, parses)


def test_no_record_without_a_key_and_none_written_for_a_refused_run(tmp_path, parses):
    """A module whose run is refused before compiling (a library run as a command) is
    parsed and leaves nothing; records are made only by runs that used the cache."""
    module, policy = write(tmp_path, "lib.wat", LIBRARY), make_policy()
    new_process()
    with pytest.raises(errors.UsageError):
        _Sandbox(module, policy, kind="command")
    assert not record_path(module, tmp_path / "cache").exists()
    assert recorded.recall(tmp_path / "cache" / "code", "0" * 64, None) is None


def test_prune_removes_records_and_memos_nothing_holds(tmp_path, monkeypatch):
    module, policy, path = stored_record(tmp_path)
    other = tmp_path / "cache" / "code" / "ab" / ("ab" + "0" * 62 + recorded.SUFFIX)
    other.parent.mkdir(exist_ok=True)
    other.write_bytes(b"x" * 64)
    memo = other.with_suffix(cache.MEMO_SUFFIX)  # the memo of an entry that is gone
    memo.write_bytes(b"0" * 64)
    old = time.time() - cache.ORPHAN_GRACE - 10
    os.utime(other, (old, old))
    os.utime(path, (old, old))
    store = cache.open_store(policy)
    try:
        cache.prune(store)
    finally:
        store.close()
    assert not other.exists(), "a record no entry's module names goes"
    assert not memo.exists(), "so does a memo without its entry"
    assert path.is_file(), "the record of a cached module stays"


def test_the_cache_folder_is_checked_again_once_it_changes(tmp_path):
    """The run path checks its cache folder once per process while stat() shows it
    unchanged; a link planted there (a name added) or a looser mode is seen by the
    next load."""
    policy = make_policy()
    store = cache.shared_store(policy)
    assert cache.shared_store(policy) is store
    hits = store.root / cache.HITS
    if os.path.lexists(hits):
        hits.unlink()
    time.sleep(0.02)  # (past a coarse timestamp tick)
    hits.symlink_to(tmp_path / "somewhere")
    with pytest.raises(cache.CacheUnavailable, match="symbolic link"):
        cache.shared_store(policy)
    hits.unlink()
    os.chmod(store.root, 0o755)
    assert cache.shared_store(policy).root == store.root
    assert os.stat(store.root).st_mode & 0o777 == 0o700, "made private again"


def test_a_record_is_tagged_over_the_module_digest_and_version(tmp_path):
    """The tag is BLAKE3 keyed with the user's facts key over a domain, the module's
    digest, the version and the JSON: recomputed here from the file alone."""
    module, policy, path = stored_record(tmp_path)
    data = path.read_bytes()
    body, tag = data[:-32], data[-32:]
    digest = aot.digest(read_module(module))
    head = b"wasmsbx cache facts 2\0" + digest.encode() + b"\0" + recorded.__version__.encode()
    head += b"\0" + recorded._reader_stamp()
    assert blake3(head + b"\0" + body, key=own_key()).digest() == tag


def test_cache_verify_reports_and_removes_a_bad_record(tmp_path):
    """`cache verify` checks records as a run does: a good one passes unreported, an
    altered one is reported (and removed unless kept)."""
    module, policy, path = stored_record(tmp_path)
    store = cache.open_store(policy)
    try:
        assert not any(b["key"].endswith(recorded.SUFFIX) for b in cache.verify(store)["bad"])
        data = bytearray(path.read_bytes())
        data[3] ^= 1
        path.write_bytes(bytes(data))
        kept = cache.verify(store, remove=False)
        assert [b["key"] for b in kept["bad"]] == [path.name]
        assert path.is_file()
        cache.verify(store)
        assert not path.exists()
    finally:
        store.close()


def test_an_import_check_is_remembered_only_when_it_passed(tmp_path):
    """A module's imports are checked once per process when nothing is provided (the
    answer cannot change); one that imports what the sandbox lacks is refused by every
    sandbox, and a sandbox that provides it is not refused."""
    module = write(tmp_path, "env.wat", '(module (import "env" "f" (func)) (func (export "g")))')
    new_process()
    for _ in range(2):
        with pytest.raises(errors.LinkError, match="env.f"):
            _Sandbox(module, make_policy())
    box = _Sandbox(module, make_policy(), imports={"env": {"f": lambda: None}})
    assert [e.name for e in box.exports] == ["g"]
    ok = write(tmp_path, "cmd.wat", COMMAND)
    first = _Sandbox(ok, make_policy(), kind="command")
    assert first._prepared.imports_ok
    assert _Sandbox(ok, make_policy(), kind="command").run_command().guest_status == 7


@pytest.mark.parametrize("name", ["\u00e9x" + "0" * 62, "\u00e9x", "ab" * 32 + "\udcff"])
def test_cache_verify_removes_a_planted_record_of_any_name(tmp_path, name):
    """A file named like a record but not for a digest (a project's cache comes with its
    repository) is reported and removed, never an internal error (the tag's ASCII
    encoding of the name raised)."""
    module, policy, good = stored_record(tmp_path)
    folder = good.parent.parent / name[:2]
    folder.mkdir(exist_ok=True)
    planted = folder / (name + recorded.SUFFIX)
    planted.write_bytes(b"x" * 100)
    store = cache.open_store(policy)
    try:
        result = cache.verify(store)
    finally:
        store.close()
    assert [b["key"] for b in result["bad"]] == [planted.name]
    assert not planted.exists() and good.is_file()


def test_cache_verify_removes_a_record_copied_into_another_folder(tmp_path):
    """A record in a folder a run never looks in is no record: reported and removed
    (verify checked the one at its right place, and kept the copy)."""
    module, policy, good = stored_record(tmp_path)
    other = good.parent.parent / ("00" if good.parent.name != "00" else "01")
    other.mkdir(exist_ok=True)
    copy = other / good.name
    copy.write_bytes(good.read_bytes())
    store = cache.open_store(policy)
    try:
        result = cache.verify(store)
    finally:
        store.close()
    assert [b["key"] for b in result["bad"]] == [copy.name]
    assert not copy.exists() and good.is_file()


@pytest.mark.parametrize(
    "body",
    [b"", b"garbage", b"\xff" * 64, "marshal-short", "marshal-list", "marshal-wrong-types"],
)
def test_an_authentic_record_of_the_wrong_shape_is_ignored(tmp_path, body):
    """Records are marshal data read only after their tag matched, so a body of the wrong
    shape is never seen in practice; if one were (a bug, another build), it is ignored,
    never an error."""
    import marshal

    wasm = read_module(write(tmp_path, "m.wat", COMMAND))
    digest = aot.digest(wasm)
    if body == "marshal-short":
        body = marshal.dumps((recorded.FORMAT, digest), 4)
    elif body == "marshal-list":
        body = marshal.dumps([recorded.FORMAT, digest, [], [], None, (0, 0), False], 4)
    elif body == "marshal-wrong-types":
        body = marshal.dumps((recorded.FORMAT, digest, 5, "x", 3, 1, 0), 4)
    key = trust.tag_key("cache-facts", create=True)
    path = Path(recorded.path_for(tmp_path, digest))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body + recorded._tag(key, digest, body))
    assert recorded.recall(tmp_path, digest, key) is None


def test_a_record_tagged_with_a_rotated_out_key_is_ignored_in_the_same_process(tmp_path, parses):
    """`trust rotate` between two loads of one process (red team, round 7): a record
    tagged with the old key (which someone may have stolen: why it was rotated) is not
    used, nor a record of another module made with it; the module is parsed and its
    record written again with the new key."""
    module = write(tmp_path, "cmd.wat", COMMAND)
    policy = make_policy(runtime__cache_dir=str(tmp_path / "project-cache"))
    new_process()
    assert _Sandbox(module, policy, kind="command").cache_state == "miss"
    path = record_path(module, tmp_path / "project-cache")
    old = path.read_bytes()
    assert reused(module, policy, parses)
    trust.rotate()
    path.write_bytes(old)  # the record the old key made, put back
    new_process()
    before = len(parses)
    box = _Sandbox(module, policy, kind="command")
    assert box.run_command().guest_status == 7
    assert len(parses) == before + 1, "the old key's record was used"
    assert path.read_bytes() != old
    assert reused(module, policy, parses)


def test_no_unauthenticated_byte_reaches_marshal(tmp_path, parses, monkeypatch):
    """Bodies that would hurt marshal if it ever parsed them (deep nesting, huge sizes),
    a format-1 (JSON) record tagged the old way with the user's own key, one tagged
    with an attacker's key, another module's authentic record: none is given to
    marshal.loads; each is ignored and the module parsed (red team, round 7)."""
    import json
    import marshal

    module, policy, path = stored_record(tmp_path)
    digest = path.name[: -len(recorded.SUFFIX)]
    other_module = write(tmp_path, "lib.wat", LIBRARY)
    new_process()
    _Sandbox(other_module, policy, kind="call")
    other = record_path(other_module, tmp_path / "cache").read_bytes()
    loads: list = []
    real_loads = marshal.loads

    def spy(data, *args):
        loads.append(bytes(data))
        return real_loads(data, *args)

    monkeypatch.setattr(recorded.marshal, "loads", spy)
    head = digest.encode() + b"\0" + recorded.__version__.encode() + b"\0"
    head += recorded._reader_stamp() + b"\0"
    json_body = json.dumps({"format": 1, "module": digest}).encode()
    old_tag = blake3(b"wasmsbx cache facts 1\0" + head + json_body, key=own_key()).digest()
    deep = b"(\x01\x00\x00\x00" * 200_000 + b"N"
    huge = b"s\xff\xff\xff\x7f" + b"x" * 64
    planted = [
        json_body + old_tag,
        deep + recorded._tag(attacker_key(), digest, deep),
        huge + recorded._tag(attacker_key(), digest, huge),
        deep + bytes(32),
        other,
    ]
    for data in planted:
        path.write_bytes(data)
        assert not reused(module, policy, parses)
        assert all(loaded != data[:-32] for loaded in loads), "marshal saw planted bytes"
