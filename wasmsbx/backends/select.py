"""Capability scoring: which backend (and compiler) runs this module under this policy.

1. Hard requirements. Every limit and grant the policy sets, its ``require`` list, every
   wasm feature the module uses, and the kind of invocation become capabilities a
   candidate (one backend:compiler pair) must declare. A candidate missing one, or not
   available here, is excluded with the reason.
2. Soft scores. The rest get a 0..1 score in four categories: wasm features, security,
   performance (measured compile and run speed plus performance flags) and debugging.
   Each is weighted (BASE_WEIGHTS); ``runtime.optimize`` scales the performance weight
   and how much of it is run speed rather than compile speed (OPTIMIZE); each
   ``runtime.prefer`` entry a candidate matches (a capability it has, or its backend's
   name) adds PREFER_BONUS.
3. The highest total wins. Ties go to the stable order: registry order of backends
   (wasmtime, then wasmer), then each backend's compiler order (cranelift, llvm,
   singlepass).

The module's features are read (wasmsbx.wasm.facts) only when more than one candidate is
left after the policy's requirements: with one left they cannot change the choice, and
the runtime itself reports a feature it lacks. That keeps ``wasmsbx run`` lean.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

from .. import capabilities as caps
from ..errors import BackendUnavailable
from . import REGISTRY, get, names, split

BASE_WEIGHTS = {"features": 1.0, "security": 2.0, "performance": 1.5, "debugging": 0.5}
# optimize -> (weight multipliers, share of "speed" that is run speed vs compile speed)
OPTIMIZE = {
    "none": ({"performance": 1.0}, 0.2),
    "speed": ({"performance": 1.0}, 0.6),
    "size": ({"performance": 0.8}, 0.5),
    "aggressive": ({"performance": 2.0}, 0.9),
}
PREFER_BONUS = 0.5
CATEGORIES = ("features", "security", "performance", "debugging")


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
        self.bonus_reasons: list = []
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
            "label": self.label,
            "version": self.version,
            "eligible": self.eligible,
            "excluded": list(self.excluded),
            "scores": {k: round(v, 3) for k, v in self.scores.items()},
            "bonus": round(self.bonus, 3),
            "bonus_reasons": list(self.bonus_reasons),
            "total": round(self.total, 3),
        }


class Selection:
    def __init__(
        self,
        winner: Candidate,
        candidates: list,
        requirements: list,
        weights: dict,
        run_share: float = 0.6,
        features_checked: bool = True,
    ) -> None:
        self.winner = winner
        self.candidates = candidates
        self.requirements = requirements  # (capability, why)
        self.weights = weights
        self.run_share = run_share
        self.features_checked = features_checked
        self.reason = _reason(winner, candidates)
        self.memory_layout: dict = {}  # reserve.in_force: the winner's memory layout

    @property
    def backend(self) -> str:
        return self.winner.backend

    @property
    def compiler(self) -> Optional[str]:
        return self.winner.compiler

    def to_dict(self) -> dict:
        return {
            "winner": self.winner.label,
            "reason": self.reason,
            "requirements": [{"capability": c, "why": w} for c, w in self.requirements],
            "weights": {k: round(v, 3) for k, v in self.weights.items()},
            "run_share": self.run_share,
            "module_features_checked": self.features_checked,
            "memory_layout": self.memory_layout,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def requirements(policy, features: Iterable[str] = (), kind: str = "call") -> list:
    """Every capability this run needs, each with the reason it is needed."""
    return [(cap, why()) for cap, why in _needs(policy.values, features, kind)]


def _needs(values: dict, features: Iterable[str], kind: str) -> list:
    """(capability, a function that says why it is needed), each capability once: the
    one list both ``requirements`` and ``choice_key`` read (the reasons are only
    formatted when asked for)."""
    from ..units import format_duration, format_limit

    needs = [
        ("memory-limit", lambda: f"limits.memory = {format_limit(values['limits.memory'])}"),
        ("timeout", lambda: f"limits.timeout = {format_duration(values['limits.timeout'])}"),
    ]
    if values["runtime.memory_layout"] == "dense":
        needs.append(("dense-memory", lambda: 'runtime.memory_layout = "dense"'))
    if values["limits.fuel"] is not None:
        needs.append(("fuel", lambda: f"limits.fuel = {values['limits.fuel']}"))
    if values["limits.stack"] is not None:
        needs.append(
            ("stack-limit", lambda: f"limits.stack = {format_limit(values['limits.stack'])}")
        )
    if values["limits.table_elements"] is not None:
        needs.append(
            ("table-limit", lambda: f"limits.table_elements = {values['limits.table_elements']}")
        )
    if values["limits.instances"] is not None:
        needs.append(("instance-limit", lambda: f"limits.instances = {values['limits.instances']}"))
    if values["filesystem.read_only"]:
        needs.append(("wasi-readonly", lambda: "filesystem.read_only grants"))
    if values["filesystem.read_only"] or values["filesystem.read_write"]:
        needs.append(("wasi", lambda: "filesystem grants"))
        needs.append(("fs-confined", lambda: "filesystem grants must not be escapable"))
    if kind == "command":
        needs.append(("wasi", lambda: "runs a WASI command (_start)"))
    if kind == "command" and values["limits.output"]:
        needs.append(("stdio-redirect", lambda: "limits.output caps guest output"))
    for stream in ("stdin", "stdout", "stderr"):
        target = values[f"stdio.{stream}"]
        if target != "inherit":
            needs.append(("stdio-redirect", _stdio_reason(stream, target)))
    for name in values["runtime.require"]:
        needs.append((name, lambda: "runtime.require"))
    for feature in sorted(features):
        if feature != "unknown":
            needs.append((feature, lambda: "the module uses it"))
    seen, out = set(), []
    for cap, why in needs:
        if cap not in seen:
            seen.add(cap)
            out.append((cap, why))
    return out


def _stdio_reason(stream: str, target: str) -> Any:
    return lambda: f"stdio.{stream} = {target!r}"


# Winners chosen without the module's features (one candidate met the policy: see
# select), by choice_key: a sandbox per tenant, each with a policy of its own (limits of
# its own), scores once per set of capabilities needed (scoring costs ~0.04 ms, more
# than the rest of a sandbox). Bounded: emptied when full.
CHOICES: dict = {}
CHOICES_MAX = 256


def choice_key(values: dict, kind: str, backend: Optional[str]) -> tuple:
    """What ``select`` chooses by when the module's features do not matter: the
    backends there are (a test installs others), the one named, ``runtime.optimize``
    (the weights), ``runtime.prefer`` (the bonus) and the capabilities the policy needs
    (``_needs``; not the values in their reasons, which only the reasons show)."""
    return (
        tuple(REGISTRY.values()),
        backend or values["runtime.backend"],
        values["runtime.optimize"],
        tuple(values["runtime.prefer"]),
        tuple(cap for cap, _ in _needs(values, (), kind)),
    )


def chosen(values: dict, kind: str, backend: Optional[str]) -> tuple:
    """(key, the (backend, compiler) chosen before for it, or None): see CHOICES."""
    key = choice_key(values, kind, backend)
    return key, CHOICES.get(key)


def choose(values: dict, features: Any, kind: str, backend: Optional[str]) -> tuple:
    """((backend, compiler), the Selection scored, or None if the choice was remembered)
    for these policy values. A choice not remembered is scored on a copy of the values,
    the one its key is made of: another thread's change between the two kept a winner
    under another policy's key (red team round 89: every tenant needing fuel got
    wasmer:singlepass, exit 104)."""
    _, found = chosen(values, kind, backend)
    if found is not None:
        return found, None
    from ..policy import Policy, copy_values

    held = Policy(copy_values(values))
    key, _ = chosen(held.values, kind, backend)
    selection = select(held, features, kind, backend)
    remember_choice(key, selection)
    return (selection.backend, selection.compiler), selection


def remember_choice(key: tuple, selection: Selection) -> None:
    """Keep ``selection``'s winner for ``key`` if the module's features played no part."""
    if selection.features_checked:
        return
    if len(CHOICES) >= CHOICES_MAX:
        CHOICES.clear()
    CHOICES[key] = (selection.backend, selection.compiler)


def weights_for(policy) -> tuple:
    """(category weights, run share) after ``runtime.optimize``."""
    multipliers, run_share = OPTIMIZE[policy.values["runtime.optimize"]]
    weights = dict(BASE_WEIGHTS)
    for category, factor in multipliers.items():
        weights[category] *= factor
    return weights, run_share


def score(capset, run_share: float) -> dict:
    """A candidate's 0..1 score per category."""
    perf_flags = len(capset.performance & set(caps.PERFORMANCE)) / len(caps.PERFORMANCE)
    speed = run_share * capset.run_speed + (1 - run_share) * capset.compile_speed
    return {
        "features": len(capset.features & set(caps.WASM_FEATURES)) / len(caps.WASM_FEATURES),
        "security": len(capset.security & set(caps.SECURITY)) / len(caps.SECURITY),
        "performance": 0.7 * speed + 0.3 * perf_flags,
        "debugging": len(capset.debugging & set(caps.DEBUGGING)) / len(caps.DEBUGGING),
    }


def candidates_for(spec: str = "auto") -> list:
    """(backend, compiler) pairs to consider, in the stable order: all, or those ``spec`` names."""
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


def _check_spec(spec: str) -> None:
    name, compiler = split(spec)
    if spec != "auto" and name not in names():
        raise BackendUnavailable(
            f"backend {spec!r} is not known", hint=f"known backends: {', '.join(names())}"
        )
    if compiler and compiler not in (get(name).compilers or ()):
        known = ", ".join(f"{name}:{c}" for c in get(name).compilers)
        raise BackendUnavailable(
            f"backend {name} has no compiler {compiler!r}", hint=f"one of: {known}"
        )


def _exclude(cand: Candidate, capset, needs: list) -> None:
    for cap, why in needs:
        if not capset.has(cap):
            cand.excluded.append(f"lacks {cap} (needed: {why})")


def select(
    policy,
    features: Any = (),
    kind: str = "call",
    backend: Optional[str] = None,
) -> Selection:
    """Score every candidate; raise BackendUnavailable when none is eligible.

    ``features`` is the module's feature set, or a callable returning it (called only
    when more than one candidate meets the policy's own requirements).
    """
    spec = backend or policy.values["runtime.backend"]
    _check_spec(spec)
    weights, run_share = weights_for(policy)
    prefer = set(policy.values["runtime.prefer"])
    policy_needs = requirements(policy, (), kind)
    result, capsets = [], {}
    for adapter, compiler in candidates_for(spec):
        cand = Candidate(adapter.name, compiler)
        result.append(cand)
        availability = adapter.probe_compiler(compiler)
        if not availability.available:
            fix = f" (fix: {availability.fix})" if availability.fix else ""
            cand.excluded.append(f"unavailable: {availability.reason}{fix}")
            continue
        capset = capsets[id(cand)] = adapter.capabilities(compiler)
        _exclude(cand, capset, policy_needs)
        cand.scores = score(capset, run_share)
        for p in sorted(prefer):
            if capset.has(p) or p in (adapter.name, cand.label):
                cand.bonus += PREFER_BONUS
                cand.bonus_reasons.append(f"prefer {p} +{PREFER_BONUS:g}")
        cand.total = sum(weights[c] * s for c, s in cand.scores.items()) + cand.bonus
    checked = not callable(features)
    if callable(features) and sum(1 for c in result if c.eligible) > 1:
        features, checked = features(), True
    module_features = frozenset(features) if checked else frozenset()
    needs = requirements(policy, module_features, kind)
    extra = [n for n in needs if n not in policy_needs]
    for cand in result:
        if id(cand) in capsets:
            _exclude(cand, capsets[id(cand)], extra)
    eligible = [c for c in result if c.eligible]
    if not eligible:
        lines = "; ".join(f"{c.label}: {', '.join(c.excluded)}" for c in result)
        raise BackendUnavailable(
            f"no backend can run this under the policy: {lines}",
            hint="relax the policy (or --backend), or install the missing runtime",
            candidates=[c.to_dict() for c in result],
        )
    # max() keeps the first of equal totals: the candidate order is the stable tie-break.
    winner = max(eligible, key=lambda c: round(c.total, 9))
    selection = Selection(winner, result, needs, weights, run_share, checked)
    from .reserve import in_force

    selection.memory_layout = in_force(policy.values, winner.backend)
    return selection


def _reason(winner: Candidate, candidates: list) -> str:
    """One sentence on why ``winner`` won."""
    others = [c for c in candidates if c.eligible and c is not winner]
    if not others:
        out = len([c for c in candidates if not c.eligible])
        if out:
            return f"{winner.label} is the only eligible candidate ({out} excluded)"
        return f"{winner.label} is the only candidate"
    runner = max(others, key=lambda c: round(c.total, 9))
    if round(runner.total, 9) == round(winner.total, 9):
        return (
            f"{winner.label} and {runner.label} tie at {winner.total:.2f}; "
            f"{winner.label} comes first in the stable order"
        )
    diffs = {c: winner.scores[c] - runner.scores[c] for c in CATEGORIES}
    ahead = [c for c in CATEGORIES if diffs[c] > 0.005]
    behind = [c for c in CATEGORIES if diffs[c] < -0.005]
    text = f"{winner.label} scores {winner.total:.2f}, ahead of {runner.label} ({runner.total:.2f})"
    if ahead:
        text += ": better " + ", ".join(ahead)
    if behind:
        text += ("; " if ahead else ": ") + "worse " + ", ".join(behind)
    if winner.bonus != runner.bonus:
        text += f"; prefer bonus {winner.bonus:+.2f} vs {runner.bonus:+.2f}"
    return text
