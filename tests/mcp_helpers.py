"""Driving `wasmsbx mcp` with the mcp SDK's own client, over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# One compile of the 20 MB CPython module per machine, not per test: the server's workers
# share this cache (the autouse `isolated` fixture gives each test its own otherwise).
SHARED_CACHE = Path(
    os.environ.get("WASMSBX_TEST_MCP_CACHE", Path.home() / ".cache" / "wasmsbx-dev" / "mcp-cache")
)


# The key that authenticates the shared cache's entries. Without it each test's server
# would use the test's own trust folder (the autouse `isolated` fixture), fail the tag of
# every entry `mcp setup` wrote, and compile CPython again: ~18 s of CPU per server.
SHARED_TRUST = SHARED_CACHE.parent / "mcp-trust"


def server_env() -> dict:
    env = dict(os.environ)
    env["WASMSBX_CACHE_DIR"] = str(SHARED_CACHE)
    env["WASMSBX_TRUST_DIR"] = str(SHARED_TRUST)
    return env


def wasmsbx_argv(*args: str) -> list:
    return [sys.executable, "-m", "wasmsbx", "mcp", *args]


def raw_server(*args: str, stderr=subprocess.DEVNULL) -> tuple:
    """``wasmsbx mcp ARGS`` over stdio, spoken to in raw JSON-RPC, past its
    ``initialize``: (process, ``send(message)``, ``answer()``), ``answer`` waiting a
    generous minute for the next reply. The caller ends the process."""
    import json
    import select

    proc = subprocess.Popen(
        wasmsbx_argv(*args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=server_env(),
    )

    def send(message: dict) -> None:
        proc.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())
        proc.stdin.flush()

    def raw(line: bytes) -> None:  # (send.raw: a line as it is, for what json.dumps never writes)
        proc.stdin.write(line + b"\n")
        proc.stdin.flush()

    send.raw = raw  # type: ignore[attr-defined]

    def answer() -> dict:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no answer"
        return json.loads(proc.stdout.readline())

    try:
        params = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        }
        send({"id": 1, "method": "initialize", "params": params})
        assert answer()["id"] == 1
        send({"method": "notifications/initialized"})
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, send, answer


@contextlib.contextmanager
def raw_stdio_server():
    """``raw_server`` for the length of a ``with``: yields ``send`` and ``answer`` (for
    messages the SDK's own client cannot send; no reply at all is the bug some tests
    look for, the server answers in milliseconds)."""
    proc, send, answer = raw_server()
    try:
        yield send, answer
    finally:
        proc.kill()
        proc.wait()


def b64(path) -> str:
    from wasmsbx.runner.sandbox import read_module

    return base64.b64encode(read_module(path)).decode()


@contextlib.asynccontextmanager
async def stdio_client(*args: str, cwd: str = None, env: dict = None):
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "wasmsbx", "mcp", *args],
        env={**server_env(), **(env or {})},
        cwd=cwd or os.getcwd(),
    )
    with open(os.devnull, "w") as errlog:
        from mcp.client.stdio import stdio_client as transport

        async with Client(transport(params, errlog=errlog), read_timeout_seconds=300) as client:
            yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_server(*args: str, env: dict = None):
    """``wasmsbx mcp --http`` on 127.0.0.1 and a free port; yields the endpoint URL."""
    port = free_port()
    proc = subprocess.Popen(
        wasmsbx_argv("--http", "--host", "127.0.0.1", "--port", str(port), *args),
        env={**server_env(), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("the HTTP server did not start listening")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def http_client(url: str, token: str = None):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, read_timeout_seconds=300) as client:
            yield client


def run(coro):
    return asyncio.run(coro)


def text_of(result) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def ok(result) -> dict:
    """The structured result of a call that must have succeeded."""
    assert not result.is_error, text_of(result)
    return result.structured_content


# ------------------------------------------------------------------ setup, and a shared server

_SETUP_DONE = []


def ensure_setup() -> None:
    """`wasmsbx mcp setup`: download, check digests, precompile into the shared cache; once
    per test process (a cache hit after the first process on the machine)."""
    if _SETUP_DONE:
        return
    proc = subprocess.run(
        wasmsbx_argv("setup"), env=server_env(), capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, f"wasmsbx mcp setup failed:\n{proc.stderr}"
    assert "python-3.11.3.wasm" in proc.stdout and "qjs-wasi-reactor.wasm" in proc.stdout
    _SETUP_DONE.append(True)


class SharedServer:
    """One `wasmsbx mcp` on stdio per test process (xdist worker), held by the SDK client on
    an event loop in a thread of its own, so that each test's ``asyncio.run`` can use it.

    For tests that need nothing but the defaults: it starts with the defaults except the
    rate limit (all tests' calls together would pass 120 a minute), and no test may
    depend on state another left (each makes its own sessions; the pool replaces a
    worker a test had stopped)."""

    ARGS = ("--calls-per-minute", "1000000")

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cwd = tempfile.mkdtemp(prefix="wasmsbx-mcp-test-")
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self.holder = asyncio.run_coroutine_threadsafe(self._hold(ready), self.loop)
        self.client, self.stop = ready.result(timeout=600)

    async def _hold(self, ready) -> None:
        stop = asyncio.Event()
        try:
            cm = stdio_client(*self.ARGS, cwd=self.cwd)
            client = await cm.__aenter__()
        except BaseException as exc:
            ready.set_exception(exc)
            raise
        ready.set_result((client, stop))
        try:
            await stop.wait()
        finally:
            await cm.__aexit__(None, None, None)

    async def _remote(self, coro):
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    @contextlib.asynccontextmanager
    async def connect(self):
        """``async with server.connect() as c``: as ``stdio_client()`` gives, without a
        server start."""
        yield _Remote(self)

    def close(self) -> None:
        if self.holder.done():
            return
        self.loop.call_soon_threadsafe(self.stop.set)
        try:
            self.holder.result(timeout=60)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _Remote:
    """The client's calls, run on the shared server's loop."""

    def __init__(self, server: SharedServer) -> None:
        self.server = server

    async def call_tool(self, *args, **kwargs):
        return await self.server._remote(self.server.client.call_tool(*args, **kwargs))

    async def list_tools(self, *args, **kwargs):
        return await self.server._remote(self.server.client.list_tools(*args, **kwargs))


_SHARED = []


def shared_server() -> SharedServer:
    """The test process's shared server (started on first use, stopped at exit)."""
    if not _SHARED:
        ensure_setup()
        _SHARED.append(SharedServer())
        atexit.register(_SHARED[0].close)
    return _SHARED[0]
