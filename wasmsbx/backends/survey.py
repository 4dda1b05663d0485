"""What ``wasmsbx backends`` reports: every backend and compiler, probed, as plain data."""

from __future__ import annotations

from typing import Optional

from . import get, names

KINDS = ("call", "command", "auto")  # (as --kind's metavar says)


def survey() -> list:
    """One entry per backend and compiler: availability and capabilities."""
    entries = []
    for name in names():
        backend = get(name)
        for compiler in backend.compilers or (None,):
            availability = backend.probe_compiler(compiler).to_dict()
            if availability["available"] and not availability["version"]:
                availability["version"] = backend.version()
            capset = backend.capabilities(compiler)  # declared data: shown even if unavailable
            entries.append(
                {
                    "backend": name,
                    "compiler": compiler,
                    "label": f"{name}:{compiler}" if compiler else name,
                    "availability": availability,
                    "capabilities": capset.to_dict() if capset else None,
                }
            )
    return entries


def explain(
    module: Optional[str],
    policy_path: Optional[str],
    kind: str = "auto",
    backend: Optional[str] = None,
):
    """The scoring table for MODULE (or for no module) under the policy."""
    from .. import policy as policy_mod
    from . import select

    _check_kind(kind)
    policy = policy_mod.discover(policy_path)
    features: frozenset = frozenset()
    if module:
        from ..errors import ModuleError
        from ..wasm.facts import FactsError, read_facts
        from ..wasm.source import read_module

        wasm = read_module(module, policy)
        try:
            facts = read_facts(wasm)
        except FactsError as exc:
            if not exc.component:
                raise ModuleError(f"{module}: {exc}") from None
            # A component needs the component model (wasmer lacks it: the table says so).
            return select.select(
                policy, {"component-model"}, "call" if kind == "auto" else kind, backend
            )
        features = facts.features
        if kind == "auto":
            kind = "command" if facts.export("_start") else "call"
    if kind == "auto":
        kind = "call"
    return select.select(policy, features, kind, backend)


def check_options(policy_path: Optional[str], kind: str, backend: Optional[str]) -> None:
    """The errors ``explain`` gives for these options, without explaining: a policy given
    (a discovered one does not matter to the list), --kind, a --backend not known. Not
    "no backend eligible": the list is still worth seeing then."""
    from .. import policy as policy_mod
    from .select import _check_spec

    _check_kind(kind)
    if policy_path is not None:
        policy_mod.load(policy_path)
    if backend is not None:
        _check_spec(backend)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:  # (anything else was scored as a call)
        from ..errors import UsageError

        raise UsageError(f"--kind {kind}: must be one of {', '.join(KINDS)}")
