"""Which wasmtime native code is built by: the version installed, the proposals enabled,
and the fingerprint that cache keys and artifacts record. Never imports wasmtime; shared
by the adapter (adapter.py) and the engine (backend.py).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from typing import Optional

from ...capabilities import WASM_FEATURES
from ..base import EngineOptions

# Every proposal wasmsbx names except the component model: this wasmtime build compiles
# them all by default (a test compiles one module per proposal and checks the claim).
FEATURES = frozenset(WASM_FEATURES) - {"component-model"}


@functools.cache
def origin() -> Optional[str]:
    """The file ``import wasmtime`` loads (found as the import would find it, without
    importing it), or None when wasmtime-py is not installed."""
    loaded = sys.modules.get("wasmtime")
    found = getattr(loaded, "__file__", None)
    if found is None:
        from importlib.util import find_spec

        spec = find_spec("wasmtime")
        found = spec.origin if spec is not None else None
    return found


@functools.cache
def _version() -> str:
    """The installed wasmtime-py version. Read from the name of its .dist-info directory:
    the cache key needs it on every cached run, and importlib.metadata scans every path
    entry (tens of milliseconds)."""
    found = origin()
    site = os.path.dirname(os.path.dirname(found)) if found else ""
    found = _listed(site)
    if found is None:
        try:
            found = _dist_infos(os.listdir(site))
        except OSError:
            found = []
    if len(found) == 1:
        return found[0][len("wasmtime-") : -len(".dist-info")]
    try:
        from importlib.metadata import version

        return version("wasmtime")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "unknown"


def _listed(site: str) -> Optional[list]:
    """wasmtime's .dist-info in ``site`` as the import system listed the folder when it
    last looked there (its path finder keeps each folder's listing,
    ``FileFinder._path_cache``), if that listing names exactly one; else None (list the
    folder). Listing site-packages again cost a process's first cached load 0.15 ms
    (188 names, overlay file system), and the finder's listing is the one ``import
    wasmtime`` was found in: the version loaded, even if another was installed since."""
    finder = sys.path_importer_cache.get(site)
    names = getattr(finder, "_path_cache", None)
    if not isinstance(names, (set, frozenset)):
        return None
    hits = _dist_infos(names)
    return hits if len(hits) == 1 else None


def _dist_infos(names: Iterable[str]) -> list:
    """The names of the form ``wasmtime-*.dist-info`` (searched in one joined text: a
    Python loop over a site-packages listing costs tens of µs)."""
    text = "\0" + "\0".join(names) + "\0"
    found, at = [], text.find("\0wasmtime-")
    while at >= 0:
        end = text.index("\0", at + 1)
        if text.endswith(".dist-info", at, end):
            found.append(text[at + 1 : end])
        at = text.find("\0wasmtime-", end)
    return found


def fingerprint(options: EngineOptions) -> dict:
    """What native code from an engine with these options was built for (the cache
    key's basis; ``WasmtimeEngine.fingerprint``)."""
    reserved = options.reservation
    return {
        "backend": "wasmtime",
        "version": _version(),
        "compiler": "cranelift",
        "optimize": options.optimize,
        "fuel": options.fuel,
        "stack": options.stack,
        "epoch": bool(options.epoch),
        "memory_exports": 1,  # compile() exports every memory under a hidden name
        "features": sorted(FEATURES),
        "target": f"{sys.platform}-{os.uname().machine}",
        # Only when set: under the default layout the code (and so every cache entry
        # and artifact made before the key existed) is what it was.
        **({} if reserved is None else {"memory_layout": f"dense:{reserved}"}),
        **({"memory_init": "copy"} if options.copy_data else {}),
    }


# runtime.optimize -> wasmtime's cranelift_opt_level ("aggressive" has no level of its own)
OPT_LEVELS = {"none": "none", "speed": "speed", "size": "speed_and_size", "aggressive": "speed"}


def config_settings(options: EngineOptions) -> list:
    """The wasmtime configuration of an engine for ``options``: (setting, value) pairs,
    in order, named as wasmtime-py's ``Config`` attributes (``cranelift_flag_set``: a
    (flag, value) pair). The one place they are chosen: ``backend.engine_config`` sets
    them on a ``wasmtime.Config``, ``lean.BareEngine`` through the C API (a test checks
    that both make the same code)."""
    from ..reserve import GUARD

    settings: list = [
        ("epoch_interruption", bool(options.epoch)),
        ("consume_fuel", bool(options.fuel)),
        ("cranelift_opt_level", OPT_LEVELS.get(options.optimize, "speed")),
    ]
    if options.stack:
        settings.append(("max_wasm_stack", options.stack))
    if options.reservation is not None:  # runtime.memory_layout = "dense" (reserve.py)
        settings.append(("memory_reservation", options.reservation))
        # Used only by a memory that outgrows the reservation (memory64 above 4 GiB): it
        # moves once into room to grow, instead of on every memory.grow.
        settings.append(("memory_reservation_for_growth", options.reservation))
        settings.append(("memory_guard_size", GUARD))
    if options.copy_data:  # runtime.memory_init = "copy": the image is a third mapping
        settings.append(("memory_init_cow", False))
    for flag in options.isa_off:  # (a compile worker's for a process that lacks them)
        settings.append(("cranelift_flag_set", (flag, "false")))
    if threads_scarce():  # (the same code: only how many threads compile it)
        settings.append(("parallel_compilation", False))
    return settings


SPARE_TASKS = 8  # threads a process may need besides a compiler thread per core
COUNTED_BELOW = 4096  # a user's process limit under which their tasks are counted


def _user_tasks(enough: int) -> int:
    """The threads of the processes of this user (what RLIMIT_NPROC counts), from
    /proc, up to ``enough``: a stat of each process's folder (its owner) and of its
    ``task`` folder (a link per thread, and two); 0 where /proc cannot be read. (Reading
    every process's status took 126 ms with 3,000 processes: round 139.)"""
    uid, total = os.getuid(), 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for name in entries:
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            total += max(1, os.stat(f"/proc/{name}/task").st_nlink - 2)
        except OSError:  # (gone meanwhile)
            continue
        if total >= enough:
            break
    return total


def threads_scarce() -> bool:
    """Whether this process may be unable to start a compiler thread per core: wasmtime
    compiles (and validates) in a thread pool that aborts the process if a thread cannot
    start (red team 137: `ulimit -u 3`, a Rust panic and SIGABRT, exit 134). Told by the
    user's process limit (RLIMIT_NPROC, which counts threads) and the cgroup's
    ``pids.max``; then one thread compiles."""
    need = (os.cpu_count() or 1) + SPARE_TASKS
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    except (ImportError, OSError, ValueError, AttributeError):
        soft = -1
    if soft != -1 and soft != getattr(resource, "RLIM_INFINITY", -1):
        if soft < need:
            return True
        # The limit counts every task of the user, not of this process (red team 138:
        # `ulimit -u 16`, another process of 9 threads): counted where it is low enough
        # to matter (root too: uid 0 of a rootless container is held to it, round 139).
        if soft < COUNTED_BELOW and soft - _user_tasks(soft) < need:
            return True
    from ..cgroup import task_room

    room = task_room()
    return room is not None and room < need
