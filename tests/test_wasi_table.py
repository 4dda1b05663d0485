"""The WASI preview1 table (wasmsbx/wasm/wasi.py) against the real runtime and wasi-libc."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wasmsbx.wasm import wasi

WASI_API_H = Path("/usr/include/wasm32-wasi/wasi/api.h")


def _import_wat(module: str, fn: wasi.WasiFunction) -> str:
    params = " ".join(fn.params)
    results = " ".join(fn.results)
    return f'(module (import "{module}" "{fn.name}" (func (param {params}) (result {results}))))'


def _links(wat: str) -> str:
    """ "" when the module links against wasmtime's WASI, else the error's first line."""
    import wasmtime

    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, wasmtime.wat2wasm(wat))
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    try:
        linker.instantiate(store, module)
    except Exception as exc:
        return str(exc).splitlines()[0]
    return ""


def test_table_has_every_preview1_function_once():
    names = [f.name for f in wasi.FUNCTIONS]
    assert len(names) == len(set(names)) == 46
    assert set(wasi.BY_NAME) == set(names)


@pytest.mark.parametrize("fn", wasi.FUNCTIONS, ids=lambda f: f.name)
def test_each_function_links_with_its_declared_signature(fn):
    assert _links(_import_wat(wasi.PREVIEW1, fn)) == ""


def test_a_wrong_signature_does_not_link():
    """The check above can fail: a signature off by one parameter is refused."""
    fn = wasi.BY_NAME["fd_write"]
    wrong = fn._replace(params=fn.params[:-1])
    assert "incompatible" in _links(_import_wat(wasi.PREVIEW1, wrong))


def test_wasi_unstable_is_not_provided():
    fn = wasi.BY_NAME["fd_write"]
    assert "wasi_unstable" in _links(_import_wat(wasi.UNSTABLE, fn))
    assert not wasi.is_wasi_module(wasi.UNSTABLE)
    assert wasi.is_wasi_module(wasi.PREVIEW1)


@pytest.mark.skipif(not WASI_API_H.is_file(), reason="wasi-libc headers not installed")
def test_table_covers_wasi_libc_api():
    """Every function wasi-libc's api.h declares is in the table (proc_raise, dropped from
    newer wasi-libc but still linked by wasmtime, is the one extra)."""
    declared = set(re.findall(r"\b__wasi_([a-z_]+)\(", WASI_API_H.read_text()))
    missing = declared - set(wasi.BY_NAME)
    assert not missing
    assert set(wasi.BY_NAME) - declared <= {"proc_raise"}


def test_groups_and_phrases():
    for fn in wasi.FUNCTIONS:
        assert fn.group in wasi.GROUPS
        assert fn.doc and "\n" not in fn.doc and len(fn.doc) <= 60
    assert {fn.name for fn in wasi.FUNCTIONS if wasi.opens_paths(fn.name)} == {
        fn.name for fn in wasi.FUNCTIONS if fn.name.startswith("path_")
    }
    assert str(wasi.BY_NAME["proc_exit"].signature) == "(i32) -> ()"
    assert wasi.BY_NAME["clock_time_get"].signature == "(i32, i64, i32) -> i32"


def test_readme_table_is_current():
    from .conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    for fn in wasi.FUNCTIONS:
        assert f"| `{fn.name}` | {fn.group} | `{fn.signature}` | {fn.doc} |" in readme, fn.name
