"""wasmsbx: run untrusted WebAssembly under an explicit policy.

    >>> import wasmsbx
    >>> wasmsbx.run("examples/add.wat", "add", 5, 3)
    8

The heavy parts (runtimes, rich, diskcache) load only when used.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["Sandbox", "run", "load_policy", "__version__"]


def __getattr__(name: str):
    if name in ("Sandbox", "run"):
        from . import runner

        return getattr(runner, name)
    if name == "load_policy":
        from .policy import load

        return load
    raise AttributeError(f"module 'wasmsbx' has no attribute {name!r}")
