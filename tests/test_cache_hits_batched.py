"""Cache hits are kept in memory and written to the hit journal in batches
(native.cache.flush_hits): a cold start writes no file. They are written when there are
HITS_BATCH of them, when the oldest is HITS_DELAY seconds old, when the process reads the
records, at exit (atexit, and the commands and workers that leave with os._exit), never
twice (a forked child does not write its parent's), and never through a link."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wasmsbx.native import cache
from wasmsbx.runner import Sandbox

from .cache_helpers import hit_from_threads, make_policy, new_run_sandbox

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


def journal(policy) -> bytes:
    path = cache.resolve_dir(policy)[0] / cache.HITS
    return path.read_bytes() if path.exists() else b""


def settled(add, policy) -> int:
    """One sandbox of ``add`` (a miss, or a hit), every hit written: the journal's lines."""
    new_run_sandbox(add, policy)
    cache.flush_hits()
    return len(journal(policy).splitlines())


def test_a_hit_writes_nothing_until_the_hits_are_flushed(add):
    policy = make_policy()
    assert new_run_sandbox(add, policy).cache_state == "miss"
    cache.flush_hits()
    before = journal(policy)
    assert new_run_sandbox(add, policy).cache_state == "hit"
    assert journal(policy) == before, "a cold start wrote the journal"
    cache.flush_hits()
    lines = journal(policy)[len(before) :].splitlines()
    assert len(lines) == 1 and len(lines[0].split()) == 3
    cache.flush_hits()  # nothing pending: nothing written again
    assert journal(policy)[len(before) :].splitlines() == lines


def test_reading_the_records_counts_the_hits_kept_in_memory(add):
    policy = make_policy()
    for _ in range(3):
        new_run_sandbox(add, policy)
    store = cache.open_store(policy)
    try:
        (record,) = cache.entries(store)
        assert record["hits"] == 2 and cache.stats(store)["hits"] == 2
    finally:
        store.close()


def test_a_batch_is_written_when_full(add, monkeypatch):
    monkeypatch.setattr(cache, "HITS_BATCH", 3)
    policy = make_policy()
    start = settled(add, policy)
    for _ in range(2):
        new_run_sandbox(add, policy)
    assert len(journal(policy).splitlines()) == start
    new_run_sandbox(add, policy)  # the third: the batch is full
    assert len(journal(policy).splitlines()) == start + 3


def test_a_hit_older_than_the_delay_is_written_with_the_next(add, monkeypatch):
    monkeypatch.setattr(cache, "HITS_DELAY", 0.0)
    policy = make_policy()
    start = settled(add, policy)
    new_run_sandbox(add, policy)
    assert len(journal(policy).splitlines()) == start + 1


def test_hits_from_many_threads_are_each_written_once(add, monkeypatch):
    monkeypatch.setattr(cache, "HITS_BATCH", 7)
    policy = make_policy()
    start = settled(add, policy)
    store = cache.shared_store(policy, None)
    ((key, _),) = store.code_keys()

    hit_from_threads(store, key, threads=8, each=50)
    cache.flush_hits()
    assert len(journal(policy).splitlines()) == start + 400


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_write_its_parents_hits(add):
    policy = make_policy()
    Sandbox(add, policy)
    cache.flush_hits()
    start = len(journal(policy).splitlines())
    new_run_sandbox(add, policy)  # one pending hit in this process
    pid = os.fork()
    if pid == 0:  # the child: writes what it has (nothing), then leaves as workers do
        try:
            cache.flush_hits()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert len(journal(policy).splitlines()) == start
    cache.flush_hits()
    assert len(journal(policy).splitlines()) == start + 1


def test_a_link_planted_at_the_journal_is_never_written_through(add, tmp_path):
    policy = make_policy()
    new_run_sandbox(add, policy)
    cache.flush_hits()
    root = cache.resolve_dir(policy)[0]
    (root / cache.HITS).unlink(missing_ok=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (root / cache.HITS).symlink_to(victim)
    new_run_sandbox(add, policy)  # pending, then written at flush: through no link
    cache.flush_hits()
    assert victim.read_bytes() == b"precious\n"


def test_commands_write_their_hits_although_they_leave_with_os_exit(add, tmp_path):
    """`wasmsbx run` leaves with os._exit (atexit does not run): its hit is written."""
    env = {**os.environ}
    run = [sys.executable, "-m", "wasmsbx", "run", str(add), "add", "1", "2"]
    policy = tmp_path / "all.toml"
    policy.write_text("[runtime]\ncache_min_size = 0\n")
    run += ["--policy", str(policy)]
    for _ in range(3):
        proc = subprocess.run(run, capture_output=True, text=True, env=env)
        assert (proc.returncode, proc.stdout) == (0, "3\n"), proc.stderr
    stats = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "cache", "stats", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert stats.returncode == 0, stats.stderr
    assert '"hits": 2' in stats.stdout and '"misses": 1' in stats.stdout


def test_a_library_process_writes_its_hits_at_exit(add, tmp_path):
    """A Python program that made sandboxes and exits normally (atexit)."""
    script = (
        "import sys\n"
        "from wasmsbx import Sandbox, policy\n"
        "p = policy.defaults()\n"
        "policy.override(p, 'runtime.cache_min_size', 0)\n"
        "for _ in range(3):\n"
        "    from wasmsbx.runner import shared; shared.clear()\n"
        "    Sandbox(sys.argv[1], p)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(add)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(journal(make_policy()).splitlines()) == 2


def test_hits_are_not_flushed_from_a_cache_module_another_thread_is_importing(monkeypatch):
    """`wasmsbx watch` stopped by Ctrl-C while its run was importing native.cache: the
    command's exit (native.flush_hits) found the module half made, without flush_hits,
    and ended in "internal error: AttributeError ... partially initialized module",
    exit 1 (cic69, Python 3.9). A module being imported has recorded no hit yet."""
    import importlib.machinery
    import types

    import wasmsbx.native

    half = types.ModuleType("wasmsbx.native.cache")
    half.__spec__ = importlib.machinery.ModuleSpec("wasmsbx.native.cache", None)
    half.__spec__._initializing = True  # (as importlib marks it until exec_module ends)
    monkeypatch.setitem(sys.modules, "wasmsbx.native.cache", half)
    wasmsbx.native.flush_hits()  # (no AttributeError)
    half.__spec__._initializing = False  # (made: its flush_hits is called, if it has one)
    half.flush_hits = lambda: calls.append(1)
    calls: list = []
    wasmsbx.native.flush_hits()
    assert calls == [1]


def test_a_journal_locked_by_another_is_given_up_not_waited_for(tmp_path, monkeypatch):
    """A hit journal's lock was waited on for ever: a stopped or stuck process holding it
    (or a child that inherited its descriptor) hung every later run and its exit, where
    the hits are flushed. It is waited on JOURNAL_WAIT seconds; then the hits go
    uncounted (statistics only)."""
    import fcntl
    import time

    monkeypatch.setattr(cache, "JOURNAL_WAIT", 0.2)
    journal = tmp_path / "hits.log"
    journal.write_bytes(b"")
    holder = os.open(journal, os.O_RDWR)
    waiter = os.open(journal, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        assert cache._flock(waiter) is False
        assert time.monotonic() - started < 10
        fcntl.flock(holder, fcntl.LOCK_UN)
        assert cache._flock(waiter) is True
    finally:
        os.close(holder)
        os.close(waiter)
