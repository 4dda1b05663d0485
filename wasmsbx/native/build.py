"""Source to WebAssembly: ``.wat`` text, C (clang, wasm32-wasi) and Rust (cargo/rustc,
wasm32-wasip1, or wasm32-wasi on compilers older than Rust 1.78). Used by
``wasmsbx compile`` and by ``wasmsbx watch``.

    >>> from wasmsbx.native.build import build_source
    >>> wasm = build_source("lib.c", exports=["add"])        # bytes of a .wasm module

A missing toolchain raises :class:`ToolchainMissing` naming what to install; a compiler
error raises :class:`BuildFailed` whose ``output`` is the compiler's own text, verbatim.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

from .. import errors

C_TARGET = "wasm32-wasi"
RUST_TARGET = "wasm32-wasip1"
C_PACKAGES = "clang lld wasi-libc libclang-rt-dev-wasm32"
KINDS = {".wasm": "wasm", ".wat": "wat", ".c": "c", ".rs": "rust"}


class ToolchainMissing(errors.BackendUnavailable):
    """The compiler for this kind of source is not installed."""

    kind = "toolchain"


class BuildFailed(errors.ModuleError):
    """The compiler rejected the source; ``output`` is what it printed."""

    kind = "build"

    def __init__(self, message: str, *, output: str = "", **kw) -> None:
        super().__init__(message, **kw)
        self.output = output

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["output"] = self.output
        return data


class BuildResult(NamedTuple):
    wasm: bytes
    kind: str  # wasm | wat | c | rust | cargo
    command: list  # the compiler invocation ([] for wasm and wat)
    output: str  # the compiler's messages (warnings) on success
    seconds: float

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "size": len(self.wasm),
            "command": list(self.command),
            "output": self.output,
            "seconds": round(self.seconds, 6),
        }


def source_kind(path) -> str:
    """wasm, wat, c, rust (a .rs file) or cargo (a Cargo.toml or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        if (path / "Cargo.toml").is_file():
            return "cargo"
        raise errors.UsageError(
            f"{path}: a directory without Cargo.toml", hint="give a source file or a Cargo project"
        )
    if path.name == "Cargo.toml":
        return "cargo"
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise errors.UsageError(
            f"{path}: unknown kind of source {path.suffix or '(no suffix)'!r}",
            hint="give a .wasm, .wat, .c or .rs file, or a Cargo project directory",
        )
    return kind


def build_source(path, exports: Sequence[str] = (), out=None) -> bytes:
    """The WebAssembly module built from ``path`` (written to ``out`` too, if given)."""
    return build(path, exports, out).wasm


def build(
    path,
    exports: Sequence[str] = (),
    out=None,
    inputs: Sequence = (),
    policy: Any = None,
    check: Any = None,
) -> BuildResult:
    """Build ``path`` to WebAssembly; write it to ``out`` if given (never over one of
    ``inputs`` or the source itself: see wasmsbx.outfile). ``check(out)``: the caller's
    own look at ``out``, again just before it is written (what the build's seconds
    may have changed there)."""
    path = Path(path)
    if not path.exists():
        from ..inputs import broken_link

        why = broken_link(path)
        if why is not None:
            raise errors.InputError(
                f"{path}: {why}", hint="check where the link points", path=str(path)
            )
        raise errors.InputError(f"{path}: no such file", hint="check the path", path=str(path))
    if out is not None:
        from ..outfile import check_output

        check_output(out, [path, *inputs])
    kind = source_kind(path)
    started = time.perf_counter()
    if kind in ("wasm", "wat"):
        from ..wasm.source import read_module

        wasm, command, output = read_module(path, policy), [], ""
    elif kind == "c":
        wasm, command, output = _build_c(path, exports)
    elif kind == "rust":
        wasm, command, output = _build_rust_file(path, exports)
    else:
        wasm, command, output = _build_cargo(path, exports)
    result = BuildResult(wasm, kind, command, output, time.perf_counter() - started)
    if out is not None:
        if check is not None:
            check(str(out))
        write_atomic(Path(out), wasm, inputs=[path, *inputs])
    return result


def write_atomic(path: Path, data: bytes, inputs: Sequence = ()) -> None:
    """Write an output file the safe way (wasmsbx.outfile: never over a device, a link
    or an input; atomically for regular files)."""
    from ..outfile import write_output

    write_output(path, data, inputs=inputs)


# ---------------------------------------------------------------------------- C


def _build_c(path: Path, exports: Sequence[str]) -> tuple:
    import shutil
    import tempfile

    clang = shutil.which("clang")
    if clang is None:
        raise ToolchainMissing(
            "cannot compile C: clang is not installed",
            hint=f"install {C_PACKAGES} (Debian/Ubuntu: apt-get install {C_PACKAGES})",
        )
    with tempfile.TemporaryDirectory(prefix="wasmsbx-build-") as tmp:
        target = Path(tmp) / (path.stem + ".wasm")
        command = [clang, f"--target={C_TARGET}", "-O2", "-o", str(target), str(path)]
        if exports:
            # A library: no main, exports by name (wasmsbx calls _initialize first).
            command[3:3] = ["-mexec-model=reactor"] + [f"-Wl,--export={n}" for n in exports]
        output = _run(command, f"clang failed to compile {path}", _c_toolchain_hint)
        return target.read_bytes(), command, output


def _c_toolchain_hint(output: str) -> Optional[ToolchainMissing]:
    """clang is there but part of the wasm32-wasi toolchain is not."""
    missing = None
    if "wasm-ld" in output and ("not found" in output or "No such file" in output):
        missing = "lld (the wasm-ld linker)"
    elif "libclang_rt.builtins-wasm32" in output:
        missing = "libclang-rt-dev-wasm32 (compiler builtins for wasm32)"
    elif "file not found" in output and "#include <" in output:
        missing = "wasi-libc (the C library for wasm32-wasi)"
    if missing is None:
        return None
    return ToolchainMissing(
        f"cannot compile C for {C_TARGET}: {missing} is not installed",
        hint=f"install {C_PACKAGES} (Debian/Ubuntu: apt-get install {C_PACKAGES})",
    )


# ---------------------------------------------------------------------------- Rust

# The same target under both names: Rust 1.78 renamed wasm32-wasi to wasm32-wasip1 and
# 1.84 dropped the old name; distributions still ship older compilers (Debian 12: 1.63
# with wasm32-wasi in libstd-rust-dev-wasm32), so the first one installed is used.
RUST_TARGETS = (RUST_TARGET, "wasm32-wasi")
RUST_INSTALL = (
    f"rustup target add {RUST_TARGET}  (or on Debian/Ubuntu: apt-get install rustc cargo "
    "libstd-rust-dev-wasm32)"
)


class RustToolchain(NamedTuple):
    rustc: str
    cargo: Optional[str]
    target: str


def _rust_tool(name: str) -> Optional[str]:
    """$RUSTC / $CARGO (as cargo itself reads them), else the one on PATH."""
    chosen = os.environ.get(name.upper())
    import shutil

    return shutil.which(chosen) if chosen else shutil.which(name)


def rust_toolchain(need_cargo: bool = False, cwd: Optional[Path] = None) -> RustToolchain:
    """The rustc (and cargo) to use and the WebAssembly target they have installed;
    ToolchainMissing naming what to install otherwise. ``cwd`` is the project, where a
    rust-toolchain file may choose another compiler."""
    rustc, cargo = _rust_tool("rustc"), _rust_tool("cargo")
    missing = "rustc" if rustc is None else "cargo" if need_cargo and cargo is None else None
    if missing:
        raise ToolchainMissing(
            f"cannot compile Rust: {missing} is not installed",
            hint=f"install Rust with rustup (https://rustup.rs), then `{RUST_INSTALL}`",
        )
    for target in RUST_TARGETS:
        try:
            proc = subprocess.run(
                [rustc, "--print", "target-libdir", "--target", target],
                capture_output=True,
                text=True,
                cwd=str(cwd) if cwd else None,
            )
        except OSError as exc:
            raise ToolchainMissing(
                f"cannot run {rustc}: {exc.strerror}", hint=RUST_INSTALL
            ) from None
        libdir = proc.stdout.strip()
        if proc.returncode == 0 and libdir and Path(libdir).is_dir():
            return RustToolchain(rustc, cargo, target)
    raise ToolchainMissing(
        f"cannot compile Rust: {rustc} has no WebAssembly target installed "
        f"(looked for {' and '.join(RUST_TARGETS)})",
        hint=RUST_INSTALL,
    )


def _link_exports(exports: Sequence[str]) -> list:
    return [arg for n in exports for arg in ("-C", f"link-arg=--export={n}")]


def _build_rust_file(path: Path, exports: Sequence[str]) -> tuple:
    given, path = path, path.resolve()  # rustc runs in the source's folder, as the target
    tools = rust_toolchain(cwd=path.parent)  # check did: a rust-toolchain file applies to both
    import tempfile  # here: a .wasm source, what `compile` mostly gets, needs none of it

    with tempfile.TemporaryDirectory(prefix="wasmsbx-build-") as tmp:
        target = Path(tmp) / (path.stem + ".wasm")
        crate = ["--crate-type", "cdylib"] if exports else []
        # strip=debuginfo: std's DWARF is most of a module (5.7 MB of a 5.8 MB add());
        # the name section, which traps and profiles use, stays.
        command = [tools.rustc, "--target", tools.target, "-O", "-C", "strip=debuginfo"]
        command += [*crate, *_link_exports(exports), "-o", str(target), str(path)]
        output = _run(command, f"rustc failed to compile {given}", cwd=path.parent)
        return target.read_bytes(), command, output


def _build_cargo(path: Path, exports: Sequence[str]) -> tuple:
    import json

    manifest = path if path.name == "Cargo.toml" else path / "Cargo.toml"
    tools = rust_toolchain(need_cargo=True, cwd=manifest.parent)
    command = [tools.cargo, "build", "--release", "--target", tools.target]
    command += ["--manifest-path", str(manifest), "--message-format=json-render-diagnostics"]
    env = dict(os.environ, RUSTC=tools.rustc)  # the rustc whose target was checked
    if exports:
        flags = " ".join(f"-C link-arg=--export={n}" for n in exports)
        env["RUSTFLAGS"] = (env.get("RUSTFLAGS", "") + " " + flags).strip()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
    except OSError as exc:
        raise ToolchainMissing(f"cannot run {tools.cargo}: {exc.strerror}") from None
    if proc.returncode != 0:
        raise BuildFailed(
            f"cargo failed to build {manifest.parent}", output=proc.stderr, path=str(path)
        )
    wasm_files = []
    for line in proc.stdout.splitlines():
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # (RecursionError: a line of [[[[...)
            continue
        if message.get("reason") == "compiler-artifact":
            wasm_files += [f for f in message.get("filenames", []) if f.endswith(".wasm")]
    if not wasm_files:
        raise BuildFailed(
            f"cargo built {manifest.parent} but produced no .wasm",
            hint='make it a binary, or a library with crate-type = ["cdylib"]',
            output=proc.stderr,
        )
    return Path(wasm_files[-1]).read_bytes(), command, proc.stderr


# ---------------------------------------------------------------------------- running tools


def _run(command: list, failure: str, diagnose=None, cwd: Optional[Path] = None) -> str:
    """Run a compiler; its messages (warnings) on success, BuildFailed with them on failure."""
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, cwd=str(cwd) if cwd else None
        )
    except OSError as exc:
        raise ToolchainMissing(f"cannot run {command[0]}: {exc.strerror}") from None
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        missing = diagnose(output) if diagnose else None
        if missing is not None:
            missing.output = output  # type: ignore[attr-defined]
            raise missing
        raise BuildFailed(failure, output=output, command=command)
    return output
