"""Red team round 13: the in-process memos of 6561002 (native.cache module_digest on a
wasmsbx.lru.Lru, native.entry _RECALLED).

Tests marked FINDING asserted the safe behaviour and failed on 6561002; each is fixed
since. The others are attacks the change held."""

from __future__ import annotations

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
