"""A cache folder that came with its database (red team 103).

A project's `sandbox.toml` may name its own cache folder (`cache_dir = ".wc"`), and a
clone brings whatever the project put there: a tagged folder and a `cache.db`. diskcache
trusted that database: a trigger on its Settings table ran an endless recursive view in
every process that opened it (`wasmsbx cache clear`, the repair, too), a `disk_foo` row
became a keyword its Disk refused (an internal error, exit 100) and a `sqlite_x` row a
PRAGMA. Now a database is vetted before diskcache opens it (native/cache._vet_database):
its schema is what diskcache makes, its settings only names diskcache knows, and every
setting diskcache would read from it is given instead (_database_settings).

And a found policy's cache folder is made one folder at a time from the project's own
folder, never through a link (native/cache._make_inside): `os.makedirs` followed `sub`
turned into a link to `.git` (or to $HOME) after the policy was read, and made
`.git/hooks/pre-commit/` (which broke every `git commit`) or `~/.ssh/authorized_keys/`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from wasmsbx import policy as policy_mod
from wasmsbx.native import cache

from .conftest import EXAMPLES

pytestmark = pytest.mark.skipif(not cache._PIN, reason="folders are pinned on Linux only")

SEVEN = '(module (func (export "x") (result i32) i32.const 7))'


def _project(isolated: Path) -> Path:
    """A project whose sandbox.toml names its cache folder, filled by one run."""
    (isolated / "sandbox.toml").write_text('[runtime]\ncache_dir = ".wc"\ncache_min_size = 0\n')
    shutil.copy(EXAMPLES / "add.wat", isolated / "add.wat")
    (isolated / "seven.wat").write_text(SEVEN)
    return isolated / ".wc" / "cache.db"


def _plant(db: Path, script: str) -> None:
    con = sqlite3.connect(db)
    try:
        con.executescript(script)
        con.commit()
    finally:
        con.close()


PLANTS = {
    "a trigger running an endless view": (
        "CREATE VIEW spin AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c)"
        " SELECT max(x) FROM c;"
        "CREATE TRIGGER t BEFORE INSERT ON Settings BEGIN SELECT * FROM spin; END;",
        "it holds",
    ),
    "a trigger of diskcache's name doing more": (
        "DROP TRIGGER Settings_count_insert;"
        "CREATE TRIGGER Settings_count_insert AFTER INSERT ON Cache FOR EACH ROW BEGIN"
        " UPDATE Settings SET value = value + 1 WHERE key = 'count'; END;",
        "Settings_count_insert",
    ),
    "a Disk keyword": ("INSERT INTO Settings VALUES ('disk_foo', 1);", "disk_foo"),
    "a PRAGMA": ("INSERT INTO Settings VALUES ('sqlite_x', '1; select 1');", "sqlite_x"),
    "a count that is text": ("UPDATE Settings SET value = 'abc' WHERE key = 'count';", "count"),
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_planted_database_is_refused_and_cache_clear_removes_it(cli, isolated, plant):
    db = _project(isolated)
    res = cli("run", "add.wat", "add", "2", "3")
    assert res.code == 0 and db.is_file(), res
    script, named = PLANTS[plant]
    _plant(db, script)
    # a miss opens the database: the run goes on without the cache, saying why
    res = cli("run", "seven.wat", "x", timeout=120)
    assert res.code == 0 and res.stdout.strip() == "7", res
    assert "cache unavailable" in res.stderr and "not made by wasmsbx" in res.stderr, res
    assert named in res.stderr, res
    res = cli("cache", "list", timeout=120)
    assert res.code == 105 and "not made by wasmsbx" in res.stderr, res
    assert "Traceback" not in res.stderr and "cache clear" in res.stderr, res
    res = cli("cache", "clear", timeout=120)
    assert res.code == 0 and "deleted the damaged cache" in res.stdout, res
    assert not db.exists()
    res = cli("run", "seven.wat", "x")
    assert res.code == 0 and "warning" not in res.stderr, res
    assert db.is_file()


def _settings_past_any_limit(db: Path, key: str, value: object) -> None:
    """Red team 107: the UNIQUE constraint dropped with writable_schema, 64 rows of a
    known key, then one diskcache would use, then the schema's text put back as
    diskcache writes it (an index renamed to the autoindex's name)."""
    uniq = "CREATE TABLE Settings ( key TEXT NOT NULL UNIQUE, value)"
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=delete")
        con.execute("PRAGMA writable_schema=ON")
        con.execute(
            "UPDATE sqlite_master SET sql=? WHERE name='Settings'",
            ("CREATE TABLE Settings ( key TEXT NOT NULL, value)",),
        )
        con.execute("DELETE FROM sqlite_master WHERE name='sqlite_autoindex_Settings_1'")
    finally:
        con.close()
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.executemany("INSERT INTO Settings VALUES ('count', 0)", [()] * 64)
        con.execute("INSERT INTO Settings VALUES (?, ?)", (key, value))
        con.execute("CREATE INDEX dummy ON Settings(key)")
        con.execute("PRAGMA writable_schema=ON")
        con.execute("UPDATE sqlite_master SET sql=? WHERE name='Settings'", (uniq,))
        con.execute(
            "UPDATE sqlite_master SET name='sqlite_autoindex_Settings_1', sql=NULL "
            "WHERE name='dummy'"
        )
    finally:
        con.close()


def test_a_setting_past_the_first_rows_is_still_refused(cli, isolated):
    db = _project(isolated)
    assert cli("run", "add.wat", "add", "2", "3").code == 0
    _settings_past_any_limit(db, "disk_pwn", 1)
    res = cli("run", "seven.wat", "x", timeout=120)
    assert res.code == 0 and "not made by wasmsbx" in res.stderr, res
    assert "internal error" not in res.stderr
    res = cli("cache", "clear", timeout=120)
    assert res.code == 0 and "deleted the damaged cache" in res.stdout, res
    assert not db.exists()


def test_the_database_diskcache_makes_passes_the_vetting(tmp_path):
    """The schema vetted against is the one this diskcache makes (a new diskcache that
    changed it would refuse every cache: this test says so first)."""
    import diskcache

    made = diskcache.Cache(str(tmp_path), **cache._database_settings())
    made["k"] = "v"
    made.close()
    cache._vet_database(str(tmp_path / "cache.db"))
    con = sqlite3.connect(tmp_path / "cache.db")
    listed = {row for row in con.execute("SELECT type, name, sql FROM sqlite_master")}
    con.close()
    assert listed == set(cache._SCHEMA)


def test_the_vetting_reads_a_bounded_amount(tmp_path, monkeypatch):
    """Reading a database that takes SQLite more steps than the bound (here: the bound
    lowered to none) is refused, not read to the end."""
    db = tmp_path / "cache.db"
    _plant(db, "CREATE TABLE Settings ( key TEXT NOT NULL UNIQUE, value);")
    con = sqlite3.connect(db)
    con.executemany("INSERT INTO Settings VALUES (?, 0)", [(f"k{i}",) for i in range(1)])
    con.commit()
    con.close()
    with pytest.raises(sqlite3.DatabaseError, match="a setting 'k0'"):
        cache._vet_database(str(db))
    monkeypatch.setattr(cache, "_VET_STEPS", 0)
    monkeypatch.setattr(cache, "_VET_EVERY", 1)
    with pytest.raises(sqlite3.DatabaseError, match="too long"):
        cache._vet_database(str(db))


@pytest.mark.parametrize("away", ["git", "home"])
def test_a_found_cache_folder_is_never_made_through_a_link(isolated, away):
    home = isolated.parent / "home"
    (home / ".ssh").mkdir(parents=True)
    (isolated / ".git" / "hooks").mkdir(parents=True)
    shutil.copy(EXAMPLES / "add.wat", isolated / "add.wat")
    named = "sub/hooks/pre-commit/c" if away == "git" else "sub/.ssh/authorized_keys/c"
    (isolated / "sandbox.toml").write_text(
        f'[runtime]\ncache_dir = "{named}"\ncache_min_size = 0\n'
    )
    policy = policy_mod.discover(cwd=isolated)
    os.symlink(".git" if away == "git" else home, isolated / "sub")  # a `git pull`, say
    import wasmsbx

    box = wasmsbx.Sandbox(isolated / "add.wat", policy)
    assert box.call("add", 2, 3) == 5
    assert box.cache_state == "error"
    assert not (isolated / ".git" / "hooks" / "pre-commit").exists()
    assert list((home / ".ssh").iterdir()) == []


def test_a_found_cache_folder_is_made_inside_its_project(isolated):
    (isolated / "sandbox.toml").write_text('[runtime]\ncache_dir = "a/b/c"\ncache_min_size = 0\n')
    shutil.copy(EXAMPLES / "add.wat", isolated / "add.wat")
    policy = policy_mod.discover(cwd=isolated)
    import wasmsbx

    box = wasmsbx.Sandbox(isolated / "add.wat", policy)
    assert box.call("add", 2, 3) == 5 and box.cache_state == "miss"
    assert (isolated / "a" / "b" / "c" / "CACHEDIR.TAG").is_file()
    assert oct((isolated / "a" / "b").stat().st_mode & 0o777) == "0o700"
