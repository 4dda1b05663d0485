"""Native code: artifacts, the compile cache, keys, and source builds."""

import sys


def flush_hits() -> None:
    """Write the cache hits this process has kept in memory (native.cache.flush_hits),
    if it used the cache at all: for code that leaves with ``os._exit``, which skips
    atexit. Imports nothing."""
    cache = sys.modules.get(__name__ + ".cache")
    if cache is None or getattr(getattr(cache, "__spec__", None), "_initializing", False):
        # (not used; or another thread is importing it still, so nothing has used it:
        # `watch` stopped by Ctrl-C while its run imported the cache read a module
        # without flush_hits yet, "internal error: AttributeError", exit 1)
        return
    cache.flush_hits()
