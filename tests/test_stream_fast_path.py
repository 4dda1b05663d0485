"""The stream's zero-copy path (plain files on both ends: each chunk read straight into
the guest's input buffer, its output written straight from guest memory) against the
copying one (any other file object), attacked where the two could differ: a guest that
rewrites its input in place, output ranges outside memory, a trap mid-stream with a
checkpoint, and a guest that grows its memory between chunks."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from wasmsbx.errors import TrapError
from wasmsbx.policy import defaults
from wasmsbx.runner import Sandbox

from .conftest import require_capability

# process(ptr, len): traps on a chunk starting with 0xFF; grows memory by a page on a
# chunk starting with 0xFE; otherwise overwrites its input with 'Z' in place and returns
# that same range as its output (packed i64). bad_out returns a range past the end.
ZAP = b"""
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 0xFF)) (then unreachable))
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 0xFE))
      (then (drop (memory.grow (i32.const 1)))))
    (memory.fill (local.get $p) (i32.const 0x5A) (local.get $n))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))
  (func (export "bad_out") (param i32 i32) (result i64)
    (i64.or (i64.const 0x0000FDE800000000) (i64.extend_i32_u (local.get 1))))
)
"""
CHUNK = 4096


def box_for(backend: str) -> Sandbox:
    require_capability(backend, "bulk-memory")  # memory.fill
    return Sandbox(ZAP, defaults(), backend=backend)


@pytest.mark.parametrize("plain", [True, False], ids=["files", "file-objects"])
def test_in_place_rewrite_gives_the_same_bytes_on_both_paths(backend, tmp_path, plain):
    data = bytes(range(1, 200)) * 100 + b"\xfe" + b"x" * 5000  # grows memory mid-stream
    box = box_for(backend)
    if plain:
        src, dst = tmp_path / "in", tmp_path / "out"
        src.write_bytes(data)
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            box.stream(fin, fout, chunk_size=CHUNK)
        got = dst.read_bytes()
    else:
        out = io.BytesIO()
        box.stream(io.BytesIO(data), out, chunk_size=CHUNK)
        got = out.getvalue()
    assert got == b"Z" * len(data)


@pytest.mark.parametrize("plain", [True, False], ids=["files", "file-objects"])
def test_output_outside_memory_is_refused(backend, tmp_path, plain):
    box = box_for(backend)
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(b"a" * 10_000)
    with pytest.raises(TrapError, match="outside guest memory"):
        if plain:
            with open(src, "rb") as fin, open(dst, "wb") as fout:
                box.stream(fin, fout, "bad_out", chunk_size=CHUNK)
        else:
            box.stream(io.BytesIO(src.read_bytes()), io.BytesIO(), "bad_out", chunk_size=CHUNK)


def test_checkpoint_digests_the_input_before_the_guest_rewrites_it(backend, tmp_path):
    """A trap in chunk 2 saves a checkpoint for chunk 1: its digest must be of the bytes
    read, not of what the guest left in its buffer (the zero-copy path reads into it)."""
    first = b"a" * CHUNK
    src, dst, mark = tmp_path / "in", tmp_path / "out", tmp_path / "ck.json"
    src.write_bytes(first + b"\xff" + b"b" * 100)
    box = box_for(backend)
    with open(src, "rb") as fin, open(dst, "wb") as fout:  # noqa: SIM117 - Python 3.9
        with pytest.raises(TrapError, match="unreachable"):
            box.stream(fin, fout, chunk_size=CHUNK, checkpoint=str(mark))
    assert dst.read_bytes() == b"Z" * CHUNK
    state = json.loads(mark.read_text())["state"]
    assert state["input_offset"] == CHUNK and state["output_offset"] == CHUNK
    assert state["tail_sha256"] == hashlib.sha256(first).hexdigest()
