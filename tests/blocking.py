"""A guest that blocks in a host call no deadline reaches in process: the open of a FIFO
nobody writes to, which waits in native open(2).

A WASI sleep no longer does (wasmtime: backends/wasmtime/poll.py ends it at the call's
deadline), so the tests of what happens to a call truly stuck in a host call (worker
replacement, the hard stop, a cluster's given-up calls) block this way instead.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

BLOCK_AT = 60000  # sleep(ms) with ms >= this opens the FIFO instead: blocked for good

# sleep(ms) -> ms: a WASI sleep of ms milliseconds (poll_oneoff, one relative monotonic
# clock), or, for ms >= BLOCK_AT, the open of "fifo" in its first grant (fd 3) for reading,
# which waits until someone opens the FIFO's other end.
BLOCK_MS_WAT = """
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "fifo")
  (func (export "sleep") (param $ms i32) (result i32)
    (if (i32.ge_u (local.get $ms) (i32.const 60000))
      (then
        (if (call $open (i32.const 3) (i32.const 0) (i32.const 256) (i32.const 4) (i32.const 0)
                        (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 300))
          (then (unreachable)))  ;; (no grant, no FIFO: a trap, never a quiet result)
        (return (local.get $ms))))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.mul (i64.extend_i32_u (local.get $ms)) (i64.const 1000000)))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (local.get $ms)))
"""


def fifo_dir(parent: Path) -> Path:
    """A folder holding the FIFO the guest opens (grant it: ``--dir-ro FOLDER``)."""
    folder = parent / "blocked"
    folder.mkdir()
    os.mkfifo(folder / "fifo")
    return folder


def release(folder: Path) -> None:
    """Let every open of the FIFO waiting now go on (the guest then reads end of file)."""
    fd = os.open(folder / "fifo", os.O_RDWR | os.O_NONBLOCK)  # (never waits, on Linux)
    os.close(fd)


@contextmanager
def fifo_grant(parent: Path):
    """``fifo_dir``, and at the end the FIFO's waiters let go (a thread left blocked in a
    worker would otherwise keep that process from ending)."""
    folder = fifo_dir(parent)
    try:
        yield folder
    finally:
        for _ in range(3):
            release(folder)


def release_later(folder: Path, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, release, (folder,))
    timer.daemon = True
    timer.start()
    return timer
