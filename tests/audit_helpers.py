"""Small builders for the audit tests: modules from WAT or raw bytes, policies from TOML."""

from __future__ import annotations

from pathlib import Path

from wasmsbx import policy as policy_mod
from wasmsbx.audit.report import audit_file

WASI = "wasi_snapshot_preview1"

# Imports with the exact WASI signatures, by name.
IMPORTS = {
    "path_open": "(param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)",
    "environ_get": "(param i32 i32) (result i32)",
    "environ_sizes_get": "(param i32 i32) (result i32)",
    "fd_write": "(param i32 i32 i32 i32) (result i32)",
    "fd_read": "(param i32 i32 i32 i32) (result i32)",
    "sock_recv": "(param i32 i32 i32 i32 i32 i32) (result i32)",
    "clock_time_get": "(param i32 i64 i32) (result i32)",
    "random_get": "(param i32 i32) (result i32)",
    "proc_exit": "(param i32)",
    "fd_readdir": "(param i32 i32 i32 i64 i32) (result i32)",
    "fd_filestat_get": "(param i32 i32) (result i32)",
    "fd_filestat_set_times": "(param i32 i64 i64 i32) (result i32)",
}


def wasi_imports(*names: str, module: str = WASI) -> str:
    return "\n".join(f'(import "{module}" "{n}" (func {IMPORTS[n]}))' for n in names)


def write_wat(tmp_path: Path, body: str, name: str = "m.wat") -> Path:
    path = tmp_path / name
    path.write_text(f"(module\n{body}\n)\n")
    return path


def write_policy(tmp_path: Path, text: str, name: str = "sandbox.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_policy(tmp_path: Path, text: str):
    return policy_mod.load(write_policy(tmp_path, text))


def audit_wat(tmp_path: Path, body: str, policy_text: str = ""):
    policy = load_policy(tmp_path, policy_text) if policy_text else policy_mod.defaults()
    return audit_file(write_wat(tmp_path, body), policy)


def rule_ids(report) -> list:
    return [f.rule for f in report.findings]


def only(report, rule: str):
    found = [f for f in report.findings if f.rule == rule]
    assert len(found) == 1, f"expected one {rule}, got {rule_ids(report)}"
    return found[0]


# ---------------------------------------------------------------------------- raw binaries


def leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + leb(len(payload)) + payload


def custom_section(name: str, payload: bytes) -> bytes:
    raw = name.encode()
    return section(0, leb(len(raw)) + raw + payload)


HEADER = b"\0asm\x01\0\0\0"


def module_with_body(body: bytes) -> bytes:
    """One function () -> () whose body (after the locals) is ``body``."""
    types = section(1, b"\x01\x60\x00\x00")
    funcs = section(3, b"\x01\x00")
    code = b"\x00" + body  # no locals
    return HEADER + types + funcs + section(10, b"\x01" + leb(len(code)) + code)
