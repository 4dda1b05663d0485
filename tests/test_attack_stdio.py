"""Red-team regressions: the policy's stdio paths. A discovered sandbox.toml is untrusted,
so `stdio.stdout = "tool.wasm"` must not turn the guest's output into a clobberer of the
module or the policy; odd paths are errors with exit 105, never an internal error; a
FIFO never hangs the run past its deadline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import EXAMPLES

# The host side (stdio, WASI exit): the same for wasmer's three compilers.
pytestmark = pytest.mark.any_compiler

HELLO = EXAMPLES / "wasi" / "hello.wasm"
# Reads stdin for ever (a guest blocked in fd_read once stdin stalls).
READER = """(module
 (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
 (memory (export "memory") 1)
 (func (export "_start")
  (i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) (i32.const 1000))
  (loop $l (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l))))"""


def _policy(work, **stdio) -> None:
    lines = "".join(f'{key} = "{value}"\n' for key, value in stdio.items())
    (work / "sandbox.toml").write_text("[stdio]\n" + lines)


def test_stdout_onto_the_module_or_the_policy_is_refused(cli, isolated, backend):
    module = isolated / "hello.wasm"
    shutil.copy(HELLO, module)
    for target in ("hello.wasm", "sandbox.toml"):
        _policy(isolated, stdout=target)
        before = (module.read_bytes(), (isolated / "sandbox.toml").read_bytes())
        res = cli("run", "hello.wasm", "--backend", backend)
        assert res.code == 105, res
        # (cli/crossed.py, before the sandbox is made; check_stdio says it as for -o)
        assert "would write into what it reads" in res.stderr, res
        assert (module.read_bytes(), (isolated / "sandbox.toml").read_bytes()) == before


def test_stdout_through_a_link_to_nothing_is_refused(cli, isolated, backend):
    os.symlink(isolated / "planted", isolated / "out")
    _policy(isolated, stderr="out")
    res = cli("run", HELLO, "--backend", backend)  # found: refused as it is read
    assert res.code == 101 and "a symbolic link to nothing" in res.stderr, res
    assert not (isolated / "planted").exists()
    res = cli("run", HELLO, "--backend", backend, "--policy", isolated / "sandbox.toml")
    assert res.code == 105 and "symbolic link to a missing file" in res.stderr, res
    assert not (isolated / "planted").exists()


@pytest.mark.parametrize("target", ["/", "nodir/out.txt", "/proc/self/status"])
def test_odd_stdout_paths_are_not_internal_errors(cli, isolated, backend, target):
    _policy(isolated, stdout=target)  # given explicitly: trusted as it is
    res = cli("run", HELLO, "--backend", backend, "--policy", isolated / "sandbox.toml")
    assert res.code in (0, 105), res  # /proc/self/status opens; each write fails in the guest
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr


def test_a_fifo_nobody_reads_as_stdout_is_an_error_at_once(cli, isolated, backend):
    os.mkfifo(isolated / "ff")
    _policy(isolated, stdout="ff")
    res = cli("run", HELLO, "--backend", backend, timeout=60)
    assert res.code == 105 and "a FIFO nobody reads" in res.stderr, res


@pytest.mark.parametrize("target", ["missing.txt", "/"])
def test_an_unreadable_stdin_is_an_input_error(cli, isolated, backend, target):
    (isolated / "reader.wat").write_text(READER)
    _policy(isolated, stdin=target)  # given explicitly: "/" is outside the project
    res = cli("run", "reader.wat", "--backend", backend, "--policy", isolated / "sandbox.toml")
    assert res.code == 105 and "stdio.stdin" in res.stderr, res


def test_a_fifo_stdin_ends_at_the_deadline(cli, isolated, backend):
    """wasmtime opens a stdin path itself, and a FIFO's open waits for a writer: the run
    hung past --timeout (wasmer's child process was killed on time)."""
    (isolated / "reader.wat").write_text(READER)
    os.mkfifo(isolated / "ff")
    _policy(isolated, stdin="ff")
    started = time.monotonic()
    res = cli("run", "reader.wat", "--backend", backend, "--timeout", "1s", timeout=90)
    assert res.code == 112, res
    assert time.monotonic() - started < 60  # generous: it stopped at all


def test_errors_into_a_closed_stderr_keep_their_exit_code(isolated):
    """`wasmsbx run missing.wasm 2>&1 | head -1`: a write of the error to a pipe whose
    reader had gone raised BrokenPipeError, which made the exit code 1 (not in the
    README table)."""
    read, write = os.pipe()
    os.close(read)  # every write to stderr now fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "wasmsbx", "run", "missing.wasm"],
            stdout=subprocess.DEVNULL,
            stderr=write,
            timeout=120,
        )
    finally:
        os.close(write)
    assert proc.returncode == 105


def test_a_found_policys_tilde_stdout_is_the_home_folder_it_was_checked_as(cli, isolated, backend):
    """Red team round 98: confine checked ``stdout = "~/proj/.bashrc"`` with ``~``
    expanded (inside the project, at $HOME/proj), while the run opened it as written:
    the folder ``~`` of the working folder, which the project shipped holding a link
    ``proj -> ../..``. The guest's output replaced $HOME/.bashrc, exit 0. A stdio path's
    ``~`` is now expanded when the policy is read, as a grant's and the cache folder's."""
    home = isolated / "home"
    project = home / "proj"
    (project / "~").mkdir(parents=True)
    os.symlink("../..", project / "~" / "proj")
    (home / ".bashrc").write_text("original\n")
    shutil.copy(HELLO, project / "hello.wasm")
    _policy(project, stdout="~/proj/.bashrc")
    res = cli("run", "hello.wasm", "--backend", backend, cwd=project, env={"HOME": str(home)})
    assert (home / ".bashrc").read_text() == "original\n", res
    assert res.code == 0 and (project / ".bashrc").read_bytes().startswith(b"hello from"), res
    # the same trick aimed outside the project is refused, as ~/.bashrc itself is
    for target in ("~/.bashrc", "~/proj/~/proj/../.bashrc"):
        _policy(project, stdout=target)
        res = cli("run", "hello.wasm", "--backend", backend, cwd=project, env={"HOME": str(home)})
        assert res.code == 101 and "outside the folder" in res.stderr, (target, res)
        assert (home / ".bashrc").read_text() == "original\n"


def test_a_tilde_stdio_path_means_the_home_folder(isolated, monkeypatch):
    from wasmsbx import policy as policy_mod

    monkeypatch.setenv("HOME", str(isolated))
    policy = policy_mod.from_dict({"stdio": {"stdout": "~/out.txt", "stdin": "in.txt"}})
    assert policy.values["stdio.stdout"] == str(isolated / "out.txt")
    assert policy.values["stdio.stdin"] == "in.txt"  # (relative: pinned when the sandbox is made)
