"""Policy: parsing, units, validation messages, discovery, overrides, the example file."""

from __future__ import annotations

import pytest

from wasmsbx import policy as P
from wasmsbx.errors import ExitCode, PolicyError
from wasmsbx.units import format_limit, format_size, parse_duration, parse_size

from .conftest import ROOT


@pytest.mark.parametrize(
    "text, expected",
    [
        ("64MB", 64_000_000),
        ("64MiB", 64 * 2**20),
        ("512KiB", 512 * 1024),
        ("1GiB", 2**30),
        ("1gb", 10**9),
        ("100", 100),
        (4096, 4096),
        ("1_000B", 1000),
        ("1.5KiB", 1536),
    ],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        (3, 3.0),
        ("250us", 250e-6),
        ("1.5s", 1.5),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["lots", "64XB", "-1MiB", "", True, -5])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize("bad", ["soon", "5 parsecs", "-1s", False])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_size():
    assert format_size(64 * 2**20) == "64 MiB"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(10) == "10 B"


def test_a_limit_is_never_shown_rounded():
    assert format_limit(64 * 2**20) == "64 MiB"
    assert format_limit(3 * 2**29) == "1.5 GiB"
    assert format_limit(1000) == "1000 B"
    assert format_limit(65537) == "64 KiB (65,537 bytes)"
    assert format_limit(2**30 - 1) == "1024 MiB (1,073,741,823 bytes)"


def test_a_memory_limit_a_byte_past_a_page_is_said_as_set(cli, backend, tmp_path):
    """A guest at one page under limits.memory = 65537B: "memory limit 64 KiB reached:
    guest holds 64 KiB" read as if the limit were the page."""
    wat = tmp_path / "grow.wat"
    wat.write_text(
        '(module (memory 1) (func (export "_start") (drop (memory.grow (i32.const 1)))))'
    )
    res = cli("run", wat, "--memory", "65537B", "--backend", backend)
    assert res.code == 0, res.stderr
    assert "memory limit 64 KiB (65,537 bytes) reached" in res.stderr


def test_every_limit_quoted_is_said_as_set(cli, tmp_path):
    """The same rule for the other places a limit is quoted: the module size refused,
    the backend choice (--explain), the audit's findings."""
    wat = tmp_path / "grow.wat"
    wat.write_text(
        '(module (memory 2) (func (export "f")) (data (i32.const 0) "' + "x" * 2000 + '"))'
    )
    policy = tmp_path / "p.toml"
    policy.write_text('[limits]\nmodule_size = "1025B"\n')
    res = cli("compile", wat, "-o", tmp_path / "out.cwasm", "--policy", policy)
    assert res.code == 117, res.stderr
    assert "larger than limits.module_size 1 KiB (1,025 bytes)" in res.stderr
    policy.write_text('[limits]\nmemory = "65537B"\n')
    res = cli("backends", "--explain", wat, "--policy", policy)
    assert "limits.memory = 64 KiB (65,537 bytes)" in res.stdout, res.stdout
    res = cli("audit", wat, "--policy", policy, "--json")
    said = [f["message"] for f in res.json()["findings"]]
    assert any("but limits.memory is 64 KiB (65,537 bytes)" in m for m in said), said


def test_secure_defaults():
    pol = P.defaults()
    assert pol["limits.memory"] == 256 * 2**20
    assert pol["limits.timeout"] == 10.0
    assert pol["limits.fuel"] is None
    assert pol.grants == []
    assert pol.env_for_guest({"HOME": "/root", "PATH": "/bin"}) == {}
    assert pol["network.enabled"] is False
    assert pol.explicit == ()


def write(tmp_path, text, name="sandbox.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_full_policy(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    path = write(
        tmp_path,
        """
[runtime]
backend = "wasmtime"
optimize = "aggressive"
require = ["fuel"]
prefer = ["wasmtime", "simd"]
[limits]
memory = "64MiB"
fuel = 1_000_000
timeout = "500ms"
stack = "1MiB"
table_elements = 100
[filesystem]
read_only = ["data:/data"]
read_write = ["out"]
[env]
inherit = ["LANG", "APP_*"]
set = { MODE = "fast" }
[stdio]
stdin = "null"
""",
    )
    pol = P.load(path)
    assert pol["limits.memory"] == 64 * 2**20
    assert pol["limits.fuel"] == 1_000_000
    assert pol["limits.timeout"] == 0.5
    assert pol["limits.stack"] == 2**20
    ro, rw = pol["filesystem.read_only"][0], pol["filesystem.read_write"][0]
    assert (ro.host, ro.guest, ro.writable) == (str(tmp_path / "data"), "/data", False)
    assert (rw.host, rw.guest, rw.writable) == (str(tmp_path / "out"), "out", True)
    env = pol.env_for_guest({"LANG": "C", "APP_X": "1", "SECRET": "no"})
    assert env == {"APP_X": "1", "LANG": "C", "MODE": "fast"}
    assert "limits.memory" in pol.explicit and "limits.output" not in pol.explicit


def errmsg(tmp_path, text) -> PolicyError:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        P.load(path)
    assert info.value.exit_code == ExitCode.POLICY
    return info.value


def test_unknown_key_suggests(tmp_path):
    err = errmsg(tmp_path, '[limits]\nmemroy = "64MiB"\n')
    assert "sandbox.toml" in err.message and "limits.memroy" in err.message
    assert "unknown key" in err.message
    assert err.hint == "did you mean `memory`?"


def test_unknown_section_suggests(tmp_path):
    err = errmsg(tmp_path, "[limit]\nmemory = 1\n")
    assert "unknown section [limit]" in err.message
    assert "limits" in err.hint


def test_wrong_type_names_expected_and_found(tmp_path):
    err = errmsg(tmp_path, '[limits]\nmemory = "lots"\n')
    assert "limits.memory" in err.message
    assert "expected a size" in err.message and "'lots'" in err.message
    err = errmsg(tmp_path, '[limits]\nfuel = "many"\n')
    assert "limits.fuel: expected a whole number, found a string" in err.message
    err = errmsg(tmp_path, "[runtime]\ncache = 1\n")
    assert "expected true or false, found an integer" in err.message


def test_impossible_values(tmp_path):
    assert "greater than zero" in errmsg(tmp_path, "[limits]\nmemory = 0\n").message
    assert "not supported" in errmsg(tmp_path, "[network]\nenabled = true\n").message
    err = errmsg(tmp_path, '[runtime]\nbackend = "wasmtim"\n')
    assert "unknown backend" in err.message and "wasmtime" in err.hint
    err = errmsg(tmp_path, '[runtime]\nrequire = ["feul"]\n')
    assert "unknown capability 'feul'" in err.message and "fuel" in err.message
    err = errmsg(tmp_path, '[runtime]\noptimize = "max"\n')
    assert "expected one of none, speed, size, aggressive" in err.message
    err = errmsg(tmp_path, '[filesystem]\nread_only = ["nope:/x"]\n')
    assert "not an existing directory" in err.message
    err = errmsg(tmp_path, "[limits]\nmemory = true\n")
    assert "limits.memory" in err.message
    err = errmsg(tmp_path, "limits = 3\n")
    assert "expected a [limits] table" in err.message


def test_bad_toml(tmp_path):
    err = errmsg(tmp_path, "[limits\nmemory = 1\n")
    assert "invalid TOML" in err.message


def test_binary_policy(tmp_path):
    path = tmp_path / "sandbox.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PolicyError, match="not a UTF-8"):
        P.load(path)


def test_missing_policy_file(tmp_path):
    with pytest.raises(PolicyError, match="policy file not found"):
        P.load(tmp_path / "nope.toml")


def test_discovery_order(tmp_path):
    assert P.discover(cwd=tmp_path).source is None  # defaults
    write(tmp_path, '[limits]\nmemory = "1MiB"\n')
    assert P.discover(cwd=tmp_path)["limits.memory"] == 2**20
    other = write(tmp_path, '[limits]\nmemory = "2MiB"\n', name="other.toml")
    assert P.discover(str(other), cwd=tmp_path)["limits.memory"] == 2 * 2**20


def test_overrides(tmp_path):
    pol = P.defaults()
    P.override(pol, "limits.memory", "32MiB")
    P.override(pol, "limits.fuel", 500)
    assert pol["limits.memory"] == 32 * 2**20 and pol["limits.fuel"] == 500
    with pytest.raises(PolicyError, match="command line: limits.timeout"):
        P.override(pol, "limits.timeout", "forever")
    P.add_grant(pol, f"{tmp_path}:/g", writable=False)
    assert pol.grants[0].guest == "/g" and not pol.grants[0].writable
    with pytest.raises(PolicyError, match="--dir .*not an existing directory"):
        P.add_grant(pol, str(tmp_path / "missing"), writable=True)
    P.add_env(pol, "MODE=x")
    P.add_env(pol, "LANG")
    assert pol.env_for_guest({"LANG": "C", "HOME": "/h"}) == {"LANG": "C", "MODE": "x"}
    with pytest.raises(PolicyError):
        P.add_env(pol, "=oops")


def test_defaults_are_not_shared_between_policies(tmp_path):
    first = P.defaults()
    P.add_env(first, "A=1")
    P.add_grant(first, str(tmp_path), writable=True)
    second = P.defaults()
    assert second["env.set"] == {} and second.grants == []


def test_example_is_fresh_and_loads(tmp_path):
    example = ROOT / "sandbox.toml.example"
    assert example.read_text() == P.render_example(), (
        "sandbox.toml.example is stale: regenerate it from wasmsbx.policy.render_example()"
    )
    pol = P.load(example)
    assert pol.values == P.defaults().values


def test_every_key_documented_in_example():
    text = (ROOT / "sandbox.toml.example").read_text()
    for key in P.SCHEMA:
        assert f"{key.name} =" in text, key.dotted


def test_policy_roundtrip_through_toml(tmp_path):
    import tomli_w

    pol = P.defaults()
    P.override(pol, "limits.timeout", "1500ms")
    P.add_grant(pol, f"{tmp_path}:/w", writable=True)
    path = tmp_path / "round.toml"
    path.write_bytes(tomli_w.dumps(pol.to_toml_dict()).encode())
    again = P.load(path)
    assert again["limits.timeout"] == 1.5
    assert again.grants == pol.grants


def test_a_policy_with_a_byte_order_mark_says_so(tmp_path):
    """tomllib's answer was "Invalid statement (at line 1, column 1)" (red team round 77)."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b'\xef\xbb\xbf[limits]\nmemory = "64MiB"\n')
    with pytest.raises(PolicyError) as info:
        P.load(path)
    assert "starts with a UTF-8 byte-order mark" in str(info.value)
    assert "without a BOM" in info.value.hint


def test_a_grant_whose_link_changes_as_it_is_read_is_a_policy_error(tmp_path, monkeypatch):
    """Red team round 82: a guest swapping a folder for a link made the real-path
    lookup of a --dir raise FileNotFoundError (exit 100, 'internal error') when the link
    it had just seen was gone by the time it was read."""
    import os
    from pathlib import Path

    (tmp_path / "data").mkdir()

    def gone(self, strict=False):
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "resolve", gone)
    policy = P.defaults()
    with pytest.raises(PolicyError, match="changed while it was read: No such file"):
        P.add_grant(policy, f"{tmp_path / 'data'}::/d", writable=True)
    monkeypatch.undo()
    monkeypatch.setattr(os.path, "realpath", lambda *a, **k: gone(Path(a[0])))
    grant = P.Grant(str(tmp_path / "data"), "/d", False)  # (kept as given: refused when opened)
    assert grant.host == str(tmp_path / "data")


@pytest.mark.parametrize("parse", [parse_size, parse_duration])
def test_sizes_and_durations_refuse_long_text_at_once_and_quote_little_of_it(parse):
    """Red team 123: "1", 40,000 spaces and "!" took 13 s to refuse (blanks on both
    sides of an optional unit, on the MCP server's event loop), and a refused value of
    1 MB was quoted whole, twice. Text longer than TEXT_MAX is refused unread; errors
    quote at most SHOWN_MAX characters of it."""
    from wasmsbx.units import SHOWN_MAX, TEXT_MAX

    for text in ("1" + " " * 400_000 + "!", "x" * 1_000_000, "1" * (TEXT_MAX + 1)):
        with pytest.raises(ValueError) as caught:
            parse(text)
        assert len(str(caught.value)) < 200 + SHOWN_MAX, str(caught.value)[:300]
    assert parse(" 1 \t") in (1, 1.0)  # blanks around a number still read


def test_durations_below_a_nanosecond_read_as_such():
    # (red team 152: a per-call timeout=1e-300 read "still running after 1e-291 ns")
    from wasmsbx.units import format_duration

    assert format_duration(1e-300) == "under 1 ns"
    assert format_duration(5e-9) == "5 ns"
    assert format_duration(2.5e-6) == "2.5 µs"
