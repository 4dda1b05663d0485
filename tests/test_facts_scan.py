"""The function-body scanner's fast path (wasm/code.py ``_SIMPLE_RUN``): ``re`` skips runs
of instructions that imply no feature, the decoder does the rest. It must never change
what is read: the same features, SIMD operators and errors (with offsets) as the decoder
alone, on well-formed and on malformed bodies, across its window boundaries; and its
memory must stay bounded on a huge body."""

from __future__ import annotations

import re
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmsbx.wasm import code
from wasmsbx.wasm.facts import FactsError, read_code_details


def leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + leb(len(payload)) + payload


def module(body: bytes) -> bytes:
    """One function of type 0, () -> (), whose body (after no locals) is ``body``; type 1,
    (i32 i32) -> (i32 i32), is there for block types that name it (multi-value)."""
    types = b"\x02" + b"\x60\x00\x00" + b"\x60\x02\x7f\x7f\x02\x7f\x7f"
    entry = b"\x00" + body
    return (
        b"\0asm\x01\0\0\0"
        + section(1, types)
        + section(3, b"\x01\x00")
        + section(10, b"\x01" + leb(len(entry)) + entry)
    )


def read_both(data: bytes, monkeypatch) -> tuple:
    """What read_code_details says with the fast path, and with the decoder alone."""

    def outcome():
        try:
            return ("ok", read_code_details(data))
        except FactsError as exc:
            return ("error", str(exc), exc.offset)

    fast = outcome()
    with monkeypatch.context() as m:
        m.setattr(code, "_simple_run", lambda: re.compile(b"").match)  # skips nothing
        slow = outcome()
    return fast, slow


# Instructions the pattern takes whole, instructions it must leave to the decoder (they
# imply features, or take encodings it does not match), and broken ones.
LEBS = st.one_of(
    st.integers(0, 127).map(leb),
    st.integers(0, 2**32 - 1).map(leb),
    st.sampled_from([b"\x80\x00", b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x80\x00"]),
)
SIMPLE = st.one_of(
    st.tuples(st.sampled_from(b"\x20\x21\x22\x23\x24\x41\x42\x0c\x0d\x10"), LEBS).map(
        lambda t: bytes([t[0]]) + t[1]
    ),
    st.sampled_from([bytes([op]) for op in [*range(0x45, 0xC0), 0, 1, 5, 0x0B, 0x0F, 0x1A, 0x1B]]),
    st.tuples(st.integers(0x28, 0x3E), st.integers(0, 0x3F), LEBS).map(
        lambda t: bytes(t[:2]) + t[2]
    ),
    st.sampled_from([b"\x02\x40", b"\x03\x7f", b"\x04\x7c", b"\x11\x00\x00", b"\x3f\x00"]),
    st.binary(min_size=4, max_size=4).map(lambda b: b"\x43" + b),
    st.binary(min_size=8, max_size=8).map(lambda b: b"\x44" + b),
)
OTHER = st.sampled_from(
    [
        b"\x28\x40\x01\x00",  # memarg naming memory 1 (multi-memory)
        b"\x28\x80\x00\x00",  # a two-byte alignment
        b"\x11\x00\x01",  # call_indirect of table 1 (reference-types)
        b"\x11\x00\x80\x00",  # table 0 in two bytes
        b"\x40\x01",  # memory.grow of memory 1
        b"\x02\x7b",  # a v128 block (simd)
        b"\x02\x01",  # a block of type 1 (multi-value)
        b"\x0e\x02\x00\x01\x00",  # br_table
        b"\xc0",  # i32.extend8_s
        b"\xfc\x00",  # i32.trunc_sat_f32_s
        b"\xfc\x0b\x00",  # memory.fill
        b"\xfd\x0c" + b"\x00" * 16,  # v128.const
        b"\xfd\x80\x02",  # relaxed SIMD
        b"\xfe\x00\x02\x00",  # memory.atomic.notify
        b"\xd0\x70",  # ref.null func
        b"\x12\x00",  # return_call
        b"\x1c\x01\x7f",  # select t
        b"\x25\x00",  # table.get
        b"\xff",  # unknown opcode: stops the scan
        b"\x20",  # truncated immediate
        b"\x44\x00",  # truncated f64
        b"\x0e\xff\xff\x03",  # br_table claiming more targets than bytes
    ]
)
INSTRUCTIONS = st.lists(st.one_of(SIMPLE, SIMPLE, SIMPLE, OTHER), max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(INSTRUCTIONS, st.booleans())
def test_fast_path_reads_what_the_decoder_reads(monkeypatch, instructions, end):
    body = b"".join(instructions) + (b"\x0b" if end else b"")
    fast, slow = read_both(module(body), monkeypatch)
    assert fast == slow


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=200))
def test_fast_path_reads_any_bytes_as_the_decoder_does(monkeypatch, body):
    fast, slow = read_both(module(body), monkeypatch)
    assert fast == slow


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(SIMPLE, min_size=1, max_size=8), st.integers(1, 3000), OTHER, st.booleans())
def test_fast_path_across_its_window(monkeypatch, run, repeat, other, end):
    """Bodies longer than the window (_WINDOW bytes), so the pattern stops mid-run or
    mid-instruction; a feature-bearing or broken instruction after the run, wherever the
    window falls."""
    chunk = b"".join(run)
    body = chunk * (code._WINDOW // len(chunk) + repeat) + other + chunk + (b"\x0b" if end else b"")
    assert len(body) > code._WINDOW
    fast, slow = read_both(module(body), monkeypatch)
    assert fast == slow


def test_a_feature_after_long_simple_code_is_seen():
    body = b"\x20\x00\x1a" * 5000 + b"\xfd\x0c" + b"\x00" * 16 + b"\x1a\x0b"
    details = read_code_details(module(body))
    assert "simd" in details.features and 12 in details.simd_ops


@pytest.mark.parametrize("possessive", [True, False])
def test_a_huge_body_scans_in_bounded_memory(monkeypatch, possessive):
    """re keeps per-repetition state for a plain ``*`` (2.8 GB for 40 MB of local.get):
    the window bounds it, and 3.11's possessive form keeps none. 8 MB of simple code,
    scanned either way, peaks at a few MB beyond the input."""
    if possessive and sys.version_info < (3, 11):
        pytest.skip("possessive quantifiers need Python 3.11")
    pattern = code._SIMPLE_RUN + (b"+" if possessive else b"")
    monkeypatch.setattr(code, "_simple_run", lambda: re.compile(pattern).match)
    body = b"\x20\x81\x01\x6a" * (2 << 20) + b"\x0b"  # local.get 129, i32.add
    data = module(body)
    tracemalloc.start()
    try:
        details = read_code_details(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert details.features == {"multi-value"}  # from type 1 alone
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB"
