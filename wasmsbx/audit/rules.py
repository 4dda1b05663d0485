"""The audit's rules: stable ids, severities, risk points, explanations and fixes.

Ids never change meaning and are never reused: ``WSX0xx`` the module will fail under the
policy, ``WSX1xx`` what the policy grants (over-privilege and real exposure), ``WSX2xx`` the
module's own structure. ``points`` is a rule's default contribution to the risk score: what
the module could reach or do. Rules that only predict a failure add no points, since a denied
capability is no risk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

SEVERITIES = ("info", "low", "medium", "high")


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Rule:
    """One check. ``points`` is its default contribution to the risk score."""

    id: str
    name: str
    severity: str
    points: int
    title: str
    help: str  # why it matters (SARIF fullDescription)
    fix: str  # the default fix

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "severity": self.severity,
            "points": self.points,
            "title": self.title,
            "help": self.help,
            "fix": self.fix,
        }


_RULES = (
    Rule(
        "WSX001",
        "non-wasi-import",
        "high",
        0,
        "Imports the sandbox does not provide",
        "wasmsbx links WASI preview1 functions only; any other import (a custom host function, "
        "or an imported memory, table or global) makes instantiation fail.",
        "rebuild the module without these imports, or run it in a host that provides them",
    ),
    Rule(
        "WSX002",
        "unlinkable-wasi-import",
        "high",
        0,
        "WASI import that does not link",
        "The import names WASI but is not a wasi_snapshot_preview1 function with the right "
        "signature (an unknown name, a wrong type, or the old wasi_unstable snapshot), so "
        "instantiation fails.",
        "rebuild against a current WASI SDK / wasi-libc (wasi_snapshot_preview1)",
    ),
    Rule(
        "WSX003",
        "filesystem-not-granted",
        "medium",
        0,
        "Opens files, but no directory is granted",
        "path_* functions reach host files only inside granted directories; with none granted "
        "every path the module opens fails at run time (ENOTCAPABLE).",
        'grant only the directory it needs: [filesystem] read_only = ["HOST:/GUEST"] '
        "(or run --dir-ro HOST:/GUEST)",
    ),
    Rule(
        "WSX004",
        "environment-not-passed",
        "low",
        0,
        "Reads environment variables, but none are passed",
        "The module reads its environment, but the policy passes no variables: it sees an "
        "empty environment.",
        'pass only what it needs: [env] inherit = ["NAME"] or set = { NAME = "value" }',
    ),
    Rule(
        "WSX005",
        "sockets-unavailable",
        "medium",
        0,
        "Uses sockets, which the sandbox never provides",
        "WASI preview1 guests get no sockets under wasmsbx ([network] only accepts "
        "enabled = false), so socket calls fail at run time.",
        "do the networking in the host and pass data through stdin/stdout or granted files",
    ),
    Rule(
        "WSX006",
        "memory-minimum-over-limit",
        "high",
        0,
        "Initial memory exceeds limits.memory",
        "A memory's initial size is allocated at instantiation; above limits.memory the "
        "module cannot be instantiated at all.",
        "raise limits.memory, or rebuild with a smaller initial memory "
        "(clang: -Wl,--initial-memory=BYTES)",
    ),
    Rule(
        "WSX007",
        "table-minimum-over-limit",
        "high",
        0,
        "Initial table size exceeds limits.table_elements",
        "A table's initial elements are allocated at instantiation; above "
        "limits.table_elements the module cannot be instantiated at all.",
        "raise limits.table_elements to at least the table's initial size",
    ),
    Rule(
        "WSX008",
        "invalid-module",
        "high",
        0,
        "The runtime rejects the module",
        "The module decodes, but wasmtime's validator rejects it (a type error, a bad index, "
        "an unsupported feature): it cannot be compiled, so it never runs.",
        "rebuild it with a conforming toolchain; check it with wasm-tools validate",
    ),
    Rule(
        "WSX101",
        "unused-directory-grant",
        "low",
        0,
        "Directory granted but never used",
        "The policy grants a directory, but the module imports no path_* function nor "
        "fd_readdir or fd_filestat_*, so it can never reach anything there: the grant is "
        "privilege without purpose.",
        "remove the grant from [filesystem]",
    ),
    Rule(
        "WSX102",
        "unused-environment",
        "low",
        0,
        "Environment passed but never read",
        "The policy passes environment variables, but the module does not import "
        "environ_get, so it can never read them.",
        "remove them from [env]",
    ),
    Rule(
        "WSX103",
        "environment-inherit-all",
        "high",
        30,
        "Every host environment variable is passed",
        "An env.inherit pattern matches every name, and the module reads its environment: "
        "every host variable, including tokens and keys, is visible to it.",
        'list only the variables it needs, e.g. inherit = ["LANG"]',
    ),
    Rule(
        "WSX104",
        "sensitive-directory-grant",
        "high",
        40,
        "A system or home directory is granted",
        "The policy grants the host's root, a system directory, or a home directory (or a "
        "parent of one): far more than any module needs.",
        "grant a dedicated directory holding only the files the module needs",
    ),
    Rule(
        "WSX110",
        "host-write-access",
        "low",
        25,
        "Can create, change and delete host files",
        "The module opens paths and the policy grants read-write directories: it can create, "
        "overwrite and delete files there.",
        "if the module only reads, grant read_only instead; keep the directory dedicated to it",
    ),
    Rule(
        "WSX111",
        "host-read-access",
        "info",
        10,
        "Can read host files",
        "The module opens paths and the policy grants read-only directories: it can read "
        "every file there.",
        "grant only the directory whose files it needs",
    ),
    Rule(
        "WSX112",
        "environment-access",
        "info",
        5,
        "Reads the environment variables the policy passes",
        "The module reads its environment and the policy passes variables into it.",
        "pass only the variables it needs",
    ),
    Rule(
        "WSX201",
        "memory-unbounded",
        "low",
        5,
        "Memory has no maximum",
        "A memory without a declared maximum can grow until limits.memory stops it; the "
        "policy limit is then the only bound.",
        "set limits.memory to what the module needs, or rebuild with a maximum "
        "(clang: -Wl,--max-memory=BYTES)",
    ),
    Rule(
        "WSX202",
        "memory-maximum-over-limit",
        "info",
        0,
        "Memory maximum above limits.memory",
        "The module may ask for more memory than the policy allows; memory.grow beyond "
        "limits.memory fails (returns -1), which some programs treat as fatal.",
        "raise limits.memory if the module needs it; otherwise nothing to do",
    ),
    Rule(
        "WSX203",
        "threads",
        "medium",
        10,
        "Threads: shared memory or atomics",
        "The threads proposal (shared memory, atomic instructions). wasmsbx runs guests on "
        "one thread, and its wasmtime backend does not instantiate shared memories.",
        "build without threads (no -pthread, -matomics or shared memory)",
    ),
    Rule(
        "WSX204",
        "memory64",
        "info",
        0,
        "64-bit memory",
        "A memory64 memory can address more than 4GiB; limits.memory still caps it.",
        "keep limits.memory tight",
    ),
    Rule(
        "WSX205",
        "table-unbounded",
        "low",
        2,
        "Table has no maximum",
        "A table without a declared maximum can grow until limits.table_elements stops it.",
        "set limits.table_elements to what the module needs",
    ),
    Rule(
        "WSX206",
        "start-function",
        "low",
        5,
        "Start function runs at instantiation",
        "A start function runs automatically when the module is instantiated, before any "
        "export is called (wasmsbx applies the same limits to it); if it traps, nothing runs.",
        "review what it does, or rebuild without a start function",
    ),
    Rule(
        "WSX207",
        "large-data",
        "low",
        5,
        "Very large data segments",
        "Large embedded data is copied into memory at instantiation and can hide payloads "
        "that the module's code unpacks.",
        "check what the data is; ship large assets as files granted read-only",
    ),
    Rule(
        "WSX208",
        "unknown-code",
        "medium",
        15,
        "Code this audit cannot read",
        "Some function bodies use opcodes or types the module reader does not know, so the "
        "features and findings of this audit may be incomplete.",
        "validate the module with a current toolchain, and update wasmsbx",
    ),
    Rule(
        "WSX209",
        "debug-info",
        "info",
        0,
        "Debug information embedded",
        "DWARF sections reveal source file paths and names, and make the module larger.",
        "strip it for distribution (clang: -Wl,--strip-debug; wasm-strip)",
    ),
    Rule(
        "WSX210",
        "nondeterminism",
        "info",
        0,
        "Reads the clock or host randomness",
        "Results may differ between runs with the same input.",
        "nothing to do unless runs must be reproducible",
    ),
)

RULES = {rule.id: rule for rule in _RULES}


PAGE = 65536  # bytes per wasm page


def start_export(facts: Any) -> Optional[str]:
    """The export name of the start function, if it is exported."""
    for exp in facts.exports:
        if exp.kind == "func" and exp.index == facts.start:
            return exp.name
    return None
