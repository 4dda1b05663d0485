"""``wasmsbx watch`` on a component: reruns and a WIT-level compatibility report."""

from __future__ import annotations

import pytest

from wasmsbx.components.watch import Interface, compare

from .test_watch import Watch, save

COMPONENT = """(component
  (core module $m
    (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
    (func (export "sub") (param i32 i32) (result i32) (i32.sub (local.get 0) (local.get 1))))
  (core instance $i (instantiate $m))
  (func (export "add") (param "a" {t}) (param "b" {t}) (result {t})
    (canon lift (core func $i "add")))
  {extra}
)"""
SUB = (
    '(func (export "sub") (param "a" s32) (param "b" s32) (result s32)'
    ' (canon lift (core func $i "sub")))'
)


@pytest.fixture
def watch(isolated):
    started: list = []

    def start(*args) -> Watch:
        proc = Watch(*args, cwd=isolated, json_mode=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def test_watch_reports_wit_changes(watch, isolated):
    mod = isolated / "c.wat"
    mod.write_text(COMPONENT.format(t="s32", extra=""))
    w = watch(mod.name, "add", 5, 3)
    run = w.wait("run", cycle=1)
    assert run["ok"] and run["results"] == [{"type": "s32", "value": 8, "wave": "8"}]

    save(mod, COMPONENT.format(t="s32", extra=SUB))
    run = w.wait("run", cycle=2)
    report = w.cycle(2)[0]
    assert report["event"] == "interface" and report["breaking"] is False
    assert [(c["name"], c["change"], c["new"]) for c in report["changes"]] == [
        ("sub", "added", "func(a: s32, b: s32) -> s32")
    ]

    save(mod, COMPONENT.format(t="u8", extra=""))
    run = w.wait("run", cycle=3)
    report = w.cycle(3)[0]
    assert report["breaking"] is True
    assert {(c["name"], c["change"]) for c in report["changes"]} == {
        ("add", "signature"),
        ("sub", "removed"),
    }
    assert run["ok"] and run["results"] == [{"type": "u8", "value": 8, "wave": "8"}]
    w.stop()


def test_compare_imports():
    old = Interface("a", {"f": "func()"}, ("wasi:cli/stdout@0.2.0",))
    new = Interface("b", {"f": "func()"}, ("wasi:cli/stdout@0.2.0", "wasi:http/types@0.2.0"))
    report = compare(old, new)
    assert report.breaking
    (change,) = report.changes
    assert change.name == "wasi:http/types@0.2.0" and "network" in change.note
    fs = Interface("c", {"f": "func()"}, ("wasi:filesystem/types@0.2.0",))
    (change,) = [c for c in compare(old, fs).changes if c.change == "added"]
    assert not change.breaking and change.note == "now asks for filesystem"
