"""Capability scoring: hard requirements, weighted categories, optimize/prefer, tie-break.

Unit tests use two fake backends in place of the registry, so every number is known;
the CLI tests at the end check the issue's scenarios against the real backends.
"""

from __future__ import annotations

import pytest

from wasmsbx import backends, errors
from wasmsbx import policy as policy_mod
from wasmsbx.backends import select
from wasmsbx.backends.base import Availability, Backend, Capabilities

from .conftest import GUESTS

ALL_SECURITY = frozenset(
    {"fuel", "timeout", "memory-limit", "table-limit", "instance-limit", "wasi", "stdio-redirect"}
)


class Fake(Backend):
    def __init__(self, name, compilers=("c",), caps=None, available=True, **speed) -> None:
        self.name = name
        self.compilers = compilers
        self.default_compiler = compilers[0]
        self.available = available
        self.caps = caps or {}
        self.speed = speed

    def probe(self) -> Availability:
        if self.available:
            return Availability(True, "1.0")
        return Availability(False, None, "not here", "install it")

    def capabilities(self, compiler=None) -> Capabilities:
        spec = self.caps.get(compiler, {})
        return Capabilities(
            features=frozenset(spec.get("features", {"simd"})),
            security=frozenset(spec.get("security", ALL_SECURITY)),
            performance=frozenset(),
            debugging=frozenset(),
            compile_speed=self.speed.get(f"{compiler}_compile", 0.5),
            run_speed=self.speed.get(f"{compiler}_run", 0.5),
        )

    def engine(self, options):  # pragma: no cover - selection never builds engines
        raise NotImplementedError


@pytest.fixture
def registry(monkeypatch):
    """Install fakes as the registry, in the order given (the tie-break order)."""

    def install(*fakes):
        monkeypatch.setattr(backends, "REGISTRY", {f.name: f"fake:{f.name}" for f in fakes})
        monkeypatch.setattr(backends, "_LOADED", {f.name: f for f in fakes})

    return install


def policy(**values):
    result = policy_mod.defaults()
    for dotted, value in values.items():
        policy_mod.override(result, dotted.replace("__", "."), value)
    return result


def test_hard_requirements_exclude_with_the_reason(registry):
    registry(
        Fake("a", caps={"c": {"security": ALL_SECURITY - {"fuel"}}}),
        Fake("b"),
    )
    chosen = select.select(policy(limits__fuel=1000))
    assert chosen.winner.label == "b:c"
    excluded = chosen.candidates[0]
    assert excluded.excluded == ["lacks fuel (needed: limits.fuel = 1000)"]
    assert chosen.reason == "b:c is the only eligible candidate (1 excluded)"


def test_module_features_are_requirements(registry):
    registry(Fake("a", caps={"c": {"features": set()}}), Fake("b"))
    chosen = select.select(policy(), {"simd"})
    assert chosen.winner.label == "b:c"
    assert chosen.candidates[0].excluded == ["lacks simd (needed: the module uses it)"]
    assert ("simd", "the module uses it") in chosen.requirements


def test_unavailable_is_excluded_with_reason_and_fix(registry):
    registry(Fake("a", available=False), Fake("b"))
    chosen = select.select(policy())
    assert chosen.candidates[0].excluded == ["unavailable: not here (fix: install it)"]


def test_nothing_eligible_lists_what_each_lacks(registry):
    registry(Fake("a", caps={"c": {"security": set()}}), Fake("b", available=False))
    with pytest.raises(errors.BackendUnavailable) as info:
        select.select(policy())
    message = info.value.message
    assert message.startswith("no backend can run this under the policy: a:c: lacks memory-limit")
    assert "b:c: unavailable: not here (fix: install it)" in message
    assert info.value.exit_code == 104


def test_optimize_moves_the_choice_between_compile_and_run_speed(registry):
    fast_compile = {"c_compile": 1.0, "c_run": 0.3}
    fast_run = {"c_compile": 0.1, "c_run": 1.0}
    registry(Fake("quick", **fast_compile), Fake("tuned", **fast_run))
    assert select.select(policy(runtime__optimize="none")).winner.label == "quick:c"
    aggressive = select.select(policy(runtime__optimize="aggressive"))
    assert aggressive.winner.label == "tuned:c"
    assert aggressive.weights["performance"] == 3.0 and aggressive.run_share == 0.9
    assert "better performance" in aggressive.reason


def test_prefer_adds_a_bonus(registry):
    registry(Fake("a"), Fake("b"))
    chosen = select.select(policy(runtime__prefer=["wasmer"]))  # names neither
    assert chosen.winner.label == "a:c"
    registry(Fake("a"), Fake("wasmer"))
    chosen = select.select(policy(runtime__prefer=["wasmer"]))
    assert chosen.winner.label == "wasmer:c"
    assert chosen.winner.bonus_reasons == ["prefer wasmer +0.5"]
    assert "prefer bonus +0.50 vs +0.00" in chosen.reason


def test_ties_go_to_the_stable_order(registry):
    registry(Fake("a", compilers=("x", "y")), Fake("b"))
    chosen = select.select(policy())
    assert [c.label for c in chosen.candidates] == ["a:x", "a:y", "b:c"]
    assert chosen.winner.label == "a:x"
    total = chosen.winner.total
    assert chosen.reason == f"a:x and a:y tie at {total:.2f}; a:x comes first in the stable order"
    registry(Fake("b"), Fake("a", compilers=("x", "y")))
    assert select.select(policy()).winner.label == "b:c"


def test_named_backend_and_compiler(registry):
    registry(Fake("a", compilers=("x", "y")), Fake("b"))
    assert select.select(policy(), backend="a:y").winner.label == "a:y"
    assert [c.label for c in select.select(policy(), backend="a").candidates] == ["a:x", "a:y"]
    with pytest.raises(errors.BackendUnavailable, match="backend 'zzz' is not known"):
        select.select(policy(), backend="zzz")
    with pytest.raises(errors.BackendUnavailable, match="backend a has no compiler 'q'"):
        select.select(policy(), backend="a:q")


def test_module_features_are_read_only_when_they_can_change_the_choice(registry):
    calls = []

    def features():
        calls.append(1)
        return frozenset({"simd"})

    registry(Fake("a"), Fake("b"))
    chosen = select.select(policy(), features)
    assert calls == [1] and chosen.features_checked
    chosen = select.select(policy(), features, backend="a")
    assert calls == [1] and not chosen.features_checked  # one candidate: nothing to decide


def test_scores_are_fractions_of_the_vocabulary(registry):
    registry(Fake("a"))
    chosen = select.select(policy())
    scores = chosen.winner.scores
    assert all(0 <= v <= 1 for v in scores.values())
    data = chosen.to_dict()
    assert data["winner"] == "a:c" and data["candidates"][0]["label"] == "a:c"
    assert set(data) >= {"winner", "reason", "requirements", "weights", "candidates"}


def test_policy_requirements_name_every_limit_and_grant(tmp_path):
    grants = policy(limits__fuel=10, limits__stack="1MiB", stdio__stdout="null")
    policy_mod.add_grant(grants, str(tmp_path), writable=False)
    needs = dict(select.requirements(grants, {"simd", "unknown"}, "command"))
    assert set(needs) >= {
        "memory-limit",
        "timeout",
        "fuel",
        "stack-limit",
        "table-limit",
        "instance-limit",
        "wasi-readonly",
        "wasi",
        "fs-confined",
        "stdio-redirect",
        "simd",
    }
    assert "unknown" not in needs


# ---------------------------------------------------------------------------- the CLI


def explain(cli, *args):
    res = cli("backends", "--explain", *args, "--json")
    assert res.code == 0, res
    return res.json()["explain"]


def verdicts(data) -> dict:
    return {c["label"]: c for c in data["candidates"]}


def wasmer_reason(candidate, lacks: str) -> None:
    """A wasmer candidate is out: it lacks ``lacks`` or (Python >= 3.11) is unavailable."""
    assert not candidate["eligible"]
    reasons = " ".join(candidate["excluded"])
    assert f"lacks {lacks}" in reasons or reasons.startswith("unavailable: "), reasons


def test_explain_policy_with_fuel(cli, isolated):
    (isolated / "fuel.toml").write_text("[limits]\nfuel = 1_000_000\n")
    data = explain(cli, "--policy", "fuel.toml")
    assert data["winner"] == "wasmtime:cranelift"
    for label, cand in verdicts(data).items():
        if label.startswith("wasmer"):
            wasmer_reason(cand, "fuel")


def test_explain_read_write_grants_optimize_aggressive(cli, isolated):
    (isolated / "out").mkdir()
    (isolated / "rw.toml").write_text(
        '[runtime]\noptimize = "aggressive"\n[filesystem]\nread_write = ["out:/out"]\n'
    )
    data = explain(cli, GUESTS / "fsprobe.wasm", "--policy", "rw.toml")
    assert data["weights"]["performance"] == 3.0
    assert {r["capability"] for r in data["requirements"]} >= {"wasi", "fs-confined"}
    assert data["winner"] == "wasmtime:cranelift"
    assert data["reason"].startswith("wasmtime:cranelift is the only eligible candidate")
    for label, cand in verdicts(data).items():
        if label.startswith("wasmer"):
            wasmer_reason(cand, "fs-confined")
    text = cli("backends", "--explain", GUESTS / "fsprobe.wasm", "--policy", "rw.toml").stdout
    assert "winner: wasmtime:cranelift" in text and "excluded" in text


@pytest.mark.parametrize(
    "feature, module",
    [
        ("tail-call", '(module (func $g) (func (export "f") return_call $g))'),
        ("simd", '(module (func (export "f") (result i32) v128.const i64x2 1 2 i32x4.all_true))'),
    ],
)
def test_explain_module_using_a_feature_one_backend_lacks(cli, isolated, feature, module):
    (isolated / "m.wat").write_text(module)
    data = explain(cli, "m.wat")
    assert {"capability": feature, "why": "the module uses it"} in data["requirements"]
    assert data["winner"] == "wasmtime:cranelift"
    for label, cand in verdicts(data).items():
        if feature == "tail-call" and label.startswith("wasmer"):
            wasmer_reason(cand, "tail-call")
        if label == "wasmer:singlepass":
            wasmer_reason(cand, feature)
        if feature == "simd" and label in ("wasmer:cranelift", "wasmer:llvm"):
            assert cand["eligible"] or cand["excluded"][0].startswith("unavailable")


def test_backends_lists_every_backend_and_compiler(cli):
    res = cli("backends")
    assert res.code == 0
    for label in ("wasmtime:cranelift", "wasmer:cranelift", "wasmer:llvm", "wasmer:singlepass"):
        assert label in res.stdout
    assert "fs-confined" in res.stdout and "compile speed" in res.stdout
    data = cli("backends", "--json").json()["backends"]
    for entry in data:
        assert set(entry) == {"backend", "compiler", "label", "availability", "capabilities"}
        assert set(entry["availability"]) == {"available", "version", "reason", "fix"}
        assert 0 <= entry["capabilities"]["run_speed"] <= 1


def test_run_explain_goes_to_stderr(cli):
    res = cli("run", GUESTS / "trap.wat", "div0", "--explain")
    assert res.code == 103
    assert "winner: wasmtime:cranelift" in res.stderr and res.stdout == ""


def test_unknown_backend_on_the_command_line(cli):
    res = cli("run", GUESTS / "trap.wat", "div0", "--backend", "wasmer:nope")
    assert res.code in (2, 104) and "nope" in res.stderr  # a bad flag value: usage error


def test_the_choice_key_holds_what_the_choice_depends_on(registry):
    """A winner chosen without the module is kept for every policy with the same
    choice_key (a sandbox per tenant, each with limits of its own): two policies with
    one key must get one winner, and values that only show in the reasons (the memory
    limit, the timeout) must not split the key."""
    dense = ALL_SECURITY | {"dense-memory", "stack-limit"}
    registry(
        Fake("quick", caps={"c": {"security": dense - {"fuel"}}}, c_run=0.9),
        Fake("wasmer", caps={"c": {"security": dense}}, c_run=0.2),  # (metered: has fuel)
    )
    variants = []
    for fuel in (None, 1000, 2000):
        for memory in ("1MiB", "2MiB"):
            for optimize in ("speed", "aggressive"):
                for layout in ("fast", "dense"):
                    chosen = policy(
                        limits__memory=memory,
                        runtime__optimize=optimize,
                        runtime__memory_layout=layout,
                    )
                    if fuel is not None:
                        policy_mod.override(chosen, "limits.fuel", fuel)
                    variants.append(chosen)
    variants.append(policy(runtime__prefer=["wasmer"]))
    variants.append(policy(limits__stack="1MiB", limits__timeout="5s"))
    winners: dict = {}
    for kind in ("call", "command"):
        for chosen in variants:
            key = select.choice_key(chosen.values, kind, None)
            winner = select.select(chosen, (), kind).winner.label
            assert winners.setdefault(key, winner) == winner
    assert set(winners.values()) == {"quick:c", "wasmer:c"}
    one, two = policy(limits__memory="1MiB"), policy(limits__memory="3MiB", limits__timeout="9s")
    assert select.choice_key(one.values, "call", None) == select.choice_key(
        two.values, "call", None
    )


def test_policies_alike_share_a_choice_and_explain_their_own():
    from wasmsbx import Sandbox

    wat = b'(module (func (export "f") (result i32) i32.const 7))'
    select.CHOICES.clear()
    first = Sandbox(wat, policy(runtime__backend="auto", limits__memory="1MiB"))
    second = Sandbox(wat, policy(runtime__backend="auto", limits__memory="3MiB"))
    assert first.selection is not None
    if not first.selection.features_checked:  # (one backend met the policy)
        assert second.selection is None  # (not scored again)
    assert (second.backend_name, second.compiler) == (first.backend_name, first.compiler)
    assert ("memory-limit", "limits.memory = 3 MiB") in second.explain().requirements
    fueled = Sandbox(wat, policy(runtime__backend="auto", limits__fuel=10))
    assert fueled.selection is not None
    assert any(cap == "fuel" for cap, _ in fueled.selection.requirements)
    assert fueled.call("f") == 7
    assert second.call("f") == 7


def test_a_choice_is_kept_under_the_key_of_the_values_it_was_scored_on(monkeypatch):
    """_choose scores a copy of the policy's values and keeps the winner under that
    copy's key: another thread changing the policy between the two kept a winner under
    another policy's key (red team round 89)."""
    from wasmsbx import Sandbox

    live = policy(runtime__backend="auto", limits__fuel=1000)
    scored, keyed = [], []
    real_select, real_chosen = select.select, select.chosen

    def scoring(held, *args, **kwargs):
        scored.append(held.values)
        live.values["limits.fuel"] = None  # (another thread, meanwhile)
        return real_select(held, *args, **kwargs)

    def keying(values, *args):
        keyed.append(values)
        return real_chosen(values, *args)

    from wasmsbx.runner import shared

    shared.clear()  # (no plan: every step)
    select.CHOICES.clear()
    monkeypatch.setattr(select, "select", scoring)
    monkeypatch.setattr(select, "chosen", keying)
    Sandbox(b'(module (func (export "f") (result i32) i32.const 7))', live)
    assert scored and keyed[-1] is scored[0]  # (the key of the values scored)
    assert scored[0]["limits.fuel"] == 1000
    for key in select.CHOICES:
        assert ("fuel" in key[-1]) == (scored[0]["limits.fuel"] is not None)
