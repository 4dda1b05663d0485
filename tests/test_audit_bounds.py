"""``wasmsbx audit`` stays proportional to the module, whatever it declares (red team
round 77): the reader refuses counts past wasmtime's validator (wasm.facts.MAX_COUNTS),
and a valid module's lists and findings are cut, saying what was cut, in every view.
And ``limits.module_size`` binds every command that reads a module, not only ``run``."""

from __future__ import annotations

import json

import pytest

from wasmsbx.wasm.facts import FactsError, read_facts

HEADER = b"\0asm\1\0\0\0"
FUNC_TYPE = b"\x60\x00\x00"  # () -> ()
MEMORY = b"\x00\x00"  # no maximum, 0 pages
TABLE = b"\x70\x00\x00"  # funcref, no maximum, 0 elements
GLOBAL = b"\x7f\x00\x41\x00\x0b"  # immutable i32 = 0


def leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + leb(len(payload)) + payload


def vec(items: list) -> bytes:
    return leb(len(items)) + b"".join(items)


def name(text: str) -> bytes:
    return leb(len(text)) + text.encode()


def many(kind: str, n: int) -> bytes:
    """A module declaring ``n`` items of ``kind`` (a key of MAX_COUNTS, or "imported
    memories")."""
    if kind == "memories":
        return HEADER + section(5, vec([MEMORY] * n))
    if kind == "tables":
        return HEADER + section(4, vec([TABLE] * n))
    if kind == "globals":
        return HEADER + section(6, vec([GLOBAL] * n))
    if kind == "types":
        return HEADER + section(1, vec([FUNC_TYPE] * n))
    if kind == "data segments":
        return HEADER + section(11, vec([b"\x01\x00"] * n))  # passive, empty
    if kind == "element segments":
        return HEADER + section(9, vec([b"\x01\x00\x00"] * n))  # passive, no functions
    if kind == "imported memories":
        imports = [name("m") + name(f"i{i}") + b"\x02" + MEMORY for i in range(n)]
        return HEADER + section(2, vec(imports))
    if kind == "exports":
        exports = [name(f"e{i}") + b"\x00\x00" for i in range(n)]
        body = section(3, vec([b"\x00"])) + section(7, vec(exports))
        return HEADER + section(1, vec([FUNC_TYPE])) + body + section(10, vec([b"\x02\x00\x0b"]))
    raise AssertionError(kind)


LIMITED = [
    ("memories", 100),
    ("imported memories", 100),
    ("tables", 100_000),
    ("data segments", 100_000),
    ("element segments", 100_000),
    ("globals", 1_000_000),
]


@pytest.mark.parametrize("kind,limit", LIMITED)
def test_the_reader_refuses_what_wasmtime_refuses_and_takes_what_it_takes(kind, limit):
    """One past wasmparser's limit is refused, as wasmtime refuses it; the limit itself
    is read. 400,000 memories were read into 400,000 records first."""
    import wasmtime

    from wasmsbx.wasm.facts import MAX_COUNTS

    assert MAX_COUNTS[kind.replace("imported ", "")] == limit
    over = many(kind, limit + 1)
    with pytest.raises(FactsError, match=f"more than the {limit:,} wasmtime accepts"):
        read_facts(over)
    with pytest.raises(wasmtime.WasmtimeError, match=f"exceeds limit of {limit}"):
        wasmtime.Module.validate(wasmtime.Engine(), over)
    if limit <= 100_000:  # (a million globals: 5 MB, 2 s; the refusal is what matters)
        read_facts(many(kind, limit), scan_code=False)


def test_a_count_past_the_limit_is_refused_before_its_items_are_read():
    """The error is at the count's offset (where wasmtime puts it too), not at an item."""
    with pytest.raises(FactsError) as caught:
        read_facts(many("memories", 400_000))
    assert caught.value.offset == len(HEADER) + 1 + len(leb(len(MEMORY) * 400_000 + 3))
    assert "400,000 memories, more than the 100" in str(caught.value)


@pytest.mark.parametrize("view", [[], ["--json"], ["--sarif"]])
def test_audit_of_a_module_past_the_limits_is_an_invalid_module(cli, tmp_path, view):
    """0.8 MB of 400,000 memories: `audit --json` ran out of memory at 2.1 GB. (1,000
    here: a regression then costs this process megabytes, not gigabytes.)"""
    module = tmp_path / "mems.wasm"
    module.write_bytes(many("memories", 1_000))
    res = cli("audit", module, *view)
    assert res.code == 102, res
    assert "not a valid WebAssembly module: 1,000 memories, more than the 100" in res.stderr
    assert len(res.stdout_bytes) < 64 * 1024  # (--sarif's failure log; nothing else)


# ---------------------------------------------------------------------------- valid, large


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A valid module of 1,500 tables without maximum, 1,200 globals (the first three
    exported, the first one twice) and 1,100 exports."""
    exports = [name("g0") + b"\x03\x00", name("g0b") + b"\x03\x00"]
    exports += [name(f"g{i}") + b"\x03" + leb(i) for i in (1, 2)]
    exports += [name(f"f{i}") + b"\x00\x00" for i in range(1_100 - len(exports))]
    data = HEADER + section(1, vec([FUNC_TYPE])) + section(3, vec([b"\x00"]))
    data += section(4, vec([TABLE] * 1_500)) + section(6, vec([GLOBAL] * 1_200))
    data += section(7, vec(exports)) + section(10, vec([b"\x02\x00\x0b"]))
    path = tmp_path_factory.mktemp("large") / "large.wasm"
    path.write_bytes(data)
    return path


def test_json_lists_keep_their_first_1000_and_say_what_was_cut(cli, large):
    res = cli("audit", large, "--json")
    assert res.code == 0, res
    report = res.json()
    assert report["truncated"]["lists"] == {"tables": 1_500, "globals": 1_200, "exports": 1_100}
    assert report["truncated"]["kept"] == 1_000
    assert [len(report[k]) for k in ("tables", "globals", "exports")] == [1_000] * 3
    assert report["globals"][0]["exported_as"] == ["g0", "g0b"]
    assert report["globals"][2]["exported_as"] == ["g2"]
    assert report["globals"][3]["exported_as"] == []


def test_a_rule_fires_at_most_100_times_and_one_finding_adds_the_rest(cli, large):
    """1,500 tables without maximum were 1,500 WSX205 findings, risk addends and SARIF
    results; now 100 and one for the other 1,400, carrying their points."""
    report = cli("audit", large, "--json").json()
    tables = [f for f in report["findings"] if f["rule"] == "WSX205"]
    assert len(tables) == 101
    assert tables[0]["subject"] == "table 0" and tables[99]["subject"] == "table 99"
    assert tables[-1]["subject"] == "1,400 more" and tables[-1]["points"] == 1_400 * 2
    assert report["risk"]["total"] == 1_500 * 2 and report["risk"]["score"] == 100
    sarif = cli("audit", large, "--sarif").json()
    results = sarif["runs"][0]["results"]
    assert sum(r["ruleId"] == "WSX205" for r in results) == 101


def test_the_text_view_shows_the_first_1000_rows_and_counts_the_rest(cli, large):
    res = cli("audit", large, env={"COLUMNS": "200"})
    assert res.code == 0, res
    for text in (
        "... 500 more tables not shown",
        "... 200 more globals not shown",
        "... 100 more exports not shown",
        "1,400 more",
    ):
        assert text in res.stdout, text
    assert "table 999 " in res.stdout and "table 1000 " not in res.stdout
    assert res.stdout.count("[WSX205]") == 101  # the risk addends


def test_the_mcp_server_keeps_the_full_length_of_a_list_cut_already():
    """The server cuts to 100 what the report cut to 1,000: the length said stays the
    module's, not 1,000."""
    from wasmsbx.mcp.service import LIST_KEPT, bounded

    report = {
        "exports": [{"name": f"f{i}"} for i in range(1_000)],
        "truncated": {"lists": {"exports": 50_000}, "kept": 1_000, "reason": "r"},
    }
    out = bounded(report, 16 * 1024)
    assert len(out["exports"]) == LIST_KEPT
    assert out["truncated"]["lists"] == {"exports": 50_000}
    assert len(json.dumps(out)) <= 16 * 1024


# ---------------------------------------------------------------------------- module_size


@pytest.fixture
def over_size(tmp_path):
    """A 2 KiB module (one function f(i32) -> i32) and a policy whose module_size is
    1 KiB."""
    body = b"\x00\x20\x00\x0b"  # local.get 0
    module = HEADER + section(1, vec([b"\x60\x01\x7f\x01\x7f"])) + section(3, vec([b"\x00"]))
    module += section(7, vec([name("f") + b"\x00\x00"]))
    module += section(10, vec([leb(len(body)) + body]))
    module += section(0, name("padding") + b"\0" * 2048)
    path = tmp_path / "big.wasm"
    path.write_bytes(module)
    policy = tmp_path / "small.toml"
    policy.write_text('[limits]\nmodule_size = "1KiB"\n')
    return path, policy


@pytest.mark.parametrize(
    "command",
    [
        ["run", "{m}", "f", "1"],
        ["compile", "{m}", "--cache-dir", "{d}/cache"],
        ["compile", "{m}", "-o", "{d}/big.cwasm"],
        ["bench", "{m}", "f", "1", "-n", "1", "--warmup", "0", "--phase", "call"],
        ["audit", "{m}"],
        ["audit", "{m}", "--json"],
    ],
    ids=["run", "compile", "compile-o", "bench", "audit", "audit-json"],
)
def test_module_size_binds_every_command_that_reads_a_module(cli, tmp_path, over_size, command):
    """Only run refused it (117); compile, compile -o, bench and audit took a 3.2 MiB
    module under a 1 MiB limit."""
    module, policy = over_size
    argv = [a.format(m=module, d=tmp_path) for a in command]
    res = cli(*argv, "--policy", policy)
    assert res.code == 117, res
    assert "big.wasm is 2 KiB, larger than limits.module_size 1 KiB" in res.stderr
    assert not (tmp_path / "big.cwasm").exists()
    ok = tmp_path / "ok.toml"
    ok.write_text('[limits]\nmodule_size = "1MiB"\n')
    assert cli(*argv, "--policy", ok).code == 0


pytestmark = pytest.mark.inprocess


def test_a_wasi_like_module_name_reaches_the_terminal_escaped_and_as_text(cli, tmp_path):
    """Red team 125: a function import from a module named "wasi..." is explained as
    "not a WASI preview1 function (<module>)", and that text went into the table raw:
    ESC sequences reached the terminal, and "wasi[/]" (rich markup) was exit 100."""
    for module, shown in (("wasi\x1b]52;c;eA==\x1b\\\x1b[8A", "wasi"), ("wasi[/]", "wasi[/]")):
        imports = section(2, vec([name(module) + name("f") + b"\x00\x00"]))
        path = tmp_path / "m.wasm"
        path.write_bytes(HEADER + section(1, vec([FUNC_TYPE])) + imports)
        result = cli("audit", path, env={"COLUMNS": "400"})
        assert result.code == 0, result
        assert "\x1b" not in result.stdout + result.stderr
        assert f"not a WASI preview1 function ({shown}" in result.stdout


def test_a_long_signature_is_cut_in_each_row(cli, tmp_path):
    """Red team 125: one type of 40,000 parameters exported 1,000 times made 200 MB of
    --json (every row the whole signature). Each side is cut after 32 types."""
    params = 40_000
    functype = b"\x60" + leb(params) + b"\x7f" * params + b"\x00"
    exports = section(7, vec([name(f"e{i}") + b"\x00\x00" for i in range(1000)]))
    body = section(3, vec([b"\x00"])) + exports + section(10, vec([b"\x02\x00\x0b"]))
    path = tmp_path / "sig.wasm"
    path.write_bytes(HEADER + section(1, vec([functype])) + body)
    result = cli("audit", path, "--json")
    assert len(result.stdout) < 2_000_000, len(result.stdout)
    signature = json.loads(result.stdout)["exports"][0]["signature"]
    assert signature.startswith("(i32, i32") and "... (40,000 in all)" in signature


def test_names_quoted_in_findings_are_escaped_and_cut(cli, tmp_path):
    """Red team 126: import names of 200,000 characters were quoted whole in findings
    (over 900 lines), and a field's escapes were kept raw next to an escaped module."""
    field = "fd_\x1b[31m" + "x" * 200_000
    imports = [name("wasi_snapshot_preview1") + name(field) + b"\x00\x00", name("env" * 70_000)]
    imports[1] += name("g") + b"\x00\x00"
    path = tmp_path / "m.wasm"
    path.write_bytes(HEADER + section(1, vec([FUNC_TYPE])) + section(2, vec(imports)))
    result = cli("audit", path, "--json")
    assert result.code == 0, result
    for finding in json.loads(result.stdout)["findings"]:
        assert "\x1b" not in finding["message"] and len(finding["message"]) < 2000, finding
