"""Human units for sizes and durations: "64MB", "64MiB", "512KiB", "500ms", "2s", "1m"."""

from __future__ import annotations

import re
from typing import Any, Union

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_UNITS = {
    "": 1.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
# ASCII digits only: str.isdigit() and int() accept other scripts' digits ("١").
# (Matched whole against the text stripped of ASCII blanks: with blanks on both sides of
# an optional unit, "1" and 40,000 spaces and "!" took 13 s to refuse, a call's limits
# on the MCP server's event loop: red team 123. And never more than TEXT_MAX.)
_NUMBER = re.compile(r"([0-9][0-9_]*)(?:\.([0-9]+))?\s*([a-zA-Z]*)", re.ASCII)
_BLANKS = " \t\n\r\f\v"
TEXT_MAX = 64  # characters of a size or duration given as text, blanks included
SHOWN_MAX = 40  # characters of a refused value an error quotes

# The largest size or count any knob accepts: runtimes, the cache's SQLite records and
# the wasmer child's protocol all hold these in signed 64-bit fields, so a larger value
# would wrap (2^64 + 1024 bytes used to become 1 KiB).
MAX_SIZE = 2**63 - 1
# The longest duration any knob accepts (a year): deadlines are computed in ticks and
# seconds and handed to runtimes and setrlimit, where a huge float would overflow.
MAX_DURATION = 366 * 86400.0

SIZE_EXAMPLE = '"64MiB", "512KiB", "1GB" or a number of bytes'
DURATION_EXAMPLE = '"500ms", "2s", "1m" or a number of seconds'


def _split(text: str) -> tuple:
    """(whole digits, fraction digits, unit) of "1_000.5 MiB"; ValueError if malformed."""
    match = _NUMBER.fullmatch(text.strip(_BLANKS)) if len(text) <= TEXT_MAX else None
    if not match:
        raise ValueError(text)
    return match.group(1).replace("_", ""), match.group(2) or "", match.group(3).lower()


def shown(value: Any) -> str:
    """``repr(value)`` cut to SHOWN_MAX characters: an error quotes what it refuses, not
    a megabyte of it (red team 123: a limit of 1 MB of text came back twice)."""
    if isinstance(value, str) and len(value) > SHOWN_MAX:
        return f"{value[:SHOWN_MAX]!r}... ({len(value):,} characters)"
    if isinstance(value, int) and value.bit_length() > 128:
        return f"a number of {value.bit_length():,} bits"
    return repr(value)


def parse_size(value: Union[str, int], maximum: int = MAX_SIZE) -> int:
    """Bytes from a size. KB/MB/GB are powers of 1000; KiB/MiB/GiB powers of 1024.

    Computed exactly in integers (a float would round 2^64 + 1024), then range-checked:
    a size is never negative and never above ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a size like {SIZE_EXAMPLE}, found {_kind(value)}")
    if isinstance(value, int):
        return _in_range(value, maximum, value, _exact_size)
    try:
        whole, fraction, unit = _split(value)
    except ValueError:
        raise ValueError(f"expected a size like {SIZE_EXAMPLE}, found {shown(value)}") from None
    if unit not in _SIZE_UNITS:
        known = "B, KB, MB, GB, KiB, MiB, GiB"
        raise ValueError(f"unknown size unit {unit!r} in {shown(value)} (use {known})")
    if len(whole) > 40:  # far beyond any maximum; keeps int() of hostile text cheap
        raise ValueError(f"{shown(value)} is too large (at most {_exact_size(maximum)})")
    factor = _SIZE_UNITS[unit]
    part, scale = int(fraction[:40] or 0) * factor, 10 ** len(fraction[:40])
    if part % scale:  # "1.5" (bytes) or "0.3KiB": never silently rounded to whole bytes
        raise ValueError(f"{shown(value)} is not a whole number of bytes")
    n = int(whole) * factor + part // scale
    return _in_range(n, maximum, value, _exact_size)


def parse_duration(value: Union[str, int, float], maximum: float = MAX_DURATION) -> float:
    """Seconds from a duration such as "500ms", "2s", "1m", or a plain number of seconds;
    finite, never negative, never above ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration like {DURATION_EXAMPLE}, found {_kind(value)}")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):  # TOML allows inf, nan
            raise ValueError(f"a duration must be a finite number of seconds, found {value}")
        return _in_range(float(value), maximum, value, _long_duration)
    try:
        whole, fraction, unit = _split(value)
    except ValueError:
        raise ValueError(
            f"expected a duration like {DURATION_EXAMPLE}, found {shown(value)}"
        ) from None
    if unit not in _DURATION_UNITS:
        raise ValueError(f"unknown duration unit {unit!r} in {shown(value)} (use ms, s, m, h, d)")
    if len(whole) > 40:
        raise ValueError(f"{shown(value)} is too long (at most {_long_duration(maximum)})")
    seconds = float(f"{whole}.{fraction or 0}") * _DURATION_UNITS[unit]
    return _in_range(seconds, maximum, value, _long_duration)


def parse_count(value: Union[str, int], maximum: int = MAX_SIZE, minimum: int = 0) -> int:
    """A whole number in ``minimum .. maximum`` (decimal, 0x hex, "_" separators)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if not text.isascii() or len(text) > 64:
                raise ValueError(text)
            number = int(text.replace("_", ""), 0)
        except ValueError:
            raise ValueError(f"expected a whole number, found {shown(value)}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ValueError(f"expected a whole number, found {_kind(value)}")
    if number < minimum:
        raise ValueError(f"expected a whole number >= {minimum}, found {number}")
    return _in_range(number, maximum, value, format_count)


def _in_range(n, maximum, given, fmt):
    if n < 0:
        raise ValueError(f"cannot be negative, found {shown(given)}")
    if n > maximum:
        raise ValueError(f"{shown(given)} is too large (at most {fmt(maximum)})")
    return n


def _exact_size(n: int) -> str:
    return f"{n:,} bytes" if n < 1024 else f"{format_size(n)}, {n:,} bytes"


def _long_duration(seconds: float) -> str:
    return f"{seconds / 86400:g} days" if seconds >= 86400 else format_duration(seconds)


def _kind(value: object) -> str:
    return {bool: "a boolean", float: "a number", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def format_size(n: int) -> str:
    """64 MiB, 512 KiB, 1.5 GiB, 100 B."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            text = f"{n / factor:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{n} B"


def format_limit(n: int) -> str:
    """A limit as set, never rounded: ``format_size`` when that is exact (64 MiB,
    1.5 GiB), else with its bytes too ("64 KiB (65,537 bytes)"): a limit one byte over a
    page is not the page."""
    text = format_size(n)
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if text.endswith(unit):
            if float(text[: -len(unit)]) * factor != n:
                return f"{text} ({n:,} bytes)"
            break
    return text


def format_duration(seconds: float) -> str:
    """1.25 s, 340 ms, 12.5 µs, 1 ns (below a microsecond: a per-call ``timeout=1e-9``
    read "0.0 µs", red team round 83)."""
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    if seconds >= 1e-6 or seconds <= 0:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1e-9:  # (timeout=1e-300 read "1e-291 ns", red team 152)
        return "under 1 ns"
    return f"{seconds * 1e9:.3g} ns"


def format_count(n: int) -> str:
    return f"{n:,}"
