"""A component's exit status and its non-blocking writes (red team round 76).

F1: ``wasi:cli/exit#exit-with-code(N)`` went through raw: exit 130 posed as Ctrl-C, 112 as
a timeout, 255 was 255, with no warning. A component's status is now folded as a
module's ``proc_exit`` is (README, Exit codes): 0..125 as is, anything else 126, and
100..126 with a ``warning:`` line.

F2: ``[method]output-stream.write`` (no flush) only queued the bytes for a task that
wasmtime ran after the call had returned: ``wasmsbx run`` printed nothing, the limit was
judged before they were counted (exit 0 past ``limits.output``). Every byte a guest
writes in a call is now passed on, or refused, before the call's result.
"""

from __future__ import annotations

import pytest

from wasmsbx import errors
from wasmsbx import policy as policy_mod

from .component_guests import HERE

WRITES = HERE / "writes.wat"
EXIT_WAT = """(component
  (import "wasi:cli/exit@{version}" (instance $exit
    (export "exit-with-code" (func (param "status-code" u8)))))
  (core func $exit (canon lower (func $exit "exit-with-code")))
  (core module $m
    (import "" "exit" (func $exit (param i32)))
    (func (export "run") (result i32) (call $exit (i32.const {status})) (i32.const 0)))
  (core instance $i (instantiate $m (with "" (instance (export "exit" (func $exit))))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $run (export "run" (func $run)))
  (export "wasi:cli/run@{version}" (instance $run)))
"""
# (status, exit code, what the warning says): as tests/test_guest_exit.py for modules
CASES = [
    (0, 0, None),
    (3, 3, None),
    (100, 100, "guest's own status"),
    (112, 112, "guest's own status"),  # not taken for a timeout
    (125, 125, "guest's own status"),
    (126, 126, "status 126, outside 0..125"),
    (130, 126, "status 130, outside 0..125"),  # not taken for Ctrl-C
    (255, 126, "status 255, outside 0..125"),
]


@pytest.fixture
def exiting(tmp_path):
    def make(status: int, version: str = "0.2.0"):
        path = tmp_path / f"exit{status}-{version}.wat"
        path.write_text(EXIT_WAT.format(status=status, version=version))
        return path

    return make


def policy(tmp_path, text: str):
    path = tmp_path / "sandbox.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ F1: exit statuses


@pytest.mark.parametrize("status, code, said", CASES)
def test_exit_with_code_is_folded_as_a_modules_status(cli, exiting, status, code, said):
    res = cli("run", exiting(status))
    assert res.code == code, res
    assert "Traceback" not in res.stderr and "error:" not in res.stderr
    if said is None:
        assert res.stderr == "", res
    else:
        assert res.stderr.startswith("warning:") and said in res.stderr, res


@pytest.mark.parametrize("version", ["0.2.0", "0.2.6"])
def test_exit_with_code_in_json(cli, exiting, version):
    data = cli("run", exiting(130, version), "--json").json()
    assert (data["exit_code"], data["guest_status"], data["exit_source"]) == (126, 130, "guest")


def test_exit_with_code_through_the_api(exiting):
    from wasmsbx import Sandbox

    with Sandbox(exiting(255)) as box:
        result = box.run_command()
    assert (result.exit_code, result.guest_status) == (126, 255)
    with Sandbox(exiting(7)) as box:
        result = box.run_command()
    assert (result.exit_code, result.guest_status) == (7, 7)


# ------------------------------------------------------------------ F2: non-blocking writes


def test_a_commands_unflushed_writes_reach_stdout(cli):
    res = cli("run", WRITES)
    assert res.code == 0, res
    assert res.stdout_bytes == b"A" * 1200  # (the wasmtime CLI prints the same)


def test_a_commands_unflushed_writes_are_captured_every_time():
    from wasmsbx import Sandbox

    with Sandbox(WRITES) as box:
        got = [box.run_command([], capture=True).stdout for _ in range(3)]
    assert got == [b"A" * 1200] * 3  # (was 0, 0, then 1200 bytes)


def test_a_calls_writes_are_out_before_it_returns(tmp_path):
    """Written to the stdout file by the time the call's result comes, each call's own:
    nothing of one call is left to be counted in the next."""
    from wasmsbx import Sandbox

    out = tmp_path / "out.txt"
    values = {"stdio": {"stdout": str(out)}, "limits": {"output": 1000}}
    with Sandbox(WRITES, policy_mod.from_dict(values)) as box:
        assert box.call("go", 1, 600) == 0
        assert out.read_bytes() == b"A" * 600
        with pytest.raises(errors.OutputLimitExceeded):  # this call's own write
            box.call("go", 1, 600)
    assert out.read_bytes() == b"A" * 600  # nothing past the limit


def test_unflushed_writes_past_the_limit_are_115(cli, tmp_path):
    res = cli("run", WRITES, "--policy", policy(tmp_path, "[limits]\noutput = 1000\n"))
    assert res.code == 115 and "output limit" in res.stderr, res
    assert set(res.stdout_bytes) <= {ord("A")} and len(res.stdout_bytes) <= 1000


def test_unflushed_writes_past_the_limit_in_a_call_are_115(cli, tmp_path):
    tight = policy(tmp_path, "[limits]\noutput = 1000\n")
    res = cli("run", WRITES, "go", "2", "600", "--policy", tight)
    assert res.code == 115 and "output limit" in res.stderr, res
    assert len(res.stdout_bytes) <= 1000


def test_unflushed_writes_past_the_limit_through_the_api(tmp_path):
    from wasmsbx import Sandbox

    tight = policy_mod.from_dict({"limits": {"output": 1000}})
    with Sandbox(WRITES, tight) as box, pytest.raises(errors.OutputLimitExceeded):
        box.run_command([], capture=True)


def test_only_components_that_can_write_get_output_pipes():
    """A pipe pair and a reader thread per live instance: a component that imports
    neither wasi:cli/stdout nor stderr holds none (many components are functions)."""
    import threading

    import wasmsbx

    before = threading.active_count()
    boxes = [wasmsbx.Sandbox(HERE / "types.wat") for _ in range(20)]
    for box in boxes:
        assert box.call("add", 1, 2) == 3
    assert threading.active_count() == before
    assert all(box._instance.pipes is None for box in boxes)
    writer = wasmsbx.Sandbox(WRITES)
    writer.call("go", 1, 3)
    assert writer._instance.pipes is not None


def test_out_of_descriptors_for_the_pipes_is_resource_exhausted():
    import subprocess
    import sys

    code = (
        "import resource, wasmsbx\n"
        "from wasmsbx import errors\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))\n"
        "boxes = []\n"
        "try:\n"
        "    for _ in range(100):\n"
        f"        boxes.append(wasmsbx.Sandbox({str(WRITES)!r}))\n"
        "        boxes[-1].call('go', 1, 1)\n"
        "except errors.ResourceExhausted as exc:\n"
        "    ok = str(exc).startswith('out of file descriptors')\n"
        "    print('', exc.exit_code, ok, bool(exc.hint), sep='\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert done.stdout.split()[-3:] == [b"118", b"True", b"True"], done.stderr[-2000:]


def test_a_forked_child_cannot_use_its_parents_output_pipes():
    """A component instance made before os.fork() shares its output pipes with the
    parent, whose reader thread read what the child's guest wrote: counted against the
    parent's limit, printed as the parent's, the child's own limit bypassed (red team
    round 80). The child is refused (as a wasmer instance is there); the parent goes on."""
    import os
    import subprocess
    import sys

    code = f"""
import os, wasmsbx
from wasmsbx import errors, policy
box = wasmsbx.Sandbox({str(WRITES)!r}, policy.from_dict({{"limits": {{"output": 100000}}}}))
box.call("go", 1, 10)
pid = os.fork()
if pid == 0:
    try:
        box.call("go", 3, 60000)
        os.write(2, b"child: ran\\n")
    except errors.UsageError as exc:
        os.write(2, ("child: " + str(exc) + "\\n").encode())
    os._exit(0)
os.waitpid(pid, 0)
os.write(2, ("parent: " + str(box.call("go", 1, 10)) + "\\n").encode())
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=300, env=dict(os.environ)
    )
    err = done.stderr.decode()
    assert done.returncode == 0, err[-2000:]
    assert "child: cannot run go: this component's output goes through pipes its parent" in err
    assert "parent: 0" in err
    assert len(done.stdout) == 20, len(done.stdout)  # the parent's two writes of 10, no more


def test_a_forked_child_is_refused_even_while_a_parent_thread_was_in_a_call():
    """At the fork another thread was in a call on the instance: its turn is held for
    good in the child, whose call waited the timeout out (112) before the fork's
    refusal was reached (red team round 81). The refusal comes first."""
    import os
    import subprocess
    import sys

    code = f"""
import os, threading, time, wasmsbx
from wasmsbx import errors, policy
limits = {{"limits": {{"output": "1GiB", "timeout": "5s"}}, "stdio": {{"stdout": "null"}}}}
box = wasmsbx.Sandbox({str(WRITES)!r}, policy.from_dict(limits))
box.call("go", 1, 10)
def busy():
    for _ in range(20):
        box.call("go", 20000, 4000)
threading.Thread(target=busy, daemon=True).start()
time.sleep(0.3)
pid = os.fork()
if pid == 0:
    try:
        box.call("go", 1, 10)
        os.write(2, b"child: ran\\n")
    except errors.WasmsbxError as exc:
        os.write(2, ("child: " + type(exc).__name__ + "\\n").encode())
    os._exit(0)
os.waitpid(pid, 0)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=300, env=dict(os.environ)
    )
    assert b"child: UsageError" in done.stderr, done.stderr[-2000:]


def test_writes_past_the_limit_then_a_trap_are_115(cli, tmp_path):
    """Red team 156: past the limit, then a trap before the stop landed: 115 plain,
    103 with --json (the limit came first)."""
    text = WRITES.read_text().replace(
        "(drop (call $go (i32.const 2) (i32.const 600)))",
        "(drop (call $go (i32.const 2) (i32.const 600))) unreachable",
    )
    assert "unreachable" in text
    (tmp_path / "trap.wat").write_text(text)
    tight = policy(tmp_path, "[limits]\noutput = 50\n")
    for json_flag in ([], ["--json"]):
        res = cli("run", tmp_path / "trap.wat", "--policy", tight, *json_flag)
        assert res.code == 115, (json_flag, res)
