"""Red team round 99: a policy that came with a project (found in the working folder, or
named by a bench suite) reaches only its own folder, and what its check saw is what is
opened: the stdio files and the cache folder are pinned to the paths resolved when it
was checked."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import EXAMPLES
from wasmsbx import Sandbox
from wasmsbx import policy as policy_mod

HELLO = EXAMPLES / "wasi" / "hello.wasm"


def test_a_stdout_link_through_proc_self_cwd_is_opened_where_it_was_checked(isolated, backend):
    """``stdout = "l"`` with ``l -> /proc/self/cwd/.bashrc``: resolved in the project when
    checked, it was pinned as ``<project>/l`` and opened later through the opener's own
    working folder (a host that moved to $HOME, a cluster worker started there)."""
    home, project = isolated / "home", isolated / "project"
    home.mkdir()
    project.mkdir()
    (home / ".bashrc").write_text("original\n")
    (project / ".bashrc").write_text("decoy\n")
    os.symlink("/proc/self/cwd/.bashrc", project / "l")
    (project / "sandbox.toml").write_text('[stdio]\nstdout = "l"\n')
    os.chdir(project)
    found = policy_mod.discover()
    assert found.values["stdio.stdout"] == os.path.realpath(project / ".bashrc")
    os.chdir(home)
    with Sandbox(str(HELLO), found, backend=backend, kind="command") as box:
        assert box.run_command([]).exit_code == 0
    assert (home / ".bashrc").read_text() == "original\n"
    assert (project / ".bashrc").read_text().startswith("hello from")


def test_a_link_to_nothing_is_refused_as_the_policy_is_read(cli, isolated):
    """Kept by its name, ``out -> /proc/self/cwd/.bashrc`` (nothing in the project) was
    followed again where it was opened: after a host's chdir to $HOME, its ~/.bashrc
    (red team round 100). Pinned, it would create what it names."""
    home = isolated.parent / "home"
    home.mkdir()
    (home / ".bashrc").write_text("original\n")
    os.symlink("/proc/self/cwd/.bashrc", isolated / "out")
    (isolated / "sandbox.toml").write_text('[stdio]\nstdout = "out"\n')
    res = cli("run", HELLO)
    assert res.code == 101 and "a symbolic link to nothing" in res.stderr, res
    assert not (isolated / ".bashrc").exists()
    with pytest.raises(policy_mod.PolicyError, match="a symbolic link to nothing"):
        policy_mod.discover()
    for text in ("/proc/self/cwd/out", "sub/../out"):
        (isolated / "sub").mkdir(exist_ok=True)
        (isolated / "sandbox.toml").write_text(f'[stdio]\nstdout = "{text}"\n')
        with pytest.raises(policy_mod.PolicyError, match="a symbolic link to nothing"):
            policy_mod.discover()
    assert (home / ".bashrc").read_text() == "original\n"


def test_paths_a_found_policy_names_keep_what_they_meant(cli, isolated):
    """Pinned to the resolved path, ``"x/"`` became the file ``x`` and ``""`` the folder
    itself; a blank cache folder is unset (red team round 100)."""
    (isolated / "sandbox.toml").write_text(
        '[stdio]\nstdout = "x/"\nstderr = ""\n[runtime]\ncache_dir = " "\n'
    )
    found = policy_mod.discover()
    assert found.values["stdio.stdout"] == str(isolated.resolve() / "x") + os.sep
    assert found.values["stdio.stderr"] == "" and found.values["runtime.cache_dir"] == " "
    res = cli("run", HELLO)
    assert res.code == 105 and not (isolated / "x").exists(), res


def test_a_pinned_path_moved_by_a_link_since_is_refused(isolated):
    """``stdout = "out/log"`` checked with ``out`` a folder, which then became a link
    out of the project (a git pull while ``watch`` ran: its next run wrote ~/.bashrc,
    red team round 100). Each sandbox made checks the pinned paths again."""
    away = isolated.parent / "away"
    away.mkdir()
    (isolated / "out").mkdir()
    (isolated / "sandbox.toml").write_text('[stdio]\nstdout = "out/.bashrc"\n')
    found = policy_mod.discover()
    with Sandbox(str(HELLO), found, kind="command") as box:
        assert box.run_command([]).exit_code == 0
    shutil.rmtree(isolated / "out")
    os.symlink(away, isolated / "out")
    with pytest.raises(policy_mod.PolicyError, match="now leads to"):
        Sandbox(str(HELLO), found, kind="command")
    assert not (away / ".bashrc").exists()
    with pytest.raises(policy_mod.PolicyError, match="now leads to"):  # (a copy too)
        Sandbox(str(HELLO), found.copy(), kind="command")
    policy_mod.override(found, "stdio.stdout", str(away / "mine.txt"))  # yours: as it is
    with Sandbox(str(HELLO), found, kind="command") as box:
        assert box.run_command([]).exit_code == 0
    assert (away / "mine.txt").read_text().startswith("hello from")


def test_a_linked_sandbox_toml_keeps_its_cache_folder_out_of_git(cli, isolated):
    """``sandbox.toml -> sub/p.toml``, ``sub/x -> ../.git``, ``cache_dir = "x/hooks/x"``:
    checked as ``<project>/x/hooks/x``, it was opened relative to the link's target,
    ``<project>/.git/hooks/x`` (a cache folder made in .git/hooks/pre-commit broke every
    git commit)."""
    (isolated / ".git" / "hooks").mkdir(parents=True)
    (isolated / "sub").mkdir()
    (isolated / "sub" / "p.toml").write_text(
        '[runtime]\ncache_dir = "x/hooks/pre-commit"\ncache_min_size = "0B"\n'
    )
    os.symlink("sub/p.toml", isolated / "sandbox.toml")
    os.symlink("../.git", isolated / "sub" / "x")
    shutil.copy(EXAMPLES / "add.wat", isolated / "add.wat")
    res = cli("run", "add.wat", "add", "2", "3")
    assert res.code == 0 and res.stdout.strip() == "5", res
    assert not (isolated / ".git" / "hooks" / "pre-commit").exists()
    assert (isolated / "x" / "hooks" / "pre-commit").is_dir()  # where it was checked


def test_a_bench_suites_policy_is_held_as_a_found_one(cli, isolated):
    """``[bench] policy = "sandbox.toml"`` was loaded as if given with --policy: no
    confinement, no caps. ``run`` refused the same file (101), ``bench --suite``
    wrote the guest's stdout into ~/.bashrc."""
    home = isolated.parent / "home"
    home.mkdir()
    (home / ".bashrc").write_text("original\n")
    (isolated / "sandbox.toml").write_text('[stdio]\nstdout = "~/.bashrc"\n')
    suite = isolated / "bench.toml"
    suite.write_text(
        f'[bench]\npolicy = "sandbox.toml"\niterations = 1\nwarmup = 0\n'
        f'[[bench.case]]\nmodule = "{HELLO}"\n'
    )
    env = {"HOME": str(home)}
    res = cli("bench", "--suite", suite, env=env)
    assert res.code == 101 and "outside the folder" in res.stderr, res
    assert (home / ".bashrc").read_text() == "original\n"
    # named as what it is: the suite's policy, not one found in the working folder
    assert "a policy named by the bench suite may only name" in res.stderr, res
    assert "found in the working folder" not in res.stderr, res
    # its limits are held to the defaults, and said so; --policy trusts it as it is
    (isolated / "sandbox.toml").write_text('[limits]\ntimeout = "1h"\n')
    res = cli("bench", "--suite", suite, "--json", env=env)
    assert res.code == 0 and "limits.timeout" in res.stderr, res
    assert "a policy named by the bench suite may lower limits" in res.stderr, res
    res = cli("bench", "--suite", suite, "--json", "--policy", isolated / "sandbox.toml", env=env)
    assert res.code == 0 and "limits.timeout" not in res.stderr, res


def test_a_watch_stops_running_once_a_pinned_path_has_moved(isolated):
    from wasmsbx.watch import WatchConfig, Watcher

    away = isolated.parent / "away"
    away.mkdir()
    (isolated / "out").mkdir()
    shutil.copy(HELLO, isolated / "hello.wasm")
    (isolated / "sandbox.toml").write_text('[stdio]\nstdout = "out/.bashrc"\n')
    events: list = []
    watcher = Watcher(WatchConfig(target=str(isolated / "hello.wasm")), events.append)
    try:
        watcher.run_cycle()
        assert [e.data["ok"] for e in events if e.kind == "run"] == [True]
        shutil.rmtree(isolated / "out")
        os.symlink(away, isolated / "out")
        watcher.run_cycle()
    finally:
        watcher._cleanup(False)
    last = [e.data for e in events if e.kind == "run"][-1]
    assert last["ok"] is False and last["error"]["exit_code"] == 101, last
    assert "now leads to" in last["error"]["message"]
    assert not (away / ".bashrc").exists()


def test_a_found_stdin_named_capture_is_a_path_checked_as_any(cli, isolated):
    """ "capture" is an output's word; stdin opened it as a file. Left out of the checks
    as a word, a found policy's ``stdin = "capture"`` with ``capture -> ~/secret`` fed
    the guest a file outside the project (red team round 101)."""
    home = isolated.parent / "home"
    home.mkdir()
    (home / "secret").write_text("SECRET\n")
    os.symlink(home / "secret", isolated / "capture")
    (isolated / "sandbox.toml").write_text('[stdio]\nstdin = "capture"\n')
    res = cli("run", HELLO)
    assert res.code == 101 and "stdio.stdin names capture" in res.stderr, res
    os.remove(isolated / "capture")
    (isolated / "capture").write_text("inside\n")
    found = policy_mod.discover()
    assert found.values["stdio.stdin"] == str(isolated.resolve() / "capture")
    (isolated / "sandbox.toml").write_text('[stdio]\nstdout = "capture"\n')  # a path too
    assert policy_mod.discover().values["stdio.stdout"] == str(isolated.resolve() / "capture")


def test_a_suite_policy_name_the_system_refuses_is_a_policy_error(cli, isolated):
    suite = isolated / "bench.toml"
    for name in ("x" * 300, "a\\u0000b"):
        suite.write_text(f'[bench]\npolicy = "{name}"\n[[bench.case]]\nmodule = "{HELLO}"\n')
        res = cli("bench", "--suite", suite)
        assert res.code == 101 and "cannot read policy" in res.stderr, res
