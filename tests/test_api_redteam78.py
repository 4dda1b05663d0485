"""Red team round 78: the library's errors for what a careless caller passes.

- per-call limits and memory offsets of thousands of digits raised Python's own
  OverflowError ("int too large to convert to float", from ``f"{timeout:g}"``) or
  ValueError ("Exceeds the limit (4300 digits) for integer string conversion", from
  quoting the int), instead of the library's errors;
- ``timeout=float("inf")`` was "timeout=infs";
- ``imports=`` of another type than a mapping was an AttributeError;
- a batch whose items raised after ten yielded, with ``jobs=2`` (and on a cluster:
  test_cluster.py), only the first result before the error: the results of the items
  read and sent were dropped (``jobs=1`` gave all ten);
- a limit another sandbox reached in a host function was raised as the calling
  sandbox's own (its FuelExhausted, for a sandbox without fuel);
- a Caller's memory used from another thread as the host call ended: the check that
  the call was current passed, then wasmtime-py raised its own ValueError ("caller is
  no longer valid") instead of the UsageError of a memory kept past its call.
(The stack, groups and host memories of the same round: test_stack_room.py,
test_link.py, test_density.py.)
"""

from __future__ import annotations

import pytest

import wasmsbx
from wasmsbx import errors
from wasmsbx.policy import from_dict

SPIN = b'(module (func (export "spin") (loop br 0)))'
MEMORY = b'(module (memory (export "memory") 1 10) (func (export "f")))'
HUGE = 10**5000  # (past the 4,300 digits str() converts)


@pytest.fixture
def spin():
    with wasmsbx.Sandbox(SPIN, from_dict({"limits": {"timeout": "300ms", "fuel": 10**6}})) as box:
        yield box


@pytest.mark.parametrize(
    "limit, said",
    [
        ({"fuel": HUGE}, "fuel=(an int of 16,610 bits) is above the policy's limits.fuel"),
        ({"timeout": 10**400}, "timeout=(an int of 1,329 bits) is above"),
        ({"timeout": float("inf")}, "timeout=inf is above"),
        ({"timeout": 5}, "timeout=5s is above the policy's limits.timeout (0.3s)"),
        ({"fuel": 10**7}, "fuel=10000000 is above"),
    ],
)
def test_a_per_call_limit_above_the_policy_is_a_usage_error_of_any_size(spin, limit, said):
    with pytest.raises(errors.UsageError) as info:
        spin.call("spin", **limit)
    assert str(info.value).startswith(said), info.value


@pytest.mark.parametrize(
    "use",
    [
        lambda m: m.read(HUGE, 1),
        lambda m: m.write(HUGE, b"a"),
        lambda m: m.read(0, HUGE),
    ],
    ids=["read", "write", "read-length"],
)
def test_a_memory_offset_of_any_size_is_an_index_error(backend, use):
    with wasmsbx.Sandbox(MEMORY, backend=backend) as box:
        box.call("f")
        with pytest.raises(IndexError) as info:
            use(box.memory())
    assert "an int of 16,610 bits" in str(info.value)


def test_growing_by_pages_of_any_size_is_the_memory_limit(backend):
    with wasmsbx.Sandbox(MEMORY, backend=backend) as box:
        box.call("f")
        with pytest.raises(errors.MemoryLimitExceeded) as info:
            box.memory().grow(HUGE)
    assert "an int of 16,610 bits pages" in str(info.value)


@pytest.mark.parametrize("imports", [[1], "env", 5], ids=["list", "str", "int"])
def test_imports_of_another_type_than_a_mapping_is_a_usage_error(imports):
    with pytest.raises(errors.UsageError) as info:
        wasmsbx.Sandbox(b'(module (func (export "f")))', imports=imports).call("f")
    assert "must map module names to {name: host import}" in str(info.value)


class _Ending:
    """A memory access whose host call ends between the check and the use."""

    def __init__(self) -> None:
        self.current = True

    def _gone(self, *args):
        self.current = False
        raise ValueError("caller is no longer valid")

    size = read = write = view = _gone

    def grow(self, pages):
        self._gone()


@pytest.mark.parametrize(
    "use",
    [
        lambda m: m.read(0, 1),
        lambda m: m.write(0, b"a"),
        lambda m: m.size,
        lambda m: m.grow(1),
        lambda m: m.view().__enter__(),
    ],
    ids=["read", "write", "size", "grow", "view"],
)
def test_a_callers_memory_whose_call_ends_during_a_use_is_a_usage_error(use):
    from wasmsbx.host import _KEPT_MEMORY
    from wasmsbx.memory import Memory

    access = _Ending()
    memory = Memory(access, alive=lambda: access.current, gone=_KEPT_MEMORY)
    with pytest.raises(errors.UsageError, match="kept past its host call"):
        use(memory)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_batch_whose_input_fails_gives_the_results_read_before_it(jobs):
    from .conftest import EXAMPLES

    def items():
        yield from ([i] for i in range(1, 11))
        raise ValueError("the input source failed")

    got = []
    box = wasmsbx.Sandbox(EXAMPLES / "loop.wat")
    with pytest.raises(ValueError, match="the input source failed"):
        for result in box.batch("count", items(), jobs=jobs):
            got.append(result.values[0])
    assert got == list(range(1, 11))


def test_another_sandboxs_limit_in_a_host_function_is_that_functions_error():
    """A host function called sandbox B, which ran out of fuel: sandbox A's call (which
    has no fuel limit) raised B's FuelExhausted, as if A had. A limit reached in a call
    back into A's own store is A's (they share it); B's is the host function's error,
    a trap with B's error as its cause."""
    spin_b = wasmsbx.Sandbox(SPIN, from_dict({"limits": {"fuel": 10_000}}))

    def run_b() -> None:
        spin_b.call("spin")

    a = wasmsbx.Sandbox(
        b'(module (import "env" "b" (func $b)) (func (export "go") (call $b)))',
        imports={"env": {"b": wasmsbx.func(run_b, params=[], results=[])}},
    )
    with a, pytest.raises(errors.WasmsbxError) as info:
        a.call("go")
    assert type(info.value) is errors.TrapError, info.value
    assert info.value.context.get("trap_code") == "host"
    assert isinstance(info.value.__cause__, errors.FuelExhausted)


def test_a_sandboxs_own_limit_reached_through_another_sandbox_is_its_own():
    """Red team 152: A's host function called B, whose host function called back into
    A, where A's own fuel ran out: A's call raised a TrapError (B's trap of A's
    FuelExhausted) where a direct call back gives FuelExhausted. Its own limit, however
    it was reached."""
    a_wat = b"""(module (import "env" "h" (func $h))
      (func (export "spin") (loop $l (call $h) (br $l))) (func (export "nop")))"""
    b_wat = b'(module (import "env" "h2" (func $h2)) (func (export "x") (call $h2)))'
    boxes: dict = {}

    def h() -> None:
        boxes["b"].call("x")

    def h2() -> None:
        boxes["a"].call("nop")

    boxes["a"] = wasmsbx.Sandbox(
        a_wat, from_dict({"limits": {"fuel": 20_000}}), imports={"env": {"h": h}}
    )
    boxes["b"] = wasmsbx.Sandbox(
        b_wat, from_dict({"limits": {"fuel": 10**9}}), imports={"env": {"h2": h2}}
    )
    with pytest.raises(errors.FuelExhausted):
        boxes["a"].call("spin")
    assert boxes["b"].call("x") is None  # (B's own calls go on: A's nop has fuel again)


def test_an_export_name_asked_for_is_quoted_cut(cli):
    """A 100,000-character export name asked for made an error of 100,116 characters
    (the MCP server's call_export, the command line's --invoke; red team round 79)."""
    from .conftest import EXAMPLES

    name = "x" * 100_000
    with pytest.raises(errors.UsageError) as info:
        wasmsbx.Sandbox(EXAMPLES / "add.wat").call(name)
    assert len(str(info.value)) < 400 and "(100,000 characters)" in str(info.value)
    res = cli("run", EXAMPLES / "add.wat", "--invoke", f"{'y' * 5000}(1, 2)")
    assert res.code == 2, res
    assert all(len(line) < 1000 for line in res.stderr.splitlines()), res.stderr[:500]
    assert "(5,000 characters)" in res.stderr
