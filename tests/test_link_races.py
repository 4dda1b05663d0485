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
