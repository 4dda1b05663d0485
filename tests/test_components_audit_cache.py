"""A component's audit reads its WIT types from the cache entry `run`/`compile` made,
authenticated as `run` would, instead of compiling it (42 s for a componentize-py
guest); it never creates a cache or loads an entry that fails a check."""

from __future__ import annotations

import os
from pathlib import Path

from .conftest import ROOT

CAT = ROOT / "examples" / "components" / "cat.wasm"


def _audit(cli, *extra):
    res = cli("audit", CAT, "--json", *extra)
    assert res.code == 0, res
    data = res.json()
    return data, data["component"].pop("types_from")


def test_audit_reads_the_cache_entry(cli, isolated):
    cache = isolated.parent / "cache"
    before, source = _audit(cli)
    assert source == "compiled"
    assert not cache.exists(), "an audit creates no cache"
    assert cli("compile", CAT).code == 0
    after, source = _audit(cli)
    assert source == "cache"
    assert after == before  # the same report whichever way the types were read


def test_a_damaged_entry_is_not_used(cli, isolated):
    assert cli("compile", CAT).code == 0
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(isolated.parent / "cache")
        for name in names
    ]
    biggest = Path(max(files, key=os.path.getsize))  # the entry's native code
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x01
    biggest.write_bytes(bytes(data))
    _, source = _audit(cli)
    assert source == "compiled"


def test_no_cache_when_the_policy_turns_it_off(cli, isolated):
    assert cli("compile", CAT).code == 0
    (isolated / "sandbox.toml").write_text("[runtime]\ncache = false\n")
    _, source = _audit(cli)
    assert source == "compiled"
