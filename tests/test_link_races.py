"""A link on a path's way replaced while wasmsbx resolves it: Python's non-strict
``os.path.realpath`` raises then (``lstat`` found a link, ``readlink`` finds none, or
nothing), and each check that needs the real path says so as an input error (exit 105),
never an internal error (exit 100). The swap is made here by ``os.readlink`` failing
for one link, as it does when the link is swapped for a folder between the two calls
(red team rounds 82 and 87 raced it for real)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from wasmsbx import errors, outfile
from wasmsbx.cli import crossed


@pytest.fixture
def swapped(tmp_path, monkeypatch) -> Path:
    """A link ``tmp/ln`` to a folder holding ``out.txt``, which, read as a link, is found
    replaced (readlink: EINVAL, "not a link")."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "out.txt").write_text("kept\n")
    link = tmp_path / "ln"
    link.symlink_to(real)
    readlink = os.readlink

    def racing(path, *args, **kwargs):
        if os.fspath(path) == str(link):
            raise OSError(errno.EINVAL, "Invalid argument", os.fspath(path))
        return readlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", racing)
    return link


def assert_changed(caught: pytest.ExceptionInfo) -> None:
    error = caught.value
    assert isinstance(error, errors.InputError)
    assert error.exit_code == 105
    assert "changed while it was read" in error.message
    assert "\n" not in error.message
    assert "run the command again" in error.hint


def test_real_path_is_an_input_error(swapped):
    with pytest.raises(errors.WasmsbxError) as caught:
        errors.real_path(str(swapped / "out.txt"))
    assert_changed(caught)
    assert errors.real_path(str(swapped.parent / "real")) == str(swapped.parent / "real")


@pytest.mark.parametrize(
    "check",
    [outfile.refuse_policy_name, outfile.refuse_trust_folder, crossed.write_path],
    ids=["policy name", "trust folder", "crossed outputs"],
)
def test_output_checks_say_the_path_changed(swapped, check):
    with pytest.raises(errors.WasmsbxError) as caught:
        check(str(swapped / "out.txt"))
    assert_changed(caught)


def test_a_closed_descriptor_check_says_the_path_changed(swapped):
    with pytest.raises(errors.WasmsbxError) as caught:
        crossed._closed_descriptor(str(swapped / "missing"))
    assert_changed(caught)


def test_writing_through_the_link_refuses_and_keeps_the_file(swapped):
    with pytest.raises(errors.WasmsbxError) as caught:
        outfile.write_output(str(swapped / "out.txt"), b"new\n")
    assert_changed(caught)
    assert (swapped.parent / "real" / "out.txt").read_text() == "kept\n"


@pytest.fixture
def flipping(tmp_path, monkeypatch):
    """``race/d``: a link to ``safe``, and a way to swap it for a link to the trust
    folder (atomically, as another user's process would between two system calls)."""
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "secret.key").write_bytes(b"KEY")
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(trust))
    safe = tmp_path / "safe"
    safe.mkdir()
    race = tmp_path / "race"
    race.mkdir()
    (race / "d").symlink_to(safe)

    def swap() -> None:
        (race / "new").symlink_to(trust)
        os.replace(race / "new", race / "d")

    return race / "d", safe, trust, swap


def test_an_output_folder_swapped_after_the_check_is_checked_again(flipping, monkeypatch):
    """Red team round 89: check_output passed on race/d -> safe, the write then followed
    race/d -> trust folder and replaced the secret key (exit 0)."""
    link, safe, trust, swap = flipping
    check = outfile.check_output

    def check_then_swap(*args, **kwargs):
        check(*args, **kwargs)
        swap()

    monkeypatch.setattr(outfile, "check_output", check_then_swap)
    with pytest.raises(errors.WasmsbxError, match="trust folder") as caught:
        outfile.write_output(str(link / "secret.key"), b"ATTACKER")
    assert caught.value.exit_code == 105
    assert sorted(os.listdir(trust)) == ["secret.key"]
    assert (trust / "secret.key").read_bytes() == b"KEY"


def test_an_output_folder_swapped_while_written_keeps_the_folder_checked(flipping, monkeypatch):
    link, safe, trust, swap = flipping
    fill = outfile._fill

    def swap_then_fill(*args, **kwargs):
        swap()
        return fill(*args, **kwargs)

    monkeypatch.setattr(outfile, "_fill", swap_then_fill)
    assert outfile.write_output(str(link / "secret.key"), b"OUTPUT") == "created"
    assert (safe / "secret.key").read_bytes() == b"OUTPUT"  # (the folder checked)
    assert sorted(os.listdir(trust)) == ["secret.key"]  # (no temporary file either)
    assert (trust / "secret.key").read_bytes() == b"KEY"
    assert sorted(os.listdir(safe)) == ["secret.key"]


def test_a_guest_output_file_opened_in_the_trust_folder_is_refused(flipping):
    """A guest's stdout file is opened by name after the checks: a folder swapped for a
    link meanwhile must not hand the guest the secret key to write (nothing truncated)."""
    from wasmsbx.backends import base

    link, safe, trust, swap = flipping
    swap()
    with pytest.raises(errors.WasmsbxError, match="trust folder") as caught:
        base._open_output(str(link / "secret.key"))
    assert caught.value.exit_code == 105
    assert (trust / "secret.key").read_bytes() == b"KEY"
    (safe / "sandbox.toml").write_text("[limits]\n")
    (safe / "log.txt").symlink_to("sandbox.toml")  # (made a link after the checks)
    with pytest.raises(errors.WasmsbxError, match="sandbox.toml"):
        base._open_output(str(safe / "log.txt"))
    assert (safe / "sandbox.toml").read_text() == "[limits]\n"


def test_an_audit_log_opened_in_the_trust_folder_is_refused(flipping, monkeypatch):
    from wasmsbx import auditlog

    link, safe, trust, swap = flipping
    real_open = os.open

    def open_after_swap(path, *args, **kwargs):  # (the checks by name have passed)
        if str(path).endswith("secret.key"):
            swap()
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_after_swap)
    with pytest.raises(errors.WasmsbxError, match="trust folder") as caught:
        auditlog.AuditLog(str(link / "secret.key"))
    assert caught.value.exit_code == 105
    assert (trust / "secret.key").read_bytes() == b"KEY"
