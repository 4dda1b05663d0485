"""What a process's first cached load works out, made cheaper without checking less:
the wasmtime version from the import system's listing of site-packages, a cache folder
already there checked as opened, the links check through the pinned folder."""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmsbx.native import artifact, cache, trust

from .cache_helpers import own_pins

identity = pytest.importorskip("wasmsbx.backends.wasmtime.identity")


@pytest.fixture(autouse=True)
def _own_pins(monkeypatch):
    yield from own_pins(monkeypatch)


class FakeFinder:
    def __init__(self, names) -> None:
        self._path_cache = set(names)


@pytest.fixture
def site(monkeypatch):
    """The folder wasmtime-py was found in, with the version worked out again."""
    found = os.path.dirname(os.path.dirname(identity.origin()))
    identity._version.cache_clear()
    yield found
    identity._version.cache_clear()


def test_the_version_is_the_installed_one():
    identity._version.cache_clear()
    try:
        assert identity._version() == version("wasmtime")
    finally:
        identity._version.cache_clear()


def test_the_import_systems_listing_is_used_without_listing_again(site, monkeypatch):
    names = ["wasmtime", "blake3-1.0.dist-info", "wasmtime-7.1.2.dist-info", "wasmtime-x.pth"]
    monkeypatch.setitem(sys.path_importer_cache, site, FakeFinder(names))
    monkeypatch.setattr(identity.os, "listdir", lambda *_: pytest.fail("listed again"))
    assert identity._version() == "7.1.2"


@pytest.mark.parametrize(
    "names",
    [
        [],  # (a finder that has not listed the folder yet)
        ["wasmtime-1.0.0.dist-info", "wasmtime-2.0.0.dist-info"],
        ["wasmtime", "wasmtime-1.0.0.dist-info.tmp"],
    ],
)
def test_a_listing_without_exactly_one_dist_info_is_not_trusted(site, monkeypatch, names):
    monkeypatch.setitem(sys.path_importer_cache, site, FakeFinder(names))
    assert identity._version() == version("wasmtime")


def test_a_finder_of_another_kind_is_not_used(site, monkeypatch):
    class Other:
        _path_cache = "wasmtime-9.dist-info"  # (not a set of names)

    monkeypatch.setitem(sys.path_importer_cache, site, Other())
    assert identity._version() == version("wasmtime")


def test_dist_infos_finds_whole_names_only():
    names = ["xwasmtime-1.dist-info", "wasmtime-2.dist-info", "wasmtime-3.dist-infox", "w"]
    assert identity._dist_infos(names) == ["wasmtime-2.dist-info"]
    assert identity._dist_infos([]) == []


def test_a_link_at_each_name_the_cache_writes_is_refused(tmp_path):
    for name in cache.OURS:
        folder = tmp_path / f"c-{name}"
        store = cache.Store.open(folder, 1 << 30)
        assert store is not None
        store.close()
        target = folder / name
        if target.is_dir():
            os.rmdir(target)
        elif target.exists():
            target.unlink()
        target.symlink_to(tmp_path / "elsewhere")
        cache._SHARED.clear()
        with pytest.raises(cache.CacheUnavailable, match="symbolic link"):
            cache.prepare_dir(folder)


def test_an_existing_folder_in_the_trust_folder_is_refused_untouched(tmp_path, monkeypatch):
    """A folder already there is no longer checked before it is opened: refused as
    opened, before anything is written in it (no tag, no chmod)."""
    keys = tmp_path / "keys"
    inner = keys / "inner"
    inner.mkdir(parents=True)
    os.chmod(inner, 0o755)
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(keys))
    (tmp_path / "link").symlink_to(inner)
    for target in (inner, tmp_path / "link", keys):
        with pytest.raises(cache.CacheUnavailable, match="overlaps the trust folder"):
            cache.prepare_dir(Path(target))
    assert os.listdir(inner) == [] and os.stat(inner).st_mode & 0o777 == 0o755
    assert sorted(os.listdir(keys)) == ["inner"]


def test_protected_is_worked_out_from_the_folder_opened(tmp_path, monkeypatch):
    """The user's own cache reached through a link is still the user's own cache (the
    real path comes from the pinned descriptor); another folder is not."""
    own = tmp_path / "own"
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(own))
    (tmp_path / "via").symlink_to(own, target_is_directory=True)
    own.mkdir(mode=0o700)
    for name, expected in ((own, True), (tmp_path / "via", True), (tmp_path / "other", False)):
        store = cache.Store.open(Path(name), 1 << 30)
        assert store is not None
        try:
            assert store.protected is expected, name
        finally:
            store.close()
    assert trust.in_cache_roots(str(tmp_path / "via"))
    assert not trust.in_cache_roots("whatever", real=str(tmp_path / "other"))


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text() | st.integers(), inner)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), JSONISH))
def test_normalise_is_what_json_reads_back_in_order(fingerprint):
    """normalise builds plain fingerprints directly: the same value, keys in the same
    order, as the JSON round trip it replaces (which it still takes for the rest)."""
    try:
        through_json = json.loads(json.dumps(fingerprint, sort_keys=True))
    except TypeError:  # (keys of mixed kinds cannot be sorted: JSON refuses them too)
        with pytest.raises(TypeError):
            artifact.normalise(fingerprint)
        return
    assert json.dumps(artifact.normalise(fingerprint)) == json.dumps(through_json)


def test_normalise_copies():
    given = {"features": ("a", "b"), "n": {"x": [1]}}
    out = artifact.normalise(given)
    assert out == {"features": ["a", "b"], "n": {"x": [1]}}
    out["n"]["x"].append(2)
    assert given["n"]["x"] == [1]
