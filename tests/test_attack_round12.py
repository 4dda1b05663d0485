"""Red team round 12: cache hits kept in memory and written in batches (89b936f), and
round 11's fix for a discovered sandbox.toml's cache settings (42737bf).

Tests marked FINDING asserted the safe behaviour and failed on 42737bf; each is fixed
since. The others are attacks the change held."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wasmsbx import policy as policy_mod
from wasmsbx.native import cache

from .cache_helpers import hit_from_threads, make_policy, new_run_sandbox
from .conftest import GUESTS

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
HANG_GUARD = 60  # seconds: only turns a hang into a failure, never a timing assertion


def _root(policy=None) -> Path:
    return cache.resolve_dir(policy or make_policy())[0]


def _journal_lines(policy=None) -> list:
    path = _root(policy) / cache.HITS
    return path.read_bytes().splitlines() if path.is_file() else []


def _hits(policy=None, override=None) -> int:
    store = cache.open_store(policy or make_policy(), override)
    try:
        return cache.stats(store)["hits"]
    finally:
        store.close()


def _cli(*args, cwd=None, stdin=subprocess.DEVNULL, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wasmsbx", *[str(a) for a in args]],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def _finish(proc: subprocess.Popen) -> tuple:
    try:
        out, err = proc.communicate(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, out.decode(), err.decode() + "\n[HUNG: killed by the test]"
    return proc.returncode, out.decode(), err.decode()


def _all_policy(tmp_path: Path) -> Path:
    path = tmp_path / "all.toml"
    path.write_text("[runtime]\ncache_min_size = 0\n")
    return path


# ----------------------------------------------------------------- links and swaps


@pytest.mark.parametrize("target", ["foreign", "trust"])
def test_pending_hit_is_not_written_into_a_folder_swapped_in_after_the_hit(add, tmp_path, target):
    """FINDING, fixed since (new in 89b936f). A pending line remembers its Store, and flush_hits
    writes ``root/hits.log`` without prepare_dir's checks (tagged, not foreign, not the
    trust folder) or a look at _folder_state. If the cache folder is replaced by a link
    between the hit and the flush (which is now up to the process's exit, after the
    guest ran), the journal is created in whatever folder the link leads to: a
    non-empty folder that is no cache, or the trust folder itself. Before, the line was
    written at the hit, right after the folder was checked; any later load refuses
    that folder ("not a wasmsbx cache", "overlaps the trust folder")."""
    policy = make_policy()
    assert new_run_sandbox(add, policy).cache_state == "miss"
    cache.flush_hits()
    assert new_run_sandbox(add, policy).cache_state == "hit"  # pending
    root = _root(policy)
    if target == "trust":
        victim = Path(os.environ["WASMSBX_TRUST_DIR"])
        victim.mkdir(parents=True, exist_ok=True)
    else:
        victim = tmp_path / "victim"
        victim.mkdir()
    (victim / "precious").write_text("x")
    before = sorted(os.listdir(victim))
    os.rename(root, tmp_path / "old-cache")
    os.symlink(victim, root)
    try:
        cache.flush_hits()  # what atexit / cli.entry do later
        assert sorted(os.listdir(victim)) == before, (
            "hits.log written into a folder that is no cache"
        )
    finally:
        os.unlink(root)
        os.rename(tmp_path / "old-cache", root)
    # (the checks a load makes would have refused it)
    os.rename(root, tmp_path / "old-cache")
    os.symlink(victim, root)
    try:
        assert new_run_sandbox(add, policy).cache_state == "error"
    finally:
        os.unlink(root)
        os.rename(tmp_path / "old-cache", root)


def test_pending_hits_of_a_removed_cache_go_nowhere(add, tmp_path):
    """Held: the cache folder removed between the hit and the flush (rm -rf, another
    process's `cache clear` of a damaged cache): nothing is recreated, nothing raised."""
    import shutil

    policy = make_policy()
    new_run_sandbox(add, policy)
    new_run_sandbox(add, policy)
    shutil.rmtree(_root(policy))
    cache.flush_hits()
    assert not _root(policy).exists()


def test_a_folder_at_hits_log_does_not_change_the_cli_exit(add, tmp_path):
    """Held: a folder planted at hits.log (a project's cache): the exit flush fails
    quietly, `run` still prints 3 and exits 0, no traceback; `cache list` works."""
    pol = _all_policy(tmp_path)
    code, out, err = _finish(_cli("run", add, "add", "1", "2", "--policy", pol))
    assert code == 0, err
    (_root() / cache.HITS).mkdir()
    code, out, err = _finish(_cli("run", add, "add", "1", "2", "--policy", pol))
    assert (code, out) == (0, "3\n") and "Traceback" not in err, err
    code, out, err = _finish(_cli("cache", "list", "--json"))
    assert code == 0 and "Traceback" not in err, err


# ----------------------------------------------------------------- exits


def _fifo_journal(add: Path, tmp_path: Path) -> Path:
    pol = _all_policy(tmp_path)
    code, _, err = _finish(_cli("run", add, "add", "1", "2", "--policy", pol))
    assert code == 0, err
    os.mkfifo(_root() / cache.HITS)  # nobody ever opens the other end
    return pol


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs /proc/PID/wchan")
def test_ctrl_c_while_the_exit_flush_blocks_is_no_traceback(add, tmp_path):
    """FINDING, fixed since (new in 89b936f). cli.entry calls flush_hits after main()'s error
    boundary. When that flush blocks (a FIFO at hits.log, as below; or a journal lock
    held by another process) the user's Ctrl-C raises KeyboardInterrupt out of entry():
    a Python traceback, and the process dies of SIGINT instead of `error: interrupted`
    and exit 130. Before, the write happened inside main() and Ctrl-C gave exit 130."""
    pol = _fifo_journal(add, tmp_path)
    proc = _cli("run", add, "add", "1", "2", "--policy", pol)
    for _ in range(2000):  # until it sits in open() of the FIFO (or ends)
        if proc.poll() is not None or _wchan(proc.pid) in ("wait_for_partner", "fifo_open"):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    code, out, err = _finish(proc)
    assert "Traceback" not in err, err
    assert code in (0, 130), (code, err)


def test_a_fifo_at_hits_log_does_not_hang_a_cached_run(add, tmp_path):
    """FINDING, fixed since (older than 89b936f, same line moved): Store._journal opened
    hits.log with
    O_WRONLY and no O_NONBLOCK, so a FIFO planted there (a cache folder that came in a
    tarball, or put there by another local process) hangs every cached `wasmsbx run`
    forever: now after the result was printed, at the exit flush. Store.blob already
    opens entries with O_NONBLOCK for this reason; fold_hits' O_RDWR open does not
    block but its read() does (`cache list` hangs too)."""
    pol = _fifo_journal(add, tmp_path)
    code, out, err = _finish(_cli("run", add, "add", "1", "2", "--policy", pol))
    assert code == 0 and out == "3\n", (code, out, err)


def test_a_hard_stopped_run_keeps_its_cache_hit(tmp_path, isolated):
    """FINDING, fixed since (new in 89b936f). The deadline keeper's hard stop
    (cli._hard_stop: a guest
    blocked in a host call past --timeout, exit 112; or Ctrl-C of one, 130) leaves with
    os._exit from the keeper's thread and never calls flush_hits, so the run's cache
    hit is lost. Before, it was in hits.log before the guest started. A user whose
    module always ends this way (a server stopped by its timeout) sees 0 hits in
    `cache list`, and its entry is evicted first although it is used every time."""
    fsprobe = GUESTS / "fsprobe.wasm"
    code, _, err = _finish(_cli("run", fsprobe, "--timeout", "10m", "--", "sleep", "0"))
    assert code == 0, err
    read, write = os.pipe()  # stdin that never closes: the guest blocks in fd_read
    try:
        code, _, err = _finish(
            _cli("run", fsprobe, "--timeout", "1s", "--", "cat-stdin", stdin=read)
        )
    finally:
        os.close(read)
        os.close(write)
    assert code == 112, err
    assert _hits() == 1, "the hard-stopped run's cache hit was lost"


@pytest.mark.parametrize("ending", ["normal", "sys.exit(3)", "raise"])
def test_library_script_endings_write_their_hits(add, ending):
    """Held: a Python program ending normally, with sys.exit, or with an uncaught
    exception runs atexit: its hits are written."""
    tail = {"normal": "", "sys.exit(3)": "sys.exit(3)\n", "raise": "raise RuntimeError('x')\n"}
    script = (
        "import sys\n"
        "from wasmsbx import Sandbox, policy\n"
        "from wasmsbx.runner import shared\n"
        "p = policy.defaults()\n"
        "policy.override(p, 'runtime.cache_min_size', 0)\n"
        "for _ in range(3):\n"
        "    shared.forget_loaded()\n"
        "    Sandbox(sys.argv[1], p)\n" + tail[ending]
    )
    proc = subprocess.run([sys.executable, "-c", script, str(add)], capture_output=True, text=True)
    assert proc.returncode in (0, 1, 3), proc.stderr
    assert len(_journal_lines()) == 2


def test_batch_workers_write_their_hits(add, tmp_path):
    """Held: `run --batch -j 2` (forked workers leaving with os._exit) counts the same
    hits as before 89b936f (the parent's and the workers')."""
    pol = _all_policy(tmp_path)
    (tmp_path / "in.jsonl").write_text("[1,2]\n[3,4]\n[5,6]\n[7,8]\n")
    assert _finish(_cli("run", "--policy", pol, add, "add", "1", "2"))[0] == 0
    code, _, err = _finish(
        _cli("run", "--policy", pol, add, "add", "--batch", tmp_path / "in.jsonl", "-j", "2")
    )
    assert code == 0, err
    assert _hits() == 1


# ----------------------------------------------------------------- processes and threads


def _this_test_env(env: dict) -> None:
    """The test's cache and trust folders in a child: a forkserver's children inherit the
    environment of the server, which an earlier test of this worker may have started."""
    os.environ.update(env)


def _test_env() -> dict:
    return {k: os.environ[k] for k in ("WASMSBX_CACHE_DIR", "WASMSBX_TRUST_DIR")}


def _child_hits(path: str, n: int, env: dict) -> None:  # (module level: spawn imports it)
    from tests.cache_helpers import make_policy, new_run_sandbox

    _this_test_env(env)
    for _ in range(n):
        assert new_run_sandbox(path, make_policy()).cache_state == "hit"


def _pool_hit(job: tuple) -> str:
    from tests.cache_helpers import make_policy, new_run_sandbox

    path, env = job
    _this_test_env(env)
    return new_run_sandbox(path, make_policy()).cache_state


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_hits_made_in_multiprocessing_children_are_counted(add, method):
    """FINDING, fixed since (new in 89b936f) for fork and forkserver. multiprocessing's fork and
    forkserver children (Process, Pool, ProcessPoolExecutor) end with os._exit after
    running multiprocessing's own finalizers, not atexit, so every hit they make is
    lost (unless 64 pile up): a program that runs sandboxes in a process pool shows 0
    hits, and its busiest entries look idle to eviction. forkserver is the default
    start method from Python 3.14. Before, each hit was written at once. (spawn ends
    with sys.exit and runs atexit: held.)"""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method}")
    policy = make_policy()
    assert new_run_sandbox(add, policy).cache_state == "miss"
    cache.flush_hits()
    ctx = multiprocessing.get_context(method)
    child = ctx.Process(target=_child_hits, args=(str(add), 2, _test_env()))
    child.start()
    child.join()
    assert child.exitcode == 0
    with ctx.Pool(2) as pool:
        assert pool.map(_pool_hit, [(str(add), _test_env())] * 3) == ["hit"] * 3
        pool.close()
        pool.join()
    assert _hits(policy) == 5, f"hits of {method} children lost"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_thread_writes_the_journal_can_write_its_own(add, monkeypatch):
    """Found by this round (older than 89b936f: a fork from a thread while other
    threads hit deadlocked the first version of this test every run). Store._journal
    locks hits.log with flock(), which belongs to the open file description: a child
    forked while another thread held it inherited the locked descriptor, and its own
    first flush waited forever for it (and so, while that child lived, did every other
    process's flush and `cache list`). Fixed: a fork waits for a journal write under
    way (cache._JOURNAL_LOCK, taken by an os.register_at_fork hook). Here the writer
    holds the journal's flock until a fork has begun (an at-fork hook of this test, run
    before the cache's), then the fork goes ahead and the child writes its own hit."""
    policy = make_policy()
    new_run_sandbox(add, policy)
    cache.flush_hits()
    store = cache.shared_store(policy, None)
    ((key, _),) = store.code_keys()
    locked, forking = threading.Event(), threading.Event()
    real = cache._flock
    writer_thread: list = []

    def slow_flock(fd):
        got = real(fd)
        if writer_thread and threading.current_thread() is writer_thread[0]:
            locked.set()
            forking.wait(HANG_GUARD)  # hold the journal lock until a fork has begun
        return got

    monkeypatch.setattr(cache, "_flock", slow_flock)
    os.register_at_fork(before=forking.set)  # (runs before the cache's own hook)
    writer = threading.Thread(target=lambda: (store.hit(key, "parent"), cache.flush_hits()))
    writer_thread.append(writer)
    writer.start()
    assert locked.wait(HANG_GUARD)
    pid = os.fork()
    if pid == 0:  # the child: its own hit, written from a thread it can give up on
        code = 1
        try:
            done = threading.Event()

            def own() -> None:
                store.hit(key, "child")
                cache.flush_hits()
                done.set()

            threading.Thread(target=own, daemon=True).start()
            code = 0 if done.wait(30) else 3  # (a hang guard: 3 = still blocked in flock)
        finally:
            os._exit(code)
    writer.join()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, "the forked child hung on the journal lock it inherited"
    cache.flush_hits()
    labels = [line.split()[1] for line in _journal_lines(policy)]
    assert labels.count(b"parent") == 1 and labels.count(b"child") == 1


def test_folds_inside_flushes_from_many_threads_count_each_hit_once(add, monkeypatch):
    """A tiny fold size makes nearly every flush fold (fold_hits -> flush_hits ->
    _journal -> fold_hits) while 6 threads hit. Held: no deadlock, no hit written
    twice. FINDING, fixed since (older than 89b936f): about half the hits are not counted: see
    test_a_hit_folded_in_the_millisecond_it_was_made_is_counted (not a race of the
    batching: with the future-time filter widened by 1 ms all 360 are counted)."""
    monkeypatch.setattr(cache, "HITS_BATCH", 3)
    monkeypatch.setattr(cache, "HITS_FOLD_SIZE", 256)
    policy = make_policy()
    new_run_sandbox(add, policy)
    store = cache.shared_store(policy, None)
    ((key, _),) = store.code_keys()
    base = _hits(policy)

    hit_from_threads(store, key, threads=6, each=60)
    assert _hits(policy) == base + 360


def test_a_hit_folded_in_the_millisecond_it_was_made_is_counted(add, monkeypatch):
    """FINDING, fixed since (older than 89b936f). Store.hit writes the time as f"{time.time():.3f}",
    which rounds up half the time, and fold_hits drops every line later than its own
    time.time() ("a hit is never later than now"). A hit folded less than 0.5 ms after
    it was made (reading the records right after a run in the same process: this
    change's fold_hits flushes the process's own pending hits and reads them back at
    once; threads hitting while another folds) is silently not counted. Compare with
    the hit time truncated, or a margin of 1 ms in the filter."""

    class Frozen:  # one instant, half a millisecond past a whole millisecond
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def time() -> float:
            return 1_800_000_000.0006

    policy = make_policy()
    new_run_sandbox(add, policy)
    store = cache.shared_store(policy, None)
    ((key, _),) = store.code_keys()
    base = _hits(policy)
    monkeypatch.setattr(cache, "time", Frozen())
    store.hit(key, "wasmtime")  # "... 1800000000.001"
    assert _hits(policy) == base + 1, "a hit folded at once was dropped as from the future"


def test_pending_hits_stay_bounded_and_a_full_journal_stops_growing(add, monkeypatch):
    """Held: 20,000 hits never keep more than HITS_BATCH in memory, and a journal past
    HITS_MAX (its database unopenable) is not written."""
    policy = make_policy()
    new_run_sandbox(add, policy)
    store = cache.shared_store(policy, None)
    ((key, _),) = store.code_keys()
    most = 0
    for _ in range(20_000):
        store.hit(key, "wasmtime")
        most = max(most, len(cache._PENDING))
    assert most < cache.HITS_BATCH
    cache.flush_hits()
    monkeypatch.setattr(cache, "HITS_MAX", 1000)
    monkeypatch.setattr(cache, "HITS_FOLD_SIZE", 1 << 30)
    path = _root(policy) / cache.HITS
    path.write_bytes(b"x" * 1001)
    for _ in range(200):
        store.hit(key, "wasmtime")
    cache.flush_hits()
    assert path.stat().st_size == 1001


def test_clear_in_process_leaves_no_phantom_hits(add):
    """Held: a program with pending hits that clears its cache (cache.clear) does not
    write them into the emptied cache afterwards (clear reads the records first, which
    flushes and folds them)."""
    policy = make_policy()
    for _ in range(3):
        new_run_sandbox(add, policy)
    store = cache.open_store(policy)
    try:
        cache.clear(store)
    finally:
        store.close()
    cache.flush_hits()
    store = cache.open_store(policy)
    try:
        data = cache.stats(store)
    finally:
        store.close()
    assert (data["entries"], data["hits"]) == (0, 0)


# ----------------------------------------------------------------- round 11 re-check


def _project_with_hostile_cache_settings(tmp_path: Path, size: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "sandbox.toml").write_text(
        f'[runtime]\ncache_min_size = 0\ncache_dir = ".wc"\ncache_size = "{size}"\n'
    )
    (project / "x.wat").write_text(ADD.replace("i32.add", "i32.xor"))
    return project


def _fill_own_cache(tmp_path: Path, mine: Path) -> tuple:
    pol = _all_policy(tmp_path)
    names = []
    for op in ("add", "sub", "mul"):
        path = tmp_path / f"{op}.wat"
        path.write_text(ADD.replace("i32.add", f"i32.{op}"))
        code, _, err = _finish(
            _cli("run", "--policy", pol, "--cache-dir", mine, path, "add", "1", "2")
        )
        assert code == 0, err
        names.append(path.name)
    one = max(p.stat().st_size for p in mine.rglob("*.entry"))
    return names, one


def _names_in(mine: Path) -> list:
    code, out, err = _finish(_cli("cache", "list", "--json", "--cache-dir", mine))
    assert code == 0, err
    return sorted(e["module"]["name"] for e in json.loads(out)["entries"])


@pytest.mark.parametrize("how", ["run", "prune"])
def test_a_discovered_cache_size_never_applies_to_the_users_cache_dir_option(tmp_path, how):
    """FINDING, fixed since (a way around round 11's fix, 42737bf). cap_limits holds cache_size and
    cache_compress to the defaults only when the discovered policy names no cache_dir.
    A sandbox.toml that names one (`cache_dir = ".wc"`) keeps its `cache_size`, but
    `--cache-dir` (the user's choice) wins over the policy's cache_dir in resolve_dir:
    `wasmsbx run --cache-dir ~/mycache x.wat` or `wasmsbx cache prune --cache-dir
    ~/mycache` in the clone evicts every entry of the user's cache, with no warning."""
    mine = tmp_path / "mycache"
    names, one = _fill_own_cache(tmp_path, mine)
    project = _project_with_hostile_cache_settings(tmp_path, f"{one + 200}B")
    if how == "run":
        args = ("run", "--cache-dir", mine, "x.wat", "add", "1", "2")
    else:
        args = ("cache", "prune", "--cache-dir", mine)
    code, _, err = _finish(_cli(*args, cwd=project))
    assert code == 0, err
    left = _names_in(mine)
    assert set(names) <= set(left), f"the user's cache was evicted by a clone's policy: {left}"


def test_a_discovered_cache_dir_may_not_lead_to_the_users_cache(tmp_path):
    """Held: cache_dir = a link in the project to the user's cache, `..`, or the user's
    cache by absolute path is refused (confine() resolves links); cache_dir = "." is
    the project folder, which is no cache (_refuse_foreign), so nothing is written."""
    mine = Path(os.environ["WASMSBX_CACHE_DIR"])
    mine.mkdir(parents=True, exist_ok=True)
    project = tmp_path / "project"
    project.mkdir()
    (project / "link").symlink_to(mine)
    for value in ("link", str(mine), "..", "../cache"):
        (project / "sandbox.toml").write_text(
            f'[runtime]\ncache_dir = "{value}"\ncache_size = "1KiB"\n'
        )
        with pytest.raises(policy_mod.PolicyError):
            policy_mod.discover(cwd=project)
    (project / "sandbox.toml").write_text('[runtime]\ncache_dir = "."\ncache_size = "1KiB"\n')
    loaded = policy_mod.discover(cwd=project)
    with pytest.raises(cache.CacheUnavailable):
        cache.shared_store(loaded)
