"""The runner: policy + module -> backend -> result, as plain data.

``sandbox`` is the core (one module instance under a policy); ``batch`` and ``stream`` run
many calls through it, ``checkpoint`` persists a stream's progress, ``values`` and ``host``
convert values and host imports at the boundary.
"""

from .sandbox import (
    CallResult,
    CommandResult,
    Exports,
    Function,
    Globals,
    Group,
    Memory,
    RunStats,
    Sandbox,
    read_module,
    run,
)

__all__ = [
    "CallResult",
    "CommandResult",
    "Exports",
    "Function",
    "Globals",
    "Group",
    "Memory",
    "RunStats",
    "Sandbox",
    "read_module",
    "run",
]
