"""A guest that can write a folder on this process's import path.

``python -c``, a REPL and Jupyter put ``''`` (the working folder) first on ``sys.path``;
a policy that grants the working folder read-write (``--dir .`` from Python) then lets
the guest create ``json.py``, ``array.py`` or ``multiprocessing/`` there, and the next
``import`` of that name anywhere in the process runs the guest's Python as you (red team
round 35: wasmsbx's own lazy imports, ``blake3`` for the cache and ``multiprocessing``
for ``batch(jobs=2)``, did). wasmsbx cannot make your program's later imports safe, but
it can make its own so and say what it found: ``guard`` imports, before any guest runs,
everything a sandbox imports later (``LATER`` and the warm lists), and warns once with
the folder and the path entry.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, Optional

from ..native.trustdir import resolved

# What a sandbox imports after it is made (calls, errors, batch with workers, stream,
# audit), beyond warm.WARM_IMPORTS: tests/test_planted_modules.py checks that nothing
# else is imported, through the file system, once a sandbox is made.
LATER = (
    "wasmsbx.runner.batch", "wasmsbx.runner.pool", "wasmsbx.runner.stream",
    "wasmsbx.runner.checkpoint", "wasmsbx.outfile",
    "wasmsbx.audit", "wasmsbx.audit.report", "wasmsbx.audit.rules", "wasmsbx.audit.findings",
    "ast", "dis", "inspect", "dataclasses", "opcode",
    "multiprocessing", "multiprocessing.connection", "multiprocessing.context",
    "multiprocessing.forkserver", "multiprocessing.popen_fork",
    "multiprocessing.popen_forkserver", "multiprocessing.process",
    "multiprocessing.reduction", "multiprocessing.resource_tracker",
    "multiprocessing.spawn", "multiprocessing.util", "multiprocessing.shared_memory",
    "runpy", "importlib.util", "importlib.abc", "socket", "array", "selectors",
    # "did you mean" in errors; a signed artifact's check; compressed cache entries;
    # the trust folder; bench; the rest of what a library path imports lazily
    "difflib", "cryptography.exceptions", "cryptography.hazmat.primitives.serialization",
    "cryptography.hazmat.primitives.asymmetric.ed25519", "nacl.bindings", "zstandard", "zlib",
    "platformdirs", "platform", "pwd", "base64", "binascii", "codecs", "copy", "decimal",
    "fnmatch", "textwrap", "importlib.metadata", "tomllib", "tomli", "tomli_w",
    "concurrent.futures", "asyncio", "pickle", "io", "watchfiles",
    "distributed",  # (Sandbox.batch(cluster=...): about 1 s, paid only in this case)
)  # fmt: skip

_SEEN: set = set()  # (sys.path, working folder, writable folders) already looked at
# Folders a guest of this process may write that hold an entry of its import path (real
# paths), as guard found them: what the processes wasmsbx starts must not search.
EXPOSED: list = []


def _entries() -> list:
    """This process's import path as real folders (``''`` is the working folder)."""
    out = []
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        try:
            out.append((entry, os.path.realpath(entry or os.curdir)))
        except (OSError, ValueError):
            continue
    return out


def exposed(grants: Sequence[Any]) -> list:
    """(path entry, granted folder) for each entry of ``sys.path`` that lies in a folder
    the guest may write."""
    from ..native.trustdir import within

    writable = [(g.host, resolved(g.host)) for g in grants if g.writable]
    if not writable:
        return []
    return [
        (entry, folder)
        for entry, real in _entries()
        for folder, folder_real in writable
        if within(real, folder_real)
    ]


def guard(grants: Sequence[Any], component: bool = False) -> None:
    """Before a sandbox with read-write grants runs: if one holds a folder on the import
    path, import what wasmsbx imports later, and warn (once per path and grants). Called
    as a sandbox is made, for the early warning, and again as each instance is made
    from the grants it is given (a policy changed after the sandbox was made: red team
    round 37)."""
    if not any(g.writable for g in grants):
        return
    from ..backends.compiling import _working_folder

    cwd = _working_folder()
    key = (
        tuple(p for p in sys.path if isinstance(p, str)),
        cwd,
        tuple((g.host, bool(g.writable)) for g in grants),
    )
    if key in _SEEN:
        return
    found = exposed(grants)
    _SEEN.add(key)
    if not found:
        return
    for _, folder in found:
        real = resolved(folder)
        if real not in EXPOSED:
            EXPOSED.append(real)
    from .warm import WARM_COMPONENTS, WARM_IMPORTS, warm_imports

    warm_imports(WARM_IMPORTS)
    warm_imports(LATER)
    if component:
        warm_imports(WARM_COMPONENTS)
    entry, folder = found[0]
    shown = repr(entry) + (" (the working folder)" if entry in ("", ".") else "")
    warnings.warn(
        f"filesystem.read_write {folder} holds {shown}, which is on this process's import "
        "path (sys.path): the guest can write Python modules there that your program "
        "imports later by name. wasmsbx has imported what it needs before the guest "
        "runs; for your own imports, take the folder off sys.path (python -P, "
        "PYTHONSAFEPATH=1, sys.path.remove) or grant another folder",
        RuntimeWarning,
        stacklevel=4,
    )


def clean(entries: Sequence[str]) -> list:
    """``entries`` (a ``sys.path`` or ``PYTHONPATH``) without those in EXPOSED (``''``
    and relative entries read from the working folder). Unchanged when nothing is
    exposed: a script's own folder, a ``python -m`` package, stay for the processes it
    starts (red team round 39: batch workers that always lost the working folder could
    not import a script's helper module next to it)."""
    return _without(entries, EXPOSED) if EXPOSED else list(entries)


def _without(entries: Sequence[str], folders: Sequence[str]) -> list:
    """``entries`` of an import path but those lying in one of ``folders`` (real paths),
    or that cannot be resolved."""
    from ..native.trustdir import within

    keep = []
    for entry in entries:
        try:
            real = os.path.realpath(entry or os.curdir)
        except (OSError, ValueError):
            continue
        if not any(within(real, folder) for folder in folders):
            keep.append(entry)
    return keep


def clean_environ(env: Any) -> Optional[str]:
    """Take EXPOSED folders off ``env["PYTHONPATH"]`` (a new interpreter reads it before
    anything of ours runs: a ``sitecustomize.py`` planted there ran in the batch fork
    server, red team round 39); the old value, to put back (None: it was unset)."""
    old = env.get("PYTHONPATH")
    if old is not None and EXPOSED:
        env["PYTHONPATH"] = os.pathsep.join(clean(old.split(os.pathsep)))
    return old


def seal(grants: Sequence[Any]) -> None:
    """In a batch worker: take ``''``, the working folder and every folder the guest may
    write off ``sys.path`` before the worker imports anything more. multiprocessing sets
    a worker's ``sys.path`` back to its parent's, working folder included, and the
    worker imports lazily as it rebuilds the sandbox and runs: red team round 38 had a
    guest's ``difflib.py`` (written by an earlier call) run in both workers of a
    ``batch(jobs=2)``. Called once the job's spec is read (it names wasmsbx's classes
    only: host functions do not travel to batch workers)."""
    from ..backends.compiling import safe_path

    sys.path[:] = _without(safe_path(), [resolved(g.host) for g in grants if g.writable])
