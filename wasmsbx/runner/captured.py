"""A guest's captured stdout or stderr as a JSON report carries it (`run --json`, `watch
--json`): its text, or ``{"base64": ...}``.

Text when it is UTF-8 and JSON's escapes keep it within 2.5 times its size. JSON (with
``ensure_ascii``) writes a control byte as 6 bytes (``\\u0001``) and a character beyond
ASCII as 6 or 12: a guest's 64 MiB of ``\\x01`` made 402 MB of report and 947 MB of RSS
(red team 104), 63 MiB of U+0080 198 MB (red team 108). Base64 costs 4/3. Short output
(4 KiB) is always text: a colour escape or two is no reason for base64, and text in most
scripts (2 to 3 bytes a character in UTF-8, 6 in JSON) stays text.
"""

from __future__ import annotations

import base64
from typing import Any, Optional

# The bytes JSON writes as 6-byte escapes: control characters but tab and newline (2 each).
_CONTROL = bytes(b for b in range(32) if b not in (9, 10)) + b"\x7f"
_NOT_CONTROL = bytes(b for b in range(256) if b not in _CONTROL)
_ASCII = bytes(range(128))
SHORT = 4096
GROWTH = 2.5  # what JSON's escapes may make of a text before base64 is used instead


def as_json(data: Optional[bytes]) -> Any:
    """``data`` as the report carries it (None stays None)."""
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _base64(data)
    if len(data) <= SHORT:
        return text
    control = len(data.translate(None, _NOT_CONTROL))
    ascii_ = len(data) - len(data.translate(None, _ASCII))
    beyond = len(text) - ascii_  # (characters beyond ASCII: 6 bytes each in JSON, or 12)
    size = ascii_ + 5 * control + 6 * beyond  # (about: quotes and backslashes take 2)
    return text if size <= GROWTH * len(data) else _base64(data)


def _base64(data: bytes) -> dict:
    return {"base64": base64.b64encode(data).decode("ascii")}
