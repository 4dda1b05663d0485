"""Helpers of the cache tests (test_cache, test_cache_memo, test_cache_memory)."""

from __future__ import annotations

from wasmsbx import policy as policy_mod


def make_policy(**keys) -> policy_mod.Policy:
    """Defaults with every module cached (cache_min_size 0) and ``runtime__x=...`` overrides."""
    policy = policy_mod.defaults()
    policy_mod.override(policy, "runtime.cache_min_size", 0)
    for name, value in keys.items():
        policy_mod.override(policy, name.replace("__", "."), value)
    return policy
