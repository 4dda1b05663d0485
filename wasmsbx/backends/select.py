"""Capability scoring: which backend (and compiler) runs this module under this policy.

Hard requirements first: every limit and grant the policy sets, its ``require`` list,
every wasm feature the module uses, and the kind of invocation. A candidate missing one
is excluded with the reason. The rest are scored in weighted categories; ``optimize``
and ``prefer`` move the weights; ties go to the registry order (wasmtime first).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from .. import capabilities as caps
from ..errors import BackendUnavailable
from . import get, names, split

BASE_WEIGHTS = {"features": 1.0, "security": 2.0, "performance": 1.5, "debugging": 0.5}
# optimize -> (weight multipliers, how much of "performance" is run speed vs compile speed)
OPTIMIZE = {
    "none": ({"performance": 1.0}, 0.2),
    "speed": ({"performance": 1.0}, 0.6),
    "size": ({"performance": 0.8}, 0.5),
    "aggressive": ({"performance": 2.0}, 0.9),
}
PREFER_BONUS = 0.5


class Candidate:
    """One backend:compiler pair, with why it is excluded or how it scored.

    A plain class, not a dataclass: selection runs on every ``wasmsbx run``, and
    importing dataclasses would cost more than the scoring itself.
    """

    def __init__(self, backend: str, compiler: Optional[str]) -> None:
        self.backend = backend
        self.compiler = compiler
        self.excluded: list = []  # reasons
        self.scores: dict = {}  # category -> 0..1
        self.bonus = 0.0
        self.total = 0.0

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.compiler}" if self.compiler else self.backend

    @property
    def eligible(self) -> bool:
        return not self.excluded

    @property
    def version(self) -> Optional[str]:
        return get(self.backend).version()

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "compiler": self.compiler,
            "version": self.version,
            "eligible": self.eligible,
            "excluded": list(self.excluded),
            "scores": {k: round(v, 3) for k, v in self.scores.items()},
            "bonus": round(self.bonus, 3),
            "total": round(self.total, 3),
        }


class Selection:
    def __init__(
        self, winner: Candidate, candidates: list, requirements: list, weights: dict
    ) -> None:
        self.winner = winner
        self.candidates = candidates
        self.requirements = requirements  # (capability, why)
        self.weights = weights

    @property
    def backend(self) -> str:
        return self.winner.backend

    @property
    def compiler(self) -> Optional[str]:
        return self.winner.compiler

    def to_dict(self) -> dict:
        return {
            "winner": self.winner.label,
            "requirements": [{"capability": c, "why": w} for c, w in self.requirements],
            "weights": {k: round(v, 3) for k, v in self.weights.items()},
            "candidates": [c.to_dict() for c in self.candidates],
        }


def requirements(policy, features: Iterable[str] = (), kind: str = "call") -> list:
    """Every capability this run needs, each with the reason it is needed."""
    values = policy.values
    needs = [
        ("memory-limit", f"limits.memory = {values['limits.memory']} bytes"),
        ("interrupt", f"limits.timeout = {values['limits.timeout']}s"),
    ]
    if values["limits.fuel"] is not None:
        needs.append(("fuel", f"limits.fuel = {values['limits.fuel']}"))
    if values["limits.stack"] is not None:
        needs.append(("stack-limit", f"limits.stack = {values['limits.stack']} bytes"))
    if values["limits.table_elements"] is not None:
        needs.append(("table-limit", "limits.table_elements is set"))
    if values["limits.instances"] is not None:
        needs.append(("instance-limit", "limits.instances is set"))
    if values["filesystem.read_only"]:
        needs.append(("wasi-readonly", "filesystem.read_only grants"))
    if values["filesystem.read_only"] or values["filesystem.read_write"]:
        needs.append(("wasi", "filesystem grants"))
        needs.append(("fs-confined", "filesystem grants must not be escapable"))
    if kind == "command":
        needs.append(("wasi", "runs a WASI command (_start)"))
    if kind == "command" and values["limits.output"] is not None:
        needs.append(("stdio-redirect", "limits.output caps guest output"))
    for stream in ("stdin", "stdout", "stderr"):
        if values[f"stdio.{stream}"] != "inherit":
            needs.append(("stdio-redirect", f"stdio.{stream} = {values[f'stdio.{stream}']!r}"))
    for name in values["runtime.require"]:
        needs.append((name, "runtime.require"))
    for feature in sorted(features):
        if feature != "unknown":
            needs.append((feature, "the module uses it"))
    seen, out = set(), []
    for cap, why in needs:
        if cap not in seen:
            seen.add(cap)
            out.append((cap, why))
    return out


def _weights(policy) -> tuple:
    multipliers, run_share = OPTIMIZE[policy.values["runtime.optimize"]]
    weights = dict(BASE_WEIGHTS)
    for category, factor in multipliers.items():
        weights[category] *= factor
    return weights, run_share


def _score(capset, run_share: float) -> dict:
    perf_flags = len(capset.performance & set(caps.PERFORMANCE)) / len(caps.PERFORMANCE)
    speed = run_share * capset.run_speed + (1 - run_share) * capset.compile_speed
    return {
        "features": len(capset.features & set(caps.WASM_FEATURES)) / len(caps.WASM_FEATURES),
        "security": len(capset.security & set(caps.SECURITY)) / len(caps.SECURITY),
        "performance": 0.7 * speed + 0.3 * perf_flags,
        "debugging": len(capset.debugging & set(caps.DEBUGGING)) / len(caps.DEBUGGING),
    }


def candidates_for(spec: str = "auto") -> list:
    """(backend, compiler) pairs to consider: all of them, or those a spec names."""
    pairs = []
    wanted_name, wanted_compiler = split(spec) if spec != "auto" else (None, None)
    for name in names():
        if wanted_name and name != wanted_name:
            continue
        backend = get(name)
        for compiler in backend.compilers or (None,):
            if wanted_compiler and compiler != wanted_compiler:
                continue
            pairs.append((backend, compiler))
    return pairs


def select(
    policy, features: Iterable[str] = (), kind: str = "call", backend: Optional[str] = None
) -> Selection:
    """Score every candidate; raise BackendUnavailable when none is eligible."""
    spec = backend or policy.values["runtime.backend"]
    if spec != "auto" and split(spec)[0] not in names():
        raise BackendUnavailable(
            f"backend {spec!r} is not known", hint=f"known backends: {', '.join(names())}"
        )
    needs = requirements(policy, features, kind)
    weights, run_share = _weights(policy)
    prefer = set(policy.values["runtime.prefer"])
    result = []
    for adapter, compiler in candidates_for(spec):
        cand = Candidate(adapter.name, compiler)
        availability = adapter.probe()
        if not availability.available:
            fix = f" (fix: {availability.fix})" if availability.fix else ""
            cand.excluded.append(f"unavailable: {availability.reason}{fix}")
            result.append(cand)
            continue
        capset = adapter.capabilities(compiler)
        for cap, why in needs:
            if not capset.has(cap):
                cand.excluded.append(f"lacks {cap} (needed: {why})")
        cand.scores = _score(capset, run_share)
        cand.bonus = PREFER_BONUS * sum(
            1 for p in prefer if capset.has(p) or p in (adapter.name, cand.label)
        )
        cand.total = sum(weights[c] * s for c, s in cand.scores.items()) + cand.bonus
        result.append(cand)
    eligible = [c for c in result if c.eligible]
    if not eligible:
        lines = "; ".join(f"{c.label}: {', '.join(c.excluded)}" for c in result)
        raise BackendUnavailable(
            f"no backend can run this under the policy: {lines}",
            hint="relax the policy (or --backend), or install the missing runtime",
            candidates=[c.to_dict() for c in result],
        )
    # max() keeps the first of equal totals: registry order is the stable tie-break.
    winner = max(eligible, key=lambda c: round(c.total, 9))
    return Selection(winner, result, needs, weights)
