"""Resource bombs that must be stopped: loops, memory, recursion, tables, output floods."""

from __future__ import annotations

from .conftest import EXAMPLES, GUESTS, require_capability


def test_endless_loop_timeout(cli, backend):
    # 3 s, not 300 ms: a timeout given by flag covers compiling, and wasmer compiles every
    # module in a worker process, which on a loaded machine took longer than 300 ms to
    # start ("still compiling", a flake of the full suite).
    res = cli("run", GUESTS / "spin.wat", "spin", "--timeout", "3s", "--backend", backend)
    assert res.code == 112, res
    assert "still running after 3.00 s" in res.stderr


def test_endless_command_timeout(cli, backend):
    res = cli("run", GUESTS / "spin_cmd.wat", "--timeout", "200ms", "--backend", backend)
    assert res.code == 112, res


def test_wasi_program_spinning_timeout(cli, backend):
    res = cli(
        "run", GUESTS / "fsprobe.wasm", "--timeout", "200ms", "--backend", backend, "--", "spin"
    )
    assert res.code == 112, res


def test_endless_loop_fuel(cli, backend):
    require_capability(backend, "fuel")
    res = cli("run", EXAMPLES / "loop.wat", "spin", "--fuel", "10_000_000", "--backend", backend)
    assert res.code == 111, res
    assert "fuel exhausted after 10,000,000 units" in res.stderr


def test_fuel_used_reported(cli, backend):
    require_capability(backend, "fuel")
    res = cli(
        "run",
        EXAMPLES / "loop.wat",
        "count",
        "1000",
        "--fuel",
        "1000000",
        "--json",
        "--backend",
        backend,
    )
    assert res.code == 0, res
    used = res.json()["stats"]["fuel_used"]
    assert 1000 < used < 1000000


def test_fuel_without_metering_backend_is_refused(cli, backend):
    if "fuel" in __import__("tests.conftest", fromlist=["x"]).capabilities_of(backend).security:
        return
    res = cli("run", EXAMPLES / "loop.wat", "spin", "--fuel", "1000", "--backend", backend)
    assert res.code == 104 and "fuel" in res.stderr


def test_memory_grow_loop_capped(cli, backend):
    res = cli("run", GUESTS / "memgrow_loop.wat", "run", "--memory", "64MiB", "--backend", backend)
    assert res.code == 0, res
    assert res.stdout == "1024\n"  # 64 MiB of 64 KiB pages, then memory.grow returned -1
    assert "memory limit 64 MiB reached" in res.stderr


def test_memory_hog_example(cli, backend):
    res = cli("run", EXAMPLES / "memory_hog.wat", "hog", "--memory", "200MiB", "--backend", backend)
    assert res.code == 0 and res.stdout == "3072\n", res


def test_memory_needed_at_start_over_limit(cli, backend, tmp_path):
    module = tmp_path / "big.wat"
    module.write_text('(module (memory (export "memory") 2048) (func (export "f")))')
    res = cli("run", module, "f", "--memory", "64MiB", "--backend", backend)
    assert res.code == 110, res
    assert "memory limit 64 MiB reached" in res.stderr and "128 MiB" in res.stderr


def test_unbounded_recursion(cli, backend):
    res = cli("run", GUESTS / "recurse.wat", "recurse", "--backend", backend)
    assert res.code == 113, res
    assert "stack exhausted" in res.stderr
    assert "(the default stack limit)" in res.stderr  # (read "stack limit the default")
    assert len(res.stderr) < 5000  # the backtrace is cut short


def test_table_growth_capped(cli, backend):
    res = cli("run", GUESTS / "table_grow.wat", "grow_table", "--backend", backend)
    assert res.code == 0, res
    assert int(res.stdout) <= 10000


def test_output_flood_stopped(cli, backend, isolated):
    (isolated / "sandbox.toml").write_text('[limits]\noutput = "1MiB"\n')
    res = cli("run", GUESTS / "fsprobe.wasm", "--backend", backend, "--", "flood", "50000000")
    assert res.code == 115, res
    assert len(res.stdout_bytes) <= 1024 * 1024
    assert "output limit 1 MiB reached" in res.stderr


def test_stderr_flood_counts_too(cli, backend, isolated):
    (isolated / "sandbox.toml").write_text('[limits]\noutput = "100KiB"\n')
    res = cli("run", GUESTS / "fsprobe.wasm", "--backend", backend, "--", "flood-err", "10000000")
    assert res.code == 115, res


def test_output_under_limit_passes(cli, backend):
    res = cli("run", GUESTS / "fsprobe.wasm", "--backend", backend, "--", "flood", "100000")
    assert res.code == 0 and len(res.stdout_bytes) == 100000
