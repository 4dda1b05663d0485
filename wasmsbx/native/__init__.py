"""Native code: artifacts, the compile cache, keys, and source builds."""

import sys


def flush_hits() -> None:
    """Write the cache hits this process has kept in memory (native.cache.flush_hits),
    if it used the cache at all: for code that leaves with ``os._exit``, which skips
    atexit. Imports nothing."""
    cache = sys.modules.get(__name__ + ".cache")
    if cache is not None:
        cache.flush_hits()
