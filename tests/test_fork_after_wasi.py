"""Red team round 85: wasmtime's WASI does its I/O on a runtime whose threads a fork does
not copy. In a child forked after its parent had run a WASI guest that wrote, a guest's
first write waited for ever, past every timeout (the library has no hard stop). Such a
child refuses WASI guests at once, with a hint; guests without WASI run there as before.
Each case runs in a child process with a bound, so a hang fails the test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

WRITER = (
    '(module (import "wasi_snapshot_preview1" "fd_write"'
    " (func $w (param i32 i32 i32 i32) (result i32)))"
    ' (memory (export "memory") 1) (data (i32.const 16) "hello\\n")'
    ' (func (export "hi") (result i32) (i32.store (i32.const 0) (i32.const 16))'
    " (i32.store (i32.const 4) (i32.const 6))"
    " (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))"
)
PURE = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


def test_a_child_forked_after_wasi_ran_refuses_wasi_guests_and_runs_the_others():
    script = textwrap.dedent(
        f"""
        import os, wasmsbx
        from wasmsbx import errors, policy
        quiet = policy.from_dict({{"limits": {{"timeout": "2s"}}, "stdio": {{"stdout": "null"}}}})
        before = wasmsbx.Sandbox({WRITER.encode()!r}, quiet)
        print("parent", before.call("hi"), flush=True)
        pid = os.fork()
        if pid == 0:
            out = []
            for make in (lambda: before, lambda: wasmsbx.Sandbox({WRITER.encode()!r}, quiet)):
                try:
                    out.append(repr(make().call("hi")))
                except errors.UsageError as exc:
                    out.append("refused" if "forked" in exc.message and exc.hint else repr(exc))
            out.append(repr(wasmsbx.Sandbox({PURE.encode()!r}).call("add", 2, 3)))
            # (at exit: no wait for wasmtime's workers, which did not come along: 2 s)
            import time
            from wasmsbx.backends.wasmtime import teardown
            sleeps = []
            time.sleep = lambda s: sleeps.append(s)
            teardown.release()
            out.append(len(sleeps))
            print("child", out, flush=True)
            os._exit(0)
        print("status", os.waitpid(pid, 0)[1], flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "parent 0" in done.stdout, done  # (fd_write: errno 0)
    assert "child ['refused', 'refused', '5', 0]" in done.stdout, done
    assert "status 0" in done.stdout, done
