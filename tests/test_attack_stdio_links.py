"""A guest's stdio file inside a folder the guest can write (red-team).

The policy's stdio paths are checked once, but each new instance opens them again: in
a batch, after a trap, with `--fresh`, or for each instance from Python. On 2827bd9 a
discovered policy with `read_write = ["out::/o"]` and `stdout = "out/log.txt"` (both
inside its folder, so allowed) let the guest's first item replace `log.txt` with a link
to `../../victim` (WASI creates relative links) and trap; the next instance opened the
link and the guest's output replaced the victim, a file outside the project (it could
have been ~/.bashrc). A stdin there could be swapped for a link to a private key the
same way. So no stdio file may lie in, or be reached through, a folder the guest can
write."""

from __future__ import annotations

import os

import pytest

EXPLOIT = """(module
  (import "wasi_snapshot_preview1" "path_unlink_file"
    (func $unlink (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_symlink"
    (func $symlink (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\\2c\\01\\00\\00\\0b\\00\\00\\00")
  (data (i32.const 100) "log.txt")
  (data (i32.const 200) "../../victim.txt")
  (data (i32.const 300) "echo PWNED\\0a")
  (func (export "f") (param i32) (result i32)
    (if (i32.eq (local.get 0) (i32.const 1))
      (then
        (drop (call $unlink (i32.const 3) (i32.const 100) (i32.const 7)))
        (drop (call $symlink (i32.const 200) (i32.const 16) (i32.const 3) (i32.const 100)
          (i32.const 7)))
        unreachable))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 48)))
    (i32.const 0)))
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "victim.txt").write_text("original\n")
    root = tmp_path / "project"
    (root / "out").mkdir(parents=True)
    (root / "tool.wat").write_text(EXPLOIT)
    (root / "items.jsonl").write_text("[1]\n[2]\n")
    return root


@pytest.mark.parametrize("named", [False, True])
def test_a_guest_cannot_redirect_its_stdout_through_a_link_it_made(cli, project, named):
    (project / "sandbox.toml").write_text(
        '[filesystem]\nread_write = ["out::/o"]\n[stdio]\nstdout = "out/log.txt"\n'
    )
    flags = ["--policy", "sandbox.toml"] if named else []
    result = cli("run", "tool.wat", "f", "--batch", "items.jsonl", *flags, cwd=project)
    assert result.code == 101, result
    # (found, the policy may not grant read-write at all: see test_attack_discovered_vcs)
    assert ("stdio.stdout" in result.stderr) == named, result
    assert "filesystem.read_write" in result.stderr
    assert (project.parent / "victim.txt").read_text() == "original\n"
    assert not (project / "out" / "log.txt").is_symlink()


def test_a_path_reaching_the_grant_through_a_link_counts(cli, project):
    (project / "via").symlink_to("out")
    (project / "sandbox.toml").write_text(
        '[filesystem]\nread_write = ["out::/o"]\n[stdio]\nstdout = "via/log.txt"\n'
    )
    result = cli("run", "tool.wat", "f", "2", "--policy", "sandbox.toml", cwd=project)
    assert result.code == 101 and "stdio.stdout" in result.stderr, result


def test_a_stdin_in_a_writable_grant_is_refused(cli, project):
    (project / "out" / "in.txt").write_text("x")
    (project / "sandbox.toml").write_text(
        '[filesystem]\nread_write = ["out::/o"]\n[stdio]\nstdin = "out/in.txt"\n'
    )
    result = cli("run", "tool.wat", "f", "2", "--policy", "sandbox.toml", cwd=project)
    assert result.code == 101 and "stdio.stdin" in result.stderr, result


def test_stdio_beside_the_grant_or_in_a_read_only_one_is_fine(cli, project):
    (project / "ro").mkdir()
    (project / "sandbox.toml").write_text(
        '[filesystem]\nread_write = ["out::/o"]\nread_only = ["ro::/r"]\n'
        '[stdio]\nstdout = "log.txt"\nstderr = "ro/err.txt"\n'
    )
    result = cli(
        "run", "tool.wat", "f", "--batch", "items.jsonl", "--policy", "sandbox.toml", cwd=project
    )
    assert result.code == 122, result  # item 1 traps; no refusal
    assert (project.parent / "victim.txt").read_text() == "original\n"
    assert "PWNED" in (project / "log.txt").read_text()


def test_a_dir_flag_counts_too(cli, project):
    (project / "sandbox.toml").write_text('[stdio]\nstdout = "out/log.txt"\n')
    result = cli("run", "tool.wat", "f", "2", "--dir", "out::/o", cwd=project)
    assert result.code == 101 and "stdio.stdout" in result.stderr, result


def test_a_dotdot_after_a_link_into_the_grant_counts(cli, project):
    """`a/../log.txt` with `a -> out/sub`: the kernel opens `out/log.txt` (`..` of where
    `a` leads), inside the grant. On 0b0f967 the check normalised `..` away first, saw
    `log.txt` beside the grant, and the guest's link there replaced the victim."""
    (project / "out" / "sub").mkdir()
    (project / "a").symlink_to("out/sub")
    (project / "sandbox.toml").write_text(
        '[filesystem]\nread_write = ["out::/o"]\n[stdio]\nstdout = "a/../log.txt"\n'
    )
    result = cli(
        "run", "tool.wat", "f", "--batch", "items.jsonl", "--policy", "sandbox.toml", cwd=project
    )
    assert result.code == 101, result
    assert "stdio.stdout" in result.stderr and "filesystem.read_write" in result.stderr
    assert (project.parent / "victim.txt").read_text() == "original\n"


def test_a_link_whose_target_passes_through_the_grant_counts(cli, project):
    """`via -> out/sub/../..` leads back to the project, but through `out/sub`, which
    the guest can replace with a link to anywhere before the next instance opens it."""
    (project / "out" / "sub").mkdir()
    (project / "via").symlink_to("out/sub/../..")
    (project / "sandbox.toml").write_text(
        '[filesystem]\nread_write = ["out::/o"]\n[stdio]\nstdout = "via/log.txt"\n'
    )
    result = cli("run", "tool.wat", "f", "2", "--policy", "sandbox.toml", cwd=project)
    assert result.code == 101 and "stdio.stdout" in result.stderr, result


def test_a_chdir_after_creating_a_sandbox_does_not_move_its_stdio(project, monkeypatch):
    """From Python: the stdio paths are checked when the Sandbox is made; a relative one
    used to be opened again, relative to whatever folder the program had moved to, by
    each new instance (here: into the granted folder, where the guest's link waited)."""
    from wasmsbx import errors
    from wasmsbx import policy as policy_mod
    from wasmsbx.runner import Sandbox

    monkeypatch.chdir(project)
    policy = policy_mod.from_dict(
        {"filesystem": {"read_write": ["out::/o"]}, "stdio": {"stdout": "log.txt"}},
        base=project,
    )
    box = Sandbox(str(project / "tool.wat"), policy)
    monkeypatch.chdir(project / "out")  # "log.txt" here is in the grant
    with pytest.raises(errors.TrapError):
        box.call("f", 1)  # replaces /o/log.txt with a link to the victim
    box.close()
    assert box.call("f", 2) == 0  # a new instance opens its stdout again
    box.close()
    assert (project.parent / "victim.txt").read_text() == "original\n"
    assert "PWNED" in (project / "log.txt").read_text()


def test_a_bind_mount_of_the_grant_is_the_grant(cli, project):
    """A granted folder seen at another path (a bind mount: `view` shows `out`) is the
    same folder; on 0b0f967 `stdout = "view/log.txt"` passed the check by its path.
    Run in a private mount namespace (unshare), skipped where there is none."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    (project / "view").mkdir()
    (project / "p.toml").write_text(
        '[filesystem]\nread_write = ["out::/o"]\n[stdio]\nstdout = "view/log.txt"\n'
    )
    script = (
        f"mount --bind out view && exec {sys.executable} -m wasmsbx run tool.wat f 2 "
        "--policy p.toml"
    )
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no private mount namespaces here")
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 101, result
    assert "stdio.stdout" in result.stderr and "filesystem.read_write" in result.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.any_compiler
def test_a_stdin_file_swapped_for_a_link_into_proc_is_refused(cli, tmp_path, backend):
    """The grant swap of red team round 82, for stdin: a file named as the guest's stdin,
    in a folder a guest of another run can write, replaced by a link to
    /proc/self/environ, gave the guest this process's environment. Refused (101); a
    file of /proc named as such is the user's to give."""
    from .conftest import GUESTS

    probe = GUESTS / "fsprobe.wasm"
    (tmp_path / "in.txt").symlink_to("/proc/self/environ")
    policy = tmp_path / "p.toml"
    policy.write_text(f'[stdio]\nstdin = "{tmp_path / "in.txt"}"\n')
    run = ("run", probe, "--backend", backend, "--policy", policy, "--", "cat-stdin")
    res = cli(*run, env={"SECRET_X": "s3cr3t"})
    assert res.code == 101 and "leads into the process file system" in res.stderr, res
    assert "s3cr3t" not in res.stdout
    # (named through /proc, the walk leaving it on the way: red team round 85)
    policy.write_text('[stdio]\nstdin = "/proc/self/cwd/in.txt"\n')
    res = cli(*run, env={"SECRET_X": "s3cr3t"}, cwd=tmp_path)
    assert res.code == 101 and "leads into the process file system" in res.stderr, res
    assert "s3cr3t" not in res.stdout
    policy.write_text('[stdio]\nstdin = "/proc/self/cmdline"\n')
    res = cli(*run)
    assert res.code == 0 and "cat-stdin" in res.stdout, res


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.any_compiler
def test_a_stdin_file_leading_into_the_trust_folder_is_refused(cli, tmp_path, backend):
    """Red team round 84: a guest of another run, granted the folder of a file a policy
    names as stdin, replaced it by a relative link to ../trust/secret.key, and the next
    run's guest read the key on its stdin (both backends)."""
    from wasmsbx.native import trust

    from .conftest import GUESTS

    trust.secret(create=True)
    key = trust.trust_dir() / "secret.key"
    (tmp_path / "in.txt").symlink_to(os.path.relpath(key, tmp_path))
    policy = tmp_path / "p.toml"
    policy.write_text(f'[stdio]\nstdin = "{tmp_path / "in.txt"}"\n')
    res = cli(
        "run", GUESTS / "fsprobe.wasm", "--backend", backend, "--policy", policy, "--", "cat-stdin"
    )
    assert res.code == 101 and "is in the trust folder" in res.stderr, res
    assert key.read_bytes().hex() not in res.stdout.encode().hex()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.any_compiler
def test_a_fifo_on_stdin_is_opened_once(cli, tmp_path, backend):
    """Red team round 84: the stdin check opened a FIFO, and wasmtime (or wasmer's child)
    opened it again: a writer done between the two opens was missed, and the run waited
    for another until its timeout (112); wasmer's check threw the writer's bytes away."""
    import threading

    from .conftest import GUESTS

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    policy = tmp_path / "p.toml"
    policy.write_text(f'[stdio]\nstdin = "{fifo}"\n[limits]\ntimeout = "60s"\n')

    def write() -> None:
        with open(fifo, "w") as fh:  # (blocks until the run opens it for reading)
            fh.write("hi-from-fifo\n")

    for _ in range(4):  # (the second open missed the writer in 6 runs of 8: each round)
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        run = ("run", GUESTS / "fsprobe.wasm", "--backend", backend, "--policy", policy)
        res = cli(*run, "--", "cat-stdin")
        writer.join(5)
        assert res.code == 0 and res.stdout == "hi-from-fifo\n", res


def test_the_identity_of_a_path_changing_as_it_is_read_is_not_an_internal_error(
    tmp_path, monkeypatch
):
    """Red team round 87: a stdin path flipping between a file and a dangling link made
    realpath raise in the check that runs' outputs are not their inputs (exit 100)."""
    from wasmsbx.cli import crossed

    def racing(path, *args, **kwargs):
        raise OSError(22, "Invalid argument", path)

    missing = tmp_path / "gone" / "in.txt"
    monkeypatch.setattr(os.path, "realpath", racing)
    assert crossed._identity(str(missing)) == ("new", str(missing))


def test_a_socket_as_the_guests_stdin_is_an_input_error_on_every_backend(cli, isolated, backend):
    """Red team 130: on wasmer the worker's open of a socket raised, and the run said
    "the wasmer worker process died ... this is a wasmer crash" (exit 103). Both
    backends say they cannot set up the guest's stdio: exit 105."""
    import socket

    from .conftest import EXAMPLES

    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(isolated / "sock"))
        (isolated / "p.toml").write_text('[stdio]\nstdin = "sock"\n')
        result = cli("run", EXAMPLES / "wasi" / "hello.wasm", "--policy", "p.toml",
                     "--backend", backend)  # fmt: skip
        assert result.code == 105, result
        assert "cannot set up the guest's stdio" in result.stderr, result
        assert "crash" not in result.stderr, result
    finally:
        server.close()
