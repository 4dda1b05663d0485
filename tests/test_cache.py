"""The native-code cache as a core service: hits, misses, keys, integrity, eviction, the dir.

Behaviour tests run over every available backend (the ``backend`` fixture); entries are
inspected and damaged through the store, or on disk where diskcache keeps them as files.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from wasmsbx import policy as policy_mod
from wasmsbx.native import artifact as aot
from wasmsbx.native import cache, entry, trust
from wasmsbx.runner import Sandbox as _Sandbox
from wasmsbx.runner import read_module, shared

from .cache_helpers import make_policy
from .conftest import capabilities_of, require_capability


def Sandbox(*args, **kwargs):  # noqa: N802 - stands for the class
    """A sandbox as a new run makes it: each one here stands for a process of its own, so
    the modules earlier ones loaded are not held in memory (runner.shared keeps them
    within a process; tests/test_cache_memory.py tests that layer)."""
    shared.forget_loaded()
    return _Sandbox(*args, **kwargs)


# MVP only (no multi-value), so every backend and compiler can run it.
ADD_WAT = (
    '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
)


@pytest.fixture
def add(tmp_path) -> Path:
    path = tmp_path / "add.wat"
    path.write_text(ADD_WAT)
    return path


def wat_module(path: Path, funcs: int, salt: int = 0) -> Path:
    """A module with ``funcs`` exported functions; ``salt`` makes distinct modules."""
    body = []
    for i in range(funcs):
        ops = " ".join(
            f"(local.set $x (i32.add (i32.mul (local.get $x) (i32.const {j + i + salt}))"
            f" (i32.const {j})))"
            for j in range(20)
        )
        body.append(f'(func (export "f{i}") (param $x i32) (result i32) {ops} (local.get $x))')
    path.write_text("(module\n" + "\n".join(body) + "\n)\n")
    return path


def open_store(policy=None) -> cache.Store:
    store = cache.open_store(policy or make_policy(), create=False)
    assert store is not None, "no cache was created"
    return store


def only_key(store: cache.Store) -> str:
    keys = store.keys("m:")
    assert len(keys) == 1, keys
    return keys[0]


def replace_blob(store: cache.Store, key: str, blob: bytes) -> None:
    store.write_blob(key, blob)


# ---------------------------------------------------------------------------- hit and miss


def test_second_run_is_a_hit(backend, add):
    policy = make_policy()
    first = Sandbox(add, policy, backend=backend)
    assert first.cache_state == "miss"
    assert first.call("add", 5, 3) == 8
    assert "compile" in first.timings and "store" in first.timings
    second = Sandbox(add, policy, backend=backend)
    assert second.cache_state == "hit"
    assert second.call("add", 5, 3) == 8
    assert "load" in second.timings and "compile" not in second.timings
    assert second.warnings == []
    stats = second.invoke("add", [1, 2]).stats
    assert stats.cache == "hit"


def test_loaded_code_does_not_depend_on_the_buffer_it_came_from(backend, add):
    """The cache lends its read buffer to the backend without a copy; the module must
    own its code afterwards, so scribbling over the buffer changes nothing."""
    from wasmsbx.backends import get, split
    from wasmsbx.runner.sandbox import engine_options, limits_from

    name, compiler = split(backend)
    engine = get(name).engine(engine_options(make_policy(), compiler))
    wasm = read_module(add)
    data = bytearray(engine.serialize(engine.compile(wasm)))
    module = engine.deserialize(trust.Authenticated(memoryview(data), "this test"))
    data[:] = bytes(len(data))
    del data
    instance = engine.instantiate(module, limits_from(make_policy()))
    try:
        assert instance.call("add", [5, 3]) == [8]
    finally:
        instance.close()


def test_hits_are_counted(backend, add):
    policy = make_policy()
    for _ in range(3):
        Sandbox(add, policy, backend=backend)
    store = open_store(policy)
    try:
        report = cache.stats(store)
        (record,) = cache.entries(store)
    finally:
        store.close()
    assert (report["hits"], report["misses"], report["entries"]) == (2, 1, 1)
    assert report["hit_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert record["hits"] == 2 and record["module"]["name"] == "add.wat"


def test_hits_go_through_the_journal(add, monkeypatch):
    """A hit is kept in memory and appended to hits.log when the process flushes its
    hits (no database write); reading the records folds it in; a journal grown past
    HITS_FOLD_SIZE is folded by the flush that finds it so."""
    policy = make_policy()
    for _ in range(3):
        Sandbox(add, policy)
    cache._SHARED.clear()
    journal = cache.resolve_dir(policy)[0] / cache.HITS
    assert not journal.exists() or journal.read_bytes() == b"", "written by the hit"
    cache.flush_hits()
    assert len(journal.read_bytes().splitlines()) == 2
    store = open_store(policy)
    try:
        (record,) = cache.entries(store)
        assert record["hits"] == 2 and journal.read_bytes() == b""
        assert cache.entries(store)[0]["hits"] == 2, "folding twice must not count twice"
    finally:
        store.close()
    monkeypatch.setattr(cache, "HITS_FOLD_SIZE", 10)
    Sandbox(add, policy)
    cache.flush_hits()
    cache._SHARED.clear()
    assert journal.read_bytes() == b""
    store = open_store(policy)
    try:
        assert cache.entries(store)[0]["hits"] == 3
        assert cache.stats(store)["hits"] == 3
    finally:
        store.close()


def test_removing_an_entry_removes_code_an_earlier_build_kept(add):
    """Earlier builds kept native code as a diskcache value ``a:KEY``; removing the entry
    (clear by backend or module, verify, eviction) or storing it again removes that too."""
    policy = make_policy()
    Sandbox(add, policy)
    store = open_store(policy)
    try:
        (key,) = store.keys("m:")
        store.db.set("a:" + key, b"code as earlier builds kept it")
        assert cache.clear(store, backend="wasmtime")["removed"] == 1
        assert store.keys("a:") == [] and store.code_keys() == []
        store.db.set("a:" + key, b"code as earlier builds kept it")
    finally:
        store.close()
    cache._SHARED.clear()
    assert Sandbox(add, policy).cache_state == "miss"  # stored again: the old copy goes
    store = open_store(policy)
    try:
        assert store.keys("a:") == [] and store.keys("m:") == [key]
    finally:
        store.close()


def test_compile_stores_again_code_that_lost_its_record(add):
    """Code without a record (a crash between the two writes) is not reported as cached
    by `compile`: it is stored again, record and all, so prune will not remove it."""
    from wasmsbx.backends import get
    from wasmsbx.runner.sandbox import engine_options, read_module

    policy = make_policy()
    engine = get("wasmtime").engine(engine_options(policy, None))
    wasm = read_module(add)
    assert cache.store_compiled(engine, wasm, policy, "add.wat")["state"] == "stored"
    assert cache.store_compiled(engine, wasm, policy, "add.wat")["state"] == "cached"
    store = open_store(policy)
    try:
        (key,) = store.keys("m:")
        store.db.delete("m:" + key)
    finally:
        store.close()
    again = cache.store_compiled(engine, wasm, policy, "add.wat")
    assert again["state"] == "stored" and again["size"] > 0


def test_prune_removes_orphans_after_a_grace_period(tmp_path, add):
    """Code without a record (a crash between the two writes) goes, but only once it is
    older than a store in progress could be; records without code go at once."""
    policy = make_policy()
    Sandbox(add, policy)
    store = open_store(policy)
    try:
        (key,) = [k for k, _ in store.code_keys()]
        young, old = "ab" + "1" * 62, "cd" + "2" * 62
        store.write_blob(young, b"x" * 10)
        store.write_blob(old, b"y" * 10)
        past = time.time() - cache.ORPHAN_GRACE - 5
        os.utime(store.code_path(old), (past, past))
        store.db.set("m:" + "ef" + "3" * 62, "{}")  # a record whose code is gone
        store.db.set("a:" + key, b"code as earlier builds kept it")
        assert cache.prune(store)["orphans"] == 3
        assert store.keys("a:") == []
        assert sorted(k for k, _ in store.code_keys()) == sorted([key, young])
        assert store.keys("m:") == [key]
    finally:
        store.close()


def test_small_modules_skip_the_cache(isolated, tmp_path, add):
    box = Sandbox(add, policy_mod.defaults())  # add.wat is far below 16 KiB
    assert box.cache_state == "skip"
    assert box.call("add", 1, 2) == 3
    assert not (tmp_path / "cache" / "cache.db").exists()


def test_no_cache_bypasses_it(tmp_path, add):
    box = Sandbox(add, make_policy(), use_cache=False)
    assert box.cache_state == "off"
    assert not (tmp_path / "cache" / "cache.db").exists()
    box = Sandbox(add, make_policy(runtime__cache=False))
    assert box.cache_state == "off"


# ---------------------------------------------------------------------------- the key


def test_key_changes_with_everything_that_changes_code():
    fp = {
        "backend": "wasmtime",
        "version": "50.0.1",
        "compiler": "cranelift",
        "optimize": "speed",
        "fuel": False,
        "features": ["simd"],
        "target": "linux-x86_64",
    }
    base = cache.entry_key("ab" * 32, fp)
    assert base == cache.entry_key("ab" * 32, dict(fp))
    assert base != cache.entry_key("cd" * 32, fp)
    for field, other in (
        ("backend", "wasmer"),
        ("version", "50.0.2"),
        ("compiler", "llvm"),
        ("optimize", "none"),
        ("fuel", True),
        ("features", ["simd", "threads"]),
        ("target", "linux-aarch64"),
    ):
        assert cache.entry_key("ab" * 32, {**fp, field: other}) != base, field


def test_key_is_the_json_of_its_parts_as_it_always_was(backend):
    # The key is put together from the engine's fingerprint text kept per engine; it
    # must stay the BLAKE3 of json.dumps({...}, sort_keys=True), or every entry in
    # every user's cache would be missed (and a key could mean two things).
    import json

    from wasmsbx.backends import get, split
    from wasmsbx.runner.sandbox import engine_options

    name, compiler = split(backend)
    engine = get(name).engine(engine_options(make_policy(), compiler))
    fp = aot.normalise(engine.fingerprint())
    fingerprint, _, text = cache._identity(engine)
    for digest in ("ab" * 32, "0f" * 32):
        whole = json.dumps(
            {"format": aot.FORMAT, "module": digest, "fingerprint": fp}, sort_keys=True
        )
        expected = aot.digest(whole.encode("utf-8"))
        assert cache.entry_key(digest, fp) == expected
        assert cache.entry_key(digest, fingerprint, text) == expected


@pytest.mark.parametrize("change", [{"runtime__optimize": "none"}, {"limits__fuel": 1000000}])
def test_engine_options_miss(backend, change, add):
    # Only a backend whose code changes with the setting must miss.
    require_capability(backend, "fuel" if "limits__fuel" in change else "opt-levels")
    Sandbox(add, make_policy(), backend=backend)
    changed = Sandbox(add, make_policy(**change), backend=backend)
    assert changed.cache_state == "miss"
    assert changed.call("add", 2, 2) == 4
    again = Sandbox(add, make_policy(**change), backend=backend)
    assert again.cache_state == "hit"


def test_fingerprint_has_every_part(backend):
    from wasmsbx import backends
    from wasmsbx.runner.sandbox import engine_options

    name, compiler = backends.split(backend)
    engine = backends.get(name).engine(engine_options(make_policy(), compiler))
    fp = engine.fingerprint()
    for field in ("backend", "version", "compiler", "features", "target"):
        assert fp.get(field) not in (None, ""), field
    if capabilities_of(backend).has("opt-levels"):
        assert fp.get("optimize") == "speed"


# ---------------------------------------------------------------------------- integrity


def _damaged_run(backend, add, damage) -> Sandbox:
    policy = make_policy()
    Sandbox(add, policy, backend=backend)
    store = open_store(policy)
    try:
        key = only_key(store)
        damage(store, key, store.blob(key))
    finally:
        store.close()
    box = Sandbox(add, policy, backend=backend)
    assert box.cache_state == "miss", "a damaged entry must never count as a hit"
    assert box.call("add", 20, 22) == 42
    assert len(box.warnings) == 1
    assert "discarded and recompiled" in box.warnings[0]
    # The bad entry was replaced by a good one.
    assert Sandbox(add, policy, backend=backend).cache_state == "hit"
    return box


def test_tampered_payload_is_discarded(backend, add):
    def flip(store, key, blob):
        replace_blob(store, key, blob[:-64] + bytes([blob[-64] ^ 0xFF]) + blob[-63:])

    box = _damaged_run(backend, add, flip)
    assert "not tagged with your key" in box.warnings[0]


def test_truncated_entry_is_discarded(backend, add):
    # Cut from the end (the footer and tag go) or from the start (the native code does).
    box = _damaged_run(backend, add, lambda store, key, blob: replace_blob(store, key, blob[:-100]))
    assert "failed its integrity check" in box.warnings[0]
    box = _damaged_run(backend, add, lambda store, key, blob: replace_blob(store, key, blob[100:]))
    assert "not tagged with your key" in box.warnings[0]


def test_truncated_header_is_discarded(backend, add):
    box = _damaged_run(backend, add, lambda store, key, blob: replace_blob(store, key, blob[-20:]))
    assert "truncated" in box.warnings[0]


def test_entry_for_another_engine_is_not_loaded(backend, add):
    def foreign(store, key, blob):
        tag_key = trust.tag_key("cache-entry")
        art = entry.open_buffer(blob, tag_key)
        fp = {**art.fingerprint, "version": "0.0.1"}
        m = art.header["module"]
        blob = entry.pack(
            fp,
            art.payload,
            m["sha256"],
            m["size"],
            module_digest=m["blake3"],
            key=tag_key,
        )
        replace_blob(store, key, blob)

    box = _damaged_run(backend, add, foreign)
    assert "built for another engine" in box.warnings[0]


KEY = bytes(range(32))


def _big_artifact(size: int, signer=None) -> tuple:
    payload = bytearray(os.urandom(size))
    blob = aot.pack(
        "artifact", {"backend": "x"}, bytes(payload), "0" * 64, 10, key=KEY, signer=signer
    )
    return payload, bytearray(blob)


def test_tag_covers_every_byte():
    """A flipped bit anywhere, prefix, header, megabytes of native code or the tag
    itself, and the bytes are refused before anything is parsed (keyed BLAKE3)."""
    payload, blob = _big_artifact(3 * (1 << 20) + 1234)
    assert aot.read_header(blob)["payload"] == {"size": len(payload)}
    assert bytes(aot.open_sealed(blob, KEY, "artifact").payload) == bytes(payload)
    start = len(blob) - aot.TAG_SIZE - len(payload)
    spots = [0, 9, 12, aot.START, start - 2, start, start + (1 << 20) + 7, len(blob) - 33]
    for where in spots + [len(blob) - 1]:
        damaged = bytearray(blob)
        damaged[where] ^= 0x40
        with pytest.raises(aot.Corrupt):
            aot.open_sealed(damaged, KEY, "artifact")
    with pytest.raises(aot.Unauthenticated):
        aot.open_sealed(blob, bytes(32), "artifact")  # another user's key


def test_format_1_is_refused():
    """Artifacts and entries of wasmsbx 0.1 carry an unkeyed digest anyone could
    recompute: refused, with what they are."""
    import json
    import struct

    text = json.dumps({"format": 1, "kind": "artifact"}).encode()
    old = aot.MAGIC + struct.pack("<I", len(text)) + text + b"\0" * 64
    with pytest.raises(aot.Corrupt, match="format 1"):
        aot.open_sealed(old, KEY, "artifact")


def test_garbage_with_a_valid_digest_is_refused_by_the_runtime(add):
    """wasmtime checks what it deserializes; a refusal is handled like a bad digest.
    (Not run over every backend: feeding garbage to an unchecked deserializer is what
    the digest exists to prevent.)"""

    def garbage(store, key, blob):
        tag_key = trust.tag_key("cache-entry")
        art = entry.open_buffer(blob, tag_key)
        m = art.header["module"]
        junk = b"\x7fELF" + os.urandom(4000)
        replace_blob(
            store,
            key,
            entry.pack(
                art.fingerprint,
                junk,
                m["sha256"],
                m["size"],
                module_digest=m["blake3"],
                key=tag_key,
            ),
        )

    box = _damaged_run("wasmtime", add, garbage)
    assert "cannot load precompiled code" in box.warnings[0]


def test_tampered_file_on_disk(backend, tmp_path):
    """Flipping a byte in an entry's code file on disk is caught."""
    module = wat_module(tmp_path / "big.wat", 120)
    policy = make_policy()
    Sandbox(module, policy, backend=backend)
    files = [p for p in (tmp_path / "cache").rglob("*.entry")]
    assert files, "expected the entry's code file"
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    files[0].write_bytes(bytes(data))
    box = Sandbox(module, policy, backend=backend)
    assert box.cache_state == "miss"
    assert "not tagged with your key" in box.warnings[0]
    assert box.call("f0", 1) == Sandbox(module, policy, backend=backend, use_cache=False).call(
        "f0", 1
    )


def test_missing_file_is_a_miss(backend, tmp_path):
    module = wat_module(tmp_path / "big.wat", 120)
    policy = make_policy()
    Sandbox(module, policy, backend=backend)
    for path in (tmp_path / "cache").rglob("*.entry"):
        path.unlink()
    box = Sandbox(module, policy, backend=backend)
    assert box.cache_state == "miss" and box.warnings == []


# ---------------------------------------------------------------------------- eviction


def _entry_size(module) -> int:
    """The size of ``module``'s entry, cached by a sandbox made here (the cache's first)."""
    Sandbox(module, make_policy())
    store = open_store()
    try:
        return cache.entries(store)[0]["size"]
    finally:
        store.close()


def _cached_names(policy) -> list:
    """The module names of the entries in ``policy``'s cache, sorted."""
    store = open_store(policy)
    try:
        return sorted(r["module"]["name"] for r in cache.entries(store))
    finally:
        store.close()


def test_eviction_keeps_the_cache_under_its_size(tmp_path):
    modules = [wat_module(tmp_path / f"m{i}.wat", 4, salt=i) for i in range(4)]
    size = _entry_size(modules[0])
    limit = int(size * 2.5)  # room for two entries
    policy = make_policy(runtime__cache_size=limit)
    Sandbox(modules[1], policy)
    Sandbox(modules[0], policy)  # a hit: m0 is now more recently used than m1
    Sandbox(modules[2], policy)  # evicts the least recently used: m1
    store = open_store(policy)
    try:
        names = sorted(r["module"]["name"] for r in cache.entries(store))
        total = cache.stats(store)["total_size"]
    finally:
        store.close()
    assert names == ["m0.wat", "m2.wat"]
    assert total <= limit


def test_a_hit_within_a_millisecond_of_a_newer_entry_still_counts_as_later(tmp_path, monkeypatch):
    """Hits were journaled in whole milliseconds, floored: a hit less than 1 ms after
    another entry was made sorted before it, and eviction took the entry just used
    (the test above failed on CI that way). The clock here is fixed, so this fails
    every time on that code."""
    now = [1_800_000_000.0001]

    class Clock:  # the cache module's time, with time() and time_ns() under our control
        def __getattr__(self, name):
            return getattr(time, name)

        def time(self):
            return now[0]

        def time_ns(self):
            return round(now[0] * 1e6) * 1000

    monkeypatch.setattr(cache, "time", Clock())
    modules = [wat_module(tmp_path / f"m{i}.wat", 4, salt=i) for i in range(3)]
    size = _entry_size(modules[0])
    policy = make_policy(runtime__cache_size=int(size * 2.5))
    now[0] += 0.0002
    Sandbox(modules[1], policy)
    now[0] += 0.0005  # m0 used 0.5 ms after m1 was made
    Sandbox(modules[0], policy)
    now[0] += 0.0002
    Sandbox(modules[2], policy)  # evicts the least recently used: m1
    assert _cached_names(policy) == ["m0.wat", "m2.wat"]


def test_entry_larger_than_the_cache_is_not_kept(add):
    box = Sandbox(add, make_policy(runtime__cache_size=100))
    assert box.cache_state == "miss" and box.call("add", 1, 1) == 2
    store = open_store()
    try:
        assert cache.entries(store) == []
    finally:
        store.close()


# ---------------------------------------------------------------------------- the directory


def test_directory_is_private_and_tagged(tmp_path, add):
    root = tmp_path / "cache"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    Sandbox(add, make_policy())
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert (root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172")
    (entry,) = (root / cache.CODE_DIR).rglob("*" + cache.CODE_SUFFIX)
    for path in (entry.parent.parent, entry.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE(entry.stat().st_mode) == 0o400  # (read-only: red team 149)
    assert Sandbox(add, make_policy()).cache_state == "hit"
    cache.flush_hits()  # writes the hit journal
    assert stat.S_IMODE((root / cache.HITS).stat().st_mode) == 0o600


def test_new_directory_is_private(tmp_path, monkeypatch, add):
    root = tmp_path / "deep" / "er" / "cache"
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(root))
    Sandbox(add, make_policy())
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to chown")
def test_directory_of_another_user_is_not_used(tmp_path, add):
    root = tmp_path / "cache"
    root.mkdir()
    os.chown(root, 65534, 65534)
    box = Sandbox(add, make_policy())
    assert box.cache_state == "error"
    assert "belongs to another user" in box.warnings[0]
    assert box.call("add", 2, 3) == 5
    assert not (root / "cache.db").exists()


def test_unusable_directory_still_runs(tmp_path, add):
    (tmp_path / "cache").write_text("a file, not a directory")
    box = Sandbox(add, make_policy())
    assert box.cache_state == "error"
    assert "cache unavailable" in box.warnings[0]
    assert box.call("add", 2, 3) == 5


def test_directory_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(tmp_path / "env"))
    assert cache.resolve_dir(policy_mod.defaults()) == (tmp_path / "env", "env")
    policy_file = tmp_path / "p" / "sandbox.toml"
    policy_file.parent.mkdir()
    policy_file.write_text('[runtime]\ncache_dir = "here"\n')
    loaded = policy_mod.load(policy_file)
    assert cache.resolve_dir(loaded) == (tmp_path / "p" / "here", "policy")
    assert cache.resolve_dir(loaded, str(tmp_path / "opt")) == (tmp_path / "opt", "option")
    monkeypatch.delenv("WASMSBX_CACHE_DIR")
    root, source = cache.resolve_dir(policy_mod.defaults())
    assert source == "default" and root.name == "wasmsbx"


def test_cache_dir_argument_is_used(tmp_path, add):
    Sandbox(add, make_policy(), cache_dir=str(tmp_path / "elsewhere"))
    assert (tmp_path / "elsewhere" / "cache.db").exists()
    assert not (tmp_path / "cache" / "cache.db").exists()


# ---------------------------------------------------------------------------- reports


def test_verify_finds_and_removes_bad_entries(tmp_path, add):
    policy = make_policy()
    Sandbox(add, policy)
    Sandbox(wat_module(tmp_path / "other.wat", 2), policy)
    store = open_store(policy)
    try:
        key = next(k for k in store.keys("m:") if store.record(k)["module"]["name"] == "add.wat")
        replace_blob(store, key, store.blob(key)[:-1])
        report = cache.verify(store, remove=False)
        assert (report["checked"], report["ok"]) == (2, 1)
        assert report["bad"][0]["module"] == "add.wat"
        assert len(store.keys("m:")) == 2  # kept
        report = cache.verify(store)
        assert len(store.keys("m:")) == 1
        assert cache.verify(store)["bad"] == []
    finally:
        store.close()


def test_prune_by_age_and_size(tmp_path):
    policy = make_policy()
    for i in range(3):
        Sandbox(wat_module(tmp_path / f"m{i}.wat", 2, salt=i), policy)
    store = open_store(policy)
    try:
        assert cache.prune(store, older_than=3600)["removed"] == 0
        one = cache.entries(store)[0]["size"]
        result = cache.prune(store, max_size=one)
        assert result["removed"] == 2 and result["entries"] == 1
        assert cache.prune(store, older_than=0)["entries"] == 0
    finally:
        store.close()


def test_clear_by_backend_and_module(tmp_path, backend, add):
    from wasmsbx import backends

    policy = make_policy()
    Sandbox(add, policy, backend=backend)
    other = wat_module(tmp_path / "other.wat", 2)
    Sandbox(other, policy, backend=backend)
    store = open_store(policy)
    try:
        assert cache.clear(store, backend="no-such-backend")["removed"] == 0
        sha = aot.sha256(read_module(other))
        assert cache.clear(store, module_sha=sha)["removed"] == 1
        name = backends.split(backend)[0]
        assert cache.clear(store, backend=name)["removed"] == 1
        assert cache.entries(store) == []
    finally:
        store.close()


def test_a_hit_types_calls_from_the_recorded_exports():
    """The entry records the module's exports, so a hit does not parse the module again
    (and never asks wasmtime-py for a v128 signature, which aborts the process)."""
    from wasmsbx import errors

    from .conftest import GUESTS

    types = GUESTS / "types.wat"
    miss = Sandbox(types, make_policy())
    hit = Sandbox(types, make_policy())
    assert (miss.cache_state, hit.cache_state) == ("miss", "hit")
    assert hit.recorded_exports is not None and hit.exports == miss.exports
    assert hit.call("two_results", 3) == (4, 30000000000)
    assert hit.call("takes_v128", "i32x4:7,0,0,0") == 7  # typed from the record: no abort
    with pytest.raises(errors.UsageError, match="v128"):
        hit.invoke("takes_v128", ["x"])


def test_a_module_served_from_memory_counts_as_a_use_of_its_entry(tmp_path, monkeypatch):
    """A long-lived process (watch, the MCP server, a host) serves a cached module from
    memory and reads no entry: its entry looked unused, and another process's eviction
    (least recently used first) removed it although it was in use all along. A use from
    memory now counts, at most once every shared.USE_EVERY seconds."""
    from wasmsbx.runner import shared

    modules = [wat_module(tmp_path / f"m{i}.wat", 4, salt=i) for i in range(3)]
    size = _entry_size(modules[0])
    policy = make_policy(runtime__cache_size=int(size * 2.5))  # room for two entries
    held = Sandbox(modules[0], policy)  # the long-lived process's module (a hit)
    assert held.cache_state == "hit"
    assert _Sandbox(modules[1], policy).cache_state == "miss"  # stored after m0's hit
    monkeypatch.setattr(shared, "USE_EVERY", 0.0)
    time.sleep(0.01)  # (a later hit)
    assert _Sandbox(modules[0], policy).cache_state == "memory"  # a use, counted
    cache.flush_hits()
    Sandbox(modules[2], policy)  # evicts the least recently used: m1, not m0
    assert _cached_names(policy) == ["m0.wat", "m2.wat"]


@pytest.mark.parametrize("every, counted", [(60.0, 0), (0.0, 50)])
def test_uses_from_memory_are_counted_at_most_once_a_minute(tmp_path, monkeypatch, every, counted):
    """100,000 sandboxes of a module held in memory write no 100,000 hit lines."""
    from wasmsbx.runner import shared

    monkeypatch.setattr(shared, "USE_EVERY", every)
    module = wat_module(tmp_path / "m.wat", 4)
    policy = make_policy()
    first = Sandbox(module, policy)
    assert first.cache_state == "miss"
    boxes = [_Sandbox(module, policy) for _ in range(50)]  # (held in memory: one process)
    assert {b.cache_state for b in boxes} == {"memory"}
    cache.flush_hits()
    store = open_store(policy)
    try:
        (entry,) = cache.entries(store)
    finally:
        store.close()
    assert entry["hits"] == counted
