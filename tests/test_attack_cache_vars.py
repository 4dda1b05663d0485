"""A cache folder whose name holds `$NAME` (red-team): diskcache expands environment
variables in the folder it is given, so on 398d538 the code files went into the folder
wasmsbx had checked (`c$EVIL`, private, tagged, not the trust folder) while `cache.db`
went wherever `$EVIL` led (`EVIL=/../../leak`: a folder outside, made with default
permissions and never checked). Such a folder is not made a cache."""

from __future__ import annotations

from .conftest import EXAMPLES


def test_a_cache_folder_with_a_variable_in_its_name_is_not_used(cli, tmp_path):
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    env = {"WASMSBX_CACHE_DIR": f"{inner}/c$WSX_EVIL", "WSX_EVIL": "/../../leak"}
    result = cli("compile", EXAMPLES / "add.wat", env=env)
    assert not (tmp_path / "a" / "leak").exists(), result
    assert "$" in result.stderr and "cache" in result.stderr, result
    assert result.code in (0, 105), result


def test_a_policy_cache_dir_with_a_variable_is_not_used(cli, isolated):
    (isolated / "sandbox.toml").write_text('[runtime]\ncache_dir = "c$WSX_EVIL"\n')
    result = cli("compile", EXAMPLES / "add.wat", env={"WSX_EVIL": "/../../leak"})
    assert not (isolated.parent / "leak").exists(), result
    assert "$" in result.stderr, result


def test_a_blank_cache_dir_variable_is_unset(cli, isolated, tmp_path):
    """``WASMSBX_CACHE_DIR=" "`` made a folder named " " in the working folder (red team
    round 69): blank, it is unset, and the user's cache folder is used."""
    home = tmp_path / "home"
    res = cli("cache", "path", "--json", env={"WASMSBX_CACHE_DIR": " ", "HOME": str(home),
                                               "XDG_CACHE_HOME": str(home / ".cache")})  # fmt: skip
    assert res.code == 0, res
    assert res.json()["source"] == "default", res.stdout
    assert not (isolated / " ").exists()
