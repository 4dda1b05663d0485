"""Serving: stdio, or streamable HTTP on loopback (another address only with a token).

The bearer check is a few lines of ASGI rather than the SDK's OAuth machinery
(``token_verifier`` + ``AuthSettings``), which needs an issuer and resource-server URLs
that a token shared with one client does not have.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any, Optional

from .. import errors
from .config import ServerConfig

BODY_OVERHEAD = 256 * 1024  # JSON-RPC framing around the tool arguments


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: Optional[str], allow_remote: bool) -> None:
    """Loopback by default; any other address needs --allow-remote and a token."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise errors.UsageError(
            f"--host {host}: not a loopback address",
            hint="serving beyond this machine needs --allow-remote and a token "
            "(--token-file or $WASMSBX_MCP_TOKEN)",
        )
    if not token:
        raise errors.UsageError(
            f"--host {host} --allow-remote: a bearer token is required",
            hint="give --token-file FILE or set WASMSBX_MCP_TOKEN (at least 16 characters)",
        )


def check_port(host: str, port: int) -> None:
    """A one-line error for an address in use, instead of uvicorn's log line and exit 1."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise errors.UsageError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise errors.InputError(
                f"--host {host} --port {port}: cannot listen: {exc.strerror}",
                hint="choose another --port",
            ) from None


class BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="wasmsbx"'),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error":"unauthorized"}'})
                return
        await self.app(scope, receive, send)


def serve(
    config: ServerConfig,
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    token: Optional[str] = None,
    allow_remote: bool = False,
) -> None:
    """Run the server until the client goes away (stdio) or it is interrupted (HTTP)."""
    import signal

    import anyio

    from .service import Service

    if transport == "http":
        check_bind(host, token, allow_remote)
        check_port(host, port)
    service = Service(config)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the cleanup below

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        anyio.run(_main, service, config, transport, host, port, token)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        service.close_now()  # whatever the async close did not reach


async def _main(
    service: Any, config: ServerConfig, transport: str, host: str, port: int, token: Any
) -> None:
    from .tools import build

    try:
        service.start()
        server = build(service)
        if transport == "stdio":
            await _stdio(server, config)
        else:
            await _http(server, config, host, port, token)
    finally:
        await service.close()


async def _stdio(server: Any, config: ServerConfig) -> None:
    """``run_stdio_async`` with our capped reader in front of the SDK (see stdio.py). The SDK
    has no public handle on its low-level server; mcp is pinned below 3 and the stdio tests
    run through this path."""
    from .stdio import capped_stdio

    lowlevel = server._lowlevel_server
    async with capped_stdio(config.max_request + BODY_OVERHEAD) as (read, write):
        await lowlevel.run(read, write, lowlevel.create_initialization_options())


async def _http(server: Any, config: ServerConfig, host: str, port: int, token: Any) -> None:
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    security = None
    if not is_loopback(host):  # the token guards it; Host headers vary with the address
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(
        max_request_body_size=config.max_request + BODY_OVERHEAD,
        transport_security=security,
        host=host,
    )
    if token:
        app = BearerAuth(app, token)
    uv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    await uv.serve()
