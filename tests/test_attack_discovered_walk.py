"""A discovered sandbox.toml's metadata walk is bounded for the whole policy (red team 77).

Each `filesystem.read_only` grant of a discovered policy is walked for `.git` and the
like (test_attack_discovered_vcs). On 3cd44cf the walk's limit of 20,000 folders was per
grant and nothing was shared: a 4 KB policy granting a folder of 2,000 subfolders 1,000
times made `run ... --timeout 1s` take 26 s before anything ran (`policy show` 31 s), and
the 1 MiB policy cap allowed 250,000 grants. Now each folder is walked once, the limit
counts every folder walked for the policy, and a discovered policy holds at most 1,000
grants.
"""

from __future__ import annotations

import os

import pytest

from wasmsbx import policy as policy_mod
from wasmsbx.errors import PolicyError

from .conftest import EXAMPLES

pytestmark = pytest.mark.inprocess


def tree(root, count: int):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / str(i)).mkdir()
    return root


def grants(root, names) -> None:
    quoted = ", ".join(f'"{name}"' for name in names)
    (root / "sandbox.toml").write_text(f"[filesystem]\nread_only = [{quoted}]\n")


@pytest.fixture
def walks(monkeypatch):
    """The folders the walk lists while a policy is discovered (by their descriptors'
    paths: the walk goes by descriptors)."""
    seen = []
    real_names = policy_mod._names

    def counting(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_names(fd)

    monkeypatch.setattr(policy_mod, "_names", counting)
    return seen


def test_a_folder_granted_many_times_is_walked_once(tmp_path, walks):
    tree(tmp_path / "d", 30)
    grants(tmp_path, ["d"] * 500 + [f"d/{i}" for i in range(10)] + ["d::/again"])
    policy = policy_mod.discover(cwd=tmp_path)
    assert len(policy.grants) == 12  # (the same grant 500 times is one: round 155)
    assert len(walks) == 31  # d and its 30 subfolders, once (was 500 x 31 + 10)


def test_a_folder_holding_one_walked_before_walks_only_the_rest(tmp_path, walks):
    tree(tmp_path / "d" / "sub", 20)
    tree(tmp_path / "d" / "other", 5)
    grants(tmp_path, ["d/sub", "d"])
    policy_mod.discover(cwd=tmp_path)
    assert len(walks) == 21 + 6 + 1  # d/sub's 21, then d itself and d/other's 6
    assert len(set(walks)) == len(walks)


@pytest.mark.parametrize("order", [["data/clean", "data"], ["data", "data/clean"]])
def test_metadata_beside_a_folder_walked_before_is_still_found(tmp_path, order):
    (tmp_path / "data" / "clean" / "deep").mkdir(parents=True)
    (tmp_path / "data" / "vendor" / ".git").mkdir(parents=True)
    grants(tmp_path, order)
    with pytest.raises(PolicyError, match=r"version-control metadata \(vendor/\.git\)"):
        policy_mod.discover(cwd=tmp_path)


def test_the_walk_limit_counts_every_grant_of_the_policy(tmp_path, monkeypatch):
    """Two folders of 30 each are under a limit of 50 apiece, not together."""
    monkeypatch.setattr(policy_mod, "VCS_WALK_LIMIT", 50)
    tree(tmp_path / "a", 30)
    tree(tmp_path / "b", 30)
    grants(tmp_path, ["a", "a", "a"])
    policy_mod.discover(cwd=tmp_path)  # one folder, walked once: 31 folders
    grants(tmp_path, ["a", "b"])
    with pytest.raises(PolicyError) as caught:
        policy_mod.discover(cwd=tmp_path)
    error = caught.value
    assert error.exit_code == 101 and error.context["key"] == "filesystem.read_only", error
    assert "past 50" in error.message and "--policy" in error.hint, error


def test_grants_past_the_walk_limit_together_are_refused(cli, tmp_path):
    """Through the command line, with the real limit: 2 x 10,001 folders."""
    tree(tmp_path / "a", 10_000)
    tree(tmp_path / "b", 10_000)
    grants(tmp_path, ["a"])
    add = EXAMPLES / "add.wat"
    assert cli("run", add, "add", "1", "2", cwd=tmp_path).code == 0
    grants(tmp_path, ["a", "b", "a"])
    result = cli("run", add, "add", "1", "2", cwd=tmp_path)
    assert result.code == 101, result
    assert "past 20,000" in result.stderr and "--policy" in result.stderr, result
    assert len(result.stderr.splitlines()) == 2, result  # error and hint


def test_a_discovered_policy_holds_at_most_1000_grants(cli, tmp_path):
    (tmp_path / "d").mkdir()
    add = EXAMPLES / "add.wat"
    grants(tmp_path, ["d"] * 1_000)
    result = cli("run", add, "add", "1", "2", cwd=tmp_path)
    assert result.code == 0 and result.stdout.strip() == "3", result
    grants(tmp_path, ["d"] * 1_001)
    result = cli("run", add, "add", "1", "2", cwd=tmp_path)
    assert result.code == 101, result
    assert "filesystem: 1,001 grants" in result.stderr and "at most 1,000" in result.stderr
    assert "--policy" in result.stderr, result
    named = cli("run", add, "add", "1", "2", "--policy", "sandbox.toml", cwd=tmp_path)
    assert named.code == 0, named  # a policy you name is trusted as it is


def _chain(root, depth: int, last: str = "leaf"):
    """A folder ``depth`` deep under ``root`` (made by descriptors: its path may pass
    PATH_MAX), ``last`` at the bottom."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d" * 200, dir_fd=fd)
            inner = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.mkdir(last, dir_fd=fd)
    finally:
        os.close(fd)


@pytest.fixture
def deep_trees(tmp_path):
    """Removed by descriptors afterwards (pytest's own removal recurses per level)."""
    from wasmsbx.fstree import remove_tree

    yield tmp_path
    for name in ("deep", "shallow", "clean"):
        assert remove_tree(str(tmp_path / name))


def test_a_deep_folder_is_refused_not_a_recursion_error(cli, deep_trees):
    """Red team 130: a cloned project granting a folder 1,000 deep was an internal error
    (RecursionError, exit 100) in every command: os.walk recursed once per level. The
    walk holds a descriptor per level and refuses a grant deeper than 256 (exit 101);
    a tree deeper than PATH_MAX (200-character names) is walked to its bottom."""
    tmp_path = deep_trees
    deep = tmp_path / "deep"
    deep.mkdir()
    _chain(deep, 1_000)
    grants(tmp_path, ["deep"])
    add = EXAMPLES / "add.wat"
    for command in (["run", add, "add", "1", "2"], ["policy", "show"]):
        result = cli(*command, cwd=tmp_path)
        assert result.code == 101, result
        assert "deeper than 256 folders" in result.stderr and "internal" not in result.stderr
    shallow = tmp_path / "shallow"
    shallow.mkdir()
    _chain(shallow, 250, ".git")  # 50 KB of path: past PATH_MAX, still walked
    grants(tmp_path, ["shallow"])
    result = cli("run", add, "add", "1", "2", cwd=tmp_path)
    assert result.code == 101 and "version-control metadata" in result.stderr, result
    assert f"{'d' * 200}/.git" in result.stderr or "characters)" in result.stderr, result
    _clean = tmp_path / "clean"
    _clean.mkdir()
    _chain(_clean, 250)
    grants(tmp_path, ["clean"])
    result = cli("run", add, "add", "1", "2", cwd=tmp_path)
    assert result.code == 0 and result.stdout.strip() == "3", result


def test_out_of_descriptors_the_walk_refuses_rather_than_skips(tmp_path):
    """Red team 131: the walk holds a descriptor per level, and an open that failed for
    want of one skipped the folder: under `ulimit -n 100` a `.git` 100 folders down was
    read by the guest. Any failure but "gone", "not a folder", "a link" or "not
    readable by this user" refuses the grant (exit 101)."""
    import resource
    import subprocess
    import sys

    project = tmp_path / "p"
    (project / "d").mkdir(parents=True)
    _chain(project / "d", 100, ".git")
    grants(project, ["d"])

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))

    done = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "policy", "show"],
        cwd=project, capture_output=True, text=True, timeout=120,
        preexec_fn=few_descriptors,
    )  # fmt: skip
    assert done.returncode == 101, done.stderr
    assert "could not be searched" in done.stderr or "metadata" in done.stderr, done.stderr
    from wasmsbx.fstree import remove_tree

    assert remove_tree(str(project / "d"))


def test_a_folder_that_can_be_entered_but_not_listed_is_refused(tmp_path, monkeypatch):
    # (x without r: the guest can open names below it at any depth, which no lookup by
    # name covers: red team 132 read `locked/sub/.git/config` and `locked/_MTN`)
    (tmp_path / "d" / "locked" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "open").mkdir()
    grants(tmp_path, ["d"])
    real_open = policy_mod.os.open

    def refusing(path, flags, *args, **kwargs):
        if path == "locked":
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(policy_mod.os, "open", refusing)
    with pytest.raises(
        PolicyError, match=r"a folder this user can enter but not list \(.*locked\)"
    ):
        policy_mod.discover(cwd=tmp_path)
    real_access = os.access
    monkeypatch.setattr(  # one this user cannot enter at all hides nothing from the guest
        policy_mod.os, "access", lambda p, m: False if p.endswith("locked") else real_access(p, m)
    )
    policy_mod.discover(cwd=tmp_path)
