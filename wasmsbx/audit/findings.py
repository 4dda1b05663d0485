"""Audit records shared by the module audit (report.py) and the component audit
(components/audit.py): findings, capability uses, the risk score, the suggested policy,
and the small judgements both make. Below both, so neither imports the other's module."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .rules import RULES, severity_rank

RISK_LEVELS = ((60, "high"), (30, "moderate"), (10, "low"), (0, "minimal"))
# Items of each list the --json report and the text view show; the rest are counted
# (the report's ``truncated``, a "N more" row). A valid module may declare 1,000,000
# globals, exports or imports (wasm.facts.MAX_COUNTS): one object or row each made
# `audit --json` of 1M globals (5 MB) write 130 MB and use 1.37 GB (red team round 77).
# 1,000 keeps every list of an ordinary module whole.
LISTED = 1000


@dataclass(frozen=True)
class Finding:
    """One rule firing on one subject (an import module, a memory, a grant ...)."""

    rule: str
    severity: str
    message: str
    fix: str
    points: int
    subject: str
    where: str = "module"  # "module" or "policy"
    key: Optional[str] = None  # the dotted policy key, when where == "policy"

    @property
    def title(self) -> str:
        return RULES[self.rule].title

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "name": RULES[self.rule].name,
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "fix": self.fix,
            "points": self.points,
            "subject": self.subject,
            "where": self.where,
            "key": self.key,
        }


def _finding(rule_id: str, message: str, subject: str, **kw: Any) -> Finding:
    rule = RULES[rule_id]
    return Finding(
        rule=rule_id,
        severity=kw.pop("severity", rule.severity),
        message=message,
        fix=kw.pop("fix", rule.fix),
        points=kw.pop("points", rule.points),
        subject=subject,
        **kw,
    )


@dataclass(frozen=True)
class CapabilityUse:
    """One capability group the module imports from, and what the policy says about it."""

    name: str
    title: str
    imports: tuple
    status: str  # granted | denied | always | never
    detail: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "imports": list(self.imports),
            "status": self.status,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Risk:
    """score = min(100, sum of the points of every finding); ``items`` are the addends."""

    score: int
    total: int
    level: str
    items: tuple  # (rule, subject, points)

    @property
    def formula(self) -> str:
        if not self.items:
            return "no finding adds points: 0"
        terms = " + ".join(f"{points} [{rule}]" for rule, _, points in self.items)
        return f"min(100, {terms}) = {self.score}"

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "level": self.level,
            "total": self.total,
            "items": [{"rule": r, "subject": s, "points": p} for r, s, p in self.items],
            "formula": self.formula,
        }


def compute_risk(findings: Iterable[Finding]) -> Risk:
    items = tuple((f.rule, f.subject, f.points) for f in findings if f.points)
    total = sum(points for _, _, points in items)
    score = min(100, total)
    level = next(name for floor, name in RISK_LEVELS if score >= floor)
    return Risk(score, total, level, items)


SENSITIVE_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/proc", "/root")
SENSITIVE_DIRS += ("/run", "/sbin", "/sys", "/usr", "/var", "/tmp")


def _sensitive(host: str) -> Optional[str]:
    """Why granting ``host`` exposes too much, or None."""
    path = Path(host)
    if str(path) == "/":
        return "the host's root directory"
    if str(path) in SENSITIVE_DIRS:
        return "a system directory"
    home = os.environ.get("HOME")
    if home and Path(home) != Path("/"):
        home_path = Path(home).resolve()
        if path == home_path:
            return "the home directory"
        if path in home_path.parents:
            return "a parent of the home directory"
    return None


def _matches_everything(pattern: str) -> bool:
    """True for env.inherit patterns that pass every variable: "*", "**", "?*"."""
    return pattern in ("?*", "*?") or (bool(pattern) and set(pattern) == {"*"})


@dataclass(frozen=True)
class SuggestedPolicy:
    """A least-privilege policy for one module: values as written in sandbox.toml, the
    reason for each decision, and commented-out grants the user has to fill in."""

    values: dict  # section -> key -> TOML value
    notes: tuple  # one line per decision
    placeholders: dict  # section -> commented lines

    def to_toml(self) -> str:
        import textwrap

        import tomli_w

        lines = ["# sandbox.toml suggested by `wasmsbx audit --suggest-policy`."]
        lines += ["# Least privilege for this module: only the grants it can use."]
        for note in self.notes:
            wrapped = textwrap.wrap(note, 86)
            lines += [f"# - {wrapped[0]}"] + [f"#   {rest}" for rest in wrapped[1:]]
        for section, body in self.values.items():
            body = {k: v for k, v in body.items() if v != {}}  # an empty env.set says nothing
            text = tomli_w.dumps({section: body}).rstrip("\n").split("\n")
            header, rest = text[0], text[1:]
            lines += ["", header, *self.placeholders.get(section, ()), *rest]
        text = "\n".join(lines) + "\n"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # (a folder's name: bytes that are not UTF-8)
            from .. import errors

            end = text.find("\n", exc.end)
            line = text[text.rfind("\n", 0, exc.start) + 1 : end if end >= 0 else None]
            raise errors.UsageError(
                f"the suggested policy would name a folder whose name is not UTF-8 "
                f"({errors.inert(errors.as_bytes(line.strip()), 120)}): a TOML file cannot "
                "hold it",
                hint="rename the folder, or grant one with a UTF-8 name",
            ) from None
        return text

    def to_dict(self) -> dict:
        return {
            "values": self.values,
            "notes": list(self.notes),
            "placeholders": {k: list(v) for k, v in self.placeholders.items()},
        }


# ---------------------------------------------------------------------------- shared by both audits


class Verdict:
    """``worst``/``fails`` over ``self.findings``: a module's report and a component's."""

    findings: tuple

    def worst(self) -> Optional[str]:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=severity_rank)

    def summary(self) -> dict:
        """The ``summary`` of the JSON report."""
        return {
            "findings": len(self.findings),
            "by_severity": count_by_severity(self.findings),
            "worst": self.worst(),
        }

    def fails(self, threshold: str) -> bool:
        """True when a finding at or above ``threshold`` exists (``--fail-on``)."""
        floor = severity_rank(threshold)
        return any(severity_rank(f.severity) >= floor for f in self.findings)


def count_by_severity(findings: Iterable[Finding]) -> dict:
    """{severity: number of findings}, every severity present (0 when none)."""
    from .rules import SEVERITIES

    findings = list(findings)
    return {sev: sum(1 for f in findings if f.severity == sev) for sev in SEVERITIES}


class PolicyGrants:
    """What a policy grants, as the checks of both audits read it."""

    def __init__(self, policy: Any) -> None:
        values = policy.values
        self.policy = policy
        self.read_only = list(values["filesystem.read_only"])
        self.read_write = list(values["filesystem.read_write"])
        self.inherit = list(values["env.inherit"])
        self.env_set = dict(values["env.set"])

    @property
    def grants(self) -> list:
        return self.read_only + self.read_write

    @property
    def env_passed(self) -> bool:
        return bool(self.inherit or self.env_set)


def suggestion_start(policy: Any, kept: tuple) -> Any:
    """The defaults with the audited policy's ``runtime`` section and ``kept`` keys
    (the limits a static audit cannot derive): where a suggested policy starts."""
    from .. import policy as policy_mod

    old, new = policy.values, policy_mod.defaults()
    for key in policy_mod.SCHEMA:
        if key.section == "runtime" or key.dotted in kept:
            new.values[key.dotted] = old[key.dotted]
    return new


_STREAMS = ("stdin", "stdout", "stderr")


def _as_written(policy: Any, text: Any) -> Any:
    """A path a found policy was pinned to (policy.confine: absolute, resolved), relative
    to its folder again, as a sandbox.toml would say it (an absolute path in a suggested
    policy is refused in every other checkout of the project)."""
    import os

    root = getattr(policy, "confined", "")
    if not (root and isinstance(text, str) and os.path.isabs(text)):
        return text
    relative = os.path.relpath(text.rstrip(os.sep) or os.sep, root)
    if relative == ".." or relative.startswith(".." + os.sep):
        return text
    return relative + os.sep if text.endswith(os.sep) else relative


def suggestion_end(new: Any, policy: Any, notes: list, placeholders: dict) -> SuggestedPolicy:
    """The suggested policy, with only the runtime keys the audited policy set itself."""
    values = new.to_toml_dict()
    for section, name in (("runtime", "cache_dir"), *(("stdio", s) for s in _STREAMS)):
        if name in values.get(section, {}):
            values[section][name] = _as_written(policy, values[section][name])
    runtime = {k: v for k, v in values["runtime"].items() if f"runtime.{k}" in policy.explicit}
    if runtime:
        values["runtime"] = runtime
    else:
        del values["runtime"]
    return SuggestedPolicy(values, tuple(notes), placeholders)
