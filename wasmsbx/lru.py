"""A small LRU with a byte budget, and the key module bytes are found by in one: what
runner.shared (modules prepared and compiled once per process) and native.cache (module
digests, for loads given bytes) keep. A leaf: imports nothing of wasmsbx."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class Lru:
    """A small LRU with a byte budget (``size`` is the weight of each entry)."""

    __slots__ = ("bytes", "entries", "max_bytes", "max_entries")

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.entries: OrderedDict = OrderedDict()  # key -> (value, size)
        self.bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def get(self, key: Any) -> Any:
        found = self.entries.get(key)
        if found is None:
            return None
        try:
            self.entries.move_to_end(key)
        except KeyError:  # another thread evicted it meanwhile: the value is still good
            pass
        return found[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        if size > self.max_bytes:
            return  # larger than the whole budget: not kept
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self.entries[key] = (value, size)
        self.bytes += size
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, dropped) = self.entries.popitem(last=False)
            self.bytes -= dropped

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0


def sample_key(data: bytes) -> tuple:
    """Where ``data`` is looked for: its length and its ends (a module's custom
    sections, name and producers, are last). Equal keys of other bytes only share a
    slot: the bytes are compared before use."""
    return len(data), data[:64], data[-512:]
