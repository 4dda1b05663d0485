"""Every number from a flag or a policy is range-checked (issue #13, item 6).

A value out of range is one clear error with exit 2 (a flag) or 101 (a policy): never a
wrap (2^64 fuel used to mean "exhausted", 2^64 + 1024 bytes of memory 1 KiB), never an
abort (a stack above 2 MiB panicked inside wasmtime, exit 134). The properties go through
the real parsers: the CLI entry point in-process, and the policy loader on TOML text.
"""

from __future__ import annotations

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wasmsbx import errors, policy, units
from wasmsbx.cli import main

from .conftest import EXAMPLES

ADD = str(EXAMPLES / "add.wat")
# A run that is not a usage or policy error ends in one of these (stack/fuel can stop it).
RUN_CODES = {0, 103, 110, 111, 112, 113}
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Text a hostile or careless user might type for a number.
NUMBER_TEXT = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(
        [
            "18446744073709551616",
            "18446744073709552640",
            "9223372036854775808",
            "-1",
            "0",
            "1e9",
            "nan",
            "inf",
            "١٢",
            "１２",
            "0x10",
            "1_000",
            "2^64",
            "",
            " ",
            "9" * 100,
        ]
    ),
    st.tuples(
        st.integers(min_value=0, max_value=2**66),
        st.sampled_from(["", "B", "KiB", "MiB", "GiB", "TiB", "ms", "s", "m", "h", "d", "xb"]),
    ).map(lambda t: f"{t[0]}{t[1]}"),
    st.text(max_size=12),
)


def run_in_process(capsys, *args) -> tuple:
    code = main(["run", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--fuel", "18446744073709551616", "too large"),
        ("--fuel", "-5", ">= 0"),
        ("--fuel", "0", "at least 1"),
        ("--fuel", "١٢", "whole number"),
        ("--memory", "18446744073709552640", "too large"),
        ("--memory", "0", "greater than zero"),
        ("--stack", "9223372036854775808", "too large"),
        ("--stack", "4MiB", "too large"),
        ("--stack", "0", "at least"),
        ("--timeout", "99999999999999999999d", "too large"),
        ("--timeout", "0", "greater than zero"),
        ("--timeout", "-1s", "expected a duration"),
    ],
)
def test_flag_out_of_range_is_a_usage_error(capsys, flag, value, message):
    code, out, err = run_in_process(capsys, ADD, "add", "1", "2", f"{flag}={value}")
    assert code == 2, err
    assert err.startswith(f"error: {flag}: ") and message in err and out == ""
    assert "Traceback" not in err


@SETTINGS
@given(flag=st.sampled_from(["--fuel", "--memory", "--timeout", "--stack"]), value=NUMBER_TEXT)
@example(flag="--stack", value="2097152")
@example(flag="--stack", value="2097153")
@example(flag="--fuel", value="9223372036854775807")
def test_any_flag_value_runs_or_is_refused(capsys, flag, value):
    """Whatever the text, the run either happens (the value was in range) or is one usage
    error; in-process, so an abort inside the runtime would kill the test run itself."""
    code, out, err = run_in_process(capsys, ADD, "add", "1", "2", f"{flag}={value}")
    assert "Traceback" not in err and "panicked" not in err
    if code == 2:
        assert err.startswith(f"error: {flag}: "), err
    else:
        assert code in RUN_CODES, (code, err)
        assert code != 0 or out == "3\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch", "-", "-j", "0"], ">= 1, found 0"),
        (["--batch", "-", "-j", "100000"], "at most 256"),
        (["--batch", "-", "-j", "-3"], ">= 1, found -3"),  # (said as for 0: red team 108)
        (["--stream", "--chunk-size", "0"], "between 1 byte"),
        (["--stream", "--chunk-size", "2GiB"], "too large"),
        (["--stream", "--chunk-size", "18446744073709551616"], "too large"),
    ],
)
def test_batch_and_stream_numbers(capsys, extra, message):
    code, _, err = run_in_process(capsys, ADD, "add", *extra)
    assert code == 2 and message in err, err


# ---------------------------------------------------------------------------- the policy

NUMERIC_KEYS = [k for k in policy.SCHEMA if k.kind in policy.KIND_BOUNDS]
TOML_NUMBER = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    NUMBER_TEXT,
    st.booleans(),
)


@SETTINGS
@given(key=st.sampled_from(NUMERIC_KEYS), value=TOML_NUMBER)
def test_policy_numbers_are_in_range_or_refused(tmp_path, key, value):
    path = tmp_path / "p.toml"
    path.write_text(tomli_w.dumps({key.section: {key.name: value}}), encoding="utf-8")
    try:
        loaded = policy.load(path)
    except errors.PolicyError as exc:
        assert exc.exit_code == 101 and key.dotted in exc.message
        return
    least, most = policy.bounds(key)
    checked = loaded[key.dotted]
    assert least <= checked <= most and not isinstance(checked, bool)
    assert checked == checked  # never nan


@pytest.mark.parametrize(
    "line, message",
    [
        ("[limits]\nfuel = 9223372036854775807\n", None),
        ("[limits]\nmemory = 18446744073709552640\n", "too large"),
        ('[limits]\nmemory = "16EiB"\n', "unknown size unit"),
        ("[limits]\ntimeout = inf\n", "finite"),
        ("[limits]\ntimeout = nan\n", "finite"),
        ("[limits]\ntimeout = 1e300\n", "too large"),
        ("[limits]\nstack = 2097153\n", "too large"),
        ("[limits]\ninstances = 0\n", "at least 1"),
        ("[limits]\ntable_elements = 4294967296\n", "too large"),
        ('[runtime]\ncache_size = "99999999999999999999TiB"\n', "too large"),
        ("[limits]\noutput = -1\n", "negative"),
    ],
)
def test_policy_range_messages(tmp_path, line, message):
    path = tmp_path / "p.toml"
    path.write_text(line)
    if message is None:
        policy.load(path)
        return
    with pytest.raises(errors.PolicyError, match=message):
        policy.load(path)


def test_policy_out_of_range_exit_code(cli, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[limits]\nfuel = 9223372036854775808\n")
    res = cli("run", ADD, "add", "1", "2", "--policy", path)
    assert res.code == 101 and "limits.fuel" in res.stderr and "Traceback" not in res.stderr


def test_output_zero_means_no_output(cli, tmp_path):
    """limits.output = 0 is a limit (the guest may write nothing), not "unlimited"."""
    path = tmp_path / "p.toml"
    path.write_text("[limits]\noutput = 0\n")
    res = cli("run", EXAMPLES / "wasi" / "hello.wasm", "--policy", path)
    assert res.code == errors.ExitCode.LIMIT_OUTPUT, res


# ---------------------------------------------------------------------------- units


@given(st.integers(min_value=0, max_value=2**80), st.sampled_from(["", "KiB", "MB", "TiB"]))
def test_sizes_are_exact_or_refused(n, unit):
    text = f"{n}{unit}"
    exact = n * {"": 1, "KiB": 1024, "MB": 10**6, "TiB": 2**40}[unit]
    if exact > units.MAX_SIZE:
        with pytest.raises(ValueError, match="too large"):
            units.parse_size(text)
    else:
        assert units.parse_size(text) == exact


@pytest.mark.parametrize("text", ["١٢", "１２KiB", "1e3", "0x10", "-1", "1.5.5"])
def test_sizes_take_ascii_decimal_only(text):
    with pytest.raises(ValueError):
        units.parse_size(text)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["bench", ADD, "add", "1", "2", "--iterations", "10" * 10], "iterations"),
        (["bench", ADD, "add", "1", "2", "--warmup", "-1"], "warmup"),
        (["bench", ADD, "add", "1", "2", "--budget", "99999999d"], "--budget"),
        (["bench", ADD, "add", "1", "2", "--sample-time", "0"], "--sample-time"),
        (["bench", ADD, "add", "1", "2", "--fuel", str(2**64)], "--fuel"),
        (["bench", ADD, "add", "1", "2", "--stack", "1GiB"], "--stack"),
        (["bench", ADD, "add", "1", "2", "--memory", str(2**64 + 1024)], "--memory"),
        (["cache", "prune", "--max-size", "99999999999999999999TiB"], "too large"),
        (["cache", "prune", "--older-than", "-1d"], "expected a duration"),
        (["watch", ADD, "add", "1", "2", "--debounce", "1e9"], "--debounce"),
        (["compile", ADD, "--backend", "nope"], "--backend"),
    ],
)
def test_other_commands_range_check_their_numbers(cli, args, flag):
    res = cli(*args)
    assert res.code == 2 and flag in res.stderr and "Traceback" not in res.stderr, res


def test_prune_takes_long_ages(cli):
    res = cli("cache", "prune", "--older-than", "3650d", "--json")
    assert res.code == 0, res


def test_env_flag_takes_globs_as_documented(cli):
    """README: --env NAME may be a glob, as in env.inherit (issue #13, item 15)."""
    hello = EXAMPLES / "wasi" / "hello.wasm"
    res = cli(
        "run",
        hello,
        "--env",
        "APP_*",
        "--",
        "--env",
        "APP_X",
        "--env",
        "OTHER",
        env={"APP_X": "1", "OTHER": "2"},
    )
    assert res.code == 0 and "APP_X=1" in res.stdout and "OTHER is not set" in res.stdout
