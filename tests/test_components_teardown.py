"""A Python program that ran WASI guests exits without wasmtime-py's tokio panic (#15).

wasmtime's WASI streams hand a dropped store's output callbacks to a tokio worker, which
frees them through Python; during interpreter finalization that thread cannot take the
GIL and the process printed "panic in a function that cannot unwind" (about 7 runs in 8
here before the fix). ``backends/wasmtime/teardown`` closes the stores at exit and waits
for the callbacks to be released.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from .component_guests import c_command

# A library user's program: stores made by wasmsbx's WASI setup (what every module and
# component run uses), the guest writes, the stores are still alive when it exits.
PROGRAM = """
import sys
import wasmtime, wasmtime.component as wc
from wasmsbx.backends.base import WasiSetup
from wasmsbx.backends.wasmtime.backend import _Budget, set_wasi

engine = wasmtime.Engine()
component = wc.Component(engine, open(sys.argv[1], "rb").read())
kept = []
for _ in range(3):
    store = wasmtime.Store(engine)
    setup = WasiSetup(argv=("c", "alloc", "1"), stdout="capture", stderr="capture")
    set_wasi(store, setup, _Budget(None, None), 30.0, None)
    linker = wc.Linker(engine)
    linker.add_wasip2()
    instance = linker.instantiate(store, component)
    run = instance.get_export_index(store, "wasi:cli/run@0.2.12")
    func = instance.get_func(store, instance.get_export_index(store, "run", run))
    func(store)
    func.post_return(store)
    kept.append(store)
print("done")
"""

RUNS = 5  # each one panicked with probability ~7/8 without the fix


def test_exit_after_component_runs_is_clean(tmp_path):
    script = tmp_path / "user.py"
    script.write_text(PROGRAM)
    wasm = c_command()
    for _ in range(RUNS):
        proc = subprocess.run(
            [sys.executable, str(script), str(wasm)], capture_output=True, timeout=120
        )
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0, err
        assert proc.stdout == b"done\n"
        assert "panic" not in err and "tokio" not in err, err


def in_a_fresh_interpreter(source: str) -> None:
    """Run ``source`` in a new interpreter: release() looks at every daemon thread of the
    process, and a test process has its own (pytest-xdist's, the cluster tests')."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)], capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert proc.stdout == b"ok\n"


def test_release_leaves_a_store_whose_call_still_runs():
    """A guest call running at exit (a daemon thread): its store is not closed under it."""
    in_a_fresh_interpreter(
        """
        import wasmtime

        from wasmsbx.backends.deadline import KEEPER
        from wasmsbx.backends.wasmtime import teardown

        store = wasmtime.Store()
        teardown.track(store, [])
        watch = KEEPER.enter(None, 30.0, lambda: None)
        try:
            assert teardown.release(wait=0.01) is False
            store.set_epoch_deadline(1)  # still open: usable
        finally:
            KEEPER.leave(watch)
        assert teardown.release(wait=1.0) is True
        try:
            store.set_epoch_deadline(1)
        except ValueError:
            pass  # closed
        else:
            raise AssertionError("release() left the store open")
        print("ok")
        """
    )


def test_release_leaves_the_stores_while_a_daemon_thread_lives():
    """A daemon thread calling a guest in a loop is between two calls (no watch) when the
    hook looks, and enters the next call as the store closes: the exit segfaulted (3 runs
    in 28). With a daemon thread alive the stores are left as they are."""
    in_a_fresh_interpreter(
        """
        import threading

        import wasmtime

        from wasmsbx.backends.wasmtime import teardown

        store = wasmtime.Store()
        teardown.track(store, [])
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait, daemon=True)
        worker.start()
        try:
            assert teardown.release(wait=0.01) is False
            store.set_epoch_deadline(1)  # still open: usable
        finally:
            stop.set()
            worker.join()
        assert teardown.release(wait=1.0) is True
        try:
            store.set_epoch_deadline(1)
        except ValueError:
            pass  # closed
        else:
            raise AssertionError("release() left the store open")
        print("ok")
        """
    )
