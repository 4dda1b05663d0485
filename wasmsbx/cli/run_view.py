"""How ``run`` (and ``run --batch``/``--stream``) show their statistics and the backend
choice on stderr: shared by both so that neither imports the other."""

from __future__ import annotations

from typing import Any

from . import output

CACHE_STATES = {
    "hit": "hit (native code loaded from the cache)",
    "miss": "miss (compiled, then stored)",
    "memory": "not read (module already loaded in this process)",
    "off": "off (--no-cache or runtime.cache = false)",
    "skip": "skipped (module smaller than runtime.cache_min_size)",
    "error": "unavailable (see the warning)",
    "artifact": "not used (precompiled artifact loaded)",
}


def render_stats(stats: Any) -> None:
    from ..units import format_count, format_duration, format_size

    rows = [("backend", f"{stats.backend}" + (f" ({stats.compiler})" if stats.compiler else ""))]
    rows.append(("cache", CACHE_STATES.get(stats.cache or "off", stats.cache)))
    for phase, seconds in stats.timings.items():
        rows.append((f"{phase} time", format_duration(seconds)))
    if stats.fuel_used is not None:
        rows.append(("fuel used", format_count(stats.fuel_used)))
    if stats.memory_bytes is not None:
        rows.append(("memory", format_size(stats.memory_bytes)))
    if stats.memory_layout:
        rows.append(("memory layout", stats.memory_layout["about"]))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        output.err(f"{key.ljust(width)}  {value}")


def render_explain(selection: Any) -> None:
    from .explain import render

    render(selection, stderr=True)
