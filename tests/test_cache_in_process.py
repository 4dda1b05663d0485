"""What a process remembers of the cache between two loads of the same module
(``cache.load_or_compile`` given bytes): the module's digest (native.cache
``module_digest``) and that its entry was verified (native.entry ``_RECALLED``). Each
must never vouch for other bytes: other modules that share a digest slot, a buffer
changed in place, an entry altered or replaced on disk, a key that changed."""

from __future__ import annotations

import time

import pytest

from wasmsbx.backends import get
from wasmsbx.native import artifact, cache, entry
from wasmsbx.runner import shared
from wasmsbx.runner.sandbox import engine_options

from .cache_helpers import alter_in_place, make_policy, stored_entry, swap_for_altered_copy

ADD = '(module (func (export "f") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


def _padded(value: int) -> bytes:
    """A binary module returning ``value``, with a long export name before its code and
    a data segment of 600 bytes after it: modules of different values have the same
    length, the same first 64 and the same last 512 bytes (the digest table's slot),
    and differ in the middle."""
    import wasmtime

    wat = (
        f'(module (memory (export "{"m" * 100}") 1)'
        f' (func (export "f") (result i32) i32.const {value})'
        f' (data (i32.const 0) "{"x" * 600}"))'
    )
    return bytes(wasmtime.wat2wasm(wat))  # (a bytearray: hashed every time)


@pytest.fixture
def engine():
    return get("wasmtime").engine(engine_options(make_policy(), "cranelift"))


@pytest.fixture
def digests(monkeypatch) -> list:
    """The module digests computed from now on (artifact.digest of modules), and an empty
    digest table (as in a new process)."""
    monkeypatch.setattr(cache, "_DIGESTS", cache.Lru(32, 128 << 20))
    calls: list = []
    real = artifact.digest

    def spy(data):
        if bytes(data[:4]) == b"\0asm":  # (not the cache keys it also hashes)
            calls.append(len(data))
        return real(data)

    monkeypatch.setattr(artifact, "digest", spy)
    return calls


def _load(engine, wasm, policy=None):
    return cache.load_or_compile(engine, wasm, policy or make_policy(), "m")


# ---------------------------------------------------------------------------- digests


def test_the_same_bytes_are_hashed_once_per_process(engine, digests):
    wasm = _padded(7)
    assert _load(engine, wasm).state == "miss"
    assert _load(engine, wasm).state == "hit"
    assert digests == [len(wasm)]
    copy = bytes(bytearray(wasm))  # equal bytes, another object: compared, not hashed
    assert copy is not wasm
    assert _load(engine, copy).state == "hit"
    assert digests == [len(wasm)]


def test_modules_sharing_a_slot_keep_their_own_digests(engine, digests):
    one, two = _padded(1), _padded(2)
    assert one != two and cache.sample_key(one) == cache.sample_key(two)
    first, second = _load(engine, one), _load(engine, two)
    assert first.state == second.state == "miss"
    assert first.key != second.key
    from blake3 import blake3

    for wasm in (one, two, one, two):
        assert cache.module_digest(wasm) == blake3(wasm).hexdigest()
        assert _load(engine, wasm).state == "hit"
    import wasmtime

    store = wasmtime.Store(engine.engine)
    store.set_epoch_deadline(1 << 40)  # (the engine interrupts by epochs: never here)
    for value, wasm in ((1, one), (2, two)):
        module = _load(engine, wasm).module
        assert wasmtime.Instance(store, module, []).exports(store)["f"](store) == value


def test_a_buffer_that_can_change_is_hashed_every_time(engine, digests):
    from blake3 import blake3

    buffer = bytearray(_padded(1))
    first = cache.module_digest(buffer)
    changed = buffer.index(b"\x41\x01") + 1  # i32.const 1 -> i32.const 2
    buffer[changed] = 2
    assert cache.module_digest(buffer) == blake3(bytes(buffer)).hexdigest() != first
    assert cache.module_digest(memoryview(buffer)) == blake3(bytes(buffer)).hexdigest()
    assert len(digests) == 3


def test_the_digest_table_is_bounded(digests):
    for n in range(40):
        cache.module_digest(b"\0asm" + bytes([n]) * (1000 + n))
    assert len(cache._DIGESTS.entries) == 32


# ---------------------------------------------------------------------------- verified entries


def _remembered(engine, later, tmp_path) -> tuple:
    """An entry stored, then verified by a load that wrote its memo (and so is held)."""
    wasm = _padded(5)
    assert _load(engine, wasm).state == "miss"
    assert _load(engine, wasm).state == "hit"
    path, memo = stored_entry(tmp_path)
    assert memo.is_file()
    assert str(memo) in map(cache.shown, entry._RECALLED.entries)  # (/proc/self/fd/N/...)
    time.sleep(0.05)  # past the file system's timestamp tick: a change now shows
    return wasm, path, memo


@pytest.fixture
def memo_reads(monkeypatch) -> list:
    """The verification memos read from disk from now on."""
    calls: list = []
    real = entry.read_small

    def spy(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(entry, "read_small", spy)
    return calls


def test_a_verified_entry_loads_again_without_its_memo(engine, later, hashed, memo_reads, tmp_path):
    wasm, _, _ = _remembered(engine, later, tmp_path)
    hashed.clear()
    memo_reads.clear()
    assert _load(engine, wasm).state == "hit"
    assert hashed == [] and memo_reads == []


def test_as_a_new_process_it_reads_the_memo_again(engine, later, hashed, memo_reads, tmp_path):
    wasm, _, memo = _remembered(engine, later, tmp_path)
    shared.forget_loaded()
    memo_reads.clear()
    hashed.clear()
    assert _load(engine, wasm).state == "hit"
    assert [cache.shown(p) for p in memo_reads] == [str(memo)] and hashed == []


def _refused(engine, wasm, hashed) -> None:
    hashed.clear()
    outcome = _load(engine, wasm)
    assert outcome.state == "miss", outcome
    assert "not tagged with your key" in outcome.warnings[0]
    assert hashed, "the entry was hashed in full"


def test_altered_in_place_in_the_same_process(engine, later, hashed, tmp_path):
    wasm, path, _ = _remembered(engine, later, tmp_path)
    alter_in_place(path)
    _refused(engine, wasm, hashed)


def test_swapped_for_an_altered_copy_in_the_same_process(engine, later, hashed, tmp_path):
    wasm, path, _ = _remembered(engine, later, tmp_path)
    swap_for_altered_copy(path)
    _refused(engine, wasm, hashed)


def test_another_memo_key_vouches_for_nothing_held(engine, later, hashed, tmp_path, monkeypatch):
    """What the process holds was vouched for under the memo key of that time: under
    another key (the secret replaced) the entry is checked in full again."""
    wasm, _, _ = _remembered(engine, later, tmp_path)
    monkeypatch.setattr(cache.Lookup, "memo_key", lambda self: b"\x07" * 32)
    hashed.clear()
    assert _load(engine, wasm).state == "hit"
    assert hashed, "the entry was hashed in full"


def test_a_young_entry_is_not_held(engine, tmp_path):
    entry.forget_recalled()
    wasm = _padded(6)
    _load(engine, wasm)
    assert _load(engine, wasm).state == "hit"
    assert not entry._RECALLED.entries


def test_what_is_held_is_bounded(monkeypatch):
    monkeypatch.setattr(entry, "_RECALLED", cache.Lru(entry.RECALLED_MAX, 4 << 20))
    for n in range(entry.RECALLED_MAX + 10):
        entry._held(f"/m{n}", (n,), b"k" * 32, b"t" * 32, bytes(100))
    held = entry._RECALLED.entries
    assert len(held) == entry.RECALLED_MAX
    assert "/m0" not in held and f"/m{entry.RECALLED_MAX + 9}" in held
