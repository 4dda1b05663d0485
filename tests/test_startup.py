"""`wasmsbx run` must not import what it does not use (start-up is a product feature).

Timing lives in benchmarks/startup.py; this checks the structure that makes it fast.
"""

from __future__ import annotations

import subprocess
import sys

from .conftest import EXAMPLES

HEAVY = (
    "typer",
    "click",
    "rich",
    "diskcache",
    "sqlite3",
    "dataclasses",
    "inspect",
    "importlib.metadata",
    "watchfiles",
    "platformdirs",
    "tomli_w",
    "wasmer",
    "json",
    "dask",
    "distributed",
)


def imported_modules(*args: str) -> set:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "wasmsbx", *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_run_imports_nothing_heavy():
    names = imported_modules("run", str(EXAMPLES / "add.wat"), "add", "5", "3")
    assert "wasmtime" in names
    heavy = sorted(n for n in names if n.split(".")[0] in HEAVY or n in HEAVY)
    assert heavy == []
    # the layout's point: a plain call loads the core and the runner, no feature package
    features = ("audit", "bench", "watch", "cluster", "mcp", "components")
    loaded = sorted(n for n in names if n.split(".")[:2] in [["wasmsbx", f] for f in features])
    assert loaded == []
    assert not {"wasmsbx.runner.batch", "wasmsbx.runner.stream"} & names
    assert {"wasmsbx.runner.sandbox", "wasmsbx.wasm.source", "wasmsbx.cli.commands.run"} <= names


def test_help_uses_the_typer_app():
    names = imported_modules("run", "--help")
    assert "typer" in names


def test_a_cache_hit_opens_no_database(tmp_path):
    """A hit reads one file: neither diskcache nor sqlite3 is imported (13 ms), nor
    hashlib (2.5 ms of OpenSSL; the cache's digests are BLAKE3, and backend selection
    reads the module's features without its SHA-256)."""
    policy = tmp_path / "sandbox.toml"
    policy.write_text("[runtime]\ncache_min_size = 0\n")
    args = ("run", str(EXAMPLES / "add.wat"), "add", "5", "3", "--policy", str(policy))
    first = imported_modules(*args)
    assert "diskcache" in first, "the miss stores the entry and its record"
    names = imported_modules(*args, "--stats")
    assert "wasmsbx.native.cache" in names
    assert not {"diskcache", "sqlite3", "hashlib"} & names


def test_a_component_call_hashes_no_core_module(tmp_path):
    """A component's run reads the memories of the core modules inside it, not their
    SHA-256: a hit imports no hashlib (2.5 ms of OpenSSL; a miss does, for its record)."""
    from .conftest import ROOT

    policy = tmp_path / "sandbox.toml"
    policy.write_text("[runtime]\ncache_min_size = 0\n")
    guest = ROOT / "tests" / "guests" / "components" / "types.wat"
    args = ("run", str(guest), "add", "5", "3", "--policy", str(policy))
    imported_modules(*args)
    names = imported_modules(*args, "--stats")
    assert "wasmsbx.components.runtime" in names
    assert "hashlib" not in names
