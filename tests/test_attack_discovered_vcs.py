"""A discovered sandbox.toml must not hand the guest a repository's metadata (red-team).

Confined to its own folder, it could still name `.git` inside it. Shown on 398d538: with
`stdout = ".git/config"` the guest wrote `[core] fsmonitor = "touch PWNED"` there, and the
next `git status` (which many shell prompts run on their own) ran it on the host; with
`read_write = ["."]` in a folder without `.git` the guest created one. A clone never
brings `.git/config` or hooks, so this is code execution the project could not get
otherwise. Reading is a leak too: CI checkouts keep the token in `.git/config`
(actions/checkout's `http.extraheader`), and the guest can print it into a public log.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import EXAMPLES, GUESTS

FSPROBE = GUESTS / "fsprobe.wasm"
HOOK = '[core]\n\trepositoryformatversion = 0\n\tfsmonitor = "touch PWNED; false"\n'


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    shutil.copy(FSPROBE, root / "tool.wasm")
    (root / "data").mkdir()
    return root


def run_in(cli, root, policy, *argv):
    (root / "sandbox.toml").write_text(policy)
    return cli("run", "tool.wasm", "--", *argv, cwd=root)


def assert_refused(result, key):
    assert result.code == 101, result
    assert key in result.stderr and "--policy" in result.stderr, result


@pytest.mark.parametrize(
    "policy, key",
    [
        ('[stdio]\nstdout = ".git/config"\n', "stdio.stdout"),
        ('[stdio]\nstderr = ".git/hooks/pre-commit"\n', "stdio.stderr"),
        ('[stdio]\nstdout = "./data/../.git/config"\n', "stdio.stdout"),
        ('[stdio]\nstdin = ".git/config"\n', "stdio.stdin"),
        ('[filesystem]\nread_write = [".git::/g"]\n', "filesystem.read_write"),
        ('[filesystem]\nread_only = [".git::/g"]\n', "filesystem.read_only"),
        ('[filesystem]\nread_write = [".::/w"]\n', "filesystem.read_write"),
        ('[filesystem]\nread_only = [".::/w"]\n', "filesystem.read_only"),
        ('[runtime]\ncache_dir = ".git/wc"\n', "runtime.cache_dir"),
    ],
)
def test_the_repository_metadata_is_out_of_reach(cli, repo, policy, key):
    config = (repo / ".git" / "config").read_text()
    result = run_in(cli, repo, policy, "args", *HOOK.splitlines())
    assert_refused(result, key)
    assert (repo / ".git" / "config").read_text() == config
    subprocess.run(["git", "status"], cwd=repo, capture_output=True)
    assert not (repo / "PWNED").exists()


def test_jujutsu_metadata_is_out_of_reach_too(cli, repo):
    """Red team 3: `.jj/repo/config.toml` names the pager and diff tools jj runs (and a
    colocated jj repo keeps git's store there); on 0b0f967 only git, hg, svn, bzr and
    darcs metadata were out of reach, so a guest's stdout could rewrite it."""
    (repo / ".jj" / "repo").mkdir(parents=True)
    config = repo / ".jj" / "repo" / "config.toml"
    config.write_text("")
    result = run_in(cli, repo, '[stdio]\nstdout = ".jj/repo/config.toml"\n', "args", "x")
    assert_refused(result, "stdio.stdout")
    assert config.read_text() == ""


def test_a_symlink_to_the_metadata_is_followed_and_refused(cli, repo):
    (repo / "log.txt").symlink_to(".git/config")
    assert_refused(run_in(cli, repo, '[stdio]\nstdout = "log.txt"\n', "args", "x"), "stdio.stdout")


def test_a_writable_working_folder_could_get_a_git_folder_planted(cli, tmp_path):
    """No .git yet: the guest could create one where the user's shell runs git."""
    root = tmp_path / "plain"
    root.mkdir()
    shutil.copy(FSPROBE, root / "tool.wasm")
    result = run_in(cli, root, '[filesystem]\nread_write = [".::/w"]\n', "mkdir", "/w/.git")
    assert_refused(result, "filesystem.read_write")
    assert not (root / ".git").exists()


@pytest.mark.parametrize(
    "name", [".git", ".hg", ".svn", ".jj", "_FOSSIL_", ".pijul", ".sl", "_MTN"]
)
def test_a_grant_holding_a_nested_repository_is_refused(cli, repo, name):
    """A submodule's or nested clone's metadata deep inside a granted folder counts too."""
    (repo / "data" / "vendor" / "lib" / name).mkdir(parents=True)
    result = run_in(cli, repo, '[filesystem]\nread_only = ["data::/d"]\n', "ls", "/d")
    assert_refused(result, "filesystem.read_only")


def test_a_read_only_subfolder_without_metadata_is_fine(cli, repo):
    (repo / "data" / "in.txt").write_text("hi")
    policy = '[filesystem]\nread_only = ["data::/d"]\n[stdio]\nstdout = "out.txt"\n'
    result = run_in(cli, repo, policy, "read", "/d/in.txt")
    assert result.code == 0, result
    assert "hi" in (repo / "out.txt").read_text()


# Red team 3: on 0b0f967 a discovered `read_write = ["data::/d"]` (a subfolder, allowed)
# let the guest write data/meta/{HEAD,config,objects,refs} and then data/.git, a gitfile
# ("gitdir: meta"); `cd data && git status`, what a shell prompt runs, ran the config's
# core.fsmonitor. A clone can never bring a .git, and WASI lets a guest create any name in
# a folder it can write, so a discovered policy grants nothing read-write.
PLANT = [
    ["mkdir", "/d/meta"],
    ["mkdir", "/d/meta/objects"],
    ["mkdir", "/d/meta/refs"],
    ["write", "/d/meta/HEAD", "ref: refs/heads/main\n"],
    ["write", "/d/meta/config", HOOK],
    ["write", "/d/.git", "gitdir: meta\n"],
]


def test_a_writable_subfolder_could_get_a_repository_planted(cli, repo):
    (repo / "sandbox.toml").write_text('[filesystem]\nread_write = ["data::/d"]\n')
    for argv in PLANT:
        result = cli("run", "tool.wasm", "--", *argv, cwd=repo)
        assert_refused(result, "filesystem.read_write")
        assert "--dir" in result.stderr, result
    subprocess.run(["git", "status"], cwd=repo / "data", capture_output=True)
    assert not (repo / "data" / "PWNED").exists() and not (repo / "data" / ".git").exists()


def test_a_writable_grant_given_with_dir_is_the_users_choice(cli, repo):
    (repo / "sandbox.toml").write_text('[stdio]\nstdout = "out.txt"\n')
    result = cli("run", "tool.wasm", "--dir", "data::/d", "--", "write", "/d/x", "y", cwd=repo)
    assert result.code == 0, result
    assert (repo / "data" / "x").read_text() == "y"


def test_the_same_policy_named_with_policy_is_trusted(cli, repo):
    (repo / "sandbox.toml").write_text('[filesystem]\nread_only = [".::/w"]\n')
    result = cli("run", "tool.wasm", "--policy", "sandbox.toml", "--", "ls", "/w", cwd=repo)
    assert result.code == 0 and ".git" in result.stdout, result


def test_hello_still_runs_with_a_plain_discovered_policy(cli, repo):
    shutil.copy(EXAMPLES / "wasi" / "hello.wasm", repo / "hello.wasm")
    (repo / "sandbox.toml").write_text('[limits]\nmemory = "64MiB"\n')
    assert cli("run", "hello.wasm", cwd=repo).code == 0
