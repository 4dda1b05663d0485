"""A batch whose results grow large keeps them bounded in memory (red team round 40).

A chunk grows to CHUNK_MAX_ITEMS while items are quick, and a guest can then make each
item return megabytes (a component's ``list<string>`` of one string many times, from a
few KiB of memory): a worker held the whole chunk's results before replying, and the
parent took in several workers' replies ahead of their turn (1.6 GB in each, for 208
items of 4 MB under an 8 MiB output limit). A worker now sends what it holds past
REPLY_BYTES as a part of the chunk, and the parent hears only the oldest chunk's worker
while it holds AHEAD_BYTES of replies taken early. The tests count bytes, not time.
"""

from __future__ import annotations

import pytest

from wasmsbx import Sandbox
from wasmsbx import policy as policy_mod
from wasmsbx.runner import batch, pool

WARM = 300  # quick items first: the chunks grow
COPIES = 25  # then each result is COPIES strings of 40,000 bytes: 1 MB

COMPONENT = f"""(component
 (core module $m (memory (export "memory") 2) (global $n (mut i32) (i32.const 0))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 100000)
  (func (export "f") (param i32) (result i32) (local $i i32) (local $c i32)
   (global.set $n (i32.add (global.get $n) (i32.const 1)))
   (memory.fill (i32.const 60000) (i32.const 0x61) (i32.const 40000))
   (local.set $c (select (i32.const 0) (i32.const {COPIES})
    (i32.lt_u (global.get $n) (i32.const {WARM}))))
   (block (loop (br_if 1 (i32.ge_u (local.get $i) (local.get $c)))
    (i32.store (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 3)))
     (i32.const 60000))
    (i32.store (i32.add (i32.const 1028) (i32.shl (local.get $i) (i32.const 3)))
     (i32.const 40000))
    (local.set $i (i32.add (local.get $i) (i32.const 1))) (br 0)))
   (i32.store (i32.const 200) (i32.const 1024))
   (i32.store (i32.const 204) (local.get $c)) (i32.const 200)))
 (core instance $i (instantiate $m))
 (alias core export $i "memory" (core memory $mem))
 (alias core export $i "cabi_realloc" (core func $r))
 (func (export "f") (param "x" u32) (result (list string))
  (canon lift (core func $i "f") (memory $mem) (realloc $r))))
"""


@pytest.fixture
def guest(tmp_path):
    path = tmp_path / "big.wat"
    path.write_text(COMPONENT)
    return path


def test_replies_stay_small_when_results_grow(guest, monkeypatch):
    """Every reply a worker sends holds at most REPLY_BYTES of results and one item
    more; every item comes back, in order, with its whole result."""
    sizes: list = []
    receive = pool.Worker.receive

    def counted(self):
        size = receive(self)
        sizes.append(size)
        return size

    monkeypatch.setattr(pool.Worker, "receive", counted)
    box = Sandbox(guest, policy_mod.from_dict({"limits": {"output": "8MiB"}}))
    items = WARM + 60
    seen = 0
    for result in box.batch("f", ([i] for i in range(items)), jobs=2):
        assert result.error is None, result.error
        assert result.line == seen + 1
        values = result.values[0]
        assert len(values) in (0, COPIES) and all(len(v) == 40_000 for v in values)
        seen += 1
    assert seen == items
    one_item = COPIES * 40_100
    assert max(sizes) <= batch.REPLY_BYTES + one_item + (64 << 10), max(sizes)


def test_a_chunk_is_answered_in_parts_past_reply_bytes(monkeypatch):
    """worker_chunk: parts of at least REPLY_BYTES (the last of any size), in order."""

    class Caller:
        def run(self, line, payload):
            return batch.BatchResult(line, None, ["x" * 1000], None, None)

    monkeypatch.setattr(batch, "REPLY_BYTES", 10_000)
    replies = list(batch.worker_chunk(Caller(), [(i, b"[]") for i in range(1, 26)], False))
    assert [last for last, *_ in replies] == [False, False, True]
    lines = [r.line for _, results, _, _ in replies for r in results]
    assert lines == list(range(1, 26))
    assert [count for _, _, count, _ in replies] == [10, 10, 5]


def test_a_slot_gives_its_parts_then_its_reply():
    slot = pool.Slot()
    slot.parts.append((("ok", "a"), 3))
    slot.held = 3
    slot.reply, slot.held = ("ok", "b"), 8
    assert slot.take() == (("ok", "a"), 3, False)
    assert slot.take() == (("ok", "b"), 5, True)
    assert slot.held == 0 and not slot.ready()


def test_the_parent_hearing_only_the_oldest_chunk_loses_nothing(guest, monkeypatch):
    """With no room for replies ahead of their turn, the parent hears only the worker of
    the oldest chunk: every item still comes back, in order."""
    monkeypatch.setattr(batch, "AHEAD_BYTES", 0)
    heard: list = []
    wait = pool.wait

    def recorded(workers, extra, timeout):
        heard.append(len(workers))
        return wait(workers, extra, timeout)

    monkeypatch.setattr(pool, "wait", recorded)
    box = Sandbox(guest, policy_mod.from_dict({"limits": {"output": "8MiB"}}))
    # Whether a reply comes ahead of its turn is up to the two workers' timing: on a
    # loaded machine a run may never do it (CI, 3.9 leg, once). Each run must lose
    # nothing; one of a few must have heard the oldest chunk's worker alone.
    for _ in range(5):
        lines = [r.line for r in box.batch("f", ([i] for i in range(WARM + 20)), jobs=2)]
        assert lines == list(range(1, WARM + 21))
        if 1 in heard:
            break
    assert 1 in heard
