"""Red-team regressions for outputs: a --checkpoint that is not a regular file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

UPPER = Path(__file__).resolve().parent.parent / "examples" / "stream" / "upper.wat"

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


@pytest.fixture
def batch(isolated):
    (isolated / "add.wat").write_text(ADD)
    (isolated / "items.jsonl").write_text("".join(f"[{i}, 1]\n" for i in range(50)))
    return isolated


def test_a_fifo_checkpoint_is_refused_not_waited_on(cli, batch):
    """Reading a FIFO named as --checkpoint blocked for ever (no writer ever comes)."""
    os.mkfifo(batch / "ck")
    for mode in (["add.wat", "add", "--batch", "items.jsonl"], [UPPER, "--stream"]):
        res = cli("run", *mode, "--checkpoint", "ck", input=b"x", timeout=60)
        assert res.code == 105, res
        assert "is a FIFO; a checkpoint must be a regular file" in res.stderr
        assert res.stdout == ""


@pytest.mark.parametrize("target", ["/dev/null", "."])
def test_a_device_or_directory_checkpoint_is_refused(cli, batch, target):
    res = cli("run", "add.wat", "add", "--batch", "items.jsonl", "--checkpoint", target)
    assert res.code == 105, res
    assert "a checkpoint must be a regular file" in res.stderr


def test_an_unwritable_checkpoint_is_refused_before_any_item_runs(cli, batch):
    """A missing folder or a link to nothing failed only at the first save, after
    results had been written."""
    os.symlink("/nonexistent/x", batch / "dangling")
    for target, why in (("nodir/ck", "does not exist"), ("dangling", "missing file")):
        res = cli("run", "add.wat", "add", "--batch", "items.jsonl", "--checkpoint", target)
        assert res.code == 105, res
        assert why in res.stderr and res.stdout == ""
    assert os.path.islink(batch / "dangling") and not (batch / "nodir").exists()


def test_a_regular_checkpoint_still_works(cli, batch):
    res = cli("run", "add.wat", "add", "--batch", "items.jsonl", "--checkpoint", "ck")
    assert res.code == 0 and len(res.stdout.splitlines()) == 50
    assert not (batch / "ck").exists()  # deleted when the run completes


@pytest.mark.parametrize("name", ["-", "--json", "-x.bin"])
@pytest.mark.parametrize("command", ["compile", "audit"])
def test_an_output_named_like_an_option_is_refused_and_nothing_is_written(
    cli, batch, name, command
):
    """`compile add.wat -o -` wrote a file named "-", and `-o --json` one named
    "--json": what was meant was stdout or an option, never such a file."""
    before = sorted(os.listdir(batch))
    args = [command, "add.wat"] + (["--json"] if command == "audit" else [])
    res = cli(*args, "-o", name)
    assert res.code == 105, res
    assert "hint: to write a file of that name, say ./" + name in res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(os.listdir(batch)) == before
    res = cli(*args, "-o", "./" + name)  # the way to ask for that name
    assert res.code == 0, res
    assert (batch / name).is_file()


@pytest.mark.parametrize("command", ["compile", "audit"])
def test_an_output_fifo_nobody_reads_is_refused_not_waited_on(cli, tmp_path, command):
    """Round 40: `compile -o FIFO` and `audit --sarif -o FIFO` waited for a reader for
    ever (--audit-log refused such a FIFO at once). Now 105, nothing written; with a
    reader, the FIFO is written as before."""
    import threading

    from .conftest import EXAMPLES

    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    args = [command, str(EXAMPLES / "add.wat"), "-o", str(fifo)]
    if command == "audit":
        args.insert(2, "--sarif")
    res = cli(*args)
    assert res.code == 105 and "FIFO nobody is reading" in res.stderr, res
    got: list = []

    def read() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        import time

        deadline = time.monotonic() + 60
        res = cli(*args)
        while res.code == 105 and time.monotonic() < deadline:  # (reader not yet open)
            time.sleep(0.05)
            res = cli(*args)
    finally:
        if reader.is_alive():  # (free it whatever happened)
            with open(fifo, "wb"):
                pass
        reader.join(60)
    assert res.code == 0 and got and got[0], res


def test_an_output_name_is_printed_escaped(cli, add):
    """``-o`` names are the user's, but they may come from elsewhere (a script's
    variable): a control character in one reached the terminal, and a newline forged an
    ``error:`` line after "wrote" (red team round 69)."""
    name = "x\x1b[31mred\nerror: forged"
    res = cli("audit", add, "--json", "-o", name)
    assert res.code == 0, res
    assert "\x1b" not in res.stderr and "\nerror: forged" not in res.stderr
    assert "wrote x" in res.stderr


def test_dev_tty_without_a_terminal_is_not_called_a_fifo(add):
    """``-o /dev/tty`` in a session without a controlling terminal said "is a FIFO
    nobody is reading" (red team round 69)."""
    import subprocess
    import sys

    if not os.path.exists("/dev/tty"):
        pytest.skip("no /dev/tty")
    proc = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "audit", str(add), "--json", "-o", "/dev/tty"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, start_new_session=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 105, proc.stderr
    assert "FIFO" not in proc.stderr and "nothing was written" in proc.stderr


def test_a_socket_output_is_called_a_socket(add, isolated):
    import socket
    import subprocess
    import sys

    path = isolated / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "wasmsbx", "audit", str(add), "--json", "-o", str(path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        server.close()
    assert proc.returncode == 105, proc.stderr
    assert "is a socket" in proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["compile", "add.wat", "-o", "out"],
        ["audit", "add.wat", "--json", "-o", "out"],
    ],
    ids=["compile", "audit"],
)
def test_a_write_protected_output_is_not_replaced(cli_inproc, batch, monkeypatch, command):
    """A chmod 444 file was replaced with exit 0 (a new file renamed over it needs only
    the folder's permission), where the shell's `>` refuses it (red team round 77). As
    root, a write-protected file is writable (as for the shell): this process then
    answers os.access as an unprivileged owner would."""
    out = batch / "out"
    out.write_text("precious\n")
    out.chmod(0o444)
    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, **kw):
            if mode & os.W_OK and os.path.realpath(path) == str(out):
                return bool(os.stat(path).st_mode & 0o200)
            return real(path, mode, **kw)

        monkeypatch.setattr(os, "access", access)
    res = cli_inproc(*command)
    assert res.code == 105, res
    assert "is write-protected (mode 0444); not replaced" in res.stderr
    assert out.read_text() == "precious\n"


@pytest.mark.parametrize("command", ["compile", "watch"])
def test_a_link_loop_or_a_dangling_link_is_said_as_such(cli_inproc, isolated, command):
    """`compile` and `watch` called both "no such file" (red team round 77); `run` and
    `audit` said "Too many levels of symbolic links"."""
    os.symlink("b", isolated / "a")
    os.symlink("a", isolated / "b")
    os.symlink("missing.wasm", isolated / "dangling")
    extra = ["-o", "out.cwasm"] if command == "compile" else []
    res = cli_inproc(command, "a", *extra)
    assert res.code == 105, res
    assert "Too many levels of symbolic links" in res.stderr and "no such file" not in res.stderr
    res = cli_inproc(command, "dangling", *extra)
    assert res.code == 105, res
    assert "is a symbolic link to a missing file" in res.stderr


def test_a_new_output_in_a_folder_it_cannot_write_is_refused_before_the_work(
    cli, tmp_path, monkeypatch
):  # (as root, in this process: access() is replaced, see below)
    """Red team round 77: a batch's --checkpoint in a read-only folder (mode 555, run as
    another user) printed every result and then failed (105): the folder's permission
    was found out when the checkpoint was first written. Refused before any item runs.
    (As root, whom modes do not stop, the folder is made unwritable by access() itself.)"""
    from .conftest import EXAMPLES

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access

        def access(path, mode, **kw):
            if os.fspath(path) == str(folder) and mode & os.W_OK:
                return False
            return real_access(path, mode, **kw)

        monkeypatch.setattr(os, "access", access)
        from .conftest import run_main as cli  # (the replaced access(): in this process)
    items = tmp_path / "items.jsonl"
    items.write_text("[1, 2]\n[3, 4]\n")
    try:
        res = cli(
            "run", EXAMPLES / "add.wat", "add", "--batch", items,
            "--checkpoint", folder / "c.ckpt",
        )  # fmt: skip
        assert res.code == 105 and "no permission to make files in the folder" in res.stderr, res
        assert res.stdout == "", res  # (nothing ran)
        res = cli("compile", EXAMPLES / "add.wat", "-o", folder / "add.cwasm")
        assert res.code == 105 and "no permission to make files" in res.stderr, res
    finally:
        folder.chmod(0o755)
