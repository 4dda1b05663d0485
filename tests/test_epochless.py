"""``compile -o`` artifacts without epoch checks (README "Artifacts without epoch checks").

By default an artifact's code has no epoch checks: it compiles ~1.25x faster and runs
CPU-bound loops faster, and only ``wasmsbx run`` loads it, which ends the process at the
deadline (the keeper's hard stop). Every way a guest can outlast its limits must still
end it: a busy loop (in a call, in a start function, in ``_start``), a blocked host call,
an output flood under a far deadline, Ctrl-C/SIGTERM. Everywhere else (Python, batch,
a process with no hard stop) such an artifact is refused with a hint, never run with
nothing to stop it. Bounds on elapsed time are generous "it stopped at all" bounds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import GUESTS, run_main
from tests.test_deadlines import POLL_WAT, STOPPED_WITHIN, finish, interrupt, popen
from wasmsbx import Sandbox, errors
from wasmsbx import policy as policy_mod
from wasmsbx.native import artifact as aot
from wasmsbx.native import trust

pytest.importorskip("wasmtime")

SPIN = GUESTS / "spin.wat"
START_SPIN = '(module (func $s (loop $l (br $l))) (start $s) (func (export "f")))'
FLOOD = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\\10\\00\\00\\00\\00\\10\\00\\00")
  (func (export "_start")
    (loop $l (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l))))
"""
ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


def compile_to(cli, source, out, *extra) -> dict:
    result = cli("compile", source, "-o", out, "--backend", "wasmtime", *extra)
    assert result.code == 0, result
    return aot.read_header(out.read_bytes())["fingerprint"]


@pytest.fixture
def spin_art(cli, isolated):
    out = isolated / "spin.cwasm"
    assert compile_to(cli, SPIN, out)["epoch"] is False
    return out


def test_an_artifact_has_no_epoch_checks_unless_asked(cli, isolated):
    plain, kept = isolated / "a.cwasm", isolated / "b.cwasm"
    assert compile_to(cli, SPIN, plain)["epoch"] is False
    assert compile_to(cli, SPIN, kept, "--interruptible")["epoch"] is True
    result = cli("compile", SPIN, "--interruptible")  # the cache's code always has them
    assert result.code == 2 and "applies to a standalone artifact" in result.stderr


def test_a_busy_call_ends_at_its_timeout(cli, spin_art):
    result = cli("run", spin_art, "spin", "--timeout", "1s")
    assert result.code == 112, result
    assert "timeout: spin still running after 1.00 s" in result.stderr
    assert "blocked in a host call" not in result.stderr  # (it is not)


def test_the_timeout_reads_the_same_in_json(cli, spin_art):
    result = cli("run", spin_art, "spin", "--timeout", "1s", "--json")
    assert result.code == 112, result
    report = json.loads(result.stdout)
    assert report["exit_source"] == "wasmsbx" and report["error"]["limit"] == "timeout"


def test_a_busy_start_function_ends_at_its_timeout(cli, isolated):
    source = isolated / "start.wat"
    source.write_text(START_SPIN)
    out = isolated / "start.cwasm"
    compile_to(cli, source, out)
    result = cli("run", out, "f", "--timeout", "1s")
    assert result.code == 112 and "start function still running" in result.stderr, result


def test_a_blocked_host_call_ends_at_its_timeout(cli, isolated):
    source = isolated / "poll.wat"
    source.write_text(POLL_WAT)  # _start sleeps an hour in poll_oneoff
    out = isolated / "poll.cwasm"
    compile_to(cli, source, out)
    started = time.monotonic()
    result = cli("run", out, "--timeout", "1s")
    assert result.code == 112, result
    assert time.monotonic() - started < STOPPED_WITHIN


def test_an_output_flood_ends_under_a_far_deadline(cli, isolated):
    """No epochs to move: the flood's hard stop is the only end (366 days otherwise)."""
    source = isolated / "flood.wat"
    source.write_text(FLOOD)
    out = isolated / "flood.cwasm"
    compile_to(cli, source, out)
    (isolated / "sandbox.toml").write_text('[limits]\noutput = "1MiB"\ntimeout = "366d"\n')
    result = cli("run", out, "--policy", isolated / "sandbox.toml")
    assert result.code == 115 and "output limit" in result.stderr, result.stderr
    assert len(result.stdout_bytes) <= (1 << 20) + 4096


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_busy_guest(spin_art, signum):
    proc = popen("run", spin_art, "spin", "--timeout", "366d")
    code, err, took = interrupt(proc, signum)
    assert code == 130 and "interrupted" in err, err
    assert took < STOPPED_WITHIN


def test_the_library_refuses_it_with_a_hint(spin_art):
    with pytest.raises(errors.ModuleError) as caught:
        Sandbox(spin_art, policy_mod.defaults())
    assert "compiled without epoch checks" in caught.value.message
    assert "--interruptible" in caught.value.hint
    with pytest.raises(errors.ModuleError, match="without epoch checks"):
        Sandbox(spin_art.read_bytes(), policy_mod.defaults())


def test_beside_its_module_the_library_compiles_the_module_instead(spin_art):
    """A warning, and code with epochs: the timeout still stops the call in process."""
    pol = policy_mod.defaults()
    policy_mod.override(pol, "limits.timeout", "300ms")
    box = Sandbox(SPIN, pol, artifact=str(spin_art))
    assert box.artifact is None and any("without epoch checks" in w for w in box.warnings)
    with pytest.raises(errors.TimeoutExceeded):
        box.call("spin")


def test_an_interruptible_artifact_loads_in_the_library(cli, isolated):
    out = isolated / "spin.cwasm"
    compile_to(cli, SPIN, out, "--interruptible")
    pol = policy_mod.defaults()
    policy_mod.override(pol, "limits.timeout", "300ms")
    box = Sandbox(out, pol)
    assert box.cache_state == "artifact"
    with pytest.raises(errors.TimeoutExceeded):
        box.call("spin")


def test_batch_refuses_it(cli, isolated):
    source = isolated / "add.wat"
    source.write_text(ADD)
    out = isolated / "add.cwasm"
    compile_to(cli, source, out)
    result = cli("run", out, "add", "--batch", "-", input=b"[1, 2]\n")
    assert result.code == 102 and "--interruptible" in result.stderr, result
    assert cli("run", out, "add", "1", "2").stdout == "3\n"  # (where run alone loads it)


def test_a_command_line_without_the_hard_stop_refuses_it(spin_art):
    """``wasmsbx.cli.main`` called from Python installs no hard stop."""
    result = run_main("run", spin_art, "spin", "--timeout", "1s")
    assert result.code == 102 and "without epoch checks" in result.stderr, result


def test_a_header_that_claims_epochs_cannot_smuggle_code_without_them(cli, isolated):
    """Retagged with the user's own key (only they can), an artifact whose header says
    "epoch": true over code built without: wasmtime refuses the code for an engine with
    epochs, so the library never runs it unstoppable."""
    out = isolated / "spin.cwasm"
    compile_to(cli, SPIN, out)
    data = out.read_bytes()
    parts = aot.layout(data)
    header = aot.read_header(data)
    header["fingerprint"]["epoch"] = True
    forged = aot.pack(
        "artifact",
        header["fingerprint"],
        bytes(data[parts.header_end : parts.signed_end]),
        header["module"]["sha256"],
        header["module"]["size"],
        header["module"]["name"],
        tuple(header["module"]["features"]),
        header["module"]["exports"],
        key=trust.tag_key("artifact", create=True),
    )
    assert aot.read_header(forged)["fingerprint"]["epoch"] is True
    with pytest.raises(errors.ModuleError, match="cannot load precompiled code"):
        Sandbox(forged, policy_mod.defaults())


def test_a_large_module_compiles_in_process_under_the_hard_stop(cli, isolated):
    """The command line compiles -o in its own process now (no worker): the compile is
    still bounded by limits.compile_timeout (exit 117: the hard stop, or the check when
    it returns), and nothing is written."""
    funcs = "".join(
        f'(func (export "f{i}") (param i32) (result i32) local.get 0 '
        + "i32.const 3 i32.mul i32.const 7 i32.add " * 200
        + ")"
        for i in range(400)
    )
    source = isolated / "big.wat"
    source.write_text(f"(module {funcs})")
    (isolated / "sandbox.toml").write_text('[limits]\ncompile_timeout = "1ms"\n')
    out = isolated / "big.cwasm"
    started = time.monotonic()
    result = cli("compile", source, "-o", out, "--policy", isolated / "sandbox.toml")
    assert result.code == 117, result
    assert "compile_timeout" in result.stderr and not out.exists()
    assert time.monotonic() - started < STOPPED_WITHIN


@pytest.mark.parametrize("how", ["hard stop", "epoch", "success"])
def test_the_run_path_does_not_leave_a_stdin_module_behind(cli, isolated, spin_art, how):
    """``run -`` keeps the module read from stdin in a private folder; it must go however
    the run ends: the hard stop and the console script both leave with os._exit (no
    atexit; red team round 28 found it left behind on every run but the hard stop's)."""
    import os

    module, want = spin_art, 112
    if how != "hard stop":
        module = isolated / "spin2.cwasm"
        compile_to(cli, SPIN, module, "--interruptible")
    argv = ["run", "-", "spin", "--timeout", "1s"]
    if how == "success":
        source = isolated / "add.wat"
        source.write_text(ADD)
        module, argv, want = source, ["run", "-", "add", "1", "2"], 0
    tmp = isolated / "tmp"  # (its own TMPDIR: other tests' runs come and go in /tmp)
    tmp.mkdir()
    with open(module, "rb") as stdin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wasmsbx", *argv],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "TMPDIR": str(tmp)},
        )
        code, err, _ = finish(proc, time.monotonic())
    assert code == want, err
    assert not [n for n in os.listdir(tmp) if n.startswith("wasmsbx-stdin-")]


def script(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (what installs handlers or ends its process)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=STOPPED_WITHIN + 60
    )


def test_the_hard_stop_ends_the_process_when_no_thread_can_start(spin_art):
    """Red team round 28: a guest that filled the address space (under ulimit -v) left no
    room for the threads the hard stop writes from; their RuntimeError killed the deadline
    thread, and the guest spun on, deaf to SIGTERM. Thread.start fails here on purpose."""
    proc = script(
        "import sys, threading\n"
        'def refuse(self): raise RuntimeError("can\'t start new thread")\n'
        "from wasmsbx.cli import main\n"
        "from wasmsbx.backends.deadline import KEEPER\n"
        "KEEPER.leave(KEEPER.enter(None, 60, None))  # (the keeper's thread starts first)\n"
        "threading.Thread.start = refuse\n"
        f"main(['run', {str(spin_art)!r}, 'spin', '--timeout', '1s'], guard=True)\n"
        "print('not stopped')\n"
    )
    assert proc.returncode == 112, proc
    assert "timeout: spin still running" in proc.stderr and "not stopped" not in proc.stdout


def test_a_failing_hard_stop_still_ends_the_process(spin_art):
    """Whatever the installed hard stop does, the keeper leaves with the error's code."""
    proc = script(
        "from wasmsbx.cli import main\n"
        "import wasmsbx.cli as cli\n"
        "from wasmsbx.backends.deadline import KEEPER\n"
        "def broken(error): raise MemoryError\n"
        "real = KEEPER.install_cli\n"
        "KEEPER.install_cli = lambda stop: real(broken)\n"
        f"main(['run', {str(spin_art)!r}, 'spin', '--timeout', '1s'], guard=True)\n"
        "print('not stopped')\n"
    )
    assert proc.returncode == 112 and "not stopped" not in proc.stdout, proc


def test_leave_to_load_it_ends_with_the_run(cli, isolated, spin_art):
    """Red team round 28: the leave was a process-wide flag set by any `run` once a hard
    stop existed and never taken back, so a library sandbox made after (or beside) a
    `main(["run", ...])` loaded such code, and its timeout ended the host process."""
    source = isolated / "add.wat"
    source.write_text(ADD)
    add = isolated / "add.cwasm"
    compile_to(cli, source, add)
    proc = script(
        "from wasmsbx.cli import main\n"
        "from wasmsbx import Sandbox, errors, policy\n"
        f"assert main(['compile', {str(source)!r}, '-o', {str(isolated / 'x.cwasm')!r}],"
        " guard=True) == 0\n"
        f"print('unguarded run', main(['run', {str(add)!r}, 'add', '1', '2']))\n"
        f"print('guarded run', main(['run', {str(add)!r}, 'add', '1', '2'], guard=True))\n"
        "try:\n"
        f"    Sandbox({str(spin_art)!r}, policy.defaults())\n"
        "    print('loaded')\n"
        "except errors.ModuleError as exc:\n"
        "    print('refused', exc.message)\n"
    )
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert "unguarded run 102" in lines and "guarded run 0" in lines, proc
    assert lines[-1].startswith("refused") and "without epoch checks" in lines[-1]


def test_a_refused_artifact_never_leaves_code_without_epochs_in_the_cache(cli, isolated):
    """Refused after its engine was chosen (built from another module), the artifact's
    module is compiled with the policy's engine, epochs and all, and that is cached."""
    out = isolated / "spin.cwasm"
    compile_to(cli, SPIN, out)
    other = isolated / "add.wat"
    other.write_text(ADD)
    (isolated / "sandbox.toml").write_text('[runtime]\ncache_min_size = "0"\n')
    result = cli("run", other, "add", "2", "3", "--artifact", out, "--policy",
                 isolated / "sandbox.toml")  # fmt: skip
    assert result.code == 0 and result.stdout == "5\n", result
    assert "precompiled from a different module" in result.stderr
    listed = json.loads(cli("cache", "list", "--json").stdout)["entries"]
    assert listed, "the module was cached"
    from wasmsbx.native import entry

    headers = []
    for path in (isolated.parent / "cache").rglob("*"):
        data = path.read_bytes() if path.is_file() else b""
        if len(data) > entry.TRAILER and data[-entry.TRAILER :][8:16] == entry.MAGIC:
            size = entry.FOOTER.unpack_from(data[-entry.TRAILER :], 0)[0]
            header = json.loads(data[-entry.TRAILER - size : -entry.TRAILER])
            headers.append(header["fingerprint"])
    assert headers and all(fp.get("epoch") is True for fp in headers), headers


def test_json_after_the_double_dash_is_the_guests(cli, isolated):
    """The hard stop wrote its error as JSON when ``--json`` was a word for the guest."""
    source = isolated / "cmd.wat"
    source.write_text(
        '(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'
    )
    out = isolated / "cmd.cwasm"
    compile_to(cli, source, out)
    result = cli("run", out, "--timeout", "300ms", "--", "--json")
    assert result.code == 112 and result.stdout == "", result
    assert result.stderr.startswith("error: timeout"), result


def test_the_audit_log_of_an_artifact_alone_names_its_module(cli, isolated, spin_art):
    log = isolated / "audit.jsonl"
    result = cli("run", spin_art, "spin", "--timeout", "300ms", "--audit-log", log)
    assert result.code == 112, result
    events = [json.loads(line) for line in log.read_text().splitlines()]
    sandbox = next(e for e in events if e["event"] == "sandbox")
    header = aot.read_header(spin_art.read_bytes())["module"]
    assert (sandbox["sha256"], sandbox["size"]) == (header["sha256"], header["size"])
    assert events[-1]["event"] == "exit" and events[-1]["exit_code"] == 112


def test_under_a_memory_limit_the_compile_goes_to_a_worker(monkeypatch):
    """Red team round 28: out of memory (ulimit -v), the compiler aborts its process; in
    process that was the command line itself (exit 134, a Rust backtrace), where the
    worker's crash is an error (exit 102)."""
    import resource

    from wasmsbx.backends import get
    from wasmsbx.backends.compiling import hard_stopped
    from wasmsbx.backends.deadline import KEEPER

    monkeypatch.setattr(KEEPER, "hard_stop", lambda error: None)
    adapter = get("wasmtime")
    assert hard_stopped(adapter.name)
    real = resource.getrlimit

    def limited(which):
        if which == resource.RLIMIT_AS:
            return (1 << 30, resource.RLIM_INFINITY)
        return real(which)

    monkeypatch.setattr(resource, "getrlimit", limited)
    assert not hard_stopped(adapter.name)
