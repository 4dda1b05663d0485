"""Cache entry format 3 as an attacker meets it: compressed entries planted, altered,
truncated and inflated (decompression bombs), the tag over the bytes as stored, the
sealed copy that cannot change after its check, and the user's own cache, which no
guest may be granted. Every backend that loads native code."""

from __future__ import annotations

import os
import resource

import pytest

from wasmsbx import errors
from wasmsbx import policy as policy_mod
from wasmsbx.native import artifact as aot
from wasmsbx.native import cache, entry, trust
from wasmsbx.policy import Grant
from wasmsbx.runner import Sandbox as _Sandbox
from wasmsbx.runner import shared

from .conftest import capabilities_of
from .trust_helpers import attacker_key, write_modules


def Sandbox(*args, **kwargs):  # noqa: N802 - stands for the class
    """A sandbox as a new run makes it: each one here stands for a process of its own, so
    the modules earlier ones loaded are not held in memory (runner.shared keeps them
    within a process; tests/test_cache_memory.py tests that layer)."""
    shared.forget_loaded()
    return _Sandbox(*args, **kwargs)


KEY = bytes(range(32))
FP = {"backend": "x"}


@pytest.fixture
def native(backend):
    if not capabilities_of(backend).has("aot"):
        pytest.skip(f"{backend} does not load native code")
    return backend


def _pack(payload: bytes, level=3, key=KEY) -> bytes:
    return entry.pack(FP, payload, "0" * 64, 10, module_digest="d", key=key, level=level)


def _write(tmp_path, blob: bytes, name="e.entry"):
    path = tmp_path / name
    path.write_bytes(blob)
    return str(path)


def _load(path: str, key=KEY, protected=False):
    loaded = entry.load(path, lambda: key, protected)
    assert loaded is not None
    with loaded:
        code = loaded.code
        return loaded.header, bytes(code)


PAYLOAD = b"native code " * 50_000  # compresses well: stored as zstd


def test_compressed_entry_round_trips_and_the_tag_covers_the_stored_bytes(tmp_path):
    blob = _pack(PAYLOAD)
    stored, _ = entry.spans(blob)
    assert stored < len(PAYLOAD) // 10  # stored compressed
    for protected in (False, True):
        header, code = _load(_write(tmp_path, blob), protected=protected)
        assert header["payload"] == {"size": len(PAYLOAD), "stored": stored, "encoding": "zstd"}
        assert code == PAYLOAD
    # The tag is keyed BLAKE3 over the bytes as they are on disk (compressed).
    from blake3 import blake3

    assert blob[-32:] == blake3(blob[:-32], key=KEY).digest()
    assert bytes(entry.open_buffer(blob, KEY).payload) == PAYLOAD


def test_incompressible_payloads_stay_raw(tmp_path):
    noise = os.urandom(100_000)
    header, code = _load(_write(tmp_path, _pack(noise)))
    assert header["payload"]["encoding"] == "none" and code == noise


@pytest.mark.parametrize("protected", [False, True])
def test_altered_compressed_entry_is_refused_before_decompressing(tmp_path, monkeypatch, protected):
    """A flipped bit in the frame, the header, the footer or the tag, a cut from either
    end, an appended byte: refused, and the decompressor never sees the bytes."""
    import zstandard

    def boom(*args, **kwargs):
        raise AssertionError("decompressed before authentication")

    monkeypatch.setattr(zstandard, "ZstdDecompressor", boom)
    blob = _pack(PAYLOAD)
    stored, end = entry.spans(blob)
    spots = [0, 5, stored - 1, stored, end - 1, end, len(blob) - 33, len(blob) - 1]
    damaged = []
    for where in spots:
        bad = bytearray(blob)
        bad[where] ^= 0x10
        damaged.append(bytes(bad))
    damaged += [blob[:-1], blob[1:], blob + b"\0", blob[:40]]
    for bad in damaged:
        with pytest.raises(aot.Corrupt):
            entry.load(_write(tmp_path, bad), lambda: KEY, protected)


def test_planted_compressed_entry_is_refused(tmp_path):
    """Well formed and compressed, tagged with someone else's key (or none)."""
    for key in (attacker_key(), bytes(32)):
        path = _write(tmp_path, _pack(PAYLOAD, key=key))
        with pytest.raises(aot.Unauthenticated):
            entry.load(path, lambda: KEY, False)
    with pytest.raises(aot.Unauthenticated):
        entry.load(path, lambda: None, False)  # no key yet: nothing is ours


def _bomb(claimed: int, real: int) -> bytes:
    """A zstd frame that expands to ``real`` bytes (of zeros), in an entry whose
    authenticated header says ``claimed``, tagged with KEY: what a forger who had the
    key, or a bug, could produce."""
    import json

    import zstandard
    from blake3 import blake3

    frame = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bytes(real))
    header = {
        "format": entry.FORMAT,
        "kind": "cache-entry",
        "fingerprint": FP,
        "module": {"blake3": "d", "sha256": "0" * 64, "size": 10, "exports": None},
        "payload": {"size": claimed, "stored": len(frame), "encoding": "zstd"},
    }
    text = json.dumps(header).encode()
    body = frame + text + entry.FOOTER.pack(len(text), 0, entry.MAGIC)
    return body + blake3(body, key=KEY).digest()


@pytest.mark.parametrize("protected", [False, True])
def test_a_decompression_bomb_cannot_exhaust_memory(tmp_path, protected):
    """256 MiB of zeros in a 10 KB frame, in an entry whose (authenticated) header says
    1 MiB: refused, and the process never grows by anything near 256 MiB."""
    path = _write(tmp_path, _bomb(1 << 20, 256 << 20))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(aot.Corrupt, match="more than"):
        entry.load(path, lambda: KEY, protected)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024
    # A frame holding less than the header says is refused too.
    with pytest.raises(aot.Corrupt, match="header says"):
        entry.load(_write(tmp_path, _bomb(1 << 20, 1000)), lambda: KEY, protected)
    # A header claiming more than any native code is refused before any allocation.
    with pytest.raises(aot.Corrupt, match="at most"):
        entry.load(_write(tmp_path, _bomb(entry.MAX_NATIVE + 1, 10)), lambda: KEY, protected)


def test_the_checked_copy_cannot_change(tmp_path):
    """Outside the user's own cache, the engine gets a sealed memfd: after the check,
    not even this process can write, grow or shrink it, and swapping or rewriting the
    entry file changes nothing that is loaded."""
    path = _write(tmp_path, _pack(os.urandom(50_000), level=None))
    loaded = entry.load(path, lambda: KEY, False)
    with loaded:
        code = loaded.code
        assert isinstance(code, trust.VerifiedFile)
        first = bytes(code)
        with open(path, "r+b") as f:  # rewritten in place after the check
            f.write(b"\xcc" * 1000)
        os.replace(_write(tmp_path, b"x" * 100, "other"), path)  # and swapped
        assert bytes(code) == first
        for attempt in (
            lambda: os.pwrite(code.fd, b"\xcc", 0),
            lambda: os.ftruncate(code.fd, 10),
            lambda: os.ftruncate(code.fd, code.size + 4096),
        ):
            with pytest.raises(PermissionError):
                attempt()
        with open(code.path, "rb") as f:  # what an engine opens: the same sealed copy
            assert f.read(len(first)) == first


def test_an_entry_swapped_after_its_check_in_the_users_cache(tmp_path):
    """In the user's own cache the entry is mapped from the descriptor it was checked
    through: a new file renamed over the path afterwards is never what loads."""
    payload = os.urandom(50_000)
    path = _write(tmp_path, _pack(payload, level=None))
    loaded = entry.load(path, lambda: KEY, True)
    with loaded:
        os.replace(_write(tmp_path, _pack(os.urandom(50_000), level=None), "evil"), path)
        with open(loaded.code.path, "rb") as f:
            assert f.read(len(payload)) == payload


def test_the_users_cache_is_never_granted(tmp_path, monkeypatch):
    """Entries there are mapped in place once checked, so no guest may write there:
    a grant of the cache, of a folder in it or of one around it is refused."""
    root = tmp_path / "cache"
    (root / "code").mkdir(parents=True)
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(root))
    (tmp_path / "data").mkdir()
    for host in (root, root / "code", tmp_path):
        with pytest.raises(errors.PolicyError, match="cache"):
            trust.refuse_key_grants([Grant(str(host), "/x", False)])
    trust.refuse_key_grants([Grant(str(tmp_path / "data"), "/x", False)])  # elsewhere: fine
    assert trust.in_cache_roots(str(root / "code")) and not trust.in_cache_roots(
        str(tmp_path / "data")
    )


def test_a_grant_of_the_cache_is_refused_through_the_cli(cli, isolated, tmp_path):
    from .conftest import EXAMPLES

    hello = EXAMPLES / "wasi" / "hello.wasm"
    (tmp_path / "cache" / "code").mkdir(parents=True)
    for granted in (tmp_path / "cache", tmp_path / "cache" / "code"):
        (isolated / "sandbox.toml").write_text(f'[filesystem]\nread_write = ["{granted}"]\n')
        result = cli("run", hello, "--policy", isolated / "sandbox.toml")
        assert result.code == 101 and "would give the guest your wasmsbx cache" in result.stderr
    (tmp_path / "p.toml").write_text(f'[filesystem]\nread_write = ["{isolated}"]\n')
    # a folder apart from the cache: granted (with --policy, from outside that folder: a
    # discovered policy may not grant its own folder read-write, and a policy the guest
    # could rewrite is refused, cli/crossed.py)
    assert cli("run", hello, "--policy", tmp_path / "p.toml").code == 0


def test_an_old_format_entry_is_refused_with_its_reason_and_remade(tmp_path, native):
    """An entry of cache format 2 (header first) where its successor goes: discarded
    with the reason, compiled again, and the next run is a hit."""
    good = write_modules(tmp_path)[0]
    policy = policy_mod.defaults()
    policy_mod.override(policy, "runtime.cache_min_size", 0)
    box = Sandbox(good, policy, backend=native)
    store = cache.open_store(policy)
    try:
        ((key, _),) = store.code_keys()
        old = aot.pack("cache-entry", FP, b"code", "0" * 64, 1, key=trust.tag_key("cache-entry"))
        store.write_blob(key, old)
    finally:
        store.close()
    box = Sandbox(good, policy, backend=native)
    assert box.cache_state == "miss" and box.call("add", 1, 2) == 3
    assert "was written by an earlier wasmsbx (cache format 2" in box.warnings[0]
    assert Sandbox(good, policy, backend=native).cache_state == "hit"


def test_large_payloads_are_stored_compressed_and_load(tmp_path, native, monkeypatch):
    """With runtime.cache_compress, the store compresses payloads of COMPRESS_MIN bytes
    and up; such an entry loads and runs, and `cache list` reports its size on disk and
    its native size."""
    monkeypatch.setattr(cache, "COMPRESS_MIN", 0)
    good = write_modules(tmp_path)[0]
    policy = policy_mod.defaults()
    policy_mod.override(policy, "runtime.cache_min_size", 0)
    policy_mod.override(policy, "runtime.cache_compress", True)
    assert Sandbox(good, policy, backend=native).cache_state == "miss"
    box = Sandbox(good, policy, backend=native)
    assert box.cache_state == "hit" and box.call("add", 2, 3) == 5
    store = cache.open_store(policy)
    try:
        (record,) = cache.entries(store)
        ((key, _),) = store.code_keys()
        header = entry.open_buffer(store.blob(key), trust.tag_key("cache-entry")).header
    finally:
        store.close()
    payload = header["payload"]
    assert payload["encoding"] == "zstd" and payload["stored"] < payload["size"]
    assert record["native_size"] == payload["size"] and record["size"] > payload["stored"]


def test_large_payloads_are_stored_raw_by_default(tmp_path, native, monkeypatch):
    """Without runtime.cache_compress (the default), payloads of any size are stored raw,
    so that a hit maps the entry in place; an entry compressed under another policy in
    the same cache still loads."""
    monkeypatch.setattr(cache, "COMPRESS_MIN", 0)
    good, other = write_modules(tmp_path)[:2]
    policy = policy_mod.defaults()
    policy_mod.override(policy, "runtime.cache_min_size", 0)
    assert Sandbox(good, policy, backend=native).cache_state == "miss"
    squeeze = policy_mod.defaults()
    policy_mod.override(squeeze, "runtime.cache_min_size", 0)
    policy_mod.override(squeeze, "runtime.cache_compress", True)
    assert Sandbox(other, squeeze, backend=native).cache_state == "miss"
    store = cache.open_store(policy)
    try:
        key_file = trust.tag_key("cache-entry")
        encodings = sorted(
            entry.open_buffer(store.blob(key), key_file).header["payload"]["encoding"]
            for key, _ in store.code_keys()
        )
    finally:
        store.close()
    assert encodings == ["none", "zstd"]
    box = Sandbox(other, policy, backend=native)  # (compressed, loaded under the default)
    assert box.cache_state == "hit" and box.exports


@pytest.mark.parametrize("protected", [False, True])
def test_a_sparse_giant_entry_is_refused_before_a_byte_is_read(tmp_path, monkeypatch, protected):
    """A planted file of 1 TiB (sparse: it costs no disk) with a footer at its end: on
    0b0f967 a project's cache copied it whole into a memfd (memory) before checking its
    tag, and the user's own cache hashed it through a mapping (CPU, for minutes)."""
    path = tmp_path / "giant.entry"
    text = b'{"format":3}'
    with open(path, "wb") as handle:
        handle.truncate(1 << 40)
        handle.seek((1 << 40) - entry.TRAILER - len(text))
        handle.write(text + entry.FOOTER.pack(len(text), 0, entry.MAGIC) + bytes(32))

    def never(*args):
        raise AssertionError("read before its size was checked")

    monkeypatch.setattr(entry, "_memfd_copy", never)
    monkeypatch.setattr(entry, "_hash_mapped", never)
    monkeypatch.setattr(entry.os, "preadv", never)
    with pytest.raises(aot.Corrupt, match="larger than any cache entry"):
        entry.load(str(path), lambda: KEY, protected)


def test_a_cache_reached_through_a_folder_others_can_change_is_not_mapped_in_place(
    tmp_path, monkeypatch
):
    """Red team 3: entries of your own cache are mapped where they are, which is safe only
    if no one else can swap a folder on the way between the check and the mapping
    (`WASMSBX_CACHE_DIR=/tmp/shared/wsx` under a folder others can write, or a link
    someone else made). Such a cache loads from sealed copies instead."""
    import os

    safe = tmp_path / "mine" / "wsx"
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(safe))
    assert cache.Store.open(safe, 1 << 30).protected
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # writable by others, not sticky
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(shared / "wsx"))
    assert not cache.Store.open(shared / "wsx", 1 << 30).protected
    os.chmod(shared, 0o1777)  # sticky, like /tmp: others cannot swap what is ours
    assert cache.Store.open(shared / "wsx", 1 << 30).protected
    if os.getuid() == 0:  # a link someone else made on the way (only root can fake one)
        link = tmp_path / "theirs"
        link.symlink_to(safe)
        os.lchown(link, 12345, 12345)
        monkeypatch.setenv("WASMSBX_CACHE_DIR", str(link))
        assert not cache.Store.open(link, 1 << 30).protected
