"""A component's result counts against limits.output: a hostile guest returns values many
times their size in its memory (strings and lists that all point at the same bytes), which
wasmsbx would otherwise print as gigabytes; and wasmtime's own bound on what one call
copies gets an error that says so."""

from __future__ import annotations

import pytest

from wasmsbx import errors
from wasmsbx import policy as policy_mod
from wasmsbx.components import wave
from wasmsbx.components.types import WitType as T
from wasmsbx.components.values import size_floor

from .component_guests import amplify_guest

MIB = 1 << 20


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    return amplify_guest(tmp_path_factory.mktemp("amplify"))


def _policy(output: str):
    policy = policy_mod.defaults()
    policy_mod.override(policy, "limits.output", output)
    return policy


def test_aliased_strings_are_refused_before_they_are_printed(cli, guest):
    # 100 strings of 1 MiB from 1 MiB of guest memory: printed, 100 MiB (with --json,
    # twice that, and more again for escapes). Before: 25 s and 1.7 GB of RSS.
    res = cli("run", guest, "--invoke", "strings", "100")
    assert res.code == 115, res
    assert res.stdout == ""
    assert "the result of strings is larger" in res.stderr
    assert "limits.output" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_result_within_the_limit_is_printed(cli, guest, tmp_path):
    policy = tmp_path / "sandbox.toml"
    policy.write_text('[limits]\noutput = "3MiB"\n')
    res = cli("run", guest, "--policy", policy, "--invoke", "strings", "2")
    assert res.code == 0, res
    assert res.stdout == '["' + "a" * MIB + '", "' + "a" * MIB + '"]\n'
    res = cli("run", guest, "--policy", policy, "--invoke", "strings", "3")
    assert res.code == 115, res


def test_the_library_refuses_it_too(guest):
    from wasmsbx import Sandbox

    with Sandbox(guest, _policy("2MiB")) as box:
        assert box.call("strings", 1) == ["a" * MIB]
        with pytest.raises(errors.OutputLimitExceeded, match="result of strings"):
            box.call("strings", 3)
        with pytest.raises(errors.OutputLimitExceeded):
            box.call("lists", 2)  # 2 MiB of bytes: at least a character each
        assert box.call("bytes", 100) == bytes(100)  # the instance goes on


def test_small_results_pass_under_an_output_limit_of_zero(guest):
    # limits.output = 0 silences a guest's writes; its results still come back (up to
    # runtime.RESULT_FREE).
    from wasmsbx import Sandbox
    from wasmsbx.components.runtime import RESULT_FREE

    with Sandbox(guest, _policy("0")) as box:
        assert box.call("bytes", 1000) == bytes(1000)
        with pytest.raises(errors.OutputLimitExceeded):
            box.call("bytes", RESULT_FREE + 1)


def test_wasmtimes_bound_on_one_call_is_named(cli, guest, tmp_path):
    # Three aliased lists of 1 MiB: wasmtime's hostcall fuel runs out lifting them, which
    # used to be blamed on a malformed value.
    policy = tmp_path / "sandbox.toml"
    policy.write_text('[limits]\noutput = "1GiB"\n')
    res = cli("run", guest, "--policy", policy, "--invoke", "lists", "3")
    assert res.code == 103, res
    assert "more than wasmtime copies between host and guest in one call" in res.stderr
    assert "malformed" not in res.stderr


STRING, U32 = T("string"), T("u32")


@pytest.mark.parametrize(
    ("value", "t", "floor"),
    [
        (["ab", "c"], T("list", (STRING,)), 4 + (2 + 2) + (1 + 2)),  # ["ab", "c"]: 11
        (b"\0" * 10, T("list", (T("u8"),)), 12),
        ([[1, 2], [3]], T("list", (T("list", (U32,)),)), 4 + 4 + 3),
        ({"a": "xyz", "b": 5}, T("record", (("a", STRING), ("b", U32))), 5 + 1),
        (None, T("option", (STRING,)), 1),
        ("q", T("option", (STRING,)), 1 + 3),
    ],
)
def test_size_floor(value, t, floor):
    assert size_floor(value, t, 1 << 30) == floor


def test_size_floor_stops_past_the_limit():
    many = [["x"] * 10] * 1000  # 43,002 in all
    t = T("list", (T("list", (STRING,)),))
    assert size_floor(many, t, 1 << 30) == 1002 + 1000 * (12 + 10 * 3)
    assert size_floor(many, t, 100) < 1100  # the outer list, and its first element


def _escaped_one_by_one(text: str, quote: str) -> str:
    """wave._escape as it was written before (a character at a time): the reference."""
    out = []
    for c in text:
        if c == quote:
            out.append("\\" + c)
        elif c in {"\\": 1, "\t": 1, "\n": 1, "\r": 1}:
            out.append({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}[c])
        elif ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0:
            out.append(f"\\u{{{ord(c):x}}}")
        else:
            out.append(c)
    return "".join(out)


def test_escapes_by_table_are_the_escapes_one_by_one():
    import random

    alphabet = [chr(i) for i in range(0xB0)] + ["é", "\u2028", "😀", "\ud7ff", "\U0010ffff"]
    rng = random.Random(16)
    samples = ["", "plain", "'\"", "\\", "\x00\x1f\x7f\x9f\xa0"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))) for _ in range(3000)
    ]
    for text in samples:
        for quote in "'\"":
            assert wave._escape(text, quote) == _escaped_one_by_one(text, quote), (text, quote)
