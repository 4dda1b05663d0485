"""Before the interpreter finalizes: close the stores wasmsbx gave WASI output callbacks,
then wait until wasmtime has let go of those callbacks.

Why (reproduced with wasmtime-py 50 alone, for modules and components alike): a store's
WASI stdout/stderr callbacks end up owned by wasmtime's WASI streams, which run on its
tokio runtime. Once the guest has written, dropping the store hands the callbacks to a
``tokio-rt-worker`` thread, which calls wasmtime-py's finalizer (Python) to free them a
moment later. If the interpreter is finalizing by then, that thread cannot take the GIL:
CPython ends it with ``pthread_exit``, whose forced unwind crosses a Rust frame that may
not unwind, and the process prints "panic in a function that cannot unwind" (an abort;
sometimes a segfault). A store still alive at exit is dropped during finalization, so it
hit this most of the time; one dropped just before exit, whenever the worker was slower
than the teardown.

So an ``atexit`` hook (it runs before finalization, after non-daemon threads are joined)
closes every store ``track`` saw, unless a guest call is still running somewhere or a
daemon thread is still alive (it may be inside a store, or enter one between the check
and the close: closing a store under that thread would be a use after free; then the
stores are left to finalization as before, panic and all),
and then waits, at most ``WAIT`` seconds, until no wasmsbx output callback is held any
more. The ``wasmsbx`` command leaves with ``os._exit`` and never runs it.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
import weakref
from typing import Any

WAIT = 2.0  # seconds; the workers let go within a millisecond or so
_STORES: Any = weakref.WeakSet()
_OUTPUTS: Any = weakref.WeakSet()  # the callbacks given to wasmtime-py's WasiConfig
_VIEWS: dict = {}  # id -> weak reference: the arrays behind memory views (unhashable)
_OUTPUTS_OF: Any = weakref.WeakKeyDictionary()  # store -> weak references to its outputs
_registered = False


def viewed(array: Any) -> None:
    """``array`` is behind a memory view and holds its store (``_wasmsbx_store``)."""
    key = id(array)
    _VIEWS[key] = weakref.ref(array, lambda _ref: _VIEWS.pop(key, None))


def track(store: Any, outputs: list) -> None:
    """Close ``store`` at exit if it is still alive then, and wait for wasmtime to let go
    of ``outputs`` (its stdout and stderr callbacks; see the module docstring)."""
    global _registered
    _STORES.add(store)
    _OUTPUTS.update(outputs)
    _OUTPUTS_OF[store] = [weakref.ref(o) for o in outputs]  # (weak: never keeps them)
    if not _registered:
        _registered = True
        atexit.register(release)


def release(wait: float = WAIT) -> bool:
    """Close the tracked stores and wait for their output callbacks to be released;
    True if none is held any more (False: a call still runs, or the wait ran out)."""
    from ..deadline import KEEPER

    if KEEPER.watches or _daemons():  # a call may run, or start, under the close
        return False
    # A store that a slice of a memory view still reaches is not closed: the slice may be
    # read later in the exit (an object's __del__, an atexit hook registered before
    # wasmsbx's), and closing unmapped its memory under it (a segfault; red team round
    # 26). Nor may finalization free it (the panic above): it is kept, a reference
    # finalization never drops, and the process's exit takes its memory back.
    arrays = [ref() for ref in list(_VIEWS.values())]
    viewed = {id(s): s for s in (getattr(a, "_wasmsbx_store", None) for a in arrays)}
    for store in list(_STORES):
        if id(store) in viewed:
            _keep_forever(store)
            continue
        try:
            store.close()
        except Exception:  # noqa: BLE001 - exiting: a store that cannot close is left
            pass
    _STORES.clear()
    if WASI[1]:  # a child forked after WASI ran: wasmtime's workers did not come along,
        return False  # so nothing will let go of the callbacks (it waited 2 s: round 86)
    until = time.monotonic() + wait
    while _held():
        if time.monotonic() >= until:
            return False
        time.sleep(0.001)  # lets the tokio workers take the GIL and run the finalizers
    return True


def _keep_forever(store: Any) -> None:
    import ctypes

    for ref in _OUTPUTS_OF.get(store, ()):  # (held for good: not waited for)
        output = ref()
        if output is not None:
            _OUTPUTS.discard(output)
    # A reference nothing holds: finalization clears module globals too, so a list here
    # would drop it; never released, the store is never freed.
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(store))


def _daemons() -> bool:
    """Whether a daemon thread other than this one is still alive: it may be inside a
    guest call, or about to start one, on a tracked store at any moment (between two
    calls no watch shows it), so closing a store under it could free it mid-call (a
    segfault at exit, 3 runs in 28 with a daemon thread calling in a loop). The threads
    that read a component's output pipes (pipes.py) never enter a store: not counted."""
    import threading

    pipes = sys.modules.get(__package__ + ".pipes")  # (not imported: no reader thread;
    THREAD_NAME = getattr(pipes, "THREAD_NAME", None)  # importing needs a descriptor)
    me = threading.current_thread()
    return any(
        t.daemon and t.is_alive() and t is not me and t.name != THREAD_NAME
        for t in threading.enumerate()
    )


def _held() -> bool:
    """Whether wasmtime-py still holds an output callback wasmsbx gave it."""
    from wasmtime import _wasi

    handles = getattr(getattr(_wasi, "CUSTOM_OUTPUTS", None), "handles", None)
    if not isinstance(handles, dict):
        return False  # another wasmtime-py layout: nothing to wait for that we can see
    return any(v in _OUTPUTS for v in list(handles.values()))


# wasmtime's WASI does its I/O on a runtime whose threads a fork does not copy: in a
# child forked after a WASI guest was set up in its parent, a guest's write waited for
# ever, past every timeout (red team round 85). [set up here, forked after that]
WASI = [False, False]


def _wasi_forked() -> None:
    WASI[1] = WASI[0]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_wasi_forked)


def refuse_forked_wasi() -> None:
    """A UsageError in a process forked after a WASI guest was set up in its parent."""
    if WASI[1]:
        from ... import errors

        raise errors.UsageError(
            "cannot run a WASI guest in this process: it was forked (os.fork) after its "
            "parent had set up WASI guests, and wasmtime's WASI needs threads a fork does "
            "not copy (the guest's output or file I/O would wait for ever)",
            hint="start workers with multiprocessing's 'spawn' or 'forkserver' method, or "
            "fork before the parent runs any WASI guest",
        )
