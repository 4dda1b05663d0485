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


def test_an_audit_log_is_opened_in_the_folder_checked(flipping, monkeypatch):
    from wasmsbx import auditlog

    link, safe, trust, swap = flipping
    real_open = os.open

    def open_after_swap(path, *args, **kwargs):  # (the checks by name have passed)
        if str(path).endswith("secret.key"):
            swap()
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_after_swap)
    log = auditlog.AuditLog(str(link / "secret.key"))  # (opened in the folder checked)
    log.fh.close()
    assert (safe / "secret.key").exists()
    assert (trust / "secret.key").read_bytes() == b"KEY"
    assert sorted(os.listdir(trust)) == ["secret.key"]


def test_a_guest_output_is_never_written_into_a_cache_entry(tmp_path, monkeypatch):
    """A cache entry is native code that processes map where it lies: a guest's stdout
    written into one ran as a host's code (red team round 90). Refused in the user's
    cache folders, and wherever a file has an entry's shape (a policy's cache_dir)."""
    from wasmsbx.backends import base

    cache = tmp_path / "cache"
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(cache))
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(tmp_path / "trust"))
    for root in (cache, tmp_path / "project" / ".wc"):
        entry = root / "code" / "ab" / ("ab" * 32 + ".entry")
        entry.parent.mkdir(parents=True)
        entry.write_bytes(b"NATIVE")
        (tmp_path / "out.bin").unlink(missing_ok=True)
        (tmp_path / "out.bin").symlink_to(entry)
        with pytest.raises(errors.WasmsbxError, match="cache folder") as caught:
            base._open_output(str(tmp_path / "out.bin"))
        assert caught.value.exit_code == 105
        assert entry.read_bytes() == b"NATIVE"
    with pytest.raises(errors.WasmsbxError, match="cache folder"):
        outfile.write_output(str(cache / "out.cwasm"), b"x")
    assert not (cache / "out.cwasm").exists()


def test_an_output_refused_as_opened_leaves_no_file_behind(flipping, monkeypatch):
    """The folder is checked before the file is made: an empty file was left in the
    trust folder, or a new sandbox.toml made through a link to nothing (red team 90)."""
    from wasmsbx import auditlog
    from wasmsbx.backends import base

    link, safe, trust, swap = flipping
    swap()
    for opener in (base._open_output, auditlog.AuditLog):
        with pytest.raises(errors.WasmsbxError, match="trust folder"):
            opener(str(link / "new.log"))
    assert sorted(os.listdir(trust)) == ["secret.key"]
    (safe / "log.txt").symlink_to("sandbox.toml")  # (to nothing: following it creates)
    for opener in (base._open_output, auditlog.AuditLog):
        with pytest.raises(errors.WasmsbxError):
            opener(str(safe / "log.txt"))
    assert not (safe / "sandbox.toml").exists()


def test_a_checkpoint_is_removed_in_its_folder_as_checked(flipping):
    from wasmsbx.runner.checkpoint import Checkpoint

    link, safe, trust, swap = flipping
    (safe / "secret.key").write_bytes(b"checkpoint")
    checkpoint = Checkpoint(link / "secret.key", {})
    made = (safe / "secret.key").stat()
    checkpoint.saved_file = (made.st_dev, made.st_ino)  # (as its load or save records)
    swap()  # (at the end of the run, the folder leads into the trust folder)
    with pytest.raises(errors.WasmsbxError, match="trust folder"):
        checkpoint.remove()
    assert (trust / "secret.key").read_bytes() == b"KEY"
    os.replace(link.parent / "d", link.parent / "gone")
    (link.parent / "d").symlink_to(safe)
    checkpoint.remove()
    assert not (safe / "secret.key").exists()


@pytest.mark.parametrize("name", ["/dev/stdout", "/proc/self/fd/1"])
def test_an_output_to_standard_output_through_a_pipe_is_written(name):
    """/dev/stdout and /proc/self/fd/1 lead to "pipe:[N]", which is no path: written as
    they are (red team round 90: refused as a link to a missing file)."""
    import subprocess
    import sys

    code = f"from wasmsbx import outfile; print(outfile.write_output({name!r}, b'hi ') + '.')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi written.\n"


def test_a_checkpoint_removes_only_the_file_it_wrote(tmp_path):
    """The folder swapped for another of the user's at the end of the run: that folder's
    file of the same name stays (red team round 91); a folder at the name is an input
    error, not an internal one."""
    from wasmsbx.runner.checkpoint import Checkpoint

    ours, theirs = tmp_path / "ours", tmp_path / "docs"
    ours.mkdir()
    theirs.mkdir()
    (theirs / "ck.json").write_text("the user's own")
    (tmp_path / "d").symlink_to(ours)
    checkpoint = Checkpoint(tmp_path / "d" / "ck.json", {"what": 1})
    checkpoint.save({"offset": 10})
    assert (ours / "ck.json").exists()
    os.replace(tmp_path / "d", tmp_path / "old")
    (tmp_path / "d").symlink_to(theirs)
    checkpoint.remove()
    assert (theirs / "ck.json").read_text() == "the user's own"
    os.replace(tmp_path / "old", tmp_path / "d")
    checkpoint.remove()
    assert not (ours / "ck.json").exists()
    (ours / "ck.json").mkdir()
    made = (ours / "ck.json").stat()
    checkpoint.saved_file = (made.st_dev, made.st_ino)
    with pytest.raises(errors.WasmsbxError, match="cannot remove") as caught:
        checkpoint.remove()
    assert caught.value.exit_code == 105


def test_a_checkpoint_neither_resumed_nor_saved_removes_nothing(tmp_path):
    # (a batch of no items: what is at the name at its end is not the run's; it was
    # removed by name, the secret key where the name's folder became a bind mount of
    # the trust folder meanwhile: red team 141)
    from wasmsbx.runner.checkpoint import Checkpoint

    checkpoint = Checkpoint(tmp_path / "ck.json", {"what": 1})
    (tmp_path / "ck.json").write_text("someone else's")
    checkpoint.remove()
    assert (tmp_path / "ck.json").read_text() == "someone else's"


@pytest.mark.parametrize("how", ["saved", "loaded"])
def test_a_checkpoint_named_through_a_link_removes_the_file_it_leads_to(tmp_path, how):
    """Written through the link, so removed through it: the link was compared with the
    file written, never matched, and a finished run's checkpoint stayed for every later
    run of the command to resume from (red team 121). The link itself is left."""
    from wasmsbx.runner.checkpoint import Checkpoint

    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "run.ckpt"
    state = {"input_offset": 0, "tail_start": 0, "output_offset": 0, "tail_sha256": "0" * 64}
    Checkpoint(real, {"what": 1}).save(state)
    (tmp_path / "hop").symlink_to("store/run.ckpt")
    (tmp_path / "ck").symlink_to("hop")  # (a link to a link)
    checkpoint = Checkpoint(tmp_path / "ck", {"what": 1})
    if how == "saved":
        checkpoint.save(state)
    else:  # a resume that finished before it saved: what it read is what it removes
        assert checkpoint.load() == state
    checkpoint.remove()
    assert not real.exists()
    assert os.readlink(tmp_path / "ck") == "hop" and os.readlink(tmp_path / "hop")


def test_a_checkpoints_link_to_another_file_since_removes_nothing(tmp_path):
    from wasmsbx.runner.checkpoint import Checkpoint

    (tmp_path / "run.ckpt").write_text("{}")
    (tmp_path / "ck").symlink_to("run.ckpt")
    checkpoint = Checkpoint(tmp_path / "ck", {"what": 1})
    checkpoint.save({"offset": 10})
    assert (tmp_path / "run.ckpt").exists()
    (tmp_path / "notes.txt").write_text("the user's own")
    (tmp_path / "ck").unlink()
    (tmp_path / "ck").symlink_to("notes.txt")
    checkpoint.remove()
    assert (tmp_path / "notes.txt").read_text() == "the user's own"
    assert (tmp_path / "run.ckpt").exists()


def test_a_link_planted_to_a_process_descriptor_is_not_followed(tmp_path):
    """/proc/self/fd/N reached through a link in an ordinary folder: a batch worker's
    reply pipe took a guest's output, which the parent unpickled (red team round 91)."""
    from wasmsbx.backends import base

    read, write = os.pipe()
    try:
        (tmp_path / "out.bin").symlink_to(f"/proc/self/fd/{write}")
        for opener in (base._open_output, lambda p: outfile.write_output(p, b"x")):
            with pytest.raises(errors.WasmsbxError, match="process's descriptor") as caught:
                opener(str(tmp_path / "out.bin"))
            assert caught.value.exit_code == 105
        os.set_blocking(read, False)
        with pytest.raises(BlockingIOError):
            os.read(read, 10)  # (nothing reached the pipe)
    finally:
        os.close(read)
        os.close(write)
