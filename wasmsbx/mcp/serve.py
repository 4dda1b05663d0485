"""Serving: stdio, or streamable HTTP on loopback (another address only with a token).

The bearer check is a few lines of ASGI rather than the SDK's OAuth machinery
(``token_verifier`` + ``AuthSettings``), which needs an issuer and resource-server URLs
that a token shared with one client does not have.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from typing import Any, Callable, Optional

from .. import errors
from .config import ServerConfig

BODY_OVERHEAD = 256 * 1024  # JSON-RPC framing around the tool arguments
# Seconds a connection's client may read nothing of its reply (writes paused, the reply
# no smaller) before the connection may make room for a newcomer at the cap (red team
# 109: at once, an honest client reading a large reply at its own pace lost it).
STUCK_AFTER = 2.0


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


PORTS = (1, 65535)


def check_port_number(port: int) -> None:
    """1-65535, before anything starts (99999 was an OverflowError out of uvicorn, after a
    traceback of asyncio's). Not 0, "any free port": the server does not say which port it
    got, so no client could find it."""
    if not PORTS[0] <= port <= PORTS[1]:
        raise errors.UsageError(
            f"--port {port}: must be {PORTS[0]}-{PORTS[1]}", hint="the default is 8765"
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
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>`` with
    one of the server's tokens (each compared in constant time, all of them every time)."""

    def __init__(self, app: Any, tokens: Any) -> None:
        self.app = app
        tokens = [tokens] if isinstance(tokens, str) else list(tokens)
        self.expected = [f"Bearer {t}".encode() for t in tokens]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            matched = False
            for expected in self.expected:
                matched |= hmac.compare_digest(got, expected)
            if not matched:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        # connection: close, so the connection ends with the reply: a
                        # client without a token sent headers with a body it never sent,
                        # and its connection, answered, waited for that body and held its
                        # slot until --request-timeout (red team 114)
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="wasmsbx"'),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error":"unauthorized"}'})
                return
        await self.app(scope, receive, send)


REPEATED = b'{"error":"a header that may be given once was repeated"}'


class HeaderGuard:
    """ASGI middleware in front of everything else over HTTP: a request carrying
    ``Authorization`` or ``Mcp-Session-Id`` more than once is refused (400). BearerAuth
    checked the last ``Authorization`` and the session fairness counted the first as the
    client: one token sent fresh first values to count as many clients and evicted other
    tokens' sessions (red team 105)."""

    ONCE = (b"authorization", b"mcp-session-id")

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            names = [name.lower() for name, _ in scope.get("headers") or []]
            if any(names.count(name) > 1 for name in self.ONCE):
                await _refuse(send, 400, REPEATED)
                return
        await self.app(scope, receive, send)


class StreamCap:
    """ASGI middleware behind BearerAuth: event streams (``GET``: the SDK's standalone
    SSE stream, one per MCP session) may hold at most half of ``--max-connections`` at
    once, and each client (token) its share of those; another gets 503. An open stream
    is a request in flight, never timed out nor evicted, so one client that opened one
    on each of ``--max-connections`` sessions had every newcomer's connection closed as
    it was accepted (red team 105); with the cap for all only, one token holder's
    streams took every slot, and the other clients' streams got 503. Behind the token
    check, so a client without a token holds no stream slot: its pipelined GETs,
    answered 401 and never read, had kept every slot from the token holders (red team
    110)."""

    def __init__(self, app: Any, max_connections: int, clients: int = 1) -> None:
        self.app = app
        self.max_streams = max(1, max_connections // 2)
        self.share = max(1, self.max_streams // max(1, clients))
        self.streams = 0
        self.held: dict = {}  # client (its Authorization header) -> streams open

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        # (behind BearerAuth: one of the tokens, given once, HeaderGuard; b"" without)
        client = dict(scope.get("headers") or []).get(b"authorization", b"")
        if self.streams >= self.max_streams:
            await _refuse(send, 503, b'{"error":"too many event streams open"}')
            return
        if self.held.get(client, 0) >= self.share:
            await _refuse(send, 503, b'{"error":"too many event streams open for this token"}')
            return
        self.streams += 1
        self.held[client] = self.held.get(client, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.streams -= 1
            left = self.held[client] - 1
            if left:
                self.held[client] = left
            else:
                del self.held[client]


async def _refuse(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
        check_port_number(port)
        check_port(host, port)
    service = Service(config)
    service.tokens = transport == "http" and bool(token)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the cleanup below

    # SIGHUP too: what a server gets when its terminal or SSH session closes; it killed
    # the server with no cleanup, leaving every session's folder (red team round 79)
    handled = (signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, stop) for signum in handled}
    try:
        anyio.run(_main, service, config, transport, host, port, token)
    except KeyboardInterrupt:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        service.close_now()  # whatever the async close did not reach


async def _main(
    service: Any, config: ServerConfig, transport: str, host: str, port: int, token: Any
) -> None:
    from .logs import quiet_logging
    from .tools import build

    try:
        service.start()
        server = build(service)
        quiet_logging()  # (after build: the SDK's MCPServer sets up rich's handler)
        if transport == "stdio":
            await _stdio(server, config)
        else:
            await _http(server, config, host, port, token, service.sessions.mcp_owners)
    finally:
        await service.close()


async def _stdio(server: Any, config: ServerConfig) -> None:
    """``run_stdio_async`` with our capped reader in front of the SDK (see stdio.py). The SDK
    has no public handle on its low-level server; mcp is pinned below 3 and the stdio tests
    run through this path."""
    from .stdio import capped_stdio, client_gone

    lowlevel = server._lowlevel_server
    try:
        async with capped_stdio(config.max_request + BODY_OVERHEAD) as (read, write):
            await lowlevel.run(read, write, lowlevel.create_initialization_options())
    except BaseException as exc:
        if not client_gone(exc):
            raise
        # the client closed its end of the replies: it has gone, as at the end of input


async def _http(
    server: Any, config: ServerConfig, host: str, port: int, token: Any, owners: Callable
) -> None:
    import uvicorn

    app = server.streamable_http_app(
        max_request_body_size=config.max_request + BODY_OVERHEAD,
        # MCP sessions (one per client that initializes), not wasmsbx's: the SDK allows
        # 10 000 by default, each with its own tasks and streams.
        max_sessions=4 * config.max_connections,
        transport_security=transport_security(host),
        host=host,
    )
    evict_idle_mcp_sessions(server.session_manager, owners)
    clients = 1 if not token or isinstance(token, str) else len(set(token))
    app = StreamCap(app, config.max_connections, clients)  # (behind the token check)
    if token:
        app = BearerAuth(app, token)
    app = HeaderGuard(app)
    protocol = guarded_protocol(config.request_timeout, config.max_connections, token)
    uv = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", http=protocol, log_config=None
        )  # (log_config=None: its records go to logs.quiet_logging's handler)
    )
    await uv.serve()


def transport_security(host: str) -> Any:
    """DNS-rebinding protection (Host and Origin checked) on every loopback address, not
    only the three the SDK knows (127.0.0.1, localhost, ::1): a server on 127.0.0.2 must
    not answer a web page that rebinds its own name to it. Off beyond loopback, where the
    token guards it and Host headers vary with the address."""
    from mcp.server.transport_security import TransportSecuritySettings

    if not is_loopback(host):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(f"{n}:*" for n in names),
        allowed_origins=sorted(f"http://{n}:*" for n in names),
    )


# A connection's pace (GuardedH11._pace): the bytes it starts with, and the most of a
# request's head that counts (a client without a token can send only heads).
CREDIT = 256
HEAD = 2048
YOUNG = 0.05  # seconds: younger connections compare by what they sent


def client_of(host: Any) -> Any:
    """Who a peer address stands for at the connection cap (_most_held): loopback as one
    (127.0.0.0/8, ::1: any local user can bind any of them), an IPv6 address by its /64
    (one host's usual share), others as they are; None stays None."""
    if not isinstance(host, str):
        return host
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    if address.is_loopback:
        return "loopback"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def guarded_protocol(request_timeout: float, max_connections: int, tokens: Any = None) -> Any:
    """uvicorn's h11 protocol with the two limits it lacks against slow or many clients.

    uvicorn times out only idle keep-alive connections: a client that sends half a
    request line, or headers and then a body one byte a minute (slowloris), holds its
    connection and file descriptor for ever, and enough of them starve the server of
    descriptors (its workers need pipes). Here each request must arrive whole (headers
    and body) within ``request_timeout`` of its first byte, else the connection is
    closed; and a connection beyond ``max_connections`` is closed as it is accepted.
    Replies that take long (a running call, an SSE stream) are not limited: the server
    is the one sending. At the cap, the connection idle longest makes room for a newcomer
    (_evict_idle), so a client holding connections open between requests locks no one out;
    event streams, which hold theirs, may hold half of them (StreamCap)."""
    import sys

    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    REFUSE = object()  # (_token_victim: close the newcomer, not another's request)
    STALLED = 0.5  # seconds without a byte after which a token holder's request may go
    # ``Authorization`` values that hold one of the server's tokens (``_token``)
    listed = [tokens] if isinstance(tokens, str) else list(tokens or [])
    expected = [f"Bearer {t}".encode() for t in listed]

    try:
        import fcntl
        import termios

        _OUTQ = termios.TIOCOUTQ  # (SIOCOUTQ on a socket: Linux, macOS has none)
        _INQ = termios.FIONREAD  # (SIOCINQ on a socket)
    except (ImportError, AttributeError):
        _OUTQ = _INQ = None

    def _kernel_queue(sock: Any, which: int) -> Optional[int]:
        """Bytes in a socket's kernel queue: received and not yet read (``_INQ``), or
        sent and not yet acknowledged (``_OUTQ``); None if it cannot be had."""
        try:
            queued = bytearray(4)
            fcntl.ioctl(sock.fileno(), which, queued)
        except (OSError, ValueError):
            return None
        return int.from_bytes(queued, sys.byteorder)

    # The client's side once its whole request is in: DONE, or MUST_CLOSE if it said
    # "Connection: close" (or spoke HTTP/1.0), CLOSED if it has shut its side down since.
    # Only DONE was counted: a request with "Connection: close" stayed "arriving", so its
    # connection was the first to make room at the cap while its reply was being written,
    # and was aborted when --request-timeout ran out while its call was still running.
    WHOLE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)

    class GuardedH11(H11Protocol):
        read_timer: Any = None
        last_active = 0.0  # its last byte received or reply complete, or its accepting
        began = 0.0  # its accepting, or its last reply complete (_pace)
        got = 0  # the bytes received since (those of request heads counted up to HEAD)
        progress_at = 0.0  # when its client was last seen reading (writes paused then)
        unsent = 0  # the bytes of reply waiting to be sent, as last seen (_stuck)

        peer: Any = None  # the client's address (its host), if the socket says

        def connection_made(self, transport: Any) -> None:
            name = transport.get_extra_info("peername")
            self.peer = client_of(name[0] if isinstance(name, tuple) and name else None)
            if len(self.connections) >= max_connections and not self._evict_idle():
                transport.close()  # before it is counted: no descriptor kept for it
                return
            self.last_active = self.began = self.loop.time()
            super().connection_made(transport)
            self._arm()

        def _evict_idle(self) -> bool:
            """At the cap, make room for the newcomer by closing, in this order:
            - a connection whose client does not read its replies (_stuck), the one
              active longest ago first;
            - of the connections with no whole request in flight (idle: its last reply
              sent, the next not begun; or a request still arriving), from the client
              address holding the most connections (_most_held), the one that has
              sent least for its time (_pace); where that one is a request still
              arriving with one of the server's tokens, of a token holding more
              (_token_victim), or none.
            False if none is: every connection has a whole request in flight.

            Before, the newcomer was closed: one client holding every connection with
            tiny requests every few seconds (answered 401 or 404, kept alive) locked every
            other client out for as long as it liked (red team 107); so did pipelined
            requests whose replies were never read (108), and request bodies sent a byte at
            a time, each connection reopened as ``request_timeout`` closed it (109). Idle
            connections then went before arriving ones: a newcomer, idle until its first
            byte is read, was closed by the next connection accepted with it (red team
            114). Then the one whose last byte came longest ago went: connections each
            sending a byte in the same millisecond, from addresses of their own, closed
            honest uploads at 300 KB/s (red team 116, no token needed)."""
            now = self.loop.time()
            mine = [c for c in self.connections if isinstance(c, GuardedH11)]
            for tier, key, fair in (
                ([c for c in mine if c._stuck(now)], lambda c: c.last_active, False),
                ([c for c in mine if c._idle() or c._arriving()], lambda c: c._pace(now), True),
            ):
                if tier:
                    victim = min(_most_held(tier, mine, self.peer), key=key)
                    if fair and expected and victim._arriving() and victim._token() is not None:
                        victim = _token_victim(victim, tier, mine, key, now)
                        if victim is REFUSE:
                            return False
                    self.connections.discard(victim)  # (counted out now)
                    # abort, not close: close waits for unsent replies to drain, and a
                    # client that reads nothing kept the descriptor (and megabytes of
                    # kernel buffers) for as long as it liked (red team 110)
                    victim.transport.abort()
                    return True
            return False

        def _token(self) -> Optional[bytes]:
            """The Authorization header of the last request head read here, if it holds
            one of the server's tokens; else None."""
            scope = getattr(self, "scope", None)
            if not scope:
                return None
            got = dict(scope.get("headers") or []).get(b"authorization")
            if got is None:
                return None
            matched = False
            for one in expected:  # (compared as BearerAuth does)
                matched |= hmac.compare_digest(got, one)
            return got if matched else None

        def _stuck(self, now: float) -> bool:
            """Its client sent its next request before the reply to the last (pipelining,
            which MCP clients never do: thousands of tiny requests queued kept a
            connection busy for minutes), or has taken nothing of what was sent to it
            for STUCK_AFTER seconds (_unsent no smaller), while writes are paused or no
            request is in flight. An honest client reading a large reply at its own pace
            keeps writes paused for as long as it reads, but the reply shrinks (red teams
            109 and 112); replies to pipelined requests, all answered, waiting below the
            pause mark and never read, had left a connection neither idle nor stuck
            (red team 113: every newcomer closed, no token needed)."""
            flow = self.flow
            if self.transport is None or flow is None:
                return False
            if self.conn.their_state is h11.DONE and (
                self.conn.trailing_data[0] or self._queued()[0]
            ):
                return True  # (its next request read already, or still in the kernel's
                # queue: what was read may end just where a request does, and such a
                # connection looked neither stuck nor idle until STUCK_AFTER after a
                # first measure; a newcomer refused once on CI 184 may have met that)
            if not (flow.write_paused or self._answered()):
                return False
            left = self._unsent()
            if not left:
                return False
            if not self.unsent or left < self.unsent:  # first seen, or it reads
                self.unsent, self.progress_at = left, now
                return False
            return now - self.progress_at >= STUCK_AFTER

        def _pace(self, now: float) -> tuple:
            """Its rank at the cap (lowest goes): 2 if a whole request head has been
            read, 1 if one waits unread in its receive queue (above, within 1) or it is
            under YOUNG seconds old (it may not have had the time to send), else 0;
            within 0 and 2, what it has sent since it was accepted or last answered, as
            a byte rate with a start of CREDIT bytes; then the older first.

            A client without the token is answered 401 and closed when its head ends, so
            it can hold a connection only with an unfinished head (counted up to HEAD
            bytes): every connection with a whole head, an honest request being read or
            an upload, ranks above all of those, whatever their rates (red team 117:
            heads of 2 KiB, a few dozen a second, out-paced honest requests sent in two
            writes, uploads whose first body bytes came with the head, and whole small
            requests not yet read). Among connections of the same rank, an upload keeps
            a rate no trickle of bytes comes near (red team 116)."""
            if self.conn.their_state is not h11.IDLE:  # (a whole head, read: by pace)
                pace = (self.got + CREDIT) / max(now - self.began, YOUNG)
                return (2, pace, self.began)
            queued, whole = self._queued()
            if whole or now - self.began < YOUNG:
                # A whole head not yet read (a 401 for it may be on its way: a burst of
                # them, accepted in one turn, had outranked an honest upload, red team
                # 118), above one that may not have had the time to come (empty
                # connections opened in a burst the moment another client connected
                # closed it before its head, waiting in the queue, was read: red team
                # 119); the older first.
                return (1, 1.0 if whole else 0.0, self.began)
            pace = (min(HEAD, self.got + queued) + CREDIT) / (now - self.began)
            return (0, pace, self.began)

        def _queued(self) -> tuple:
            """(bytes received by the kernel and not yet read, whether a request head ends
            in what this connection has of one, read or not); (0, False) if unknown."""
            sock = self.transport.get_extra_info("socket") if _INQ is not None else None
            if sock is None:
                return 0, False
            count = _kernel_queue(sock, _INQ)
            if not count:
                return 0, False
            try:
                peek = socket.socket(fileno=sock.fileno())  # (the same descriptor,
                try:  # detached after: never closed here)
                    waiting = peek.recv(2 * HEAD, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                finally:
                    peek.detach()
            except (OSError, ValueError):
                return 0, False
            have = bytes(self.conn.trailing_data[0][-3:]) + waiting
            return count, b"\r\n\r\n" in have or b"\n\n" in have

        def _idle(self) -> bool:
            """No request in flight: its last reply sent (to the last byte: one still
            leaving is not cut short) and the next not begun."""
            return (
                self.transport is not None
                and self._answered()
                and not self.transport.get_write_buffer_size()
            )

        def _answered(self) -> bool:
            """Every request it sent has its reply complete, and no next one has begun."""
            return self.conn.their_state is h11.IDLE and (
                self.cycle is None or self.cycle.response_complete
            )

        def _arriving(self) -> bool:
            """A request has begun and is not all in yet (its read timer runs)."""
            return self.transport is not None and self.read_timer is not None

        def _unsent(self) -> int:
            """The bytes of reply not yet taken by the client: waiting here, and in the
            kernel's send queue (SIOCOUTQ: not yet acknowledged), where a slow reader's
            progress shows first: the queue takes megabytes, and writes stay paused
            while it drains (red team 112: a client reading steadily at 800 KB/s showed
            no progress here for over 2 s)."""
            left = self.transport.get_write_buffer_size()
            sock = self.transport.get_extra_info("socket")
            if _OUTQ is None or sock is None:
                return left
            return left + (_kernel_queue(sock, _OUTQ) or 0)

        def pause_writing(self) -> None:
            if not self.flow.write_paused:
                self.progress_at = self.loop.time()
                self.unsent = self._unsent()
            super().pause_writing()

        def resume_writing(self) -> None:
            self.unsent = 0  # (it read: _stuck takes a new measure when next asked)
            super().resume_writing()

        def on_response_complete(self) -> None:
            self.last_active = self.began = self.loop.time()  # (a reply just taken)
            self.got = 0
            if self.transport is not None and not self.flow.write_paused:
                # (what is left of the replies from here on can only shrink: measured
                # now, a client that takes none of it counts as stuck STUCK_AFTER later)
                self.unsent, self.progress_at = self._unsent(), self.loop.time()
            super().on_response_complete()
            their = self.conn.their_state
            if (
                self.transport is not None
                and not self.transport.is_closing()
                and (their is not h11.IDLE or self.conn.trailing_data[0])
            ):
                # A next request pipelined behind this reply, begun already, has from now
                # to arrive whole: its bytes came while the client's side was DONE, so
                # data_received armed nothing, and its connection was neither idle,
                # arriving nor stuck: never timed out nor made room, so such connections
                # locked every newcomer out (red team 115). A next request not begun is
                # timed from its first byte, as any (data_received): timed from here, a
                # keep-alive client's upload after a pause lost its time (red team 116).
                self._arm()

        def data_received(self, data: bytes) -> None:
            self.last_active = self.loop.time()
            head = self.conn.their_state is h11.IDLE
            self._arm()
            super().data_received(data)
            if head and self.conn.their_state is h11.IDLE:  # (a head, still unfinished)
                self.got += max(0, min(len(data), HEAD - self.got))
            else:  # (a body; or a head that ended here, and the body that came with it)
                self.got += len(data)
            if self.conn.their_state in WHOLE:  # the whole request is in
                self._disarm()

        def connection_lost(self, exc: Any) -> None:
            self._disarm()
            if self.transport is not None:
                super().connection_lost(exc)

        def _arm(self) -> None:
            if self.read_timer is None and self.conn.their_state not in WHOLE:
                self.read_timer = self.loop.call_later(request_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self.read_timer is not None:
                self.read_timer.cancel()
                self.read_timer = None

        def _too_slow(self) -> None:
            self.read_timer = None
            if self.conn.their_state not in WHOLE:
                self.transport.abort()  # (as _evict_idle: nothing of it is waited for)

    def _token_victim(chosen: Any, tier: list, every: list, key: Callable, now: float) -> Any:
        """Where the connection that would go (``chosen``) is a request still arriving
        that carries one of the server's tokens, and other tokens hold more connections
        (of ``every``): of theirs that could go (in ``tier``), one that has sent nothing
        for STALLED seconds, of the token holding the most, by ``key``; if they have
        none that could go at all, REFUSE (the newcomer is closed); else ``chosen``.
        One token holder cannot make another's request go by holding more connections:
        connections that each sent 1 MB of body and stalled out-paced another token
        holder's steady upload, 0 of 6 (red team 118); with its calls and streams in
        flight, none to close, a token holder's newcomer cut another's upload (red team
        124). Its own connections sending steadily are not closed for the other's sake
        (red team 127: an honest client's event stream counted it the larger holder, and
        its upload went in place of the other's trickle, the slowest). With one token for
        every client (the usual) they are one client, and this changes nothing."""
        held: dict = {}
        for c in every:
            token = c._token()
            if token is not None:
                held[token] = held.get(token, 0) + 1
        mine = held.get(chosen._token(), 0)
        if not held or max(held.values()) <= mine:
            return chosen
        richer = [c for c in tier if held.get(c._token(), 0) > mine]
        if not richer:
            return REFUSE
        stalled = [c for c in richer if now - c.last_active >= STALLED]
        if not stalled:
            return chosen
        top = max(held[c._token()] for c in stalled)
        return min((c for c in stalled if held[c._token()] == top), key=key)

    def _most_held(tier: list, every: list, newcomer: Any) -> list:
        """The connections of ``tier`` from the address that holds the most connections
        (of ``every``, and the newcomer's from its address ``newcomer``) among the
        addresses in ``tier``: a client flooding the server with connections from one
        address makes room with its own, not with another address's. Addresses as
        ``client_of`` groups them: all of loopback is one client (any local user can
        bind 127.0.0.2, 127.0.0.3, ...: one connection from each of them tied with an
        honest client's one, red team 116)."""
        held: dict = {newcomer: 1}
        for c in every:
            held[c.peer] = held.get(c.peer, 0) + 1
        most = max(held[c.peer] for c in tier)
        return [c for c in tier if held[c.peer] == most]

    return GuardedH11


def evict_idle_mcp_sessions(manager: Any, owners: Optional[Callable] = None) -> None:
    """At the SDK's cap on MCP sessions (2025 protocol, one per ``initialize``), a newcomer
    evicts the session that has been idle longest instead of getting 503 for as long as the
    others stay open (30 minutes idle each): without this, one client that sent
    4 × ``--max-connections`` initialize requests locked every other client out.

    A session with a request in flight (an open GET stream included) is never evicted; at
    most ``--max-connections`` can be, fewer than the cap, so some session is always idle.
    The evicted client gets 404 for its session id, which tells an MCP client to initialize
    again. ``owners()``: the MCP session ids that hold wasmsbx sessions (start_session),
    which go last: on a server without tokens a wasmsbx session belongs to the MCP
    session that started it, and a flood of initialize requests evicted honest clients'
    MCP sessions, their wasmsbx sessions (globals, /scratch) out of their reach (red
    team 123). Uses the SDK manager's private ``_admit_session`` and
    ``_server_instances`` (mcp is pinned below 3; tests/test_mcp_redteam.py checks the
    behaviour)."""
    admit = manager._admit_session

    def admit_fairly(requestor: Any) -> Any:
        cap = manager.max_sessions
        if cap is not None and len(manager._server_instances) >= cap:
            held = owners() if owners is not None else set()
            victim = None
            for sid, transport in manager._server_instances.items():
                scope = transport.idle_scope
                if scope is None or transport._requests_in_flight or scope.cancel_called:
                    continue  # opening, busy, or already going
                rank = (sid in held, scope.deadline)
                if victim is None or rank < victim[2]:
                    victim = (sid, transport, rank)
            if victim is not None:
                # Forgotten now (its id answers 404 from here on), as the SDK's own
                # _discard_session does first; cancelling its idle scope ends its task,
                # which terminates the transport.
                manager._server_instances.pop(victim[0], None)
                manager._session_owners.pop(victim[0], None)
                victim[1].idle_scope.cancel()
        return admit(requestor)

    manager._admit_session = admit_fairly
