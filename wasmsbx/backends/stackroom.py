"""Room on the calling thread's stack for a guest's stack (red team round 78).

wasmtime runs wasm on the native stack of the thread that calls it, and enforces
``limits.stack`` (its ``max_wasm_stack``) as a window below the stack pointer where the
call enters wasm. It does not check that the thread has that much stack: on a smaller
one a guest that recurses without end runs off the thread's stack before it reaches the
limit, and the whole process dies of SIGSEGV (a server with every tenant in it),
instead of the guest getting ``StackExhausted``. Threads made after
``threading.stack_size(512 * 1024)``, or anything under ``ulimit -s 512``, had that
little with the default 512 KiB limit.

So before wasm runs on a thread, the thread's stack is checked (its size found once and
remembered for that thread): it must hold the guest's stack plus ``RESERVE`` for what
runs around it (the caller's frames below the call, host functions called from the
deepest guest frame), on top of what the guests already running on the thread may
take (a host function that calls another sandbox). The main thread's stack grows on
demand up to the soft ``RLIMIT_STACK``, which is raised (up to the hard limit) when it
is too low; any other thread's stack is fixed when the thread is made
(``pthread_getattr_np``), so a thread with too little is refused with
``ResourceExhausted`` (exit 118) and a hint, before the guest runs.
"""

from __future__ import annotations

import threading
from typing import Optional

WASMTIME_DEFAULT = 512 << 10  # wasmtime's max_wasm_stack when limits.stack is unset
# Measured (tests/test_stack_room.py's guest: a host function that formats JSON, called
# from the deepest frame 16,370 calls down under the default 512 KiB): a thread of
# 576 KiB ran it; 128 KiB is twice what the caller and such a host function need.
RESERVE = 128 << 10

# .room: what this thread's stack can hold; .used: what the guests running on it may
# take (the windows of the stores entered, each with its RESERVE), in bytes
SEEN = threading.local()


def need(stack: Optional[int]) -> int:
    """The thread stack that ``stack`` bytes of guest stack (None: wasmtime's default)
    need."""
    return (stack or WASMTIME_DEFAULT) + RESERVE


def enter(stack: Optional[int]) -> int:
    """Before wasm of a store not yet running on this thread runs with ``stack`` bytes
    of guest stack: refuse it if this thread's stack cannot hold it on top of the
    guests already running on it (a host function calling another sandbox: wasmtime
    gives each store entered its own window below the stack pointer, while a call
    back into the same store stays in that store's window). What to pass to
    ``leave`` when the call is over."""
    seen = SEEN
    used = getattr(seen, "used", 0)
    wanted = used + need(stack)
    if wanted > getattr(seen, "room", 0):
        room = seen.room = _room(wanted)
        if wanted > room:
            _refuse(stack or WASMTIME_DEFAULT, room, used)
    seen.used = wanted
    return used


def leave(used: int) -> None:
    SEEN.used = used


def _room(need: int) -> int:
    """What this thread's stack can hold, its main thread's soft limit raised to at
    least ``need`` if the hard limit allows."""
    if threading.current_thread() is threading.main_thread():
        return _main_room(need)
    size = _thread_stack_size()
    return size if size is not None else 1 << 62  # (not knowable here: not refused)


# The most the main thread's soft limit is raised to: Linux keeps at least 128 MiB free
# below the main thread's stack when a process starts (mmap_base's gap), so a stack
# grown to this never meets another mapping.
MAIN_MAX = 64 << 20


def _main_room(need: int) -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY:
        return MAIN_MAX if need > MAIN_MAX else 1 << 62
    if soft >= need:
        return soft
    # (the main thread's stack grows on demand, and the kernel checks the soft limit at
    # each growth; twice what is needed, never above the hard limit)
    wanted = min(2 * need, MAIN_MAX)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))
            return wanted
        except (ValueError, OSError):
            pass
    return soft


def _thread_stack_size() -> Optional[int]:
    """This thread's stack size (glibc's ``pthread_getattr_np``), or None if unknown."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        getattr_np = libc.pthread_getattr_np
        self_ = libc.pthread_self
    except (OSError, AttributeError):  # pragma: no cover - glibc is the supported libc
        return None
    self_.restype = ctypes.c_ulong
    getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
    attr = ctypes.create_string_buffer(128)  # (pthread_attr_t is 56 bytes on x86-64)
    if getattr_np(self_(), attr) != 0:
        return None
    try:
        addr, size = ctypes.c_void_p(), ctypes.c_size_t()
        if libc.pthread_attr_getstack(attr, ctypes.byref(addr), ctypes.byref(size)) != 0:
            return None
        return size.value
    finally:
        libc.pthread_attr_destroy(attr)


def _refuse(stack: int, room: int, used: int) -> None:
    from ..errors import ResourceExhausted
    from ..units import format_limit

    held = f", on top of {format_limit(used)} for the guests running on it" if used else ""
    raise ResourceExhausted(
        f"this thread's stack ({format_limit(room)}) cannot hold the guest's "
        f"({format_limit(stack)}, limits.stack) and {format_limit(RESERVE)} for the host"
        f"{held}: a guest recursing to its limit would crash the process",
        hint=(
            "give the calling thread a larger stack (ulimit -s; threading.stack_size() "
            "for threads) or lower limits.stack (--stack)"
        ),
    )
