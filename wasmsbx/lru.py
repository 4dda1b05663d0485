"""A small LRU with a byte budget, and the key module bytes are found by in one: what
runner.shared (modules prepared and compiled once per process) and native.cache (module
digests, for loads given bytes) keep. A leaf: imports nothing of wasmsbx."""

from __future__ import annotations

import os
from _thread import allocate_lock  # (threading itself is not loaded on a cold start)
from collections import OrderedDict
from typing import Any

# Held while a table changes: put() is several steps (pop, insert, evict, and the byte
# count each time), and two threads interleaving them lost updates of the count, until
# eviction emptied the table and popitem() raised KeyError. One lock for every table;
# a fork waits for it, and the child takes a new one.
_LOCK = allocate_lock()


class Lru:
    """A small LRU with a byte budget (``size`` is the weight of each entry)."""

    __slots__ = ("bytes", "entries", "max_bytes", "max_entries")

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.entries: OrderedDict = OrderedDict()  # key -> (value, size)
        self.bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def get(self, key: Any) -> Any:
        with _LOCK:
            found = self.entries.get(key)
            if found is None:
                return None
            self.entries.move_to_end(key)
        return found[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        if size > self.max_bytes:
            return  # larger than the whole budget: not kept
        dropped = []  # (released after the lock: a value's finalizer may use a table)
        with _LOCK:
            old = self.entries.pop(key, None)
            if old is not None:
                dropped.append(old)
                self.bytes -= old[1]
            self.entries[key] = (value, size)
            self.bytes += size
            while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
                _, evicted = self.entries.popitem(last=False)
                dropped.append(evicted)
                self.bytes -= evicted[1]

    def clear(self) -> None:
        with _LOCK:
            held, self.entries, self.bytes = self.entries, OrderedDict(), 0
        del held  # (released after the lock, as in put)


def _before_fork() -> None:
    _LOCK.acquire()


def _after_fork_in_parent() -> None:
    _LOCK.release()


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = allocate_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


def sample_key(data: bytes) -> tuple:
    """Where ``data`` is looked for: its length and its ends (a module's custom
    sections, name and producers, are last). Equal keys of other bytes only share a
    slot: the bytes are compared before use."""
    return len(data), data[:64], data[-512:]
