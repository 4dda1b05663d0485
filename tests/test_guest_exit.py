"""One mapping of WASI command exit statuses on every backend (issue #13, item 7).

0..125 pass through; any other status (WASI's is a u32, so also every negative i32)
becomes 126, never 0 (wasmer turned 256 into 0) and never a module error (wasmtime
refused 126 and up with "error while executing"). ``--json`` says the code is the
guest's (``exit_source``) and gives the status whole (``guest_status``).
"""

from __future__ import annotations

import pytest

from wasmsbx import errors

# The host side (stdio, WASI exit): the same for wasmer's three compilers.
pytestmark = pytest.mark.any_compiler

EXIT_WAT = (
    '(module (import "wasi_snapshot_preview1" "proc_exit" (func $e (param i32))) '
    '(memory (export "memory") 1) (func (export "_start") (call $e (i32.const {n}))))'
)
CASES = [
    (0, 0, 0),
    (3, 3, 3),
    (112, 112, 112),  # the guest's own: said so, so it is not taken for a timeout
    (125, 125, 125),
    (126, 126, 126),
    (255, 126, 255),
    (256, 126, 256),
    (2**31 - 1, 126, 2**31 - 1),
    (-1, 126, 2**32 - 1),
    (-256, 126, 2**32 - 256),
]


@pytest.fixture
def exiting(tmp_path):
    def make(n: int):
        path = tmp_path / f"exit{n}.wat"
        path.write_text(EXIT_WAT.format(n=n))
        return path

    return make


@pytest.mark.parametrize("status, code, reported", CASES)
def test_exit_status_mapping(cli, backend, exiting, status, code, reported):
    res = cli("run", exiting(status), "--backend", backend)
    assert res.code == code, res
    assert "Traceback" not in res.stderr and "error:" not in res.stderr
    if code >= 100:
        assert f"status {reported}" in res.stderr or "guest's own status" in res.stderr
    else:
        assert res.stderr == ""


@pytest.mark.parametrize("status, code, reported", CASES[::3])
def test_exit_status_json(cli, backend, exiting, status, code, reported):
    res = cli("run", exiting(status), "--backend", backend, "--json")
    data = res.json()
    assert res.code == code and data["exit_code"] == code
    assert data["exit_source"] == "guest" and data["guest_status"] == reported


def test_wasmsbx_errors_say_so_in_json(cli, tmp_path):
    spin = tmp_path / "spin.wat"
    spin.write_text('(module (func (export "_start") (loop br 0)))')
    res = cli("run", spin, "--fuel", "1000", "--json")
    data = res.json()
    assert res.code == errors.ExitCode.LIMIT_FUEL
    assert data["exit_source"] == "wasmsbx" and data["error"]["kind"] == "limit"


def test_mapping_function():
    statuses = (0, 125, 126, 256, -1, 2**32 - 1)
    assert [errors.guest_exit_code(s) for s in statuses] == [0, 125, 126, 126, 126, 126]
