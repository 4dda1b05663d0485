"""wasmsbx calls a component function through ``fastlift.call``: wasmtime-py's own call
with the function's types read once per function object (wasmtime-py reads them on every
call: about a third of a small call). Same values, same errors, as wasmtime-py's call."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

wasmtime = pytest.importorskip("wasmtime")
wc = pytest.importorskip("wasmtime.component")

from wasmsbx import Sandbox  # noqa: E402
from wasmsbx.components import fastlift, runtime  # noqa: E402

from .conftest import ROOT  # noqa: E402

GUEST = ROOT / "tests" / "guests" / "components" / "types.wat"

# (function, arguments as wasmtime-py takes them)
CASES = [
    ("greet", ["World"]),
    ("greet", ["é\u0000\U0001f600" * 50]),
    ("add", [5, -3]),
    ("add", [2**31 - 1, 1]),
    ("sum", [[1.5, 2.5, float("inf")]]),
    ("sum", [[]]),
    ("divide", [7, 2]),
    ("divide", [7, 0]),
    ("bump", [None]),
    ("bump", [41]),
    ("next", ["red"]),
    ("double", None),  # (in the interface: looked up there)
]
BAD = [
    ("add", [1]),  # too few
    ("add", [1, 2, 3]),  # too many
    ("add", ["x", 1]),  # wrong type
    ("add", [2**40, 1]),  # out of range
    ("greet", [b"bytes"]),
    ("sum", [[1.0, "x"]]),
    ("next", ["mauve"]),
    ("fail", []),  # a trap
]


def _instance():
    fastlift.install()
    engine = wasmtime.Engine()
    component = wc.Component(engine, wasmtime.wat2wasm(GUEST.read_text()))
    store = wasmtime.Store(engine)
    return store, wc.Linker(engine).instantiate(store, component)


def _func(store, instance, name):
    if name == "double":
        at = instance.get_export_index(store, "wasmsbx:test/api@0.1.0")
        return instance.get_func(store, instance.get_export_index(store, "double", at))
    return instance.get_func(store, name)


def _outcome(call, *args):
    try:
        return "ok", call(*args)
    except Exception as exc:  # (compared as wasmtime-py raises them)
        return type(exc), str(exc).splitlines()[0] if str(exc) else ""


@pytest.mark.parametrize("name, args", CASES + BAD)
def test_the_same_as_wasmtime_pys_call(name, args):
    args = [21] if args is None else args
    store, instance = _instance()
    ours_store, ours_instance = _instance()
    theirs = _func(store, instance, name)
    ours = _func(ours_store, ours_instance, name)
    for _ in range(3):  # (the second call onwards uses the types kept from the first)
        expected = _outcome(lambda: theirs(store, *args))
        got = _outcome(lambda: fastlift.call(ours, ours_store, list(args)))
        assert got == expected
        if expected[0] == "ok":
            theirs.post_return(store)
            ours.post_return(ours_store)
        else:
            break  # (a trapped instance is done)


def test_a_functions_type_is_read_once(monkeypatch):
    reads = []
    original = wc.Func.type

    def counted(self, store):
        reads.append(1)
        return original(self, store)

    monkeypatch.setattr(wc.Func, "type", counted)
    box = Sandbox(GUEST)
    for i in range(50):
        assert box.call("greet", f"n{i}") == f"Hello, n{i}"
        assert box.call("add", i, 1) == i + 1
    assert 1 <= len(reads) <= 4, len(reads)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=64))
def test_no_character_prints_wider_than_the_bound(text):
    """_check_result lets a string through unmeasured when 12 bytes a character fit."""
    from wasmsbx.components import values, wave
    from wasmsbx.components.types import WitType

    t = WitType("string")
    bound = runtime.WIDEST_ESCAPE * len(text) + 2
    assert wave.printed_size(text, t, 1 << 30) <= bound
    assert values.json_size(text, t, 1 << 30, level=3) <= bound


@pytest.mark.parametrize("kind", sorted(runtime.SHORT_KINDS))
def test_short_kinds_print_short(kind):
    from wasmsbx.components import values, wave
    from wasmsbx.components.types import INTS, WitType

    t = WitType(kind)
    if kind in INTS:
        samples = list(INTS[kind])
    elif kind in ("f32", "f64"):
        samples = [5e-324, -1.7976931348623157e308, float("nan"), float("-inf"), -0.0, 1e-300]
    elif kind == "bool":
        samples = [True, False]
    else:
        samples = ["\U0010ffff", "\x00", "'", "\ud7ff"]
    for v in samples:
        for size in (wave.printed_size(v, t, 1 << 30), values.json_size(v, t, 1 << 30, 3)):
            assert size <= 400 < runtime.RESULT_FREE, (kind, v, size)


def test_a_fresh_call_leaves_the_outputs_of_an_instance_another_call_is_using(tmp_path):
    """``invoke(fresh=True)`` replaces the instance; another thread's call still running
    on the old one keeps its outputs (they were closed under it: its writes refused,
    red team round 64), which close when the old instance is dropped."""
    import threading

    from wasmsbx.policy import from_dict

    from .component_guests import wat_component

    guest = wat_component("types.wat", tmp_path)
    policy = from_dict({"stdio": {"stdout": str(tmp_path / "out.txt")}})
    box = Sandbox(guest, policy)
    assert box.call("add", 2, 3) == 5
    old = box._instance
    files = [o.file for o in old.outputs if o.own]
    assert files, "a stdout to a file is an open file of the instance's"
    held, done = threading.Event(), threading.Event()

    def running() -> None:  # (as a call does: it holds the instance's turn)
        with old.turn:
            held.set()
            done.wait(30)

    thread = threading.Thread(target=running)
    thread.start()
    held.wait(30)
    assert box.invoke("add", [1, 1], fresh=True).value == 2
    assert box._instance is not old
    assert not any(f.closed for f in files)  # the running call may still write
    done.set()
    thread.join(30)
    second = box._instance
    second_files = [o.file for o in second.outputs if o.own]
    assert box.invoke("add", [1, 2], fresh=True).value == 3
    assert all(f.closed for f in second_files)  # (no call on it: closed at once)
    box.close()
