"""A policy's lists are tuples, and its copies carry all it holds (issue #16: a policy
per tenant; the confinement of a found policy must survive a copy)."""

from __future__ import annotations

import pytest

from wasmsbx import Sandbox
from wasmsbx import policy as P
from wasmsbx.bench.measure import bench_policy

ADD = b'(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


def test_a_policys_lists_are_tuples_and_a_tuple_is_taken():
    policy = P.from_dict({"env": {"inherit": ("LANG",)}, "runtime": {"prefer": ["fuel"]}})
    assert policy.values["env.inherit"] == ("LANG",)
    assert policy.values["runtime.prefer"] == ("fuel",)
    assert all(type(value) is not list for value in policy.values.values())
    with pytest.raises(P.PolicyError, match="expected a list of strings"):
        P.from_dict({"env": {"inherit": "LANG"}})


def test_a_copy_carries_its_confinement_and_capped_limits(tmp_path):
    found = P.from_dict({"limits": {"memory": "1GiB"}}, origin=str(tmp_path / "sandbox.toml"))
    P.cap_limits(found)
    found.confined = str(tmp_path)
    copy = found.copy()
    assert copy.confined == str(tmp_path) and copy.source == found.source
    assert copy.capped == {"limits.memory": 1 << 30} and copy.capped is not found.capped
    assert copy.explicit == found.explicit == ("limits.memory",)
    assert copy.values == found.values and copy.values["env.set"] is not found.values["env.set"]
    assert bench_policy(found).confined == str(tmp_path)


def test_capping_one_policy_leaves_every_other_alone():
    one, two = P.from_dict({"limits": {"timeout": "1h"}}), P.defaults()
    P.cap_limits(one)
    assert one.capped == {"limits.timeout": 3600.0} and dict(two.capped) == {}
    assert dict(P.Policy.capped) == {} and dict(P.defaults().capped) == {}
    P.override(one, "limits.timeout", "20s")  # a flag's value: no longer capped
    assert dict(one.capped) == {} and one.values["limits.timeout"] == 20.0


def test_a_sandbox_pinning_a_relative_stdio_path_keeps_the_confinement(tmp_path, monkeypatch):
    """The copy a relative stdout is pinned in (runner.sandbox._pin_stdio) lost the folder
    a found policy is confined to, so its cache folder was opened without the check that
    it is still in that folder."""
    monkeypatch.chdir(tmp_path)
    found = P.from_dict({"stdio": {"stdout": "out.txt"}}, origin=str(tmp_path / "sandbox.toml"))
    found.confined = str(tmp_path)
    box = Sandbox(ADD, found)
    assert box.policy is not found
    assert box.policy.values["stdio.stdout"] == str(tmp_path / "out.txt")
    assert box.policy.confined == str(tmp_path) and box.policy.source == found.source
    assert box.call("add", 2, 3) == 5


def test_marking_a_key_explicit_keeps_one_of_each():
    policy = P.defaults()
    P.mark_explicit(policy, "limits.memory")
    P.mark_explicit(policy, "limits.memory")
    P.add_env(policy, "LANG")
    assert policy.explicit == ("env.inherit", "limits.memory")
    assert P.Policy({}, explicit={"b", "a"}).explicit == ("a", "b")
