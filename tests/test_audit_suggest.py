"""``wasmsbx audit --suggest-policy``: least-privilege policies that let the module run, and
tighter ones that make it fail."""

from __future__ import annotations

import sys

import pytest

from wasmsbx import policy as policy_mod

from .conftest import EXAMPLES, GUESTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the Python 3.9 leg
    import tomli as tomllib

FSPROBE = GUESTS / "fsprobe.wasm"

# need(n): grow memory one page at a time n times; trap (unreachable) if a grow is refused.
MEMORY_WAT = """(module
  (memory (export "memory") 1 4)
  (func (export "need") (param $n i32) (result i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (memory.size)))
"""


def suggest(cli, module, *args) -> str:
    result = cli("audit", module, "--suggest-policy", *args)
    assert result.code == 0, result
    return result.stdout


def write_suggestion(cli, isolated, module, *args, name="suggested.toml"):
    result = cli("audit", module, "--suggest-policy", "-o", name, *args)
    assert result.code == 0, result
    return isolated / name


def tighten(path, section, key, value):
    """Rewrite one key of a policy file (through TOML, the way a user would edit it)."""
    import tomli_w

    data = tomllib.loads(path.read_text())
    data.setdefault(section, {})[key] = value
    path.write_text(tomli_w.dumps(data))


# ---------------------------------------------------------------------------- C guest


@pytest.fixture
def fs_policy(isolated):
    data = isolated / "data"
    data.mkdir()
    (data / "x.txt").write_text("hello from the host\n")
    policy = isolated / "audited.toml"
    policy.write_text(
        '[filesystem]\nread_write = ["data"]\n[env]\nset = { GREETING = "hi" }\n'
        '[limits]\ntimeout = "5s"\n'
    )
    return policy


def test_suggestion_for_a_c_guest_lets_it_run(cli, isolated, fs_policy):
    path = write_suggestion(cli, isolated, FSPROBE, "--policy", fs_policy)
    loaded = policy_mod.load(path)
    assert [g.guest for g in loaded.grants] == ["data"]
    assert loaded.values["env.set"] == {"GREETING": "hi"}
    assert loaded.values["limits.timeout"] == 5.0
    assert loaded.values["limits.table_elements"] == 6  # fsprobe's table is 6/6
    read = cli("run", FSPROBE, "--policy", path, "--", "read", "data/x.txt")
    assert (read.code, read.stdout) == (0, "hello from the host\n"), read
    env = cli("run", FSPROBE, "--policy", path, "--", "getenv", "GREETING")
    assert (env.code, env.stdout) == (0, "hi\n")


def test_tighter_than_the_suggestion_fails(cli, isolated, fs_policy):
    path = write_suggestion(cli, isolated, FSPROBE, "--policy", fs_policy)
    tighten(path, "filesystem", "read_write", [])
    denied = cli("run", FSPROBE, "--policy", path, "--", "read", "data/x.txt")
    assert denied.code == 1 and denied.stderr.startswith("err ENOTCAPABLE"), denied
    tighten(path, "limits", "memory", "64KiB")  # below fsprobe's 3 initial pages
    small = cli("run", FSPROBE, "--policy", path, "--", "args")
    assert small.code == 110, small


def test_suggestion_drops_what_the_module_cannot_use(cli, isolated):
    (isolated / "d").mkdir()
    policy = isolated / "broad.toml"
    policy.write_text(
        '[filesystem]\nread_write = ["d"]\n[env]\ninherit = ["*"]\n[runtime]\noptimize = "size"\n'
    )
    text = suggest(cli, EXAMPLES / "add.wat", "--policy", policy)
    data = tomllib.loads(text)
    assert data["filesystem"] == {"read_only": [], "read_write": []}
    assert data["env"] == {"inherit": []}
    assert data["runtime"] == {"optimize": "size"}  # explicit runtime choices are kept
    assert data["stdio"] == {"stdin": "null", "stdout": "null", "stderr": "null"}
    assert data["network"] == {"enabled": False}
    assert data["limits"]["memory"] == "64KiB" and data["limits"]["table_elements"] == 0
    path = isolated / "s.toml"
    path.write_text(text)
    run = cli("run", EXAMPLES / "add.wat", "add", "5", "3", "--policy", path)
    assert (run.code, run.stdout) == (0, "8\n")


def test_suggestion_drops_an_inherit_everything_pattern(cli, isolated):
    policy = isolated / "p.toml"
    policy.write_text('[env]\ninherit = ["*", "LANG"]\n')
    text = suggest(cli, FSPROBE, "--policy", policy)
    assert tomllib.loads(text)["env"] == {"inherit": ["LANG"]}
    assert "dropped an inherit pattern" in text


def test_placeholders_when_the_policy_grants_nothing(cli, isolated):
    text = suggest(cli, EXAMPLES / "wasi" / "hello.wasm")
    assert '# read_only = ["HOST_DIR:/data"]' in text
    assert '# inherit = ["LANG"]' in text
    assert all(len(line) <= 100 for line in text.splitlines())
    path = isolated / "s.toml"
    path.write_text(text)
    loaded = policy_mod.load(path)  # placeholders are comments: it loads as is
    assert loaded.grants == [] and loaded.values["env.inherit"] == ()
    run = cli("run", EXAMPLES / "wasi" / "hello.wasm", "--policy", path, "--", "--env", "HOME")
    assert run.code == 0 and "HOME is not set" in run.stdout, run
    # the placeholder is needed for files: without a grant, a path fails in the guest
    denied = cli("run", EXAMPLES / "wasi" / "hello.wasm", "--policy", path, "--", ".")
    assert denied.code == 1 and "Capabilities insufficient" in denied.stderr


# ---------------------------------------------------------------------------- memory limits


def test_memory_limit_from_the_declared_maximum(cli, isolated):
    (isolated / "mem.wat").write_text(MEMORY_WAT)
    path = write_suggestion(cli, isolated, "mem.wat")
    assert tomllib.loads(path.read_text())["limits"]["memory"] == "256KiB"  # 4 pages
    ok = cli("run", "mem.wat", "need", "3", "--policy", path)
    assert (ok.code, ok.stdout) == (0, "4\n"), ok
    tighten(path, "limits", "memory", "192KiB")
    fails = cli("run", "mem.wat", "need", "3", "--policy", path)
    assert fails.code == 110 and "memory limit" in fails.stderr, fails


def test_memory_limit_never_above_the_policy(cli, isolated):
    (isolated / "big.wat").write_text("(module (memory 1 65536))")
    (isolated / "p.toml").write_text('[limits]\nmemory = "32MiB"\n')
    text = suggest(cli, "big.wat", "--policy", "p.toml")
    assert tomllib.loads(text)["limits"]["memory"] == "32MiB"


def test_memory_limit_raised_to_the_initial_size(cli, isolated):
    (isolated / "fat.wat").write_text('(module (memory 32) (func (export "f")))')
    (isolated / "p.toml").write_text('[limits]\nmemory = "1MiB"\n')
    assert cli("run", "fat.wat", "f", "--policy", "p.toml").code == 110
    path = write_suggestion(cli, isolated, "fat.wat", "--policy", "p.toml")
    assert tomllib.loads(path.read_text())["limits"]["memory"] == "2MiB"
    assert cli("run", "fat.wat", "f", "--policy", path).code == 0


@pytest.mark.parametrize(
    "module",
    sorted(EXAMPLES.glob("*.wat"))
    + sorted(EXAMPLES.glob("wasi/*.wasm"))
    + sorted(GUESTS.glob("*.wat"))
    + sorted(GUESTS.glob("*.wasm")),
    ids=lambda p: p.name,
)
def test_every_suggestion_loads(isolated, module):
    from wasmsbx.audit.report import audit_file, suggest_policy

    text = suggest_policy(audit_file(module, policy_mod.defaults())).to_toml()
    path = isolated / "s.toml"
    path.write_text(text)
    policy_mod.load(path)


# CLI calls run in this process (see the cli fixture): none here needs the real entry point.
pytestmark = pytest.mark.inprocess


def test_a_found_policys_paths_are_suggested_as_it_wrote_them(cli, isolated):
    """A found policy's stdio files and cache folder are pinned to absolute resolved paths
    (policy.confine); a suggestion says them relative to its folder again, as a
    sandbox.toml committed with the project must (red team round 100)."""
    (isolated / "sandbox.toml").write_text(
        '[runtime]\ncache_dir = ".wc"\n[stdio]\nstdout = "logs/out.txt"\n'
    )
    (isolated / "logs").mkdir()
    data = tomllib.loads(suggest(cli, EXAMPLES / "wasi" / "hello.wasm"))
    assert data["runtime"]["cache_dir"] == ".wc"
    assert data["stdio"]["stdout"] == "logs/out.txt", data["stdio"]


def test_a_folder_name_that_is_not_utf8_is_a_clear_error(cli, isolated):
    """Red team 130: a grant of a folder whose name is not UTF-8 (reached by a found
    policy through a link) made `--suggest-policy -o` an internal error (exit 100), and
    printed TOML that is not UTF-8 to stdout. A TOML file cannot name it: exit 2."""
    import os
    import shutil

    shutil.copy(GUESTS / "fsprobe.wasm", isolated)
    os.mkdir(os.fsencode(isolated) + b"/d\xff")
    os.symlink(b"d\xff", os.fsencode(isolated) + b"/link")
    (isolated / "sandbox.toml").write_text('[filesystem]\nread_only = ["link::/d"]\n')
    for extra in ([], ["-o", "s.toml"]):
        result = cli("audit", "fsprobe.wasm", "--suggest-policy", *extra)
        assert result.code == 2, result
        assert "not UTF-8" in result.stderr and "d\\xff" in result.stderr, result
        assert result.stdout == "" and not (isolated / "s.toml").exists(), result
