"""A guest's captured output in JSON reports (runner/captured.py): text, or base64 when
JSON's escapes would make it much larger (red teams 104 and 108)."""

from __future__ import annotations

import json

import pytest

from wasmsbx.runner.captured import as_json


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
