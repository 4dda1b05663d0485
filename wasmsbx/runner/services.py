"""What the public sandboxes add to the core one: ``batch``, ``stream`` and ``audit``.

A mixin, so that the core (runner.sandbox) imports none of these features and each stays
importable on its own: batch and stream sit above the core sandbox, and the audit and
the cluster above the runner. ``wasmsbx.runner.Sandbox`` and the public component
sandbox are built from it.
"""

from __future__ import annotations

from typing import Any

from .. import errors


class Services:
    """``batch``/``stream``/``audit`` for a sandbox (a subclass of runner.sandbox.Sandbox)."""

    def batch(
        self, func: str, items: Any, *, fresh: bool = False, jobs: int = 1, cluster: Any = None
    ) -> Any:
        """Call ``func`` once per item (a list of arguments, a dict ``{"args", "id"}`` or a
        JSON line); an iterator of ``batch.BatchResult``, in input order, one per item.
        A failing item is a result with ``.error``, not an exception. See wasmsbx.runner.batch.
        ``cluster`` (a Dask address, a ``distributed.Client`` or a ``cluster.Cluster``)
        runs the calls on that cluster's workers instead; see wasmsbx.cluster."""
        from .batch import run_batch

        return run_batch(self, func, items, fresh=fresh, jobs=jobs, remote=remote_for(cluster))

    def stream(
        self,
        src: Any,
        dst: Any,
        func: str = "process",
        *,
        chunk_size: int = 64 * 1024,
        checkpoint: Any = None,
    ) -> Any:
        """Stream binary file ``src`` through ``func`` (the streaming ABI) into binary file
        ``dst``, chunk by chunk; returns ``stream.StreamStats``. See wasmsbx.runner.stream."""
        from .checkpoint import Sink, Source
        from .stream import run_stream

        return run_stream(
            self, func, Source(src), Sink(dst), chunk_size=chunk_size, checkpoint=checkpoint
        )

    def audit(self) -> Any:
        """The static audit (wasmsbx.audit.report) of this module under this sandbox's policy,
        with the host imports granted here shown as provided by the host."""
        box: Any = self
        if box.wasm is None:
            raise errors.UsageError("a precompiled artifact cannot be audited: audit its module")
        from ..audit.report import audit
        from ..wasm.facts import read_facts

        return audit(read_facts(box.wasm), box.policy, box.path.name, box.wasm, box.imports)


def remote_for(cluster: Any) -> Any:
    """``runner.batch``'s ``remote`` for a cluster (None: no cluster, the calls run here)."""
    if cluster is None:
        return None
    import functools

    from ..cluster import run_cluster

    return functools.partial(run_cluster, cluster=cluster)
