"""wasmsbx.audit.report: each rule on a purpose-built module, the risk score, the report data."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasmsbx import errors
from wasmsbx import policy as policy_mod
from wasmsbx.audit.report import RULES, audit_file, compute_risk

from .audit_helpers import (
    HEADER,
    audit_wat,
    custom_section,
    module_with_body,
    only,
    rule_ids,
    wasi_imports,
    write_wat,
)
from .conftest import EXAMPLES, GUESTS

# ---------------------------------------------------------------------------- WSX0xx


def test_clean_module_has_no_findings():
    report = audit_file(EXAMPLES / "add.wat", policy_mod.defaults())
    assert report.findings == ()
    assert report.imports == () and report.capabilities == ()
    assert (report.risk.score, report.risk.level) == (0, "minimal")
    assert report.worst() is None and not report.fails("info")


def test_wsx001_custom_host_function():
    report = audit_file(GUESTS / "imports_env.wat", policy_mod.defaults())
    f = only(report, "WSX001")
    assert f.severity == "high" and f.points == 0
    assert "host_log" in f.message and "'env'" in f.message
    (cap,) = report.capabilities
    assert (cap.name, cap.status, cap.imports) == ("custom", "never", ("env.host_log",))
    assert report.imports[0].provided is False


def test_wsx001_imported_memory_and_global(tmp_path):
    report = audit_wat(
        tmp_path,
        '(import "env" "memory" (memory 1)) (import "env" "g" (global i32))',
    )
    f = only(report, "WSX001")
    assert "memory memory" in f.message and "global g" in f.message


@pytest.mark.parametrize(
    "imp, problem",
    [
        ('(import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))', "sig"),
        ('(import "wasi_snapshot_preview1" "fd_frobnicate" (func))', "unknown"),
        (
            '(import "wasi_unstable" "fd_write" (func (param i32 i32 i32 i32) (result i32)))',
            "wasi_unstable",
        ),
    ],
)
def test_wsx002_wasi_imports_that_do_not_link(tmp_path, imp, problem):
    report = audit_wat(tmp_path, imp)
    f = only(report, "WSX002")
    assert f.severity == "high"
    assert report.imports[0].provided is False
    if problem == "sig":
        assert "(i32) -> i32 does not match WASI's (i32, i32, i32, i32) -> i32" in f.message
    else:
        assert problem in f.message or "fd_frobnicate" in f.message


def test_wsx002_import_with_an_unresolvable_type(tmp_path):
    from .audit_helpers import leb, section

    name = b"wasi_snapshot_preview1"
    entry = leb(len(name)) + name + leb(8) + b"fd_write" + b"\x00" + leb(5)  # type 5: none
    path = tmp_path / "badtype.wasm"
    path.write_bytes(HEADER + section(2, b"\x01" + entry))
    report = audit_file(path, policy_mod.defaults())
    assert "does not name a function type" in only(report, "WSX002").message
    assert "WSX008" in rule_ids(report)


def test_wsx003_opens_paths_without_a_grant(tmp_path):
    report = audit_wat(tmp_path, wasi_imports("path_open"))
    f = only(report, "WSX003")
    assert (f.severity, f.points) == ("medium", 0)
    assert "path_open" in f.message
    fs = next(c for c in report.capabilities if c.name == "filesystem")
    assert fs.status == "denied"


def test_wsx003_gone_once_a_directory_is_granted(tmp_path):
    (tmp_path / "data").mkdir()
    report = audit_wat(
        tmp_path, wasi_imports("path_open"), '[filesystem]\nread_only = ["data:/data"]\n'
    )
    assert "WSX003" not in rule_ids(report)
    f = only(report, "WSX111")
    assert (f.severity, f.points, f.where, f.key) == (
        "info",
        10,
        "policy",
        "filesystem.read_only",
    )
    assert "/data" in f.message


def test_wsx004_reads_env_but_none_passed(tmp_path):
    f = only(audit_wat(tmp_path, wasi_imports("environ_get", "environ_sizes_get")), "WSX004")
    assert f.severity == "low" and "empty environment" in f.message


def test_wsx005_sockets(tmp_path):
    report = audit_wat(tmp_path, wasi_imports("sock_recv"))
    assert only(report, "WSX005").severity == "medium"
    sockets = next(c for c in report.capabilities if c.name == "sockets")
    assert sockets.status == "never"


def test_wsx006_initial_memory_over_the_limit(tmp_path):
    limit = '[limits]\nmemory = "1MiB"\n'
    f = only(audit_wat(tmp_path, "(memory 17)", limit), "WSX006")
    assert f.severity == "high" and "1.06 MiB" in f.message or "17 pages" in f.message
    assert "WSX006" not in rule_ids(audit_wat(tmp_path, "(memory 16)", limit))


def test_wsx007_initial_table_over_the_limit(tmp_path):
    limit = "[limits]\ntable_elements = 10\n"
    f = only(audit_wat(tmp_path, "(table 11 funcref)", limit), "WSX007")
    assert f.severity == "high" and "11 elements" in f.message
    assert "WSX007" not in rule_ids(audit_wat(tmp_path, "(table 10 10 funcref)", limit))


def test_wsx008_module_the_runtime_rejects(tmp_path):
    report = audit_wat(tmp_path, "(func (result i32))")  # parses, but does not type-check
    f = only(report, "WSX008")
    assert f.severity == "high" and "type mismatch" in f.message


# ---------------------------------------------------------------------------- WSX1xx


@pytest.mark.parametrize("key, severity", [("read_write", "medium"), ("read_only", "low")])
def test_wsx101_unused_directory_grant(tmp_path, key, severity):
    (tmp_path / "d").mkdir()
    report = audit_wat(tmp_path, "(memory 1 1)", f'[filesystem]\n{key} = ["d"]\n')
    f = only(report, "WSX101")
    assert (f.severity, f.where, f.key) == (severity, "policy", f"filesystem.{key}")
    assert "no path_* function" in f.message


@pytest.mark.parametrize("name", ["fd_readdir", "fd_filestat_get", "fd_filestat_set_times"])
def test_a_grant_reached_through_its_own_descriptor_is_not_unused(tmp_path, monkeypatch, name):
    """Red team 125: a module importing only fd_readdir and fd_filestat_set_times listed a
    granted home directory and set its times; the audit called the grant unused (WSX101)
    and the home grant worth 0 points (WSX104)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    report = audit_wat(tmp_path, wasi_imports(name), f'[filesystem]\nread_only = ["{home}"]\n')
    assert "WSX101" not in rule_ids(report)
    assert only(report, "WSX104").points == 40
    assert "it reaches granted directories" in only(report, "WSX111").message


def test_wsx102_unused_environment(tmp_path):
    report = audit_wat(tmp_path, "", '[env]\nset = { MODE = "fast" }\ninherit = ["LANG"]\n')
    f = only(report, "WSX102")
    assert "inherit LANG; set MODE" in f.message and f.key == "env.inherit"


def test_wsx103_inherit_everything(tmp_path):
    report = audit_wat(tmp_path, wasi_imports("environ_get"), '[env]\ninherit = ["*"]\n')
    f = only(report, "WSX103")
    assert (f.severity, f.points) == ("high", 30)
    only(report, "WSX112")


def test_wsx103_not_for_a_named_variable(tmp_path):
    report = audit_wat(tmp_path, wasi_imports("environ_get"), '[env]\ninherit = ["APP_*"]\n')
    assert "WSX103" not in rule_ids(report)
    assert only(report, "WSX112").points == 5


def test_wsx104_home_directory_granted(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    policy = f'[filesystem]\nread_write = ["{home}:/home"]\n'
    used = only(audit_wat(tmp_path, wasi_imports("path_open"), policy), "WSX104")
    assert (used.severity, used.points) == ("high", 40)
    assert "home directory" in used.message
    unused = only(audit_wat(tmp_path, "", policy), "WSX104")
    assert (unused.severity, unused.points) == ("high", 0)
    assert "too broad" in unused.message


def test_wsx104_root_and_parent_of_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    root = only(audit_wat(tmp_path, "", '[filesystem]\nread_only = ["/"]\n'), "WSX104")
    assert "root directory" in root.message
    parent = only(audit_wat(tmp_path, "", f'[filesystem]\nread_only = ["{tmp_path}"]\n'), "WSX104")
    assert "parent of the home directory" in parent.message


def test_wsx110_write_access(tmp_path):
    (tmp_path / "out").mkdir()
    report = audit_wat(tmp_path, wasi_imports("path_open"), '[filesystem]\nread_write = ["out"]\n')
    f = only(report, "WSX110")
    assert (f.severity, f.points, f.key) == ("low", 25, "filesystem.read_write")
    fs = next(c for c in report.capabilities if c.name == "filesystem")
    assert fs.status == "granted" and "rw " in fs.detail


def test_wsx111_read_access_and_wsx112_environment(tmp_path):
    (tmp_path / "in").mkdir()
    policy = '[filesystem]\nread_only = ["in"]\n[env]\nset = { A = "1" }\n'
    report = audit_wat(tmp_path, wasi_imports("path_open", "environ_get"), policy)
    assert only(report, "WSX111").points == 10
    assert only(report, "WSX112").points == 5
    assert sorted(rule_ids(report)) == ["WSX111", "WSX112"]


# ---------------------------------------------------------------------------- WSX2xx


def test_wsx201_and_wsx202_memory_maximum(tmp_path):
    f = only(audit_wat(tmp_path, "(memory 1)"), "WSX201")
    assert (f.severity, f.points) == ("low", 5) and "no maximum" in f.message
    over = only(audit_wat(tmp_path, "(memory 1 65536)"), "WSX202")
    assert over.severity == "info" and "4 GiB" in over.message
    assert audit_wat(tmp_path, "(memory 1 2)").findings == ()


def test_wsx203_shared_memory(tmp_path):
    f = only(audit_wat(tmp_path, "(memory 1 2 shared)"), "WSX203")
    assert (f.severity, f.points) == ("medium", 10) and "shared" in f.message


def test_wsx203_atomics_on_unshared_memory(tmp_path):
    body = '(memory 1 1) (func (export "f") (result i32) (i32.atomic.load (i32.const 0)))'
    f = only(audit_wat(tmp_path, body), "WSX203")
    assert (f.severity, f.points) == ("low", 5) and "atomic" in f.message


def test_wsx204_memory64(tmp_path):
    report = audit_wat(tmp_path, "(memory i64 1 2)")
    assert only(report, "WSX204").severity == "info"
    assert report.facts.memories[0].limits.memory64


def test_wsx205_table_without_maximum(tmp_path):
    f = only(audit_wat(tmp_path, "(table 1 funcref)"), "WSX205")
    assert (f.severity, f.points) == ("low", 2)
    assert audit_wat(tmp_path, "(table 1 1 funcref)").findings == ()


def test_wsx206_start_function():
    report = audit_file(GUESTS / "start_trap.wat", policy_mod.defaults())
    f = only(report, "WSX206")
    assert (f.severity, f.points) == ("low", 5) and "function 0" in f.message


def test_wsx206_names_an_exported_start(tmp_path):
    report = audit_wat(tmp_path, '(func $s (export "init")) (start $s)')
    assert "exported as 'init'" in only(report, "WSX206").message


def test_wsx207_large_data(tmp_path):
    def body(n):
        return f'(memory 17 17) (data (i32.const 0) "{"a" * n}")'

    f = only(audit_wat(tmp_path, body(1 << 20)), "WSX207")
    assert f.severity == "low" and "1 MiB" in f.message
    assert "WSX207" not in rule_ids(audit_wat(tmp_path, body((1 << 20) - 1)))


def test_wsx208_code_the_reader_does_not_know(tmp_path):
    path = tmp_path / "odd.wasm"
    path.write_bytes(module_with_body(b"\xff\x0b"))  # 0xff is no opcode
    report = audit_file(path, policy_mod.defaults())
    assert "WSX008" in rule_ids(report)  # wasmtime does not know it either
    f = only(report, "WSX208")
    assert (f.severity, f.points) == ("medium", 15)


def test_wsx209_debug_info(tmp_path):
    import wasmtime

    base = bytes(wasmtime.wat2wasm('(module (func (export "f")))'))
    path = tmp_path / "dbg.wasm"
    path.write_bytes(base + custom_section(".debug_info", b"\x00" * 100))
    f = only(audit_file(path, policy_mod.defaults()), "WSX209")
    assert f.severity == "info" and "1 DWARF section" in f.message
    # a name section alone is not debug info
    plain = tmp_path / "names.wasm"
    plain.write_bytes(base + custom_section("name", b""))
    assert audit_file(plain, policy_mod.defaults()).findings == ()


def test_wsx210_clock_and_random(tmp_path):
    f = only(audit_wat(tmp_path, wasi_imports("clock_time_get", "random_get")), "WSX210")
    assert "clock_time_get, random_get" in f.message and f.points == 0


def test_every_rule_has_a_test():
    names = [
        line for line in Path(__file__).read_text().splitlines() if line.startswith("def test_")
    ]
    untested = [rule for rule in RULES if not any(rule.lower() in name for name in names)]
    assert not untested


def test_rules_are_well_formed():
    for rule_id, rule in RULES.items():
        assert rule.id == rule_id and rule_id.startswith("WSX") and len(rule_id) == 6
        assert rule.severity in ("info", "low", "medium", "high")
        for text in (rule.title, rule.help, rule.fix):
            assert text and "\n" not in text
        assert not rule.fix.endswith(".")  # rendered as "Fix: ...."
    assert len({r.name for r in RULES.values()}) == len(RULES)


# ---------------------------------------------------------------------------- risk score


def test_risk_score_sums_points_and_shows_its_formula(tmp_path):
    (tmp_path / "out").mkdir()
    body = wasi_imports("path_open") + " (memory 1) (func $s) (start $s)"
    report = audit_wat(tmp_path, body, '[filesystem]\nread_write = ["out"]\n')
    risk = report.risk
    assert sorted(r for r, _, _ in risk.items) == ["WSX110", "WSX201", "WSX206"]
    assert (risk.score, risk.total, risk.level) == (35, 35, "moderate")
    assert risk.formula == "min(100, 25 [WSX110] + 5 [WSX201] + 5 [WSX206]) = 35"


def test_risk_score_is_capped_at_100(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    policy = f'[filesystem]\nread_write = ["{tmp_path}"]\n[env]\ninherit = ["*"]\n'
    body = wasi_imports("path_open", "environ_get") + " (memory 1) (func $s) (start $s)"
    risk = audit_wat(tmp_path, body, policy).risk
    assert risk.total == 40 + 25 + 30 + 5 + 5 + 5
    assert (risk.score, risk.level) == (100, "high")
    assert risk.formula.endswith("= 100")


def test_failure_findings_add_no_points(tmp_path):
    report = audit_wat(
        tmp_path, wasi_imports("path_open", "sock_recv") + ' (import "env" "x" (func))'
    )
    assert {"WSX001", "WSX003", "WSX005"} <= set(rule_ids(report))
    assert report.risk.score == 0 and report.risk.formula == "no finding adds points: 0"
    assert report.fails("high") and report.worst() == "high"


def test_risk_levels():
    from wasmsbx.audit.report import Finding

    def risk(points):
        return compute_risk([Finding("WSX201", "low", "m", "f", points, "s")]).level

    assert [risk(p) for p in (0, 9, 10, 29, 30, 59, 60, 100)] == [
        "minimal",
        "minimal",
        "low",
        "low",
        "moderate",
        "moderate",
        "high",
        "high",
    ]


# ---------------------------------------------------------------------------- the report data


def test_imports_grouped_by_capability_c_guest():
    report = audit_file(GUESTS / "fsprobe.wasm", policy_mod.defaults())
    groups = {c.name: c for c in report.capabilities}
    assert list(groups) == ["filesystem", "stdio", "environment", "args", "polling", "process"]
    assert "path_open" in groups["filesystem"].imports
    assert groups["stdio"].imports == (
        "fd_close",
        "fd_fdstat_get",
        "fd_read",
        "fd_seek",
        "fd_write",
    )
    assert groups["polling"].imports == ("poll_oneoff",) and groups["polling"].status == "always"
    assert all(i.provided and i.explanation for i in report.imports)
    assert sorted(rule_ids(report)) == ["WSX003", "WSX004", "WSX201"]


def test_exports_memories_tables_globals_and_data():
    facts = audit_file(EXAMPLES / "wasi" / "hello.wasm", policy_mod.defaults()).to_dict()
    assert {
        "name": "_start",
        "kind": "func",
        "index": facts["exports"][1]["index"],
        "signature": "() -> ()",
    } in facts["exports"]
    (mem,) = facts["memories"]
    assert (mem["min_pages"], mem["max_pages"], mem["min_bytes"]) == (2, None, 131072)
    assert facts["tables"][0]["max"] == facts["tables"][0]["min"]
    assert facts["globals"][0]["mutable"] is True
    assert facts["data"]["segments"] == 2 and facts["data"]["total_bytes"] == 2592 + 364
    assert facts["start"] is None
    assert len(facts["module"]["sha256"]) == 64


def test_export_signatures():
    data = audit_file(GUESTS / "types.wat", policy_mod.defaults()).to_dict()
    sigs = {e["name"]: e["signature"] for e in data["exports"]}
    assert sigs["two_results"] == "(i32) -> (i32, i64)"
    assert sigs["no_result"] == "() -> ()"


def test_policy_env_values_never_reach_the_report(tmp_path):
    report = audit_wat(tmp_path, wasi_imports("environ_get"), '[env]\nset = { TOKEN = "s3cret" }\n')
    import json

    text = json.dumps(report.to_dict()) + json.dumps(report.to_sarif())
    assert "TOKEN" in text and "s3cret" not in text


# ---------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "data, expect",
    [
        (b"", "empty file"),
        (HEADER + b"\x05\xff", "not a valid WebAssembly module"),
        (b"\0asm\x0d\x00\x01\x00\x01\xff\x01", "malformed component"),
        (b"\xff\xfe\x00garbage", "not a WebAssembly module"),
        (b"(module (func (result i32)", "invalid WebAssembly text"),
    ],
)
def test_malformed_modules_raise_module_error(tmp_path, data, expect):
    path = tmp_path / "bad.wasm"
    path.write_bytes(data)
    with pytest.raises(errors.ModuleError) as info:
        audit_file(path, policy_mod.defaults())
    assert expect in info.value.message


def test_truncated_c_module(tmp_path):
    data = (GUESTS / "fsprobe.wasm").read_bytes()
    path = tmp_path / "cut.wasm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.ModuleError, match="not a valid WebAssembly module"):
        audit_file(path, policy_mod.defaults())


def test_missing_module_is_an_input_error(tmp_path):
    with pytest.raises(errors.InputError):
        audit_file(tmp_path / "nope.wasm", policy_mod.defaults())


@pytest.mark.slow
def test_random_bytes_never_escape_as_other_errors(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    path = tmp_path / "fuzz.wasm"

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=200))
    def check(tail):
        path.write_bytes(HEADER + tail)
        try:
            audit_file(path, policy_mod.defaults())
        except errors.ModuleError:
            pass

    check()


def test_wat_path_is_kept(tmp_path):
    path = write_wat(tmp_path, "")
    assert audit_file(path, policy_mod.defaults()).path == str(path)


@pytest.mark.slow
def test_mutated_c_module_never_crashes_the_checks():
    """Flipped bytes in a real module: decoding fails cleanly or every check runs."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from wasmsbx.audit.report import audit, suggest_policy
    from wasmsbx.wasm.facts import FactsError, read_facts

    original = (EXAMPLES / "wasi" / "hello.wasm").read_bytes()

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.integers(8, len(original) - 1), st.integers(0, 255)), max_size=4))
    def check(flips):
        data = bytearray(original)
        for at, value in flips:
            data[at] = value
        try:
            facts = read_facts(bytes(data))
        except FactsError:
            return
        report = audit(facts, policy_mod.defaults(), "m.wasm")  # no validator: our checks
        report.to_dict(), report.to_sarif(), suggest_policy(report).to_toml()

    check()


def test_the_validation_engine_is_freed_before_the_runtime_at_exit():
    # The fuzz case above left the validation engine to the interpreter's end, which
    # freed it through a wasmtime-py already torn down: "Exception ignored in:
    # Managed.__del__ ... 'NoneType' object is not callable" after the last test.
    import subprocess
    import sys

    case = f"{__file__}::test_random_bytes_never_escape_as_other_errors"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", case],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "Exception ignored" not in done.stderr + done.stdout, done.stderr[-2000:]
