"""`wasmsbx mcp` end to end: the mcp SDK's own client over stdio and streamable HTTP.

The interpreters are fetched from PyPI by `wasmsbx mcp setup` (the documented command) once
per test session; if that fails the tests fail, they are not skipped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time

import pytest

if sys.version_info < (3, 10):  # the mcp SDK needs 3.10+; wasmsbx[mcp] is not installed
    pytest.skip("the mcp SDK needs Python 3.10+", allow_module_level=True)

from .conftest import EXAMPLES, GUESTS
from .mcp_helpers import (
    SHARED_CACHE,
    b64,
    ensure_setup,
    http_client,
    http_server,
    ok,
    run,
    server_env,
    shared_server,
    stdio_client,
    text_of,
    wasmsbx_argv,
)

pytestmark = pytest.mark.slow
# Spread over the xdist workers rather than grouped on one (conftest): the session fixture
# below is `mcp setup`, a cache hit after the first worker ran it, and these tests are the
# suite's longest (grouped, they ran alone on one worker for minutes at the end).
XDIST_SPREAD = True


@pytest.fixture(scope="session", autouse=True)
def interpreters_installed():
    """`wasmsbx mcp setup`: download, check digests, precompile into the shared cache."""
    ensure_setup()


@pytest.fixture(scope="session")
def server():
    """One stdio server for this test process, for the tests that need only the defaults
    (see mcp_helpers.SharedServer); tests that need options start their own."""
    return shared_server()


# ------------------------------------------------------------------------------ stdio


def test_lists_tools_with_schemas(server):
    async def scenario():
        async with server.connect() as c:
            return (await c.list_tools()).tools

    tools = {t.name: t for t in run(scenario())}
    assert {
        "run_python",
        "run_javascript",
        "call_export",
        "run_wasi_command",
        "audit_module",
        "start_session",
        "end_session",
        "limits",
    } <= set(tools)
    assert tools["run_python"].input_schema["required"] == ["code"]
    assert "exit_code" in tools["run_python"].output_schema["properties"]
    assert "results" in tools["call_export"].output_schema["properties"]


def test_python_prints_and_a_warm_call_does_not_recompile(server):
    async def scenario():
        async with server.connect() as c:
            first = ok(await c.call_tool("run_python", {"code": "print('hello', 6 * 7)"}))
            second = ok(await c.call_tool("run_python", {"code": "21 * 2"}))
            return first, second

    first, second = run(scenario())
    assert first["stdout"] == "hello 42\n" and first["exit_code"] == 0
    assert second["stdout"] == "42\n"
    assert second["stats"]["module_load"] == "reused"


def test_python_exception_is_a_result_with_the_traceback(server):
    async def scenario():
        async with server.connect() as c:
            return ok(await c.call_tool("run_python", {"code": "1/0"}))

    data = run(scenario())
    assert data["exit_code"] == 1
    assert "ZeroDivisionError" in data["stderr"]


def test_python_cannot_read_host_files(server):
    code = "print(open('/etc/passwd').read())"

    async def scenario():
        async with server.connect() as c:
            py = ok(await c.call_tool("run_python", {"code": code}))
            listing = ok(await c.call_tool("run_python", {"code": "import os; os.listdir('/')"}))
            return py, listing

    py, listing = run(scenario())
    assert py["exit_code"] == 1 and "root:" not in py["stdout"]
    assert "FileNotFoundError" in py["stderr"]
    assert "etc" not in listing["stdout"]


def test_python_loop_forever_is_stopped_and_the_server_lives_on(server):
    async def scenario():
        async with server.connect() as c:
            started = time.monotonic()
            loop = await c.call_tool(
                "run_python", {"code": "while True: pass", "limits": {"timeout": "1s"}}
            )
            took = time.monotonic() - started
            after = ok(await c.call_tool("run_python", {"code": "print('alive')"}))
            return loop, took, after

    loop, took, after = run(scenario())
    assert loop.is_error
    assert "timeout" in text_of(loop)
    assert took < 300  # generous (includes loading CPython on a loaded machine): it stopped
    assert after["stdout"] == "alive\n"


def test_guest_blocked_in_a_wasi_sleep_is_stopped_and_the_server_lives_on():
    """A guest blocked in a host call (nanosleep) may be out of the epoch deadline's reach:
    its worker process is stopped at timeout + grace, and the next call gets a fresh one."""

    async def scenario():
        async with stdio_client("--grace", "2s") as c:
            slept = await c.call_tool(
                "run_wasi_command",
                {
                    "module_base64": b64(GUESTS / "fsprobe.wasm"),
                    "argv": ["sleep", "3600000"],
                    "limits": {"timeout": "1s"},
                },
            )
            after = ok(await c.call_tool("run_python", {"code": "print('alive')"}))
            return slept, after

    slept, after = run(scenario())
    assert slept.is_error and "timeout" in text_of(slept)
    # Stopped in process (if the runtime can interrupt the sleep) or with its worker at
    # timeout + grace; either way within the call's budget.
    assert "within 3 s" in text_of(slept) or "still running after 1.00 s" in text_of(slept)
    assert after["stdout"] == "alive\n"


def test_call_may_tighten_but_not_loosen_limits(server):
    async def scenario():
        async with server.connect() as c:
            loose = await c.call_tool("run_python", {"code": "1", "limits": {"timeout": "1h"}})
            mem = await c.call_tool(
                "run_python",
                {"code": "b = bytearray(64 * 1024 * 1024)", "limits": {"memory": "32MiB"}},
            )
            return loose, ok(mem)

    loose, mem = run(scenario())
    assert loose.is_error and "ceiling" in text_of(loose)
    assert mem["exit_code"] == 1 and "MemoryError" in mem["stderr"]


def test_arguments_of_the_wrong_type_are_usage_errors_with_a_hint(server):
    """They were pydantic's text ("1 validation error for run_pythonArguments ... For
    further information visit https://errors.pydantic.dev/..."), red team round 79."""

    async def scenario():
        async with server.connect() as c:
            wrong = await c.call_tool("run_python", {"code": "1", "session": 123})
            missing = await c.call_tool("run_python", {})
            nested = await c.call_tool("run_python", {"code": "1", "limits": {"timeout": [1]}})
            return wrong, missing, nested

    for result, where in zip(run(scenario()), ["session", "code", "limits.timeout"]):
        text = text_of(result)
        assert result.is_error, text
        assert text.startswith(f"usage: run_python: argument {where}: "), text
        assert "\nhint: see the tool's input schema" in text
        assert "pydantic" not in text and "123" not in text


def test_request_over_the_size_limit_is_refused():
    async def scenario():
        async with stdio_client("--max-request", "4KiB") as c:
            big = await c.call_tool("run_python", {"code": "x = 1\n" * 2000})
            small = ok(await c.call_tool("run_python", {"code": "print(1)"}))
            return big, small

    big, small = run(scenario())
    assert big.is_error and "request too large" in text_of(big)
    assert small["stdout"] == "1\n"


def test_concurrent_calls_beyond_the_limit_are_refused():
    async def scenario():
        async with stdio_client("--max-concurrent", "1") as c:
            slow = asyncio.ensure_future(
                c.call_tool("run_python", {"code": "while True: pass", "limits": {"timeout": "3s"}})
            )
            await asyncio.sleep(1.0)
            refused = await c.call_tool("run_python", {"code": "print(1)"})
            await slow
            after = ok(await c.call_tool("run_python", {"code": "print(2)"}))
            return refused, after

    refused, after = run(scenario())
    assert refused.is_error and "busy" in text_of(refused)
    assert after["stdout"] == "2\n"


def test_calls_per_minute():
    """Over a window of an hour, so that no load can let the first call age out of it
    before the third (--rate-window; the window's sliding is tested with a fake clock in
    test_mcp_units)."""

    async def scenario():
        async with stdio_client("--calls-per-minute", "2", "--rate-window", "1h") as c:
            return [await c.call_tool("run_javascript", {"code": "1"}) for _ in range(3)]

    results = run(scenario())
    assert [r.is_error for r in results] == [False, False, True]
    assert "rate limit: 2 calls per 3600 s reached" in text_of(results[2]), text_of(results[2])
    assert "retry in 3" in text_of(results[2])  # 3599 s or so: the hour is what counts


def test_a_second_server_start_does_not_recompile_the_interpreters(tmp_path):
    """`wasmsbx mcp setup` filled the cache; every server's workers load the interpreters
    from it: the cache counts hits and no misses over two server starts. (The key that
    authenticates entries is the user's: a server run with another trust folder compiled
    CPython again at every start, ~18 s of CPU each, as this suite's servers did.)"""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(SHARED_CACHE, cache)  # counters of our own, whatever else runs
    env = {"WASMSBX_CACHE_DIR": str(cache)}

    def stats() -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "wasmsbx", "cache", "stats", "--json"],
            capture_output=True,
            text=True,
            env={**server_env(), **env},
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    async def one_server():
        async with stdio_client(env=env) as c:
            py = ok(await c.call_tool("run_python", {"code": "print('py')"}))
            js = ok(await c.call_tool("run_javascript", {"code": "'js'"}))
            return py["stdout"], js["stdout"]

    before = stats()
    assert before["entries"] >= 2  # both interpreters, precompiled by setup
    outputs = [run(one_server()) for _ in range(2)]
    after = stats()
    assert outputs == [("py\n", "js\n")] * 2
    assert after["misses"] == before["misses"], (before, after)
    assert after["hits"] >= before["hits"] + 4  # two interpreters, two server starts
    assert after["entries"] == before["entries"]


def test_a_module_sent_as_bytes_stays_out_of_the_users_compile_cache(tmp_path):
    """Red team round 92: every module a client sent was compiled into the user's cache,
    so distinct ones filled it and evicted the interpreters (the next worker's load took
    4.4 s instead of 0.1) and the user's own entries. A module named by its path (in a
    --module-dir) is cached as before; one sent as bytes only in its worker."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(SHARED_CACHE, cache)
    env = {"WASMSBX_CACHE_DIR": str(cache)}
    from wasmtime import wat2wasm

    def guest(step: int) -> bytes:  # about 25 KB: past runtime.cache_min_size
        adds = f"i32.const {100_000 + step} i32.add " * 5000
        return wat2wasm(f'(module (func (export "f") (param i32) (result i32) local.get 0 {adds}))')

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "named.wasm").write_bytes(guest(0))
    other = guest(1)
    assert len(other) > 16 * 1024

    def entries() -> int:
        return len(list((cache / "code").glob("*/*.entry")))

    async def scenario():
        async with stdio_client("--module-dir", str(mods), env=env) as c:
            sent = await c.call_tool(
                "call_export",
                {"module_base64": base64.b64encode(other).decode(), "function": "f", "args": [1]},
            )
            before_named = entries()
            named = await c.call_tool(
                "call_export",
                {"module_path": str(mods / "named.wasm"), "function": "f", "args": [1]},
            )
            return sent, before_named, named

    before = entries()
    sent, before_named, named = run(scenario())
    assert not sent.is_error and not named.is_error, (text_of(sent), text_of(named))
    assert before_named == before  # the bytes: not cached
    assert entries() == before + 1  # the module of the --module-dir: cached


def test_output_over_the_limit_is_refused():
    async def scenario():
        async with stdio_client("--max-output", "1KiB") as c:
            return await c.call_tool("run_python", {"code": "print('x' * 100000)"})

    result = run(scenario())
    assert result.is_error and "output" in text_of(result)


def test_session_keeps_globals_and_sessions_are_isolated(server):
    async def scenario():
        async with server.connect() as c:
            a = ok(await c.call_tool("start_session", {}))["session"]
            b = ok(await c.call_tool("start_session", {}))["session"]
            code = (
                "x = 41\n"
                "def inc(v): return v + 1\n"
                "class K:\n    def name(self): return 'k'\n"
                "k = K()\n"
                "open('/scratch/secret.txt', 'w').write('a-only')"
            )
            ok(await c.call_tool("run_python", {"code": code, "session": a}))
            kept = ok(
                await c.call_tool("run_python", {"code": "print(inc(x), k.name())", "session": a})
            )
            other = ok(
                await c.call_tool(
                    "run_python",
                    {
                        "code": "print('x' in globals())\nprint(open('/scratch/secret.txt').read())",  # noqa: E501
                        "session": b,
                    },
                )
            )
            none = ok(
                await c.call_tool(
                    "run_python",
                    {"code": "print('x' in globals()); import os; os.listdir('/scratch')"},
                )
            )
            ended = ok(await c.call_tool("end_session", {"session": a}))
            gone = await c.call_tool("run_python", {"code": "x", "session": a})
            return kept, other, none, ended, gone

    kept, other, none, ended, gone = run(scenario())
    assert kept["stdout"] == "42 k\n"
    assert {"x", "inc", "K", "k"} <= set(kept["kept"])
    assert other["stdout"] == "False\n" and "FileNotFoundError" in other["stderr"]
    assert none["stdout"].startswith("False\n") and "FileNotFoundError" in none["stderr"]
    assert ended["ended"] is True
    assert gone.is_error and "unknown or expired session" in text_of(gone)


def test_session_cpu_budget():
    async def scenario():
        async with stdio_client("--session-cpu", "500ms") as c:
            s = ok(await c.call_tool("start_session", {}))["session"]
            other = ok(await c.call_tool("start_session", {}))["session"]
            results = []
            for _ in range(40):  # each call costs >= ~40 ms of CPU, most far more
                code = {"code": "sum(range(200000))", "session": s}
                results.append(await c.call_tool("run_python", code))
                if results[-1].is_error:
                    break
            fresh = ok(await c.call_tool("run_python", {"code": "print(1)", "session": other}))
            return results, fresh

    results, fresh = run(scenario())
    assert results[-1].is_error and "CPU budget" in text_of(results[-1])
    assert len(results) > 1  # the budget was spent by calls that ran, not refused up front
    assert fresh["stdout"] == "1\n"  # one session's budget is not another's


def test_a_sessions_call_is_stopped_when_its_cpu_budget_runs_out():
    """Red team 123: with 0.37 s of a 1 s budget left, a call ran its whole 8 s timeout
    (the session ended 5 times over its budget). The call's worker's CPU is watched, and
    the call stopped when the budget runs out."""

    async def scenario():
        async with stdio_client("--session-cpu", "1s") as c:
            s = ok(await c.call_tool("start_session", {}))["session"]
            spin = "while True: pass"
            return await c.call_tool("run_python", {"code": spin, "session": s})

    spun = run(scenario())
    assert spun.is_error and "session CPU budget spent" in text_of(spun), text_of(spun)
    assert "of CPU the session had left of 1 s, and was stopped" in text_of(spun)


def test_a_list_argument_longer_than_its_cap_is_one_error(server):
    """Red team 124: an argv of 640,000 numbers (under --max-request) held the event
    loop 5 s: an error per item, every one read. A list past its cap is one error."""

    async def scenario():
        async with server.connect() as c:
            long = await c.call_tool("run_wasi_command", {"argv": [1] * 200_000})
            few = await c.call_tool("run_wasi_command", {"argv": [1, 2]})
            return long, few

    long, few = run(scenario())
    assert long.is_error and "argv" in text_of(long) and "10000" in text_of(long), text_of(long)
    assert len(text_of(long)) < 1000
    assert few.is_error and "argv" in text_of(few)  # (numbers, not text: refused as before)


def test_javascript_prints_and_is_stopped(server):
    async def scenario():
        async with server.connect() as c:
            js = ok(
                await c.call_tool(
                    "run_javascript", {"code": "console.log('hi'); [1,2].map(x => x * 3)"}
                )
            )
            err = ok(await c.call_tool("run_javascript", {"code": "throw new Error('boom')"}))
            loop = await c.call_tool(
                "run_javascript", {"code": "for(;;){}", "limits": {"timeout": "1s"}}
            )
            return js, err, loop

    js, err, loop = run(scenario())
    assert js["stdout"] == "hi\n[3,6]\n"
    assert err["exit_code"] == 1 and "boom" in err["stderr"]
    assert loop.is_error and "timeout" in text_of(loop)


def test_call_export_by_base64_and_by_allowed_path(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "add.wat").write_text((EXAMPLES / "add.wat").read_text())
    (tmp_path / "outside.wat").write_text((EXAMPLES / "add.wat").read_text())
    (mods / "link.wat").symlink_to(tmp_path / "outside.wat")

    async def scenario():
        async with stdio_client("--module-dir", str(mods)) as c:
            by_b64 = ok(
                await c.call_tool(
                    "call_export",
                    {"module_base64": b64(EXAMPLES / "add.wat"), "function": "add", "args": [5, 3]},
                )
            )
            by_path = ok(
                await c.call_tool(
                    "call_export",
                    {"module_path": str(mods / "add.wat"), "function": "hypot", "args": ["3", 4.0]},
                )
            )
            outside = await c.call_tool(
                "call_export",
                {"module_path": str(tmp_path / "outside.wat"), "function": "add", "args": [1, 2]},
            )
            via_link = await c.call_tool(
                "call_export",
                {"module_path": str(mods / "link.wat"), "function": "add", "args": [1, 2]},
            )
            bad_args = await c.call_tool(
                "call_export",
                {"module_base64": b64(EXAMPLES / "add.wat"), "function": "add", "args": [1]},
            )
            return by_b64, by_path, outside, via_link, bad_args

    by_b64, by_path, outside, via_link, bad_args = run(scenario())
    assert by_b64["results"] == [{"type": "i32", "value": 8, "wave": None}]
    assert by_path["results"] == [{"type": "f64", "value": 5.0, "wave": None}]
    assert outside.is_error and "outside the directories" in text_of(outside)
    assert via_link.is_error and "outside the directories" in text_of(via_link)
    assert bad_args.is_error and "takes 2 arguments" in text_of(bad_args)


def test_hostile_modules_do_not_hurt_the_server(server):
    """The attack corpus of the escape and resource-bomb suites, through the tools."""
    cases = [
        (
            "call_export",
            GUESTS / "spin.wat",
            {"function": "spin", "limits": {"timeout": "500ms"}},
            "timeout",
        ),
        ("call_export", GUESTS / "recurse.wat", {"function": "recurse"}, "stack"),
        ("call_export", GUESTS / "trap.wat", {"function": "div0"}, "trap"),
        ("call_export", GUESTS / "start_trap.wat", {"function": "f"}, "trap"),
        ("call_export", GUESTS / "imports_env.wat", {"function": "f"}, "does not provide"),
        (
            "call_export",
            EXAMPLES / "memory_hog.wat",
            {"function": "hog", "limits": {"memory": "1MiB"}},
            "",
        ),
        ("run_wasi_command", GUESTS / "spin_cmd.wat", {"limits": {"timeout": "500ms"}}, "timeout"),
    ]

    async def scenario():
        async with server.connect() as c:
            out = []
            for tool, path, args, _ in cases:
                out.append(await c.call_tool(tool, {"module_base64": b64(path), **args}))
            garbage = await c.call_tool(
                "call_export",
                {
                    "module_base64": base64.b64encode(b"\0asm\x01\0\0\0\xff\xff").decode(),
                    "function": "f",
                },
            )
            probe = ok(
                await c.call_tool(
                    "run_wasi_command",
                    {
                        "module_base64": b64(GUESTS / "fsprobe.wasm"),
                        "argv": ["read", "/etc/passwd"],
                    },
                )
            )
            alive = ok(await c.call_tool("run_javascript", {"code": "6*7"}))
            return out, garbage, probe, alive

    out, garbage, probe, alive = run(scenario())
    for (_tool, path, _, expect), result in zip(cases, out):
        if expect:
            assert result.is_error, f"{path.name}: {result}"
            assert expect in text_of(result), f"{path.name}: {text_of(result)}"
    hog = out[5]
    assert hog.is_error or hog.structured_content["results"][0]["value"] <= 16
    assert garbage.is_error and "module" in text_of(garbage)
    assert probe["exit_code"] != 0 and "root:" not in probe["stdout"]
    assert alive["stdout"] == "42\n"


def test_wasi_command_argv_and_stdin(server):
    async def scenario():
        async with server.connect() as c:
            return ok(
                await c.call_tool(
                    "run_wasi_command",
                    {
                        "module_base64": b64(GUESTS / "fsprobe.wasm"),
                        "argv": ["cat-stdin"],
                        "stdin": "from stdin",
                    },
                )
            )

    data = run(scenario())
    assert data["exit_code"] == 0 and data["stdout"] == "from stdin"


def test_a_guest_sees_the_clients_name_and_its_whole_status(tmp_path):
    """Red team round 79: argv[0] was the server's private copy (a name that changed on
    every call), and a status past 125 was only ever 126."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "probe.wasm").write_bytes((GUESTS / "fsprobe.wasm").read_bytes())
    probe = b64(GUESTS / "fsprobe.wasm")

    async def scenario():
        async with stdio_client("--module-dir", str(mods)) as c:
            named = {"module_path": str(mods / "probe.wasm")}
            by_path = ok(await c.call_tool("run_wasi_command", {**named, "argv": ["argv0"]}))
            by_b64 = ok(
                await c.call_tool("run_wasi_command", {"module_base64": probe, "argv": ["argv0"]})
            )
            status = ok(await c.call_tool("run_wasi_command", {**named, "argv": ["exit", "300"]}))
            small = ok(await c.call_tool("run_wasi_command", {**named, "argv": ["exit", "7"]}))
            return by_path, by_b64, status, small

    by_path, by_b64, status, small = run(scenario())
    assert by_path["stdout"] == "probe.wasm\n", by_path
    assert by_b64["stdout"] == "module.wasm\n", by_b64
    assert status["exit_code"] == 126 and status["guest_status"] == 300, status
    assert small["exit_code"] == 7 and small["guest_status"] == 7, small


def test_sys_exit_with_a_message_prints_it(server):
    """As CPython does: the message on stderr, exit 1 (red team round 79: it was lost)."""

    async def scenario():
        async with server.connect() as c:
            text = ok(
                await c.call_tool("run_python", {"code": "print('a')\nraise SystemExit('bye')"})
            )
            code = ok(await c.call_tool("run_python", {"code": "import sys; sys.exit(3)"}))
            return text, code

    text, code = run(scenario())
    assert text["exit_code"] == 1 and text["stdout"] == "a\n" and text["stderr"] == "bye\n"
    assert code["exit_code"] == 3 and code["stderr"] == ""


def test_arguments_a_tool_does_not_take_are_refused(server):
    """Red team round 79: run_javascript took a session and ignored it, and a misspelt
    key of limits was dropped (the call ran under the server's limits)."""

    async def scenario():
        async with server.connect() as c:
            session = await c.call_tool("run_javascript", {"code": "1", "session": "abc"})
            typo = await c.call_tool("run_python", {"code": "1", "limits": {"timout": "1s"}})
            fine = ok(await c.call_tool("run_javascript", {"code": "6*7"}))
            nulls = ok(
                await c.call_tool("run_python", {"code": "1", "stdin": None, "session": None})
            )
            return session, typo, fine, nulls

    session, typo, fine, nulls = run(scenario())
    assert nulls["stdout"] == "1\n", nulls  # (null where a default is: stdin, round 84)
    text = text_of(session)
    assert session.is_error and text.startswith(
        "usage: run_javascript: argument 'session' is not one this tool takes"
    ), text
    assert "hint: run_javascript takes: code, limits" in text
    text = text_of(typo)
    assert typo.is_error and text.startswith("usage: run_python: argument limits.timout: "), text
    assert fine["stdout"] == "42\n"


def test_audit_tool_matches_audit_json(server, isolated):
    module = EXAMPLES / "add.wat"

    async def scenario():
        async with server.connect() as c:
            return ok(await c.call_tool("audit_module", {"module_base64": b64(module)}))

    report = run(scenario())
    cli = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "audit", "--json", str(module)],
        capture_output=True,
        text=True,
        cwd=isolated,
    )
    expected = json.loads(cli.stdout)
    for volatile in ("module", "path", "file"):
        report.pop(volatile, None)
        expected.pop(volatile, None)
    assert report.keys() == expected.keys()
    assert report["findings"] == expected["findings"]


def test_audit_log_records_every_call(tmp_path):
    log = tmp_path / "audit.jsonl"

    async def scenario():
        async with stdio_client("--audit-log", str(log)) as c:
            ok(await c.call_tool("run_python", {"code": "print(1)"}))
            await c.call_tool(
                "run_python", {"code": "while True: pass", "limits": {"timeout": "500ms"}}
            )

    run(scenario())
    events = [json.loads(line) for line in log.read_text().splitlines()]
    runs = {}
    for e in events:
        runs.setdefault(e["run"], []).append(e["event"])
    assert len(runs) == 2
    for names in runs.values():
        assert names[0] == "start" and names[-1] == "exit" and "mcp" in names
    assert any(e["event"] == "limit" and e["limit"] == "timeout" for e in events)


def test_the_audit_log_keeps_large_arguments_as_a_digest_and_counts_refusals(tmp_path):
    """Red team round 92: every call's whole argv went to the log before the rate limit
    was asked, so refused calls of a megabyte each grew it 60-90 MB/s."""
    import hashlib

    log = tmp_path / "audit.jsonl"
    argv = ["A" * 1000] * 100  # 100 KB of argv
    command = {"module_base64": b64(GUESTS / "fsprobe.wasm"), "argv": argv}

    async def scenario():
        async with stdio_client(
            "--audit-log", str(log), "--calls-per-minute", "2", "--rate-window", "1h"
        ) as c:
            first = await c.call_tool("run_wasi_command", {**command, "argv": ["ls", "/"]})
            second = await c.call_tool("run_wasi_command", command)
            refused = [await c.call_tool("run_wasi_command", command) for _ in range(20)]
            return first, second, refused

    first, second, refused = run(scenario())
    named = tmp_path / "named.jsonl"

    async def long_name():
        async with stdio_client("--audit-log", str(named)) as c:
            return await c.call_tool(
                "call_export",
                {"module_base64": b64(EXAMPLES / "add.wat"), "function": "f" * 100_000},
            )

    assert run(long_name()).is_error  # (no such export)
    logged = [json.loads(line) for line in named.read_text().splitlines()]
    start = next(e for e in logged if e["event"] == "start")
    assert len(start["function"]) < 300  # (red team round 95: the whole 1 MB name)
    mcp_event = next(e for e in logged if e["event"] == "mcp")
    assert mcp_event["function_bytes"] == 100_000 and len(mcp_event["function_sha256"]) == 64
    assert all(r.is_error and "rate limit" in text_of(r) for r in refused)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 and starts[0]["args"] == ["ls", "/"] and starts[1]["args"] == []
    big = next(e for e in events if e["event"] == "mcp" and e.get("args_count"))
    text = json.dumps(argv, ensure_ascii=False).encode()
    assert big["args_count"] == 100 and big["args_bytes"] == len(text)
    assert big["args_sha256"] == hashlib.sha256(text).hexdigest()
    assert log.stat().st_size < 20_000  # (20 refused calls of 100 KB: nothing of them)


# ------------------------------------------------------------------------------ HTTP


def test_http_on_loopback():
    import httpx2

    with http_server("--max-request", "64KiB") as (url, _):
        body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_python",'
        body += b'"arguments":{"code":"' + b"x" * 1_000_000 + b'"}}}'
        headers = {"content-type": "application/json", "accept": "application/json"}
        too_big = httpx2.post(url, content=body, headers=headers)

        async def scenario():
            async with http_client(url) as c:
                names = {t.name for t in (await c.list_tools()).tools}
                data = ok(await c.call_tool("run_python", {"code": "print('over http')"}))
                return names, data

        names, data = run(scenario())
    assert too_big.status_code == 413  # refused before it is parsed
    assert "run_python" in names
    assert data["stdout"] == "over http\n"


def test_http_bearer_token(tmp_path):
    import httpx2

    token = "t0ken-" + "x" * 20
    with http_server(env={"WASMSBX_MCP_TOKEN": token}) as (url, _):
        denied = httpx2.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        wrong = httpx2.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": "Bearer nope"},
        )

        async def scenario():
            async with http_client(url, token) as c:
                return ok(await c.call_tool("run_javascript", {"code": "'ok'"}))

        data = run(scenario())
    assert denied.status_code == 401 and wrong.status_code == 401
    assert data["stdout"] == "ok\n"


def test_one_client_cannot_hold_every_session_slot():
    """The session cap is global and every client on loopback shares an address: one
    client opens more sessions than the server holds, a second client still gets one (the
    least recently used idle session is evicted for it) and runs code in it."""
    with http_server("--max-sessions", "4") as (url, _):

        async def scenario():
            async with http_client(url) as greedy, http_client(url) as other:
                held = [ok(await greedy.call_tool("start_session", {}))["session"]]
                for _ in range(7):
                    held.append(ok(await greedy.call_tool("start_session", {}))["session"])
                mine = ok(await other.call_tool("start_session", {}))["session"]
                code = {"code": "x = 6 * 7\nprint(x)", "session": mine}
                served = ok(await other.call_tool("run_python", code))
                oldest = await greedy.call_tool("run_python", {"code": "1", "session": held[0]})
                return served, oldest

        served, oldest = run(scenario())
    assert served["stdout"] == "42\n" and served["session"]
    assert oldest.is_error and "unknown or expired session" in text_of(oldest)
    assert "evicted" in text_of(oldest)


def test_with_tokens_each_token_keeps_its_fair_share_of_sessions(tmp_path):
    """With several tokens each is a client of its own: a token holding many sessions pays
    for a newcomer, and its churning evicts its own sessions, never those of a token within
    its share (here 2 of 4)."""
    greedy_token, fair_token = "greedy-" + "g" * 20, "fair-" + "f" * 20
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one per client\n{greedy_token}\n\n{fair_token}\n")
    with http_server("--max-sessions", "4", "--token-file", str(tokens)) as (url, _):

        async def scenario():
            async with (
                http_client(url, greedy_token) as greedy,
                http_client(url, fair_token) as fair,
            ):
                for _ in range(4):
                    ok(await greedy.call_tool("start_session", {}))
                mine = []
                for i in range(2):
                    mine.append(ok(await fair.call_tool("start_session", {}))["session"])
                    code = {"code": f"v = {i}", "session": mine[-1]}
                    ok(await fair.call_tool("run_python", code))
                for _ in range(8):  # all more recent than fair's sessions
                    ok(await greedy.call_tool("start_session", {}))
                kept = []
                for sid in mine:
                    kept.append(
                        ok(await fair.call_tool("run_python", {"code": "v", "session": sid}))
                    )
                return kept

        kept = run(scenario())
    assert [k["stdout"] for k in kept] == ["0\n", "1\n"]


def test_http_refuses_a_rebound_host_or_a_foreign_origin():
    """DNS rebinding: a web page that points its own name at 127.0.0.1 sends its Host
    and Origin; neither is accepted."""
    import httpx2

    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"accept": "application/json, text/event-stream"}
    with http_server() as (url, _):
        host = httpx2.post(url, json=body, headers={**accept, "host": "evil.example:80"})
        origin = httpx2.post(url, json=body, headers={**accept, "origin": "http://evil.example"})
    assert host.status_code == 421
    assert origin.status_code == 403


def test_http_refuses_other_addresses_without_flag_and_token():
    no_flag = subprocess.run(
        wasmsbx_argv("--http", "--host", "0.0.0.0"),
        capture_output=True,
        text=True,
        env=server_env(),
    )
    assert no_flag.returncode == 2
    assert no_flag.stderr.startswith("error: --host 0.0.0.0: not a loopback address")
    env = {k: v for k, v in server_env().items() if k != "WASMSBX_MCP_TOKEN"}
    no_token = subprocess.run(
        wasmsbx_argv("--http", "--host", "0.0.0.0", "--allow-remote"),
        capture_output=True,
        text=True,
        env=env,
    )
    assert no_token.returncode == 2 and "token is required" in no_token.stderr


def test_http_port_in_use_is_one_line():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            wasmsbx_argv("--http", "--port", str(port)),
            capture_output=True,
            text=True,
            env=server_env(),
            timeout=120,
        )
    assert proc.returncode == 105
    assert proc.stderr.splitlines()[0].endswith("cannot listen: Address already in use")


def test_client_disconnect_mid_call(tmp_path):
    """A client that goes away mid-call: the call is cancelled and its worker stopped long
    before the guest's own 120 s timeout, so the one slot frees for the next client."""
    policy = tmp_path / "sandbox.toml"
    policy.write_text('[limits]\ntimeout = "120s"\n')
    with http_server("--max-concurrent", "1", "--policy", str(policy)) as (url, _):

        async def leave_mid_call():
            async with http_client(url) as c:
                call = asyncio.ensure_future(
                    c.call_tool("run_python", {"code": "while True: pass"})
                )
                await asyncio.sleep(2)
                call.cancel()

        async def another_client():
            async with http_client(url) as c:
                for _ in range(60):
                    result = await c.call_tool("run_python", {"code": "print('still here')"})
                    if not result.is_error:
                        return result.structured_content
                    assert "busy" in text_of(result)
                    await asyncio.sleep(0.5)
                return text_of(result)

        run(leave_mid_call())
        started = time.monotonic()
        data = run(another_client())
        waited = time.monotonic() - started
    assert isinstance(data, dict) and data["stdout"] == "still here\n", data
    assert waited < 60  # far below the guest's 120 s: the call did not run to its timeout


def _children(pid: int) -> list:
    from pathlib import Path

    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _assert_gone(workers: list) -> None:
    """The worker processes end within a generous half minute."""
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)


def _running_workers(pid: int) -> list:
    """The worker processes of the server ``pid``, once one runs the call just sent."""
    deadline = time.monotonic() + 120
    while not _children(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # the call is running in a worker now
    workers = _children(pid)
    assert workers
    return workers


def test_stdio_client_gone_mid_call_stops_the_server_and_its_workers(tmp_path):
    """The client closes the pipe while a call runs: the server exits, its worker processes
    are stopped and its private folder (sessions' scratch) is removed."""
    policy = tmp_path / "sandbox.toml"
    policy.write_text('[limits]\ntimeout = "300s"\n')
    proc = subprocess.Popen(
        wasmsbx_argv("--policy", str(policy)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=server_env(),
    )

    def send(message: dict) -> None:
        proc.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())
        proc.stdin.flush()

    try:
        send(
            {
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "test", "version": "1"},
                },
            }
        )
        assert json.loads(proc.stdout.readline())["id"] == 1
        send({"method": "notifications/initialized"})
        send(
            {"id": 2, "method": "tools/call", "params": {"name": "start_session", "arguments": {}}}
        )
        session = json.loads(proc.stdout.readline())["result"]["structuredContent"]["session"]
        send(
            {
                "id": 3,
                "method": "tools/call",
                "params": {
                    "name": "run_python",
                    "arguments": {"code": "while True: pass", "session": session},
                },
            }
        )
        workers = _running_workers(proc.pid)
        from pathlib import Path

        root = Path(os.readlink(f"/proc/{workers[0]}/cwd"))
        assert (root / f"session-{session}").is_dir()
        proc.stdin.close()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_gone(workers)
    assert not root.exists()


def test_a_session_survives_its_own_corrupted_state(server):
    junk = (
        "import os\n"
        "open('/scratch/.wasmsbx/globals.pickle', 'wb').write(b'not a pickle')\n"
        "os._exit(0)"  # skips the save: the junk stays
    )

    async def scenario():
        async with server.connect() as c:
            s = ok(await c.call_tool("start_session", {}))["session"]
            ok(await c.call_tool("run_python", {"code": "x = 1", "session": s}))
            ok(await c.call_tool("run_python", {"code": junk, "session": s}))
            after = ok(
                await c.call_tool("run_python", {"code": "y = 2\nprint('ok')", "session": s})
            )
            again = ok(await c.call_tool("run_python", {"code": "print(y)", "session": s}))
            return after, again

    after, again = run(scenario())
    assert after["stdout"] == "ok\n" and "could not be read" in after["not_kept"]["*"]
    assert again["stdout"] == "2\n"


def test_resource_bombs_and_file_escapes_through_the_tools(server):
    probe = b64(GUESTS / "fsprobe.wasm")
    escapes = [["read", "/etc/passwd"], ["read", "../../../../etc/passwd"], ["ls", "/"]]
    escapes += [["write", "/tmp/wasmsbx-mcp-escape", "x"], ["symlink", "/etc/passwd", "l"]]

    async def scenario():
        async with server.connect() as c:
            grow = ok(
                await c.call_tool(
                    "call_export",
                    {
                        "module_base64": b64(GUESTS / "memgrow_loop.wat"),
                        "function": "run",
                        "limits": {"memory": "1MiB"},
                    },
                )
            )
            table = ok(
                await c.call_tool(
                    "call_export",
                    {"module_base64": b64(GUESTS / "table_grow.wat"), "function": "grow_table"},
                )
            )
            fs = []
            for argv in escapes:
                args = {"module_base64": probe, "argv": argv}
                fs.append(ok(await c.call_tool("run_wasi_command", args)))
            return grow, table, fs

    grow, table, fs = run(scenario())
    assert grow["results"][0]["value"] <= 16  # 1 MiB of 64 KiB pages
    assert table["results"][0]["value"] <= 10000  # limits.table_elements
    for argv, result in zip(escapes, fs):
        assert result["exit_code"] != 0, (argv, result)
        assert "root:" not in result["stdout"], argv
    assert not os.path.exists("/tmp/wasmsbx-mcp-escape")


def test_the_policy_is_the_servers_not_the_working_folders(tmp_path, isolated):
    """./sandbox.toml is untrusted and not read; --policy's grants reach every call."""
    (isolated / "sandbox.toml").write_text('[limits]\nmemory = "1GiB"\ntimeout = "1h"\n')
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("granted")
    policy = tmp_path / "ceiling.toml"
    policy.write_text(f'[filesystem]\nread_only = ["{data}:/data"]\n')

    async def scenario():
        async with stdio_client("--policy", str(policy)) as c:
            limits = ok(await c.call_tool("limits", {}))
            read = ok(await c.call_tool("run_python", {"code": "open('/data/input.txt').read()"}))
            write = ok(await c.call_tool("run_python", {"code": "open('/data/x', 'w')"}))
            return limits, read, write

    limits, read, write = run(scenario())
    assert limits["memory"] == "256 MiB" and limits["timeout"] == "10.00 s"
    assert read["stdout"] == "'granted'\n"
    assert write["exit_code"] == 1 and not (data / "x").exists()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_stops_the_http_server_cleanly(signame):
    """SIGTERM, and SIGHUP (a closed terminal or SSH session: it killed the server with
    no cleanup, red team round 79): exit 0, no worker left running, the private folder
    removed."""
    import signal

    with http_server() as (_, proc):
        deadline = time.monotonic() + 120
        while not _children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert workers
        from pathlib import Path

        root = Path(os.readlink(f"/proc/{workers[0]}/cwd"))
        assert root.name.startswith("wasmsbx-mcp-")
        proc.send_signal(getattr(signal, signame))
        assert proc.wait(60) == 0
    _assert_gone(workers)
    assert not root.exists()


def test_a_killed_servers_workers_die_with_it(tmp_path):
    """SIGKILL leaves the folder (the next server removes it) but no worker: a worker
    running a call ran on, guest and all, to the guest's deadline (red team round 79)."""
    import signal

    from .mcp_helpers import raw_server

    policy = tmp_path / "sandbox.toml"
    policy.write_text('[limits]\ntimeout = "300s"\n')
    proc, send, _ = raw_server("--policy", str(policy))
    try:
        call = {"name": "run_python", "arguments": {"code": "while True: pass"}}
        send({"id": 2, "method": "tools/call", "params": call})
        workers = _running_workers(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        proc.kill()
        proc.wait()
    _assert_gone(workers)


def test_output_that_is_not_utf8_comes_back_as_base64(server):
    code = "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok')\nsys.stdout.flush()"

    async def scenario():
        async with server.connect() as c:
            return ok(await c.call_tool("run_python", {"code": code}))

    data = run(scenario())
    assert data["stdout"] == "" and base64.b64decode(data["stdout_base64"]) == b"\xff\xfe ok"
    assert data["stderr_base64"] is None


# ------------------------------------------------------------------------------ components


def test_call_export_of_a_component_takes_and_gives_typed_values(server):
    """WIT-typed arguments as typed JSON (or WAVE with wave=true), checked against the
    component's signature; results as typed JSON with their WAVE spelling."""
    types = b64(GUESTS / "components" / "types.wat")
    echo = b64(GUESTS / "components" / "echo.wat")
    calls = [
        (types, "greet", ["World"], False),
        (types, "add", [5, -3], False),
        (types, "sum", [[1.5, 2.5, "inf"]], False),
        (types, "divide", [7, 0], False),
        (types, "divide", [-(2**63), 1], False),
        (types, "bump", [None], False),
        (types, "bump", [{"some": 4}], False),
        (types, "bump", [4], False),
        (types, "swap", [{"x": 1, "y": 2}], False),
        (types, "next", ["blue"], False),
        (types, "toggle", [["read"]], False),
        (types, "wasmsbx:test/api#double", [21], False),
        (types, "swap", ["{x: 3, y: 4}"], True),
        (types, "divide", ["9", "2"], True),
        (echo, "shape", [{"text": "hé"}], False),
        (echo, "nested", [{"some": {"none": None}}], False),
        (echo, "either", [{"err": 4}], False),
        (echo, "maybe-fail", [{"ok": None}], False),
    ]
    refused = [
        (types, "add", [2**31, 1], False, "out of range for s32"),
        (types, "add", [1], False, "takes 2 arguments"),
        (types, "swap", [{"x": 1}], False, "missing field 'y'"),
        (types, "swap", ["{x: 1, y: 2}"], False, "set wave=true"),  # WAVE without wave=true
        (types, "next", ["purple"], False, "expected one of red, green, blue"),
        (types, "toggle", [["exec"]], False, "unknown flag 'exec'"),
        (types, "divide", [{"ok": 1}, 2], False, "argument 1"),
        (types, "swap", [{"x": 1, "y": 2}], True, "WAVE text"),
        (types, "nope", [], False, "no exported function 'nope'"),
        (echo, "shape", [{"circle": 1}], False, "expected one of"),
        (b64(EXAMPLES / "add.wat"), "add", [[1], 2], False, "arguments are numbers"),
        (b64(EXAMPLES / "add.wat"), "add", ["1", "2"], True, "wave=true is for components"),
    ]

    async def scenario():
        async with server.connect() as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            good = []
            for module, func, args, wave in calls:
                arguments = {"module_base64": module, "function": func, "args": args}
                if wave:
                    arguments["wave"] = True
                good.append(ok(await c.call_tool("call_export", arguments)))
            bad = []
            for module, func, args, wave, _ in refused:
                arguments = {"module_base64": module, "function": func, "args": args, "wave": wave}
                bad.append(await c.call_tool("call_export", arguments))
            trap = await c.call_tool("call_export", {"module_base64": types, "function": "fail"})
            spin = await c.call_tool(
                "call_export",
                {"module_base64": types, "function": "spin", "limits": {"timeout": "500ms"}},
            )
            alive = ok(
                await c.call_tool(
                    "call_export", {"module_base64": types, "function": "add", "args": [1, 2]}
                )
            )  # noqa: E501
            return tools, good, bad, trap, spin, alive

    tools, good, bad, trap, spin, alive = run(scenario())
    schema = tools["call_export"].input_schema["properties"]
    assert "typed JSON" in schema["args"]["description"]
    assert schema["wave"]["type"] == "boolean"
    results = [g["results"] for g in good]
    assert results[0] == [{"type": "string", "value": "Hello, World", "wave": '"Hello, World"'}]
    assert results[1][0]["value"] == 2 and results[1][0]["type"] == "s32"
    assert results[2][0]["value"] == "inf" and results[2][0]["type"] == "f64"
    assert results[3][0] == {
        "type": "result<s64, string>",
        "value": {"err": "division by zero"},
        "wave": 'err("division by zero")',
    }
    assert results[4][0]["value"] == {"ok": -(2**63)}
    assert results[5][0]["value"] == {"none": None} and results[5][0]["wave"] == "none"
    assert results[6][0]["value"] == {"some": 5} and results[7][0]["value"] == {"some": 5}
    assert results[8][0] == {"type": "tuple<s32, s32>", "value": [2, 1], "wave": "(2, 1)"}
    assert results[9][0]["value"] == "red"
    assert results[10][0]["value"] == ["write"]
    assert results[11][0]["value"] == 42
    assert results[12][0]["value"] == [4, 3]
    assert results[13][0]["value"] == {"ok": 4}
    assert results[14][0]["value"] == {"text": "hé"}
    assert results[15][0]["value"] == {"some": {"none": None}}
    assert results[16][0]["value"] == {"err": 4}
    assert results[17][0]["value"] == {"ok": None}
    for (_, func, args, _, needle), result in zip(refused, bad):
        assert result.is_error, (func, args, result)
        assert needle in text_of(result), (func, args, text_of(result))
    assert trap.is_error and "unreachable" in text_of(trap)
    assert spin.is_error and "timeout" in text_of(spin)
    assert alive["results"][0]["value"] == 3


# ------------------------------------------------------------------------------ stdio size cap


def _hwm(pid: int) -> int:
    """Peak resident memory of a process, in bytes (VmHWM)."""
    from pathlib import Path

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _stdio_server(*args: str):
    return subprocess.Popen(
        wasmsbx_argv(*args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=server_env(),
    )


def _send(proc, message: dict) -> None:
    proc.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())
    proc.stdin.flush()


def _initialize(proc) -> None:
    params = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    }
    _send(proc, {"id": 1, "method": "initialize", "params": params})
    assert json.loads(proc.stdout.readline())["id"] == 1
    _send(proc, {"method": "notifications/initialized"})


def test_an_oversized_stdio_message_is_refused_without_being_held():
    """A 256 MiB line to a server that reads at most 64 KiB + framing per message: a
    JSON-RPC error that carries the request's id, the server's peak memory does not grow
    with the message, and the next request is served."""
    size = 256 * 1024 * 1024
    proc = _stdio_server("--max-request", "64KiB")
    try:
        _initialize(proc)
        _send(
            proc, {"id": 2, "method": "tools/call", "params": {"name": "limits", "arguments": {}}}
        )  # noqa: E501
        assert json.loads(proc.stdout.readline())["id"] == 2
        before = _hwm(proc.pid)
        head = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"run_python",'
        head += b'"arguments":{"code":"'
        proc.stdin.write(head)
        block = b"x" * (4 * 1024 * 1024)
        for _ in range(size // len(block)):
            proc.stdin.write(block)
        proc.stdin.write(b'"}}}\n')
        proc.stdin.flush()
        refused = json.loads(proc.stdout.readline())
        after = _hwm(proc.pid)
        _send(
            proc, {"id": 8, "method": "tools/call", "params": {"name": "limits", "arguments": {}}}
        )  # noqa: E501
        alive = json.loads(proc.stdout.readline())
        # one without a findable id, then the client goes away mid-message
        proc.stdin.write(b'{"method":"x","params":{"p":"' + block + block)
        proc.stdin.close()
        nameless = json.loads(proc.stdout.readline())
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert refused["id"] == 7 and refused["error"]["code"] == -32600
    assert "request too large" in refused["error"]["message"]
    assert after - before < 48 * 1024 * 1024, (before, after)  # vs a 256 MiB message
    assert alive["id"] == 8 and "result" in alive
    assert nameless["id"] is None and "request too large" in nameless["error"]["message"]
    assert code == 0  # the client closed stdin: a clean exit


def test_a_message_just_past_the_cap_whose_newline_comes_in_the_same_read_is_refused():
    """Red team round 92: a line whose newline arrived in the read that took it past the
    cap reached the SDK whole (1,340,834 bytes under a cap of 1,310,720)."""
    proc = _stdio_server("--max-request", "64KiB")
    try:
        _initialize(proc)
        cap = 64 * 1024 + 256 * 1024  # --max-request + the framing allowance
        line = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"run_python",'
        line += b'"arguments":{"code":"' + b"x" * (cap + 1000) + b'"}}}\n'
        proc.stdin.write(line)  # (one write: the newline comes with the rest)
        proc.stdin.flush()
        refused = json.loads(proc.stdout.readline())
        _send(
            proc, {"id": 6, "method": "tools/call", "params": {"name": "limits", "arguments": {}}}
        )  # noqa: E501
        alive = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert refused["id"] == 5 and refused["error"]["code"] == -32600, refused
    assert "request too large" in refused["error"]["message"]
    assert alive["id"] == 6 and "result" in alive


def test_component_command_and_audit_through_the_tools(server):
    """A WASI 0.2 command component (C through the preview1 adapter): argv, stdin, host
    files refused, output and time limits; audit_module reports its WIT imports."""
    from .component_guests import c_command

    command = base64.b64encode(c_command().read_bytes()).decode()

    async def scenario():
        async with server.connect() as c:
            args = {"module_base64": command, "argv": ["stdin"], "stdin": "piped\n"}
            piped = ok(await c.call_tool("run_wasi_command", args))
            args = {"module_base64": command, "argv": ["read", "/etc/passwd"]}
            read = ok(await c.call_tool("run_wasi_command", args))
            args = {"module_base64": command, "argv": ["spin"], "limits": {"timeout": "500ms"}}
            spin = await c.call_tool("run_wasi_command", args)
            flood = await c.call_tool(
                "run_wasi_command",
                {"module_base64": command, "argv": ["flood"], "limits": {"output": "4KiB"}},
            )
            audit = ok(await c.call_tool("audit_module", {"module_base64": command}))
            return piped, read, spin, flood, audit

    piped, read, spin, flood, audit = run(scenario())
    assert piped["exit_code"] == 0 and piped["stdout"].endswith("piped\n")
    assert "arg[1]=stdin" in piped["stdout"]
    assert read["exit_code"] != 0 and "open:" in read["stderr"] and "root:" not in read["stdout"]
    assert spin.is_error and "timeout" in text_of(spin)
    assert flood.is_error and "output" in text_of(flood)
    assert "wasi:cli" in json.dumps(audit)


# ------------------------------------------------------------------------------ slow HTTP clients


def test_http_cuts_off_slow_and_surplus_connections():
    """Slowloris: a request that does not arrive whole within --request-timeout (half a
    request line; headers then a dripping body) has its connection closed; connections
    beyond --max-connections are closed at accept; a normal client is served throughout."""
    import socket

    args = ("--request-timeout", "2s", "--max-connections", "8")
    with http_server(*args) as (url, proc):
        port = int(url.rsplit(":", 1)[1].split("/")[0])

        def connect() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=120)
            return s

        half = connect()
        half.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        drip = connect()
        drip.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"accept: application/json, text/event-stream\r\ncontent-length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        closed = []
        for s in (half, drip):
            try:
                closed.append(s.recv(100))  # b"" when the server closes it
            except ConnectionResetError:
                closed.append(b"")
        took = time.monotonic() - started
        surplus = [connect() for _ in range(12)]
        time.sleep(1)
        cut = 0
        for s in surplus:
            s.settimeout(0.5)
            try:
                cut += s.recv(100) == b""
            except socket.timeout:
                pass
            except ConnectionResetError:
                cut += 1
        for s in surplus:
            s.close()

        async def scenario():
            async with http_client(url) as c:
                return ok(await c.call_tool("run_javascript", {"code": "'served'"}))

        data = run(scenario())
        assert proc.poll() is None
    assert closed == [b"", b""]
    assert took < 100  # generous: they were cut off (2 s), not left open
    assert cut >= 12 - 8  # the ones past the cap were closed at once
    assert data["stdout"] == "served\n"


# ------------------------------------------------------------------------------ hostile sessions


def test_a_session_cannot_fill_the_disk_through_scratch():
    """--session-memory bounds /scratch while a call runs, not only between calls: one
    big file fails with EFBIG in the guest; many files get the call stopped."""
    one_file = (
        "f = open('/scratch/big', 'wb')\n"
        "for _ in range(256): f.write(b'x' * (1 << 20))\n"  # 256 MiB
    )
    many_files = (
        "for i in range(256):\n"  # 256 files of 2 MiB: 512 MiB if nothing stops it
        "    open(f'/scratch/f{i}', 'wb').write(b'x' * (2 << 20))\n"
        "print('wrote them all')"
    )

    async def scenario():
        async with stdio_client("--session-memory", "32MiB") as c:
            a = ok(await c.call_tool("start_session", {}))["session"]
            big = ok(await c.call_tool("run_python", {"code": one_file, "session": a}))
            b = ok(await c.call_tool("start_session", {}))["session"]
            many = await c.call_tool("run_python", {"code": many_files, "session": b})
            after = await c.call_tool("run_python", {"code": "print(1)", "session": b})
            alive = ok(await c.call_tool("run_python", {"code": "print('alive')"}))
            return big, many, after, alive

    big, many, after, alive = run(scenario())
    assert big["exit_code"] == 1 and "File too large" in big["stderr"], big
    assert many.is_error and "session memory budget" in text_of(many), text_of(many)
    assert after.is_error and "budget" in text_of(after)  # over budget: refused, not run
    assert alive["stdout"] == "alive\n"


def test_hostile_session_code_stays_in_its_own_scratch(server):
    """Path tricks, symlinks and a poisoned pickle from one session: they reach neither
    another session's folder, nor the host, nor the server (which never unpickles)."""
    tricks = (
        "import os\n"
        "out = []\n"
        "for p in ['/scratch/..', '/scratch/../..', '/', '/proc/self', '/tmp']:\n"
        "    try: out.append((p, sorted(os.listdir(p))[:5]))\n"
        "    except OSError as e: out.append((p, type(e).__name__))\n"
        "for target in ['../', '/etc/passwd', '..']:\n"
        "    try:\n"
        "        os.symlink(target, '/scratch/l'); out.append(open('/scratch/l').read()[:20])\n"
        "    except OSError as e: out.append(type(e).__name__)\n"
        "    try: os.unlink('/scratch/l')\n"
        "    except OSError: pass\n"
        "print(out)"
    )
    # A pickle whose loading runs code: it runs inside the guest (the only place that
    # unpickles), where the host's files are not there to write.
    poison = (
        "import os, pickle\n"
        "class P:\n"
        "    def __reduce__(self):\n"
        "        return (eval, (\"open('/tmp/wasmsbx-pickled', 'w').write('x')\",))\n"
        "os.makedirs('/scratch/.wasmsbx', exist_ok=True)\n"
        "pickle.dump({'x': pickle.dumps(P())}, open('/scratch/.wasmsbx/globals.pickle', 'wb'))\n"
        "os._exit(0)"
    )

    async def scenario():
        async with server.connect() as c:
            a = ok(await c.call_tool("start_session", {}))["session"]
            b = ok(await c.call_tool("start_session", {}))["session"]
            code = f"open('/scratch/secret', 'w').write('{a}')"
            ok(await c.call_tool("run_python", {"code": code, "session": a}))
            seen = ok(await c.call_tool("run_python", {"code": tricks, "session": b}))
            planted = ok(await c.call_tool("run_python", {"code": poison, "session": b}))
            loaded = ok(
                await c.call_tool("run_python", {"code": "print('x' in globals())", "session": b})
            )  # noqa: E501
            return a, seen, planted, loaded

    a, seen, planted, loaded = run(scenario())
    assert planted["exit_code"] == 0, planted
    assert a not in seen["stdout"] and "secret" not in seen["stdout"]
    assert "root:" not in seen["stdout"] and "session-" not in seen["stdout"]
    assert not os.path.exists("/tmp/wasmsbx-pickled")
    assert loaded["stdout"] == "False\n" and "No such file" in loaded["not_kept"]["x"]


class _LegacyHttpClient:
    """A 2025-06-18 client (MCP session ids in the mcp-session-id header), raw JSON-RPC."""

    def __init__(self, url: str) -> None:
        import httpx2

        self.url, self.http, self.headers, self.next = url, httpx2, {}, 1
        params = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "legacy", "version": "1"},
        }
        reply = self.request("initialize", params)
        assert reply["result"]["protocolVersion"] == "2025-06-18", reply
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def post(self, body: dict):
        headers = {"accept": "application/json, text/event-stream", **self.headers}
        response = self.http.post(self.url, json=body, headers=headers, timeout=300)
        if "mcp-session-id" in response.headers:
            self.headers["mcp-session-id"] = response.headers["mcp-session-id"]
        return response

    def request(self, method: str, params: dict) -> dict:
        self.next += 1
        response = self.post(
            {"jsonrpc": "2.0", "id": self.next, "method": method, "params": params}
        )
        text = response.text
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            text = [line[5:] for line in text.splitlines() if line.startswith("data:")][-1]
        return json.loads(text)

    def tool(self, name: str, arguments: dict) -> dict:
        return self.request("tools/call", {"name": name, "arguments": arguments})["result"]


def test_over_http_a_session_is_reachable_only_by_the_client_that_started_it():
    """With MCP session ids (the 2025 protocol), a wasmsbx session is bound to the MCP
    session that started it: another client holding its id cannot use or end it. (The
    2026-07-28 protocol has no MCP sessions: the 128-bit session id is the capability.)"""
    with http_server() as (url, _):
        alice, mallory = _LegacyHttpClient(url), _LegacyHttpClient(url)
        assert alice.headers["mcp-session-id"] != mallory.headers["mcp-session-id"]
        s = alice.tool("start_session", {})["structuredContent"]["session"]
        code = "open('/scratch/secret', 'w').write('alice'); x = 1"
        assert not alice.tool("run_python", {"code": code, "session": s})["isError"]
        read = "print(open('/scratch/secret').read(), x)"
        stolen = mallory.tool("run_python", {"code": read, "session": s})
        ended = mallory.tool("end_session", {"session": s})["structuredContent"]
        mine = alice.tool("run_python", {"code": read, "session": s})
    assert stolen["isError"] and "unknown or expired session" in stolen["content"][0]["text"]
    assert ended["ended"] is False
    assert mine["structuredContent"]["stdout"] == "alice 1\n"


def test_javascript_has_no_host_modules_and_keeps_nothing_between_calls(server):
    probes = [
        "typeof std + ' ' + typeof os",
        "try { std.loadFile('/etc/passwd') } catch (e) { 'refused: ' + e.name }",
        "globalThis.leak = 'left behind'; Object.prototype.polluted = 1; 'set'",
        "typeof leak + ' ' + typeof ({}).polluted",
    ]

    async def scenario():
        async with server.connect() as c:
            return [ok(await c.call_tool("run_javascript", {"code": p})) for p in probes]

    results = [r["stdout"] for r in run(scenario())]
    assert results == [
        "undefined undefined\n",
        "refused: ReferenceError\n",
        "set\n",
        "undefined undefined\n",
    ]
