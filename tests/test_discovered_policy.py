"""A sandbox.toml found in the working folder comes with the project, not from the user: it
may name folders, stdio files and a cache folder only inside its own folder (red-team
finding: a cloned project's policy granted the guest write access outside the project,
sent its stdout into a file there and made a cache folder under ~)."""

from __future__ import annotations

import shutil

import pytest

from .conftest import EXAMPLES

HELLO = EXAMPLES / "wasi" / "hello.wasm"


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(HELLO, root / "tool.wasm")
    (root / "data").mkdir()
    return root


def write_policy(root, text):
    (root / "sandbox.toml").write_text(text)


@pytest.mark.parametrize(
    "text, key",
    [
        ('[filesystem]\nread_write = ["{outside}"]\n', "filesystem.read_write"),
        ('[filesystem]\nread_only = ["{outside}"]\n', "filesystem.read_only"),
        ('[filesystem]\nread_write = ["../victim"]\n', "filesystem.read_write"),
        ('[stdio]\nstdout = "{outside}/out.txt"\n', "stdio.stdout"),
        ('[stdio]\nstdout = "../victim/out.txt"\n', "stdio.stdout"),
        ('[stdio]\nstdin = "{outside}/secret"\n', "stdio.stdin"),
        ('[runtime]\ncache_dir = "{outside}/cache"\n', "runtime.cache_dir"),
    ],
)
def test_a_discovered_policy_cannot_name_paths_outside_its_folder(cli, project, text, key):
    outside = project.parent / "victim"
    outside.mkdir()
    (outside / "secret").write_text("s3cret")
    write_policy(project, text.format(outside=outside))
    res = cli("run", "tool.wasm", "--", "hi", cwd=project)
    assert res.code == 101, res
    assert key in res.stderr and "outside the folder of this sandbox.toml" in res.stderr
    assert "--policy" in res.stderr  # the hint says how to trust it explicitly
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]  # nothing made there


def test_a_symlink_inside_the_project_that_leads_out_is_outside(cli, project):
    outside = project.parent / "victim"
    outside.mkdir()
    (project / "link").symlink_to(outside)
    write_policy(project, '[filesystem]\nread_write = ["link"]\n')
    res = cli("run", "tool.wasm", "--", "hi", cwd=project)
    assert res.code == 101 and "filesystem.read_write" in res.stderr, res


def test_paths_inside_the_project_are_fine(cli, project):
    write_policy(project, '[filesystem]\nread_only = ["data"]\n[stdio]\nstdout = "out.txt"\n')
    res = cli("run", "tool.wasm", cwd=project)
    assert res.code == 0, res
    assert (project / "out.txt").exists()


def test_the_same_policy_given_with_policy_is_trusted_as_it_is(cli, project):
    outside = project.parent / "elsewhere"
    outside.mkdir()
    write_policy(project, f'[stdio]\nstdout = "{outside}/out.txt"\n')
    res = cli("run", "tool.wasm", "--policy", project / "sandbox.toml", cwd=project)
    assert res.code == 0, res
    assert (outside / "out.txt").exists()


def test_a_size_that_is_not_whole_bytes_is_refused(cli):
    # red-team: `--memory 1.5` was taken as 1 byte
    res = cli("run", EXAMPLES / "add.wat", "add", "1", "2", "--memory", "1.5")
    assert res.code == 2 and "not a whole number of bytes" in res.stderr, res
    assert cli("run", EXAMPLES / "add.wat", "add", "1", "2", "--memory", "1.5MiB").code == 0


GROW = '(module (memory 1) (func (export "grow") (result i32) (memory.grow (i32.const 4800))))'
HUGE = '[limits]\nmemory = "128TiB"\ntimeout = "366d"\noutput = "1TiB"\nfuel = 1000000\n'


def test_a_discovered_policy_may_lower_limits_but_not_raise_them(cli, project):
    """Red team 3: limits were taken from a discovered sandbox.toml as written, so a
    cloned project could give its guest 128 TiB of memory and a year. They are held to
    the defaults (with a warning naming the flag that raises them); lower ones stand."""
    (project / "grow.wat").write_text(GROW)  # asks for 300 MiB more
    write_policy(project, HUGE)
    res = cli("run", "grow.wat", "grow", cwd=project)
    assert res.code == 0 and res.stdout.strip() == "-1", res  # refused at 256 MiB
    assert "limits.memory" in res.stderr and "--memory" in res.stderr, res
    assert "limits.timeout" in res.stderr and "limits.output" in res.stderr, res
    shown = cli("policy", "show", "--json", cwd=project)
    limits = __import__("json").loads(shown.stdout)["policy"]["limits"]
    assert (limits["memory"], limits["timeout"], limits["output"]) == (256 << 20, 10, 64 << 20)
    assert limits["fuel"] == 1000000  # a lower limit is the project's to set
    # Raised on purpose: by the flag (no warning for it), or by trusting the file.
    res = cli("run", "grow.wat", "grow", "--memory", "1GiB", cwd=project)
    assert res.code == 0 and res.stdout.strip() == "1", res
    assert "limits.memory" not in res.stderr and "limits.timeout" in res.stderr, res
    res = cli("run", "grow.wat", "grow", "--policy", "sandbox.toml", cwd=project)
    assert res.code == 0 and res.stdout.strip() == "1" and "warning" not in res.stderr, res


def test_a_discovered_policys_stdio_files_stay_in_its_folder_from_python(
    project, tmp_path, monkeypatch
):
    """Red team 3: confine() checked `stdout = ".bashrc"` inside the project (fine), but
    the path stayed relative: `discover(cwd=project)` from a program elsewhere (or a
    chdir before the Sandbox was made) opened ./.bashrc of wherever the program was."""
    from wasmsbx import policy as policy_mod
    from wasmsbx.runner import Sandbox

    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine\n")
    write_policy(project, '[stdio]\nstdout = ".bashrc"\n')
    monkeypatch.chdir(home)
    found = policy_mod.discover(cwd=project)
    with Sandbox(str(project / "tool.wasm"), found) as box:
        box.run_command([])
    assert (home / ".bashrc").read_text() == "mine\n"
    assert "hello" in (project / ".bashrc").read_text()
