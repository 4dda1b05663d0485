"""A module planted in the working folder (by a guest granted it, or in a folder someone
runs wasmsbx in) is never imported as wasmsbx's own: ``python -m wasmsbx`` puts that
folder first on ``sys.path``, and commands import modules lazily, after the guest ran
(red team round 33 found the same through the compile worker's path)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import EXAMPLES

NAMES = ("json", "rich", "typer", "click", "tomllib", "subprocess", "select")


def test_python_m_wasmsbx_imports_nothing_from_the_working_folder(tmp_path):
    mark = tmp_path / "MARK"
    for name in NAMES:
        (tmp_path / f"{name}.py").write_text(f"open({str(mark)!r}, 'a').write({name!r})\n")
    for argv in (
        ["run", EXAMPLES / "add.wat", "add", "1", "2", "--json"],
        ["backends", "--json"],
        ["audit", EXAMPLES / "add.wat", "--json"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "wasmsbx", *map(str, argv)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc
        assert not mark.exists(), (argv, mark.read_text())
