"""The capability vocabulary shared by the policy, the backends and the selector.

Plain data, no imports: the policy validates ``runtime.require``/``prefer`` against it
and each backend declares what it has in these words.
"""

from __future__ import annotations

# WebAssembly proposals, named as the module-facts reader reports them.
WASM_FEATURES = (
    "mutable-globals",
    "sign-extension",
    "saturating-float-to-int",
    "bulk-memory",
    "reference-types",
    "multi-value",
    "simd",
    "relaxed-simd",
    "threads",
    "tail-call",
    "memory64",
    "multi-memory",
    "exceptions",
    "gc",
    "function-references",
    "extended-const",
    "component-model",
)

SECURITY = {
    "fuel": "deterministic fuel metering (limits.fuel)",
    "timeout": "wall-clock timeout enforced (limits.timeout), in-process or by killing a child",
    "interrupt": "in-process interruption of running wasm (no child process needed)",
    "memory-limit": "linear memory cap (limits.memory)",
    "table-limit": "table element cap (limits.table_elements)",
    "stack-limit": "configurable wasm stack size (limits.stack)",
    "instance-limit": "instance count cap (limits.instances)",
    "wasi": "WASI preview1 commands",
    "wasi-readonly": "read-only directory grants (filesystem.read_only)",
    "stdio-redirect": "guest stdio to files or pipes (stdio.*, limits.output)",
    "fs-confined": "grants confine the guest (no escape by symlink, .. or absolute path)",
}

PERFORMANCE = {
    "aot": "serialize/deserialize precompiled native code",
    "opt-levels": "selectable optimisation levels",
    "in-process": "runs in this process (no per-call child process)",
    "releases-gil": "wasm runs without holding the GIL",
    "dense-memory": "reserves limits.memory per linear memory, not 4 GiB "
    '(runtime.memory_layout = "dense")',
}

DEBUGGING = {
    "backtrace": "symbolic wasm backtraces on traps",
    "profiling": "native profiler integration",
    "debug-info": "DWARF debug info support",
}

ALL = frozenset(WASM_FEATURES) | frozenset(SECURITY) | frozenset(PERFORMANCE) | frozenset(DEBUGGING)
