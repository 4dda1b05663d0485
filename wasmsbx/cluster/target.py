"""Where a batch runs: the Cluster record, its address and timeout settings.

Apart from the package's ``__init__`` so that the client can import them without
importing the package entry point (which imports the client).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

ENV_ADDRESS = "WASMSBX_CLUSTER"  # read by cli/commands/run_batch.py (which avoids importing this)
ENV_TIMEOUT = "WASMSBX_CLUSTER_TIMEOUT"
DEFAULT_TIMEOUT = 30.0  # seconds to reach the scheduler, and for it to have a worker (as Dask)


class Cluster(NamedTuple):
    """Where and how a batch runs on Dask."""

    where: Any  # "tcp://HOST:PORT" (any Dask address), or a distributed.Client
    chunk_items: Optional[int] = None  # items per chunk; None: sized to the work
    timeout: Optional[float] = None  # None: $WASMSBX_CLUSTER_TIMEOUT, else DEFAULT_TIMEOUT


def as_cluster(value: Any) -> Cluster:
    """A Cluster from what a caller gave: a Cluster, an address or a distributed.Client."""
    return value if isinstance(value, Cluster) else Cluster(value)
