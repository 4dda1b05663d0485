"""Red team round 52: what a module, a file name or a working folder can make the command
line print or wait for.

Names from an untrusted module (exports, the name section's function names) and file
names reached the terminal raw: an OSC sequence set its title, a CR/LF forged an
``error:`` line, a name of a megabyte made a megabyte of hint.
"""

from __future__ import annotations

import re

import pytest

# Control characters: what must not reach the terminal from an error line (the newline
# that ends each line aside).
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")

# An OSC title, a CR/LF and a forged error line, as the wat escapes of a name.
FORGED = r"\1b]0;title\07\0d\0aerror: fake"


def _clean(text: str) -> bool:
    return not CONTROL.search(text) and "\nerror: fake" not in text


@pytest.mark.parametrize("func", [[], ["nosuch"]], ids=["command", "unknown-function"])
def test_export_names_are_escaped_in_the_hint(cli, isolated, func):
    (isolated / "esc.wat").write_text(
        f'(module (func (export "{FORGED}") (result i32) i32.const 7))'
    )
    result = cli("run", "esc.wat", *func)
    assert result.code == 2, result
    assert _clean(result.stderr), result
    assert "\\x1b]0;title\\x07\\r\\nerror: fake" in result.stderr


def test_a_long_export_name_is_cut_in_the_hint(cli, isolated):
    (isolated / "long.wat").write_text(f'(module (func (export "{"x" * 100_000}")))')
    result = cli("run", "long.wat", "nosuch")
    assert result.code == 2, result
    assert len(result.stderr) < 2000 and "(100,000 characters)" in result.stderr


def test_name_section_names_are_escaped_in_the_backtrace(cli, isolated, backend):
    (isolated / "t.wat").write_text(f'(module (func $"{FORGED}" (export "t") unreachable))')
    result = cli("run", "t.wat", "t", "--backend", backend)
    assert result.code == 103, result
    assert _clean(result.stderr), result


def test_a_file_name_is_escaped_in_errors_and_the_cache_listing(cli, isolated):
    name = "\x1b]0;pwn\x07\x1b[31mred.wat"
    (isolated / name).write_text('(module (func (export "f")))')
    result = cli("run", name)
    assert result.code == 2 and _clean(result.stderr), result
    assert "\\x1b]0;pwn\\x07\\x1b[31mred.wat" in result.stderr
    built = cli("compile", name)
    assert built.code == 0 and _clean(built.stdout + built.stderr), built
    listing = cli("cache", "list")
    assert listing.code == 0 and _clean(listing.stdout), listing
    assert "\\x1b]0;pwn\\x07\\x1b[31mred.wat" in listing.stdout


def test_error_lines_are_escaped_where_they_are_printed(capsys):
    """The last line of defence: whatever a message quotes, one inert line."""
    from wasmsbx.cli import output

    output.error("a\x1b[2Jb\r\nerror: c", "d\x07e")
    output.warning("f\x9bg")
    err = capsys.readouterr().err
    assert err == "error: a\\x1b[2Jb\\r\\nerror: c\nhint: d\\x07e\nwarning: f\\x9bg\n"
