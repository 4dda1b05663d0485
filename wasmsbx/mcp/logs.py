"""What the server's libraries log (the MCP SDK, uvicorn): one line each, bounded, never
on the event loop's time.

The SDK logs a request handler's exception with its traceback, and its MCPServer sets up
``rich``'s handler, which draws that traceback on the event loop's thread at a cost that
grew with the square of what the client sent: one ``prompts/get`` with a 30 KB name (the
server defines no prompts) blocked every other request for 13 s and wrote 207 KB to
stderr, and 60 one-byte names 19 s (red team round 92). Here each record becomes one line
(``wasmsbx mcp: warning: ...``: its message's first line, control characters escaped, at
most ``LINE_MAX`` characters, no traceback), at most ``BURST`` lines at once and
``PER_SECOND`` a second after that (the rest counted and said once there is room again),
written by a thread of its own from a bounded queue: a stderr that nobody reads blocks
that thread, never the server, and further lines are dropped.

Hand-written: the standard library's QueueHandler blocks or raises on a full queue, and
no logging library rate-limits records.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import Any, Optional

LINE_MAX = 300  # characters of a record's message
BURST = 20  # lines written at once before the rate applies
PER_SECOND = 1.0  # lines a second after that
QUEUE_MAX = 64  # lines waiting for the writer (a blocked stderr): the rest are dropped


class BoundedHandler(logging.Handler):
    """One line per record, rate-limited, written by a daemon thread (see the module)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(logging.WARNING)
        self.stream = stream
        self.tokens = float(BURST)
        self.stamp = time.monotonic()
        self.suppressed = 0
        self.lines: queue.Queue = queue.Queue(QUEUE_MAX)
        self.writer: Optional[threading.Thread] = None

    def emit(self, record: logging.LogRecord) -> None:
        from ..errors import inert

        now = time.monotonic()
        with self.lock:  # (logging.Handler's: emit may come from several threads)
            self.tokens = min(float(BURST), self.tokens + (now - self.stamp) * PER_SECOND)
            self.stamp = now
            if self.tokens < 1:
                self.suppressed += 1
                return
            self.tokens -= 1
            suppressed, self.suppressed = self.suppressed, 0
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a record whose arguments do not format
            text = str(record.msg)
        first = text.split("\n", 1)[0]
        line = f"wasmsbx mcp: {record.levelname.lower()}: {inert(first, LINE_MAX)}"
        if record.exc_info and record.exc_info[1] is not None:
            line += f" ({type(record.exc_info[1]).__name__})"
        if suppressed:
            line = f"wasmsbx mcp: ({suppressed:,} log lines left out)\n{line}"
        self._put(line + "\n")

    def _put(self, line: str) -> None:
        try:
            self.lines.put_nowait(line)
        except queue.Full:
            return  # (stderr is not being read: the line is dropped)
        if self.writer is None:
            self.writer = threading.Thread(target=self._write, name="wasmsbx-mcp-log", daemon=True)
            self.writer.start()

    def _write(self) -> None:
        while True:
            line = self.lines.get()
            stream = self.stream or sys.stderr
            try:
                stream.write(line)
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stderr: nothing to say it on
                pass


def quiet_logging(stream: Any = None) -> BoundedHandler:
    """Route every library's log records through one BoundedHandler (replacing ``rich``'s
    and any other handler on the root logger, and the SDK's and uvicorn's own)."""
    handler = BoundedHandler(stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("mcp", "uvicorn", "uvicorn.error", "uvicorn.access", "sse_starlette"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
    return handler
