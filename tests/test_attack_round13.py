"""Red team round 13: the in-process memos of 6561002 (native.cache module_digest on a
wasmsbx.lru.Lru, native.entry _RECALLED).

Tests marked FINDING asserted the safe behaviour and failed on 6561002; each is fixed
since. The others are attacks the change held."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict

import pytest

from wasmsbx.lru import Lru
from wasmsbx.native import cache

HANG_GUARD = 60  # seconds: only turns a hang into a failure, never a timing assertion


class _Slow(OrderedDict):
    def pop(self, *args):
        found = super().pop(*args)
        time.sleep(0.0001)
        return found


@pytest.fixture
def tiny_switches():
    """Threads switch as often as the interpreter allows (races show in a second)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_finding_digests_from_threads_never_fail_or_lose_count(monkeypatch, tiny_switches):
    """FINDING: Lru.put was not atomic: two threads loading modules at once (the Python
    API, a server) lost updates of its byte count, and once the count exceeded the
    budget with the table empty, popitem() raised KeyError('dictionary is empty') out
    of load_or_compile, a traceback; a count that drifts down holds more than the
    budget instead."""
    table = Lru(4, 4 * 5000)
    table.entries = _Slow()  # (a thread switch inside put, where one may always come)
    monkeypatch.setattr(cache, "_DIGESTS", table)
    modules = [b"\0asm" + bytes([n]) * 4996 for n in range(8)]
    errors: list = []

    def work(seed: int) -> None:
        import random

        pick = random.Random(seed)
        try:
            for _ in range(300):
                cache.module_digest(modules[pick.randrange(8)])
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD)
    assert errors == []
    assert table.bytes == sum(size for _, size in table.entries.values())
    assert len(table.entries) <= 4 and table.bytes <= 4 * 5000


def _many_exports(count: int, seed: int) -> bytes:
    """A module of ``count`` exports of one function (~7 bytes each): its cache entry's
    header lists them all, so its verification memo is ~45 bytes per export."""
    import wasmtime

    exports = " ".join(f'(export "{n:x}" (func 0))' for n in range(count))
    return bytes(wasmtime.wat2wasm(f"(module (func (result i32) i32.const {seed}) {exports})"))


def test_finding_held_headers_are_bounded_in_bytes(later):
    """FINDING: _RECALLED kept 256 headers whatever their size. A guest's module of
    18,000 exports (120 KB) has a 790 KB memo whose header is 7 MB as Python objects,
    so 256 such modules, each loaded twice, held ~1.8 GB for the process's life. Now
    the memo bytes held are bounded as well (here 15,000 exports: 8 memos of ~0.7 MB)."""
    from wasmsbx.backends import get
    from wasmsbx.native import entry
    from wasmsbx.runner.sandbox import engine_options

    from .cache_helpers import make_policy

    engine = get("wasmtime").engine(engine_options(make_policy(), "cranelift"))
    entry.forget_recalled()
    for seed in range(8):
        wasm = _many_exports(15000, seed)
        for state in ("miss", "hit"):
            outcome = cache.load_or_compile(engine, wasm, make_policy(), "m")
            assert outcome.state == state and outcome.warnings == []
    held = list(getattr(entry._RECALLED, "entries", entry._RECALLED))
    assert 0 < len(held) < 8
    memos = sum(os.path.getsize(path) for path in held)
    assert memos <= (4 << 20) + 64 * len(held)


def test_finding_a_callers_export_records_are_its_own(later):
    """FINDING: a load vouched for by _RECALLED returned the very header objects held,
    and Outcome.exports (Sandbox.recorded_exports) is that header's list: a caller that
    changed it (a signature, an export added) changed what every later load of the
    module in the process was told its exports are."""
    import wasmtime

    from wasmsbx.backends import get
    from wasmsbx.native import entry
    from wasmsbx.runner.sandbox import engine_options

    from .cache_helpers import make_policy

    engine = get("wasmtime").engine(engine_options(make_policy(), "cranelift"))
    entry.forget_recalled()
    wasm = bytes(
        wasmtime.wat2wasm('(module (func (export "f") (param i32) (result i32) local.get 0))')
    )
    assert cache.load_or_compile(engine, wasm, make_policy(), "m").state == "miss"
    first = cache.load_or_compile(engine, wasm, make_policy(), "m")
    assert first.state == "hit" and len(entry._RECALLED.entries) == 1
    expected = [{"name": "f", "kind": "func", "params": ["i32"], "results": ["i32"]}]
    assert first.exports == expected
    first.exports[0]["params"] = ["i64", "i64"]
    first.exports.append({"name": "evil", "kind": "func", "params": [], "results": []})
    later_load = cache.load_or_compile(engine, wasm, make_policy(), "m")
    assert later_load.state == "hit" and later_load.exports == expected


@pytest.mark.parametrize("how", ["rename", "hardlink"])
def test_another_verified_entry_put_in_place_is_refused(later, tmp_path, how):
    """Held: two entries verified and held; one moved (or hard-linked) over the other's
    path. Its identity is not what the other's path holds, and its header (from its
    own memo or hashed) names another module: refused, recompiled, never run for it."""
    import wasmtime

    from wasmsbx.backends import get
    from wasmsbx.native import entry
    from wasmsbx.runner.sandbox import engine_options

    from .cache_helpers import make_policy

    engine = get("wasmtime").engine(engine_options(make_policy(), "cranelift"))
    entry.forget_recalled()
    one, two = (
        bytes(wasmtime.wat2wasm(f'(module (func (export "f") (result i32) i32.const {v}))'))
        for v in (1, 2)
    )
    for wasm in (one, two):
        for state in ("miss", "hit"):
            assert cache.load_or_compile(engine, wasm, make_policy(), "m").state == state
    assert len(entry._RECALLED.entries) == 2
    paths = sorted((tmp_path / "cache").rglob("*" + cache.CODE_SUFFIX))
    target = cache.load_or_compile(engine, two, make_policy(), "m").key
    (dst,) = [p for p in paths if p.name.startswith(target)]
    (src,) = [p for p in paths if p != dst]
    if how == "rename":
        os.replace(src, dst)
    else:
        os.link(src, dst.with_name("link.tmp"))
        os.replace(dst.with_name("link.tmp"), dst)
    outcome = cache.load_or_compile(engine, two, make_policy(), "m")
    assert outcome.state == "miss"
    assert "failed its integrity check" in outcome.warnings[0]
    store = wasmtime.Store(engine.engine)
    store.set_epoch_deadline(1 << 40)
    assert wasmtime.Instance(store, outcome.module, []).exports(store)["f"](store) == 2
