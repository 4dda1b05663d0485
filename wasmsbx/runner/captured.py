"""A guest's captured stdout or stderr as a JSON report carries it (`run --json`, `watch
--json`): its text, or ``{"base64": ...}``.

Text when it is UTF-8 and JSON's escapes keep it within 2.5 times its size. JSON (with
``ensure_ascii``) writes a control byte as 6 bytes (``\\u0001``) and a character beyond
ASCII as 6 or 12: a guest's 64 MiB of ``\\x01`` made 402 MB of report and 947 MB of RSS
(red team 104), 63 MiB of U+0080 198 MB (red team 108). Base64 costs 4/3. Short output
(4 KiB) is always text: a colour escape or two is no reason for base64, and text in most
scripts (2 to 3 bytes a character in UTF-8, 6 in JSON) stays text. The size JSON will make
is counted exactly, byte class by byte class (red team 109: an estimate that took a
character beyond the BMP for 6 bytes, not 12, and a quote for 1, let 3.6 times through).
"""

from __future__ import annotations

import base64
from typing import Any, Optional

# What JSON (ensure_ascii) makes of each byte of UTF-8 text, by class: a quote, a backslash
# and the five controls with a short escape take 2 bytes; other controls and DEL 6
# (``\u0001``); a character beyond ASCII 6 (``\u00e9``), or 12 beyond the BMP (a surrogate
# pair), counted at its first byte, its continuation bytes 0.
_TWO = b'"\\\b\f\n\r\t'
_SIX = bytes(b for b in range(32) if b not in _TWO) + b"\x7f" + bytes(range(0xC0, 0xF0))
_TWELVE = bytes(range(0xF0, 0xF8))
_ZERO = bytes(range(0x80, 0xC0))
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
    size = len(data) + _count(data, _TWO) + 5 * _count(data, _SIX)
    size += 11 * _count(data, _TWELVE) - _count(data, _ZERO)
    return text if size <= GROWTH * len(data) else _base64(data)


def _count(data: bytes, kinds: bytes) -> int:
    """How many bytes of ``data`` are among ``kinds`` (bytes.translate: C speed)."""
    return len(data) - len(data.translate(None, kinds))


def _base64(data: bytes) -> dict:
    return {"base64": base64.b64encode(data).decode("ascii")}
