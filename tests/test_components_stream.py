"""``--stream`` for components: FUNC(chunk: list<u8>) -> list<u8> per chunk, optional
finish() -> list<u8>; signatures checked, limits per call (components/stream.py)."""

from __future__ import annotations

import pytest

from .conftest import ROOT

UPPER = ROOT / "examples" / "components" / "upper.wasm"

# process(chunk) returns "<" + chunk + ">" (so chunk boundaries show); finish() "END\n".
MARKED = r"""(component
  (core module $m
    (memory (export "memory") 1)
    (data (i32.const 16) "END\0a")
    (func $realloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (i32.const 1025))
    (func (export "process") (param $p i32) (param $n i32) (result i32)
      (i32.store8 (i32.const 1024) (i32.const 60))
      (i32.store8 (i32.add (i32.const 1025) (local.get $n)) (i32.const 62))
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.add (local.get $n) (i32.const 2)))
      (i32.const 0))
    (func (export "finish") (result i32)
      (i32.store (i32.const 0) (i32.const 16))
      (i32.store (i32.const 4) (i32.const 4))
      (i32.const 0))
    (func (export "text") (param i32 i32) (result i32) (i32.const 0))
  )
  (core instance $i (instantiate $m))
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "cabi_realloc" (core func $realloc))
  (func (export "process") (param "chunk" (list u8)) (result (list u8))
    (canon lift (core func $i "process") (memory $mem) (realloc $realloc)))
  (func (export "finish") (result (list u8))
    (canon lift (core func $i "finish") (memory $mem) (realloc $realloc)))
  (func (export "text") (param "s" string) (result string)
    (canon lift (core func $i "text") (memory $mem) (realloc $realloc) string-encoding=utf8))
)
"""


@pytest.fixture
def marked(tmp_path):
    path = tmp_path / "marked.wat"
    path.write_text(MARKED)
    return path


def test_a_component_streams_stdin_to_stdout(cli):
    res = cli("run", UPPER, "--stream", input=b"shout this\n")
    assert (res.code, res.stdout) == (0, "SHOUT THIS\n"), res


def test_many_chunks_keep_their_order(cli):
    data = bytes(range(256)) * 40  # 10 KiB
    res = cli("run", UPPER, "--stream", "--chunk-size", "1KiB", "--json", input=data)
    assert res.code == 0, res
    want = bytes(b - 32 if 97 <= b <= 122 else b for b in data)
    assert res.stdout_bytes == want
    assert '"chunks": 10' in res.stderr


def test_chunks_are_the_chunk_size_and_finish_comes_last(cli, marked):
    res = cli("run", marked, "--stream", "--chunk-size", "4", input=b"abcdefghij")
    assert (res.code, res.stdout) == (0, "<abcd><efgh><ij>END\n"), res
    res = cli("run", marked, "--stream", input=b"")
    assert (res.code, res.stdout) == (0, "END\n"), res


@pytest.mark.parametrize(
    "func, message",
    [
        ("text", "text has signature func(s: string) -> string; --stream needs "
                 "func(chunk: list<u8>) -> list<u8>"),
        ("finish", "finish has signature func() -> list<u8>; --stream needs func(chunk"),
        ("nope", "has no exported function 'nope'"),
    ],
)  # fmt: skip
def test_functions_that_cannot_stream_are_refused(cli, marked, func, message):
    res = cli("run", marked, func, "--stream", input=b"x")
    assert (res.code, res.stdout) == (2, ""), res
    assert message in res.stderr
    assert "hint: a streaming component exports" in res.stderr or func == "nope"


def test_a_component_without_process_names_what_it_has(cli):
    calc = ROOT / "examples" / "components" / "calc.wasm"
    res = cli("run", calc, "--stream", input=b"x")
    assert res.code == 2 and "no exported function 'process'" in res.stderr, res


def test_fuel_holds_per_chunk(cli):
    res = cli("run", UPPER, "--stream", "--fuel", "5000", input=b"a" * 100_000)
    assert res.code == 111 and "fuel exhausted" in res.stderr, res


def test_stream_from_python(tmp_path):
    from wasmsbx import Sandbox

    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_bytes(b"hello, stream\n" * 100)
    with Sandbox(UPPER) as box, src.open("rb") as fin, dst.open("wb") as fout:
        stats = box.stream(fin, fout, chunk_size=100)
    assert dst.read_bytes() == b"HELLO, STREAM\n" * 100
    assert (stats.chunks, stats.bytes_in) == (14, 1400)


def test_bytes_cross_in_bulk():
    """list<u8> is converted in bulk (components/fastbytes.py): the C layout it relies on
    is the one of this wasmtime-py; a change shows here rather than as a slow stream."""
    from wasmsbx.components import fastbytes, runtime  # noqa: F401 (installs it)

    assert fastbytes.install() is True


def test_chunks_are_not_counted_as_output(cli, tmp_path):
    # A call's result counts against limits.output (components/runtime.py _check_result);
    # a stream's chunks do not: limits.output counts what the guest writes, not the stream.
    policy = tmp_path / "sandbox.toml"
    policy.write_text('[limits]\noutput = "0"\n')
    data = b"a" * (300 << 10)
    res = cli("run", UPPER, "--policy", policy, "--stream", "--chunk-size", "256KiB", input=data)
    assert (res.code, res.stdout_bytes) == (0, b"A" * (300 << 10)), res
