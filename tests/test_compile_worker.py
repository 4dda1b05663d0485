"""``compile -o`` of a module large enough for the compile worker (backends/compiling.py
CHILD_MIN): the worker builds the engine and says what it built for, so the command
itself never imports the runtime; the artifact must record exactly what an in-process
compile records, and still be authenticated and checked on the way out."""

from __future__ import annotations

import subprocess
import sys
import time

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
    """Replace the worker's script (argv[1] the parent's pid, argv[2] the backend,
    argv[3:] sys.path) with ``body``, run after it has said it is ready and read one
    request (its bytes in ``request``)."""
    read = (
        "os.write(1, b'R')\n"
        "def take(n):\n"
        "    b = b''\n"
        "    while len(b) < n:\n"
        "        c = os.read(0, n - len(b))\n"
        "        if not c: os._exit(0)\n"
        "        b += c\n"
        "    return b\n"
        "request = take(int.from_bytes(take(4), 'little'))\n"
        "take(int.from_bytes(take(8), 'little'))\n"
    )
    monkeypatch.setattr(compiling, "_CHILD", "import os, sys\n" + read + body)
    compiling.WORKERS.close()  # (a real one kept from an earlier test would answer)


def too_slow() -> Exception:
    return RuntimeError("deadline")


def ok_answer(header: bytes, code: bytes) -> bytes:
    size = len(code).to_bytes(8, "little")
    return b"ok" + len(header).to_bytes(4, "little") + header + size + code


@pytest.mark.parametrize("status", [0, 3])
def test_a_worker_answer_is_taken_only_whole(monkeypatch, status):
    """A worker that dies after writing part of its answer (here, a whole header and
    some of its code) gives an error, never truncated code, whatever its exit status;
    the whole answer is taken as it is."""
    header = b'{"fingerprint": {"backend": "wasmtime"}, "keep": false}'
    answer = ok_answer(header, b"\x01\x02\x03")
    fake_worker(
        monkeypatch,
        f"sys.stdout.buffer.write({answer[:-1]!r}); sys.stdout.flush()\nos._exit({status})\n",
    )
    with pytest.raises(errors.ModuleError, match="worker process"):
        compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 60, too_slow)
    fake_worker(
        monkeypatch,
        f"sys.stdout.buffer.write({answer!r}); sys.stdout.flush()\nos._exit({status})\n",
    )
    code, fingerprint = compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 60, too_slow)
    assert (bytes(code), fingerprint) == (b"\x01\x02\x03", {"backend": "wasmtime"})


@pytest.mark.parametrize(
    "answer",
    [
        b"ok" + (1000).to_bytes(4, "little") + b"{}",  # a header longer than the answer
        ok_answer(b"{x}", b"code"),  # a header that is not JSON
        ok_answer(b"[]", b"code"),  # nor an object
        ok_answer(b'{"keep": true}', b"code"),  # without a fingerprint
        ok_answer(b'{"fingerprint": {}}', b"")[:-8] + (1 << 62).to_bytes(8, "little"),
        b"ok",
        b"er" + (11).to_bytes(4, "little") + b"{not json}",
        b"no",
        b"",
    ],
)
def test_a_broken_worker_answer_is_a_one_line_error(monkeypatch, answer):
    fake_worker(
        monkeypatch,
        f"sys.stdout.buffer.write({answer!r}); sys.stdout.flush()\nos._exit(0)\n",
    )
    with pytest.raises(errors.ModuleError, match="worker process"):
        compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 60, too_slow)


def test_a_silent_worker_is_ended_at_the_deadline(monkeypatch):
    fake_worker(monkeypatch, "import time\ntime.sleep(60)\n")
    with pytest.raises(RuntimeError, match="deadline"):
        compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 0.5, too_slow)


def test_the_worker_is_kept_for_the_next_compile():
    """One worker compiles one module after another (a new one costs an interpreter and
    the runtime's import, ~50 ms); one that ended since (its idle timeout, or the thread
    that started it ended: PR_SET_PDEATHSIG) is replaced without an error."""
    compiling.WORKERS.close()
    wasm = bytes(wasmtime.wat2wasm('(module (func (export "f")))'))
    compiling.worker_code("wasmtime", OPTIONS, wasm, 120, too_slow)
    kept = compiling.WORKERS.idle
    assert kept is not None
    compiling.worker_code("wasmtime", OPTIONS, wasm, 120, too_slow)
    assert compiling.WORKERS.idle is kept
    kept.proc.kill()
    kept.proc.wait()
    code, _ = compiling.worker_code("wasmtime", OPTIONS, wasm, 120, too_slow)
    assert bytes(code)
    assert compiling.WORKERS.idle not in (None, kept)
    compiling.WORKERS.close()


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


def test_a_ctrl_c_at_the_terminal_does_not_reach_the_worker():
    # Its own session: the terminal's SIGINT goes to the foreground process group, the
    # parent's (which kills a worker compiling for it); an idle worker would die of it.
    import os

    compiling.WORKERS.close()
    wasm = bytes(wasmtime.wat2wasm('(module (func (export "f")))'))
    compiling.worker_code("wasmtime", OPTIONS, wasm, 120, too_slow)
    worker = compiling.WORKERS.idle
    assert os.getsid(worker.proc.pid) != os.getsid(0)
    assert os.getpgid(worker.proc.pid) != os.getpgid(0)
    compiling.WORKERS.close()


def test_a_forked_child_starts_its_own_worker():
    # The kept worker's pipes are the parent's: a forked child must not write into them.
    import os

    wasm = bytes(wasmtime.wat2wasm('(module (func (export "f")))'))
    compiling.worker_code("wasmtime", OPTIONS, wasm, 120, too_slow)
    parents = compiling.WORKERS.idle
    assert parents is not None
    pid = os.fork()
    if pid == 0:  # pragma: no cover - (the child reports by its exit status)
        status = 1
        try:
            if compiling.WORKERS.idle is None:
                code, _ = compiling.worker_code("wasmtime", OPTIONS, wasm, 120, too_slow)
                mine = compiling.WORKERS.idle
                status = 0 if bytes(code) and mine.proc.pid != parents.proc.pid else 2
        finally:
            os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0
    assert compiling.WORKERS.idle is parents  # the parent's own, still usable
    code, _ = compiling.worker_code("wasmtime", OPTIONS, wasm, 120, too_slow)
    assert bytes(code)
    compiling.WORKERS.close()


def test_a_component_from_python_compiles_in_the_worker(monkeypatch, isolated):
    # wasmtime compiles a component whole, so nothing in the caller's process could
    # bound it: from Python it goes to the worker too (ComponentEngine.worker_wrap).
    from wasmsbx import Sandbox

    from .component_guests import amplify_guest

    asked = []
    real = compiling.worker_code

    def spy(*args, **kwargs):
        asked.append(args[5:])
        return real(*args, **kwargs)

    monkeypatch.setattr(compiling, "worker_code", spy)
    with Sandbox(amplify_guest(isolated), use_cache=False) as box:
        assert box.exports
    assert asked == [("wasmsbx.components.runtime:ComponentEngine",)]


def test_a_worker_builds_only_wasmsbx_engines():
    with pytest.raises(errors.UsageError):
        compiling._wrapper("os:system")
    with pytest.raises(errors.UsageError):
        compiling._wrapper("wasmsbx.components.runtime:x.y")


def test_a_worker_that_cannot_start_is_a_resource_error(monkeypatch):
    compiling.WORKERS.close()
    monkeypatch.setattr(compiling.sys, "executable", "/nonexistent/python")
    with pytest.raises(errors.ResourceExhausted, match="cannot start a compile worker") as info:
        compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 60, too_slow)
    assert "WASMSBX_COMPILE_HERE" in info.value.hint


def test_compile_here_keeps_the_compile_in_process(monkeypatch, isolated):
    # an embedding that cannot start a worker, or a caller that trusts its modules
    from wasmsbx import Sandbox

    compiling.WORKERS.close()
    monkeypatch.setattr(compiling.sys, "executable", "/nonexistent/python")
    wasm = bytes(wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 7))'))
    with pytest.raises(errors.ResourceExhausted):
        Sandbox(wasm, use_cache=False)
    monkeypatch.setenv("WASMSBX_COMPILE_HERE", "1")
    with Sandbox(wasm, use_cache=False) as box:
        assert box.call("f") == 7


# ------------------------------------------------------- red team round 33


def _run_python(code: str, cwd, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_worker_imports_nothing_from_the_working_folder(tmp_path):
    # H1: a guest granted the working folder wrote a json.py there; the worker (its path
    # the parent's, '' first under python -c) ran it as the user, and could have handed
    # back any code. The host imported its own modules before the guest ran.
    planted = tmp_path / "planted"
    code = (
        "import json, select, resource, typing, ctypes, sys, wasmtime\n"
        "from wasmsbx import Sandbox\n"
        "from wasmsbx.backends import compiling\n"
        "import os\n"
        "names = ('json', 'select', 'resource', 'typing', 'ctypes', 'wasmtime', '_winapi')\n"
        "for name in names:\n"
        "    open(name + '.py', 'w').write(\n"
        "        f'open({sys.argv[1]!r}, \"a\").write({name!r})')\n"
        "os.mkdir('wasmer')\n"  # (round 34: found by name, it put this folder on the path)
        "open('wasmer/__init__.py', 'w').close()\n"
        "wat = '(module (func (export \"f\") (result i32) i32.const 5))'\n"
        "print(Sandbox(wat.encode(), use_cache=False).call('f'))\n"
        "print(compiling.worker_path())\n"
    )
    proc = _run_python(code, tmp_path, planted)
    assert proc.returncode == 0, proc
    assert proc.stdout.splitlines()[0] == "5"
    assert not planted.exists(), planted.read_text()
    assert str(tmp_path) not in proc.stdout and "''" not in proc.stdout


def test_a_worker_starts_under_a_parent_that_is_pid_1(tmp_path):
    # H2: in a container whose Python is pid 1, the worker took its parent for gone
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare")
    code = (
        "import os\n"
        "from wasmsbx import Sandbox\n"
        "wat = '(module (func (export \"f\") (result i32) i32.const 5))'\n"
        "print(os.getpid(), Sandbox(wat.encode(), use_cache=False).call('f'))\n"
    )
    argv = [unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-c", code]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"cannot make a pid namespace here: {proc.stderr.strip()}")
    assert (proc.returncode, proc.stdout.split()) == (0, ["1", "5"]), proc


def test_a_host_with_default_sigpipe_survives_a_worker_gone_idle(tmp_path):
    # M1: writing into a kept worker that had ended killed such a host (exit 141)
    code = (
        "import os, signal\n"
        "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
        "from wasmsbx import Sandbox\n"
        "from wasmsbx.backends import compiling\n"
        "wat = '(module (func (export \"f%d\") (result i32) i32.const 5))'\n"
        "Sandbox((wat % 1).encode(), use_cache=False)\n"
        "worker = compiling.WORKERS.idle.proc\n"
        "worker.kill(); worker.wait()\n"
        "print(Sandbox((wat % 2).encode(), use_cache=False).call('f2'))\n"
    )
    proc = _run_python(code, tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "5\n"), proc


def test_a_worker_outlives_the_thread_that_started_it():
    # M2: PR_SET_PDEATHSIG killed the kept worker when the thread that started it ended
    # (a thread per compile, `watch`'s cycles: a new interpreter every time)
    import threading

    compiling.WORKERS.close()
    wasm = bytes(wasmtime.wat2wasm('(module (func (export "f")))'))
    thread = threading.Thread(
        target=compiling.worker_code, args=("wasmtime", OPTIONS, wasm, 120, too_slow)
    )
    thread.start()
    thread.join()
    kept = compiling.WORKERS.idle
    time.sleep(0.5)  # (a killed one would be dead by now)
    assert kept.proc.poll() is None
    compiling.worker_code("wasmtime", OPTIONS, wasm, 120, too_slow)
    assert compiling.WORKERS.idle is kept
    compiling.WORKERS.close()


def test_a_new_workers_start_is_not_the_compiles_time(monkeypatch):
    # M3: its start (an interpreter, the runtime's import: ~100 ms) counted against the
    # compile timeout, so a short one never let any compile finish
    answer = ok_answer(b'{"fingerprint": {}, "keep": false}', b"c")
    fake_worker(monkeypatch, f"sys.stdout.buffer.write({answer!r}); sys.stdout.flush()\n")
    monkeypatch.setattr(
        compiling, "_CHILD", "import time, os\ntime.sleep(1.5)\n" + compiling._CHILD
    )
    code, _ = compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 0.5, too_slow)
    assert bytes(code) == b"c"


def test_a_worker_that_never_gets_ready_is_a_start_failure(monkeypatch):
    monkeypatch.setattr(compiling, "_CHILD", "import time\ntime.sleep(60)\n")
    monkeypatch.setattr(compiling, "STARTUP", 0.5)
    compiling.WORKERS.close()
    with pytest.raises(errors.ResourceExhausted, match="not ready"):
        compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 60, too_slow)


@pytest.mark.parametrize("executable", ["/bin/true", "/bin/false", None, ""])
def test_an_executable_that_is_not_python_is_a_start_failure(monkeypatch, executable):
    # round 33 M4: "compiling failed in its worker process (status 0)", blamed on the
    # module; round 34: None raised a raw TypeError
    compiling.WORKERS.close()
    monkeypatch.setattr(compiling.sys, "executable", executable)
    with pytest.raises(errors.ResourceExhausted, match="cannot start a compile worker"):
        compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 60, too_slow)


def test_a_frozen_application_does_not_start_itself(monkeypatch):
    compiling.WORKERS.close()
    monkeypatch.setattr(compiling.sys, "frozen", True, raising=False)
    with pytest.raises(errors.ResourceExhausted, match="frozen"):
        compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 60, too_slow)


def test_a_stopped_worker_still_meets_the_deadline():
    # LOW: the request was written with a blocking write: a stopped worker and a module
    # larger than the pipe held the caller past its deadline
    import os
    import signal

    compiling.WORKERS.close()
    small = bytes(wasmtime.wat2wasm('(module (func (export "f")))'))
    compiling.worker_code("wasmtime", OPTIONS, small, 120, too_slow)
    worker = compiling.WORKERS.idle
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="deadline"):
            compiling.worker_code(
                "wasmtime", OPTIONS, b"\0asm\1\0\0\0" + bytes(400_000), 1, too_slow
            )
        assert time.monotonic() - started < 30
    finally:
        if worker.proc.poll() is None:
            os.kill(worker.proc.pid, signal.SIGKILL)
    assert compiling.WORKERS.idle is None  # (killed at the deadline, not kept)


def test_a_spawner_thread_that_cannot_start_is_a_start_failure(monkeypatch):
    # round 34: under RLIMIT_NPROC the spawner's thread raised a raw RuntimeError
    import _thread

    def refuse(*args):
        raise RuntimeError("can't start new thread")

    compiling.WORKERS.close()
    monkeypatch.setattr(compiling.SPAWNER, "jobs", None)
    monkeypatch.setattr(_thread, "start_new_thread", refuse)
    with pytest.raises(errors.ResourceExhausted, match="can't start new thread"):
        compiling.worker_code("wasmtime", OPTIONS, b"\0asm\1\0\0\0", 60, too_slow)


def test_a_runs_deadline_bounds_a_new_workers_start(monkeypatch):
    # round 34 L6: a worker's start is outside the compile timeout, but not outside the
    # deadline of a run that covers compiling (Sandbox(deadline=...)): a 5 s start ran
    # past a 1 s deadline and the call then ran
    from wasmsbx import Sandbox
    from wasmsbx.runner import shared

    compiling.WORKERS.close()
    shared.clear()  # (a module another test compiled is shared in process: no compile)
    monkeypatch.setattr(compiling, "_CHILD", "import time\ntime.sleep(30)\n" + compiling._CHILD)
    wat = '(module (func (export "late_start") (result i32) i32.const 4321))'
    wasm = bytes(wasmtime.wat2wasm(wat))
    started = time.monotonic()
    with pytest.raises(errors.TimeoutExceeded):
        Sandbox(wasm, use_cache=False, deadline=started + 1.0)
    assert time.monotonic() - started < 20
    assert compiling.READY_BY.get() is None


def test_a_slow_start_leaves_the_compile_only_what_the_deadline_has_left(monkeypatch):
    # red team round 35: the compile's own seconds were counted from when a new worker
    # was ready, so a slow start added up to the whole start to the run's deadline. With a
    # 1.5 s start, a compile_timeout of 2.4 s and a deadline at 2.5 s, the compile ran to
    # 3.9 s and failed on the compile timeout; it must end at the deadline instead.
    from wasmsbx import Sandbox
    from wasmsbx import policy as policy_mod
    from wasmsbx.runner import shared

    compiling.WORKERS.close()
    shared.clear()
    slow = (  # a worker 1.5 s to start whose compiles take 30 s
        "import sys, time\n"
        "time.sleep(1.5)\n"
        "sys.path[:] = sys.argv[3:]\n"
        "from wasmsbx.backends import compiling\n"
        "compiling._bound_memory = lambda *args: time.sleep(30)\n"
        "compiling.child_main()\n"
    )
    monkeypatch.setattr(compiling, "_CHILD", slow)
    wat = '(module (func (export "slow_start") (result i32) i32.const 1234))'
    wasm = bytes(wasmtime.wat2wasm(wat))
    policy = policy_mod.defaults()
    policy_mod.override(policy, "limits.compile_timeout", "2400ms")
    policy_mod.override(policy, "limits.timeout", "60s")
    started = time.monotonic()
    with pytest.raises(errors.TimeoutExceeded, match="at the run's deadline") as caught:
        Sandbox(wasm, policy, use_cache=False, deadline=started + 2.5)
    assert "after compiling began" in str(caught.value)
    assert compiling.READY_BY.get() is None


def test_a_deadline_passed_before_compiling_says_so():
    # red team round 36: "-39193.5 µs after compiling began"
    error = compiling.out_of_time("m.wasm", 10.0, -0.04)
    assert "had passed before compiling began" in str(error) and "-" not in str(error)
    assert "500.0 ms after compiling began" in str(compiling.out_of_time("m.wasm", 10.0, 0.5))
    assert "after 10.00 s" in str(compiling.out_of_time("m.wasm", 10.0, 9.9))
