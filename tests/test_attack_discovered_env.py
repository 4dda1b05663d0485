"""A discovered sandbox.toml cannot pull your environment into the guest (red-team).

On 398d538 `[env] inherit = ["*"]` in a cloned project's sandbox.toml handed the guest
every variable (AWS_SECRET_ACCESS_KEY, GITHUB_TOKEN, ...); it has no network, but it can
print them: into a CI log that anyone reads, encoded past the log's secret masking, or
into a file in the project that gets pushed. Your environment is trusted, a discovered
policy is not: it may pass through only locale and terminal variables. `--env NAME` (or
`--policy FILE`) passes anything else, because then you chose it.
"""

from __future__ import annotations

import shutil

import pytest

from .conftest import GUESTS

SECRETS = {"AWS_SECRET_ACCESS_KEY": "hunter2", "GITHUB_TOKEN": "ghp_s3cret", "LANG": "C.UTF-8"}


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(GUESTS / "fsprobe.wasm", root / "tool.wasm")
    return root


def run_env(cli, root, policy, *flags):
    (root / "sandbox.toml").write_text(policy)
    return cli("run", "tool.wasm", *flags, "--", "env", cwd=root, env=SECRETS)


@pytest.mark.parametrize(
    "patterns",
    [
        '["*"]',
        '["AWS_SECRET_ACCESS_KEY"]',
        '["GITHUB_*"]',
        '["LANG", "*TOKEN*"]',
        '["[A-Z]*"]',
        '["LC_*", "LANG?"]',
        '["HOME"]',
    ],
)
def test_a_discovered_policy_cannot_inherit_other_variables(cli, project, patterns):
    result = run_env(cli, project, f"[env]\ninherit = {patterns}\n")
    assert result.code == 101, result
    assert "env.inherit" in result.stderr and "--env" in result.stderr, result
    assert "hunter2" not in result.stdout and "ghp_s3cret" not in result.stdout


def test_locale_and_terminal_variables_pass(cli, project):
    result = run_env(cli, project, '[env]\ninherit = ["LANG", "LC_*", "TERM", "TZ"]\n')
    assert result.code == 0, result
    assert "LANG=C.UTF-8" in result.stdout and "hunter2" not in result.stdout


def test_you_can_still_pass_a_variable_yourself(cli, project):
    result = run_env(cli, project, '[env]\nset = { MODE = "x" }\n', "--env", "GITHUB_TOKEN")
    assert result.code == 0, result
    assert "GITHUB_TOKEN=ghp_s3cret" in result.stdout and "MODE=x" in result.stdout


def test_a_policy_you_name_inherits_as_written(cli, project):
    (project / "mine.toml").write_text('[env]\ninherit = ["GITHUB_*"]\n')
    result = cli("run", "tool.wasm", "--policy", "mine.toml", "--", "env", cwd=project, env=SECRETS)
    assert result.code == 0 and "GITHUB_TOKEN=ghp_s3cret" in result.stdout, result
