"""``compile -o`` of a module large enough for the compile worker (backends/compiling.py
CHILD_MIN): the worker builds the engine and says what it built for, so the command
itself never imports the runtime; the artifact must record exactly what an in-process
compile records, and still be authenticated and checked on the way out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wasmsbx import errors
from wasmsbx.backends import compiling
from wasmsbx.backends.base import EngineOptions
from wasmsbx.native import artifact as aot

wasmtime = pytest.importorskip("wasmtime")

# Code that uses sign-extension and bulk-memory, exports with typed signatures, and a
# data segment that makes the module pass CHILD_MIN while keeping the compile small.
BIG_WAT = """
(module
  (memory (export "memory") 8)
  (func (export "sext") (param i32) (result i32) local.get 0 i32.extend8_s)
  (func (export "fill") (param i32 i32) local.get 0 i32.const 7 local.get 1 memory.fill)
  (data (i32.const 0) "%s"))
""" % ("\\00" * (compiling.CHILD_MIN + 1000))


@pytest.fixture
def big(isolated):
    path = isolated / "big.wasm"
    path.write_bytes(bytes(wasmtime.wat2wasm(BIG_WAT)))
    assert path.stat().st_size >= compiling.CHILD_MIN
    return path


def compile_in_a_fresh_process(module, out) -> list:
    """``main(["compile", module, "-o", out])`` in a new interpreter: its exit code, and
    whether the command imported wasmtime."""
    code = (
        "import sys\n"
        "from wasmsbx.cli import main\n"
        "code = main(['compile', sys.argv[1], '-o', sys.argv[2]])\n"
        "print(code, 'wasmtime' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(module), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.stdout.split()[-2:] + [proc.stderr]


def test_the_command_waits_for_the_worker_without_importing_wasmtime(isolated, big):
    out = isolated / "big.cwasm"
    code, imported, stderr = compile_in_a_fresh_process(big, out)
    assert (code, imported) == ("0", "False"), stderr
    assert aot.authenticate_artifact(out.read_bytes(), str(out)).header["kind"] == "artifact"


def test_the_artifact_records_what_an_in_process_compile_records(cli, isolated, big):
    """Header and native code are those of the module and engine here: the fingerprint
    the worker reports is its engine's, which is this process's engine's."""
    from wasmsbx import policy
    from wasmsbx.backends import get
    from wasmsbx.backends.base import engine_options
    from wasmsbx.wasm.facts import read_facts

    out = isolated / "big.cwasm"
    assert cli("compile", big, "-o", out).code == 0
    art = aot.authenticate_artifact(out.read_bytes(), str(out))
    wasm = big.read_bytes()
    # (-o's default: code without epoch checks, for `wasmsbx run`)
    options = engine_options(policy.discover(), "cranelift")._replace(epoch=False)
    engine = get("wasmtime").engine(options)
    facts = read_facts(wasm)
    assert art.fingerprint == aot.normalise(engine.fingerprint())
    module = art.header["module"]
    assert module["sha256"] == facts.sha256 == aot.sha256(wasm)
    assert (module["size"], module["name"]) == (len(wasm), "big.wasm")
    assert module["features"] == sorted(facts.features) == ["bulk-memory", "sign-extension"]
    assert module["exports"] == aot.records_of(facts.exports)
    assert {"name": "sext", "kind": "func", "params": ["i32"], "results": ["i32"]} in (
        module["exports"]
    )
    assert bytes(art.payload) == engine.serialize(engine.compile(wasm))  # deterministic
    result = cli("run", out, "sext", "300")  # 300 = 0x12c: its low byte 0x2c is 44
    assert (result.code, result.stdout) == (0, "44\n"), result


def test_the_worker_path_keeps_the_output_rules(cli, isolated, big):
    """-o is checked before the worker starts (outfile.py): never the input, not even
    through a link, never a link to nothing; a link to a file is written through."""
    before = big.read_bytes()
    to_input = isolated / "to-input.cwasm"
    to_input.symlink_to(big)
    dangling = isolated / "dangling.cwasm"
    dangling.symlink_to(isolated / "nowhere" / "x.bin")
    for out in (big, to_input, dangling):
        result = cli("compile", big, "-o", out)
        assert result.code == 105 and result.stderr.startswith("error: "), result
    assert big.read_bytes() == before and not (isolated / "nowhere").exists()
    target = isolated / "elsewhere.bin"
    target.write_bytes(b"old")
    link = isolated / "link.cwasm"
    link.symlink_to(target)
    assert cli("compile", big, "-o", link).code == 0
    assert link.is_symlink() and aot.is_artifact(target.read_bytes())


def test_a_tampered_worker_artifact_is_refused(cli, isolated, big):
    out = isolated / "big.cwasm"
    assert cli("compile", big, "-o", out).code == 0
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the native code
    out.write_bytes(bytes(data))
    result = cli("run", out, "sext", "1")
    assert result.code == 102 and "not authenticated" in result.stderr, result


OPTIONS = EngineOptions(compiler="cranelift")


def fake_worker(monkeypatch, body: str) -> None:
    """Replace the worker's script (argv[1] backend, argv[2:] sys.path) with ``body``."""
    monkeypatch.setattr(compiling, "_CHILD", "import os, sys\n" + body)


def too_slow() -> Exception:
    return RuntimeError("deadline")


@pytest.mark.parametrize("status", [0, 3])
def test_a_worker_answer_is_taken_only_from_a_clean_exit(monkeypatch, status):
    """A worker that dies after writing part of its answer (here, a whole header and
    some code) gives an error, never truncated code; the same answer with exit 0 is
    taken as it is."""
    header = b'{"backend": "wasmtime"}'
    answer = b"ok" + len(header).to_bytes(4, "little") + header + b"\x01\x02"
    fake_worker(
        monkeypatch,
        f"sys.stdin.buffer.read(); sys.stdout.buffer.write({answer!r}); sys.stdout.flush()\n"
        f"os._exit({status})\n",
    )
    if status:
        with pytest.raises(errors.ModuleError, match="worker process"):
            compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 60, too_slow)
    else:
        code, fingerprint = compiling.worker_code(
            "wasmtime", OPTIONS, b"\0asm\1\0\0\0", 60, too_slow
        )
        assert (bytes(code), fingerprint) == (b"\x01\x02", {"backend": "wasmtime"})


@pytest.mark.parametrize(
    "answer",
    [
        b"ok" + (1000).to_bytes(4, "little") + b"{}",  # a header longer than the answer
        b"ok" + (3).to_bytes(4, "little") + b"{x}code",  # a header that is not JSON
        b"ok" + (2).to_bytes(4, "little") + b"[]code",  # nor an object
        b"ok",
        b"er{not json",
        b"",
    ],
)
def test_a_broken_worker_answer_is_a_one_line_error(monkeypatch, answer):
    fake_worker(
        monkeypatch,
        f"sys.stdin.buffer.read(); sys.stdout.buffer.write({answer!r}); sys.stdout.flush()\n"
        "os._exit(0)\n",
    )
    with pytest.raises(errors.ModuleError, match="worker process"):
        compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 60, too_slow)


def test_the_worker_reports_its_engine_fingerprint():
    from wasmsbx.backends import get

    wasm = bytes(wasmtime.wat2wasm('(module (func (export "f")))'))
    options = EngineOptions(compiler="cranelift", optimize="none", fuel=True, stack=1 << 20)
    code, fingerprint = compiling.worker_code("wasmtime", options, wasm, 120, too_slow)
    engine = get("wasmtime").engine(options)
    assert fingerprint == engine.fingerprint()
    assert (fingerprint["optimize"], fingerprint["fuel"], fingerprint["stack"]) == (
        "none",
        True,
        1 << 20,
    )
    assert bytes(code) == engine.serialize(engine.compile(wasm))


def test_choosing_wasmtime_does_not_import_it():
    """Selection asks the adapter (backends/wasmtime/adapter.py), which never imports
    wasmtime; only an engine does."""
    code = (
        "import sys\n"
        "from wasmsbx import policy\n"
        "from wasmsbx.backends import get, select\n"
        "chosen = select.select(policy.defaults(), frozenset({'simd'}), 'command', 'wasmtime')\n"
        "adapter = get(chosen.backend)\n"
        "print(chosen.backend, adapter.version(), 'wasmtime' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    from wasmsbx.backends.wasmtime.backend import _version

    assert proc.stdout.split() == ["wasmtime", _version(), "False"], proc.stderr


def test_an_invalid_large_module_is_the_workers_one_line_error(cli, isolated):
    """The worker's own error (b"er" + JSON) comes back as the module error it was."""
    bad = isolated / "bad.wasm"
    # A valid header, then a code section of garbage (the compiler, not facts, says so).
    bad.write_bytes(b"\0asm\1\0\0\0" + b"\x0a\x90\x80\x10" + b"\xff" * (compiling.CHILD_MIN + 8))
    result = cli("compile", bad, "-o", isolated / "bad.cwasm")
    assert result.code == 102, result
    assert result.stderr.startswith("error: ") and "invalid module" in result.stderr, result
    assert "Traceback" not in result.stderr and not (isolated / "bad.cwasm").exists()


def test_without_wasmtime_installed_the_adapter_says_so(monkeypatch):
    """The adapter no longer imports wasmtime, so it must tell a missing package itself
    (before, importing the adapter failed)."""
    import importlib.util

    from wasmsbx.backends.wasmtime import adapter, identity

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.delitem(sys.modules, "wasmtime")
    identity.origin.cache_clear()
    try:
        state = adapter.WasmtimeBackend().probe()
    finally:
        monkeypatch.undo()
        identity.origin.cache_clear()
    assert (state.available, state.fix) == (False, "pip install wasmtime")
    assert adapter.WasmtimeBackend().probe().available  # found again: it is installed
