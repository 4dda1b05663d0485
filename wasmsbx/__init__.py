"""wasmsbx: run untrusted WebAssembly under an explicit policy.

    >>> import wasmsbx
    >>> wasmsbx.run("examples/add.wat", "add", 5, 3)
    8

The public API (README "Python API"): :class:`Sandbox`, :class:`Group` (linking),
host imports (:func:`func`, :class:`Global`, :class:`Memory`, :class:`Table`,
:class:`Caller` and the type annotations ``i32`` .. ``externref``), values
(:class:`F32`, :class:`F64`, :class:`V128`, :class:`FuncRef`, :class:`ExternRef`),
policies (:func:`load_policy`, :func:`default_policy`) and ``wasmsbx.errors``.

The heavy parts (runtimes, rich, diskcache) load only when used: names resolve lazily,
so ``import wasmsbx`` stays cheap for ``wasmsbx run``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports on first use
    from . import errors
    from .host import (
        Caller,
        Global,
        HostFunc,
        Memory,
        Table,
        externref,
        f32,
        f64,
        func,
        funcref,
        i32,
        i64,
        v128,
    )
    from .memory import Memory as GuestMemory
    from .policy import Policy
    from .policy import defaults as default_policy
    from .policy import load as load_policy
    from .runner import Exports, Function, Globals, Group, Sandbox, run
    from .values import F32, F64, V128, ExternRef, FuncRef, unsigned

_LAZY = {
    "Sandbox": ("runner", "Sandbox"),
    "Group": ("runner", "Group"),
    "run": ("runner", "run"),
    "Function": ("runner", "Function"),
    "Exports": ("runner", "Exports"),
    "Globals": ("runner", "Globals"),
    "GuestMemory": ("memory", "Memory"),
    "load_policy": ("policy", "load"),
    "default_policy": ("policy", "defaults"),
    "Policy": ("policy", "Policy"),
    "F32": ("values", "F32"),
    "F64": ("values", "F64"),
    "V128": ("values", "V128"),
    "FuncRef": ("values", "FuncRef"),
    "ExternRef": ("values", "ExternRef"),
    "unsigned": ("values", "unsigned"),
    "func": ("host", "func"),
    "HostFunc": ("host", "HostFunc"),
    "Caller": ("host", "Caller"),
    "Global": ("host", "Global"),
    "Memory": ("host", "Memory"),
    "Table": ("host", "Table"),
    "i32": ("host", "i32"),
    "i64": ("host", "i64"),
    "f32": ("host", "f32"),
    "f64": ("host", "f64"),
    "v128": ("host", "v128"),
    "funcref": ("host", "funcref"),
    "externref": ("host", "externref"),
    "errors": ("errors", None),
}

__all__ = [
    "Sandbox",
    "Group",
    "run",
    "Function",
    "Exports",
    "Globals",
    "GuestMemory",
    "load_policy",
    "default_policy",
    "Policy",
    "F32",
    "F64",
    "V128",
    "FuncRef",
    "ExternRef",
    "unsigned",
    "func",
    "HostFunc",
    "Caller",
    "Global",
    "Memory",
    "Table",
    "i32",
    "i64",
    "f32",
    "f64",
    "v128",
    "funcref",
    "externref",
    "errors",
    "__version__",
]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'wasmsbx' has no attribute {name!r}") from None
    import sys

    full = f"{__name__}.{module_name}"
    __import__(full)  # importlib would be one more import on the start-up path
    module = sys.modules[full]
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # the next lookup is a plain attribute (wasmsbx.Sandbox per tenant)
    return value
