"""The interface a cache record gives (native.recorded.RecordedInterface) is built into
model objects only when asked for; the checks every cold start makes read the record's
tuples. Those checks must refuse exactly what the checks of built objects refuse: a
module file known by its source memo, a record found by digest, WASI imports of every
wrong kind and type, a command without `_start`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import wasmsbx
from wasmsbx import errors
from wasmsbx.native import artifact as aot
from wasmsbx.native import cache, located, recorded, trust
from wasmsbx.runner import Sandbox, shared
from wasmsbx.runner import sandbox as sandbox_mod
from wasmsbx.wasm import wasi
from wasmsbx.wasm.facts import read_interface
from wasmsbx.wasm.model import FuncType, Import
from wasmsbx.wasm.source import read_module

from .cache_helpers import make_policy, spy_known_files

FD_WRITE = "(func (param i32 i32 i32 i32) (result i32))"


@pytest.fixture(autouse=True)
def no_margin(monkeypatch):
    """Source memos for files just written (located.MARGIN)."""
    monkeypatch.setattr(located, "MARGIN", 0.0)


def _raw(imp: Import) -> tuple:
    """``imp`` as a record holds it (recorded._encode)."""
    t = None if imp.type is None else (tuple(imp.type.params), tuple(imp.type.results))
    return (imp.module, imp.name, imp.kind, t, None, None, None, False)


def _imp(name, module=None, kind="func", params=("i32", "i32", "i32", "i32"), results=("i32",)):
    ftype = None if params is None else FuncType(tuple(params), tuple(results))
    return Import(module or wasi.PREVIEW1, name, kind, ftype)


BAD = [
    _imp("fd_write", kind="global"),
    _imp("fd_write", kind="memory", params=None),
    _imp("fd_write", kind="table"),
    _imp("fd_write", params=("i32", "i32", "i32")),
    _imp("fd_write", params=("i64", "i32", "i32", "i32")),
    _imp("fd_write", results=()),
    _imp("fd_writ"),
    _imp("fd_write", module="wasi_unstable"),
    _imp("fd_write", module=wasi.PREVIEW1 + "\0"),
    _imp("fd_write", module="env"),
]


@pytest.mark.parametrize("bad", BAD, ids=lambda i: f"{i.module[:6]}.{i.name}.{i.kind}.{i.type}")
def test_record_tuples_pass_only_what_the_model_check_passes(bad):
    good = _imp("fd_write")
    assert sandbox_mod._provided_wasi((_raw(good),)) is True
    assert sandbox_mod._provided_wasi(()) is True
    for imports in ([bad], [good, bad], [bad, good]):
        assert sandbox_mod._provided_wasi(tuple(map(_raw, imports))) is False
        with pytest.raises(errors.LinkError):
            sandbox_mod._check_imports(imports)
    # Not sure: the built imports decide (the slow path): an unhashable type (lists), a
    # function whose type is unknown
    odd = (wasi.PREVIEW1, "fd_write", "func", (["i32"] * 4, ["i32"]), None, None, None, False)
    assert sandbox_mod._provided_wasi((odd,)) is False
    assert sandbox_mod._provided_wasi((_raw(_imp("fd_write", params=None)),)) is False


def test_a_recorded_interface_equals_the_parsed_one_and_builds_once(tmp_path):
    wasm = read_module(Path(__file__).parent.parent / "examples" / "wasi" / "hello.wasm")
    facts = recorded.read(wasm)
    code, digest, key = tmp_path, "ab" * 32, os.urandom(32)
    recorded.remember(code, digest, facts, key)
    again = recorded.recall(code, digest, key)
    assert isinstance(again.interface, recorded.RecordedInterface)
    assert again.interface._built is None  # nothing built by reading the record
    assert again == facts and again.interface == facts.interface == read_interface(wasm)
    assert tuple(again.interface) == tuple(facts.interface) and len(again.interface) == 2
    built = again.interface.imports
    assert again.interface.imports is built  # built once
    assert hash(again.interface) == hash(facts.interface)


def _known(tmp_path: Path, wat: str, name: str = "m.wasm") -> Path:
    path = tmp_path / name
    text = tmp_path / (name + ".wat")
    text.write_text(wat)
    path.write_bytes(read_module(text))
    return path


def _fresh(module, policy, **kw):
    shared.clear()
    return Sandbox(module, policy, backend="wasmtime", **kw)


def _assert_known(box) -> None:
    """The sandbox came from the module's source memo and record: nothing read."""
    assert box._known is not None and box.cache_state in ("hit", "miss")
    interface = box._prepared.interface
    assert isinstance(interface, recorded.RecordedInterface)


def _remember(path: Path, policy) -> None:
    """What an earlier run that had the module's imports (from its host) left in the
    cache: the module's facts record and the file's source memo."""
    wasm = path.read_bytes()
    digest = aot.digest(wasm)
    trust.tag_key("cache-entry", create=True)  # (the user's secret)
    cache.remember_facts(policy, None, digest, recorded.read(wasm))
    info = os.stat(path)
    cache.remember_source(policy, None, os.path.abspath(path), info, digest)
    assert (
        located.recall(
            cache.shared_store(policy, None).code_text,
            os.path.abspath(path),
            info,
            trust.tag_key("cache-source"),
        )
        == digest
    )


@pytest.mark.parametrize("bad", BAD, ids=lambda i: f"{i.module[:6]}.{i.name}.{i.kind}")
def test_a_known_module_with_an_import_the_sandbox_lacks_is_refused(isolated, tmp_path, bad):
    """Known by its memo and record (no read, no parse): refused before anything runs,
    from the record's tuples, as the parsed module is."""
    if bad.kind == "func":
        params = f" (param {' '.join(bad.type.params)})" if bad.type.params else ""
        results = f" (result {' '.join(bad.type.results)})" if bad.type.results else ""
        desc = f"(func{params}{results})"
    elif bad.kind == "memory":
        desc = "(memory 1)"
    elif bad.kind == "table":
        desc = "(table 1 funcref)"
    else:
        desc = "(global i32)"
    module = bad.module.replace("\0", "\\00")
    wat = (
        f'(module (import "wasi_snapshot_preview1" "fd_write" {FD_WRITE})'
        f' (import "{module}" "{bad.name}" {desc})'
        ' (memory (export "memory") 1) (func (export "_start")))'
    )
    path = _known(tmp_path, wat)
    policy = make_policy()
    with pytest.raises(errors.LinkError, match="does not provide") as parsed:
        _fresh(path, policy, kind="command")
    _remember(path, policy)
    with pytest.MonkeyPatch.context() as patch:
        seen = spy_known_files(patch)
        for _ in range(2):
            with pytest.raises(errors.LinkError, match="does not provide") as known:
                _fresh(path, policy, kind="command")
            assert str(known.value) == str(parsed.value)
    assert seen and all(got is not None for got in seen), "not known by its memo"
    assert isinstance(seen[0][1].interface, recorded.RecordedInterface)


def test_a_known_command_runs_and_one_without_start_is_refused(isolated, tmp_path):
    ok = _known(
        tmp_path,
        f'(module (import "wasi_snapshot_preview1" "fd_write" {FD_WRITE})'
        ' (memory (export "memory") 1) (func (export "_start")))',
        "ok.wasm",
    )
    policy = make_policy()
    for _ in range(3):
        box = _fresh(ok, policy, kind="command")
    _assert_known(box)
    assert box._prepared.interface._built is None  # checked from the tuples alone
    assert box._needs_wasi() is True
    assert box._prepared.interface._built is None
    assert box.run_command().exit_code == 0
    for start in ('(global (export "_start") i32 (i32.const 0))', ""):
        path = _known(
            tmp_path,
            f'(module (memory (export "memory") 1) {start} (func (export "main")))',
            "nostart.wasm",
        )
        for _ in range(3):
            with pytest.raises(errors.UsageError, match="no _start export"):
                _fresh(path, policy, kind="command")
            assert _fresh(path, policy)["main"]() is None  # as a library it is fine


def test_known_modules_with_host_imports_check_against_them(isolated, tmp_path):
    """With host functions granted, the built imports are checked (the slow path)."""
    path = _known(
        tmp_path,
        '(module (import "env" "f" (func (result i32))) (func (export "g") (result i32) call 0))',
        "host.wasm",
    )
    policy = make_policy()
    imports = {"env": {"f": wasmsbx.func(lambda: 41, params=[], results=["i32"])}}
    for _ in range(3):
        box = _fresh(path, policy, imports=imports)
        assert box["g"]() == 41
    _assert_known(box)
    for _ in range(2):
        with pytest.raises(errors.LinkError, match="function env.f"):
            _fresh(path, policy)
    assert trust.tag_key("cache-facts")


def test_export_records_build_what_the_plain_constructors_build():
    """`_exports` (every cold start) builds its namedtuples with tuple.__new__: the
    same values, types and defaults as ExportInfo(...) and Signature(...)."""
    from wasmsbx.backends.base import ExportInfo, Signature

    records = [
        {"name": "add", "kind": "func", "params": ["i32", "i32"], "results": ["i32"]},
        {"name": "nothing", "kind": "func", "params": [], "results": []},
        {"name": "memory", "kind": "memory"},
        {"name": "g", "kind": "global", "params": None},
        {"name": "é\0x", "kind": "table"},
    ]
    built = sandbox_mod._exports(records)
    plain = [
        ExportInfo(e["name"], e["kind"], Signature(tuple(e["params"]), tuple(e["results"])))
        if e.get("params") is not None
        else ExportInfo(e["name"], e["kind"])
        for e in records
    ]
    assert built == plain
    assert [type(b) for b in built] == [ExportInfo] * len(records)
    assert [type(b.signature) for b in built[:2]] == [Signature] * 2
    assert built[0].signature.params == ("i32", "i32") and built[2].signature is None
    assert str(built[0].signature) == "(i32, i32) -> i32"
    with pytest.raises(KeyError):
        sandbox_mod._exports([{"name": "f", "kind": "func", "params": []}])
