"""WebAssembly text and the audit's validation are bounded like a compile (red team
125): a large text converts in a compile worker within limits.compile_timeout (the
converter resolves labels in time quadratic in their nesting, and took 80 times the
text's size in memory, in this process, outside every limit), and a large module's
validation in `audit` runs in one too."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_audit_bounds import HEADER, leb, name, section, vec

LABELS = 40_000  # nested labelled blocks and as many branches: about 760 KB, 3 s of CPU


def nested_labels(depth: int) -> str:
    return (
        "(module (func\nblock $a\n"
        + "block $b\n" * depth
        + "br $a\n" * depth
        + "end\n" * (depth + 1)
        + "))\n"
    )


def test_slow_text_is_stopped_at_the_compile_timeout(cli, tmp_path):
    (tmp_path / "sandbox.toml").write_text('[limits]\ncompile_timeout = "100ms"\n')
    (tmp_path / "slow.wat").write_text(nested_labels(LABELS))
    for command in (["run", "slow.wat"], ["audit", "slow.wat"]):
        result = cli(*command, "--policy", "sandbox.toml", cwd=tmp_path)
        assert result.code == 117, result
        assert "slow.wat: converting it from WebAssembly text took longer than" in result.stderr


def test_large_text_converts_in_a_worker_and_errors_name_the_file(cli, tmp_path):
    funcs = "".join(f'(func (export "f{i}") (result i32) i32.const {i})\n' for i in range(4000))
    (tmp_path / "big.wat").write_text(f"(module\n{funcs})\n")
    assert len((tmp_path / "big.wat").read_bytes()) > 64 * 1024
    ran = cli("run", "big.wat", "f3999", cwd=tmp_path)
    assert ran.code == 0 and ran.stdout.strip() == "3999", ran
    (tmp_path / "bad.wat").write_text(f"(module\n{funcs}(func i32.bogus))\n")
    bad = cli("run", "bad.wat", "f1", cwd=tmp_path)
    assert bad.code == 102 and "bad.wat: invalid WebAssembly text: " in bad.stderr, bad
    assert "<text>" not in bad.stderr and "(bad.wat:" in bad.stderr


def test_a_large_module_is_validated_within_the_compile_timeout(cli, tmp_path):
    """A br_table of many targets into a block of 1,000 results: validation does about
    N x 1,000 checks (a 4 MB module took 27.5 s of the audit's own CPU)."""
    results, targets = 1000, 1_000_000
    types = section(1, vec([b"\x60\x00\x00", b"\x60\x00" + leb(results) + b"\x7f" * results]))
    body = b"\x00\x02" + leb(1) + b"\x41\x00" * results + b"\x41\x00\x0e" + leb(targets)
    body += b"\x00" * targets + b"\x00\x0b" + b"\x1a" * results + b"\x0b"
    code = section(10, vec([leb(len(body)) + body]))
    exports = section(7, vec([name("f") + b"\x00\x00"]))
    (tmp_path / "m.wasm").write_bytes(HEADER + types + section(3, vec([b"\x00"])) + exports + code)
    # (1 s: reading its 1,000,000 targets takes about 0.15 s, and is bounded too since
    # red team 154; validating them would take tens of seconds)
    (tmp_path / "sandbox.toml").write_text('[limits]\ncompile_timeout = "1s"\n')
    result = cli("audit", "m.wasm", "--policy", "sandbox.toml", cwd=tmp_path)
    assert result.code == 117, result
    assert "validating m.wasm did not finish within limits.compile_timeout" in result.stderr


@pytest.mark.parametrize("size", [10, 100_000])
def test_valid_text_small_and_large_gives_the_same_module(size):
    from wasmsbx.wasm.source import wat_to_wasm

    text = f'(module (func (export "f") {"nop " * size}))'.encode()
    import wasmtime

    assert wat_to_wasm(text, "m.wat", 10.0) == bytes(wasmtime.wat2wasm(text.decode()))


def test_text_with_a_byte_order_mark_is_read(cli, tmp_path):
    """Red team 125's LOW: a .wat saved with a UTF-8 byte-order mark was refused as not
    starting with "(" (the binary reader skipped the mark; the text path did not)."""
    (tmp_path / "bom.wat").write_bytes(
        b'\xef\xbb\xbf(module (func (export "f") (result i32) i32.const 7))'
    )
    result = cli("run", "bom.wat", "f", cwd=tmp_path)
    assert result.code == 0 and result.stdout.strip() == "7", result


def test_a_huge_custom_section_name_is_cut_in_the_audit(cli, tmp_path):
    name = "c" * 1_600_000
    custom = section(0, leb(len(name)) + name.encode())
    (tmp_path / "m.wasm").write_bytes(HEADER + custom)
    result = cli("audit", "m.wasm", cwd=tmp_path)
    assert result.code == 0, result
    assert "c" * 1000 not in result.stdout and len(result.stdout) < 20_000, len(result.stdout)


def _slow_text(tmp_path, component: bool = False) -> str:
    text = nested_labels(LABELS)
    if component:  # (the same core module, in a component)
        text = "(component (core module" + text[len("(module") :] + ")\n"
    (tmp_path / "slow.wat").write_text(text)
    (tmp_path / "sandbox.toml").write_text('[limits]\ncompile_timeout = "100ms"\n')
    return "slow.wat"


@pytest.mark.parametrize(
    "command",
    [
        ["compile"],
        ["compile", "-o", "out.cwasm"],
        ["bench", "-n", "1"],
        ["backends"],
        ["run", "--timeout", "1m"],
    ],
    ids=lambda c: " ".join(c),
)
def test_every_command_converts_text_within_the_compile_timeout(cli, tmp_path, command):
    """Red team 126: compile, compile -o, bench and backends converted text with no
    bound but a default minute (19 s, 15 s, 14 s, 37 s under a 1 s compile timeout)."""
    name = _slow_text(tmp_path)
    argv = [command[0], name, *command[1:]]
    result = cli(*argv, "--policy", "sandbox.toml", cwd=tmp_path)
    assert result.code == 117, result
    assert "converting it from WebAssembly text took longer than" in result.stderr


def test_a_components_text_converts_within_its_limits(cli, tmp_path):
    """Red team 126: a component given as text took the default minute, past a 1 s
    compile timeout and a 1 s --timeout."""
    name = _slow_text(tmp_path, component=True)
    slow = cli("run", name, "--policy", "sandbox.toml", cwd=tmp_path)
    assert slow.code == 117 and "converting it from WebAssembly text" in slow.stderr, slow
    (tmp_path / "sandbox.toml").write_text('[limits]\ncompile_timeout = "1m"\n')
    late = cli("run", name, "--timeout", "200ms", "--policy", "sandbox.toml", cwd=tmp_path)
    assert late.code == 112 and "(converting its text)" in late.stderr, late


def test_the_runs_timeout_passing_during_conversion_is_a_timeout(cli, tmp_path):
    """Red team 126: it was exit 117 with the compile timeout's hint."""
    name = _slow_text(tmp_path)
    (tmp_path / "sandbox.toml").write_text('[limits]\ncompile_timeout = "1m"\n')
    result = cli("run", name, "--timeout", "200ms", "--policy", "sandbox.toml", cwd=tmp_path)
    assert result.code == 112, result
    assert "still compiling slow.wat (converting its text)" in result.stderr


def test_a_conversion_out_of_memory_says_so(cli, tmp_path):
    funcs = "(func)\n" * 400_000  # (2.8 MB: hundreds of MB to convert)
    (tmp_path / "big.wat").write_text(f"(module\n{funcs})\n")
    result = cli("audit", "big.wat", cwd=tmp_path, env={"WASMSBX_COMPILE_MEMORY": "64MiB"})
    assert result.code == 117, result
    assert "big.wat: converting it from WebAssembly text ran out of memory" in result.stderr


def test_only_the_place_of_a_worker_error_is_renamed(cli, tmp_path):
    """Red team 126: every "(<text>:" became the file's name, one inside a quoted
    identifier of the module too."""
    funcs = "(func)\n" * 20_000
    (tmp_path / "bad.wat").write_text(f"(module\n{funcs}(func $(<text>: zz bogus))\n")
    result = cli("run", "bad.wat", cwd=tmp_path)
    assert result.code == 102, result
    assert result.stderr.count("bad.wat") == 2 and "(bad.wat:" in result.stderr, result


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(module)", True),
        ("  ;; c\n (module)", True),
        ("(; a (; b ;) c ;)(module)", True),
        ("(; a (; b ;) c (module)", False),
        (";; only", False),
        ("hello", False),
        ("(;;)(x)", True),
        ("(;(;(;", False),
        ("(;" + "x" * 50_000_000 + ";)(module)", True),  # (27 s at 120 MB before: linear now)
        ("(;" * 500_000 + ";)" * 500_000 + "(m", True),  # (no "(;" left: not looked for again)
        ("(;) ;)(m", True),
    ],
    ids=range(11),
)
def test_text_is_recognised_after_comments_in_linear_time(text, expected):
    from wasmsbx.wasm.source import _looks_like_wat

    assert _looks_like_wat(text) is expected


def test_an_unknown_function_of_a_fifo_module_does_not_wait_for_a_writer(tmp_path):
    """Red team 127: the hint's second look at the module opened the FIFO again and
    waited for a writer for ever."""
    import os
    import subprocess
    import sys
    import threading

    import wasmtime

    fifo = tmp_path / "ff"
    os.mkfifo(fifo)
    wasm = bytes(wasmtime.wat2wasm('(module (func (export "add")))'))

    def write() -> None:
        with open(fifo, "wb") as fh:
            fh.write(wasm)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    proc = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "run", str(fifo), "foo"],
        capture_output=True,
        timeout=120,
    )
    # (the point: it ends; 105 if the writer thread came after the read's grace, on a
    # loaded machine, and the module was never read)
    assert proc.returncode in (2, 105), proc
    if proc.returncode == 105:
        assert b"nothing was written to" in proc.stderr, proc
    else:
        assert b"has no export named 'foo'" in proc.stderr, proc


@pytest.mark.parametrize(
    "head", [b"\xef\xbb\xbf", b"(;" + b"x" * 8000 + b";)\n"], ids=["bom", "comment"]
)
def test_a_components_text_after_a_mark_or_a_long_comment_is_a_component(tmp_path, head):
    from wasmsbx.runner.sandbox import _is_component_file

    path = tmp_path / "c.wat"
    path.write_bytes(head + b"(component)")
    assert _is_component_file(str(path))
    path.write_bytes(head + b"(module)")
    assert not _is_component_file(str(path))


NOT_UTF8 = "\udcff"  # the byte 0xff as a command line hands it to Python


@pytest.mark.parametrize(
    "module",
    ["examples/wasi/hello.wasm", "examples/components/cat.wasm"],
    ids=["module", "component"],
)
@pytest.mark.parametrize(
    "flags",
    [
        ["--", f"a{NOT_UTF8}"],
        ["-e", f"A=b{NOT_UTF8}"],
        ["-e", f"A{NOT_UTF8}=b"],  # (was 101, "a NUL, newline or other control character")
        ["-e", f"A{NOT_UTF8}"],
        ["--dir-ro", f"examples::/d{NOT_UTF8}"],
    ],
    ids=["argv", "env", "env-name", "env-inherit", "guest-path"],
)
def test_bytes_that_are_not_utf8_are_a_usage_error_on_wasmtime(cli, module, flags):
    # (red team 130: wasmtime-py's encoding raised inside the run, "internal error:
    # UnicodeEncodeError", exit 100, for a module and a component alike)
    root = Path(__file__).resolve().parent.parent
    result = cli("run", root / module, "--backend", "wasmtime", *flags, cwd=root)
    assert result.code == 2, result
    assert "is not UTF-8 text" in result.stderr and "\\xff" in result.stderr, result
    assert "internal" not in result.stderr, result


@pytest.mark.parametrize("flags", [["--", f"a{NOT_UTF8}"], ["-e", f"A=b{NOT_UTF8}"], []])
def test_every_backend_refuses_them_alike(cli, tmp_path, backend, flags):
    # (red team 131: wasmer made a module file whose name is not UTF-8, its argv[0], a
    # module error, exit 102; wasmtime said exit 2)
    import shutil

    root = Path(__file__).resolve().parent.parent
    name = f"t{NOT_UTF8}.wasm"
    shutil.copy(root / "examples" / "wasi" / "hello.wasm", tmp_path / name)
    result = cli("run", name, "--backend", backend, *flags, cwd=tmp_path)
    assert result.code == 2, result
    assert "is not UTF-8 text" in result.stderr and "\\xff" in result.stderr, result


def test_the_library_refuses_them_too():
    import wasmsbx

    root = Path(__file__).resolve().parent.parent
    box = wasmsbx.Sandbox(root / "examples" / "wasi" / "hello.wasm", backend="wasmtime")
    with pytest.raises(wasmsbx.errors.UsageError, match=r"argv\[1\] is not UTF-8 text \(\\ud800\)"):
        box.run_command(["\ud800"], capture=True)
    assert b"argv[1] = fine" in box.run_command(["fine"], capture=True).stdout
