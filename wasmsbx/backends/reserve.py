"""What a linear memory costs the process: ``runtime.memory_layout`` and
``runtime.memory_init`` (issue #16).

One source of truth for the policy's two keys; the wasmtime engine, ``--explain``,
``--stats``, audit and the out-of-memory hint all read it.

``runtime.memory_layout``, the address space each memory reserves:

- ``fast`` (the default): wasmtime's own layout. 4 GiB plus 32 MiB guards before and
  after (4,160 MiB of VmSize), so 32-bit loads and stores need no bounds checks.
- ``dense``: ``limits.memory`` rounded up to a power of two (at least 64 KiB, at most
  4 GiB) with a 64 KiB guard on each side. The code then checks bounds explicitly, which
  costs memory-bound code up to 1.7x (``benchmarks/epoch.py``: matmul; sieve 1.4x
  and quicksort 1.3x in instructions, less in time); in exchange a process
  under an address-space cap (``ulimit -v``) holds 18x the memories at a 256 MiB limit,
  and the 128 TiB of user address space stop being the bound.

``runtime.memory_init``, how data segments reach a memory:

- ``cow`` (the default): mapped copy-on-write from one image of the module, shared by
  every instance until written; 3 mappings per memory.
- ``copy``: copied in at instantiation; 2 mappings per memory, so 1.5x the memories
  under Linux's default ``vm.max_map_count`` (65,530), the first limit either layout
  reaches. Each sandbox then holds its data's pages (1 MiB of data: 1 MiB and ~1 ms more
  per sandbox), and wasmtime charges the copy as fuel (1 unit per byte, 2 per segment).

The numbers are README "Memory layout"'s (``benchmarks/density.py``, ``epoch.py``).
Rounding the reservation to a power of two keeps the number of engines (and of compiled
copies of each module) a process holds small: the reservation is compiled into the code,
so every distinct one is an engine of its own and a cache entry of its own.
"""

from __future__ import annotations

from typing import Optional

GUARD = 64 << 10  # one wasm page before and after each memory (dense)
LEAST = 64 << 10  # one wasm page
MOST = 4 << 30  # a 32-bit memory cannot outgrow 4 GiB; more would reserve more than fast

# Measured 2026-12-02 (README "Memory layout"): what the dense layout costs and gains.
COST = (
    "explicit bounds checks: memory-bound code up to 1.7x slower (benchmarks/epoch.py: "
    "matmul 1.71x, sieve 1.37x, quicksort 1.29x in instructions)"
)
FAST_NOTE = (
    "memories get wasmtime's 4 GiB reservation (4,160 MiB of address space each, no "
    'bounds checks); runtime.memory_layout = "dense" reserves limits.memory instead '
    "(18x the live memories under a 64 GiB ulimit -v; bounds checks, up to 1.7x on "
    'memory-bound code), runtime.memory_init = "copy" saves a mapping per memory'
)


def reservation(layout: str, memory_limit: int) -> Optional[int]:
    """Bytes each linear memory reserves under ``layout``, or None for the runtime's
    default (``fast``). ``memory_limit`` is the policy's checked ``limits.memory``."""
    if layout != "dense":
        return None
    size = LEAST
    while size < memory_limit and size < MOST:
        size <<= 1
    return size


def describe(reserved: Optional[int], copy_data: bool = False) -> str:
    """One line on the layout in force, for ``--explain``, ``--stats`` and hints."""
    from ..units import format_size

    init = (
        "; data copied in (2 mappings per memory; the copy spends fuel)"
        if copy_data
        else "; data mapped copy-on-write (3 mappings per memory)"
    )
    if reserved is None:
        return (
            "fast: wasmtime's layout, 4 GiB + 64 MiB of guards reserved per linear memory, "
            "no bounds checks" + init
        )
    return (
        f"dense: {format_size(reserved)} + {format_size(2 * GUARD)} of guards reserved "
        f"per linear memory (limits.memory, rounded up to a power of two); {COST}" + init
    )


def exhausted_hint(
    reserved: Optional[int], copy_data: bool = False, reached: Optional[str] = None
) -> str:
    """What to do when the process runs out of memory or address space: the limit
    ``reached`` ("maps", "ulimit", "space", or None: ``limit_reached`` looks) and the
    settings that lift it. Red team round 83: under "dense" the hint always blamed
    vm.max_map_count and suggested memory_init = "copy", also under ``ulimit -v`` (495
    sandboxes, ~1,500 of 65,530 mappings), which neither lifts."""
    if reached is None:
        reached = limit_reached(reserved)
    if reached == "maps":
        return _maps_hint(copy_data)
    if reached == "ulimit":
        return _ulimit_hint(reserved)
    if reserved is None:
        return (
            "too many live linear memories for this process (4 GiB of address space each): "
            'close the sandboxes you no longer use, or set runtime.memory_layout = "dense" '
            'to reserve limits.memory per memory instead (README "Memory layout")'
        )
    from ..units import format_size

    if reached == "space":
        return (
            "too many live linear memories for this process's address space "
            f"({format_size(reserved + 2 * GUARD)} each): close the sandboxes you no longer "
            'use, or lower limits.memory (README "Memory layout")'
        )
    return (  # (neither limit seen: the host's memory, a container's, or either of them)
        f"out of memory or address space for linear memories ({format_size(reserved)} "
        f"reserved and {2 if copy_data else 3} mappings each): close the sandboxes you no "
        "longer use, lower limits.memory, or raise the process's limits (ulimit -v, "
        'vm.max_map_count) (README "Memory layout")'
    )


def _maps_hint(copy_data: bool) -> str:
    if not copy_data:
        return (
            "too many live linear memories for this process (3 mappings each; Linux allows "
            "vm.max_map_count, 65,530 by default): close the sandboxes you no longer use, "
            'set runtime.memory_init = "copy" (2 mappings each), or raise '
            'vm.max_map_count (README "Memory layout")'
        )
    return (
        "too many live linear memories for this process (2 mappings each; Linux allows "
        "vm.max_map_count, 65,530 by default): close the sandboxes you no longer use, or "
        'raise vm.max_map_count (README "Memory layout")'
    )


def _ulimit_hint(reserved: Optional[int]) -> str:
    from ..units import format_size

    limit = _soft_address_space()
    each, guards = (4 << 30, 64 << 20) if reserved is None else (reserved, 2 * GUARD)
    lower = (
        'set runtime.memory_layout = "dense" to reserve limits.memory per memory instead'
        if reserved is None
        else "lower limits.memory (each reserves it rounded up to a power of two)"
    )
    return (
        "this process's address-space limit is reached (ulimit -v, RLIMIT_AS: "
        f"{format_size(limit or 0)}; each linear memory reserves {format_size(each)} + "
        f"{format_size(guards)} of guards): close the sandboxes you no longer use, "
        f'{lower}, or raise the limit (README "Memory layout")'
    )


# The user address space of a 64-bit Linux process (47 bits): what "fast" runs out of
# after ~32,000 reservations of 4 GiB + guards.
USER_SPACE = 1 << 47


def limit_reached(reserved: Optional[int]) -> Optional[str]:
    """Which of the process's limits a linear memory (``reserved`` bytes, None: fast's
    4 GiB) no longer fits: "maps" (vm.max_map_count), "ulimit" (RLIMIT_AS), "space" (the
    user address space), or None when none is near (the host's memory; not Linux). The
    two ENOMEM failures look alike from wasmtime, so the process is looked at: only
    when the error has happened, once."""
    size = _address_space()
    if size is None:
        return None
    need = (4 << 30) + (64 << 20) if reserved is None else reserved + 2 * GUARD
    maps, most = _mappings()
    if most is not None and maps + 8 >= most:
        return "maps"
    limit = _soft_address_space()
    if limit is not None and size + need > limit:
        return "ulimit"
    if size + need > USER_SPACE:
        return "space"
    return None


def _address_space() -> Optional[int]:
    """This process's VmSize in bytes (None where /proc cannot say)."""
    import os

    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _soft_address_space() -> Optional[int]:
    """The soft RLIMIT_AS in bytes, None when there is none."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError, AttributeError):
        return None
    return None if soft == resource.RLIM_INFINITY or soft < 0 else soft


def _mappings() -> tuple:
    """(this process's mappings, vm.max_map_count); (0, None) where they cannot be read."""
    try:
        with open("/proc/sys/vm/max_map_count", "rb") as f:
            most = int(f.read())
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f), most
    except (OSError, ValueError):
        return 0, None


WASMER = {
    "layout": "fast",
    "reservation": None,
    "init": "copy",
    "about": "wasmer's own: 4 GiB + a 2 GiB guard per linear memory, data copied in, in "
    "the instance's process",
}


def in_force(values: dict, backend: str) -> dict:
    """The layout a run under this policy gets on ``backend``, as data for ``--explain``
    and ``--json``: {layout, reservation (bytes, None: the runtime's own), init, about}."""
    if backend != "wasmtime":
        return dict(WASMER)
    reserved = reservation(values["runtime.memory_layout"], values["limits.memory"])
    return engine_layout(reserved, values["runtime.memory_init"] == "copy")


def engine_layout(reserved: Optional[int], copy_data: bool) -> dict:
    """in_force for a wasmtime engine's options (an engine computes it once: every
    call's ``--stats``/``--json`` shows it)."""
    return {
        "layout": "fast" if reserved is None else "dense",
        "reservation": reserved,
        "init": "copy" if copy_data else "cow",
        "about": describe(reserved, copy_data),
    }
