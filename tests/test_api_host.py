"""Host imports: Python functions, globals, memories and tables granted with imports=."""

from __future__ import annotations

import time

import pytest

import wasmsbx
from wasmsbx import errors
from wasmsbx.policy import from_dict
from wasmsbx.values import F32, F64, FuncRef

from .conftest import BACKENDS, EXAMPLES, capabilities_of, require_capability, require_module

PLUGIN = EXAMPLES / "plugin.wat"
WASMTIME = [b for b in BACKENDS if b.startswith("wasmtime")]

HOST_WAT = b"""(module
  (import "env" "add" (func $add (param i32 i64) (result i64)))
  (import "env" "pair" (func $pair (param f32) (result f32 i32)))
  (import "env" "fail" (func $fail))
  (import "env" "slow" (func $slow))
  (import "env" "g" (global $g (mut i32)))
  (import "env" "k" (global $k f64))
  (import "env" "mem" (memory 1 2))
  (import "env" "tab" (table $tab 2 funcref))
  (func $seven (result i32) i32.const 7)
  (elem declare func $seven)
  (func (export "add") (param i32 i64) (result i64) (call $add (local.get 0) (local.get 1)))
  (func (export "pair") (param f32) (result f32 i32) (call $pair (local.get 0)))
  (func (export "fail") (call $fail))
  (func (export "slow") (call $slow) (call $slow) (call $slow))
  (func (export "bump") (result i32)
    (global.set $g (i32.add (global.get $g) (i32.const 1))) (global.get $g))
  (func (export "k") (result f64) global.get $k)
  (func (export "poke") (param i32 i32) (i32.store8 (local.get 0) (local.get 1)))
  (func (export "size") (result i32) memory.size)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "set_tab") (table.set $tab (i32.const 1) (ref.func $seven)))
  (func (export "tab_null") (param i32) (result i32)
    (ref.is_null (table.get $tab (local.get 0)))))"""


class Boom(Exception):
    pass


def host_imports(calls: list) -> dict:
    def add(a: wasmsbx.i32, b: wasmsbx.i64) -> wasmsbx.i64:
        calls.append((a, b))
        return a + b

    def pair(x: wasmsbx.f32) -> tuple[wasmsbx.f32, wasmsbx.i32]:
        return x, 1

    def fail() -> None:
        raise Boom("no")

    def slow() -> None:
        time.sleep(0.2)

    return {
        "env": {
            "add": add,
            "pair": pair,
            "fail": fail,
            "slow": slow,
            "g": wasmsbx.Global("i32", 41, mutable=True),
            "k": wasmsbx.Global("f64", 2.5),
            "mem": wasmsbx.Memory(1, 2),
            "tab": wasmsbx.Table("funcref", 2),
        }
    }


@pytest.fixture(params=BACKENDS)
def box(request, tmp_path):
    calls: list = []
    wat = tmp_path / "host.wat"
    wat.write_bytes(HOST_WAT)
    require_module(request.param, wat)  # pair() returns two values: multi-value
    sandbox = wasmsbx.Sandbox(
        HOST_WAT, wasmsbx.default_policy(), imports=host_imports(calls), backend=request.param
    )
    sandbox.calls = calls
    sandbox.label = request.param
    yield sandbox
    sandbox.close()


def test_host_function_types_from_annotations(box):
    assert box.call("add", -1, 2**40) == 2**40 - 1
    assert box.calls == [(-1, 2**40)]
    value, one = box.call("pair", F32.from_bits(0x7FA00000))
    assert value.bits == 0x7FA00000 and one == 1  # exact bits through the host too


def test_host_exception_is_a_trap_with_the_cause(box):
    with pytest.raises(errors.TrapError) as info:
        box.call("fail")
    assert isinstance(info.value.__cause__, Boom)
    assert info.value.trap_code == "host" and info.value.exit_code == 103
    assert "Boom" in str(info.value)
    assert box.call("bump") == 42  # the instance is still usable


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("str fails")


def test_a_host_exception_that_cannot_be_printed_is_still_a_trap(backend):
    """Red team round 83: an exception whose ``__str__`` raises escaped as that
    ValueError (made while writing the trap's message), not as the TrapError."""

    def fail() -> None:
        raise Unprintable()

    wat = b'(module (import "env" "fail" (func $f)) (func (export "fail") (call $f)))'
    box = wasmsbx.Sandbox(wat, imports={"env": {"fail": fail}}, backend=backend)
    for _ in range(2):  # (the first call and the fast path)
        with pytest.raises(errors.TrapError) as info:
            box.call("fail")
        assert isinstance(info.value.__cause__, Unprintable)
        assert info.value.trap_code == "host" and info.value.exit_code == 103
        assert "Unprintable (its message could not be read)" in info.value.message
    box.close()


def test_host_time_counts_against_the_timeout(box):
    with pytest.raises(errors.TimeoutExceeded) as info:
        box.call("slow", timeout=0.1)
    assert "host function env.slow" in str(info.value)
    if capabilities_of(box.label).has("interrupt"):
        box.call("bump")  # the next call gets its own deadline
    else:  # the instance's process was stopped (wasmer): the next call says so
        with pytest.raises(errors.TrapError, match="gone"):
            box.call("bump")


def test_host_globals_memory_and_table(box):
    assert box.call("bump") == 42 and box.call("bump") == 43
    assert box.call("k") == 2.5
    box.call("poke", 10, 0xAB)
    assert box.call("size") == 1
    assert box.call("grow", 1) == 1
    assert box.call("grow", 1) == -1  # the host memory's maximum is 2 pages
    assert box.call("tab_null", 1) == 1
    box.call("set_tab")
    assert box.call("tab_null", 1) == 0


def test_plugin_example_reads_guest_memory_through_caller(backend):
    lines = []

    def log(caller: wasmsbx.Caller, ptr: wasmsbx.i32, n: wasmsbx.i32) -> None:
        lines.append(caller.memory().read(ptr, n))

    rnd = wasmsbx.func(lambda: 10, params=[], results=["i64"])
    imports = {"env": {"log": log, "random": rnd}}
    with wasmsbx.Sandbox(PLUGIN, imports=imports, backend=backend) as box:
        assert box.call("greet", 3) == 13
    assert lines == [b"hello from the plugin"] * 3


def test_caller_memory_is_range_checked(backend):
    def log(caller: wasmsbx.Caller, ptr: wasmsbx.i32, n: wasmsbx.i32) -> None:
        caller.memory().read(ptr, 2**20)

    rnd = wasmsbx.func(lambda: 0, params=[], results=["i64"])
    imports = {"env": {"log": log, "random": rnd}}
    with wasmsbx.Sandbox(PLUGIN, imports=imports, backend=backend) as box:
        with pytest.raises(errors.TrapError) as info:
            box.call("greet", 1)
        assert isinstance(info.value.__cause__, IndexError)
        assert box.call("greet", 0) == 0  # still usable


def test_wrong_result_from_host_is_a_trap(backend):
    bad = wasmsbx.func(lambda: "not an int", params=[], results=["i64"])
    log = wasmsbx.func(lambda p, n: None, params=["i32", "i32"], results=[])
    imports = {"env": {"log": log, "random": bad}}
    with wasmsbx.Sandbox(PLUGIN, imports=imports, backend=backend) as box:
        with pytest.raises(errors.TrapError) as info:
            box.call("greet", 0)
        assert isinstance(info.value.__cause__, (TypeError, ValueError))


def test_missing_and_mistyped_imports_are_link_errors():
    log = wasmsbx.func(lambda p, n: None, params=["i32", "i32"], results=[])
    with pytest.raises(errors.LinkError, match="env.random") as info:
        wasmsbx.Sandbox(PLUGIN, imports={"env": {"log": log}}).call("greet", 0)
    assert info.value.exit_code == 102
    wrong = wasmsbx.func(lambda: None, params=[], results=[])
    with pytest.raises(errors.LinkError):
        wasmsbx.Sandbox(PLUGIN, imports={"env": {"log": log, "random": wrong}}).call("greet", 0)


def test_unannotated_callable_is_refused_with_a_hint():
    with pytest.raises(errors.UsageError, match="annotate"):
        wasmsbx.Sandbox(PLUGIN, imports={"env": {"log": lambda p, n: None}})
    with pytest.raises(errors.UsageError, match="host function"):
        wasmsbx.Sandbox(PLUGIN, imports={"env": {"log": 42}})


def test_v128_host_function_refused_on_wasmtime():
    wat = b'(module (import "env" "v" (func (param v128))) (func (export "f")))'
    v = wasmsbx.func(lambda x: None, params=["v128"], results=[])
    box = wasmsbx.Sandbox(wat, imports={"env": {"v": v}}, backend="wasmtime")
    with pytest.raises(errors.BackendUnavailable, match="v128"):
        box.call("f")


def test_funcref_through_host(box):
    seen = []

    def keep(ref: wasmsbx.funcref) -> wasmsbx.funcref:
        seen.append(ref)
        return ref

    wat = b"""(module (import "env" "keep" (func $keep (param funcref) (result funcref)))
      (func $f) (elem declare func $f)
      (func (export "go") (result i32) (ref.is_null (call $keep (ref.func $f)))))"""
    with wasmsbx.Sandbox(wat, imports={"env": {"keep": keep}}) as other:
        assert other.call("go") == 0
    assert isinstance(seen[0], FuncRef)


def test_host_time_counts_on_every_backend(backend):
    def log(ptr: wasmsbx.i32, n: wasmsbx.i32) -> None:
        time.sleep(0.3)

    rnd = wasmsbx.func(lambda: 0, params=[], results=["i64"])
    imports = {"env": {"log": log, "random": rnd}}
    box = wasmsbx.Sandbox(PLUGIN, imports=imports, backend=backend)
    with pytest.raises(errors.TimeoutExceeded, match="env.log"):
        box.call("greet", 10, timeout=0.5)
    box.close()


def test_host_memory_and_table_count_against_the_limits(backend):
    """A host memory shares limits.memory with the module's own; a host table shares
    limits.table_elements; both are refused at the start when they cannot fit."""
    two = b"""(module (import "env" "m" (memory 1)) (memory $own 1)
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"""
    one = b"""(module (import "env" "m" (memory 1))
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"""
    table = b"""(module (import "env" "t" (table 1 funcref))
      (func (export "size") (result i32) table.size 0)
      (func (export "grow") (param i32) (result i32) (table.grow (ref.null func) (local.get 0))))"""
    policy = from_dict({"limits": {"memory": "128KiB", "table_elements": 10}})
    with wasmsbx.Sandbox(
        one, policy, imports={"env": {"m": wasmsbx.Memory(1)}}, backend=backend
    ) as box:
        assert box.call("grow", 1) == 1 and box.call("grow", 1) == -1  # 2 pages: the limit
    big = {"env": {"m": wasmsbx.Memory(3)}}
    with pytest.raises(errors.MemoryLimitExceeded) as info:
        wasmsbx.Sandbox(one, policy, imports=big, backend=backend).call("grow", 0)
    assert info.value.exit_code == 110
    if capabilities_of(backend).has("multi-memory"):
        imports = {"env": {"m": wasmsbx.Memory(1)}}
        with wasmsbx.Sandbox(two, policy, imports=imports, backend=backend) as box:
            assert box.call("grow", 1) == -1  # host 64 KiB + own 64 KiB = the limit
    with pytest.raises(errors.TableLimitExceeded) as info:
        imports = {"env": {"t": wasmsbx.Table("funcref", 20)}}
        wasmsbx.Sandbox(table, policy, imports=imports, backend=backend).call("grow", 0)
    assert info.value.exit_code == 114
    imports = {"env": {"t": wasmsbx.Table("funcref", 5)}}
    with wasmsbx.Sandbox(table, policy, imports=imports, backend=backend) as box:
        outcomes = [_grow_or_trap(box, 5), _grow_or_trap(box, 1)]
        if outcomes[0] != "trap":
            assert outcomes == [5, -1]
        assert box.call("size") <= 10  # whatever the runtime did, the limit held


def _grow_or_trap(box, n: int):
    """table.grow's result; "trap" where the runtime traps instead (wasmer:singlepass
    on an imported table, a wasmer bug: measured; it then sees the table as empty)."""
    try:
        return box.call("grow", n)
    except errors.TrapError as exc:
        assert "table" in str(exc)
        return "trap"


def test_host_global_types_and_mutability_are_link_errors(backend):
    wat = b"""(module (import "env" "g" (global (mut i32)))
      (func (export "get") (result i32) global.get 0))"""
    for wrong in (
        wasmsbx.Global("i32", 1),  # immutable for a mutable import
        wasmsbx.Global("i64", 1, mutable=True),
        wasmsbx.Memory(1),
        wasmsbx.func(lambda: None, params=[], results=[]),
    ):
        with pytest.raises(errors.LinkError) as info:
            wasmsbx.Sandbox(wat, imports={"env": {"g": wrong}}, backend=backend).call("get")
        assert "env" in str(info.value) and info.value.exit_code == 102
    with pytest.raises(errors.LinkError, match="env.g"):
        wasmsbx.Sandbox(wat, imports={"env": {}}, backend=backend).call("get")


def test_host_global_keeps_exact_float_bits(backend):
    wat = b"""(module (import "env" "f" (global f32)) (import "env" "d" (global (mut f64)))
      (func (export "f") (result i32) (i32.reinterpret_f32 (global.get 0)))
      (func (export "d") (result i64) (i64.reinterpret_f64 (global.get 1))))"""
    imports = {
        "env": {
            "f": wasmsbx.Global("f32", F32.from_bits(0x7FA00001)),
            "d": wasmsbx.Global("f64", F64.from_bits(0xFFF4000000000001), mutable=True),
        }
    }
    with wasmsbx.Sandbox(wat, imports=imports, backend=backend) as box:
        assert wasmsbx.unsigned(box.call("f"), "i32") == 0x7FA00001
        assert wasmsbx.unsigned(box.call("d"), "i64") == 0xFFF4000000000001


def test_audit_shows_host_imports_as_provided(cli):
    res = cli("audit", PLUGIN, "--json")
    (custom,) = [c for c in res.json()["capabilities"] if c["name"] == "custom"]
    assert custom["status"] == "never"
    assert any(f["rule"] == "WSX001" for f in res.json()["findings"])
    res = cli("audit", PLUGIN, "--json", "--host-import", "env.log", "--host-import", "env.*")
    data = res.json()
    (custom,) = [c for c in data["capabilities"] if c["name"] == "custom"]
    assert custom["status"] == "granted" and "provided by the host" in custom["detail"]
    assert not any(f["rule"] == "WSX001" for f in data["findings"])
    assert all(i["provided"] for i in data["imports"]) if "imports" in data else True
    res = cli("audit", PLUGIN, "--json", "--host-import", "env.log")
    (custom,) = [c for c in res.json()["capabilities"] if c["name"] == "custom"]
    assert custom["status"] == "never" and "not provided: env.random" in custom["detail"]


def test_ctrl_c_in_a_host_function_is_not_a_trap():
    def log(ptr: wasmsbx.i32, n: wasmsbx.i32) -> None:
        raise KeyboardInterrupt

    rnd = wasmsbx.func(lambda: 0, params=[], results=["i64"])
    box = wasmsbx.Sandbox(PLUGIN, imports={"env": {"log": log, "random": rnd}})
    with pytest.raises(KeyboardInterrupt):
        box.call("greet", 1)
    box.close()


def test_a_batch_with_host_functions_runs_in_this_process_only(tmp_path):
    # round 39: with jobs > 1 the workers, which cannot call this process's functions,
    # failed to link (LinkError per worker); now a usage error before any item, and
    # jobs=1 runs them here
    seen = []

    def log(caller: wasmsbx.Caller, ptr: wasmsbx.i32, n: wasmsbx.i32) -> None:
        seen.append(caller.memory().read(ptr, n))

    rnd = wasmsbx.func(lambda: 4, params=[], results=["i64"])
    box = wasmsbx.Sandbox(PLUGIN, imports={"env": {"log": log, "random": rnd}})
    with pytest.raises(errors.UsageError, match="cannot call them") as caught:
        box.batch("greet", [[0], [1]], jobs=2)
    assert "jobs=1" in caught.value.hint
    assert [r.values for r in box.batch("greet", [[0], [1]])] == [[4], [5]]
    assert seen == [b"hello from the plugin"]


def test_a_null_funcref_from_a_host_function_is_null(backend):
    """Round 40: a null funcref result kept whatever the results buffer held as its
    payload, and wasmtime refused it ("incompatible value") for most arguments."""
    wat = b"""(module (import "env" "pick" (func $p (param funcref i64 i64) (result funcref)))
     (func $k) (elem declare func $k)
     (func (export "f") (param i64 i64) (result i32)
      (ref.is_null (call $p (ref.func $k) (local.get 0) (local.get 1)))))"""

    def pick(f: wasmsbx.funcref, a: wasmsbx.i64, b: wasmsbx.i64) -> wasmsbx.funcref:
        return None

    require_capability(backend, "reference-types")
    try:
        box = wasmsbx.Sandbox(wat, imports={"env": {"pick": pick}}, backend=backend)
        first = box.call("f", 0, 0)
    except errors.BackendUnavailable as exc:  # (wasmer: no references in host functions)
        pytest.skip(exc.message)
    assert [first] + [box.call("f", i * 0x100000001, -1) for i in range(200)] == [1] * 201


def test_host_and_guest_calling_each_other_without_end_fail_never_return(backend):
    """Round 40: near Python's recursion limit the next host call's trampoline could
    not start; ctypes reported that as "ignored" and wasmtime read success, so the
    guest went on with a result of 0 the host function never gave. Each level now
    checks for room first: the call fails (a trap, or the guest's own stack), always."""
    wat = b"""(module (import "env" "ask" (func $ask (param i32) (result i32)))
     (func (export "alloc") (param i32) (result i32)
      (call $ask (i32.add (local.get 0) (i32.const 1))))
     (func (export "run") (result i32) (call $ask (i32.const 0))))"""

    def ask(depth: wasmsbx.i32) -> wasmsbx.i32:
        return box.call("alloc", depth) + 1

    box = wasmsbx.Sandbox(wat, imports={"env": {"ask": ask}}, backend=backend)
    for _ in range(2):
        with pytest.raises((errors.TrapError, errors.StackExhausted)):
            box.call("run")


def test_a_per_call_timeout_bounds_the_wait_for_another_threads_call(backend):
    """Round 40: a call from another thread waited the policy's 2 s for the running
    call, not its own timeout=0.3 (the README: "waits ... at most its own timeout")."""
    import threading

    wat = b"""(module (import "env" "h" (func $h)) (func (export "x") (result i32) i32.const 1)
     (func (export "outer") (call $h)))"""
    out: dict = {}

    def h() -> None:
        def other() -> None:
            try:
                box.call("x", timeout=0.3)
                out["error"] = None
            except errors.WasmsbxError as exc:
                out["error"] = exc

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()

    policy = from_dict({"limits": {"timeout": "30s"}})
    box = wasmsbx.Sandbox(wat, policy, imports={"env": {"h": h}}, backend=backend)
    box.call("outer")
    assert isinstance(out["error"], errors.TimeoutExceeded), out
    assert out["error"].context["limit_value"] == pytest.approx(0.3), out["error"].message


def test_host_results_are_not_parsed_from_text(backend):
    """Round 40: a host function returning "5" for an i32 gave the guest 5 (text parsed
    as a command-line argument), and "null" returned as an externref became a null
    reference. Text is refused for numbers; an externref holds the object returned."""
    wat = b"""(module (import "env" "five" (func $f (result i32)))
     (func (export "g") (result i32) (call $f)))"""

    def five() -> wasmsbx.i32:
        return "5"

    box = wasmsbx.Sandbox(wat, imports={"env": {"five": five}}, backend=backend)
    with pytest.raises(errors.TrapError) as info:
        box.call("g")
    assert isinstance(info.value.__cause__, TypeError) and "text" in str(info.value.__cause__)
    refs = b"""(module (import "env" "ref" (func $r (result externref)))
     (func (export "h") (result externref) (call $r)))"""

    def ref() -> wasmsbx.externref:
        return "null"

    require_capability(backend, "reference-types")
    try:
        box = wasmsbx.Sandbox(refs, imports={"env": {"ref": ref}}, backend=backend)
        got = box.call("h")
    except errors.BackendUnavailable as exc:  # (wasmer: no references in host functions)
        pytest.skip(exc.message)
    assert got == "null"


def test_a_caller_kept_past_its_call_says_so(backend):
    """Round 40 LOW: a Caller kept after the host call raised IndexError ("exports no
    memory named 'memory'", which it did) from caller.memory()."""
    kept = []

    def log(caller: wasmsbx.Caller, ptr: wasmsbx.i32, n: wasmsbx.i32) -> None:
        kept.append(caller)

    rnd = wasmsbx.func(lambda: 10, params=[], results=["i64"])
    imports = {"env": {"log": log, "random": rnd}}
    with wasmsbx.Sandbox(PLUGIN, imports=imports, backend=backend) as box:
        box.call("greet", 1)
        with pytest.raises(errors.UsageError, match="kept past the host call"):
            kept[0].memory()


def test_a_call_from_a_nearly_full_python_stack_never_returns_a_made_up_value(backend):
    """Round 41: a first call (no host call running yet) made with 10-12 frames left on
    Python's stack returned 1 where 501 was due: the host function's trampoline could
    not start, ctypes reported that as ignored, and the guest read 0 as its result.
    Now such a call raises (a trap, or Python's own RecursionError), or is right."""
    import inspect
    import sys

    wat = b"""(module (import "env" "h" (func $h (param i32) (result i32)))
     (func (export "f") (param i32) (result i32)
      (i32.add (call $h (local.get 0)) (i32.const 1))))"""

    def h(x: wasmsbx.i32) -> wasmsbx.i32:
        return x * 100

    box = wasmsbx.Sandbox(wat, imports={"env": {"h": h}}, backend=backend)
    box.call("f", 5)  # (instantiated at a shallow stack)

    def deep(n: int):
        if n > 0:
            return deep(n - 1)
        try:
            return box.call("f", 5)
        except BaseException as exc:  # noqa: BLE001 - any exception is fine; a value not
            return exc

    base = len(inspect.stack(0))
    for margin in range(2, 160):
        try:
            got = deep(sys.getrecursionlimit() - base - margin)
        except RecursionError:  # (the descent itself found no room: not the call's)
            continue
        assert got == 501 or isinstance(got, BaseException), (margin, got)


@pytest.mark.parametrize("backend", WASMTIME)
def test_a_start_function_from_a_nearly_full_python_stack_is_not_a_link_error(backend):
    """Round 42: a start function calling its host, instantiated near Python's recursion
    limit, failed as LinkError ("cannot instantiate module"), blaming its imports.
    (wasmtime's in-process instances; wasmer's are made in a child process, and a
    RecursionError pickling the request there is still reported as a LinkError.)"""
    import inspect
    import sys

    wat = b"""(module (import "env" "h" (func $h (param i32) (result i32)))
     (global $g (mut i32) (i32.const 0))
     (func $s (global.set $g (call $h (i32.const 5)))) (start $s)
     (func (export "f") (result i32) (global.get $g)))"""

    def h(x: wasmsbx.i32) -> wasmsbx.i32:
        return x * 100

    wasmsbx.Sandbox(wat, imports={"env": {"h": h}}, backend=backend).call("f")  # (compiled)

    def deep(n: int):
        if n > 0:
            return deep(n - 1)
        try:
            return wasmsbx.Sandbox(wat, imports={"env": {"h": h}}, backend=backend).call("f")
        except BaseException as exc:  # noqa: BLE001 - any exception but a link error
            return exc

    base = len(inspect.stack(0))
    for margin in range(2, 160, 3):
        try:
            got = deep(sys.getrecursionlimit() - base - margin)
        except RecursionError:
            continue
        assert got == 500 or isinstance(got, BaseException), (margin, got)
        assert not isinstance(got, errors.LinkError), (margin, got)


@pytest.mark.parametrize("backend", WASMTIME)
def test_a_funcref_goes_back_only_to_its_own_sandbox(backend):
    """Round 40 LOW: a funcref of another sandbox, or of a closed one, passed as an
    argument was a ModuleError ("wrong store"), as if the module were at fault; returned
    by a host function, an "incompatible value". A usage error, and a host trap whose
    cause says why."""
    wat = b"""(module (import "env" "back" (func $back (result funcref)))
     (func $k) (elem declare func $k)
     (func (export "get") (result funcref) (ref.func $k))
     (func (export "put") (param funcref) (result i32) (ref.is_null (local.get 0)))
     (func (export "via_host") (result i32) (ref.is_null (call $back))))"""
    kept = []

    def back() -> wasmsbx.funcref:
        return kept[0]

    imports = {"env": {"back": back}}
    mine = wasmsbx.Sandbox(wat, imports=imports, backend=backend)
    other = wasmsbx.Sandbox(wat, imports=imports, backend=backend)
    ref = mine.call("get")
    assert mine.call("put", ref) == 0 and mine.call("put", None) == 1
    kept.append(ref)
    assert mine.call("via_host") == 0
    with pytest.raises(errors.UsageError, match="another sandbox"):
        other.call("put", ref)
    with pytest.raises(errors.TrapError) as info:
        other.call("via_host")
    assert "another sandbox" in str(info.value.__cause__)
    mine.close()
    with pytest.raises(errors.UsageError, match="closed since"):
        mine.call("put", ref)


@pytest.mark.parametrize("backend", WASMTIME)
def test_a_foreign_funcref_is_refused_as_a_global_value_too(backend):
    """Round 43: the check of round 40 covered arguments and host results; a funcref of
    another sandbox written to a global (``box.globals[...] = ref``, a host ``Global``
    import) still reached wasmtime, a raw WasmtimeError."""
    wat = b"""(module (func $k) (elem declare func $k)
     (global (export "g") (mut funcref) (ref.null func))
     (func (export "get") (result funcref) (ref.func $k)))"""
    uses = b"""(module (import "env" "gf" (global $gf funcref))
     (func (export "null") (result i32) (ref.is_null (global.get $gf))))"""
    mine = wasmsbx.Sandbox(wat, backend=backend)
    ref = mine.call("get")
    mine.globals["g"] = ref  # (its own: fine)
    other = wasmsbx.Sandbox(wat, backend=backend)
    with pytest.raises(errors.UsageError, match="another sandbox"):
        other.globals["g"] = ref
    hosted = wasmsbx.Sandbox(uses, imports={"env": {"gf": wasmsbx.Global("funcref", ref)}})
    with pytest.raises(errors.UsageError, match="another sandbox"):
        hosted.call("null")


def test_a_funcref_a_host_function_keeps_stays_the_same_function(backend):
    """Round 44: a funcref given to a host function was a view into the store's buffer
    of host-call arguments: kept past the call, it became the funcref (or the i64) of
    a later host call, here the guest's $evil in place of its $safe callback."""
    wat = b"""(module
     (import "env" "register" (func $register (param funcref)))
     (import "env" "log" (func $log (param funcref i64 i64 i64 i64)))
     (table $t 1 funcref) (elem declare func $safe $evil)
     (func $safe (result i32) i32.const 1)
     (func $evil (result i32) i32.const 666)
     (func (export "init") (call $register (ref.func $safe)))
     (func (export "later") (param i64)
      (call $log (ref.func $evil) (local.get 0) (local.get 0) (local.get 0) (local.get 0)))
     (func (export "invoke") (param funcref) (result i32)
      (table.set $t (i32.const 0) (local.get 0)) (call_indirect (result i32) (i32.const 0))))"""
    kept: list = []

    def register(f: wasmsbx.funcref) -> None:
        kept.append(f)

    def log(f: wasmsbx.funcref, a: wasmsbx.i64, b: wasmsbx.i64, c: wasmsbx.i64, d: wasmsbx.i64):
        pass

    require_capability(backend, "reference-types")
    try:
        box = wasmsbx.Sandbox(
            wat, imports={"env": {"register": register, "log": log}}, backend=backend
        )
        box.call("init")
    except errors.BackendUnavailable as exc:  # (wasmer: no references in host functions)
        pytest.skip(exc.message)
    assert box.call("invoke", kept[0]) == 1
    for value in (0, -1, 0x0123456789ABCDEF, 7):
        box.call("later", value)
        assert box.call("invoke", kept[0]) == 1


def test_a_foreign_funcref_is_a_usage_error_on_every_backend(backend):
    """Red team 152: on wasmer, a funcref of another sandbox passed as an argument or
    written to a global was BackendUnavailable (104), as if the backend lacked
    something; the caller's mistake, a UsageError, as on wasmtime."""
    wat = b"""(module (func $k) (elem declare func $k)
     (global (export "g") (mut funcref) (ref.null func))
     (func (export "get") (result funcref) (ref.func $k))
     (func (export "put") (param funcref) (result i32) (ref.is_null (local.get 0))))"""
    require_capability(backend, "reference-types")
    try:
        mine = wasmsbx.Sandbox(wat, backend=backend)
        ref = mine.call("get")
        assert mine.call("put", ref) == 0
    except errors.BackendUnavailable as exc:  # (a wasmer compiler without the helper)
        pytest.skip(exc.message)
    other = wasmsbx.Sandbox(wat, backend=backend)
    with pytest.raises(errors.UsageError, match="another sandbox"):
        other.call("put", ref)
    with pytest.raises(errors.UsageError, match="another sandbox"):
        other.globals["g"] = ref
