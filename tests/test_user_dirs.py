"""The user's default folders, written out instead of importing platformdirs (a run that
opens the cache paid several ms for it): the same answers as platformdirs on Linux, and
a relative $HOME is never a folder in the working directory."""

from __future__ import annotations

import os
import pwd

import pytest

from wasmsbx.native import cache, trustdir


@pytest.mark.parametrize("xdg", [None, "", "  ", "/tmp/xdg-cache", "relative/cache"])
def test_default_cache_folder_is_platformdirs(monkeypatch, xdg):
    import platformdirs

    monkeypatch.delenv("WASMSBX_CACHE_DIR", raising=False)
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    expected = platformdirs.user_cache_dir("wasmsbx", appauthor=False)
    if xdg and xdg.strip() and not os.path.isabs(xdg):
        expected = os.path.join(os.path.expanduser("~"), ".cache", "wasmsbx")  # ignored
    assert trustdir.user_cache_text() == expected
    root, where = cache.resolve_dir(None)
    assert (str(root), where) == (expected, "default")


def test_answers_follow_the_environment(monkeypatch, tmp_path):
    """Remembered per process, but never across a change of the variables."""
    monkeypatch.delenv("WASMSBX_TRUST_DIR", raising=False)
    for n in range(2):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / f"c{n}"))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / f"k{n}"))
        assert trustdir.user_cache_text() == str(tmp_path / f"c{n}" / "wasmsbx")
        assert trustdir.trust_dir_text() == str(tmp_path / f"k{n}" / "wasmsbx" / "trust")
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(tmp_path / "explicit"))
    assert trustdir.trust_dir_text() == str(tmp_path / "explicit")


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_home_is_not_the_root_folder(monkeypatch, value):
    """expanduser("~") of an empty $HOME is "/": the cache and the trust folder (with
    its secret key) were made at the root of the file system (red team round 77)."""
    monkeypatch.setenv("HOME", value)
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "WASMSBX_TRUST_DIR", "WASMSBX_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert trustdir.user_cache_text() == os.path.join(home, ".cache", "wasmsbx")
    assert trustdir.trust_dir_text() == os.path.join(home, ".config", "wasmsbx", "trust")


def test_relative_home_is_not_the_working_folder(monkeypatch, tmp_path):
    """A $HOME of "proj" would put the cache and the trust folder (with its secret key)
    in ./proj of whatever folder wasmsbx runs in: a cloned project could bring them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "proj")
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "WASMSBX_TRUST_DIR", "WASMSBX_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert trustdir.user_cache_text() == os.path.join(home, ".cache", "wasmsbx")
    assert trustdir.trust_dir_text() == os.path.join(home, ".config", "wasmsbx", "trust")
    assert os.path.isabs(str(cache.resolve_dir(None)[0]))
