"""Red-team regressions: a discovered policy's `runtime.cache_dir` must not create or
touch anything inside the trust folder, and odd cache paths are a warning, not a crash."""

from __future__ import annotations

import os

from tests.trust_helpers import write_modules


def _run_with_cache_dir(cli, work, target: str):
    (work / "sandbox.toml").write_text(f'[runtime]\ncache_min_size = 0\ncache_dir = "{target}"\n')
    good = write_modules(work)[0]
    # --policy: trusted as it is (a discovered one may not name paths outside its folder,
    # tests/test_discovered_policy.py); the trust-folder check must hold even then.
    return cli("run", good, "add", "1", "2", "--policy", work / "sandbox.toml", cwd=work)


def test_a_cache_dir_inside_the_trust_folder_is_not_created(cli, isolated, tmp_path):
    """`cache_dir = "<trust>/sub"` (or through a symlink planted in the project): the
    folder was refused only after mkdir(parents=True) had created it in the trust folder."""
    trust = tmp_path / "trust"
    assert cli("trust", "show").code == 0
    os.symlink(trust, isolated / "keys")
    for target in (f"{trust}/sub/deeper", "keys/sub"):
        result = _run_with_cache_dir(cli, isolated, target)
        assert (result.code, result.stdout) == (0, "3\n"), result
        assert "overlaps the trust folder" in result.stderr
        assert not (trust / "sub").exists()


def test_a_cache_dir_that_is_a_symlink_loop_is_a_warning(cli, isolated):
    os.symlink("loop2", isolated / "loop1")
    os.symlink("loop1", isolated / "loop2")
    for target in ("loop1", "loop1/x"):
        result = _run_with_cache_dir(cli, isolated, target)
        assert (result.code, result.stdout) == (0, "3\n"), result
        assert "cache unavailable" in result.stderr and "Traceback" not in result.stderr
