"""The audit on C programs compiled to wasm32-wasi with clang at test time."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from wasmsbx import policy as policy_mod
from wasmsbx.audit.report import audit_file, suggest_policy

pytestmark = pytest.mark.needs_clang

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the Python 3.9 leg
    import tomli as tomllib

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "read") == 0) {
        FILE *f = fopen(argv[2], "r");
        if (!f) { perror(argv[2]); return 1; }
        char buf[256];
        size_t n = fread(buf, 1, sizeof buf, f);
        fwrite(buf, 1, n, stdout);
        fclose(f);
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "alloc") == 0) {
        size_t n = strtoul(argv[2], 0, 10);
        char *p = malloc(n);
        if (!p) { puts("out of memory"); return 2; }
        memset(p, 1, n);
        printf("%zu %d\n", n, p[n - 1]);  /* use the memory, or -O2 drops malloc */
        return 0;
    }
    struct timespec ts;
    unsigned char r[8];
    clock_gettime(CLOCK_REALTIME, &ts);
    getentropy(r, sizeof r);
    printf("%d\n", ts.tv_sec > 0);
    return 0;
}
"""

HOST_IMPORT = r"""
__attribute__((import_module("env"), import_name("host_log"))) void host_log(int);
int main(void) { host_log(42); return 0; }
"""


def compile_c(tmp_path, source: str, *flags: str):
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed (scripts/install-toolchain)")
    src = tmp_path / "prog.c"
    src.write_text(source)
    out = tmp_path / "prog.wasm"
    cmd = [clang, "--target=wasm32-wasi", "-O2", *flags, "-o", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def program(tmp_path):
    """Debug info (-g) and a 4 MiB memory maximum."""
    return compile_c(tmp_path, PROGRAM, "-g", "-Wl,--max-memory=4194304")


def test_c_program_findings(program):
    report = audit_file(program, policy_mod.defaults())
    rules = sorted({f.rule for f in report.findings})
    assert rules == ["WSX003", "WSX209", "WSX210"]  # files, DWARF, clock+random
    assert "WSX201" not in rules  # the memory has a maximum
    assert report.facts.memories[0].limits.max == 64
    assert any("clang" in v for v in report.facts.producers.get("processed-by", []))
    used = {i.name for i in report.imports}
    assert {"path_open", "clock_time_get", "random_get", "fd_write"} <= used
    assert report.risk.score == 0


def test_c_program_report_on_the_cli(cli, program):
    result = cli("audit", program)
    assert result.code == 0
    assert "clang" in result.stdout and "debug info: yes" in result.stdout
    assert "WSX209" in result.stdout and "4 MiB" in result.stdout


def test_c_suggestion_lets_it_run_and_tighter_fails(cli, isolated, program):
    (isolated / "data").mkdir()
    (isolated / "data" / "in.txt").write_text("from the host\n")
    (isolated / "audited.toml").write_text('[filesystem]\nread_only = ["data"]\n')
    res = cli("audit", program, "--policy", "audited.toml", "--suggest-policy", "-o", "s.toml")
    assert res.code == 0, res
    suggested = tomllib.loads((isolated / "s.toml").read_text())
    assert suggested["limits"]["memory"] == "4MiB"  # the declared maximum
    assert suggested["filesystem"]["read_only"] == [f"{isolated / 'data'}:data"]

    def run(*args):
        return cli("run", program, "--policy", "s.toml", "--", *args)

    assert (run("read", "data/in.txt").code, run("read", "data/in.txt").stdout) == (
        0,
        "from the host\n",
    )
    assert run("alloc", "2000000").stdout == "2000000 1\n"
    tighter = (isolated / "s.toml").read_text().replace('"4MiB"', '"1MiB"')
    tighter = tighter.replace(f'"{isolated / "data"}:data",', "")
    (isolated / "s.toml").write_text(tighter)
    oom = run("alloc", "2000000")
    assert (oom.code, oom.stdout) == (2, "out of memory\n")
    denied = run("read", "data/in.txt")
    assert denied.code == 1 and "Capabilities insufficient" in denied.stderr


def test_c_host_import_is_flagged_and_refused(cli, tmp_path):
    wasm = compile_c(tmp_path, HOST_IMPORT, "-Wl,--strip-all")
    report = audit_file(wasm, policy_mod.defaults())
    (finding,) = [f for f in report.findings if f.rule == "WSX001"]
    assert "host_log" in finding.message
    assert cli("audit", wasm, "--fail-on", "high").code == 121
    assert cli("run", wasm).code == 102
    text = suggest_policy(report).to_toml()
    assert "[filesystem]" in text  # still a complete, loadable policy
