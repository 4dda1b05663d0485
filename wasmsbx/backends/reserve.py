"""How much address space a linear memory reserves: ``runtime.memory_layout`` (issue #16).

Two layouts, chosen by the policy (its one source of truth is here; the policy's key,
the wasmtime engine, ``--explain`` and the out-of-memory hint all read it):

- ``fast`` (the default): wasmtime's own layout. Each linear memory reserves 4 GiB of
  address space plus 32 MiB guards before and after (4.06 GiB of VmSize), so 32-bit
  loads and stores need no bounds checks, and its data segments are mapped
  copy-on-write from one image of the module (3 mappings per memory).
- ``dense``: each memory reserves ``limits.memory`` rounded up to a power of two (at
  least 64 KiB, at most 4 GiB) with a 64 KiB guard on each side, and its data segments
  are copied in (2 mappings per memory). The code then checks bounds explicitly, which
  costs memory-bound code up to 1.6x (``benchmarks/epoch.py``), and each sandbox owns
  the pages its data segments fill (a module with 1 MiB of data: 1 MiB and ~1 ms more
  per sandbox). In exchange a process holds 1.5x the live memories under Linux's
  default ``vm.max_map_count`` and 16x (256 MiB limit) and more under an address-space
  cap (``ulimit -v``). The numbers are README "Density"'s, measured with
  ``benchmarks/density.py`` and ``benchmarks/epoch.py``.

Rounding to a power of two keeps the number of engines (and of compiled copies of each
module) a process holds small: the reservation is compiled into the code, so every
distinct reservation is an engine of its own and a cache entry of its own.
"""

from __future__ import annotations

from typing import Optional

GUARD = 64 << 10  # one wasm page before and after each memory (dense)
LEAST = 64 << 10  # one wasm page
MOST = 4 << 30  # a 32-bit memory cannot outgrow 4 GiB; more would reserve more than fast
FAST_RESERVATION = (4 << 30) + (64 << 20)  # wasmtime 50: 4 GiB + a 32 MiB guard each side

# Measured 2026-12-02 (README "Density"): what the dense layout costs and gains.
COST = "explicit bounds checks: memory-bound code 1.0-1.6x slower (benchmarks/epoch.py)"
FAST_NOTE = (
    "memories get wasmtime's 4 GiB reservation (4.06 GiB of address space each, no "
    'bounds checks); runtime.memory_layout = "dense" reserves limits.memory instead '
    "(1.5x the live memories per process, bounds checks 1.0-1.6x on memory-bound code)"
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


def describe(reserved: Optional[int]) -> str:
    """One line on the layout in force, for ``--explain`` and hints."""
    from ..units import format_size

    if reserved is None:
        return (
            "fast: wasmtime's layout, 4 GiB + 64 MiB of guards reserved per linear memory, "
            "no bounds checks"
        )
    return (
        f"dense: {format_size(reserved)} + {format_size(2 * GUARD)} of guards reserved "
        f"per linear memory (limits.memory, rounded up to a power of two); {COST}"
    )


def exhausted_hint(reserved: Optional[int]) -> str:
    """What to do when the process runs out of memory or address space."""
    if reserved is None:
        return (
            "too many live linear memories for this process (4 GiB of address space each): "
            'close the sandboxes you no longer use, or set runtime.memory_layout = "dense" '
            'to reserve limits.memory per memory instead (README "Density")'
        )
    return (
        "too many live linear memories for this process (2 mappings each; Linux allows "
        "vm.max_map_count, 65,530 by default): close the sandboxes you no longer use, or "
        'raise vm.max_map_count (README "Density")'
    )


def in_force(values: dict, backend: str) -> dict:
    """The layout a run under this policy gets on ``backend``, as data for ``--explain``
    and ``--json``: {layout, reservation (bytes, None: the runtime's own), about}."""
    layout = values["runtime.memory_layout"]
    reserved = reservation(layout, values["limits.memory"])
    if backend != "wasmtime":
        about = "wasmer's own: 4 GiB + a 2 GiB guard per linear memory, in the instance's process"
        return {"layout": layout, "reservation": None, "about": about}
    return {"layout": layout, "reservation": reserved, "about": describe(reserved)}
