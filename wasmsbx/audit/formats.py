"""The two machine views of an :class:`~wasmsbx.audit.report.AuditReport`.

``report_dict`` is the ``wasmsbx audit --json`` report (schema ``wasmsbx.audit/1``, described
field by field in :mod:`wasmsbx.audit.schema` and the README); ``sarif_log`` is the same
findings as a SARIF 2.1.0 log for code-scanning tools.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote

from .._version import __version__
from ..wasm.model import signature_text
from .findings import LISTED
from .rules import PAGE, RULES, start_export

if TYPE_CHECKING:
    from .report import AuditReport

REPORT_SCHEMA = "wasmsbx.audit/1"  # the "schema" field of --json; bumped on breaking changes
SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
SARIF_LEVEL = {"high": "error", "medium": "warning", "low": "note", "info": "note"}
SARIF_SECURITY_SEVERITY = {"high": "8.0", "medium": "5.0", "low": "3.0", "info": "1.0"}

INFORMATION_URI = "https://pypi.org/project/wasmsbx/"


def cut_lists(value: Any, kept: int, cut: dict, where: str = "") -> Any:
    """``value`` (JSON data) with every list longer than ``kept`` cut to its first
    ``kept`` items, each cut entered in ``cut`` as {where: full length} ("exports",
    "capabilities[0].imports"). Shared by this report and the MCP server's ``bounded``."""
    if isinstance(value, list):
        if len(value) > kept:
            cut[where] = len(value)
            value = value[:kept]
        return [cut_lists(v, kept, cut, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            k: cut_lists(v, kept, cut, f"{where}.{k}" if where else str(k))
            for k, v in value.items()
        }
    return value


def truncation(cut: dict, kept: int, reason: str) -> Optional[dict]:
    """The report's ``truncated``: null when no list was cut."""
    return {"lists": cut, "kept": kept, "reason": reason} if cut else None


def _first(items: Any, where: str, cut: dict, kept: int = LISTED) -> Any:
    """``items`` cut to ``kept`` before they are converted (``cut_lists`` cuts what is
    already made; a million dicts made only to be dropped is what this avoids)."""
    if len(items) > kept:
        cut[where] = len(items)
        return items[:kept]
    return items


# ---------------------------------------------------------------------------- --json


def report_dict(report: AuditReport, kept: int = LISTED) -> dict:
    """The --json report, every list cut to its first ``kept`` items (``truncated``
    says which and how long they were)."""
    facts, cut = report.facts, {}
    out = {
        "schema": REPORT_SCHEMA,
        "tool": {"name": "wasmsbx", "version": __version__},
        "module": _module(report, cut, kept),
        "policy": _policy(report.policy),
        "capabilities": [c.to_dict() for c in report.capabilities],
        "imports": [i.to_dict() for i in _first(report.imports, "imports", cut, kept)],
        "exports": [_export(e) for e in _first(facts.exports, "exports", cut, kept)],
        "memories": [_memory(m) for m in _first(facts.memories, "memories", cut, kept)],
        "tables": [_table(t) for t in _first(facts.tables, "tables", cut, kept)],
        "globals": _globals(facts, _first(facts.globals, "globals", cut, kept)),
        "start": _start(facts),
        "data": _data(facts),
        "findings": [f.to_dict() for f in report.findings],
        "summary": report.summary(),
        "risk": report.risk.to_dict(),
    }
    out = cut_lists(out, kept, cut)  # (the rest: capabilities' names, data sizes...)
    out["truncated"] = truncation(
        cut, kept, f"lists of more than {kept:,} items keep their first {kept:,}"
    )
    return out


def _module(report: AuditReport, cut: dict, kept: int) -> dict:
    facts = report.facts
    customs = _first(facts.custom_sections, "module.custom_sections", cut, kept)
    return {
        "path": report.path,
        "size": facts.size,
        "sha256": facts.sha256,
        "functions": facts.functions,
        "features": sorted(facts.features),
        "producers": {k: list(v) for k, v in facts.producers.items()},
        "name_section": facts.has_name_section,
        "debug_info": facts.has_debug_info,
        "custom_sections": [c.to_dict() for c in customs],
    }


def _policy(policy: Any) -> dict:
    v = policy.values

    def grants(key: str) -> list:
        return [{"host": g.host, "guest": g.guest} for g in v[key]]

    return {
        "source": policy.source,
        "limits": {
            "memory": v["limits.memory"],
            "table_elements": v["limits.table_elements"],
            "instances": v["limits.instances"],
            "fuel": v["limits.fuel"],
            "timeout": v["limits.timeout"],
            "stack": v["limits.stack"],
            "output": v["limits.output"],
        },
        "filesystem": {
            "read_only": grants("filesystem.read_only"),
            "read_write": grants("filesystem.read_write"),
        },
        # Names only: values set in a policy may be secrets.
        "env": {"inherit": list(v["env.inherit"]), "set": sorted(v["env.set"])},
        "stdio": {s: v[f"stdio.{s}"] for s in ("stdin", "stdout", "stderr")},
        "memory_layout": _memory_layout(v),
    }


def _memory_layout(values: dict) -> dict:
    """runtime.memory_layout, the bytes each linear memory reserves under it on wasmtime
    (null: wasmtime's own 4 GiB + guards), and runtime.memory_init."""
    from ..backends.reserve import reservation

    layout = values["runtime.memory_layout"]
    return {
        "layout": layout,
        "reservation": reservation(layout, values["limits.memory"]),
        "init": values["runtime.memory_init"],
    }


def _export(exp: Any) -> dict:
    return {
        "name": exp.name,
        "kind": exp.kind,
        "index": exp.index,
        "signature": signature_text(exp.type) if exp.type is not None else None,
    }


def _memory(mem: Any) -> dict:
    lim = mem.limits
    return {
        "index": mem.index,
        "imported": mem.imported,
        "min_pages": lim.min,
        "max_pages": lim.max,
        "min_bytes": lim.min * PAGE,
        "max_bytes": None if lim.max is None else lim.max * PAGE,
        "shared": lim.shared,
        "memory64": lim.memory64,
    }


def _table(table: Any) -> dict:
    return {
        "index": table.index,
        "imported": table.imported,
        "elem": table.elem,
        "min": table.limits.min,
        "max": table.limits.max,
    }


def _globals(facts: Any, shown: Any) -> list:
    """The ``shown`` globals, each with the names it is exported as (found once per
    export: a scan of the exports per global took 100,000 x 100,000 steps)."""
    exported: dict = {}
    for e in facts.exports:
        if e.kind == "global":
            exported.setdefault(e.index, []).append(e.name)
    out = []
    for g in shown:
        names = exported.get(g.index, [])
        out.append(
            {
                "index": g.index,
                "type": g.type,
                "mutable": g.mutable,
                "imported": g.imported,
                "exported_as": names,
            }
        )
    return out


def _start(facts: Any) -> Optional[dict]:
    if facts.start is None:
        return None
    return {"function": facts.start, "export": start_export(facts)}


def _data(facts: Any) -> dict:
    sizes = list(facts.data_segments)
    return {
        "segments": len(sizes),
        "total_bytes": sum(sizes),
        "largest_bytes": max(sizes, default=0),
        "sizes": sizes,
    }


# ---------------------------------------------------------------------------- --sarif


def artifact_uri(path: str) -> str:
    """A URI reference for ``path``: relative (POSIX, percent-encoded) when it is under the
    current directory, as code-scanning tools expect; a file: URI otherwise."""
    p = Path(path)
    try:
        rel = p.resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return p.resolve().as_uri()
    return quote(rel.as_posix())


def _policy_line(source: Optional[str], key: Optional[str]) -> int:
    """The 1-based line of ``key`` (dotted) in the policy file; 1 when not found."""
    if not source or not key:
        return 1
    try:
        lines = Path(source).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return 1
    section, name = key.split(".", 1)
    in_section = False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("["):
            in_section = stripped.strip("[] ") == section
        elif in_section and re.match(rf"{re.escape(name)}\s*=", stripped):
            return number
    return 1


def _sarif_rules() -> list:
    out = []
    for rule in RULES.values():
        out.append(
            {
                "id": rule.id,
                "name": rule.name,
                "shortDescription": {"text": rule.title},
                "fullDescription": {"text": rule.help},
                "help": {"text": f"{rule.help} Fix: {rule.fix}."},
                "defaultConfiguration": {"level": SARIF_LEVEL[rule.severity]},
                "properties": {
                    "tags": ["security", "webassembly"],
                    "security-severity": SARIF_SECURITY_SEVERITY[rule.severity],
                    "severity": rule.severity,
                    "points": rule.points,
                },
            }
        )
    return out


def _fingerprint(report: AuditReport, finding: Any) -> str:
    text = f"{finding.rule}|{finding.subject}|{os.path.basename(report.path)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _sarif_result(report: AuditReport, finding: Any, rule_index: dict, artifacts: dict) -> dict:
    on_policy = finding.where == "policy" and report.policy.source
    uri = artifacts["policy"] if on_policy else artifacts["module"]
    line = _policy_line(report.policy.source, finding.key) if on_policy else 1
    return {
        "ruleId": finding.rule,
        "ruleIndex": rule_index[finding.rule],
        "level": SARIF_LEVEL[finding.severity],
        "message": {"text": f"{finding.message}. Fix: {finding.fix}."},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": uri[0], "index": uri[1]},
                    "region": {"startLine": line},
                },
                "message": {"text": finding.subject},
            }
        ],
        "partialFingerprints": {"wasmsbxFinding/v1": _fingerprint(report, finding)},
        "properties": {
            "severity": finding.severity,
            "points": finding.points,
            "subject": finding.subject,
        },
    }


def _sarif_tool() -> dict:
    return {
        "driver": {
            "name": "wasmsbx",
            "version": __version__,
            "semanticVersion": __version__,
            "informationUri": INFORMATION_URI,
            "rules": _sarif_rules(),
        }
    }


def sarif_failure(message: str, exit_code: int, hint: str = "") -> dict:
    """A SARIF 2.1.0 log of an audit that could not be made (a module that cannot be
    read, Ctrl-C): the invocation failed, with the error as its notification, and no
    ``results`` (absent, not empty: an empty list would say the module was audited and
    nothing was found). A CI step that uploads the log then shows the failure instead
    of finding no file."""
    text = f"{message} (hint: {hint})" if hint else message
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": _sarif_tool(),
                "invocations": [
                    {
                        "executionSuccessful": False,
                        "exitCode": exit_code,
                        "toolExecutionNotifications": [
                            {"level": "error", "message": {"text": text}}
                        ],
                    }
                ],
            }
        ],
    }


def sarif_failure_of(exc: BaseException) -> dict:
    """``sarif_failure`` of the error ``exc`` (a WasmsbxError, or Ctrl-C's
    KeyboardInterrupt)."""
    if isinstance(exc, KeyboardInterrupt):
        from ..errors import ExitCode

        return sarif_failure("interrupted", int(ExitCode.INTERRUPTED))
    return sarif_failure(exc.message, int(exc.exit_code), exc.hint or "")  # type: ignore[attr-defined]


def sarif_log(report: AuditReport) -> dict:
    """The findings as a SARIF 2.1.0 log with one run."""
    artifacts = [
        {
            "location": {"uri": artifact_uri(report.path)},
            "length": report.facts.size,
            "hashes": {"sha-256": report.facts.sha256},
            "roles": ["analysisTarget"],
        }
    ]
    where = {"module": (artifacts[0]["location"]["uri"], 0)}
    if report.policy.source:
        uri = artifact_uri(report.policy.source)
        artifacts.append({"location": {"uri": uri}, "roles": ["analysisTarget"]})
        where["policy"] = (uri, 1)
    rule_index = {rule_id: i for i, rule_id in enumerate(RULES)}
    results = [_sarif_result(report, f, rule_index, where) for f in report.findings]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": _sarif_tool(),
                "artifacts": artifacts,
                "results": results,
                "columnKind": "unicodeCodePoints",
                "properties": {
                    "riskScore": report.risk.score,
                    "riskLevel": report.risk.level,
                    "riskFormula": report.risk.formula,
                },
            }
        ],
    }
