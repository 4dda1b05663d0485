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
    """The folders os.walk yields while a policy is discovered (the pruning the walk
    does on its `dirs` list reaches the real walk: the list is the same object)."""
    seen = []
    real_walk = os.walk

    def counting(top, *args, **kwargs):
        for entry in real_walk(top, *args, **kwargs):
            seen.append(entry[0])
            yield entry

    monkeypatch.setattr(os, "walk", counting)
    return seen


def test_a_folder_granted_many_times_is_walked_once(tmp_path, walks):
    tree(tmp_path / "d", 30)
    grants(tmp_path, ["d"] * 500 + [f"d/{i}" for i in range(10)] + ["d::/again"])
    policy = policy_mod.discover(cwd=tmp_path)
    assert len(policy.grants) == 511
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
