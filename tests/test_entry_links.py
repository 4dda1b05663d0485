"""Red team 147: a cache entry with a second name (a hard link, as a `cp -al` or
`rsync --link-dest` backup of the home folder leaves) in a folder a guest is granted
read-write. The entry was mapped where it lies, and a mapping shows what is written to
the file: the guest wrote int3 over its own native code as it ran (SIGTRAP, exit 133;
with x86 code of its choosing, the host ran it). Such an entry is copied now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIBBLE = """;; A WASI guest given a folder (as its first preopen, fd 3) that holds e.entry: it
;; writes int3 (0xCC) over 64 KiB of that file from offset 4096, then calls on.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_pwrite"
    (func $pwrite (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "e.entry")
  (func $work (param $n i32) (result i32)
    (local $acc i32)
    (loop $l
      (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 31)) (local.get $n)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $n) (i32.const 0))))
    (local.get $acc))
  (func (export "_start")
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 7) (i32.const 0)
                    (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 16))
      (then (call $exit (i32.const 3))))
    (memory.fill (i32.const 1024) (i32.const 0xCC) (i32.const 65536))
    (i32.store (i32.const 32) (i32.const 1024))
    (i32.store (i32.const 36) (i32.const 65536))
    (if (call $pwrite (i32.load (i32.const 16)) (i32.const 32) (i32.const 1) (i64.const 4096)
                      (i32.const 40))
      (then (call $exit (i32.const 4))))
    (drop (call $work (i32.const 1000)))
    (call $exit (i32.const 0))))
"""


@pytest.fixture
def home(tmp_path):
    env = dict(os.environ)
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        WASMSBX_TRUST_DIR=str(tmp_path / "trust"),
    )
    env.pop("WASMSBX_CACHE_DIR", None)
    return env


def _run(*args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "wasmsbx", "run", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_a_guest_cannot_write_its_entry_through_a_hard_link(home, tmp_path):
    guest = tmp_path / "scribble.wat"
    guest.write_text(SCRIBBLE)
    (tmp_path / "c0.toml").write_text("[runtime]\ncache_min_size = 0\n")
    backup = tmp_path / "backup"
    backup.mkdir()
    made = _run(guest, "--policy", "c0.toml", env=home, cwd=tmp_path)
    assert made.returncode == 3, made.stderr  # (no folder granted: path_open failed)
    (entry,) = (Path(home["XDG_CACHE_HOME"]) / "wasmsbx" / "code").glob("*/*.entry")
    os.link(entry, backup / "e.entry")
    hit = _run(guest, "--policy", "c0.toml", env=home, cwd=tmp_path)
    assert hit.returncode == 3, hit.stderr
    attack = _run(guest, "--policy", "c0.toml", "--dir", backup, env=home, cwd=tmp_path)
    assert attack.returncode == 0, attack.stderr  # (133: it ran the int3 it wrote)
    # The entry it wrote is no longer authentic: the next run compiles the module again.
    again = _run(guest, "--policy", "c0.toml", "--dir", backup, env=home, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
