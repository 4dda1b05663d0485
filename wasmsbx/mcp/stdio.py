"""The stdio transport with a size cap: no message is buffered past ``--max-request``.

The SDK's ``stdio_server`` reads each line whole (``async for line in stdin``) before
anything can look at its size, so a client sending a 1 GiB line makes the server hold
1 GiB (several times over while it is decoded and parsed). Here the SDK gets its streams
from :class:`CappedLines` and :class:`LineWriter` instead: lines are cut from fixed-size
reads, a line that grows past the cap is dropped as it arrives (kept: its first bytes,
to find its ``id``) and answered with a JSON-RPC error; the server keeps serving.

Hand-written rather than a library: the SDK takes any async iterable of lines, and the
cap has to sit below it, on the raw reads; what is here is a bounded line splitter.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Optional

CHUNK = 1024 * 1024  # bytes per read from the pipe
HEAD = 64 * 1024  # of an oversized message: kept to find its id, the rest is dropped
TOO_LARGE = -32600  # JSON-RPC "Invalid Request"
INVALID_REQUEST = -32600
PARSE_ERROR = -32700  # JSON-RPC "Parse error" (or not a JSON-RPC message)
BACKLOG = 256 << 10  # bytes of replies not yet written past which, with a write under
STUCK = 1.0  # way or one this many seconds old, no request is read (LineWriter.room)
WAITING = 8  # replies waiting to be written at which no request is read either


def _waiting_on(stream: Any) -> Any:
    """How many tasks wait to send on the SDK's write stream (anyio's memory stream
    statistics, under the SDK's context wrapper); 0 if this SDK has neither."""
    inner = getattr(stream, "_inner", stream)
    statistics = getattr(inner, "statistics", None)
    if not callable(statistics):
        return lambda: 0

    def waiting() -> int:
        try:
            found = statistics()
            return int(found.tasks_waiting_send) + int(found.current_buffer_used)
        except Exception:  # noqa: BLE001 - a closed stream: nothing waits
            return 0

    return waiting


def client_gone(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception of a group, as the SDK's task group raises
    them) says the client closed its end of the replies: the server's end, not an error
    (red team round 40: exit 100, "internal error")."""
    import builtins

    group = getattr(builtins, "BaseExceptionGroup", None)  # (Python 3.11 on)
    if group is not None and isinstance(exc, group):
        return all(client_gone(e) for e in exc.exceptions)
    return isinstance(exc, (BrokenPipeError, ConnectionResetError))


class LineWriter:
    """What the SDK writes replies to; also takes our own error replies. One lock, so a
    reply is never torn by another written from the reading side.

    A client that sends requests and never reads the replies filled the pipe, and every
    later reply waited in memory, each held by the task that made it (red team round
    40: 9 MB a call, 1 GB a minute at the default rate). So the reader takes no further
    request while a write is stuck (``room``): one of more than a pipe's worth
    (``backlog``, the bytes handed to this writer and not yet written, past BACKLOG),
    or one that has waited STUCK seconds for the client to read; nor while WAITING
    replies or more wait to be handed to this writer (round 41: a client that reads
    steadily but slower than replies come never left one write stuck, and replies
    piled up at 3.7 MB/s)."""

    def __init__(self, fd: int) -> None:
        import anyio

        self.fh = os.fdopen(fd, "wb", buffering=0, closefd=False)
        self.lock = anyio.Lock()
        self.pending = b""
        self.backlog = 0
        self.writing_since: Optional[float] = None  # time.monotonic() of a write under way
        # Replies made and waiting to be handed to this writer: capped_stdio sets how to
        # count them (the SDK's tasks blocked sending to its write stream), once it has it
        self.waiting: Callable[[], int] = lambda: 0

    async def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self.pending += data
        self.backlog += len(data)

    async def flush(self) -> None:
        import anyio

        async with self.lock:
            data, self.pending = self.pending, b""
            if data:
                try:
                    await anyio.to_thread.run_sync(self._write_all, data)
                finally:
                    self.backlog -= len(data)

    async def send_line(self, message: dict) -> None:
        import anyio

        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        self.backlog += len(data)
        try:
            async with self.lock:
                await anyio.to_thread.run_sync(self._write_all, data)
        finally:
            self.backlog -= len(data)

    async def room(self) -> None:
        """Return once no write is stuck and few replies wait to be written (see the
        class docstring)."""
        import time

        import anyio

        while True:
            since = self.writing_since
            stuck = since is not None and (
                self.backlog > BACKLOG or time.monotonic() - since >= STUCK
            )
            if not stuck and self.waiting() < WAITING:
                return
            await anyio.sleep(0.005)  # (20 ms capped a client's pings at 400/s: round 42)

    def _write_all(self, data: bytes) -> None:
        import time

        view = memoryview(data)
        self.writing_since = time.monotonic()
        try:
            while view:
                view = view[self.fh.write(view) :]
        finally:
            self.writing_since = None


class CappedLines:
    """An async iterator of the lines on ``fd`` (as text), none longer than ``cap`` bytes.

    A longer line is never held: its first HEAD bytes are kept, the rest is dropped as it
    arrives, and ``writer`` answers it with a JSON-RPC error carrying its id (``null`` if
    the id is not among the first bytes)."""

    def __init__(self, fd: int, cap: int, writer: LineWriter) -> None:
        self.fd = fd
        self.cap = cap
        self.writer = writer
        self.buf = bytearray()
        self.dropping: Optional[bytearray] = None  # the head of a line being dropped
        self.dropped = 0
        self.eof = False

    def __aiter__(self) -> CappedLines:
        return self

    async def __anext__(self) -> str:
        await self.writer.room()  # (no new request while the client leaves replies unread)
        while True:
            line = self._take_line()
            if line is not None and len(line) > self.cap:
                # (its newline came in the read that took it past the cap, which _fill
                # looks at only for a line still open: it reached the SDK, red team 92)
                self.dropping, self.dropped = bytearray(line[:HEAD]), len(line)
                await self._refuse()
                continue
            if line is not None:
                text = line.decode("utf-8", "replace")
                if await self._parses(text, line):
                    return text
                continue
            if self.eof:
                raise StopAsyncIteration
            await self._fill()

    async def _parses(self, text: str, line: bytes) -> bool:
        """Whether the SDK will parse ``text``; if not, the client gets a JSON-RPC error
        with the message's id here. The SDK drops a message it cannot parse without a
        reply, so a request the client could send (e.g. JSON with a lone surrogate escape,
        "\\ud800", which the SDK's parser refuses) would wait for ever."""
        if not text.strip(" \t\r\n"):  # (JSON's blanks: a "\x0b" line is no message)
            return True
        from mcp import types

        try:
            message = types.jsonrpc_message_adapter.validate_json(text, by_name=False)
        except ValueError as exc:
            await self.writer.send_line(
                {"jsonrpc": "2.0", "id": message_id(line[:HEAD]), "error": _refusal(text, exc)}
            )
            return False
        if isinstance(message, types.JSONRPCNotification) and _has_id(text):
            # A request whose id is not a string or a number (an object, an array, null,
            # a float, true): the SDK takes it for a notification and never answers, so
            # the client would wait for ever. JSON-RPC: Invalid Request, id null.
            await self.writer.send_line(
                {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {
                        "code": INVALID_REQUEST,
                        "message": "invalid request: the id must be a string or an integer",
                    },
                }
            )
            return False
        return True

    def _take_line(self) -> Optional[bytes]:
        end = self.buf.find(b"\n")
        if end < 0:
            if self.eof and self.buf and self.dropping is None:
                line, self.buf = bytes(self.buf), bytearray()
                return line  # a last line without a newline
            return None
        line = bytes(self.buf[:end])
        del self.buf[: end + 1]
        return line

    async def _fill(self) -> None:
        import anyio

        # abandon_on_cancel: a read blocked on a silent client must not hold up shutdown
        chunk = await anyio.to_thread.run_sync(os.read, self.fd, CHUNK, abandon_on_cancel=True)
        if not chunk:
            self.eof = True
            if self.dropping is not None:
                await self._refuse()
            return
        if self.dropping is not None:
            await self._drop(chunk)
            return
        self.buf += chunk
        if self.buf.find(b"\n") < 0 and len(self.buf) > self.cap:
            self.dropping, self.dropped = bytearray(self.buf[:HEAD]), len(self.buf)
            self.buf = bytearray()

    async def _drop(self, chunk: bytes) -> None:
        """Throw away the oversized line up to its newline; keep what follows it."""
        end = chunk.find(b"\n")
        if end < 0:
            self.dropped += len(chunk)
            return
        self.dropped += end
        self.buf += chunk[end + 1 :]
        await self._refuse()

    async def _refuse(self) -> None:
        head, size = bytes(self.dropping or b""), self.dropped
        self.dropping, self.dropped = None, 0
        await self.writer.send_line(
            {
                "jsonrpc": "2.0",
                "id": message_id(head),
                "error": {
                    "code": TOO_LARGE,
                    "message": f"request too large: a message of {size} bytes or more; "
                    f"this server reads at most {self.cap} bytes per message",
                    "data": {"limit": "max_request", "limit_value": self.cap},
                },
            }
        )


def _refusal(text: str, exc: ValueError) -> dict:
    """The JSON-RPC error for a line the SDK cannot take: -32700 (Parse error) if its
    parser cannot read it, -32600 (Invalid Request) if it is JSON but not one message.
    A batch, ``[]`` or a bare number had -32700 and the name of the SDK's pydantic model
    (red team round 79); MCP since 2025-06-18 has no batches."""
    kinds = _error_kinds(exc)
    if not kinds or "json_invalid" in kinds:
        lines = str(exc).strip().splitlines()
        reason = (lines[1] if len(lines) > 1 else lines[0] if lines else "invalid").strip()
        reason = reason.split(" [type=")[0]  # not the input pydantic quotes back
        return {"code": PARSE_ERROR, "message": f"invalid message: {reason[:200]}"}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # (read by the SDK's parser, not by Python's)
        value = {}
    if isinstance(value, list):
        what = "a batch (an array of messages), which MCP does not support: send one per line"
    elif not isinstance(value, dict):
        what = f"a JSON {_json_kind(value)}, not a JSON-RPC message (an object)"
    elif value.get("jsonrpc") != "2.0":
        what = 'not a JSON-RPC 2.0 message ("jsonrpc": "2.0" is missing)'
    else:
        what = "not a JSON-RPC request, notification or response (a member is missing)"
    return {"code": INVALID_REQUEST, "message": f"invalid request: {what}"}


def _error_kinds(exc: ValueError) -> set:
    """The types of pydantic's errors in ``exc`` (empty if it is not pydantic's)."""
    try:
        return {str(e.get("type")) for e in exc.errors()}  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - any other ValueError
        return set()


def _json_kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "literal"
    return "number" if isinstance(value, (int, float)) else "string"


def message_id(head: bytes) -> Any:
    """The top-level ``"id"`` of a JSON-RPC message from its first bytes, else None.

    A small scanner (strings, nesting depth) so an ``"id"`` inside ``params`` is not
    taken for the message's; only ids JSON-RPC allows (a number or a string) count."""
    text = head.decode("utf-8", "replace")
    depth, i, n = 0, 0, len(text)
    decoder = json.JSONDecoder()
    while i < n:
        ch = text[i]
        if ch == '"':
            try:
                key, after = decoder.raw_decode(text, i)
            except (ValueError, RecursionError):
                return None  # cut inside a string
            colon = _skip_space(text, after)
            if depth == 1 and key == "id" and text.startswith(":", colon):
                try:
                    value, _ = decoder.raw_decode(text, _skip_space(text, colon + 1))
                except (ValueError, RecursionError):  # "id": [[[[... deeper than the stack
                    return None
                ok = isinstance(value, (int, str)) and not isinstance(value, bool)
                return value if ok else None
            i = after
            continue
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        i += 1
    return None


def _has_id(text: str) -> bool:
    """Whether a message the SDK took for a notification carries an ``id`` member anyway
    (notifications are small; most have no "id" text at all and are not parsed again)."""
    if '"id"' not in text and "\\u" not in text:  # (a key may be escaped: "\u0069d")
        return False
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # nesting deeper than Python's stack
        return False
    return isinstance(data, dict) and "id" in data


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


@contextlib.asynccontextmanager
async def capped_stdio(cap: int):
    """The SDK's stdio streams over our capped reader and locked writer.

    As the SDK does for its own: fd 0 and 1 are taken for the protocol and pointed at the
    null device and stderr, so nothing else in the process reads requests or writes into
    the reply stream; both are restored on the way out."""
    from mcp.server.stdio import stdio_server

    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
        os.dup2(2, 1)
        writer = LineWriter(wire_out)
        async with stdio_server(CappedLines(wire_in, cap, writer), writer) as streams:
            writer.waiting = _waiting_on(streams[1])
            yield streams
    finally:
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        # wire_in and wire_out stay open: an abandoned read may still be blocked on one,
        # and a closed number could be reused under it (the SDK keeps its copies too).
        for fd in (null, saved_in, saved_out):
            with contextlib.suppress(OSError):
                os.close(fd)
