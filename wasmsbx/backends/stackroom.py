"""Room on the calling thread's stack for a guest's stack (red team round 78).

wasmtime runs wasm on the native stack of the thread that calls it, and enforces
``limits.stack`` (its ``max_wasm_stack``) as a window below the stack pointer where the
call enters wasm. It does not check that the thread has that much stack: on a smaller
one a guest that recurses without end runs off the thread's stack before it reaches the
limit, and the whole process dies of SIGSEGV (a server with every tenant in it),
instead of the guest getting ``StackExhausted``. Threads made after
``threading.stack_size(512 * 1024)``, or anything under ``ulimit -s 512``, had that
little with the default 512 KiB limit.

So before wasm runs on a thread, the stack free below the caller is measured from the
stack pointer (``_sp``) in the mapping that holds it (``_where``): the process's own
stack grows on demand to the soft ``RLIMIT_STACK``, which is raised (up to the hard
limit) when it is too low; a thread's is fixed when the thread is made. It must hold
the guest's stack plus ``RESERVE`` (host functions called from the deepest guest
frame), on top of what the guests already running on the thread may take (a host
function that calls another sandbox); else ``ResourceExhausted`` (exit 118) and a hint,
before the guest runs. The stack's lowest usable address is found once per thread, the
stack pointer read at every entry (red team rounds 80 and 81: measuring the thread's
whole size, or remembering the room a shallow call had, missed a caller deep in its own
stack; and a thread that forked).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Optional

WASMTIME_DEFAULT = 512 << 10  # wasmtime's max_wasm_stack when limits.stack is unset
# Measured (tests/test_stack_room.py's guest: a host function that formats JSON, called
# from the deepest frame 16,370 calls down under the default 512 KiB): a thread of
# 576 KiB ran it; 128 KiB is twice what the caller and such a host function need.
RESERVE = 128 << 10

# .base: the lowest address this thread's stack may use (measured once; the room is
# the stack pointer's distance above it, read at every entry); .room: where the stack
# pointer cannot be read, what the thread's whole stack holds; .used: what the guests
# running on the thread may take (the windows of the stores entered, each with its
# RESERVE), in bytes
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
    if not fits(seen, wanted):
        _check(seen, wanted, stack or WASMTIME_DEFAULT, used)
    seen.used = wanted
    return used


def fits(seen: Any, wanted: int) -> bool:
    """Whether ``wanted`` bytes fit below the stack pointer now, by what ``seen`` (this
    thread's SEEN) knows; False when it must be measured (``_check``). The stack pointer
    is read at every entry: a caller first shallow, then deep in its own stack (its
    room remembered from the shallow call) left the guest too little and crashed (red
    team round 81). A pointer outside the stack measured (a host that switched this
    thread to another stack: a coroutine library's ucontext) is measured again: its
    room was taken from the old stack's bottom, and a guest crashed the process (red
    team round 85)."""
    base = getattr(seen, "base", None)
    if base is None:
        return wanted <= getattr(seen, "room", 0)
    sp = _sp()
    return sp is not None and base + wanted <= sp < seen.top


def leave(used: int) -> None:
    SEEN.used = used


# What a call back into a guest from a host function must find free on a wasmer host's
# thread (nest_room): each level of a guest and its host calling each other is Python
# frames, pickling and a pipe's wait here (about 11 KB of native stack on CPython 3.9),
# the guest running in its worker; and a host function's own work below the deepest.
NEST_ROOM = 128 << 10  # (as RESERVE: what a host function may need below the deepest level)
NEST_FRAMES = 120  # Python frames it must leave below the recursion limit


def nest_room() -> None:
    """Refuse, as a trap of the call it comes from, a call into a guest made from a host
    function when this thread's native stack or Python's recursion limit is nearly
    reached (the wasmer backend; wasmtime's own entry checks cover its calls). A guest
    and its host calling each other without end crashed the host with SIGSEGV on a
    thread of 512 KiB, and on the main thread under a raised recursion limit (red team
    152), where wasmtime's backend gave StackExhausted."""
    from ..errors import ResourceExhausted, TrapError

    try:  # (a frame that deep exists: Python's stack is that full)
        sys._getframe(sys.getrecursionlimit() - NEST_FRAMES)
        full = True
    except ValueError:
        full = False
    if not full:
        seen = SEEN
        used = getattr(seen, "used", 0)
        wanted = used + NEST_ROOM
        if fits(seen, wanted):
            return
        try:
            _check(seen, wanted, NEST_ROOM, used)
            return
        except ResourceExhausted:
            pass
    raise TrapError(
        "host calls nested too deep: a host function calling back into a guest found "
        "this thread's stack nearly full",
        hint="a guest and its host calling each other without end; if the nesting is "
        "meant, give the thread a larger stack (threading.stack_size, ulimit -s) and "
        "raise sys.setrecursionlimit",
    )


GUARD_SLACK = 16 << 10  # kept free above a fixed stack's lowest page (its guard below)
# The most the main thread's soft limit is raised to: Linux keeps at least 128 MiB free
# below the main thread's stack when a process starts (mmap_base's gap), so a stack
# grown to this never meets another mapping.
MAIN_MAX = 64 << 20


def _check(seen: Any, wanted: int, stack: int, used: int) -> None:
    """Measure this thread's free stack (raising the main stack's soft limit if it is
    too low); refuse ``wanted`` if it does not fit; remember the room that needs no
    measuring again."""
    where = getattr(seen, "where", None)
    sp = None if where is False else _sp()
    if where is None or (where and sp is not None and not where[0] <= sp < where[1]):
        # (first here, or on another stack than the one measured: see fits)
        where = seen.where = _where(seen)
        sp = None if where is False else _sp()
    if sp is None:  # (not measurable here: the whole thread's size, as before)
        seen.base = None
        total = free = seen.room = _fallback_room(wanted)
    else:
        low, high, kind = where
        if kind == "unknown":
            seen.base = None
            seen.room = 0
            _refuse_unknown()
        seen.top = high
        if kind == "grows":  # the process's own stack: down to the soft limit, may rise
            total = _soft_limit()
            if sp - (high - total) < wanted:
                total = _raise_soft((high - sp) + wanted)
            seen.base = high - total
        else:  # a thread's: fixed when it was made
            total = high - low
            seen.base = low + GUARD_SLACK
        free = sp - seen.base
    if free < wanted:
        _refuse(stack, total, free, used)


KNOWN = 4  # stacks a thread remembers (a host switching it between a few: no re-reading)


def _where(seen: Any = None) -> Any:
    """(lowest address, highest address, kind) of the stack this thread runs on, from
    the mapping that holds its stack pointer (/proc/self/maps). Kinds: "grows", the
    process's own stack (``[stack]``, growing to the soft RLIMIT_STACK); "fixed", a
    thread's own stack (within its pthread bounds); "unknown", a stack the host switched
    the thread to (a coroutine library's ``makecontext``), whose bounds cannot be known:
    in malloc'd memory or a shared mapping, a guest on it overwrote the host's memory
    (red team round 86), and a mapping of its own cannot be told from one merged with
    its neighbours (a guard page below a mapping is no proof: a wasm memory's
    reservation is one). By address, not by
    ``threading.main_thread()``, which after a fork from another thread names that
    thread, whose stack is fixed (red team round 80). False if not measurable here.
    ``seen``: the thread's SEEN, whose last KNOWN stacks are looked at first (a thread
    its host switches between stacks re-read the maps at every call: round 86)."""
    sp = _sp()
    if sp is None:
        return False
    known = getattr(seen, "known", None) if seen is not None else None
    for found in known or ():
        if found[0] <= sp < found[1]:
            return found
    found = _mapped(sp)
    if found and seen is not None:
        if known is None:
            known = seen.known = []
        known.insert(0, found)
        del known[KNOWN:]
    return found


def _mapped(sp: int) -> Any:
    """``_where``'s answer for ``sp``, read from /proc/self/maps."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            for line in maps:
                span, _, rest = line.partition(b" ")
                start, _, stop = span.partition(b"-")
                low, high = int(start, 16), int(stop, 16)
                if low <= sp < high:
                    if rest.rstrip().endswith(b"[stack]") or _initial():
                        return low, high, "grows"
                    # The mapping may hold more than the stack: one its creator supplied
                    # (pthread_attr_setstack on malloc'd memory) has no guard page below
                    # it, and memory allocated after it merges into the same mapping (red
                    # team round 84: 320 KiB measured as 6 MiB, a guest ran and crashed
                    # the process). The thread's own bounds say where its stack is.
                    bounds = _thread_stack()
                    if bounds is not None and bounds[0] <= sp < bounds[0] + bounds[1]:
                        low, high = max(low, bounds[0]), min(high, bounds[0] + bounds[1])
                        return low, high, "fixed"
                    return low, high, "unknown"
    except (OSError, ValueError):
        pass
    return False


def _refuse_unknown() -> None:
    from ..errors import ResourceExhausted

    raise ResourceExhausted(
        "this thread runs on a stack wasmsbx cannot measure (one its host switched it "
        "to, not the thread's own): a guest recursing to its limit could overwrite the "
        "host's memory",
        hint="call guests from a thread's own stack (a thread, not a coroutine of a C library)",
    )


_GETCONTEXT: Any = None  # libc's getcontext (False: the stack pointer is not known here)


def _sp() -> Optional[int]:
    """The stack pointer of this thread, near enough (getcontext's RSP, inside the
    ctypes call), or None where its place in ucontext_t is not known (x86-64 only).

    Each thread has a ucontext_t of its own: one shared by the process was written by
    another thread's getcontext between this one's and its read, which took that
    thread's stack pointer for this one's (red team round 83: a guest on a 256 KiB
    thread ran, and crashed the process, with others calling at the same time; 8 MiB
    threads were refused as "0 B free"; RLIMIT_STACK was raised from another thread's
    pointer). The call holds the GIL too (PyDLL: getcontext never calls Python)."""
    seen = SEEN
    context = getattr(seen, "context", None)
    if context is None:
        context = seen.context = _context()
    if not context:
        return None
    getcontext, buffer, value = context
    if getcontext(buffer) != 0:
        return None
    return int(value.value)


def _context() -> Any:
    """(getcontext, a ucontext_t buffer for this thread, its RSP) or False."""
    global _GETCONTEXT
    import ctypes

    if _GETCONTEXT is None:
        import platform

        _GETCONTEXT = False
        if platform.machine() in ("x86_64", "AMD64") and hasattr(os, "uname"):
            try:
                _GETCONTEXT = ctypes.PyDLL(None).getcontext
            except (OSError, AttributeError):
                pass
    if not _GETCONTEXT:
        return False
    buffer = ctypes.create_string_buffer(1024)  # (ucontext_t: 936 bytes on x86-64 glibc)
    # uc_flags, uc_link, uc_stack (24 bytes), then mcontext's gregs: REG_RSP is 15th
    return _GETCONTEXT, buffer, ctypes.c_uint64.from_buffer(buffer, 40 + 15 * 8)


def _soft_limit() -> int:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return MAIN_MAX if soft == resource.RLIM_INFINITY or soft > MAIN_MAX else soft


def _raise_soft(wanted: int) -> int:
    """The main stack's soft limit raised to twice ``wanted`` (never past the hard
    limit or MAIN_MAX) if it is lower; the limit now. The kernel checks the soft limit
    at each growth of that stack."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    target = min(2 * wanted, MAIN_MAX)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_STACK, (target, hard))
        except (ValueError, OSError):
            pass
    return _soft_limit()


def _fallback_room(need: int) -> int:
    """Where the stack pointer cannot be read: the thread's whole stack (the main
    thread's soft limit raised if it is too low), as if nothing were used yet."""
    if threading.current_thread() is threading.main_thread():
        return _raise_soft(need) if _soft_limit() < need else _soft_limit()
    size = _thread_stack_size()
    return size if size is not None else 1 << 62  # (not knowable here: not refused)


def _initial() -> bool:
    """Whether this thread runs on the process's own growing stack though its mapping is
    not named ``[stack]``: under valgrind, whose client's stack is a mapping of its own
    (the initial thread: its id is the pid). Otherwise a mapping not named so is a
    thread's, fixed: also in a fork made by a thread, whose one thread is then the
    process's initial thread (red team round 80)."""
    return threading.get_native_id() == os.getpid() and "vgpreload" in os.environ.get(
        "LD_PRELOAD", ""
    )


def _thread_stack_size() -> Optional[int]:
    """This thread's stack size (glibc's ``pthread_getattr_np``), or None if unknown."""
    bounds = _thread_stack()
    return None if bounds is None else bounds[1]


def _thread_stack() -> Optional[tuple]:
    """(lowest address, size) of this thread's stack, its guard excluded (glibc's
    ``pthread_getattr_np``), or None if unknown."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)  # (the process's own symbols: libc's among them)
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
        if not addr.value or not size.value:
            return None
        return addr.value, size.value
    finally:
        libc.pthread_attr_destroy(attr)


def _refuse(stack: int, total: int, free: int, used: int) -> None:
    from ..errors import ResourceExhausted
    from ..units import format_limit, format_size

    held = f", on top of {format_limit(used)} for the guests running on it" if used else ""
    left = f", {format_size(max(0, free))} of it free here" if free < total else ""
    raise ResourceExhausted(
        f"this thread's stack ({format_limit(total)}{left}) cannot hold the guest's "
        f"({format_limit(stack)}, limits.stack) and {format_limit(RESERVE)} for the host"
        f"{held}: a guest recursing to its limit would crash the process",
        hint=(
            "give the calling thread a larger stack (ulimit -s; threading.stack_size() "
            "for threads) or lower limits.stack (--stack)"
        ),
    )
