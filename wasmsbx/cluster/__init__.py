"""Batch jobs across machines on Dask (``run --batch --cluster``, ``Sandbox.batch(cluster=)``).

The client (``client.py``) connects to a Dask scheduler, sends the module bytes once to
every worker and the job's spec (the client's effective policy, as JSON values), then
feeds chunks of items and writes their results in input order, exactly as a local batch
does. Each worker (``worker.py``) compiles the module once and reuses instances from
chunk to chunk. ``wire.py`` is what travels between the two; results come back as JSON
text that the client checks (a client made here takes them as msgpack only). That is no
security boundary: Dask unpickles a failed task's exception on the client as it arrives,
so a compromised worker or scheduler can run code there (README "Across machines").

This package is imported only when a cluster is named, so ``wasmsbx run`` never pays for
Dask; and Dask itself is imported only inside ``client.connect``.

Where the address comes from: ``--cluster``, else ``$WASMSBX_CLUSTER``, never a policy. A
policy is found in the working folder and is untrusted; if it could name a cluster, a
``sandbox.toml`` dropped into a folder could send every input item, and the module, to an
address of its choosing. Where the data goes is the user's decision, like ``-o``.
"""

from __future__ import annotations

from typing import Any

from .target import (  # noqa: F401 - the package's public names
    DEFAULT_TIMEOUT,
    ENV_ADDRESS,
    ENV_TIMEOUT,
    Cluster,
    as_cluster,
)


def run_cluster(box: Any, func: str, numbered: Any, **kw: Any) -> Any:
    """See client.run_cluster (imported here lazily: it is the only way in)."""
    from .client import run_cluster as run

    return run(box, func, numbered, **kw)
