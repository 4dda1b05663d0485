"""The attack corpus of the trust-boundary and limits issues (#12, #13), through every MCP
tool that takes it, over the SDK's own client.

Each attack is sent through each tool that accepts its kind of input (call_export,
run_wasi_command and audit_module for modules; run_python and run_javascript for code);
each must come back as a clear result or a tool error of the form ``KIND: message``
(never an internal error or a traceback), nothing may reach the host, and the server must
answer the next call. Most run on the test process's shared server (mcp_helpers); those
that need server options start their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info < (3, 10):  # the mcp SDK needs 3.10+; wasmsbx[mcp] is not installed
    pytest.skip("the mcp SDK needs Python 3.10+", allow_module_level=True)

from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError

from .conftest import EXAMPLES, GUESTS
from .mcp_helpers import (
    SHARED_TRUST,
    b64,
    ensure_setup,
    ok,
    raw_stdio_server,
    run,
    server_env,
    shared_server,
    stdio_client,
    text_of,
)

pytestmark = pytest.mark.slow
XDIST_SPREAD = True  # one shared server per worker (mcp_helpers), not one per module group

KINDS = "usage|io|policy|module|unlinkable|trap|limit|resources|backend|interrupted"
# The SDK puts "Error executing tool NAME: " before the server's text.
CLEAR_ERROR = re.compile(rf"^(Error executing tool \w+: )?({KINDS}): \S")
ESCAPE_FILE = "/tmp/wasmsbx-mcp-attack-escape"


@pytest.fixture(scope="session", autouse=True)
def interpreters_installed():
    ensure_setup()


@pytest.fixture(scope="session")
def server():
    return shared_server()


def clear(result, where) -> str:
    """The text of a result; a tool error must be one clear ``KIND: message``."""
    text = text_of(result)
    if result.is_error:  # a result's stderr may hold the guest's own Python traceback
        assert "Traceback" not in text and "internal error" not in text, (where, text)
        assert CLEAR_ERROR.match(text), (where, text)
        assert "wasmsbx-mcp-" not in text and not re.search(r"[0-9a-f]{64}-", text), (
            where,
            text,
        )  # the module is named as the client knows it, never by the server's copy
    return text


def b64_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wat(text: str) -> str:
    return b64_bytes(text.encode())


def _through_every_module_tool(server, modules: list) -> list:
    """Each (label, base64, export) through call_export, run_wasi_command and audit_module;
    then the server must still answer."""

    async def scenario():
        out = []
        async with server.connect() as c:
            for label, module, function, limits in modules:
                base = {"module_base64": module}
                if limits:
                    base["limits"] = limits
                out.append(
                    (
                        label,
                        await c.call_tool("call_export", {**base, "function": function}),
                        await c.call_tool("run_wasi_command", base),
                        await c.call_tool("audit_module", {"module_base64": module}),
                    )
                )
            alive = ok(await c.call_tool("run_javascript", {"code": "6*7"}))
        return out, alive

    out, alive = run(scenario())
    assert alive["stdout"] == "42\n"
    return out


# ------------------------------------------------------------------ hostile modules

POLL_WAT = """
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 0))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))
"""
EXIT_WAT = (
    '(module (import "wasi_snapshot_preview1" "proc_exit" (func $e (param i32))) '
    '(memory (export "memory") 1) (func (export "_start") (call $e (i32.const {n}))))'
)


def _many_memories(count: int, pages: int) -> str:
    mems = " ".join(f"(memory $m{i} 1)" for i in range(count))
    grows = " ".join(f"(drop (memory.grow $m{i} (i32.const {pages})))" for i in range(count))
    size = " ".join(f"(memory.size $m{i})" for i in range(count))
    adds = " ".join("i32.add" for _ in range(count - 1))
    return f'(module {mems} (func (export "grow") (result i32) {grows} {size} {adds}))'


BIG_AT_START = "(module " + " ".join("(memory 600)" for _ in range(8)) + ' (func (export "f")))'


def test_the_guest_corpus_through_every_module_tool(server):
    """Every guest of the escape, resource-bomb and deadline suites, through call_export,
    run_wasi_command and audit_module: clear results or errors, and the limits hold."""
    guests = sorted(GUESTS.glob("*.wat")) + [GUESTS / "fsprobe.wasm"]
    guests += [EXAMPLES / "memory_hog.wat", EXAMPLES / "loop.wat", EXAMPLES / "wasi" / "hello.wasm"]
    short = {"timeout": "1s", "memory": "4MiB", "output": "64KiB"}
    modules = [(p.name, b64(p), "f", short) for p in guests]
    modules += [
        ("memgrow_loop.wat:run", b64(GUESTS / "memgrow_loop.wat"), "run", short),
        ("table_grow.wat:grow_table", b64(GUESTS / "table_grow.wat"), "grow_table", short),
        ("recurse.wat:recurse", b64(GUESTS / "recurse.wat"), "recurse", short),
        ("memory_hog.wat:hog", b64(EXAMPLES / "memory_hog.wat"), "hog", short),
        ("eight memories", wat(_many_memories(8, 100)), "grow", {"memory": "1MiB"}),
        ("big memories at start", wat(BIG_AT_START), "f", {"memory": "64MiB"}),
        ("poll_oneoff for an hour", wat(POLL_WAT), "_start", {"timeout": "1s"}),
        ("exit 256", wat(EXIT_WAT.format(n=256)), "_start", None),
        ("exit -1", wat(EXIT_WAT.format(n=-1)), "_start", None),
        ("exit 112", wat(EXIT_WAT.format(n=112)), "_start", None),
    ]
    out = _through_every_module_tool(server, modules)
    by_label = {}
    for label, call, command, audit in out:
        for tool, result in (("call", call), ("command", command), ("audit", audit)):
            clear(result, (label, tool))
        by_label[label] = (call, command, audit)

    grow = by_label["eight memories"][0]
    assert grow.is_error or grow.structured_content["results"][0]["value"] <= 16  # 1 MiB total
    big = by_label["big memories at start"][0]
    assert big.is_error and "memory" in text_of(big)
    table = by_label["table_grow.wat:grow_table"][0]
    assert table.is_error or table.structured_content["results"][0]["value"] <= 10000
    for label in ("recurse.wat:recurse",):
        assert by_label[label][0].is_error and "stack" in text_of(by_label[label][0])
    for label in ("spin_cmd.wat", "poll_oneoff for an hour"):
        command = by_label[label][1]
        assert command.is_error and "timeout" in text_of(command), (label, text_of(command))
    for _n, label in ((256, "exit 256"), (-1, "exit -1"), (112, "exit 112")):
        data = by_label[label][1].structured_content
        assert data is not None and data["exit_code"] != 0, (label, text_of(by_label[label][1]))
    for label in ("start_trap.wat", "trap.wat"):
        call = by_label[label][0]
        assert call.is_error
    imports = by_label["imports_env.wat"][0]
    assert imports.is_error and "does not provide" in text_of(imports)
    hog = by_label["memory_hog.wat:hog"][0]
    assert hog.is_error or hog.structured_content["results"][0]["value"] <= 64  # 4 MiB
    assert not os.path.exists(ESCAPE_FILE)


def test_what_a_command_printed_before_it_failed_reaches_the_client(server):
    """A trap's tool error carries the stdout and stderr written before it (round 155:
    a C assert's message, or a script's progress before its timeout, was lost)."""
    import wasmtime

    from .test_run import PRINTS_THEN_TRAPS

    module = b64_bytes(bytes(wasmtime.wat2wasm(PRINTS_THEN_TRAPS)))

    async def scenario():
        async with server.connect() as c:
            return await c.call_tool("run_wasi_command", {"module_base64": module})

    result = run(scenario())
    text = clear(result, "prints then traps")
    assert result.is_error and "trap: _start trapped" in text, text
    assert '\nstdout before the failure: "partial output\\n"' in text, text
    assert '\nstderr before the failure: "about to abort\\n"' in text, text


def test_fsprobe_escapes_and_hostile_argv_through_run_wasi_command(server):
    """Paths out of the sandbox, host environment, symlinks, and argv the host must not
    pass (NUL) or that is merely huge."""
    probe = b64(GUESTS / "fsprobe.wasm")
    escapes = [
        ["read", "/etc/passwd"],
        ["read", "../../../../../etc/passwd"],
        ["read", "/proc/self/environ"],
        ["ls", "/"],
        ["ls", ".."],
        ["stat", "/etc"],
        ["write", ESCAPE_FILE, "x"],
        ["mkdir", "/tmp/wasmsbx-mcp-attack-dir"],
        ["symlink", "/etc/passwd", "l"],
        ["link", "/etc/passwd", "l"],
        ["readlink", "/proc/self/exe"],
        ["rename", "/etc/passwd", "x"],
    ]

    async def scenario():
        async with server.connect() as c:
            fs = []
            for argv in escapes:
                fs.append(
                    await c.call_tool("run_wasi_command", {"module_base64": probe, "argv": argv})
                )
            env = await c.call_tool("run_wasi_command", {"module_base64": probe, "argv": ["env"]})
            nul = await c.call_tool(
                "run_wasi_command", {"module_base64": probe, "argv": ["read", "a\x00/etc/passwd"]}
            )
            many = await c.call_tool(
                "run_wasi_command", {"module_base64": probe, "argv": ["args"] + ["a"] * 50_000}
            )
            try:  # past the stdio cap: a JSON-RPC error, which the SDK raises
                result = await c.call_tool(
                    "run_wasi_command", {"module_base64": probe, "argv": ["args", "b" * 2_000_000]}
                )
                huge = clear(result, "huge") if result.is_error else "ran"
            except MCPError as exc:
                huge = str(exc)
            alive = ok(await c.call_tool("run_javascript", {"code": "'alive'"}))
            return fs, env, nul, many, huge, alive

    fs, env, nul, many, huge, alive = run(scenario())
    for argv, result in zip(escapes, fs):
        text = clear(result, argv)
        data = result.structured_content
        assert not result.is_error and data["exit_code"] != 0, (argv, text)
        assert "root:" not in data["stdout"] and "PATH=" not in data["stdout"], argv
    assert not os.path.exists(ESCAPE_FILE) and not os.path.exists("/tmp/wasmsbx-mcp-attack-dir")
    env_out = ok(env)["stdout"]
    for name in ("PATH", "HOME", "WASMSBX_CACHE_DIR", "WASMSBX_TRUST_DIR", "USER"):
        assert f"{name}=" not in env_out, env_out
    assert nul.is_error and "NUL" in clear(nul, "nul")
    clear(many, "many")
    assert "request too large" in huge, huge
    assert alive["stdout"] == "alive\n"


def test_native_code_is_never_taken_from_a_client(server, tmp_path):
    """An artifact signed with the server user's own key (so `wasmsbx run` would load
    it), a raw ELF, and a wasmsbx artifact header: refused by every module tool before
    anything is deserialized."""
    artifact = tmp_path / "add.cwasm"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wasmsbx",
            "compile",
            str(EXAMPLES / "add.wat"),
            "-o",
            str(artifact),
        ],
        capture_output=True,
        text=True,
        env={**server_env(), "WASMSBX_TRUST_DIR": str(SHARED_TRUST)},
    )
    assert proc.returncode == 0, proc.stderr
    signed = artifact.read_bytes()
    with open(sys.executable, "rb") as fh:
        elf = fh.read(64 * 1024)
    assert elf[:4] == b"\x7fELF"
    cases = [
        ("signed artifact", signed),
        ("ELF", elf),
        ("artifact magic", b"\x89WSBX\r\n\x1a" + b"\0" * 64),
    ]
    modules = [(label, b64_bytes(data), "add", None) for label, data in cases]
    out = _through_every_module_tool(server, modules)
    for label, *results in out:
        for result in results:
            text = clear(result, label)
            assert result.is_error and "is not WebAssembly" in text, (label, text)


def test_a_compile_bomb_is_bounded_and_the_server_lives_on(server):
    """A module of 20,000 functions (under the request limit): compiling it is bounded
    (by limits.compile_timeout, or the call's worker is stopped at timeout + grace)."""
    from .test_deadlines import many_functions

    bomb = many_functions(20_000, ops=4)
    assert len(bomb) < 1024 * 1024

    async def scenario():
        async with server.connect() as c:
            call = await c.call_tool(
                "call_export",
                {
                    "module_base64": b64_bytes(bomb),
                    "function": "f",
                    "args": [1],
                    "limits": {"timeout": "1s"},
                },
            )
            alive = ok(await c.call_tool("run_javascript", {"code": "'alive'"}))
            return call, alive

    call, alive = run(scenario())
    clear(call, "bomb")  # a result if it compiled in time, else a clear limit
    assert alive["stdout"] == "alive\n"


FUZZ = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(__import__("hypothesis").HealthCheck),
)


@FUZZ
@given(data=st.data())
def test_mutated_modules_through_every_module_tool(server, data):
    """The fuzz harness's mutated guests (bit flips, truncations, section splices)."""
    from .test_fuzz import first_export, mutated

    wasm = data.draw(mutated())
    module = b64_bytes(wasm)
    out = _through_every_module_tool(
        server, [("mutated", module, first_export(wasm), {"timeout": "1s", "memory": "16MiB"})]
    )
    for label, *results in out:
        for result in results:
            clear(result, (label, wasm[:64]))


# ------------------------------------------------------------------ hostile code

PYTHON_ATTACKS = [
    # (label, code, limits, expectation: "error:<needle>" | "exit" (non-zero exit) | "any")
    ("huge allocation", "b = bytearray(10**10)", None, "exit"),
    (
        "memory creep",
        "x = []\nwhile True: x.append(bytearray(1 << 20))",
        {"memory": "32MiB"},
        "any",
    ),
    (
        "deep recursion",
        "import sys\nsys.setrecursionlimit(10**7)\ndef f(n): return f(n + 1)\nf(0)",
        None,
        "any",
    ),
    ("stdout flood", "print('x' * (1 << 26))", {"output": "64KiB"}, "error:output"),
    (
        "stderr flood",
        "import sys\nsys.stderr.write('e' * (1 << 24))",
        {"output": "64KiB"},
        "error:output",
    ),
    ("print loop", "while True: print('y' * 1000)", {"output": "64KiB"}, "error:output"),
    ("sleep an hour", "import time\ntime.sleep(3600)", {"timeout": "1s"}, "any"),
    ("subprocess", "import subprocess\nsubprocess.run(['id'])", None, "exit"),
    ("os.system", "import os\nprint(os.system('id > " + ESCAPE_FILE + "'))", None, "any"),
    (
        "socket",
        "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)",
        None,
        "exit",
    ),
    ("ctypes", "import ctypes\nctypes.CDLL(None)", None, "exit"),
    ("host files", "print(open('/etc/passwd').read())", None, "exit"),
    ("proc", "print(open('/proc/self/environ').read())", None, "exit"),
    ("write host", f"open('{ESCAPE_FILE}', 'w').write('x')", None, "exit"),
    ("environment", "import os\nprint(sorted(os.environ))", None, "any"),
    ("walk", "import os\nprint([p for p, d, f in os.walk('/')][:50])", None, "any"),
    ("threads", "import threading\nthreading.Thread(target=print).start()", None, "exit"),
    ("exit 256", "import os\nos._exit(256)", None, "any"),
    ("exit -1", "import sys\nsys.exit(-1)", None, "exit"),
    ("nul in code", "print('a')\x00", None, "error:NUL"),
    ("compile bomb", "x = " + "(" * 100_000 + ")" * 100_000, None, "any"),
    ("big int", "print(len(str(10 ** (10 ** 8))))", {"timeout": "1s"}, "any"),
]
JS_ATTACKS = [
    ("string doubling", "let s = 'x'; while (true) s += s;", {"memory": "32MiB"}, "any"),
    ("array buffer", "new ArrayBuffer(2 ** 31)", None, "any"),
    ("recursion", "function f() { return f() + 1 } f()", None, "any"),
    ("stdout flood", "console.log('y'.repeat(1 << 24))", {"output": "64KiB"}, "error:output"),
    ("log loop", "for (;;) console.log('z'.repeat(1000))", {"output": "64KiB"}, "error:output"),
    ("import os", "import('os').then(m => console.log(Object.keys(m)))", None, "any"),
    ("host objects", "typeof require + typeof process + typeof Deno + typeof std", None, "any"),
    ("regex bomb", "/(a+)+$/.test('a'.repeat(40) + 'b')", {"timeout": "1s"}, "any"),
    ("nul in code", "'a'\x00", None, "any"),
]


def _check_code(label, result, expect):
    text = clear(result, label)
    if expect.startswith("error:"):
        assert result.is_error and expect[6:] in text, (label, text)
    elif expect == "exit":
        assert not result.is_error and result.structured_content["exit_code"] != 0, (label, text)
    if not result.is_error:
        out = result.structured_content["stdout"]
        assert "root:" not in out and "PATH" not in out and "WASMSBX" not in out, (label, out)
        assert "/root" not in out and "/home" not in out, (label, out)


def test_hostile_python_and_javascript(server):
    async def scenario():
        async with server.connect() as c:
            py, js = [], []
            for _label, code, limits, _ in PYTHON_ATTACKS:
                args = {"code": code, **({"limits": limits} if limits else {})}
                py.append(await c.call_tool("run_python", args))
            for _label, code, limits, _ in JS_ATTACKS:
                args = {"code": code, **({"limits": limits} if limits else {})}
                js.append(await c.call_tool("run_javascript", args))
            alive = ok(await c.call_tool("run_python", {"code": "print('alive')"}))
            return py, js, alive

    py, js, alive = run(scenario())
    for (label, _, _, expect), result in zip(PYTHON_ATTACKS, py):
        _check_code(("python", label), result, expect)
    for (label, _, _, expect), result in zip(JS_ATTACKS, js):
        _check_code(("javascript", label), result, expect)
    assert not os.path.exists(ESCAPE_FILE)
    assert alive["stdout"] == "alive\n"


def test_hostile_limits_are_refused_clearly(server):
    """A call's limits are attacker input too: odd values never loosen a limit or crash."""
    bad = [
        {"timeout": -1},
        {"timeout": "nan"},
        {"timeout": "inf"},
        {"timeout": 1e308},
        {"memory": "1e30"},
        {"memory": "-1MiB"},
        {"memory": "16EiB"},
        {"fuel": 2**64},
        {"fuel": -5},
        {"output": "0"},
        {"output": "1 GiB; rm -rf /"},
    ]

    async def scenario():
        async with server.connect() as c:
            out = [await c.call_tool("run_javascript", {"code": "1", "limits": lim}) for lim in bad]
            alive = ok(await c.call_tool("run_javascript", {"code": "'alive'"}))
            return out, alive

    out, alive = run(scenario())
    for limits, result in zip(bad, out):
        text = text_of(result)
        assert result.is_error, (limits, text)
        assert "Traceback" not in text and "internal error" not in text, (limits, text)
    assert alive["stdout"] == "alive\n"


def test_a_session_cannot_use_links_or_names_to_leave_its_scratch(server):
    """Symlinks, hard links and odd names made in /scratch stay there: the host side that
    sizes, loads and removes the folder follows none of them."""
    outside = "/tmp/wasmsbx-mcp-attack-target"
    with open(outside, "w") as fh:
        fh.write("host file")
    plant = (
        "import os\n"
        "os.makedirs('/scratch/.wasmsbx', exist_ok=True)\n"
        "made = []\n"
        "for target, link in [('/tmp/wasmsbx-mcp-attack-target', 'to-host'), ('..', 'up'),\n"
        "        ('../../../../tmp/wasmsbx-mcp-attack-target', 'rel'),\n"
        "        ('/tmp/wasmsbx-mcp-attack-target', '.wasmsbx/globals.pickle')]:\n"
        "    try: os.symlink(target, '/scratch/' + link); made.append(link)\n"
        "    except OSError as e: made.append(type(e).__name__)\n"
        "for name in ['a\\nb', ' ', '-rf', '..x']:\n"
        "    open('/scratch/' + name, 'w').write('n')\n"
        "x = 1\n"
        "print(made)"
    )
    read = (
        "out = []\n"
        "for p in ['/scratch/to-host', '/scratch/up/etc/passwd', '/scratch/rel']:\n"
        "    try: out.append(open(p).read())\n"
        "    except OSError as e: out.append(type(e).__name__)\n"
        "print(out, x)"
    )

    async def scenario():
        async with server.connect() as c:
            s = ok(await c.call_tool("start_session", {}))["session"]
            planted = ok(await c.call_tool("run_python", {"code": plant, "session": s}))
            seen = ok(await c.call_tool("run_python", {"code": read, "session": s}))
            ended = ok(await c.call_tool("end_session", {"session": s}))
            return planted, seen, ended

    try:
        planted, seen, ended = run(scenario())
        with open(outside) as fh:
            assert fh.read() == "host file"  # not written through, not removed
    finally:
        os.unlink(outside)
    assert planted["exit_code"] == 0, planted
    assert "host file" not in seen["stdout"] and "root:" not in seen["stdout"]
    assert ended["ended"] is True


def test_module_paths_that_are_not_plain_files_are_refused(tmp_path):
    """module_path attacks inside an allowed directory: a FIFO (opening it must not
    block the server), links to devices and to /proc, a directory, an oversized file."""
    mods = tmp_path / "mods"
    mods.mkdir()
    os.mkfifo(mods / "fifo.wasm")
    (mods / "zero.wasm").symlink_to("/dev/zero")
    (mods / "mem.wasm").symlink_to("/proc/self/mem")
    (mods / "dir.wasm").mkdir()
    (mods / "big.wasm").write_bytes(b"\0asm\x01\0\0\0" + b"\0" * (128 * 1024))
    (mods / "elf.wasm").write_bytes(Path(sys.executable).read_bytes()[:4096])
    names = ["fifo.wasm", "zero.wasm", "mem.wasm", "dir.wasm", "big.wasm", "elf.wasm"]
    paths = [str(mods / n) for n in names] + [
        str(mods / "dir.wasm" / ".." / ".." / "x"),
        "mods/fifo.wasm",
    ]

    async def scenario():
        async with stdio_client("--module-dir", str(mods), "--max-request", "64KiB") as c:
            out = []
            for path in paths:
                for tool, extra in (
                    ("call_export", {"function": "f"}),
                    ("run_wasi_command", {}),
                    ("audit_module", {}),
                ):
                    out.append(
                        (
                            path,
                            tool,
                            await asyncio.wait_for(
                                c.call_tool(tool, {"module_path": path, **extra}), 120
                            ),
                        )
                    )
            alive = ok(await c.call_tool("run_javascript", {"code": "'alive'"}))
            return out, alive

    out, alive = run(scenario())
    for path, tool, result in out:
        text = clear(result, (path, tool))
        assert result.is_error, (path, tool, text)
    assert alive["stdout"] == "alive\n"


def test_lone_surrogates_get_an_answer_over_stdio():
    """JSON can carry a lone surrogate ("\\ud800"); the SDK's parser refuses such a
    message and, over stdio, dropped it without a reply, so the client waited for ever.
    Each gets an error with its id now (the SDK's client cannot even send one, so this
    speaks JSON-RPC itself), and the server serves the next request."""
    with raw_stdio_server() as (send, answer):

        def call(i: int, name: str, arguments: dict) -> dict:
            params = {"name": name, "arguments": arguments}
            send({"id": i, "method": "tools/call", "params": params})
            return answer()

        probe = b64(GUESTS / "fsprobe.wasm")
        argv = call(2, "run_wasi_command", {"module_base64": probe, "argv": ["read", "\ud800"]})
        code = call(3, "run_python", {"code": "print('\ud800')"})
        alive = call(4, "run_javascript", {"code": "'alive'"})
    for i, reply in ((2, argv), (3, code)):
        assert reply["id"] == i and reply["error"]["code"] == -32700, reply
        assert reply["error"]["message"].startswith("invalid message: "), reply
    assert alive["id"] == 4 and alive["result"]["structuredContent"]["stdout"] == "alive\n"


def test_json_that_is_not_one_message_is_an_invalid_request():
    """JSON-RPC: -32700 is for text that is not JSON, -32600 for JSON that is not a
    request. A batch, [] and a bare number had -32700 with the SDK's model name (red team
    round 79); MCP has no batches."""
    from .mcp_helpers import raw_server

    proc, _, answer = raw_server()
    try:

        def reply_to(line: bytes) -> dict:
            proc.stdin.write(line + b"\n")
            proc.stdin.flush()
            return answer()

        batch = reply_to(b'[{"jsonrpc":"2.0","id":7,"method":"ping"}]')
        empty = reply_to(b"[]")
        number = reply_to(b"5")
        bare = reply_to(b'{"id":9,"method":"ping"}')
        broken = reply_to(b'{"jsonrpc":"2.0","id":10,"method":')
        alive = reply_to(b'{"jsonrpc":"2.0","id":11,"method":"ping"}')
    finally:
        proc.kill()
        proc.wait()
    for reply, what in ((batch, "a batch"), (empty, "a batch"), (number, "a JSON number")):
        assert reply["error"]["code"] == -32600, reply
        assert reply["error"]["message"].startswith(f"invalid request: {what}"), reply
        assert "JSONRPC" not in reply["error"]["message"]
    assert bare["id"] == 9 and bare["error"]["code"] == -32600, bare
    assert '"jsonrpc": "2.0" is missing' in bare["error"]["message"]
    assert broken["id"] == 10 and broken["error"]["code"] == -32700, broken
    assert alive == {"jsonrpc": "2.0", "id": 11, "result": {}}


def _raw_server():
    """``wasmsbx mcp`` over stdio, initialized; (process, send), stderr kept."""
    from .mcp_helpers import raw_server

    proc, send, _ = raw_server(stderr=subprocess.PIPE)
    return proc, send


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_replies_a_client_leaves_unread_do_not_pile_up_in_the_server():
    """Round 40: a client that sends calls and never reads the replies filled the pipe,
    and every later reply waited in the server's memory (9 MB a call: 1 GB a minute at
    the default rate). Past 16 MiB of unwritten replies the server reads no request;
    once the client reads, every call is answered."""
    import json
    import time

    code = "import sys\nsys.stdout.write('\\x01' * ((1 << 20) - 100))"
    proc, send = _raw_server()
    try:
        before = _rss(proc.pid)
        for i in range(2, 22):  # (spaced: not refused as busy, --max-concurrent 4)
            call = {"name": "run_python", "arguments": {"code": code}}
            send({"id": i, "method": "tools/call", "params": call})
            time.sleep(0.4)
        # (unbounded, the 20 calls ran within seconds and their 180 MB of replies waited)
        until, peak = time.monotonic() + 20, 0
        while time.monotonic() < until:
            peak = max(peak, _rss(proc.pid))
            time.sleep(0.25)
        assert peak - before < 120 << 20, (before, peak)
        replies = [json.loads(proc.stdout.readline()) for _ in range(20)]
        assert sorted(r["id"] for r in replies) == list(range(2, 22))
        # (those read together once the client reads may be refused as busy: 4 at once)
        for reply in replies:
            result = reply["result"]
            text = result["content"][0]["text"]
            assert not result.get("isError") or "busy" in text, reply
    finally:
        proc.kill()
        proc.wait()


def test_a_client_that_closes_its_reply_pipe_ends_the_server_quietly():
    """Round 40: exit 100, "internal error: ExceptionGroup" (a BrokenPipeError in the
    SDK's task group). A client gone is the end of the session, as the end of input."""
    proc, send = _raw_server()
    try:
        proc.stdout.close()
        call = {"name": "run_javascript", "arguments": {"code": "'x'"}}
        send({"id": 2, "method": "tools/call", "params": call})
        send({"id": 3, "method": "tools/call", "params": call})
        code = proc.wait(timeout=120)
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0 and "internal error" not in stderr, (code, stderr)


def test_link_loops_private_copies_and_a_broken_audit_log(tmp_path):
    """Round 40: a module_path that is a link loop gave a bare "Error executing tool"
    (Path.resolve's RuntimeError; a traceback on the server's stderr), inside or outside
    the allowed folder; audit_module's report named the server's private copy of a
    module sent as bytes; and an --audit-log that could not be opened left each call's
    copy behind."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "l1").symlink_to("l2")
    (mods / "l2").symlink_to("l1")
    (tmp_path / "o1").symlink_to("o2")
    (tmp_path / "o2").symlink_to("o1")
    log = tmp_path / "audit.jsonl"
    module = b64(EXAMPLES / "add.wat")

    private = tmp_path / "tmp"  # (the server's own folder goes here: its TMPDIR)
    private.mkdir()

    async def scenario():
        args = ("--module-dir", str(mods), "--audit-log", str(log))
        async with stdio_client(*args, env={"TMPDIR": str(private)}) as c:
            loops = [
                await c.call_tool("call_export", {"function": "add", "module_path": p})
                for p in (str(mods / "l1"), str(tmp_path / "o1"))
            ]
            report = ok(await c.call_tool("audit_module", {"module_base64": module}))
            log.unlink()
            log.mkdir()  # (the log cannot be opened from now on: every call is refused)
            failed = [
                await c.call_tool("call_export", {"function": "add", "module_base64": module})
                for _ in range(3)
            ]
            left = list(private.glob("wasmsbx-mcp-*/modules/*"))
            return loops, report, failed, left

    loops, report, failed, left = run(scenario())
    inside, outside = (clear(r, "loop") for r in loops)
    assert loops[0].is_error and "cannot open" in inside, inside
    assert loops[1].is_error and "outside the directories" in outside, outside
    assert report["module"]["path"] == "module.wasm", report["module"]
    assert not re.search(r"[0-9a-f]{64}-[0-9a-f]{12}", json.dumps(report))
    assert all(r.is_error for r in failed) and left == [], left


# A WASI command that writes 100,000 bytes of "a" to stdout.
WRITE_100K = """(module
 (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
 (memory (export "memory") 2)
 (func (export "_start")
  (memory.fill (i32.const 1024) (i32.const 97) (i32.const 100000))
  (i32.store (i32.const 0) (i32.const 1024))
  (i32.store (i32.const 4) (i32.const 100000))
  (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_client_that_reads_slower_than_replies_come_does_not_grow_the_server(tmp_path):
    """Round 41: a client reading steadily (64 KiB every 0.2 s) but slower than replies
    came (20 calls a second of 100 KB each) never left one write stuck, and the replies
    waiting to be written piled up in the server at 3.7 MB/s. The server now reads no
    request while 8 replies wait: it stays flat, and the client's sends wait instead."""
    import threading
    import time

    from .mcp_helpers import raw_server

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "out.wat").write_text(WRITE_100K)
    proc, send, _ = raw_server(
        "--module-dir", str(mods), "--calls-per-minute", "100000", stderr=subprocess.PIPE
    )
    stop = threading.Event()
    read = [0]

    def reader() -> None:
        while not stop.is_set():
            data = proc.stdout.read1(65536)
            if not data:
                return
            read[0] += len(data)
            time.sleep(0.2)

    def sender() -> None:
        arguments = {"module_path": str(mods / "out.wat"), "argv": [], "stdin": ""}
        call = {"name": "run_wasi_command", "arguments": arguments}
        for i in range(2, 100_000):
            if stop.is_set():
                return
            try:
                send({"id": i, "method": "tools/call", "params": call})
            except (BrokenPipeError, ValueError):
                return
            time.sleep(0.05)

    threads = [
        threading.Thread(target=reader, daemon=True),
        threading.Thread(target=sender, daemon=True),
    ]
    try:
        before = _rss(proc.pid)
        for thread in threads:
            thread.start()
        time.sleep(5)  # (settled: the runtime and the first calls)
        settled = _rss(proc.pid)
        peak, until = settled, time.monotonic() + 20
        while time.monotonic() < until:
            peak = max(peak, _rss(proc.pid))
            time.sleep(0.25)
        # (unbounded, 20 s of this grew the server by about 75 MB)
        assert peak - settled < 30 << 20, (before, settled, peak)
        assert read[0] > 2 << 20  # (the replies were the 100 KB outputs, read steadily)
    finally:
        stop.set()
        proc.kill()
        proc.wait()
