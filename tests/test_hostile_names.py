"""Red team 148: what the library is given as a function's name and a command's
arguments, and what a "did you mean" costs whatever a module exports."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

import wasmsbx
from wasmsbx import errors

from .audit_helpers import leb as _leb
from .audit_helpers import section as _section

ROOT = Path(__file__).resolve().parent.parent
ADD = ROOT / "examples" / "add.wat"
HELLO = ROOT / "examples" / "wasi" / "hello.wasm"
CALC = ROOT / "examples" / "components" / "calc.wasm"


def many_exports(count: int, width: int) -> bytes:
    """A module of one function, () -> (), exported ``count`` times under names of
    ``width`` characters that differ only at their end."""
    names = b"".join(
        _leb(width) + (b"f" * (width - 8) + b"%08d" % i) + b"\x00\x00" for i in range(count)
    )
    return (
        b"\x00asm\x01\x00\x00\x00"
        + _section(1, b"\x01\x60\x00\x00")
        + _section(3, b"\x01\x00")
        + _section(7, _leb(count) + names)
        + _section(10, b"\x01\x02\x00\x0b")
    )


def test_a_did_you_mean_compares_a_bounded_number_of_names(monkeypatch):
    # (100,000 exported names of 100 characters: 85 s of difflib, outside every limit)
    compared: list = []
    real = difflib.get_close_matches

    def counted(word, possibilities, *args, **kwargs):
        compared.append((len(word), len(possibilities), max(map(len, possibilities or [""]))))
        return real(word, possibilities, *args, **kwargs)

    monkeypatch.setattr(difflib, "get_close_matches", counted)
    box = wasmsbx.Sandbox(many_exports(20_000, 100))
    with pytest.raises(errors.UsageError, match="has no export named"):
        box.call("f" * 99 + "x")
    ((word, names, longest),) = compared
    assert word <= errors.CLOSEST_LENGTH and longest <= errors.CLOSEST_LENGTH
    assert names <= errors.CLOSEST_NAMES


def test_a_typo_is_still_told():
    box = wasmsbx.Sandbox(ADD)
    with pytest.raises(errors.UsageError) as caught:
        box.call("ad", 1, 2)
    assert "did you mean 'add'" in caught.value.hint
    component = wasmsbx.Sandbox(CALC)
    with pytest.raises(errors.UsageError) as caught:
        component.call("ad", 1, 2)
    assert "did you mean" in caught.value.hint


@pytest.mark.parametrize("module", [ADD, CALC])
@pytest.mark.parametrize("name", [5, None, [1], b"add", {"a": 1}])
def test_a_function_named_by_anything_but_a_string_is_a_usage_error(module, name):
    box = wasmsbx.Sandbox(module)
    with pytest.raises(errors.UsageError, match="named by a string"):
        box.call(name, 1, 2)


@pytest.mark.parametrize("argv", [[b"x"], [5], "abc", [None]])
def test_a_commands_arguments_are_a_list_of_strings(argv):
    box = wasmsbx.Sandbox(HELLO)
    with pytest.raises(errors.UsageError, match="argv is a list of strings"):
        box.run_command(argv=argv, capture=True)
    assert b"argv[1] = x" in box.run_command(argv=["x"], capture=True).stdout


# ---------------------------------------------------------------------------- reads bounded


def _globals_module(count: int) -> bytes:
    body = b"\x7f\x00\x41\x00\x0b" * count  # (mut i32) = i32.const 0
    return b"\x00asm\x01\x00\x00\x00" + _section(6, _leb(count) + body)


def test_reading_a_module_ends_at_the_runs_deadline():
    # (red team 148: 1,000,000 exports read for 12 s before the compile began, past
    # --timeout 1s; the deadline had passed long before)
    import time

    with pytest.raises(errors.TimeoutExceeded, match="reading its sections"):
        wasmsbx.Sandbox(_globals_module(100_000), deadline=time.monotonic() - 1)


def test_reading_a_module_ends_within_the_compile_timeout(tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text('[limits]\ncompile_timeout = "1ms"\n')
    module = tmp_path / "g.wasm"
    module.write_bytes(_globals_module(1_000_000))  # (read for a second or more)
    with pytest.raises(errors.CompileLimitExceeded, match="reading its sections"):
        wasmsbx.Sandbox(str(module), policy=wasmsbx.load_policy(policy))


def test_element_indexes_are_skipped_as_decoding_would():
    import random

    from wasmsbx.wasm import facts
    from wasmsbx.wasm.reader import _Reader

    rng = random.Random(148)
    for _ in range(200):
        numbers = [
            rng.choice([0, 1, 127, 128, 2**20, 2**32 - 1]) for _ in range(rng.randrange(3000))
        ]
        data = b"".join(map(_leb, numbers)) + b"\x05"
        count = rng.randrange(len(numbers) + 1)
        decoded = _Reader(data, 0, len(data), "t")
        for _ in range(count):
            decoded.uleb()
        skipped = _Reader(data, 0, len(data), "t")
        facts.skip_ulebs(skipped, count)
        assert skipped.pos == decoded.pos
    with pytest.raises(facts.FactsError, match="too long"):
        facts.skip_ulebs(_Reader(b"\x80" * 5 + b"\x01", 0, 6, "t"), 1)
    with pytest.raises(facts.FactsError, match="truncated"):
        facts.skip_ulebs(_Reader(b"\x80", 0, 1, "t"), 1)


# ---------------------------------------------------------------------------- module_size


@pytest.mark.parametrize("through", ["stdin", "fifo"])
def test_module_size_stops_the_read_not_after_it(tmp_path, through):
    # (red team 148: a 200 MB module under module_size = "1MiB" was read whole, 406 MB
    # of memory, before exit 117): past the limit the read stops, so a writer that has
    # sent more than the limit and holds its end open does not hold the run
    import os
    import subprocess
    import sys
    import threading

    (tmp_path / "small.toml").write_text('[limits]\nmodule_size = "1MiB"\n')
    payload = b"\x00asm\x01\x00\x00\x00" + b"\x00" * (2 << 20)
    if through == "fifo":
        os.mkfifo(tmp_path / "m.wasm")
        module, stdin = "m.wasm", subprocess.DEVNULL
    else:
        module, stdin = "-", subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", "wasmsbx", "run", module, "f", "--policy", "small.toml"],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    held: list = []

    def write() -> None:
        try:
            if through == "fifo":
                held.append(open(tmp_path / "m.wasm", "wb", buffering=0))  # noqa: SIM115
                held[0].write(payload)
            else:
                proc.stdin.write(payload)
                proc.stdin.flush()
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        code = proc.wait(timeout=120)  # (the writer never closes: a whole read never ends)
    finally:
        proc.kill()
        for fh in held:
            fh.close()
    assert code == 117, proc.stderr.read()
    assert b"limits.module_size" in proc.stderr.read()


def _customs(count: int) -> bytes:
    return b"\x00asm\x01\x00\x00\x00" + b"\x00\x01\x00" * count  # (empty names)


def _producers(count: int) -> bytes:
    values = b"\x00\x00" * count  # (empty name, empty version)
    body = b"\x09producers" + _leb(1) + b"\x01x" + _leb(count) + values
    return b"\x00asm\x01\x00\x00\x00" + _section(0, body)


def _params(count: int) -> bytes:
    return b"\x00asm\x01\x00\x00\x00" + _section(
        1, b"\x01\x60" + _leb(count) + b"\x7f" * count + b"\x00"
    )


def _const_expr(count: int) -> bytes:
    expr = b"\x41\x00" + b"\x41\x00\x6a" * count + b"\x0b"
    return b"\x00asm\x01\x00\x00\x00" + _section(6, _leb(1) + b"\x7f\x00" + expr)


def _locals(count: int) -> bytes:
    body = _leb(count) + b"\x01\x7f" * count + b"\x0b"
    return (
        b"\x00asm\x01\x00\x00\x00"
        + _section(1, b"\x01\x60\x00\x00")
        + _section(3, b"\x01\x00")
        + _section(10, b"\x01" + _leb(len(body)) + body)
    )


def _nested_fields(types: int, fields: int) -> bytes:
    struct = b"\x5f" + _leb(fields) + b"\x7f\x00" * fields  # (i32, immutable)
    return b"\x00asm\x01\x00\x00\x00" + _section(1, _leb(types) + struct * types)


def _const_exprs(count: int, each: int) -> bytes:
    expr = b"\x41\x00" + b"\x41\x00\x6a" * each + b"\x0b"
    return b"\x00asm\x01\x00\x00\x00" + _section(6, _leb(count) + (b"\x7f\x00" + expr) * count)


@pytest.mark.parametrize(
    "module",
    [
        _customs(10_000),
        _producers(10_000),
        _params(10_000),
        _const_expr(100_000),
        _nested_fields(3, 4_000),
        _const_exprs(10, 5_000),
    ],
    ids=[
        "custom-sections",
        "producers",
        "params",
        "const-expr",
        "nested-short-vectors",
        "many-short-scans",
    ],
)
def test_every_long_read_looks_at_the_clock(module):
    # (red team 149: 3,000,000 empty custom sections read for 19 s past --timeout 1s;
    # a producers section, a type's params, a long constant expression the same; red
    # team 154: a body's local declarations, vectors of under 4,096 items nested in
    # others, and constant expressions each under the scanner's own interval)
    import time

    with pytest.raises(errors.TimeoutExceeded, match="reading its sections"):
        wasmsbx.Sandbox(module, deadline=time.monotonic() - 1)


def test_a_bodys_local_declarations_are_read_on_the_clock():
    """What compile -o, audit and bench read of a body (its locals, for the compile's
    weight): 124 MB of local declarations ran 38 s past a 1 s bound (red team 154)."""
    import time

    from wasmsbx.wasm.facts import read_facts_weighed
    from wasmsbx.wasm.source import bounded_reads

    module = _locals(10_000)
    assert read_facts_weighed(module)[1] == 10_000 * 20_003  # (locals x body bytes: read)
    with pytest.raises(errors.TimeoutExceeded, match="reading its sections"):  # noqa: SIM117
        with bounded_reads(None, time.monotonic() - 1, "m.wasm"):  # (3.9: no parenthesized with)
            read_facts_weighed(module)


# ---------------------------------------------------------------------------- components


def _component(*sections: bytes) -> bytes:
    return b"\x00asm\x0d\x00\x01\x00" + b"".join(sections)


def _component_imports(count: int) -> bytes:
    # (each a func import named "a" of type 0: what the scan reads is the index spaces)
    return _component(_section(10, _leb(count) + b"\x00\x01a\x01\x00" * count))


def _component_sections(count: int) -> bytes:
    return _component(b"\x00\x01\x00" * count)  # empty custom sections


def _component_instance_args(count: int) -> bytes:
    # one core instance section: instantiate module 0 with ``count`` (name, instance) args
    args = b"\x01a\x12\x00" * count
    return _component(_section(2, b"\x01\x00\x00" + _leb(count) + args))


@pytest.mark.parametrize(
    "component",
    [_component_imports(10_000), _component_sections(10_000), _component_instance_args(10_000)],
    ids=["imports", "sections", "instance-args"],
)
def test_reading_a_component_ends_at_the_runs_deadline(component):
    # (a 20 MB component of 4,000,000 imports was scanned for 1.9 s whatever the
    # deadline or limits.compile_timeout; one of limits.module_size, about 12 s)
    import time

    with pytest.raises(errors.TimeoutExceeded, match="reading its sections"):
        wasmsbx.Sandbox(component, deadline=time.monotonic() - 1)


def test_reading_a_component_ends_within_the_compile_timeout(tmp_path, cli):
    policy = tmp_path / "p.toml"
    policy.write_text('[limits]\ncompile_timeout = "1ms"\n')
    component = tmp_path / "c.wasm"
    component.write_bytes(_component_imports(400_000))  # (scanned for 0.1 s or more)
    with pytest.raises(errors.CompileLimitExceeded, match="reading its sections"):
        wasmsbx.Sandbox(str(component), policy=wasmsbx.load_policy(policy))
    for command in (["run"], ["audit"]):
        result = cli(*command, "--policy", str(policy), str(component))
        assert result.code == 117, result
        assert "(reading its sections)" in result.stderr, result.stderr


def _component_of_modules(count: int, types: int, instantiated: bool = True) -> bytes:
    # ``count`` core modules of ``types`` func types each (fewer than the 4,096 items
    # between looks at the clock inside a module's read), each instantiated
    module = b"\x00asm\x01\x00\x00\x00" + _section(1, _leb(types) + b"\x60\x00\x00" * types)
    modules = _section(1, module) * count
    if not instantiated:
        return _component(modules)
    made = b"".join(b"\x00" + _leb(i) + b"\x00" for i in range(count))
    return _component(modules, _section(2, _leb(count) + made))


def test_a_component_of_many_small_modules_is_read_by_the_deadline():
    # (red team 153: modules of 4,095 types each, instantiated by the thousand, never
    # reached a look at the clock: 12 s past --timeout 1s)
    import time

    with pytest.raises(errors.TimeoutExceeded, match="reading its sections"):
        wasmsbx.Sandbox(_component_of_modules(50, 10), deadline=time.monotonic() - 1)


def test_an_audit_reads_a_components_core_modules_within_the_compile_timeout():
    # (red team 153: audit read every core module outside the clock, 32 s under 1 s)
    from wasmsbx.components import audit as component_audit
    from wasmsbx.components import binary

    component = _component_of_modules(3000, 300, instantiated=False)
    layout = binary.scan(component)
    policy = wasmsbx.policy.from_dict({"limits": {"compile_timeout": "1ms"}})
    with pytest.raises(errors.CompileLimitExceeded, match="reading its sections"):
        component_audit._core_modules(component, layout, policy, "c.wasm")


def test_a_br_tables_targets_are_read_on_the_clock(monkeypatch):
    """One br_table of 200,000 targets: the scanner looks at the clock while it reads
    them (a million took 0.15 s between two looks; limits.module_size holds a hundred
    times that)."""
    from wasmsbx.wasm import facts

    looks = []
    monkeypatch.setattr(facts._Parser, "late", lambda self: looks.append(1))
    targets = 200_000
    body = b"\x00\x02\x40\x41\x00\x0e" + _leb(targets) + b"\x00" * (targets + 1) + b"\x0b\x0b"
    module = (
        b"\x00asm\x01\x00\x00\x00"
        + _section(1, b"\x01\x60\x00\x00")
        + _section(3, b"\x01\x00")
        + _section(10, b"\x01" + _leb(len(body)) + body)
    )
    facts.read_facts_weighed(module)
    assert len(looks) >= targets // 65536, len(looks)


def test_an_overlong_leb_in_a_body_is_malformed_at_once():
    """An immediate of a million continuation bytes was skipped a byte at a time, with
    no look at the clock (a body of limits.module_size: seconds); LEB128 is at most 10
    bytes, as the rest of the reader has it."""
    from wasmsbx.wasm.facts import FactsError, read_facts_weighed

    body = b"\x00\x20" + b"\x80" * 1_000_000 + b"\x00\x1a\x0b"  # local.get, drop, end
    module = (
        b"\x00asm\x01\x00\x00\x00"
        + _section(1, b"\x01\x60\x00\x00")
        + _section(3, b"\x01\x00")
        + _section(10, b"\x01" + _leb(len(body)) + body)
    )
    with pytest.raises(FactsError, match="too long"):
        read_facts_weighed(module)


def test_a_component_of_more_core_modules_than_anyone_builds_is_refused():
    """Red team 156: 420,000 empty core modules inside 64 nested components were copied
    level by level for 2-3 s past a 1 s bound; at most 100,000, and on the clock."""
    from wasmsbx.components import binary

    inner = _component(b"\x01\x00" * 100_001)
    nested = _component(b"\x04" + _leb(len(inner)) + inner)
    with pytest.raises(binary.ComponentFormatError, match="more than 100,000 core modules"):
        binary.scan(nested)
    assert binary.scan(_component(b"\x01\x00" * 1000)).core_modules  # (a thousand: read)
