"""Attacks on the verification memo (native/entry.py ``Memo``): an entry of the user's
own cache that was verified and has not changed since loads without being hashed again.
Every way of changing or replacing the entry, or of forging the memo, must end in a
full check (and so in a refusal for altered code)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from wasmsbx.native import entry

from .cache_helpers import (
    alter_in_place,
    make_policy,
    new_run_sandbox,
    stored_entry,
    swap_for_altered_copy,
)
from .trust_helpers import attacker_key

WAT = '(module (func (export "f") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


Sandbox = new_run_sandbox  # (see test_cache.py)


@pytest.fixture
def module(tmp_path) -> Path:
    path = tmp_path / "m.wat"
    path.write_text(WAT)
    return path


def remembered(module, tmp_path) -> tuple:
    """An entry stored, then verified by a load that wrote its memo."""
    policy = make_policy()
    assert Sandbox(module, policy).cache_state == "miss"
    assert Sandbox(module, policy).cache_state == "hit"
    path, memo = stored_entry(tmp_path)
    assert memo.is_file(), "a verified entry old enough is remembered"
    time.sleep(0.05)  # past the file system's timestamp tick: a change now shows
    return policy, path, memo


def test_a_young_entry_is_not_remembered(module, tmp_path):
    policy = make_policy()
    Sandbox(module, policy)
    assert Sandbox(module, policy).cache_state == "hit"
    assert not stored_entry(tmp_path)[1].exists()


def test_a_remembered_entry_loads_without_hashing(module, tmp_path, later, hashed):
    policy, _, _ = remembered(module, tmp_path)
    hashed.clear()
    box = Sandbox(module, policy)
    assert box.cache_state == "hit" and box.call("f", 5, 3) == 8
    assert hashed == []


def _refused(module, policy, hashed) -> None:
    hashed.clear()
    box = Sandbox(module, policy)
    assert box.cache_state == "miss"
    assert "not tagged with your key" in box.warnings[0]
    assert hashed, "the entry was hashed in full"
    assert box.call("f", 5, 3) == 8


def test_altered_in_place_with_its_mtime_restored(module, tmp_path, later, hashed):
    policy, path, _ = remembered(module, tmp_path)
    alter_in_place(path)
    _refused(module, policy, hashed)


def test_swapped_for_an_altered_copy(module, tmp_path, later, hashed):
    policy, path, _ = remembered(module, tmp_path)
    swap_for_altered_copy(path)
    _refused(module, policy, hashed)


def test_truncated(module, tmp_path, later, hashed):
    policy, path, _ = remembered(module, tmp_path)
    os.truncate(path, path.stat().st_size - 1)
    hashed.clear()
    box = Sandbox(module, policy)
    assert box.cache_state == "miss" and "discarded and recompiled" in box.warnings[0]


def test_a_forged_memo_is_ignored(module, tmp_path, later, hashed):
    """A memo made with another key, or garbage, vouches for nothing: the altered entry
    is hashed and refused."""
    from blake3 import blake3

    policy, path, memo = remembered(module, tmp_path)
    body = memo.read_bytes()[2 * entry.TAG_SIZE :]  # the header as verified (marshal)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    info = path.stat()
    tag = bytes(data[-entry.TAG_SIZE :])
    text = entry.Memo(str(memo), lambda: None)._text(info, tag)
    forged = blake3(entry._MEMO_DOMAIN + text + b"\0" + body, key=attacker_key()).digest()
    memo.write_bytes(forged + tag + body)
    _refused(module, policy, hashed)
    # the format before (the tag's MAC alone, in hex), even with the right key: not read
    memo.write_text(blake3(b"wasmsbx cache memo 1\0" + text, key=attacker_key()).hexdigest())
    path.write_bytes(bytes(data))
    _refused(module, policy, hashed)
    for junk in ("zz" * 32, "", "00" * 32):
        path.write_bytes(bytes(data))
        memo.write_text(junk)
        _refused(module, policy, hashed)


def test_a_memo_with_another_header_is_ignored(module, tmp_path, later, hashed):
    """The header a memo keeps is covered by its tag: one byte of it changed (say, the
    payload's size, to map more or less of the file) and the memo vouches for nothing:
    the entry is hashed in full (and, intact, loads)."""
    policy, path, memo = remembered(module, tmp_path)
    data = bytearray(memo.read_bytes())
    data[-3] ^= 1
    memo.write_bytes(bytes(data))
    hashed.clear()
    box = Sandbox(module, policy)
    assert box.cache_state == "hit" and box.call("f", 5, 3) == 8
    assert hashed, "the entry was hashed in full"


def test_a_memo_that_is_a_link_is_not_followed(module, tmp_path, later, hashed):
    """A link named like the memo, pointing at a valid memo of this very entry: not
    read (O_NOFOLLOW), the entry is hashed."""
    policy, path, memo = remembered(module, tmp_path)
    real = memo.with_name("elsewhere")
    os.replace(memo, real)
    memo.symlink_to(real)
    hashed.clear()
    assert Sandbox(module, policy).cache_state == "hit"
    assert hashed, "the entry was hashed in full"


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs chown")
def test_an_entry_of_another_user_is_never_taken_on_a_memo(module, tmp_path, later, hashed):
    policy, path, _ = remembered(module, tmp_path)
    os.chown(path, 12345, 12345)
    hashed.clear()
    Sandbox(module, policy)
    assert hashed, "the entry was hashed in full"


def test_a_policy_folder_never_uses_memos(module, tmp_path, later, hashed):
    """Outside the user's own cache an entry is copied and hashed on every load (another
    user may be able to write there): no memo is written or read."""
    policy = make_policy(runtime__cache_dir=str(tmp_path / "shared"))
    Sandbox(module, policy)
    Sandbox(module, policy)
    path, memo = stored_entry(tmp_path, "shared")
    assert not memo.exists()
    copies: list = []
    real = entry._load_copy
    entry_load_copy = lambda *a: copies.append(1) or real(*a)  # noqa: E731
    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as patch:
        patch.setattr(entry, "_load_copy", entry_load_copy)
        assert Sandbox(module, policy).cache_state == "hit"
    assert copies == [1]
