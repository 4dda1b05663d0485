"""A guest's captured output in JSON reports (runner/captured.py): text, or base64 when
JSON's escapes would make it much larger (red teams 104 and 108)."""

from __future__ import annotations

import json

import pytest

from wasmsbx.runner.captured import GROWTH, as_json


@pytest.mark.parametrize(
    "name, data, as_text",
    [
        ("ascii", b"a" * 100_000, True),
        ("short with escapes", b"\x1b[31mred\x1b[0m\n", True),
        ("text in most scripts", "漢字かな ".encode() * 10_000, True),
        ("accented", "héllo wörld ".encode() * 10_000, True),
        ("control bytes", b"\x01" * 100_000, False),
        ("C1 characters", "\u0080".encode() * 100_000, False),
        ("not UTF-8", b"\xff" * 10, False),
    ],
)
def test_captured_output_is_text_or_base64(name, data, as_text):
    shown = as_json(data)
    assert isinstance(shown, str) == as_text, name
    printed = json.dumps(shown)  # (ensure_ascii, as the reports print)
    if not as_text:
        assert len(printed) <= 1.4 * len(data) + 32
    assert as_json(None) is None


def test_watch_reports_captured_output_as_run_does():
    from wasmsbx.watch import _captured

    got = _captured(b"\x01" * 100_000, b"ok\n")
    assert set(got["stdout"]) == {"base64"} and got["stderr"] == "ok\n"


@pytest.mark.parametrize("char", ["\U0001f600", '"', "\\", "\U0001f600\"'"])
def test_the_json_size_is_counted_exactly_so_no_text_grows_past_the_bound(char):
    """Red team 109: the estimate took a character beyond the BMP for 6 bytes (JSON
    writes a surrogate pair, 12) and a quote or backslash for 1 (2), so 64 KiB of emoji
    or quotes went out as text 3 to 3.6 times its size."""
    data = (char * 20000).encode()
    carried = as_json(data)
    size = len(json.dumps(carried))
    assert size <= GROWTH * len(data) + 32, (char, size / len(data))


def test_text_just_within_the_bound_stays_text():
    data = ('"' * 5000 + "a" * 5000).encode()  # (JSON: 1.5 times)
    assert as_json(data) == data.decode()
