"""``wasmsbx audit`` for a component: its WIT world read as capabilities, under the policy.

Nothing is instantiated. wasmtime compiles the component (at the lowest optimisation
level) only to read its WIT types; the core modules inside are read by ``wasmsbx.wasm.facts``.
The findings reuse the module audit's rules and risk score (README, "Findings"), with
component wording: imports are WASI 0.2 interfaces, not preview1 functions.

A component made from a wasm32-wasi module with the preview1 adapter
(``wasm-tools component new --adapt``) imports wasi:filesystem and wasi:cli/environment
whether or not the program uses them; the advice then says so, and never tells the user
to rebuild against a WASI SDK, since the adapter, not the program, asks.
"""

from __future__ import annotations

import hashlib
from collections import namedtuple
from pathlib import Path
from typing import Any, Optional

from ..audit.findings import (
    CapabilityUse,
    PolicyGrants,
    Verdict,
    _finding,
    _matches_everything,
    _sensitive,
    compute_risk,
    count_by_severity,
    suggestion_end,
    suggestion_start,
)
from ..audit.rules import severity_rank
from . import binary

SCHEMA = "wasmsbx.audit-component/1"
ADAPTER_MARK = b"wit-component:adapter:wasi_snapshot_preview1"
# interface prefix -> (capability, title, what it lets the component do)
GROUPS = (
    ("wasi:filesystem/", "filesystem", "Filesystem", "open, read and write files in preopens"),
    ("wasi:cli/environment", "environment", "Environment & args", "read argv and env vars"),
    ("wasi:cli/exit", "process", "Process exit", "end the run with an exit status"),
    ("wasi:cli/std", "stdio", "Standard streams", "read stdin, write stdout and stderr"),
    ("wasi:cli/terminal", "stdio", "Standard streams", "ask whether stdio is a terminal"),
    ("wasi:io/", "io", "Streams & polling", "use streams and wait on pollables"),
    ("wasi:clocks/", "clock", "Clocks", "read the time, sleep"),
    ("wasi:random/", "random", "Randomness", "read random bytes from the host"),
    ("wasi:sockets/", "sockets", "Sockets", "open TCP/UDP sockets, look up names"),
    ("wasi:http/", "http", "HTTP", "make or serve HTTP requests"),
)


class InterfaceUse(
    namedtuple("InterfaceUse", "name capability explanation provided problem", defaults=(None,))
):
    """One imported interface, its capability and whether the sandbox links it."""

    name: str
    capability: str
    explanation: str
    provided: bool
    problem: Optional[str]
    __slots__ = ()

    def to_dict(self) -> dict:
        return self._asdict()


class ComponentFacts(namedtuple("ComponentFacts", "size sha256 adapted layout")):
    size: int
    sha256: str
    adapted: bool  # built with the WASI preview1 adapter
    layout: Any  # binary.Layout
    __slots__ = ()


def classify(name: str) -> InterfaceUse:
    for prefix, capability, _, what in GROUPS:
        if name.startswith(prefix):
            if capability == "http":
                return InterfaceUse(name, capability, what, False, "network access is off")
            if capability == "sockets":
                return InterfaceUse(
                    name, capability, what, True, "linked, but every socket call is denied"
                )
            return InterfaceUse(name, capability, what, True)
    return InterfaceUse(name, "custom", "custom interface", False, "not provided by the sandbox")


class ComponentAuditReport(Verdict):
    """Everything ``wasmsbx audit`` shows for a component, as plain data."""

    is_component = True

    def __init__(self, path: str, facts: ComponentFacts, policy: Any, **parts: Any) -> None:
        self.path = path
        self.facts = facts
        self.policy = policy
        self.types_from: str = parts["types_from"]  # "cache" or "compiled"
        self.imports: tuple = parts["imports"]
        self.exports: list = parts["exports"]
        self.core_modules: list = parts["core_modules"]
        self.capabilities: tuple = parts["capabilities"]
        self.findings: tuple = parts["findings"]
        self.risk = compute_risk(self.findings)
        self.counts = count_by_severity(self.findings)

    def to_dict(self) -> dict:
        from .. import __version__
        from ..audit.formats import _policy

        return {
            "schema": SCHEMA,
            "tool": {"name": "wasmsbx", "version": __version__},
            "component": {
                "path": self.path,
                "size": self.facts.size,
                "sha256": self.facts.sha256,
                "adapted_preview1": self.facts.adapted,
                "types_from": self.types_from,
                "core_instances": self.facts.layout.core_instances,
                "core_modules": self.core_modules,
                "memories": [
                    {"min_bytes": low, "max_bytes": high}
                    for low, high in self.facts.layout.memories
                ],
            },
            "policy": _policy(self.policy),
            "capabilities": [c.to_dict() for c in self.capabilities],
            "imports": [i.to_dict() for i in self.imports],
            "exports": [{"name": e.name, "signature": str(e.sig)} for e in self.exports],
            "findings": [f.to_dict() for f in self.findings],
            "summary": self.summary(),
            "risk": self.risk.to_dict(),
        }

    def to_sarif(self) -> dict:
        from ..audit.formats import sarif_log

        return sarif_log(self)  # reads path, facts.size/sha256, policy, findings, risk


def audit_component(path: str, wasm: bytes, policy: Any) -> ComponentAuditReport:
    """Audit the component ``wasm`` against ``policy`` (ModuleError if it is malformed)."""
    import os

    from .. import errors
    from ..wasm.source import bounded_reads

    try:
        with bounded_reads(policy, None, os.path.basename(path)):  # (as a compile)
            layout = binary.scan(wasm)
    except binary.ComponentFormatError as exc:
        raise errors.ModuleError(f"{path}: {exc}", hint=exc.hint, path=str(path)) from None
    facts = ComponentFacts(
        len(wasm), hashlib.sha256(wasm).hexdigest(), ADAPTER_MARK in wasm, layout
    )
    findings: list = []
    exports, names, source = _introspect(wasm, policy, str(path), findings)
    imports = tuple(classify(n) for n in names)
    ctx = _Ctx(policy, imports, facts)
    for check in CHECKS:
        findings.extend(check(ctx))
    findings.sort(key=lambda f: (-severity_rank(f.severity), f.rule, f.subject))
    return ComponentAuditReport(
        str(path),
        facts,
        policy,
        types_from=source,
        imports=imports,
        exports=exports,
        core_modules=_core_modules(wasm, layout, policy, os.path.basename(path)),
        capabilities=_capabilities(ctx),
        findings=tuple(findings),
    )


def _introspect(wasm: bytes, policy: Any, path: str, findings: list) -> tuple:
    """(exports, import names, "cache" or "compiled") from wasmtime's introspection; a
    WSX008 finding if it rejects the component."""
    from .. import errors
    from ..backends.base import EngineOptions
    from ..backends.wasmtime.backend import WasmtimeEngine
    from . import runtime

    found = _from_cache(wasm, policy, path)
    if found is not None:
        engine, component = found
        source = "cache"
    else:  # compiled only to read its types: at the lowest optimisation level
        engine, source = WasmtimeEngine(EngineOptions(optimize="none")), "compiled"
        from ..backends.compiling import too_slow, watch_memory
        from ..backends.deadline import KEEPER

        # Watched as run's compiles are: `wasmsbx audit` hard-stops a compile past
        # limits.compile_timeout (exit 117). It ran unbounded (a hostile component built
        # to compile slowly held the command as long as it liked).
        seconds = policy.values["limits.compile_timeout"]
        watch = KEEPER.enter(None, seconds, lambda: too_slow(path, seconds))
        watch_memory(watch, len(wasm))  # (and its memory, red team round 32)
        try:
            component = runtime.compile_component(engine, wasm)
        except errors.ModuleError as exc:
            findings.append(
                _finding("WSX008", f"wasmtime rejects the component: {exc}", "component")
            )
            return [], [], source
        finally:
            KEEPER.leave(watch)
    names = [i.name for i in runtime.imports(engine, component)]
    probed = runtime.has_probe(engine, component, wasm)  # a cached one carries it
    return runtime.exports(engine, component, probed), names, source


def _from_cache(wasm: bytes, policy: Any, path: str) -> Optional[tuple]:
    """(engine, component) from the cache entry ``run`` or ``compile`` made under this
    policy, authenticated as ``run`` would (an 18 MB componentize-py guest: 42 s to
    compile, well under a second from its entry); None if there is none."""
    if not policy.values["runtime.cache"]:
        return None
    from ..backends import get
    from ..native.cache import cached
    from ..runner.sandbox import engine_options
    from .runtime import ComponentEngine

    adapter = get("wasmtime")
    engine = ComponentEngine(adapter.engine(engine_options(policy, adapter.default_compiler)))
    component = cached(engine, wasm, policy, Path(path).name)
    return None if component is None else (engine.inner, component)


def _core_modules(wasm: bytes, layout: Any, policy: Any, name: str) -> list:
    """What each core module imports, exports and defines: read within
    limits.compile_timeout, as the scan was (thousands of modules of 4,095 types each
    were read for 32 s under a 1 s limit, red team 153)."""
    from ..wasm.facts import FactsError, read_facts
    from ..wasm.source import bounded_reads

    out = []
    with bounded_reads(policy, None, name):
        for module in layout.core_modules:
            binary.late()
            entry: dict = {"index": module.index, "size": module.size}
            try:
                facts = read_facts(
                    wasm[module.offset : module.offset + module.size], scan_code=False
                )
            except FactsError as exc:
                entry["error"] = str(exc)
            else:
                entry["imports"] = sorted({i.module for i in facts.imports})
                entry["exports"] = len(facts.exports)
                entry["memories"] = [m.limits.to_dict() for m in facts.memories if not m.imported]
            out.append(entry)
    return out


class _Ctx(PolicyGrants):
    def __init__(self, policy: Any, imports: tuple, facts: ComponentFacts) -> None:
        super().__init__(policy)
        self.imports = imports
        self.facts = facts
        self.caps = {i.capability for i in imports}

    def names(self, capability: str) -> list:
        return [i.name for i in self.imports if i.capability == capability]

    @property
    def adapter_note(self) -> str:
        if not self.facts.adapted:
            return ""
        return (
            " (the WASI preview1 adapter imports it whether or not the program uses it; "
            "nothing to rebuild)"
        )


def check_link(ctx: _Ctx) -> Any:
    refused = [i for i in ctx.imports if not i.provided]
    if refused:
        names = ", ".join(i.name for i in refused)
        yield _finding(
            "WSX001",
            f"the sandbox does not provide {names}: instantiation fails",
            "imports",
            fix="build the component without these imports (wasmsbx links the WASI 0.2 "
            "interfaces; wasi:http never)",
        )


def check_filesystem(ctx: _Ctx) -> Any:
    uses = "filesystem" in ctx.caps
    if uses and not ctx.grants:
        yield _finding(
            "WSX003",
            "imports wasi:filesystem, but no directory is granted: opening files fails"
            + ctx.adapter_note,
            "wasi:filesystem",
            fix="grant a directory (--dir-ro HOST:GUEST) if the component opens files",
        )
    for grant in ctx.grants:
        subject = f"{grant.host}:{grant.guest}"
        if not uses:
            severity = "medium" if grant.writable else "low"
            yield _finding(
                "WSX101",
                f"{subject} is granted but the component imports no wasi:filesystem",
                subject,
                severity=severity,
                where="policy",
                key="filesystem.read_write" if grant.writable else "filesystem.read_only",
            )
            continue
        why = _sensitive(grant.host)
        if why:
            yield _finding("WSX104", f"{subject}: {why}", subject, where="policy")
        rule = "WSX110" if grant.writable else "WSX111"
        verb = "create, change and delete" if grant.writable else "read"
        yield _finding(rule, f"can {verb} files under {grant.host}", subject, where="policy")


def check_environment(ctx: _Ctx) -> Any:
    uses = "environment" in ctx.caps
    passed = ctx.env_passed
    if any(_matches_everything(p) for p in ctx.inherit):
        yield _finding(
            "WSX103", "every host environment variable is passed", "env.inherit", where="policy"
        )
    if uses and not passed:
        yield _finding(
            "WSX004",
            "imports wasi:cli/environment, but no variable is passed" + ctx.adapter_note,
            "wasi:cli/environment",
        )
    elif passed and not uses:
        yield _finding(
            "WSX102",
            "variables are passed but the component imports no wasi:cli/environment",
            "env",
            where="policy",
            key="env",
        )
    elif passed:
        yield _finding("WSX112", "reads the variables the policy passes", "env")


def check_network(ctx: _Ctx) -> Any:
    sockets = ctx.names("sockets")
    if sockets:
        yield _finding(
            "WSX005",
            f"imports {', '.join(sockets)}: linked, but every socket call is denied",
            "wasi:sockets",
            fix="nothing to do if the component does not need the network (many toolchains "
            "import wasi:sockets by habit)",
        )


def check_memories(ctx: _Ctx) -> Any:
    for index, (_, high) in enumerate(ctx.facts.layout.memories):
        if high is None:
            yield _finding(
                "WSX201",
                f"core memory {index} has no maximum: limits.memory is its only bound",
                f"memory {index}",
            )


def check_nondeterminism(ctx: _Ctx) -> Any:
    used = ctx.names("clock") + ctx.names("random")
    if used:
        yield _finding("WSX210", f"imports {', '.join(used)}", "clock/random")


CHECKS = (
    check_link,
    check_filesystem,
    check_environment,
    check_network,
    check_memories,
    check_nondeterminism,
)


def _capabilities(ctx: _Ctx) -> tuple:
    out = []
    titles = {cap: title for _, cap, title, _ in GROUPS}
    titles["custom"] = "Custom interfaces"
    for cap in dict.fromkeys(i.capability for i in ctx.imports):
        names = tuple(ctx.names(cap))
        status, detail = _status(ctx, cap)
        out.append(CapabilityUse(cap, titles.get(cap, cap), names, status, detail))
    return tuple(out)


def _status(ctx: _Ctx, cap: str) -> tuple:
    if cap == "filesystem":
        if ctx.grants:
            return "granted", ", ".join(f"{g.host}:{g.guest}" for g in ctx.grants)
        return "denied", "no directory granted"
    if cap == "environment":
        if ctx.env_passed:
            return "granted", "argv, and the variables the policy passes"
        return "denied", "argv only; no variables passed"
    if cap in ("sockets",):
        return "never", "linked; every socket call is denied (network.enabled = false)"
    if cap in ("http", "custom"):
        return "never", "not linked: instantiation fails"
    return "always", "provided to every component"


# ---------------------------------------------------------------------------- suggestion


def suggest_policy(report: ComponentAuditReport) -> Any:
    """The least-privilege policy for the audited component (as for modules: grants it
    can use are kept, needed ones become commented-out placeholders, never invented)."""
    old = report.policy.values
    kept = ("limits.fuel", "limits.timeout", "limits.stack", "limits.output")
    new = suggestion_start(report.policy, kept + ("limits.table_elements",))
    ctx = _Ctx(report.policy, report.imports, report.facts)
    notes: list = []
    placeholders: dict = {}
    _suggest_memory(ctx, new, notes, old["limits.memory"])
    new.values["limits.instances"] = 1
    notes.append(
        "limits.instances = 1: one instance of the component (with the "
        f"{ctx.facts.layout.core_instances} core instances it declares)"
    )
    _suggest_grants(ctx, new, notes, placeholders)
    _suggest_streams(ctx, new, notes, old)
    return suggestion_end(new, report.policy, notes, placeholders)


def _suggest_memory(ctx: _Ctx, new: Any, notes: list, limit: int) -> None:
    memories = ctx.facts.layout.memories
    if memories and all(high is not None for _, high in memories):
        total = sum(high for _, high in memories)
        if total <= limit:
            new.values["limits.memory"] = max(total, PAGE)
            notes.append(f"limits.memory: the total of the declared memory maxima ({total:,} B)")
            return
    new.values["limits.memory"] = limit
    notes.append("limits.memory: kept from the policy (a memory declares no maximum)")


PAGE = 65536


def _suggest_grants(ctx: _Ctx, new: Any, notes: list, placeholders: dict) -> None:
    if "filesystem" not in ctx.caps:
        new.values["filesystem.read_only"] = ()
        new.values["filesystem.read_write"] = ()
        notes.append("filesystem: no grant; the component imports no wasi:filesystem")
    else:
        new.values["filesystem.read_only"] = tuple(ctx.read_only)
        new.values["filesystem.read_write"] = tuple(ctx.read_write)
        notes.append("filesystem: the policy's grants are kept (it imports wasi:filesystem)")
        if not ctx.grants:
            placeholders["filesystem"] = [
                "# The component imports wasi:filesystem" + ctx.adapter_note + ".",
                "# If it opens files, grant only the directory it needs, e.g.:",
                '# read_only = ["HOST_DIR:/data"]',
            ]
    if "environment" not in ctx.caps:
        new.values["env.inherit"] = ()
        new.values["env.set"] = {}
        notes.append("env: nothing passed; the component imports no wasi:cli/environment")
        return
    new.values["env.inherit"] = tuple(p for p in ctx.inherit if not _matches_everything(p))
    new.values["env.set"] = dict(ctx.env_set)
    notes.append("env: the policy's variables are kept (an inherit-everything '*' is dropped)")
    if not (new.values["env.inherit"] or ctx.env_set):
        placeholders["env"] = [
            "# The component imports wasi:cli/environment. Pass only what it needs, e.g.:",
            '# inherit = ["LANG"]',
        ]


def _suggest_streams(ctx: _Ctx, new: Any, notes: list, old: Any) -> None:
    names = [i.name for i in ctx.imports]
    for stream in ("stdin", "stdout", "stderr"):
        used = any(n.startswith(f"wasi:cli/{stream}") for n in names)
        new.values[f"stdio.{stream}"] = old[f"stdio.{stream}"] if used else "null"
        if not used:
            notes.append(f"stdio.{stream} = null: the component imports no wasi:cli/{stream}")
