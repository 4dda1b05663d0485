"""Static security audit: what a module asks for, checked against a policy, without running it.

``audit_file(path, policy)`` reads the module with :mod:`wasmsbx.wasm.facts` (nothing is compiled
or instantiated) and returns an :class:`AuditReport`: its imports grouped by the capability
they need, its exports, memories, tables, globals, start function and data, and a list of
:class:`Finding` s, each from a rule in :data:`RULES` with a stable id (``WSX001`` ...), a
severity, a one-line explanation and a fix. The report also carries a 0-100 risk score whose
computation is part of the data (:class:`Risk`), and it converts itself to the versioned JSON
report (``to_dict``, described by :mod:`wasmsbx.audit.schema`) and to SARIF 2.1.0
(``to_sarif``). :func:`suggest_policy` derives a least-privilege ``sandbox.toml``.

Rule ids are grouped: ``WSX0xx`` the module will fail under this policy, ``WSX1xx`` what the
policy grants (over-privilege and real exposure), ``WSX2xx`` the module's own structure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import TYPE_CHECKING, Any, Optional

from .. import policy as policy_mod
from ..errors import NAME_SHOWN, inert
from ..wasm import wasi
from ..wasm.facts import ModuleFacts
from ..wasm.model import signature_text
from .findings import (  # noqa: F401 - re-exported
    LISTED,
    RISK_LEVELS,
    SENSITIVE_DIRS,
    CapabilityUse,
    Finding,
    PolicyGrants,
    Risk,
    SuggestedPolicy,
    Verdict,
    _finding,
    _matches_everything,
    _sensitive,
    compute_risk,
    count_by_severity,
    suggestion_end,
    suggestion_start,
)
from .rules import (  # noqa: F401 - re-exported
    PAGE,
    RULES,
    SEVERITIES,
    Rule,
    severity_rank,
    start_export,
)

LARGE_DATA = 1 << 20  # total data segment bytes from which WSX207 fires
# Findings of one rule (and severity) listed one by one; the rest become one finding
# that says how many and adds their points. A finding per table or per import module
# made 100,000 rows of findings, of risk addends and of SARIF results for a valid module
# (red team round 77).
FINDINGS_KEPT = 100

# ---------------------------------------------------------------------------- findings


# ---------------------------------------------------------------------------- imports


@dataclass(frozen=True)
class ImportUse:
    """One import, with the capability it needs and whether the sandbox links it."""

    module: str
    name: str
    kind: str
    signature: Optional[str]
    capability: str  # a key of wasi.GROUPS
    explanation: str
    provided: bool
    problem: Optional[str] = None  # why it does not link

    def to_dict(self) -> dict:
        return {
            "module": self.module,
            "name": self.name,
            "kind": self.kind,
            "signature": self.signature,
            "capability": self.capability,
            "explanation": self.explanation,
            "provided": self.provided,
            "problem": self.problem,
        }


def host_provides(host_imports: Any, module: str, name: str) -> bool:
    """Whether the caller grants ``module.name`` as a host import: ``host_imports`` is a
    Sandbox ``imports=`` mapping, or names "module.name" / "module.*"."""
    if not host_imports:
        return False
    if isinstance(host_imports, dict):
        return name in host_imports.get(module, ())
    return f"{module}.{name}" in host_imports or f"{module}.*" in host_imports


def classify_import(imp: Any, host_imports: Any = None) -> ImportUse:
    """Which capability an import needs, what it is for, and whether it links.

    An import the caller grants (``host_imports``) is provided by the host: a capability
    given explicitly, shown in the "custom" group as granted."""
    sig = signature_text(imp.type) if imp.type is not None else None
    if host_provides(host_imports, imp.module, imp.name):
        what = f"host {imp.kind} granted by the caller (imports=)"
        return ImportUse(imp.module, imp.name, imp.kind, sig, "custom", what, True, None)
    if imp.kind != "func":
        what = f"imports a {imp.kind}"
        problem = f"a {imp.kind} import: the sandbox provides no {imp.kind}s"
        return ImportUse(imp.module, imp.name, imp.kind, sig, "custom", what, False, problem)
    fn = wasi.BY_NAME.get(imp.name) if imp.module in (wasi.PREVIEW1, wasi.UNSTABLE) else None
    if fn is None:
        what = "custom host function"
        if imp.module.startswith("wasi"):
            what = f"not a WASI preview1 function ({inert(imp.module, NAME_SHOWN)})"
        problem = "not provided by the sandbox"
        return ImportUse(imp.module, imp.name, "func", sig, "custom", what, False, problem)
    problem = None
    if imp.module == wasi.UNSTABLE:
        problem = "wasi_unstable (WASI snapshot 0) is not provided; only wasi_snapshot_preview1"
    elif imp.type is None:
        problem = "its type index does not name a function type"
    elif (tuple(imp.type.params), tuple(imp.type.results)) != (fn.params, fn.results):
        problem = f"signature {sig} does not match WASI's {fn.signature}"
    return ImportUse(imp.module, imp.name, "func", sig, fn.group, fn.doc, problem is None, problem)


# ---------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class AuditReport(Verdict):
    """Everything ``wasmsbx audit`` shows, as plain data."""

    path: str
    facts: ModuleFacts
    policy: Any  # wasmsbx.policy.Policy
    imports: tuple
    capabilities: tuple
    findings: tuple
    risk: Risk
    counts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from .formats import report_dict

        return report_dict(self)

    def to_sarif(self) -> dict:
        from .formats import sarif_log

        return sarif_log(self)


def audit(
    facts: ModuleFacts,
    policy: Any,
    path: str = "<module>",
    wasm: Optional[bytes] = None,
    host_imports: Any = None,
) -> AuditReport:
    """Audit already-read module facts against a policy; with the module's bytes (``wasm``)
    the runtime's validator is consulted too (validation compiles nothing).
    ``host_imports``: what the caller grants as host imports (see host_provides)."""
    imports = tuple(classify_import(imp, host_imports) for imp in facts.imports)
    ctx = _Context(facts, policy, imports)
    found = (f for check in CHECKS for f in check(ctx))  # (kept_findings holds a few)
    seconds = policy.values["limits.compile_timeout"]
    problem = validation_error(wasm, seconds, path) if wasm is not None else None
    rejected = [_finding("WSX008", f"wasmtime rejects the module: {problem}", "module")]
    findings = kept_findings(chain(found, rejected if problem else []))
    counts = count_by_severity(findings)
    return AuditReport(
        path=path,
        facts=facts,
        policy=policy,
        imports=imports,
        capabilities=capabilities(ctx),
        findings=tuple(findings),
        risk=compute_risk(findings),
        counts=counts,
    )


def audit_file(path: Any, policy: Any = None, host_imports: Any = None) -> AuditReport:
    """Read ``path`` (.wasm or .wat) without instantiating it, and audit it.

    Raises InputError for an unreadable file and ModuleError for a malformed module.
    """
    from pathlib import Path

    from .. import errors
    from ..backends.compiling import check_size
    from ..wasm.facts import FactsError, read_facts
    from ..wasm.source import bounded_reads, module_bytes, read_file

    policy = policy if policy is not None else policy_mod.discover()
    values = policy.values
    # The policy's limits.module_size binds what wasmsbx reads and parses, as for run
    # (exit 117): audit parsed a 3.2 MiB module under a 1 MiB limit (red team round 77);
    # text too, before it is converted (24 MB of it took 1.9 GB first: red team 125),
    # and the conversion is bounded by limits.compile_timeout, as a compile.
    raw = read_file(Path(path), limit=values["limits.module_size"])  # (as read: round 149)
    check_size(len(raw), values["limits.module_size"], _file_name(path))
    data = module_bytes(raw, Path(path), values["limits.compile_timeout"])
    check_size(len(data), values["limits.module_size"], _file_name(path))
    try:
        with bounded_reads(policy, None, _file_name(path)):  # (as a compile: round 149)
            facts = read_facts(data)
    except FactsError as exc:
        if exc.component:
            from ..components.audit import audit_component

            return audit_component(str(path), data, policy)
        raise errors.ModuleError(
            f"{path}: not a valid WebAssembly module: {exc}",
            hint="check that the file is a complete .wasm binary or valid .wat text",
            path=str(path),
        ) from None
    return audit(facts, policy, str(path), data, host_imports)


def kept_findings(found: Iterable[Finding]) -> list:
    """``found`` most severe first, at most FINDINGS_KEPT of each rule and severity (the
    first found: tables 0 to 99, not 0, 1, 10, 100...), each group's rest summed up in
    one finding after it: its subject "N more", its points theirs (the risk stays)."""
    kept: list = []
    rest: dict = {}  # (rule, severity) -> [how many, points, the last one]
    shown: dict = {}
    for f in found:
        key = (f.rule, f.severity)
        if shown.get(key, 0) < FINDINGS_KEPT:
            shown[key] = shown.get(key, 0) + 1
            kept.append(((-severity_rank(f.severity), f.rule, 0, f.subject), f))
            continue
        more = rest.setdefault(key, [0, 0, f])
        more[0] += 1
        more[1] += f.points
        more[2] = f
    for (rule, severity), (n, points, last) in rest.items():
        summed = replace(
            last,
            message=f"{n:,} more findings of this rule, like the first {FINDINGS_KEPT}, "
            "not listed one by one",
            subject=f"{n:,} more",
            points=points,
        )
        kept.append(((-severity_rank(severity), rule, 1, ""), summed))
    kept.sort(key=lambda pair: pair[0])
    return [f for _, f in kept]


def _file_name(path: Any) -> str:
    import os

    return os.path.basename(os.path.normpath(str(path))) or str(path)


_ENGINE: list = []  # one validating engine per process (creating one costs milliseconds)


# Bytes of module validated in this process; a larger one is validated in a compile
# worker, killed at limits.compile_timeout: validation is not bounded otherwise (a 4 MB
# module of br_tables into blocks of 1,000 results took 27.5 s, red team 125).
VALIDATE_HERE = 64 * 1024


def validation_error(
    wasm: bytes, seconds: Optional[float] = None, path: str = "<module>"
) -> Optional[str]:
    """The first line of wasmtime's validation error, or None if the module is valid;
    CompileLimitExceeded (117) if it takes longer than ``seconds``."""
    if len(wasm) > VALIDATE_HERE and seconds is not None:
        from ..backends import compiling

        if not compiling.compiles_here():
            return _validated_in_worker(wasm, seconds, path)
    return _validated(wasm)


def _validated(wasm: bytes) -> Optional[str]:
    try:
        import wasmtime
    except ImportError:  # pragma: no cover - wasmtime is a dependency
        return None
    if not _ENGINE:
        import atexit

        from ..backends.wasmtime.identity import threads_scarce

        config = wasmtime.Config()
        if threads_scarce():  # (its thread pool would abort the process: identity.py)
            config.parallel_compilation = False
        _ENGINE.append(wasmtime.Engine(config))
        # (freed while the runtime is whole: left to the interpreter's end, it was freed
        # through a runtime already gone, "Exception ignored in Managed.__del__",
        # as runner/shared.py's _at_exit says)
        atexit.register(_ENGINE.clear)
    try:
        wasmtime.Module.validate(_ENGINE[0], wasm)
    except Exception as exc:  # wasmtime.WasmtimeError
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return lines[0] if lines else type(exc).__name__
    return None


def _validated_in_worker(wasm: bytes, seconds: float, path: str) -> Optional[str]:
    from ..backends.compiling import slower_than, worker_task
    from ..units import format_duration

    error = slower_than(
        f"validating {path} did not finish within limits.compile_timeout "
        f"({format_duration(seconds)})",
        "raise limits.compile_timeout if you trust the module",
        seconds,
    )
    problem = worker_task(wasm, seconds, error, f"{__name__}:ValidateEngine")
    return problem.decode("utf-8", "replace") or None


if not TYPE_CHECKING:  # (type checkers see every other name as it is)

    def __getattr__(name: str) -> Any:
        """ValidateEngine, made when a compile worker asks for it (worker_task's ``wrap``):
        its "code" is the validation error's first line, empty if the module is valid."""
        if name == "ValidateEngine":
            from ..backends.compiling import task_engine

            return task_engine(lambda wasm: (_validated(wasm) or "").encode())
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------- checks


class _Context(PolicyGrants):
    """What the checks look at: the module's facts, its imports and the policy."""

    def __init__(self, facts: ModuleFacts, policy: Any, imports: tuple) -> None:
        super().__init__(policy)
        self.facts = facts
        self.imports = imports
        self.wasi = [i.name for i in imports if i.provided and i.capability != "custom"]
        values = policy.values
        self.memory_limit = values["limits.memory"]
        self.table_limit = values["limits.table_elements"]

    def imported(self, *names: str) -> list:
        return [n for n in self.wasi if n in names]

    @property
    def path_functions(self) -> list:
        return [n for n in self.wasi if wasi.reaches_grants(n)]

    @property
    def env_functions(self) -> list:
        return self.imported("environ_get", "environ_sizes_get")


def _names(names: Iterable[str], limit: int = 6) -> str:
    """The first ``limit`` of ``names``, each escaped and cut (errors.inert: a module's
    names of 200,000 characters were quoted whole, red team 126), and how many more."""
    names = list(names)
    shown = ", ".join(inert(n, NAME_SHOWN) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _size(n: int) -> str:
    from ..units import format_size

    return format_size(n)


def _limit(n: int) -> str:
    """A limit as set (units.format_limit: never rounded)."""
    from ..units import format_limit

    return format_limit(n)


def _grant_text(grant: Any) -> str:
    return grant.host if grant.host == grant.guest else f"{grant.host} (as {grant.guest})"


def _env_text(ctx: _Context) -> str:
    parts = []
    if ctx.inherit:
        parts.append("inherit " + ", ".join(ctx.inherit))
    if ctx.env_set:
        parts.append("set " + ", ".join(sorted(ctx.env_set)))
    return "; ".join(parts)


def check_link(ctx: _Context) -> Iterator[Finding]:
    """WSX001 (non-WASI imports, one finding per import module) and WSX002."""
    custom: dict = {}
    for imp in ctx.imports:
        if imp.provided:
            continue
        wasi_module = imp.module in (wasi.PREVIEW1, wasi.UNSTABLE)
        if imp.kind == "func" and wasi_module and imp.name in wasi.BY_NAME:
            yield _finding(
                "WSX002",
                f"{inert(imp.module, NAME_SHOWN)}.{inert(imp.name, NAME_SHOWN)}: {imp.problem}, "
                "so the module does not link",
                f"import {inert(imp.module, NAME_SHOWN)}.{inert(imp.name, NAME_SHOWN)}",
            )
            continue
        custom.setdefault(imp.module, []).append(imp)
    for module, imps in custom.items():
        funcs = [i.name for i in imps if i.kind == "func"]
        others = [f"{i.kind} {inert(i.name, NAME_SHOWN)}" for i in imps if i.kind != "func"]
        what = []
        if funcs:
            what.append(f"{len(funcs)} function{'s' if len(funcs) > 1 else ''} ({_names(funcs)})")
        if others:
            what.append(_names(others))
        rule = "WSX002" if module.startswith("wasi") and not others else "WSX001"
        yield _finding(
            rule,
            f"imports {' and '.join(what)} from {inert(repr(module), NAME_SHOWN)}, which "
            "the sandbox does not provide: instantiation fails",
            f"import module {inert(module, NAME_SHOWN)}",
        )


def check_filesystem(ctx: _Context) -> Iterator[Finding]:
    """WSX003 (needs files, none granted), WSX101 (granted, never used), WSX110/WSX111."""
    paths = ctx.path_functions
    if paths and not ctx.grants:
        yield _finding(
            "WSX003",
            f"imports {_names(paths)} (reaches host files by path, or lists a directory), "
            "but the policy grants no "
            "directory: every path it opens fails at run time",
            "capability filesystem",
        )
    if not paths:
        for grant in ctx.grants:
            mode = "read-write" if grant.writable else "read-only"
            yield _finding(
                "WSX101",
                f"the policy grants {mode} {_grant_text(grant)}, but the module imports no "
                "path_* function nor fd_readdir or fd_filestat_*, so it can never reach "
                "anything there",
                f"grant {grant.host}",
                severity="medium" if grant.writable else "low",
                where="policy",
                key="filesystem.read_write" if grant.writable else "filesystem.read_only",
            )
        return
    if ctx.read_write:
        yield _finding(
            "WSX110",
            "it reaches granted directories, and the policy grants read-write "
            f"{_names(_grant_text(g) for g in ctx.read_write)}: it can create, change and "
            "delete files there",
            "capability filesystem (read-write)",
            where="policy",
            key="filesystem.read_write",
        )
    if ctx.read_only:
        yield _finding(
            "WSX111",
            "it reaches granted directories, and the policy grants read-only "
            f"{_names(_grant_text(g) for g in ctx.read_only)}: it can read every file there",
            "capability filesystem (read-only)",
            where="policy",
            key="filesystem.read_only",
        )


def check_sensitive_grants(ctx: _Context) -> Iterator[Finding]:
    """WSX104: root, system or home directories granted."""
    for grant in ctx.grants:
        why = _sensitive(grant.host)
        if why is None:
            continue
        mode = "read-write" if grant.writable else "read-only"
        used = bool(ctx.path_functions)
        tail = "" if used else " (the module opens no paths, but the grant is still too broad)"
        yield _finding(
            "WSX104",
            f"the policy grants {mode} {_grant_text(grant)}, {why}{tail}",
            f"grant {grant.host}",
            points=RULES["WSX104"].points if used else 0,
            where="policy",
            key="filesystem.read_write" if grant.writable else "filesystem.read_only",
        )


def check_environment(ctx: _Context) -> Iterator[Finding]:
    """WSX004 (reads env, none passed), WSX102 (passed, never read), WSX103, WSX112."""
    reads = ctx.env_functions
    if reads and not ctx.env_passed:
        yield _finding(
            "WSX004",
            f"imports {_names(reads)}, but the policy passes no variables: the module sees "
            "an empty environment",
            "capability environment",
        )
    elif not reads and ctx.env_passed:
        yield _finding(
            "WSX102",
            f"the policy passes variables ({_env_text(ctx)}), but the module does not "
            "import environ_get, so it can never read them",
            "policy env",
            where="policy",
            key="env.inherit" if ctx.inherit else "env.set",
        )
    elif reads:
        everything = [p for p in ctx.inherit if _matches_everything(p)]
        if everything:
            yield _finding(
                "WSX103",
                f"env.inherit contains {everything[0]!r} and the module reads its "
                "environment: every host variable, including tokens and keys, is visible to it",
                "policy env.inherit",
                where="policy",
                key="env.inherit",
            )
        yield _finding(
            "WSX112",
            f"it reads its environment, and the policy passes variables ({_env_text(ctx)})",
            "capability environment",
            where="policy",
            key="env.inherit" if ctx.inherit else "env.set",
        )


def check_sockets(ctx: _Context) -> Iterator[Finding]:
    """WSX005: socket functions never work."""
    socks = [n for n in ctx.wasi if wasi.BY_NAME[n].group == "sockets"]
    if socks:
        yield _finding(
            "WSX005",
            f"imports {_names(socks)}, but the sandbox provides no sockets: these calls fail "
            "at run time",
            "capability sockets",
        )


def _memory_label(mem: Any) -> str:
    return f"memory {mem.index}" + (" (imported)" if mem.imported else "")


def _pages(n: int) -> str:
    return f"{_size(n * PAGE)} ({n} page{'s' if n != 1 else ''})"


def check_memories(ctx: _Context) -> Iterator[Finding]:
    """WSX006, WSX201, WSX202, WSX203 (shared), WSX204."""
    limit = ctx.memory_limit
    for mem in ctx.facts.memories:
        lim, label = mem.limits, _memory_label(mem)
        subject = f"memory {mem.index}"
        if lim.min * PAGE > limit:
            yield _finding(
                "WSX006",
                f"{label} starts at {_pages(lim.min)}, but limits.memory is {_limit(limit)}: "
                "instantiation fails",
                subject,
                fix=f"raise limits.memory to at least {_size(lim.min * PAGE)}, or rebuild with "
                "a smaller initial memory",
            )
        if lim.max is None:
            yield _finding(
                "WSX201",
                f"{label} starts at {_pages(lim.min)} and declares no maximum: it can grow "
                f"until limits.memory ({_limit(limit)}) stops it",
                subject,
            )
        elif lim.max * PAGE > limit:
            yield _finding(
                "WSX202",
                f"{label} may grow to {_pages(lim.max)}, but limits.memory is {_limit(limit)}: "
                "growing past the limit fails",
                subject,
            )
        if lim.shared:
            yield _finding(
                "WSX203",
                f"{label} is shared (threads): wasmsbx runs guests on one thread, and its "
                "wasmtime backend does not instantiate shared memories",
                subject,
            )
        if lim.memory64:
            yield _finding(
                "WSX204",
                f"{label} uses 64-bit addresses: it can address more than 4GiB; "
                f"limits.memory ({_limit(limit)}) still caps it",
                subject,
            )


def check_atomics(ctx: _Context) -> Iterator[Finding]:
    """WSX203 for atomic instructions on unshared memory (shared memory is reported above)."""
    shared = any(m.limits.shared for m in ctx.facts.memories)
    if "threads" in ctx.facts.features and not shared:
        yield _finding(
            "WSX203",
            "the code uses atomic instructions (threads proposal) on unshared memory; in a "
            "single-threaded sandbox they act as plain loads and stores",
            "feature threads",
            severity="low",
            points=5,
        )


def check_tables(ctx: _Context) -> Iterator[Finding]:
    """WSX007, WSX205."""
    limit = ctx.table_limit
    for table in ctx.facts.tables:
        lim, subject = table.limits, f"table {table.index}"
        label = subject + (" (imported)" if table.imported else "") + f" ({table.elem})"
        if lim.min > limit:
            yield _finding(
                "WSX007",
                f"{label} starts with {lim.min:,} elements, but limits.table_elements is "
                f"{limit:,}: instantiation fails",
                subject,
                fix=f"raise limits.table_elements to at least {lim.min}",
            )
        if lim.max is None:
            yield _finding(
                "WSX205",
                f"{label} starts with {lim.min:,} elements and declares no maximum: it can grow "
                f"until limits.table_elements ({limit:,}) stops it",
                subject,
            )


def check_structure(ctx: _Context) -> Iterator[Finding]:
    """WSX206 (start function), WSX207 (large data), WSX208 (unknown code), WSX209 (DWARF)."""
    facts = ctx.facts
    if facts.start is not None:
        name = start_export(facts)
        label = f"function {facts.start}" + (f" (exported as {name!r})" if name else "")
        yield _finding(
            "WSX206",
            f"{label} runs automatically when the module is instantiated, before any export "
            "is called",
            "start function",
        )
    total = sum(facts.data_segments)
    if total >= LARGE_DATA:
        n = len(facts.data_segments)
        yield _finding(
            "WSX207",
            f"{n} data segment{'s' if n != 1 else ''} hold {_size(total)} (largest "
            f"{_size(max(facts.data_segments))}), copied into memory at instantiation",
            "data segments",
        )
    if "unknown" in facts.features:
        yield _finding(
            "WSX208",
            "some function bodies use opcodes or types this reader does not know; the "
            "features and findings of this audit may be incomplete",
            "code",
        )
    if facts.has_debug_info:
        debug = [c for c in facts.custom_sections if c.name.startswith(".debug")]
        yield _finding(
            "WSX209",
            f"{len(debug)} DWARF sections ({_size(sum(c.size for c in debug))}) reveal source "
            "file paths and names",
            "debug info",
        )


def check_nondeterminism(ctx: _Context) -> Iterator[Finding]:
    """WSX210."""
    used = ctx.imported("clock_time_get", "clock_res_get", "random_get")
    if used:
        yield _finding(
            "WSX210",
            f"imports {_names(used)}: results may differ between runs with the same input",
            "capability clock/random",
        )


CHECKS = (
    check_link,
    check_filesystem,
    check_sensitive_grants,
    check_environment,
    check_sockets,
    check_memories,
    check_atomics,
    check_tables,
    check_structure,
    check_nondeterminism,
)


# ---------------------------------------------------------------------------- capabilities


def _capability_status(ctx: _Context, group: str) -> tuple:
    """(status, detail) of one capability group under the policy."""
    v = ctx.policy.values
    if group == "filesystem":
        if not ctx.grants:
            return "denied", "no directory granted"
        ro = [f"ro {_grant_text(g)}" for g in ctx.read_only]
        rw = [f"rw {_grant_text(g)}" for g in ctx.read_write]
        return "granted", ", ".join(ro + rw)
    if group == "environment":
        if not ctx.env_passed:
            return "denied", "no variables passed: empty environment"
        return "granted", _env_text(ctx)
    if group == "stdio":
        streams = ", ".join(f"{s} {v['stdio.' + s]}" for s in ("stdin", "stdout", "stderr"))
        return "granted", streams
    if group == "args":
        return "granted", "the arguments after -- on the command line"
    if group == "sockets":
        return "never", "no sockets are ever provided: calls fail at run time"
    if group == "custom":
        return "never", "not provided: the module does not link"
    return "always", "provided to every module"


def capabilities(ctx: _Context) -> tuple:
    """The capability groups the module imports from, in the order of wasi.GROUPS."""
    out = []
    for group, (title, _) in wasi.GROUPS.items():
        names = [f"{i.module}.{i.name}" if group == "custom" else i.name for i in ctx.imports]
        names = [n for n, i in zip(names, ctx.imports) if i.capability == group]
        if not names:
            continue
        status, detail = _capability_status(ctx, group)
        hosted = [
            f"{i.module}.{i.name}" for i in ctx.imports if i.capability == group and i.provided
        ]
        if group == "custom" and hosted:
            status = "granted" if len(hosted) == len(names) else status
            given = set(hosted)  # (a list made this 10^12 steps for 10^6 imports)
            missing = [n for n in names if n not in given]
            detail = "provided by the host: " + _names(hosted, LISTED)
            detail += f"; not provided: {_names(missing, LISTED)}" if missing else ""
        out.append(CapabilityUse(group, title, tuple(names), status, detail))
    return tuple(out)


# ---------------------------------------------------------------------------- suggestion


def _memory_need(facts: ModuleFacts, limit: int) -> tuple:
    """(bytes, reason) for limits.memory."""
    mems = facts.memories
    if not mems:
        return PAGE, "the module has no memory: limits.memory is one page, the least allowed"
    largest_min = max(m.limits.min for m in mems) * PAGE
    if all(m.limits.max is not None for m in mems):
        largest_max = max(m.limits.max for m in mems) * PAGE
        if largest_max <= limit:
            return largest_max, f"the module declares a memory maximum of {_size(largest_max)}"
        return limit, f"kept at the policy's {_limit(limit)} (the module may ask for up to " + (
            f"{_size(largest_max)})"
        )
    if largest_min > limit:
        return largest_min, f"raised to the module's initial memory, {_size(largest_min)}"
    return limit, (
        f"kept at the policy's {_limit(limit)}: the module declares no maximum "
        f"(it starts at {_size(largest_min)}); lower it to what your inputs need"
    )


def _table_need(facts: ModuleFacts, limit: int) -> tuple:
    """(elements, reason) for limits.table_elements."""
    tables = facts.tables
    if not tables:
        return 0, "the module has no table: limits.table_elements = 0"
    largest_min = max(t.limits.min for t in tables)
    if all(t.limits.max is not None for t in tables):
        largest_max = max(t.limits.max for t in tables)
        return min(largest_max, max(limit, largest_min)), (
            f"the module's tables declare at most {largest_max:,} elements"
        )
    return max(limit, largest_min), "a table declares no maximum: kept at the policy's limit"


def suggest_policy(report: AuditReport) -> SuggestedPolicy:
    """The least-privilege policy for the audited module, starting from the audited policy.

    Grants the module can use are kept (a static audit cannot tell which files it needs, so
    it never invents a directory); a capability it needs but the policy lacks becomes a
    commented-out placeholder. Limits come from what the module declares where it declares
    them; fuel, timeout, stack and output are the policy's.
    """
    if getattr(report, "is_component", False):
        from ..components.audit import suggest_policy as suggest_for_component

        return suggest_for_component(report)
    ctx = _Context(report.facts, report.policy, report.imports)
    kept = ("limits.fuel", "limits.timeout", "limits.stack", "limits.output")
    new = suggestion_start(report.policy, kept)
    notes: list = []
    placeholders: dict = {}
    _suggest_limits(ctx, new, notes)
    _suggest_filesystem(ctx, new, notes, placeholders)
    _suggest_env(ctx, new, notes, placeholders)
    _suggest_stdio(ctx, new, notes)
    return suggestion_end(new, report.policy, notes, placeholders)


def _suggest_limits(ctx: _Context, new: Any, notes: list) -> None:
    memory, why = _memory_need(ctx.facts, ctx.memory_limit)
    new.values["limits.memory"] = memory
    notes.append(f"limits.memory: {why}")
    tables, why = _table_need(ctx.facts, ctx.table_limit)
    new.values["limits.table_elements"] = tables
    notes.append(f"limits.table_elements: {why}")
    new.values["limits.instances"] = 1
    notes.append(
        "limits.fuel, timeout, stack and output: kept from the policy (set them from "
        "measured runs: wasmsbx run --stats)"
    )


def _suggest_filesystem(ctx: _Context, new: Any, notes: list, placeholders: dict) -> None:
    paths = ctx.path_functions
    if not paths:
        new.values["filesystem.read_only"] = ()
        new.values["filesystem.read_write"] = ()
        notes.append(
            "filesystem: no grant; the module imports no path_* function nor fd_readdir "
            "or fd_filestat_*"
        )
        return
    new.values["filesystem.read_only"] = tuple(ctx.read_only)
    new.values["filesystem.read_write"] = tuple(ctx.read_write)
    if ctx.grants:
        notes.append(
            "filesystem: the policy's grants are kept; the module reaches them "
            f"({_names(paths, 3)})"
        )
        return
    notes.append(
        "filesystem: the module opens paths but the policy grants none; fill in the "
        "placeholder with the one directory it needs"
    )
    placeholders["filesystem"] = [
        "# The module opens files by path (it imports path_open and friends). Grant only",
        "# the directory it needs, read-only unless it must write, for example:",
        '# read_only = ["HOST_DIR:/data"]',
    ]


def _suggest_env(ctx: _Context, new: Any, notes: list, placeholders: dict) -> None:
    if not ctx.env_functions:
        new.values["env.inherit"] = ()
        new.values["env.set"] = {}
        notes.append("env: nothing passed; the module does not read its environment")
        return
    keep = [p for p in ctx.inherit if not _matches_everything(p)]
    new.values["env.inherit"] = tuple(keep)
    new.values["env.set"] = dict(ctx.env_set)
    if len(keep) < len(ctx.inherit):
        notes.append("env: dropped an inherit pattern that passed every host variable")
    if keep or ctx.env_set:
        notes.append("env: the policy's variables are kept; the module reads its environment")
        return
    notes.append("env: the module reads its environment but nothing is passed; see placeholder")
    placeholders["env"] = [
        "# The module reads environment variables. Pass only the ones it needs, e.g.:",
        '# inherit = ["LANG"]',
        '# set = { MODE = "fast" }',
    ]


def _suggest_stdio(ctx: _Context, new: Any, notes: list) -> None:
    old = ctx.policy.values
    reads = bool(ctx.imported("fd_read", "fd_pread"))
    writes = bool(ctx.imported("fd_write", "fd_pwrite"))
    new.values["stdio.stdin"] = old["stdio.stdin"] if reads else "null"
    for stream in ("stdout", "stderr"):
        new.values[f"stdio.{stream}"] = old[f"stdio.{stream}"] if writes else "null"
    if not reads:
        notes.append("stdio.stdin = null: the module imports no fd_read")
    if not writes:
        notes.append("stdio.stdout/stderr = null: the module imports no fd_write")
