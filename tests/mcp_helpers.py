"""Driving `wasmsbx mcp` with the mcp SDK's own client, over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# One compile of the 20 MB CPython module per machine, not per test: the server's workers
# share this cache (the autouse `isolated` fixture gives each test its own otherwise).
SHARED_CACHE = Path(
    os.environ.get("WASMSBX_TEST_MCP_CACHE", Path.home() / ".cache" / "wasmsbx-dev" / "mcp-cache")
)


def server_env() -> dict:
    env = dict(os.environ)
    env["WASMSBX_CACHE_DIR"] = str(SHARED_CACHE)
    return env


def wasmsbx_argv(*args: str) -> list:
    return [sys.executable, "-m", "wasmsbx", "mcp", *args]


def b64(path) -> str:
    from wasmsbx.runner import read_module

    return base64.b64encode(read_module(path)).decode()


@contextlib.asynccontextmanager
async def stdio_client(*args: str):
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "wasmsbx", "mcp", *args],
        env=server_env(),
        cwd=os.getcwd(),
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
