"""No output is written to a file named sandbox.toml (red team round 77).

`run --audit-log sandbox.toml` in a folder without one created the ./sandbox.toml that
every later command there discovered as its policy (invalid TOML: exit 101 from then on).
The same held for every other output wasmsbx writes: an artifact, a report, a baseline, a
checkpoint or a guest's stdout named sandbox.toml broke the folder, or (a guest choosing
its output) wrote the policy the next run there would follow. Each is refused (exit 105)
before anything is written; see also test_audit_log.
"""

from __future__ import annotations

import pytest

from .conftest import EXAMPLES

pytestmark = pytest.mark.inprocess

FAST = ["-n", "3", "--warmup", "0", "--budget", "0.3s", "--sample-time", "1ms"]
HELLO = EXAMPLES / "wasi" / "hello.wasm"

COMMANDS = {
    "compile": ["compile", "add.wat", "-o", "{out}"],
    "audit": ["audit", "add.wat", "--json", "-o", "{out}"],
    "bench-output": ["bench", "add.wat", "add", "1", "2", *FAST, "-o", "{out}"],
    "bench-baseline": ["bench", "add.wat", "add", "1", "2", *FAST, "--save-baseline", "{out}"],
    "checkpoint": ["run", "add.wat", "add", "--batch", "in.jsonl", "--checkpoint", "{out}"],
    "guest-stdout": ["run", HELLO, "--policy", "p.toml"],
}


@pytest.mark.parametrize("out", ["sandbox.toml", "sub/sandbox.toml", "Sandbox.TOML", "link"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_output_is_named_sandbox_toml(cli, isolated, add, command, out):
    (isolated / "sub").mkdir()
    (isolated / "sub" / "sandbox.toml").write_text("")  # (a policy of the defaults)
    (isolated / "link").symlink_to(isolated / "sub" / "sandbox.toml")
    (isolated / "in.jsonl").write_text("[1, 2]\n")
    (isolated / "p.toml").write_text(f'[stdio]\nstdout = "{isolated / out}"\n')
    argv = [str(arg).format(out=out) for arg in COMMANDS[command]]
    result = cli(*argv, cwd=isolated)
    assert result.code == 105, result
    assert "sandbox.toml, the policy file" in result.stderr, result
    assert not (isolated / "sandbox.toml").exists() and not (isolated / "Sandbox.TOML").exists()
    assert [p.name for p in (isolated / "sub").iterdir()] == ["sandbox.toml"]
    assert (isolated / "sub" / "sandbox.toml").read_text() == ""
    assert cli("run", add, "add", "1", "2", cwd=isolated).code == 0


def test_a_suggested_policy_is_the_one_output_a_sandbox_toml_may_be(cli, isolated, add):
    """README, audit: `audit --suggest-policy -o sandbox.toml` writes the project's
    policy, which the next command there discovers as meant."""
    result = cli("audit", add, "--suggest-policy", "-o", "sandbox.toml", cwd=isolated)
    assert result.code == 0, result
    assert "[limits]" in (isolated / "sandbox.toml").read_text()
    assert cli("run", add, "add", "1", "2", cwd=isolated).code == 0


def test_another_name_is_written(cli, isolated, add):
    (isolated / "p.toml").write_text('[stdio]\nstdout = "sandbox.toml.out"\n')
    assert cli("run", HELLO, "--policy", "p.toml", cwd=isolated).code == 0
    assert (isolated / "sandbox.toml.out").read_text().startswith("hello")
    assert cli("compile", add, "-o", "sandbox.cwasm", cwd=isolated).code == 0


def test_the_name_refused_is_the_name_discovered():
    from wasmsbx import outfile, policy

    assert outfile.POLICY_NAME == policy.POLICY_FILENAME


@pytest.mark.parametrize("how", ["audit-log", "guest-stdout"])
def test_an_output_written_in_place_is_not_another_name_of_a_policy(cli, isolated, how):
    """A hard link to another folder's sandbox.toml, named log.jsonl: the audit log was
    appended to the policy (invalid TOML there from then on), a guest's stdout file
    would truncate it (red team round 80). A file of several names is refused for what
    is written in place; outputs replaced whole get a file of their own."""
    import os

    (isolated / "other").mkdir()
    policy = isolated / "other" / "sandbox.toml"
    policy.write_text('[limits]\nmemory = "64MiB"\n')
    os.link(policy, isolated / "log.jsonl")
    (isolated / "p.toml").write_text(f'[stdio]\nstdout = "{isolated / "log.jsonl"}"\n')
    extra = ["--audit-log", "log.jsonl"] if how == "audit-log" else ["--policy", "p.toml"]
    res = cli("run", HELLO, *extra)
    assert res.code == 105, res
    assert "has 2 names (hard links)" in res.stderr
    assert policy.read_text() == '[limits]\nmemory = "64MiB"\n'


def test_a_guest_stdout_file_is_still_written_whole(cli, isolated):
    """It is truncated after the open, once it is known to have one name (it was opened
    with O_TRUNC, before any check of the file opened could be made)."""
    out = isolated / "out.txt"
    out.write_text("old content, longer than what the guest writes, " * 4)
    (isolated / "p.toml").write_text(f'[stdio]\nstdout = "{out}"\n')
    res = cli("run", HELLO, "--policy", "p.toml")
    assert res.code == 0, res
    assert out.read_text().startswith("hello from wasm32-wasi") and "old" not in out.read_text()


def test_a_hard_link_made_just_before_the_open_is_seen(isolated, monkeypatch):
    """The name was checked, then opened: a link made in between went unseen, and the
    audit log was appended to another folder's sandbox.toml (red team round 81, a race
    won about once in 30 runs). The check is made on the descriptor opened."""
    import os

    from wasmsbx import auditlog, errors

    (isolated / "other").mkdir()
    policy = isolated / "other" / "sandbox.toml"
    policy.write_text('[limits]\nmemory = "64MiB"\n')
    log = isolated / "log.jsonl"
    real_open = os.open

    def racing_open(path, flags, *rest, **folder):  # (the other process wins here)
        if os.fspath(path) in (str(log), log.name) and not log.exists():
            os.link(policy, log)
        return real_open(path, flags, *rest, **folder)

    monkeypatch.setattr(auditlog.os, "open", racing_open)
    with pytest.raises(errors.InputError, match="has 2 names"):
        auditlog.AuditLog(str(log))
    assert policy.read_text() == '[limits]\nmemory = "64MiB"\n'
