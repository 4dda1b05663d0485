"""The batch's fast path (``Caller.run_encoded``: the export's caller made once per
instance, a succeeding item formatted straight into its JSONL line) against the general
one (``encode(Caller.run(...))``): the same bytes for every value type, id and error,
traps mid-batch, bad items, and the instance replaced after a trap."""

from __future__ import annotations

import json

import pytest

from wasmsbx.policy import defaults, override
from wasmsbx.runner import Sandbox, batch

from .conftest import GUESTS, require_capability, require_module

TYPES = GUESTS / "types.wat"

WAT = b"""
(module
  (global $count (mut i32) (i32.const 0))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "bump") (result i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1))) (global.get $count))
  (func (export "half") (param f64) (result f64) (f64.mul (local.get 0) (f64.const 0.5)))
  (func (export "f32") (param f32) (result f32) (local.get 0))
  (func (export "nothing"))
  (func (export "spin") (param i32) (result i32)
    (loop $l (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br_if $l (i32.ne (local.get 0) (i32.const 0))))
    (local.get 0))
)
"""

ITEMS = {
    "div": [
        b"[7, 2]",
        b'{"args": [9, 3], "id": "x\\u00e9"}',
        b'{"args": [9, 3], "id": {"k": [1, 2.5, null, true]}}',
        b'{"args": [9, 3], "id": 7.25}',
        b"[1, 0]",  # trap
        b"[4294967295, 1]",  # unsigned spelling of -1
        b"[4294967296, 1]",  # out of range
        b"[1.5, 1]",
        b"[true, 1]",
        b'["0x10", "2"]',  # text, parsed by type
        b"[1]",
        b"not json",
        b'{"args": [1, 1], "extra": 1}',
        b"[-2147483648, -1]",  # overflow trap
        b"[6, 3]",
    ],
    "half": [b"[3]", b"[1e308]", b'["nan"]', b'["-inf"]', b"[0.1]", b'["nan:0x1"]', b"[-0.0]"],
    "f32": [b"[0.1]", b"[1e39]", b'["nan:0x200000"]', b"[3.4028235677973366e38]"],
    "nothing": [b"[]", b"[1]"],
}


def without_time(data: bytes) -> dict:
    row = json.loads(data)
    row.pop("time_ms")
    return row


@pytest.mark.parametrize("func", sorted(ITEMS))
def test_encoded_lines_are_the_records_lines(backend, func):
    box = Sandbox(WAT, defaults(), backend=backend)
    fast, general = batch.Caller(box, func), batch.Caller(box, func)
    for line, payload in enumerate(ITEMS[func], 1):
        encoded = fast.run_encoded(line, payload)
        expected = batch.encode(general.run(line, payload))
        assert encoded.error_kind == expected.error_kind, payload
        assert encoded.data.endswith(b"\n") and encoded.data.count(b"\n") == 1
        assert without_time(encoded.data) == without_time(expected.data), payload
        # byte for byte, time apart: key order, separators, float spellings
        fast_text, general_text = encoded.data.decode(), expected.data.decode()
        assert fast_text.split('"time_ms"')[0] == general_text.split('"time_ms"')[0]
    fast.close()
    general.close()


def test_every_value_type_through_the_fast_encoder(backend):
    require_module(backend, TYPES)
    box = Sandbox(TYPES, defaults(), backend=backend)
    cases = [
        ("two_results", b"[3]", [4, 30000000000]),
        ("id_f64", b'["nan:0x8000000000001"]', ["nan:0x8000000000001"]),
        ("id_f32", b"[0.1]", [0.1]),
        ("takes_v128", b'["i32x4:7,0,0,0"]', [7]),
        ("takes_ref", b"[null]", [1]),
        ("no_result", b"[]", []),
    ]
    for func, payload, results in cases:
        caller = batch.Caller(box, func)
        row = json.loads(caller.run_encoded(1, payload).data)
        assert row["ok"] and row["results"] == results, (func, row)
        caller.close()


def test_a_trap_mid_batch_replaces_the_instance_and_the_batch_goes_on(backend):
    box = Sandbox(WAT, defaults(), backend=backend)
    items = [[], [], ["x"], [], []]  # the bad item is a usage error: the instance stays
    rows = [r.values for r in box.batch("bump", items)]
    assert rows == [[1], [2], None, [3], [4]]
    caller = batch.Caller(box, "div")
    caller.ready()
    first = caller.instance
    assert json.loads(caller.run_encoded(1, b"[1, 0]").data)["error"]["kind"] == "trap"
    assert caller.instance is None and caller.call is None  # dropped with its caller
    assert json.loads(caller.run_encoded(2, b"[8, 2]").data)["results"] == [4]
    assert caller.instance is not first
    caller.close()


def test_bump_counts_on_in_one_instance_and_restarts_after_a_trap(backend):
    box = Sandbox(WAT, defaults(), backend=backend)
    caller = batch.Caller(box, "bump")
    assert [json.loads(caller.run_encoded(i, b"[]").data)["results"] for i in (1, 2)] == [
        [1],
        [2],
    ]
    caller.close()  # as after a trap: the next item gets a new instance
    assert json.loads(caller.run_encoded(3, b"[]").data)["results"] == [1]
    caller.close()


def test_fresh_gives_each_item_an_untouched_instance(backend):
    box = Sandbox(WAT, defaults(), backend=backend)
    rows = [r.values for r in box.batch("bump", [[], [1], [], []], fresh=True)]
    assert rows == [[1], None, [1], [1]]


def test_fuel_is_armed_per_item_on_the_fast_path(backend):
    require_capability(backend, "fuel")
    policy = defaults()
    override(policy, "limits.fuel", 50_000)
    box = Sandbox(WAT, policy, backend=backend)
    items = [[100], [10_000_000], [100], [100]]
    rows = list(box.batch("spin", items))
    assert [r.ok for r in rows] == [True, False, True, True]
    assert rows[1].error["limit"] == "fuel"
