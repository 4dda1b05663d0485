"""``wasmsbx run`` with the cache, and every ``wasmsbx cache`` subcommand, through the CLI."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys

import pytest

from wasmsbx import policy as policy_mod
from wasmsbx.native import cache

from .conftest import EXAMPLES

ADD = EXAMPLES / "add.wat"
CACHE_ALL = "[runtime]\ncache_min_size = 0\n"


@pytest.fixture
def cache_all(isolated):
    """A sandbox.toml in the cwd that caches every module."""
    (isolated / "sandbox.toml").write_text(CACHE_ALL)
    return isolated


def store_for(tmp_path):
    policy = policy_mod.defaults()
    return cache.Store.open(tmp_path / "cache", policy.values["runtime.cache_size"], create=False)


def damage_database(root):
    """Replace the cache's SQLite database (and its journal files) with garbage."""
    for extra in root.glob("cache.db-*"):
        extra.unlink()
    (root / "cache.db").write_bytes(b"not a database " * 400)
    return root


# ---------------------------------------------------------------------------- run


def test_run_stats_show_miss_then_hit(cli, cache_all):
    first = cli("run", ADD, "add", "5", "3", "--stats")
    assert (first.code, first.stdout) == (0, "8\n")
    assert "cache             miss" in first.stderr and "compile time" in first.stderr
    second = cli("run", ADD, "add", "5", "3", "--stats")
    assert (second.code, second.stdout) == (0, "8\n")
    assert "cache             hit" in second.stderr
    assert "load time" in second.stderr and "compile time" not in second.stderr


def test_run_json_stats_report_cache_state(cli, cache_all):
    cli("run", ADD, "add", "1", "2")
    data = cli("run", ADD, "add", "1", "2", "--json").json()
    assert data["stats"]["cache"] == "hit"
    assert "load" in data["stats"]["timings"]


def test_small_module_is_not_cached_by_default(cli, tmp_path):
    result = cli("run", ADD, "add", "5", "3", "--stats")
    assert result.code == 0
    assert "skipped (module smaller than runtime.cache_min_size)" in result.stderr
    assert not (tmp_path / "cache" / "cache.db").exists()


def test_no_cache_option(cli, cache_all, tmp_path):
    result = cli("run", ADD, "add", "5", "3", "--stats", "--no-cache")
    assert result.code == 0 and "cache             off" in result.stderr
    assert not (tmp_path / "cache" / "cache.db").exists()


def test_cache_dir_option(cli, cache_all, tmp_path):
    result = cli("run", ADD, "add", "5", "3", "--cache-dir", tmp_path / "mine")
    assert result.code == 0
    assert (tmp_path / "mine" / "cache.db").exists() and not (
        tmp_path / "cache" / "cache.db"
    ).exists()
    listed = cli("cache", "list", "--cache-dir", tmp_path / "mine", "--json").json()
    assert [e["module"]["name"] for e in listed["entries"]] == ["add.wat"]


def test_damaged_entry_is_reported_on_stderr(cli, cache_all, tmp_path):
    cli("run", ADD, "add", "5", "3")
    store = store_for(tmp_path)
    ((key, _),) = store.code_keys()
    store.write_blob(key, store.blob(key)[10:])  # the native code loses its start
    store.close()
    result = cli("run", ADD, "add", "5", "3", "--stats")
    assert (result.code, result.stdout) == (0, "8\n")
    assert "warning: cache entry for add.wat" in result.stderr
    assert "not tagged with your key" in result.stderr
    assert "discarded and recompiled" in result.stderr
    assert "cache             miss" in result.stderr
    again = cli("run", ADD, "add", "5", "3")
    assert again.stderr == ""


def test_damaged_entry_warning_survives_a_failing_run(cli, cache_all, tmp_path):
    cli("run", ADD, "add", "5", "3")
    store = store_for(tmp_path)
    ((key, _),) = store.code_keys()
    store.write_blob(key, store.blob(key)[10:])  # the native code loses its start
    store.close()
    # A run that fails after loading (a trap): an unknown export now fails before the
    # cache is opened (the interface is checked from the module's bytes first).
    result = cli("run", ADD, "div", "1", "0")
    assert result.code == 103
    assert "warning: cache entry" in result.stderr and "error:" in result.stderr


@pytest.mark.slow
def test_sixteen_concurrent_runs_share_one_cache(cache_all, tmp_path):
    """Sixteen processes start on an empty cache at once: all succeed, one entry results."""
    module = tmp_path / "big.wat"
    funcs = "\n".join(
        f'(func (export "f{i}") (param i32) (result i32) (i32.mul (local.get 0) (i32.const {i})))'
        for i in range(300)
    )
    module.write_text(f"(module\n{funcs}\n)\n")

    def one(_):
        return subprocess.run(
            [sys.executable, "-m", "wasmsbx", "run", str(module), "f7", "6", "--stats"],
            capture_output=True,
            text=True,
            cwd=cache_all,
            timeout=300,
        )

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for proc in results:
        assert (proc.returncode, proc.stdout) == (0, "42\n"), proc.stderr
        assert "warning" not in proc.stderr and "error" not in proc.stderr
    states = [
        line.split()[1]
        for p in results
        for line in p.stderr.splitlines()
        if line.startswith("cache ")
    ]
    assert states.count("miss") == 1 and states.count("hit") == 15, states
    store = store_for(tmp_path)
    try:
        assert len(cache.entries(store)) == 1
        assert cache.verify(store)["bad"] == []
        report = cache.stats(store)
        assert report["hits"] + report["misses"] == 16
    finally:
        store.close()


# ---------------------------------------------------------------------------- cache subcommands


def test_commands_on_a_missing_cache(cli, tmp_path):
    for sub in ("list", "stats", "clear", "prune", "verify"):
        result = cli("cache", sub)
        assert result.code == 0, result
        assert f"no cache at {tmp_path / 'cache'} yet" in result.stdout
        data = cli("cache", sub, "--json").json()
        assert data["exists"] is False and data["cache_dir"] == str(tmp_path / "cache")
    assert not (tmp_path / "cache" / "cache.db").exists(), "reporting must not create it"


def test_list(cli, cache_all):
    cli("run", ADD, "add", "1", "1")
    cli("run", ADD, "add", "1", "1")
    result = cli("cache", "list")
    assert result.code == 0
    row = next(line for line in result.stdout.splitlines() if "add.wat" in line)
    assert "wasmtime" in row and "speed" in row and row.split()[-1] == "1"  # one hit
    (entry,) = cli("cache", "list", "--json").json()["entries"]
    assert entry["module"]["name"] == "add.wat" and len(entry["module"]["sha256"]) == 64
    assert entry["hits"] == 1 and entry["size"] > 0 and entry["backend"] == "wasmtime"
    for field in ("label", "version", "compiler", "optimize", "target", "age", "created"):
        assert field in entry


def test_list_empty(cli, cache_all):
    cli("run", ADD, "add", "1", "1")
    cli("cache", "clear")
    result = cli("cache", "list")
    assert result.code == 0 and "is empty" in result.stdout
    assert cli("cache", "list", "--json").json()["entries"] == []


def test_stats(cli, cache_all):
    for _ in range(3):
        cli("run", ADD, "add", "1", "1")
    result = cli("cache", "stats")
    assert result.code == 0
    assert "entries      1" in result.stdout and "hit rate     66.7%" in result.stdout
    assert "wasmtime" in result.stdout
    data = cli("cache", "stats", "--json").json()
    assert (data["entries"], data["hits"], data["misses"]) == (1, 2, 1)
    assert data["backends"]["wasmtime"]["entries"] == 1
    assert data["size_limit"] == 1024**3 and data["min_module_size"] == 0
    assert data["total_size"] > 0 and data["disk_usage"] >= data["total_size"]


def test_clear_all_and_filtered(cli, cache_all, tmp_path):
    other = tmp_path / "other.wat"
    other.write_text('(module (func (export "one") (result i32) (i32.const 1)))')
    cli("run", ADD, "add", "1", "1")
    cli("run", other, "one")
    result = cli("cache", "clear", "--module", other)
    assert result.code == 0 and "removed 1 entry" in result.stdout
    assert [e["module"]["name"] for e in cli("cache", "list", "--json").json()["entries"]] == [
        "add.wat"
    ]
    assert "no matching entries" in cli("cache", "clear", "--backend", "wasmer").stdout
    data = cli("cache", "clear", "--backend", "wasmtime", "--json").json()
    assert data["removed"] == 1 and data["freed"] > 0
    cli("run", ADD, "add", "1", "1")
    assert "removed 1 entry" in cli("cache", "clear").stdout
    assert cli("cache", "clear", "--json").json()["removed"] == 0


def test_clear_module_must_exist(cli, cache_all):
    result = cli("cache", "clear", "--module", "nope.wasm")
    assert result.code == 105 and "no such file" in result.stderr


def test_prune(cli, cache_all):
    cli("run", ADD, "add", "1", "1")
    result = cli("cache", "prune", "--older-than", "7d")
    assert result.code == 0 and "removed 0 entries" in result.stdout and "1 left" in result.stdout
    data = cli("cache", "prune", "--max-size", "0", "--json").json()
    assert data["removed"] == 1 and data["entries"] == 0


def test_prune_bad_values(cli, cache_all):
    result = cli("cache", "prune", "--older-than", "soon")
    assert result.code == 2 and "error:" in result.stderr and "hint:" in result.stderr


def test_verify(cli, cache_all, tmp_path):
    cli("run", ADD, "add", "1", "1")
    result = cli("cache", "verify")
    assert result.code == 0 and "1 ok, 0 bad" in result.stdout
    store = store_for(tmp_path)
    ((key, _),) = store.code_keys()
    blob = store.blob(key)
    store.write_blob(key, blob[:-1] + bytes([blob[-1] ^ 1]))
    store.close()
    kept = cli("cache", "verify", "--keep", "--json").json()
    assert (kept["checked"], kept["ok"], kept["removed"]) == (1, 0, False)
    assert "not tagged with your key" in kept["bad"][0]["reason"]
    result = cli("cache", "verify")
    assert "bad: add.wat: not tagged with your key" in result.stdout
    assert "(removed)" in result.stdout
    assert "empty: nothing to verify" in cli("cache", "verify").stdout


def test_path(cli, tmp_path):
    result = cli("cache", "path")
    assert (result.code, result.stdout) == (0, f"{tmp_path / 'cache'}\n")
    data = cli("cache", "path", "--json").json()
    assert data == {"cache_dir": str(tmp_path / "cache"), "source": "env", "exists": False}
    data = cli("cache", "path", "--cache-dir", tmp_path / "x", "--json").json()
    assert data["source"] == "option"


def test_policy_cache_dir(cli, isolated, tmp_path):
    (isolated / "sandbox.toml").write_text(CACHE_ALL + 'cache_dir = "pc"\n')
    assert cli("run", ADD, "add", "1", "1").code == 0
    assert (isolated / "pc" / "cache.db").exists()
    data = cli("cache", "path", "--json").json()
    assert data == {"cache_dir": str(isolated / "pc"), "source": "policy", "exists": True}


def test_bad_policy_cache_size(cli, isolated):
    (isolated / "sandbox.toml").write_text('[runtime]\ncache_size = "lots"\n')
    result = cli("cache", "stats")
    assert result.code == 101 and "runtime.cache_size" in result.stderr


def test_unwritable_cache(cli, cache_all, tmp_path):
    """The code folder cannot be made (a file stands in its way): `run` warns and runs,
    `compile` into the cache is an i/o error with a hint, never a traceback."""
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    (root / "CACHEDIR.TAG").write_text(cache.TAG_TEXT)  # (a cache: untagged, it is refused)
    (root / cache.CODE_DIR).write_text("in the way")
    run = cli("run", ADD, "add", "1", "1")
    assert (run.code, run.stdout) == (0, "2\n")
    assert "warning: cache unavailable (Not a directory" in run.stderr
    compiled = cli("compile", ADD)
    assert compiled.code == 105, compiled
    assert "error: cannot store in the cache" in compiled.stderr
    assert "hint:" in compiled.stderr and "Traceback" not in compiled.stderr


def test_hits_with_a_damaged_database_fold_rarely_and_are_kept(
    cli, cache_all, tmp_path, monkeypatch
):
    """With the database unreadable, a hit retries folding the journal only when the
    journal passes a multiple of HITS_FOLD_SIZE, and keeps the lines meanwhile."""
    other = tmp_path / "m.wat"
    other.write_text('(module (func (export "two") (result i32) (i32.const 2)))')
    assert cli("run", other, "two").code == 0
    root = damage_database(tmp_path / "cache")
    store = cache.Store(root, 1 << 30)
    key = store.code_keys()[0][0]
    folds = []
    real = cache.Store.fold_hits

    def counting(self):
        folds.append(1)
        return real(self)

    monkeypatch.setattr(cache, "HITS_FOLD_SIZE", 300)
    monkeypatch.setattr(cache.Store, "fold_hits", counting)
    for _ in range(12):  # (as twelve processes would: each writes its hit)
        try:
            store.hit(key, "wasmtime")
            cache.flush_hits()
        except cache.cache_errors():
            pass  # what load() does: the hit stands, the fold waits
    lines = (root / cache.HITS).read_bytes().splitlines()
    assert len(lines) == 12, "no hit may be lost while the database is damaged"
    assert 2 <= len(folds) <= 4, folds  # one try per 300 bytes, not one per hit


@pytest.mark.entry_point  # the open cache is kept per process: damage it from outside
def test_damaged_database(cli, cache_all, tmp_path):
    cli("run", ADD, "add", "1", "1")
    root = damage_database(tmp_path / "cache")
    # A hit needs only the entry's file, which is intact: the database is not read.
    run = cli("run", ADD, "add", "1", "1", "--stats")
    assert (run.code, run.stdout) == (0, "2\n")
    assert "cache             hit" in run.stderr and "warning" not in run.stderr
    # A miss needs the database (lock, record): it runs without the cache, and says so.
    other = tmp_path / "other.wat"
    other.write_text('(module (func (export "two") (result i32) (i32.const 2)))')
    run = cli("run", other, "two")
    assert (run.code, run.stdout) == (0, "2\n")
    assert "warning: cache unavailable" in run.stderr
    listed = cli("cache", "list")
    assert listed.code == 105 and "wasmsbx cache clear" in listed.stderr
    cleared = cli("cache", "clear")
    assert cleared.code == 0 and "deleted the damaged cache" in cleared.stdout
    assert not root.exists()
    again = cli("run", ADD, "add", "1", "1", "--stats")
    assert "cache             miss" in again.stderr and "warning" not in again.stderr


def test_batch_uses_the_cache_options(cli, cache_all, tmp_path):
    result = cli(
        "run", ADD, "add", "--batch", "-", "--cache-dir", tmp_path / "b", input=b"[1, 2]\n[3, 4]\n"
    )
    assert result.code == 0, result
    assert (tmp_path / "b" / "cache.db").exists()


# CLI calls run in this process (see the cli fixture): none here needs the real entry point.
pytestmark = pytest.mark.inprocess


@pytest.mark.parametrize("command", ["list", "stats", "clear", "verify", "prune"])
def test_a_cache_dir_that_cannot_be_a_cache_is_refused(cli, tmp_path, command):
    """Round 40: `cache clear --cache-dir` of the trust folder said "empty cache" and
    exited 0, and /dev/null or a FIFO was "no cache yet"; `compile --cache-dir` refused
    the trust folder with 105. Every cache command refuses them so now."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    trust = os.environ["WASMSBX_TRUST_DIR"]
    os.makedirs(trust, exist_ok=True)
    for target in (trust, "/dev/null", str(fifo), str(tmp_path / "file")):
        if target.endswith("file"):
            (tmp_path / "file").write_text("x")
        res = cli("cache", command, "--cache-dir", target)
        assert res.code == 105, (target, res)
        assert os.path.exists(target), target


def test_a_cache_folder_named_with_terminal_escapes_prints_inert(cli, isolated):
    """Red team 106: a found sandbox.toml's cache_dir holding an OSC title, a screen
    clear and a forged line was printed raw by `cache stats|list|verify|prune|clear` and
    `compile`; every error and warning line escaped it already."""
    (isolated / "add.wat").write_text(
        '(module (func (export "add") (param i32 i32) (result i32)'
        " local.get 0 local.get 1 i32.add))"
    )
    (isolated / "sandbox.toml").write_text(
        "[runtime]\ncache_dir = "
        '"c\\u001b]0;PWNED\\u0007\\u001b[2J\\nwasmsbx: all checks passed\\r"\n'
    )
    outputs = [cli("cache", "stats")]
    outputs.append(cli("compile", "add.wat"))
    for command in (("cache", "stats"), ("cache", "list"), ("cache", "verify"),
                    ("cache", "prune", "--older-than", "0s"), ("cache", "clear")):  # fmt: skip
        outputs.append(cli(*command))
    for res in outputs:
        assert res.code == 0, res
        for text in (res.stdout, res.stderr):
            assert "\x1b" not in text and "\x07" not in text and "\r" not in text, res
            assert "\nwasmsbx: all checks passed" not in text, res
