"""The derived keys a process keeps (trust.tag_keys): used only while the key file is the
one they were derived from. A key rotated, replaced, removed, turned into a link or a
FIFO between two calls in one process is noticed; so is one replaced while it was read
(red team, round 7)."""

from __future__ import annotations

import os

import pytest
from blake3 import blake3

from wasmsbx.native import trust


def expected(purpose: str) -> bytes:
    material = trust.secret()
    assert material is not None
    return blake3(material, derive_key_context=trust.CONTEXTS[purpose]).digest()


def key_file():
    return trust.trust_dir() / trust.SECRET_FILE


def replace_key() -> None:
    """Another process's `wasmsbx trust rotate`: a new file renamed over the key."""
    tmp = key_file().with_name("new.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(trust.SECRET_SIZE))
    os.close(fd)
    os.replace(tmp, key_file())


def test_tag_keys_agree_with_tag_key():
    first = trust.tag_keys(("cache-source", "cache-facts"), create=True)
    assert first == (trust.tag_key("cache-source"), trust.tag_key("cache-facts"))
    assert first == (expected("cache-source"), expected("cache-facts"))
    assert trust.tag_keys(()) == ()


def test_a_rotated_key_is_noticed_in_the_same_process():
    old = trust.tag_keys(("cache-facts", "cache-entry"), create=True)
    trust.rotate()
    new = trust.tag_keys(("cache-facts", "cache-entry"))
    assert new != old and new == (expected("cache-facts"), expected("cache-entry"))
    replace_key()
    assert trust.tag_key("cache-facts") == expected("cache-facts") != new[0]


def test_a_removed_key_gives_none():
    trust.tag_key("cache-facts", create=True)
    key_file().unlink()
    assert trust.tag_keys(("cache-source", "cache-facts")) is None
    assert trust.tag_key("cache-facts") is None


@pytest.mark.parametrize("kind", ["symlink", "fifo", "open-mode"])
def test_a_key_file_swapped_for_a_refused_one_raises(tmp_path, kind):
    trust.tag_keys(("cache-source", "cache-facts"), create=True)
    path = key_file()
    if kind == "symlink":
        target = tmp_path / "elsewhere.key"
        target.write_bytes(path.read_bytes())
        target.chmod(0o600)
        path.unlink()
        path.symlink_to(target)
    elif kind == "fifo":
        path.unlink()
        os.mkfifo(path, 0o600)
    else:
        path.chmod(0o644)
    with pytest.raises(trust.KeyProblem):
        trust.tag_keys(("cache-source", "cache-facts"))
    with pytest.raises(trust.KeyProblem):
        trust.tag_key("cache-facts")


def test_a_key_replaced_while_it_is_read_is_not_kept(monkeypatch):
    """A rotation that lands between the read of the key file and the look at it that
    the derived keys are remembered under: the keys of the old secret must not be kept
    under the new file's signature (they would be used until the file changed again)."""
    trust.tag_key("cache-facts", create=True)
    replace_key()  # (the file changed: the next call reads it)
    real = trust.secret

    def racing(create=False):
        data = real(create)
        replace_key()  # rotated just after this process read the secret
        return data

    monkeypatch.setattr(trust, "secret", racing)
    trust.tag_keys(("cache-source", "cache-facts"))
    monkeypatch.setattr(trust, "secret", real)
    assert trust.tag_keys(("cache-source", "cache-facts")) == (
        expected("cache-source"),
        expected("cache-facts"),
    )
    assert trust.tag_key("cache-entry") == expected("cache-entry")
