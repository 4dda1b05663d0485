"""Names a guest chooses never read as a limit or the host running out.

wasmtime's errors quote the module's or component's own names (an import, an export, a
function in a backtrace). Words in those names were classified as if wasmtime had said
them: an import named "out of memory" whose type did not match made a link error a host
exhaustion (exit 118), a duplicate export of that name made an invalid module "out of
host memory", and a component import's export named "memory-limit-minimum" made a link
error "instance limit reached" (exit 116).
"""

from __future__ import annotations

import pytest

import wasmsbx
from wasmsbx import errors
from wasmsbx.backends.wasmtime import backend as wasmtime_backend
from wasmsbx.components import runtime as component_runtime

from .component_guests import wat_component
from .conftest import BACKENDS

NAMES = [
    "out of memory",
    "Cannot allocate memory (os error 12)",
    "mmap failed to reserve",
    "GC heap out of memory",
    "memory minimum size exceeds memory limits",
    "table minimum size exceeds table limits",
    "instance count too high: instance limit",
    "a` out of memory `b",  # (a backtick ends wasmtime's quote early)
]


@pytest.mark.any_compiler
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("given", ["function", "global"])
def test_an_import_named_like_a_limit_is_a_link_error(backend, name, given):
    quoted = name.replace('"', '\\"')
    wat = f'(module (import "env" "{quoted}" (func (param i32))) (func (export "f")))'
    value = (lambda: None) if given == "function" else wasmsbx.Global("i32", 1)
    box = wasmsbx.Sandbox(wat.encode(), imports={"env": {name: value}}, backend=backend)
    with box, pytest.raises(errors.WasmsbxError) as caught:
        box.call("f")  # (instantiated at the first call)
    assert type(caught.value) is errors.LinkError, caught.value
    assert caught.value.exit_code == 102
    assert "out of host memory" not in str(caught.value)


@pytest.mark.any_compiler
@pytest.mark.parametrize("name", ["out of memory", "mmap failed", "a` out of memory `b"])
def test_an_invalid_module_whose_names_say_out_of_memory_is_invalid(backend, name):
    import wasmtime  # (its text format parser does not validate: duplicates pass)

    wasm = bytes(wasmtime.wat2wasm(f'(module (func (export "{name}")) (func (export "{name}")))'))
    with pytest.raises(errors.WasmsbxError) as caught:
        wasmsbx.Sandbox(wasm, backend=backend)
    assert type(caught.value) is errors.ModuleError, caught.value
    assert str(caught.value).startswith("invalid module"), caught.value


COMPONENT = """(component
  (import "wasi:cli/environment@0.2.0" (instance $i (export "{name}" (func))))
  (core module $m (func (export "f")))
  (core instance $mi (instantiate $m))
  (func (export "f") (canon lift (core func $mi "f")))
)
"""


@pytest.mark.parametrize(
    "name", ["memory-limit-minimum", "instance-limit", "table-limit", "out-of-memory"]
)
def test_a_component_import_named_like_a_limit_is_a_link_error(cli, tmp_path, name):
    source = tmp_path / "guest.wat"
    source.write_text(COMPONENT.format(name=name))
    guest = wat_component(str(source), tmp_path)
    result = cli("run", "--invoke", "f", guest)
    assert result.code == 102, result.stderr
    assert "cannot instantiate component: component imports instance" in result.stderr
    assert "limit reached" not in result.stderr


def test_a_frame_named_like_a_trap_is_not_the_cause():
    """A call that failed without a trap (a host call refused, say) prints the guest's
    frames: a function named "wasm trap: all fuel consumed" was read as the trap."""
    text = (
        "error while executing at wasm backtrace:\n"
        "    0:   0x44 - m!wasm trap: all fuel consumed by WebAssembly\n"
        "\nCaused by:\n    0: failed to call `get-random-bytes`\n    1: refused\n"
    )
    assert component_runtime._trap_cause(text) is None
    real = text.replace("1: refused", "1: wasm trap: wasm `unreachable` instruction executed")
    assert component_runtime._trap_cause(real) == "wasm `unreachable` instruction executed"


def test_unquoted_removes_what_wasmtime_quotes():
    text = "incompatible import type for `env::out of memory`: expected `(func)`"
    assert wasmtime_backend.unquoted(text) == "incompatible import type for ``: expected ``"


START_WASI = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $s (drop (call $w (i32.const 1) (i32.const 0x7ffffff0) (i32.const 100) (i32.const 0))))
  (start $s)
  (func (export "_start")))
"""


def test_a_start_functions_refused_wasi_call_says_why(cli, tmp_path):
    """It said "cannot instantiate module: error while executing at wasm backtrace:"
    and nothing more (the cause came after the backtrace)."""
    guest = tmp_path / "start.wat"
    guest.write_text(START_WASI)
    result = cli("run", guest, "--backend", "wasmtime")
    assert result.code == 103, result.stderr
    line = result.stderr.splitlines()[0] if result.stderr else ""
    assert line.startswith("error: start function trapped: a WASI call refused its arguments: ")
    assert "backtrace" not in line and "Pointer out of bounds" in line, result.stderr


def test_a_report_in_an_encoding_short_of_its_names_is_escaped(tmp_path):
    """An export named "héllo→" under PYTHONIOENCODING=ascii: `audit` died half-way
    through its report with "internal error: UnicodeEncodeError" (exit 100)."""
    import os
    import subprocess
    import sys

    guest = tmp_path / "u.wat"
    guest.write_text('(module (func (export "h\u00e9llo\u2192")))', encoding="utf-8")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    for argv in (["audit", guest], ["run", guest, "h\u00e9llo\u2192"]):
        proc = subprocess.run(
            [sys.executable, "-m", "wasmsbx", *map(str, argv)],
            capture_output=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert b"internal error" not in proc.stderr
    audit = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "audit", str(guest)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert b"h\\xe9llo\\u2192" in audit.stdout


# ---------------------------------------------------------------- red team round 72

HOSTCALL = "fuel allocated for hostcalls has been exhausted"
NAMED_COMPONENT = f"""(component
  (core module $m (@name "{HOSTCALL}")
    (func $f (@name "{HOSTCALL}") (export "f") (loop br 0))
    (func $r (export "r") call $r))
  (core instance $i (instantiate $m))
  (func (export "spin") (canon lift (core func $i "f")))
  (func (export "rec") (canon lift (core func $i "r")))
)
"""


@pytest.mark.parametrize(
    "argv, code",
    [
        (["spin", "--fuel", "100000"], 111),
        (["spin", "--timeout", "1s"], 112),
        (["rec"], 113),
    ],
    ids=["fuel", "timeout", "stack"],
)
def test_a_component_named_like_wasmtimes_copy_bound_keeps_its_limits(cli, tmp_path, argv, code):
    """A core module or function named "fuel allocated for hostcalls has been exhausted"
    made every failure of the component a plain trap (exit 103): fuel, timeout, stack."""
    source = tmp_path / "named.wat"
    source.write_text(NAMED_COMPONENT)
    guest = wat_component(str(source), tmp_path)
    result = cli("run", guest, *argv)
    assert result.code == code, result.stderr
    assert "more than wasmtime copies" not in result.stderr


def test_a_function_named_like_a_wasmtime_py_error_keeps_its_wasi_trap():
    """A function named `wasmtime_valkind_t` whose WASI call was refused was reported as
    returning a GC reference (a module error, its instance kept), not a trap. (wasmtime:
    wasmer's WASI answers a bad pointer with an errno, no trap.)"""
    backend = "wasmtime"
    wat = b"""(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func $wasmtime_valkind_t (export "f")
        (drop (call $w (i32.const 1) (i32.const 0x7fffffff) (i32.const 5) (i32.const 0)))))"""
    with wasmsbx.Sandbox(wat, backend=backend) as box, pytest.raises(errors.WasmsbxError) as caught:
        box.call("f")
    assert type(caught.value) is errors.TrapError, caught.value
    assert "GC reference" not in str(caught.value)


def test_a_frame_named_like_a_trap_does_not_change_the_trap(cli, tmp_path):
    """A function named "x\\nwasm trap: all fuel consumed" that ran `unreachable` was
    reported "f trapped: all fuel consumed"."""
    import wasmtime

    guest = tmp_path / "named.wasm"
    named = '(module (func (@name "x\\nwasm trap: all fuel consumed") (export "f") unreachable))'
    guest.write_bytes(bytes(wasmtime.wat2wasm(named)))
    result = cli("run", guest, "f", "--json", "--backend", "wasmtime")
    assert result.code == 103, result.stderr
    error = result.json()["error"]
    assert "unreachable" in error["message"] and "fuel" not in error["message"]


@pytest.mark.any_compiler
def test_a_start_functions_refused_wasi_call_is_a_trap_as_in_a_call(backend):
    """The same refused WASI call is a trap (exit 103) from an export; from a start
    function it was a LinkError (exit 102, "cannot instantiate module: 0: In func ...").
    wasmer cannot make WASI calls from a start function at all (its WASI memory is set
    after instantiation): a module error there."""
    box = wasmsbx.Sandbox(START_WASI.encode(), backend=backend)
    with box, pytest.raises(errors.WasmsbxError) as caught:
        box.call("_start")
    if backend.startswith("wasmer"):
        assert caught.value.exit_code == 102, caught.value
        return
    assert type(caught.value) is errors.TrapError, caught.value
    assert caught.value.context.get("trap_code") == "wasi"
    assert str(caught.value).startswith("start function trapped: a WASI call refused")


def test_wasmers_panic_at_a_wasi_call_from_a_start_function_stays_off_stderr(cli, tmp_path):
    """wasmer-wasi 2.1 panics at any WASI call from a start function: its panic message
    and a Rust backtrace reached stderr before wasmsbx's error, which quoted the panic
    ("Memory should be set on `WasiEnv` first") without a hint."""
    wasmer = [b for b in BACKENDS if b.startswith("wasmer")]
    if not wasmer:
        pytest.skip("wasmer is not available here")
    guest = tmp_path / "start.wat"
    guest.write_text(START_WASI)
    for label in wasmer:
        result = cli("run", guest, "--backend", label)
        assert result.code == 102, result.stderr
        lines = result.stderr.splitlines()
        assert lines[0].startswith(
            "error: cannot instantiate module: its start function called WASI"
        ), result.stderr
        assert lines[1:] == [
            "hint: run it with --backend wasmtime, or call WASI from _start instead"
        ], result.stderr
        assert "panicked" not in result.stderr and "WasiEnv" not in result.stderr


def test_a_compile_worker_that_ran_out_says_so():
    """The compile worker's errors kept only module, link and backend kinds: the host
    running out (118) or a compile limit (117) came back as an invalid module (102)."""
    from wasmsbx.backends import compiling

    exhausted = errors.ResourceExhausted("out of host memory while compiling", hint="h")
    back = compiling._error(exhausted.to_dict())
    assert type(back) is errors.ResourceExhausted and back.exit_code == 118
    limit = errors.CompileLimitExceeded("compile timeout 1s reached")
    assert type(compiling._error(limit.to_dict())) is errors.CompileLimitExceeded


def test_no_diagnostic_line_is_longer_than_the_cap():
    """Escapes made a line twice the cap (a name of 1,990 control characters printed a
    7,978-character error line)."""
    from wasmsbx.cli import output

    for text in ("\x01" * 5000, "x" * 10_000, "é\x1b" * 3000):
        for label in ("error: ", "hint: ", "warning: "):
            assert len(label + output.line(text)) <= output.LINE_MAX


def test_a_name_cannot_write_the_cause_of_an_invalid_module():
    """wasmtime quotes the name after its own "Caused by:": the last one was the
    guest's, so "invalid module: ...: out of memory`b` already defined" read as the
    host's words (red team round 74)."""
    import json

    import wasmtime

    name = json.dumps("a`x\nCaused by:\nout of memory`b")
    wasm = bytes(wasmtime.wat2wasm(f"(module (func (export {name})) (func (export {name})))"))
    with pytest.raises(errors.ModuleError) as caught:
        wasmsbx.Sandbox(wasm, backend="wasmtime")
    assert "out of memory" not in str(caught.value)
    assert "duplicate export name" in str(caught.value)


def test_a_reference_export_on_singlepass_leaves_later_workers_sound():
    """CI 189 and 191: singlepass panicked compiling an export's helper module (a call
    with a funcref argument); the panic was caught, but a later panic in a worker forked
    from that process (a start function's WASI call) aborted it with SIGILL, a "worker
    died" TrapError instead of exit 102. The helper is not asked of singlepass now."""
    import subprocess
    import sys
    import textwrap

    if "wasmer:singlepass" not in BACKENDS or "wasmer:cranelift" not in BACKENDS:
        pytest.skip("needs wasmer's singlepass and cranelift")
    script = textwrap.dedent(
        f"""
        import wasmsbx
        from wasmsbx import errors
        refs = b'''(module (func $k) (elem declare func $k)
          (func (export "get") (result funcref) (ref.func $k))
          (func (export "put") (param funcref) (result i32) (ref.is_null (local.get 0))))'''
        box = wasmsbx.Sandbox(refs, backend="wasmer:singlepass")
        try:
            box.call("get")
        except errors.BackendUnavailable:
            pass
        start = wasmsbx.Sandbox({START_WASI.encode()!r}, backend="wasmer:cranelift")
        try:
            start.call("_start")
        except errors.WasmsbxError as exc:
            print(type(exc).__name__, exc.exit_code)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "102", done.stdout
