"""Standalone artifacts as a hostile party makes them: forged native code, renamed files,
--artifact, signatures by unknown keys, altered signed artifacts. On every backend that
loads native code."""

from __future__ import annotations

import json

import pytest

from wasmsbx.native import artifact as aot
from wasmsbx.native import trust

from .conftest import capabilities_of
from .trust_helpers import attacker_key, forge, write_modules


@pytest.fixture
def native(backend):
    """A backend that can load native code (every one that declares "aot")."""
    if not capabilities_of(backend).has("aot"):
        pytest.skip(f"{backend} does not load native code")
    return backend


def compile_to(cli, module, out, backend, *extra, env=None):
    result = cli("compile", module, "-o", out, "--backend", backend, *extra, env=env)
    assert result.code == 0, result
    return out.read_bytes()


def test_forged_artifact_is_refused(cli, isolated, native):
    """The attack of issue 12: a real artifact's header around another function's native
    code, the digest recomputed. Tagged with the user's key it would run (the control
    shows the forgery works); tagged any way a forger can, it is refused."""
    good, evil = write_modules(isolated)
    victim = compile_to(cli, good, isolated / "add.cwasm", native)
    donor = compile_to(cli, evil, isolated / "evil.cwasm", native)

    control = isolated / "control.cwasm"
    control.write_bytes(forge(victim, donor, key=trust.tag_key("artifact")))
    assert cli("run", control, "add", "5", "3").stdout == "77\n", "the forgery must be real"

    for key in (None, attacker_key()):
        forged = isolated / "forged.cwasm"
        forged.write_bytes(forge(victim, donor, key=key))
        result = cli("run", forged, "add", "5", "3")
        assert (result.code, result.stdout) == (102, "")
        assert "refused precompiled artifact: it is not authenticated" in result.stderr
        assert "hint: compile it yourself" in result.stderr
        renamed = isolated / "innocent.wasm"  # `run` detects the magic, not the name
        renamed.write_bytes(forged.read_bytes())
        result = cli("run", renamed, "add", "5", "3", "--json")
        assert result.code == 102 and "not authenticated" in result.json()["error"]["message"]
        with_module = cli("run", "--artifact", forged, good, "add", "5", "3")
        assert (with_module.code, with_module.stdout) == (0, "8\n")
        assert "warning:" in with_module.stderr and "using add.wat instead" in with_module.stderr


def test_artifact_of_another_user_is_refused(cli, isolated, tmp_path, native):
    """Made by wasmsbx, unaltered, but with someone else's key: not ours to run."""
    good, _ = write_modules(isolated)
    other = {"WASMSBX_TRUST_DIR": str(tmp_path / "someone-else")}
    compile_to(cli, good, isolated / "theirs.cwasm", native, env=other)
    assert cli("run", isolated / "theirs.cwasm", "add", "1", "2", env=other).stdout == "3\n"
    result = cli("run", isolated / "theirs.cwasm", "add", "1", "2")
    assert result.code == 102 and "carries no signature" in result.stderr


def test_signed_artifact_needs_a_trusted_key(cli, isolated, tmp_path, native):
    good, evil = write_modules(isolated)
    author = {"WASMSBX_TRUST_DIR": str(tmp_path / "author")}
    public = cli("trust", "keygen", env=author).stdout.strip()
    assert public.startswith("ed25519:")
    signed = isolated / "signed.cwasm"
    blob = compile_to(cli, good, signed, native, "--sign", env=author)

    refused = cli("run", signed, "add", "2", "3")
    assert refused.code == 102 and "a key you do not trust" in refused.stderr
    assert f"wasmsbx trust add {public} --name NAME" in refused.stderr  # how to trust it

    assert cli("trust", "add", public, "--name", "ci").code == 0
    ran = cli("run", signed, "add", "2", "3")
    assert (ran.code, ran.stdout) == (0, "5\n")

    # Altered after signing: the code swapped, the tag redone, the author's key kept.
    donor = compile_to(cli, evil, isolated / "evil.cwasm", native)
    signature = aot.signature_of(blob, aot.layout(blob))
    assert signature[0] == trust.decode_public(public)
    altered = forge(blob, donor, key=attacker_key(), signature=signature)
    (isolated / "altered.cwasm").write_bytes(altered)
    result = cli("run", isolated / "altered.cwasm", "add", "2", "3")
    assert result.code == 102 and "its signature by 'ci' does not match" in result.stderr

    assert cli("trust", "remove", "ci").code == 0
    assert cli("run", signed, "add", "2", "3").code == 102


def test_signature_by_an_untrusted_key_with_a_trusted_key_swapped_in(cli, isolated, tmp_path):
    """A forger signs with their own key but writes a trusted public key in front of the
    signature: it does not verify."""
    good, _ = write_modules(isolated)
    author = {"WASMSBX_TRUST_DIR": str(tmp_path / "author")}
    forger = {"WASMSBX_TRUST_DIR": str(tmp_path / "forger")}
    trusted = cli("trust", "keygen", env=author).stdout.strip()
    cli("trust", "keygen", env=forger)
    assert cli("trust", "add", trusted, "--name", "author").code == 0
    blob = compile_to(cli, good, isolated / "f.cwasm", "wasmtime", "--sign", env=forger)
    parts = aot.layout(blob)
    swapped = (
        blob[: parts.signed_end] + trust.decode_public(trusted) + blob[parts.signed_end + 32 :]
    )
    (isolated / "f.cwasm").write_bytes(swapped)
    result = cli("run", isolated / "f.cwasm", "add", "1", "1")
    assert result.code == 102 and "signature by 'author' does not match" in result.stderr


def test_a_cache_entry_is_not_an_artifact(cli, isolated, tmp_path):
    (isolated / "sandbox.toml").write_text("[runtime]\ncache_min_size = 0\n")
    good, _ = write_modules(isolated)
    assert cli("run", good, "add", "1", "1").code == 0
    (entry,) = (tmp_path / "cache").rglob("*.entry")
    result = cli("run", entry, "add", "1", "1")
    # An entry starts with bare native code (cache format 3): not a module, not an artifact.
    assert result.code == 102 and "not a WebAssembly module" in result.stderr
    result = cli("run", good, "add", "1", "1", "--artifact", entry)
    assert result.code == 0 and "refused precompiled artifact: not a wasmsbx" in result.stderr


def test_an_artifact_of_wasmsbx_0_1_is_refused(cli, isolated):
    text = json.dumps({"format": 1, "kind": "artifact"}).encode()
    old = aot.MAGIC + len(text).to_bytes(4, "little") + text + b"\0" * 100
    (isolated / "old.cwasm").write_bytes(old)
    result = cli("run", isolated / "old.cwasm", "add", "1", "1")
    assert result.code == 102 and "format 1" in result.stderr and "hint:" in result.stderr


def test_sign_needs_a_key_and_an_artifact(cli, isolated):
    good, _ = write_modules(isolated)
    result = cli("compile", good, "-o", "x.cwasm", "--sign")
    assert result.code == 2 and "wasmsbx trust keygen" in result.stderr
    assert not (isolated / "x.cwasm").exists()
    result = cli("compile", good, "--sign")
    assert result.code == 2 and "-o FILE" in result.stderr


def test_own_artifact_runs_without_importing_cryptography(cli, isolated):
    """The user's own artifacts are checked by the tag: no Ed25519, no OpenSSL."""
    import subprocess
    import sys

    good, _ = write_modules(isolated)
    compile_to(cli, good, isolated / "a.cwasm", "wasmtime")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "wasmsbx", "run", "a.cwasm", "add", "1", "2"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout == "3\n", proc.stderr
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert not {"cryptography", "hashlib", "platformdirs"} & names


def test_trust_commands(cli, isolated, tmp_path):
    assert cli("trust", "list").stdout.startswith("no trusted keys")
    bad = cli("trust", "add", "ssh-rsa AAAA")
    assert bad.code == 2 and "not a wasmsbx public key" in bad.stderr
    bad = cli("trust", "add", "ed25519:AAAA")
    assert bad.code == 2 and "not a valid Ed25519 public key" in bad.stderr
    public = cli("trust", "keygen", env={"WASMSBX_TRUST_DIR": str(tmp_path / "a")}).stdout
    added = cli("trust", "add", public.strip(), "--name", "ci", "--json").json()
    assert added["name"] == "ci" and added["key"] == public.strip()
    assert cli("trust", "add", public.strip(), "--name", "ci").code == 0  # same key: fine
    for odd in ("a\x1b[2Jb", "x" * 101, "tab\there", "a\u2028b", "a\x85b"):  # (106, 107)
        refused = cli("trust", "add", public.strip(), "--name", odd)
        assert refused.code == 2 and "control characters" in refused.stderr, refused
    listed = cli("trust", "list", "--json").json()["trusted"]
    assert [k["name"] for k in listed] == ["ci"]
    shown = cli("trust", "show", "--json").json()
    assert shown["trust_dir"] == str(tmp_path / "trust") and shown["problems"] == []
    assert cli("trust", "remove", added["id"]).code == 0
    assert cli("trust", "remove", "ci").code == 2
    again = cli("trust", "keygen", env={"WASMSBX_TRUST_DIR": str(tmp_path / "a")})
    assert again.code == 2 and "--force" in again.stderr


def test_a_line_separator_in_the_trusted_keys_file_adds_no_key(isolated, tmp_path):
    """Red team 107: a name holding U+2028 was read back with splitlines(), which split
    there: the rest of the name, an attacker's "ed25519:..." key, became a trusted key
    of its own. Lines end at "\\n" alone now (and trust add refuses such a name)."""
    real = trust.encode_public(
        bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
    )
    other = trust.encode_public(
        bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    )
    trust.add_trusted(real, "author")
    path = trust._trusted_path()
    path.write_text(path.read_text().replace("author", f"Acme Corp\u2028{other} build-bot"))
    assert [k.key for k in trust.trusted_keys()] == [real]


def test_a_relative_trust_dir_is_ignored_not_looked_up_in_the_project(
    cli, tmp_path, isolated, native
):
    """Red team 3: `WASMSBX_TRUST_DIR=keys` named ./keys of whatever folder wasmsbx ran
    in; a cloned project holding keys/secret.key (0600 under umask 077, as git checks it
    out) had artifacts it tagged with that key run as the user's own. A relative value is
    ignored (the XDG rule), and `trust show` says so."""
    import os

    good, _ = write_modules(isolated)
    secret = attacker_key()  # the project's author knows it
    planted = tmp_path / "attacker" / "trust"
    planted.mkdir(parents=True, mode=0o700)
    (planted / "secret.key").write_bytes(secret)
    os.chmod(planted / "secret.key", 0o600)
    artifact = isolated / "tool.cwasm"
    compile_to(cli, good, artifact, native, env={"WASMSBX_TRUST_DIR": str(planted)})
    keys = isolated / "keys"
    keys.mkdir(mode=0o700)
    (keys / "secret.key").write_bytes(secret)
    os.chmod(keys / "secret.key", 0o600)
    env = {"WASMSBX_TRUST_DIR": "keys", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    control = cli(
        "run", artifact, "add", "1", "2", "--backend", native, env={"WASMSBX_TRUST_DIR": str(keys)}
    )
    assert control.code == 0 and control.stdout.strip() == "3", control  # the key works
    result = cli("run", artifact, "add", "1", "2", "--backend", native, env=env)
    assert result.code == 102 and "not authenticated" in result.stderr, result
    shown = cli("trust", "show", "--json", env=env).json()
    assert shown["trust_dir"] == str(tmp_path / "config" / "wasmsbx" / "trust"), shown
    assert any("WASMSBX_TRUST_DIR=keys" in p for p in shown["problems"]), shown


# Ed25519 public keys no private key can have made (red team 106): the identity point,
# the all-zero encoding (order 4), a point of order 8, the order-2 point, and y = p
# (not canonical). Under the identity, R = identity and S = 0 verify for any message.
WEAK_KEYS = [
    bytes([1]) + bytes(31),
    bytes(32),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("ec" + "ff" * 30 + "7f"),
    bytes.fromhex("ed" + "ff" * 30 + "7f"),
]


@pytest.mark.parametrize("weak", WEAK_KEYS, ids=lambda k: k.hex()[:8])
def test_a_key_anyone_can_sign_for_is_never_trusted(cli, isolated, weak):
    text = trust.encode_public(weak)
    result = cli("trust", "add", text, "--name", "vendor")
    assert result.code == 2 and "not a usable Ed25519 public key" in result.stderr, result
    assert "Traceback" not in result.stderr
    assert trust.weak_public(weak) and not trust.verify_signature(weak, weak + bytes(32), b"x")


def test_an_artifact_signed_by_the_identity_point_is_refused(cli, isolated, tmp_path):
    """The forgery of red team 106: a real signed artifact's key and signature replaced
    by the identity point and (R = identity, S = 0), which OpenSSL verifies for every
    message, the key written into the trusted keys file by hand."""
    good, _ = write_modules(isolated)
    author = {"WASMSBX_TRUST_DIR": str(tmp_path / "author")}
    real = cli("trust", "keygen", env=author).stdout.strip()
    blob = compile_to(cli, good, isolated / "s.cwasm", "wasmtime", "--sign", env=author)
    parts = aot.layout(blob)
    identity = bytes([1]) + bytes(31)
    forged = (
        blob[: parts.signed_end] + identity + identity + bytes(32) + blob[parts.signed_end + 96 :]
    )
    (isolated / "s.cwasm").write_bytes(forged)
    # trusted by hand (trust add refuses it): the line is skipped, and the key refused first
    assert cli("trust", "add", real, "--name", "author").code == 0
    path = trust._trusted_path()
    path.write_text(path.read_text() + f"{trust.encode_public(identity)} vendor\n")
    assert [k.name for k in trust.trusted_keys()] == ["author"]
    result = cli("run", isolated / "s.cwasm", "add", "2", "3")
    assert result.code == 102 and "no real public key" in result.stderr, result
    assert result.stdout == ""
