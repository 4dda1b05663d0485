"""Linking: wasmsbx.Group instantiates modules together under one set of limits."""

from __future__ import annotations

import pytest

import wasmsbx
from wasmsbx import errors
from wasmsbx.policy import from_dict

from .conftest import EXAMPLES

LIB = EXAMPLES / "link" / "lib.wat"
APP = EXAMPLES / "link" / "app.wat"


def policy(**limits):
    return from_dict({"limits": {"instances": 10, **limits}})


def test_exports_satisfy_later_imports():
    with wasmsbx.Group(policy()) as group:
        lib = group.add(LIB, name="lib")
        app = group.add(APP)
        assert app.call("run", 3) == 9
        assert lib.call("bump", 1) == 10  # the same lib instance
        assert lib.memory().read(0, 4) == (9).to_bytes(4, "little")  # shared memory


def test_register_under_another_name_and_explicit_exports():
    other = b"""(module (import "counter" "bump" (func $b (param i32) (result i32)))
      (import "x" "f" (func $f (param i32) (result i32)))
      (func (export "go") (result i32)
        (i32.add (call $b (i32.const 1)) (call $f (i32.const 0)))))"""
    with wasmsbx.Group(policy()) as group:
        lib = group.add(LIB)
        group.register("counter", lib)
        box = group.add(other, imports={"x": {"f": lib.export("bump")}})
        assert box.call("go") == 2  # bump(1) == 1, then bump(0) == 1


def test_unlinkable_module_is_a_link_error():
    with wasmsbx.Group(policy()) as group:
        with pytest.raises(errors.LinkError, match="lib.bump"):
            group.add(APP)
        bad = b'(module (import "lib" "bump" (func (param i64))))'
        group.add(LIB, name="lib")
        with pytest.raises(errors.LinkError) as info:
            group.add(bad)
        assert info.value.exit_code == 102


def test_one_set_of_limits_for_the_group():
    """limits.instances counts the whole group; memory in the group shares one store."""
    with wasmsbx.Group(policy(instances=1)) as group:
        group.add(LIB, name="lib")
        with pytest.raises(errors.InstanceLimitExceeded):
            group.add(APP)


def test_start_trap_in_a_member_is_a_trap():
    bad = b"(module (func $s unreachable) (start $s))"
    with wasmsbx.Group(policy()) as group, pytest.raises(errors.TrapError):
        group.add(bad)


def test_groups_refuse_a_member_of_another_group():
    with wasmsbx.Group(policy()) as one, wasmsbx.Group(policy()) as two:
        lib = one.add(LIB)
        with pytest.raises(errors.UsageError, match="not a member"):
            two.register("lib", lib)
        with pytest.raises(errors.LinkError):
            two.add(APP, imports={"lib": {"bump": lib.export("bump")}})
