"""Inputs are read with caps: a special file that never ends is an error, not a hang
(issue #13, item 8). ``/dev/zero`` given as a policy, an artifact, a module, a baseline or
a suite used to be read until memory ran out."""

from __future__ import annotations

import os
import threading

import pytest

from wasmsbx import errors, inputs, policy
from wasmsbx.runner import sandbox as runner

from .conftest import EXAMPLES

ADD = EXAMPLES / "add.wat"
ZERO = "/dev/zero"
pytestmark = pytest.mark.skipif(not os.path.exists(ZERO), reason="needs /dev/zero")


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["run", ZERO], 102, "not a WebAssembly module"),
        # (random bytes: one in 256 begins as an artifact does, and is refused as one)
        (["run", "/dev/urandom"], 102, "not a WebAssembly module|precompiled artifact too large"),
        (["audit", ZERO], 102, "not a WebAssembly module"),
        (["bench", ZERO], 102, "not a WebAssembly module"),
        (["run", ADD, "add", "1", "2", "--policy", ZERO], 101, "not a policy file"),
        (["audit", ADD, "--policy", ZERO], 101, "not a policy file"),
        (["bench", "--suite", ZERO], 105, "cannot read suite file"),
        (["run", ADD, "add", "--batch", ZERO], 105, "without a newline"),
        (
            ["bench", ADD, "add", "1", "2", "--baseline", ZERO, "-n", "1", "--budget", "1s"],
            105,
            "cannot read baseline",
        ),
    ],
)
def test_endless_inputs_are_refused(cli, args, code, text):
    res = cli(*args, timeout=60)  # a hang or an unbounded read fails here, or runs out of memory
    assert res.code == code, res
    assert any(t in res.stderr for t in text.split("|")), res
    assert "Traceback" not in res.stderr


PAGEMAP = "/proc/self/pagemap"  # st_size 0, endless, and reads must be multiples of 8


@pytest.mark.skipif(not os.path.exists(PAGEMAP), reason="needs /proc/self/pagemap")
@pytest.mark.parametrize(
    "args, code, text",
    [
        (["run", PAGEMAP, "add", "1", "2"], 102, "not a WebAssembly module"),
        (["run", ADD, "add", "1", "2", "--policy", PAGEMAP], 101, "not a policy file"),
    ],
)
def test_a_file_read_only_in_records_is_refused_as_before(cli, args, code, text):
    """Red team round 18: unbuffered reads of 1 or 16 bytes made /proc/self/pagemap fail
    with EINVAL (exit 105 "cannot read") where a buffered read had refused it as what it
    is; files that say they are empty are read in whole chunks."""
    res = cli(*args, timeout=60)
    assert res.code == code, res
    assert text in res.stderr and "Invalid argument" not in res.stderr


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 65535, 65536, 65537, 200000])
@pytest.mark.parametrize("cap", [0, 16, 65536, 100000, 300000])
def test_read_capped_exact_sizes_against_caps(tmp_path, size, cap):
    """Every size around the one-read bound (64 KiB) and the head (16 bytes), against
    caps below, at and above it, as an int and as a function of the head."""
    path = tmp_path / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    for limit in (cap, lambda head: cap):
        if size > cap:
            with pytest.raises(inputs.TooLarge) as caught:
                inputs.read_capped(path, limit)
            assert caught.value.limit == cap
        else:
            seen: list = []
            assert inputs.read_capped(path, limit, seen) == data
            assert len(seen) == 2


def test_endless_artifact_is_refused_and_the_module_runs(cli):
    res = cli("run", ADD, "add", "1", "2", "--artifact", ZERO, timeout=60)
    assert res.code == 0 and res.stdout == "3\n"
    assert "not a wasmsbx artifact" in res.stderr


def test_endless_standalone_artifact(cli, tmp_path):
    """A FIFO whose writer starts with the artifact magic and never stops: the cap ends it."""
    fifo = tmp_path / "art.fifo"
    os.mkfifo(fifo)
    stop = threading.Event()

    def writer() -> None:
        try:
            with open(fifo, "wb") as f:
                f.write(b"\x89WSBX\r\n\x1a")
                while not stop.is_set():
                    f.write(b"\0" * 65536)
        except BrokenPipeError:
            pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    old = inputs.ARTIFACT_MAX_BYTES
    try:
        inputs.ARTIFACT_MAX_BYTES = 1 << 20
        with pytest.raises(errors.ModuleError, match="too large"):
            runner.read_file(fifo)
    finally:
        inputs.ARTIFACT_MAX_BYTES = old
        stop.set()
    thread.join(10)


def test_module_cap_from_the_size_of_a_regular_file(tmp_path, monkeypatch):
    big = tmp_path / "big.wasm"
    big.write_bytes(b"\0asm\x01\0\0\0" + b"\0" * 4096)
    monkeypatch.setattr(inputs, "MODULE_MAX_BYTES", 1024)
    with pytest.raises(errors.ModuleError, match="module too large"):
        runner.read_module(big)


def test_read_capped_from_a_pipe():
    read_end, write_end = os.pipe()

    def writer() -> None:
        try:
            with os.fdopen(write_end, "wb", buffering=0) as f:
                for _ in range(64):
                    f.write(b"x" * 4096)
        except BrokenPipeError:
            pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    with pytest.raises(inputs.TooLarge) as info:
        inputs.read_capped(f"/dev/fd/{read_end}", 10_000)
    assert info.value.limit == 10_000 and info.value.size > 10_000
    os.close(read_end)
    thread.join(10)


def test_read_capped_exact_limit(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a" * 100)
    assert inputs.read_capped(path, 100) == b"a" * 100
    with pytest.raises(inputs.TooLarge):
        inputs.read_capped(path, 99)


def test_policy_cap(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("# " + "x" * inputs.POLICY_MAX_BYTES + "\n")
    with pytest.raises(errors.PolicyError, match="not a policy file"):
        policy.load(path)
