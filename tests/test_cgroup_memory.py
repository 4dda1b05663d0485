"""A compile under a memory cgroup's limit ends with 117, not the OOM killer's 137.

Round 34 (L11): in a container below the compile bound (2 GiB), the command line's
in-process compile, watched for growth up to that bound, was SIGKILLed by the kernel
first: exit 137, no error line. The watch now allows only what the group has left.
The end-to-end test makes a cgroup v1 memory group (root, a writable cgroupfs);
elsewhere it skips, and the unit tests read made-up cgroup files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from wasmsbx.backends import cgroup

from .test_compile_memory import nested_loops_wat

wasmtime = pytest.importorskip("wasmtime")


def _fake(tmp_path, monkeypatch, proc: str, files: dict) -> None:
    (tmp_path / "proc").write_text(proc)
    for rel, text in files.items():
        path = tmp_path / "fs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/self/cgroup":
            path = tmp_path / "proc"
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cgroup, "open", fake_open, raising=False)
    monkeypatch.setattr(cgroup, "ROOT", str(tmp_path / "fs"))


def test_v2_takes_the_tightest_limit_on_the_way_up(tmp_path, monkeypatch):
    _fake(
        tmp_path,
        monkeypatch,
        "0::/a/b\n",
        {
            "a/b/memory.max": "max\n",
            "a/b/memory.current": "100\n",
            "a/memory.max": "5000\n",
            "a/memory.current": "1000\n",
            "memory.max": "max\n",
        },
    )
    assert cgroup.headroom() == 4000


def test_v1_and_a_namespaced_path(tmp_path, monkeypatch):
    # the path /proc names is not under the mount (a cgroup namespace): the mount's own
    # files are the group's
    _fake(
        tmp_path,
        monkeypatch,
        "12:cpu:/x\n4:memory:/docker/abc\n",
        {
            "memory/memory.limit_in_bytes": str(300 << 20),
            "memory/memory.usage_in_bytes": str(100 << 20),
        },
    )
    assert cgroup.headroom() == 200 << 20


def test_file_page_cache_counts_as_room(tmp_path, monkeypatch):
    # red team rounds 36 and 37: a file's page cache in a 1 GiB group, inactive or
    # active, refused a compile the kernel would have made room for (it drops it first)
    _fake(
        tmp_path,
        monkeypatch,
        "4:memory:/g\n",
        {
            "memory/g/memory.limit_in_bytes": str(1 << 30),
            "memory/g/memory.usage_in_bytes": str(950 << 20),
            "memory/g/memory.stat": (
                f"cache 1\ntotal_inactive_file {600 << 20}\nx y\n"
                f"total_active_file {300 << 20}\ntotal_active_anon 7\n"
            ),
        },
    )
    assert cgroup.headroom() == (1 << 30) - (50 << 20)
    _fake(
        tmp_path,
        monkeypatch,
        "0::/g\n",
        {
            "g/memory.max": "1000\n",
            "g/memory.current": "900\n",
            "g/memory.stat": "anon 100\ninactive_file 800\nactive_file 50\n",
        },
    )
    assert cgroup.headroom() == 950


def test_the_watch_never_allows_more_than_is_left(monkeypatch):
    # round 36: a 16 MiB floor let a compile in a nearly full group grow past it (137)
    from wasmsbx.backends import compiling, deadline

    class Watch:
        memory = None

    monkeypatch.setattr(deadline.KEEPER, "hard_stop", lambda error: None)
    monkeypatch.setattr(deadline, "resident_bytes", lambda: 0)
    for room in (1 << 20, 10 << 20, 100 << 20, 1 << 30):
        monkeypatch.setattr(cgroup, "headroom", lambda room=room: room)
        watch = Watch()
        compiling.watch_memory(watch, 1000)
        assert 0 < watch.memory[0] < room
        assert "memory cgroup" in str(watch.memory[1]())
    monkeypatch.setattr(cgroup, "headroom", lambda: 64 << 30)  # (more than the bound)
    watch = Watch()
    compiling.watch_memory(watch, 1000)
    assert watch.memory[0] == compiling.WORKER_MEMORY


def test_no_limit_is_none(tmp_path, monkeypatch):
    _fake(
        tmp_path,
        monkeypatch,
        "4:memory:/\n0::/\n",
        {
            "memory/memory.limit_in_bytes": "9223372036854771712\n",
            "memory/memory.usage_in_bytes": "5\n",
            "memory.max": "max\n",
        },
    )
    assert cgroup.headroom() is None
    _fake(tmp_path, monkeypatch, "garbage\n::\n1:memory:relative\n", {})
    assert cgroup.headroom() is None


def _make_group(limit: int):
    base = "/sys/fs/cgroup/memory"
    if os.geteuid() != 0 or not os.path.isfile(os.path.join(base, "cgroup.procs")):
        pytest.skip("needs root and a cgroup v1 memory controller to make a group")
    folder = os.path.join(base, f"wasmsbx-test-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(folder)
        with open(os.path.join(folder, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here ({exc})")
    return folder


def test_a_compile_in_a_small_group_ends_with_117(tmp_path):
    module = tmp_path / "loops.wasm"
    module.write_bytes(bytes(wasmtime.wat2wasm(nested_loops_wat(50, 1000))))  # ~600 MB
    folder = _make_group(300 << 20)
    procs = os.path.join(folder, "cgroup.procs")

    def join() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "wasmsbx", "run", str(module), "f", "--no-cache"],
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=join,
            cwd=tmp_path,
        )
    finally:
        try:
            os.rmdir(folder)
        except OSError:  # (a process still in it: a compile worker, until it ends idle)
            pass
    assert proc.returncode == 117, proc
    assert "memory cgroup" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
