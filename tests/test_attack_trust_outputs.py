"""No output lands in the trust folder (red-team): `-o`, `--output`, `--save-baseline`,
`--checkpoint` and a policy's stdio files could overwrite ``secret.key`` or
``trusted_keys``. An overwritten secret is a key someone else chose (a guest's stdout,
an artifact's bytes): whoever knows it can forge native code for you. Only `wasmsbx
trust` writes there."""

from __future__ import annotations

import os

import pytest

from .conftest import EXAMPLES
from .trust_helpers import write_modules

ADD = EXAMPLES / "add.wat"
HELLO = EXAMPLES / "wasi" / "hello.wasm"


@pytest.fixture
def keys(cli, isolated):
    """The trust folder with its secret (made by a first compile) and a signing key."""
    assert cli("compile", ADD).code == 0
    assert cli("trust", "keygen").code == 0
    folder = isolated.parent / "trust"
    return folder, {p.name: p.read_bytes() for p in folder.iterdir()}


def assert_untouched(folder, before):
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def assert_refused(result):
    assert result.code == 105, result
    assert "trust folder" in result.stderr and "hint:" in result.stderr, result


@pytest.mark.parametrize("name", ["secret.key", "signing.key", "trusted_keys", "new.bin"])
def test_compile_o_into_the_trust_folder_is_refused(cli, keys, name):
    folder, before = keys
    result = cli("compile", ADD, "-o", folder / name)
    assert_refused(result)
    assert_untouched(folder, before)


def test_a_symlink_leading_into_the_trust_folder_is_refused(cli, keys, isolated):
    folder, before = keys
    (isolated / "innocent.cwasm").symlink_to(folder / "secret.key")
    assert_refused(cli("compile", ADD, "-o", "innocent.cwasm"))
    assert_untouched(folder, before)


def test_a_relative_path_into_the_trust_folder_is_refused(cli, keys, isolated):
    folder, before = keys
    assert_refused(cli("compile", ADD, "-o", "../trust/../trust/secret.key", cwd=isolated))
    assert_untouched(folder, before)


def test_audit_and_bench_outputs_into_the_trust_folder_are_refused(cli, keys):
    folder, before = keys
    assert_refused(cli("audit", ADD, "--json", "--output", folder / "trusted_keys"))
    assert_refused(cli("bench", ADD, "add", "1", "2", "--save-baseline", folder / "trusted_keys"))
    assert_untouched(folder, before)


def test_a_guests_stdout_into_the_secret_is_refused_even_from_a_named_policy(cli, keys, isolated):
    """With stdout = secret.key the guest would choose your secret key."""
    folder, before = keys
    policy = isolated / "mine.toml"
    policy.write_text(f'[stdio]\nstdout = "{folder / "secret.key"}"\n')
    result = cli("run", HELLO, "--policy", policy, "--", "chosen-key")
    assert_refused(result)
    assert_untouched(folder, before)


def test_the_default_trust_folder_is_protected_too(cli, isolated, tmp_path):
    """Without $WASMSBX_TRUST_DIR the folder is $XDG_CONFIG_HOME/wasmsbx/trust."""
    env = {"WASMSBX_TRUST_DIR": "", "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    assert cli("compile", ADD, env=env).code == 0
    secret = tmp_path / "cfg" / "wasmsbx" / "trust" / "secret.key"
    before = secret.read_bytes()
    assert_refused(cli("compile", ADD, "-o", secret, env=env))
    assert secret.read_bytes() == before


def test_trust_commands_still_write_their_files(cli, keys):
    folder, _ = keys
    good = write_modules(folder.parent / "work")[0]
    public = cli("trust", "keygen", "--force").stdout.strip().split()[-1]
    assert cli("trust", "add", public, "--name", "me").code == 0
    assert "me" in (folder / "trusted_keys").read_text()
    assert cli("compile", good, "-o", folder.parent / "work" / "ok.cwasm").code == 0
    assert os.path.exists(folder.parent / "work" / "ok.cwasm")


def test_an_audit_log_into_the_trust_folder_is_refused(cli, keys):
    folder, before = keys
    assert_refused(cli("run", ADD, "add", "1", "2", "--audit-log", folder / "trusted_keys"))
    assert_untouched(folder, before)
