"""``wasmsbx compile``: into the cache, standalone artifacts (and refusing bad ones), and
source builds (.wat, C with clang, Rust when its wasm target is installed)."""

from __future__ import annotations

import shutil

import pytest

from wasmsbx.native import artifact as aot
from wasmsbx.native import build, trust

from .conftest import EXAMPLES

ADD = EXAMPLES / "add.wat"
MVP_WAT = '(module (func (export "one") (result i32) (i32.const 1)))'
CACHE_ALL = "[runtime]\ncache_min_size = 0\n"
LIB_C = """
int add(int a, int b) { return a + b; }
int mul(int a, int b) { return a * b; }
"""
HELLO_C = """
#include <stdio.h>
int main(int argc, char **argv) { printf("hello %s\\n", argc > 1 ? argv[1] : "nobody"); return 7; }
"""


def need_clang() -> None:
    if shutil.which("clang") is None:
        reason = "clang is not installed (scripts/install-toolchain installs it)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)


# ---------------------------------------------------------------------------- into the cache


def test_compile_into_the_cache_then_run_hits(cli, isolated):
    (isolated / "sandbox.toml").write_text(CACHE_ALL)
    result = cli("compile", ADD)
    assert result.code == 0, result
    assert "stored in the cache" in result.stdout
    run = cli("run", ADD, "add", "2", "3", "--stats")
    assert run.stdout == "5\n" and "cache             hit" in run.stderr
    again = cli("compile", ADD)
    assert "already cached" in again.stdout


def test_compile_json(cli, tmp_path):
    data = cli("compile", ADD, "--json").json()
    assert data["source"] == str(ADD) and data["build"]["kind"] == "wat"
    (target,) = data["targets"]
    assert target["backend"] == "wasmtime" and target["state"] == "stored"
    assert target["cache_dir"] == str(tmp_path / "cache") and target["size"] > 0
    assert "compile" in target["timings"]
    assert cli("compile", ADD, "--json", "--force").json()["targets"][0]["state"] == "stored"


def test_compile_notes_the_threshold(cli):
    result = cli("compile", ADD)
    assert "note: `wasmsbx run` compiles modules under 16 KiB directly" in result.stderr


def test_compile_all_backends(cli, isolated):
    from .conftest import BACKENDS

    (isolated / "mvp.wat").write_text(MVP_WAT)
    data = cli("compile", "mvp.wat", "--all-backends", "--json").json()
    assert len(data["targets"]) == len(BACKENDS)
    assert all(t["state"] == "stored" for t in data["targets"])
    listed = cli("cache", "list", "--json").json()["entries"]
    assert len(listed) == len(BACKENDS)


def test_compile_all_backends_skips_those_that_cannot(cli, isolated):
    """add.wat returns two values; a compiler without multi-value is skipped, loudly."""
    from .conftest import BACKENDS

    result = cli("compile", ADD, "--all-backends", "--json")
    assert result.code == 0
    states = {t["backend"]: t["state"] for t in result.json()["targets"]}
    assert len(states) == len(BACKENDS) and "stored" in states.values()
    for label, state in states.items():
        assert state in ("stored", "failed"), label
        assert (state == "failed") == (f"skipped {label}" in result.stderr)


def test_compile_backend_option(cli, backend, isolated):
    (isolated / "mvp.wat").write_text(MVP_WAT)
    data = cli("compile", "mvp.wat", "--backend", backend, "--json").json()
    assert data["targets"][0]["backend"] == backend


def test_compile_option_conflicts(cli):
    result = cli("compile", ADD, "--backend", "wasmtime", "--all-backends")
    assert result.code == 2 and "exclude each other" in result.stderr
    result = cli("compile", ADD, "--all-backends", "-o", "x.cwasm")
    assert result.code == 2 and "one backend" in result.stderr


def test_compile_bad_inputs(cli, isolated):
    missing = cli("compile", "nope.wat")
    assert missing.code == 105 and "no such file" in missing.stderr
    (isolated / "notes.txt").write_text("hi")
    unknown = cli("compile", "notes.txt")
    assert unknown.code == 2 and "unknown kind of source" in unknown.stderr
    export = cli("compile", ADD, "--export", "add")
    assert export.code == 2 and "C and Rust" in export.stderr
    (isolated / "bad.wat").write_text('(module (func (export "f") (result i32) i32.add))')
    invalid = cli("compile", "bad.wat")
    assert invalid.code == 102 and "error: invalid module" in invalid.stderr


# ---------------------------------------------------------------------------- artifacts


def make_artifact(cli, isolated, *extra) -> object:
    """add.wat compiled with -o (``--interruptible``: these tests run it in this process,
    where nothing could end code without epoch checks; test_epochless.py has -o's
    default)."""
    path = isolated / "add.cwasm"
    result = cli("compile", ADD, "-o", path, "--interruptible", *extra)
    assert result.code == 0, result
    assert "wrote" in result.stdout and path.exists()
    return path


def test_an_artifact_written_where_it_cannot_be_run_again_is_not_offered_to_run(cli, isolated):
    """`compile -o /dev/null` said "run it with `wasmsbx run /dev/null ...`" (red team 121)."""
    result = cli("compile", ADD, "-o", "/dev/null", "--interruptible")
    assert result.code == 0 and "wrote /dev/null" in result.stdout, result
    assert "run it with" not in result.stdout
    assert "run it with `wasmsbx run" in cli("compile", ADD, "-o", isolated / "a.cwasm").stdout


def test_artifact_runs_alone(cli, isolated):
    path = make_artifact(cli, isolated)
    assert path.read_bytes()[: len(aot.MAGIC)] == aot.MAGIC
    header = aot.read_header(path.read_bytes())
    assert header["kind"] == "artifact" and header["module"]["name"] == "add.wat"
    assert header["fingerprint"]["backend"] == "wasmtime"
    result = cli("run", path, "add", "40", "2", "--stats")
    assert (result.code, result.stdout) == (0, "42\n")
    assert "precompiled artifact loaded" in result.stderr
    assert not (isolated.parent / "cache" / "cache.db").exists(), "-o must not touch the cache"


def test_artifact_with_module(cli, isolated):
    path = make_artifact(cli, isolated)
    result = cli("run", "--artifact", path, ADD, "add", "1", "2", "--stats")
    assert (result.code, result.stdout) == (0, "3\n")
    assert "precompiled artifact loaded" in result.stderr and "warning" not in result.stderr


def tamper(path) -> None:
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))


def repack(path, **fingerprint_changes) -> None:
    """Rewrite the artifact's header, tagged with the user's key: authentic, but built
    for something else."""
    art = aot.authenticate_artifact(path.read_bytes(), str(path))
    fp = {**art.fingerprint, **fingerprint_changes}
    module = art.header["module"]
    key = trust.tag_key("artifact")
    path.write_bytes(
        aot.pack(
            "artifact", fp, art.payload, module["sha256"], module["size"], module["name"], key=key
        )
    )


def test_tampered_artifact_is_refused(cli, isolated):
    path = make_artifact(cli, isolated)
    tamper(path)
    result = cli("run", path, "add", "1", "2")
    assert result.code == 102 and result.stdout == ""
    assert "refused precompiled artifact: it is not authenticated" in result.stderr
    assert "hint:" in result.stderr


def test_truncated_artifact_is_refused(cli, isolated):
    path = make_artifact(cli, isolated)
    path.write_bytes(path.read_bytes()[:-1000])
    result = cli("run", path, "add", "1", "2", "--json")
    assert result.code == 102 and "not authenticated" in result.json()["error"]["message"]


def test_foreign_artifact_is_refused(cli, isolated):
    path = make_artifact(cli, isolated)
    repack(path, version="0.0.1", target="plan9-mips")
    result = cli("run", path, "add", "1", "2")
    assert result.code == 102
    assert "precompiled for wasmtime 0.0.1" in result.stderr
    assert 'version: built for "0.0.1"' in result.stderr and "plan9-mips" in result.stderr


def test_artifact_for_another_backend_is_refused(cli, isolated):
    path = make_artifact(cli, isolated)
    repack(path, backend="wasmfoo")
    result = cli("run", path, "add", "1", "2")
    assert result.code == 102 and "built for wasmfoo, not installed" in result.stderr


def test_artifact_built_without_fuel_is_refused_for_a_metered_run(cli, isolated):
    path = make_artifact(cli, isolated)
    result = cli("run", path, "add", "1", "2", "--fuel", "1000")
    assert result.code == 102 and "fuel: built for false, this is true" in result.stderr


def test_refused_artifact_falls_back_to_the_module(cli, isolated):
    path = make_artifact(cli, isolated)
    tamper(path)
    result = cli("run", "--artifact", path, ADD, "add", "1", "2", "--stats")
    assert (result.code, result.stdout) == (0, "3\n")
    assert "warning:" in result.stderr and "not authenticated" in result.stderr
    assert "using add.wat instead" in result.stderr
    assert "precompiled artifact loaded" not in result.stderr


def test_foreign_artifact_falls_back_to_the_module(cli, isolated):
    path = make_artifact(cli, isolated)
    repack(path, optimize="none")
    result = cli("run", "--artifact", path, ADD, "add", "1", "2")
    assert (result.code, result.stdout) == (0, "3\n")
    assert "warning:" in result.stderr and "optimize" in result.stderr


def test_artifact_of_another_module_falls_back(cli, isolated):
    path = make_artifact(cli, isolated)
    other = isolated / "other.wat"
    other.write_text('(module (func (export "add") (param i32 i32) (result i32) (i32.const 9)))')
    result = cli("run", "--artifact", path, other, "add", "1", "2")
    assert (result.code, result.stdout) == (0, "9\n")
    assert "precompiled from a different module than other.wat" in result.stderr


def test_missing_artifact_falls_back(cli, isolated):
    result = cli("run", "--artifact", "nope.cwasm", ADD, "add", "1", "2")
    assert (result.code, result.stdout) == (0, "3\n")
    assert "warning: nope.cwasm: no such file" in result.stderr


def test_artifact_is_not_a_module_elsewhere(cli, isolated):
    path = make_artifact(cli, isolated)
    result = cli("cache", "clear", "--module", path)
    assert result.code == 102 and "precompiled native code" in result.stderr


# ---------------------------------------------------------------------------- sources


def test_wat_to_wasm(cli, isolated):
    result = cli("compile", ADD, "-o", "add.wasm")
    assert result.code == 0 and "wrote add.wasm" in result.stdout
    data = (isolated / "add.wasm").read_bytes()
    assert data[:4] == b"\0asm"
    assert cli("run", "add.wasm", "add", "2", "2").stdout == "4\n"
    assert not (isolated.parent / "cache" / "cache.db").exists(), "-o x.wasm writes the module only"


def test_build_source_api(tmp_path):
    wasm = build.build_source(ADD, out=tmp_path / "out.wasm")
    assert wasm[:4] == b"\0asm" and (tmp_path / "out.wasm").read_bytes() == wasm
    assert build.source_kind("x.c") == "c" and build.source_kind("x.rs") == "rust"
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "Cargo.toml").write_text("[package]\n")
    assert build.source_kind(tmp_path / "proj") == "cargo"


@pytest.mark.needs_clang
def test_c_library_with_exports(cli, isolated):
    need_clang()
    (isolated / "lib.c").write_text(LIB_C)
    result = cli("compile", "lib.c", "--export", "add", "--export", "mul")
    assert result.code == 0, result
    assert "wrote lib.wasm from lib.c" in result.stdout
    assert cli("run", "lib.wasm", "mul", "6", "7").stdout == "42\n"
    assert cli("run", "lib.wasm", "add", "6", "7").stdout == "13\n"


@pytest.mark.needs_clang
def test_a_builds_default_output_replaces_only_a_module(cli, isolated):
    """``compile lib.c`` writes ./lib.wasm as cc writes a.out: over an earlier build,
    never over a file of another kind (notes kept as lib.wasm were lost, round 155)."""
    need_clang()
    (isolated / "lib.c").write_text(LIB_C)
    (isolated / "lib.wasm").write_text("my notes\n")
    refused = cli("compile", "lib.c", "--export", "add")
    assert refused.code == 105, refused
    assert "lib.wasm: exists and is not a WebAssembly module; not replaced" in refused.stderr
    assert "-o FILE.wasm" in refused.stderr
    assert (isolated / "lib.wasm").read_text() == "my notes\n"
    (isolated / "lib.wasm").unlink()
    assert cli("compile", "lib.c", "--export", "add").code == 0
    again = cli("compile", "lib.c", "--export", "mul")  # an earlier build: replaced
    assert again.code == 0, again
    assert cli("run", "lib.wasm", "mul", "6", "7").stdout == "42\n"
    assert cli("compile", "lib.c", "--export", "add", "-o", "lib.wasm").code == 0  # named
    # red team 156: a link there (its target became the module) and data behind "\0asm"
    (isolated / "lib.wasm").unlink()
    (isolated / "notes.txt").write_text("my notes\n")
    (isolated / "lib.wasm").symlink_to("notes.txt")
    refused = cli("compile", "lib.c", "--export", "add")
    assert refused.code == 105 and "is a symbolic link; not replaced" in refused.stderr
    assert (isolated / "notes.txt").read_text() == "my notes\n"
    (isolated / "lib.wasm").unlink()
    (isolated / "lib.wasm").write_bytes(b"\0asm precious")
    assert cli("compile", "lib.c", "--export", "add").code == 105
    assert (isolated / "lib.wasm").read_bytes() == b"\0asm precious"


@pytest.mark.needs_clang
def test_c_command(cli, isolated):
    need_clang()
    (isolated / "hello.c").write_text(HELLO_C)
    result = cli("compile", "hello.c", "-o", "hi.wasm")
    assert result.code == 0, result
    run = cli("run", "hi.wasm", "--", "world")
    assert (run.code, run.stdout) == (7, "hello world\n")


@pytest.mark.needs_clang
def test_c_compile_error_is_shown_as_printed(cli, isolated):
    need_clang()
    (isolated / "bad.c").write_text("int add(int a, int b) { return a + ; }\n")
    result = cli("compile", "bad.c", "--export", "add")
    assert result.code == 102
    assert "bad.c:1:36: error: expected expression" in result.stderr
    assert "error: clang failed to compile bad.c" in result.stderr
    data = cli("compile", "bad.c", "--export", "add", "--json").json()
    assert "expected expression" in data["error"]["output"]


def test_missing_clang_names_what_to_install(cli, isolated, tmp_path):
    (isolated / "lib.c").write_text(LIB_C)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    result = cli("compile", "lib.c", "--export", "add", env={"PATH": str(empty)})
    assert result.code == 104
    assert "clang is not installed" in result.stderr
    assert "apt-get install clang lld wasi-libc libclang-rt-dev-wasm32" in result.stderr


RUST_LIB = '#[no_mangle]\npub extern "C" fn add(a: i32, b: i32) -> i32 { a + b }\n'
RUST_MAIN = """
fn main() {
    let who = std::env::args().nth(1).unwrap_or_else(|| "nobody".to_string());
    println!("hello {}", who);
    std::process::exit(7);
}
"""


@pytest.mark.needs_rust
def test_rust_library(cli, isolated, rust_env):
    (isolated / "lib.rs").write_text(RUST_LIB)
    result = cli("compile", "lib.rs", "--export", "add")
    assert result.code == 0, result
    assert "wrote lib.wasm from lib.rs" in result.stdout
    assert cli("run", "lib.wasm", "add", "2", "3").stdout == "5\n"


@pytest.mark.needs_rust
def test_rust_command(cli, isolated, rust_env):
    (isolated / "hello.rs").write_text(RUST_MAIN)
    data = cli("compile", "hello.rs", "-o", "hi.wasm", "--json").json()
    assert data["build"]["kind"] == "rust"
    assert data["build"]["command"][0] == rust_env["RUSTC"]
    run = cli("run", "hi.wasm", "--", "world")
    assert (run.code, run.stdout) == (7, "hello world\n")


@pytest.mark.needs_rust
def test_cargo_project(cli, isolated, rust_env):
    project = isolated / "mul"
    (project / "src").mkdir(parents=True)
    (project / "Cargo.toml").write_text(
        '[package]\nname = "mul"\nversion = "0.1.0"\nedition = "2021"\n\n'
        '[lib]\ncrate-type = ["cdylib"]\n'
    )
    (project / "src" / "lib.rs").write_text(
        '#[no_mangle]\npub extern "C" fn mul(a: i32, b: i32) -> i32 { a * b }\n'
    )
    result = cli("compile", "mul", "-o", "mul.wasm")
    assert result.code == 0, result
    assert cli("run", "mul.wasm", "mul", "6", "7").stdout == "42\n"
    result = cli("compile", "mul/Cargo.toml")  # the manifest names the project too
    assert result.code == 0, result


@pytest.mark.needs_rust
def test_rust_compile_error_is_shown_as_printed(cli, isolated, rust_env):
    (isolated / "bad.rs").write_text(
        '#[no_mangle]\npub extern "C" fn add(a: i32) -> i32 { a + "one" }\n'
    )
    result = cli("compile", "bad.rs", "--export", "add")
    assert result.code == 102, result
    assert "error[E0277]" in result.stderr and "bad.rs:2:" in result.stderr
    assert "error: rustc failed to compile bad.rs" in result.stderr
    assert not (isolated / "bad.wasm").exists()


def test_rust_without_a_wasm_target_names_what_to_install(cli, isolated, tmp_path):
    """A rustc whose sysroot lacks both names of the target (as rustup's default
    toolchain has until `rustup target add`): a stand-in that answers the one question
    wasmsbx asks, with a library directory that does not exist."""
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "rustc"
    fake.write_text(f'#!/bin/sh\necho "{tmp_path}/sysroot/lib/rustlib/$4/lib"\n')
    fake.chmod(0o755)
    (isolated / "lib.rs").write_text(RUST_LIB)
    result = cli("compile", "lib.rs", env={"PATH": str(tools), "RUSTC": ""})
    assert result.code == 104, result
    assert "has no WebAssembly target installed" in result.stderr
    assert "wasm32-wasip1 and wasm32-wasi" in result.stderr
    assert "rustup target add wasm32-wasip1" in result.stderr
    assert "libstd-rust-dev-wasm32" in result.stderr


def test_missing_rust_names_what_to_install(cli, isolated, tmp_path):
    (isolated / "main.rs").write_text("fn main() {}\n")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    result = cli("compile", "main.rs", env={"PATH": str(empty), "RUSTC": "", "CARGO": ""})
    assert result.code == 104 and "rustc is not installed" in result.stderr
    assert "rustup" in result.stderr


def test_spinner_draws_only_for_long_work(monkeypatch):
    import io
    import time

    from rich.console import Console

    from wasmsbx.cli import output, progress

    screen = io.StringIO()
    monkeypatch.setattr(
        output, "console", lambda stderr=False: Console(file=screen, force_terminal=True)
    )
    monkeypatch.setattr(progress.Spinner, "DELAY", 0.05)
    with progress.Spinner("quick work"):
        pass
    time.sleep(0.1)
    assert screen.getvalue() == ""
    with progress.Spinner("slow work"):
        time.sleep(0.4)
    assert "slow work" in screen.getvalue() and "0:00:00" in screen.getvalue()


def test_no_spinner_without_a_terminal():
    from wasmsbx.cli.progress import progress_factory

    assert progress_factory() is None  # pytest captures stderr


# CLI calls run in this process (see the cli fixture): none here needs the real entry point.
pytestmark = pytest.mark.inprocess


def test_a_link_made_at_the_default_output_during_the_build_is_not_written_through(
    isolated, monkeypatch
):
    """Red team 157: the default NAME.wasm was checked before clang ran and written
    after it; a link made in between was followed, and its target became the module."""
    from wasmsbx import errors as errors_mod
    from wasmsbx import policy as policy_mod
    from wasmsbx.cli.commands import compile as compile_cmd
    from wasmsbx.native import build

    (isolated / "lib.c").write_text(LIB_C)
    (isolated / "notes.txt").write_text("my notes\n")

    def racing_build(path, exports):
        (isolated / "lib.wasm").symlink_to("notes.txt")  # (while "clang" runs)
        return b"\0asm\1\0\0\0", [], ""

    monkeypatch.setattr(build, "_build_c", racing_build)
    with pytest.raises(errors_mod.InputError, match="is a symbolic link; not replaced"):
        compile_cmd._build("lib.c", ["add"], None, policy_mod.defaults())
    assert (isolated / "notes.txt").read_text() == "my notes\n"
