"""Links planted in a cache folder (red-team). A cloned project may bring its cache
(`sandbox.toml` with `cache_dir = ".wc"`, a `.wc/CACHEDIR.TAG`), and git keeps symbolic
links. On 3be5a46 a planted `.wc/hits.log -> ../../victim` made two `wasmsbx run`s
overwrite the victim, a file outside the project, with a hit line, and `wasmsbx cache list`
empty it (folding the journal truncates it); `cache.db-wal` and the other files wasmsbx
writes there are opened by name the same way. A cache folder holding such a link is not
used (warning; compiled without it), and the journal is never opened through a link."""

from __future__ import annotations

import shutil

import pytest

from wasmsbx.native import cache

from .conftest import EXAMPLES

TAG = "Signature: 8a477f597d28d172789f06886806bc55\n# a wasmsbx cache\n"


@pytest.fixture
def project(tmp_path):
    (tmp_path / "victim.txt").write_text("precious\n")
    root = tmp_path / "project"
    (root / ".wc").mkdir(parents=True)
    (root / ".wc" / "CACHEDIR.TAG").write_text(TAG)
    (root / "sandbox.toml").write_text('[runtime]\ncache_dir = ".wc"\n')
    shutil.copy(EXAMPLES / "wasi" / "hello.wasm", root / "tool.wasm")  # cached: 39 KB
    return root


@pytest.mark.parametrize("name", ["hits.log", "cache.db", "cache.db-wal", "cache.db-shm", "code"])
def test_a_planted_link_in_the_cache_never_writes_through(cli, project, name):
    (project / ".wc" / name).symlink_to("../../victim.txt")
    for _ in range(2):
        result = cli("run", "tool.wasm", cwd=project)
        assert result.code == 0, result
        assert "cache unavailable" in result.stderr and "link" in result.stderr, result
    cli("cache", "list", cwd=project)
    cli("cache", "verify", cwd=project)
    assert (project.parent / "victim.txt").read_text() == "precious\n"


def test_a_journal_replaced_by_a_link_later_is_not_followed(tmp_path):
    """A guest with a read-write grant over the cache could swap it in mid-run."""
    (tmp_path / "victim.txt").write_text("precious\n")
    root = tmp_path / "c"
    store = cache.Store.open(root, 1 << 30)
    (root / cache.HITS).symlink_to("../victim.txt")
    store.hit("k" * 64, "wasmtime")
    store.fold_hits()
    store.close()
    assert (tmp_path / "victim.txt").read_text() == "precious\n"


# Red team 3: what a project's cache folder can hold besides links to files.
KEY = "ab" + "0" * 62


@pytest.mark.parametrize("kind", ["fifo", "sparse", "link"])
def test_cache_verify_opens_a_planted_code_file_as_a_load_does(cli, project, kind):
    """On 0b0f967 `cache verify` read code files with a plain open(): a FIFO planted as an
    entry hung it for ever, a sparse file claiming 64 GiB was read into a buffer of that
    size (MemoryError, exit 100), and a link was followed to the file it names."""
    import os

    folder = project / ".wc" / "code" / "ab"
    folder.mkdir(parents=True)
    path = folder / (KEY + cache.CODE_SUFFIX)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "sparse":
        with open(path, "wb") as handle:
            handle.truncate(64 << 30)
    else:
        path.symlink_to(project.parent / "victim.txt")
    result = cli("cache", "verify", "--json", cwd=project, timeout=60)
    assert result.code == 0, result
    assert KEY in result.stdout and "Traceback" not in result.stderr, result
    assert not os.path.lexists(path)  # removed: the link itself, not what it names
    assert (project.parent / "victim.txt").read_text() == "precious\n"


def test_a_linked_code_folder_is_neither_written_nor_pruned_through(project):
    """`code/ab -> ../../outside` (git keeps links): entries of keys starting with `ab`
    were written there, and `cache prune` deleted the `.*.tmp` files it found there."""
    import os
    import time

    outside = project.parent / "outside"
    outside.mkdir()
    stale = outside / ".notes.tmp"
    stale.write_text("mine\n")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    (project / ".wc" / "code").mkdir()
    (project / ".wc" / "code" / "ab").symlink_to("../../../outside")
    store = cache.Store.open(project / ".wc", 1 << 30)
    try:
        with pytest.raises(cache.CacheUnavailable, match="symbolic link"):
            store.write_blob(KEY, b"x" * 100)
        cache.prune(store)
    finally:
        store.close()
    assert sorted(p.name for p in outside.iterdir()) == [".notes.tmp"]


def test_a_planted_hit_journal_cannot_break_json_or_pin_an_entry(cli, project):
    """Red team 3: `KEY wasmtime inf` lines in a project's hits.log made the entry's
    last use Infinity: `cache list --json` printed it (not JSON), and `cache prune
    --older-than` never removed the entry."""
    import json

    (project / "sandbox.toml").write_text('[runtime]\ncache_dir = ".wc"\ncache_min_size = 0\n')
    assert cli("run", "tool.wasm", cwd=project).code == 0
    key = next((project / ".wc" / "code").glob("??/*.entry")).name[: -len(cache.CODE_SUFFIX)]
    lines = [f"{key} wasmtime {when}\n" for when in ("inf", "nan", "-inf", "1e308", "-5")]
    with open(project / ".wc" / cache.HITS, "a") as journal:
        journal.writelines(lines)
    listed = cli("cache", "list", "--json", cwd=project)

    def refuse(name):
        raise AssertionError(f"{name} in cache list --json")

    entries = json.loads(listed.stdout, parse_constant=refuse)["entries"]
    assert len(entries) == 1 and entries[0]["last_used"] < 1e12, entries
    pruned = cli("cache", "prune", "--older-than", "0s", "--json", cwd=project)
    assert json.loads(pruned.stdout)["removed"] == 1, pruned


PLANTED_RECORDS = [
    {"size": "huge", "last_used": "x", "created": None, "hits": "many", "module": "str"},
    {"size": 1e999, "last_used": 1e999, "module": {"name": ["x"], "sha256": 5, "size": "q"}},
    {"size": -(10**30), "native_size": "z", "module": None, "backend": {"x": 1}},
    [1, 2, 3],
]


def test_planted_records_are_absent_not_internal_errors(cli, project):
    """Red team 3: a project's `.wc/cache.db` with records of the wrong shape (diskcache
    rows hold any JSON text) made every `cache` command, `cache clear` included, and
    each `run` that missed (it evicts) end with an internal error, exit 100."""
    import json

    store = cache.Store.open(project / ".wc", 1 << 30)
    for n, record in enumerate(PLANTED_RECORDS):
        store.db.set("m:" + str(n) * 64, json.dumps(record))
    store.close()
    (project / "sandbox.toml").write_text('[runtime]\ncache_dir = ".wc"\ncache_min_size = 0\n')
    for argv in (["run", "tool.wasm"], ["run", EXAMPLES / "add.wat", "add", "1", "2"]):
        result = cli(*argv, cwd=project)
        assert result.code == 0 and "internal error" not in result.stderr, result
    for command in ("list", "stats", "verify", "prune", "clear"):
        result = cli("cache", command, "--json", cwd=project)
        assert result.code == 0 and "internal error" not in result.stderr, (command, result)


def test_a_planted_records_module_digest_names_no_file_outside_the_cache(tmp_path):
    """Red team (round 16, against `cache clear --module`, which removes the facts record
    named by a record's module BLAKE3): a planted row naming "../../victim" deleted
    victim.facts outside the cache, and one naming a list made `clear` and `prune` end
    in an internal error. A record whose digest is not one is absent."""
    import json

    victim = tmp_path / "victim.facts"
    victim.write_text("not the cache's")
    store = cache.Store.open(tmp_path / "wc", 1 << 30)
    try:
        traversal = "../" * 40 + str(victim)[1 : -len(".facts")]
        planted = {"a": traversal, "b": [1], "c": {"x": 1}, "d": "A" * 64}
        for letter, digest in planted.items():
            key = letter * 64
            record = {"module": {"sha256": letter * 64, "blake3": digest}, "size": 1}
            store.db.set("m:" + key, json.dumps(record))
            code = store.code_path(key)
            code.parent.mkdir(parents=True, exist_ok=True)
            code.write_bytes(b"planted")
            assert store.record(key) is None, digest
        for letter in planted:
            assert cache.clear(store, module_sha=letter * 64) == {"removed": 0, "freed": 0}
        cache.prune(store)
    finally:
        store.close()
    assert victim.read_text() == "not the cache's"


def test_planted_keys_and_linked_code_folders_delete_nothing_outside(tmp_path):
    """Red team round 16: record keys are file names (code/KEY[:2]/KEY.entry) and were not
    checked, so a planted row "m:../../outside/x" had `verify`, `prune` and `clear`
    delete outside/x.entry and x.verified; a code/NA folder planted as a link to
    elsewhere had `clear` delete the entry, memo and facts record there; a NUL in a key
    ended them in an internal error."""
    import json

    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "wc"
    store = cache.Store.open(root, 1 << 30)
    try:
        code = root / cache.CODE_DIR
        code.mkdir(exist_ok=True)
        linked, filed = "ab" + "1" * 62, "cd" + "2" * 62
        (code / "ab").symlink_to(outside)  # a code folder that is a link
        (code / "cd").symlink_to(outside)
        victims = [outside / f"{linked}{cache.CODE_SUFFIX}", outside / f"{linked}.verified"]
        victims += [outside / f"{filed}.facts", outside / f"trav{cache.CODE_SUFFIX}"]
        victims += [outside / "trav.verified"]
        for victim in victims:
            victim.write_text("not the cache's")
        sha = "5" * 64
        rows = {
            linked: {"module": {"sha256": sha, "blake3": filed}, "size": 1},
            filed: {"module": {"sha256": sha, "blake3": linked}, "size": 1},
            "../" * 3 + "outside/trav": {"module": {"sha256": sha}, "size": 1},
            "ef\0" + "3" * 61: {"module": {"sha256": sha}, "size": 1},
        }
        for key, record in rows.items():
            store.db.set("m:" + key, json.dumps(record))
        cache.verify(store)
        cache.prune(store, older_than=0)
        for key, record in rows.items():
            store.db.set("m:" + key, json.dumps(record))
        cache.clear(store, module_sha=sha)
        cache.clear(store, backend="wasmtime")
    finally:
        store.close()
    assert all(victim.read_text() == "not the cache's" for victim in victims)


def _entry_folder(project):
    """The project's cache after one cached run: (its code/NA folder, the entry's name)."""
    entries = sorted((project / ".wc" / cache.CODE_DIR).glob("*/*" + cache.CODE_SUFFIX))
    assert len(entries) == 1, entries
    return entries[0].parent, entries[0].name


@pytest.mark.parametrize("command", ["verify", "prune", "clear-module", "clear", "list"])
def test_a_file_in_place_of_a_code_folder_is_no_internal_error(cli, project, command):
    """Left from round 16 (dac3ea4): a file planted where `code/NA` goes ended `cache
    verify`, `prune` and `clear --module` in an internal error (NotADirectoryError, exit
    100). Now no entry is there: the record goes, the file stays, the run warns."""
    assert cli("run", "tool.wasm", cwd=project).code == 0
    folder, _ = _entry_folder(project)
    shutil.rmtree(folder)
    folder.write_text("in the way\n")
    argv = {
        "verify": ["verify"],
        "prune": ["prune", "--older-than", "0s"],
        "clear-module": ["clear", "--module", "tool.wasm"],
        "clear": ["clear"],
        "list": ["list"],
    }[command]
    result = cli("cache", *argv, cwd=project)
    assert result.code == 0, result
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    if command == "verify":
        assert "Not a directory" in result.stdout, result
    run = cli("run", "tool.wasm", cwd=project)
    assert run.code == 0 and "internal error" not in run.stderr, run


def test_an_entry_is_never_read_through_a_code_folder_that_is_a_link(cli, project):
    """Left from round 16: a `code/NA` folder planted as a link was followed by the
    reads (a run's load, `cache verify`, records and memos), so an entry, a FIFO or a
    device elsewhere was opened. Here the link leads to the project's own authentic entry,
    moved out: a read through the link would find it good (verify: "ok", run: a hit)."""
    import json

    assert cli("run", "tool.wasm", cwd=project).code == 0
    folder, name = _entry_folder(project)
    outside = project.parent / "outside"
    shutil.move(str(folder), str(outside))
    folder.symlink_to(outside)
    run = cli("run", "tool.wasm", "--json", cwd=project)
    assert run.code == 0, run
    assert "cache unavailable" in run.stderr and "Not a directory" in run.stderr, run
    # (the whole path, not the name relative to the folder opened: "Not a directory: 01")
    assert f"{folder} (a file or a symbolic link where a folder belongs)" in run.stderr, run
    verified = cli("cache", "verify", "--json", cwd=project)
    assert verified.code == 0, verified
    report = json.loads(verified.stdout)
    assert report["ok"] == 0 and any(b["key"] == name[:64] for b in report["bad"]), report
    assert (outside / name).is_file()  # read through nothing, deleted through nothing


# Red team round 17: writes and removals by path name, and what a clone can carry.
@pytest.mark.parametrize("level", ["code/ab", "code"])
@pytest.mark.parametrize("command", ["verify", "prune"])
def test_removals_never_follow_a_folder_swapped_for_a_link(tmp_path, monkeypatch, command, level):
    """On 2651fe5 `cache verify` removed a bad facts record, and `cache prune` an old
    temporary file, by path name: `code/ab` swapped for a link between the listing and
    the unlink had them delete the same names wherever the link led (103 of 300 files).
    On 3d984a8 the same with `code` itself swapped (red team round 18). The swap is made
    once ``store._code_files`` has listed the files (a racing process, made
    deterministic)."""
    import os
    import time

    from wasmsbx.native import recorded

    root, outside = tmp_path / "wc", tmp_path / "outside"
    (outside / "ab").mkdir(parents=True)
    store = cache.Store.open(root, 1 << 30)
    try:
        code = root / cache.CODE_DIR
        (code / "ab").mkdir(parents=True)
        names = ["ab" + "7" * 62 + ".facts", ".old.1.2.tmp"]
        old = time.time() - 3600
        for name in names:
            for where in (code / "ab", outside / "ab"):
                (where / name).write_text("bad\n")
                os.utime(where / name, (old, old))
        swapped = root / level
        target = outside / "ab" if level == "code/ab" else outside
        listed = store._code_files
        when = "*" + recorded.SUFFIX if command == "verify" else ".*.tmp"

        def racing(pattern):
            found = list(listed(pattern))
            if pattern == when and not swapped.is_symlink():
                swapped.rename(swapped.with_name(swapped.name + ".moved"))
                swapped.symlink_to(target)
            yield from found

        monkeypatch.setattr(store, "_code_files", racing)
        if command == "verify":
            cache.verify(store)
        else:
            cache.prune(store)
    finally:
        store.close()
    assert sorted(p.name for p in (outside / "ab").iterdir()) == sorted(names)


def test_a_write_lands_in_the_folder_checked_not_where_its_name_leads_later(tmp_path):
    """On 2651fe5 entries, records and memos were checked with lstat(), then created and
    renamed by path name: a folder swapped for a link in between received the file (the
    red team got a whole entry written into a folder of its choosing in 36 runs)."""
    import os

    from wasmsbx.native import recorded

    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "wc").mkdir()
    folder = tmp_path / "wc" / cache.CODE_DIR / "ab"
    where = recorded.open_code_folder(str(folder))
    try:
        folder.rename(folder.with_name("ab.moved"))
        folder.symlink_to(outside)
        recorded.write_in_folder(where, "x.facts", b"data", "x")
    finally:
        os.close(where)
    assert list(outside.iterdir()) == []
    assert (folder.with_name("ab.moved") / "x.facts").read_bytes() == b"data"
    assert recorded.write_small(str(folder / "y.facts"), b"data", "y") is False
    assert list(outside.iterdir()) == []


def test_a_folder_named_like_a_record_is_no_internal_error(cli, project):
    """A clone can carry `code/ab/x.facts/` (a folder): `cache verify` ended in an
    internal error (IsADirectoryError) when it removed the "record"."""
    planted = project / ".wc" / cache.CODE_DIR / "ab" / ("ab" + "1" * 62 + ".facts")
    planted.mkdir(parents=True)
    (planted / "keep").write_text("x")
    for argv in (["verify"], ["prune", "--older-than", "0s"], ["clear"]):
        result = cli("cache", *argv, cwd=project)
        assert result.code == 0 and "internal error" not in result.stderr, (argv, result)


def test_a_hit_journal_with_another_name_is_never_written_nor_emptied(tmp_path):
    """`hits.log` made a hard link to a file elsewhere (same file system): a hit appended
    to the file and `cache list` (a fold) emptied it."""
    import os

    victim = tmp_path / "precious.txt"
    victim.write_text("precious\n")
    root = tmp_path / "c"
    store = cache.Store.open(root, 1 << 30)
    try:
        os.link(victim, root / cache.HITS)
        store.hit("k" * 64, "wasmtime")
        cache.flush_hits()
        store.fold_hits()
    finally:
        store.close()
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("kind", ["fifo", "file"])
def test_cache_clear_removes_what_stands_in_place_of_the_code_folder(cli, project, kind):
    """A FIFO at `code` hung `cache clear` for ever (removing the folder opened it and
    waited for a writer); a file there was left, so the cache stayed unusable."""
    import os

    assert cli("run", "tool.wasm", cwd=project).code == 0
    code = project / ".wc" / cache.CODE_DIR
    shutil.rmtree(code)
    if kind == "fifo":
        os.mkfifo(code)
    else:
        code.write_text("in the way\n")
    result = cli("cache", "clear", cwd=project, timeout=60)
    assert result.code == 0, result
    assert not os.path.lexists(code)
    again = cli("run", "tool.wasm", cwd=project)
    assert again.code == 0 and "cache unavailable" not in again.stderr, again


@pytest.mark.parametrize(
    "argv", [["prune", "--older-than", "0s"], ["verify"], ["clear", "--module", "tool.wasm"]]
)
def test_a_cache_file_that_cannot_be_removed_is_an_io_error(project, monkeypatch, argv):
    """A folder without permissions (seen as an unprivileged user: chmod 300 or 500 on
    a code folder) ended `cache prune` in an internal error (PermissionError, exit 100)."""
    from .conftest import run_main

    assert run_main("run", "tool.wasm", cwd=project).code == 0
    if argv[0] == "verify":  # (a bad entry to remove)
        entry = next((project / ".wc" / cache.CODE_DIR).glob("*/*" + cache.CODE_SUFFIX))
        entry.write_bytes(b"\0" * 200)

    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache, "_remove_file", refused)
    result = run_main("cache", *argv, cwd=project)
    assert result.code == 105, result
    assert "cannot clean the cache" in result.stderr and "hint:" in result.stderr
    assert "internal error" not in result.stderr
    # The entry's record stays with its file (it was deleted first, then the file failed)
    listed = run_main("cache", "list", "--json", cwd=project)
    assert "tool.wasm" in listed.stdout, listed


def test_cache_clear_removes_a_link_planted_where_the_cache_writes(cli, project):
    """Every command refuses a cache holding `code -> elsewhere` and its hint says `cache
    clear` repairs it, but `cache clear` refused it too (red team round 18)."""
    outside = project.parent / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine\n")
    (project / ".wc" / cache.CODE_DIR).symlink_to(outside)
    refused = cli("cache", "list", cwd=project)
    assert refused.code == 105 and "cache clear" in refused.stderr, refused
    cleared = cli("cache", "clear", cwd=project)
    assert cleared.code == 0 and "removed symbolic links" in cleared.stderr, cleared
    assert not (project / ".wc" / cache.CODE_DIR).is_symlink()
    assert (outside / "keep").read_text() == "mine\n"
    run = cli("run", "tool.wasm", cwd=project)
    assert run.code == 0 and "cache unavailable" not in run.stderr, run


def test_cache_clear_that_cannot_remove_the_code_keeps_the_records(project, monkeypatch):
    """A code folder that cannot be removed (permissions) made `cache clear` empty the
    database first and then fail: the entries stayed, unlisted. Now the records go only
    once the code has gone."""
    from wasmsbx import fstree

    from .conftest import run_main

    assert run_main("run", "tool.wasm", cwd=project).code == 0
    monkeypatch.setattr(fstree, "remove_tree", lambda *a, **k: False)
    result = run_main("cache", "clear", cwd=project)
    assert result.code == 105 and "could not remove everything" in result.stderr, result
    listed = run_main("cache", "list", "--json", cwd=project)
    assert "tool.wasm" in listed.stdout, listed
