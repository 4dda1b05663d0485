"""Human units for sizes and durations: "64MB", "64MiB", "512KiB", "500ms", "2s", "1m"."""

from __future__ import annotations

import re
from typing import Union

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
_NUMBER = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")

SIZE_EXAMPLE = '"64MiB", "512KiB", "1GB" or a number of bytes'
DURATION_EXAMPLE = '"500ms", "2s", "1m" or a number of seconds'


def _split(text: str) -> tuple:
    match = _NUMBER.match(text)
    if not match:
        raise ValueError(text)
    return float(match.group(1).replace("_", "")), match.group(2).lower()


def parse_size(value: Union[str, int]) -> int:
    """Bytes from a size. KB/MB/GB are powers of 1000; KiB/MiB/GiB powers of 1024."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like {SIZE_EXAMPLE}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    try:
        number, unit = _split(str(value))
    except ValueError:
        raise ValueError(f"expected a size like {SIZE_EXAMPLE}, found {value!r}") from None
    if unit not in _SIZE_UNITS:
        known = "B, KB, MB, GB, KiB, MiB, GiB"
        raise ValueError(f"unknown size unit {unit!r} in {value!r} (use {known})")
    return int(number * _SIZE_UNITS[unit])


def parse_duration(value: Union[str, int, float]) -> float:
    """Seconds from a duration such as "500ms", "2s", "1m", or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like {DURATION_EXAMPLE}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    try:
        number, unit = _split(str(value))
    except ValueError:
        raise ValueError(f"expected a duration like {DURATION_EXAMPLE}, found {value!r}") from None
    if unit not in _DURATION_UNITS:
        raise ValueError(f"unknown duration unit {unit!r} in {value!r} (use ms, s, m, h, d)")
    return number * _DURATION_UNITS[unit]


def format_size(n: int) -> str:
    """64 MiB, 512 KiB, 1.5 GiB, 100 B."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            text = f"{n / factor:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{n} B"


def format_duration(seconds: float) -> str:
    """1.25 s, 340 ms, 12.5 µs."""
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


def format_count(n: int) -> str:
    return f"{n:,}"
