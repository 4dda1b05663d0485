"""The on-disk format of precompiled native code: cache entries and standalone artifacts.

Loading native code runs whatever machine code it holds, so nothing is deserialized
before it passes :func:`unpack` (the bytes are what their header's digest says) and
:func:`check_compatible` (built by this backend, version, compiler, options and target).
Layout, all written by :func:`pack`::

    MAGIC (8 bytes)  u32 little-endian header length  header (UTF-8 JSON)  payload

The header records what the payload was built for (``fingerprint``, from
``Engine.fingerprint()``), which module it came from (``module.sha256``, and for cache
entries ``module.blake3``, the digest their key is made of), and the payload's size and
BLAKE3 digest (SHA-256 in artifacts of wasmsbx 0.1). The digest detects corruption,
truncation and edits to the payload; it is not a signature: only load artifacts you built
or trust.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any, NamedTuple, Optional

from . import __version__, errors

MAGIC = b"\x89WSBX\r\n\x1a"  # \x89: not text; \r\n: catches newline translation
FORMAT = 1
MAX_HEADER = 1 << 20
KINDS = ("cache-entry", "artifact")


class Corrupt(Exception):
    """The bytes are not an intact artifact (bad magic, header, size or digest)."""


class Artifact(NamedTuple):
    header: dict
    payload: bytes
    origin: Optional[str] = None  # the file it was read from

    @property
    def fingerprint(self) -> dict:
        return self.header["fingerprint"]

    @property
    def module_sha256(self) -> str:
        return self.header["module"]["sha256"]

    @property
    def module_digest(self) -> Optional[str]:
        """The module's BLAKE3 digest, which cache entries' keys are made of."""
        return self.header["module"].get("blake3")

    @property
    def label(self) -> str:
        return label_of(self.fingerprint)

    def to_dict(self) -> dict:
        return dict(self.header)


def label_of(fingerprint: dict) -> str:
    """ "wasmtime 50.0.1 (cranelift, speed) on linux-x86_64" for messages."""
    fp = fingerprint
    extras = ", ".join(str(fp[k]) for k in ("compiler", "optimize") if fp.get(k))
    extras = f" ({extras})" if extras else ""
    return f"{fp.get('backend', '?')} {fp.get('version', '?')}{extras} on {fp.get('target', '?')}"


def normalise(fingerprint: dict) -> dict:
    """The fingerprint as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(fingerprint, sort_keys=True))


def sha256(data: bytes) -> str:
    """The module identity users see (``cache list``, headers): plain SHA-256."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def digest(data: Any) -> str:
    """BLAKE3 of ``data``: the cache key's module digest and the payload digest.

    A hit hashes the module (to find its entry) and the entry's native code (to verify it)
    on every run: SHA-256 of a 1 MB module and its 2.3 MB of code takes 1.6 ms here,
    BLAKE3 0.5 ms, and importing blake3 costs 0.8 ms against hashlib's 2.5 (OpenSSL).
    Both are 256-bit cryptographic digests.
    """
    from blake3 import blake3

    return blake3(data).hexdigest()


def payload_intact(payload: Any, want: dict) -> bool:
    """Whether ``payload`` is what ``want`` (a header's "payload" record) describes.
    Artifacts written by wasmsbx 0.1 carry a SHA-256; both are read."""
    if isinstance(want.get("blake3"), str):
        return digest(payload) == want["blake3"]
    if isinstance(want.get("sha256"), str):
        return sha256(payload) == want["sha256"]
    return False


def is_artifact(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def pack(
    kind: str,
    fingerprint: dict,
    payload: bytes,
    module_sha256: str,
    module_size: int,
    module_name: Optional[str] = None,
    features: tuple = (),
    exports: Optional[list] = None,
    module_digest: Optional[str] = None,
) -> bytes:
    """Header + payload; the header records the payload's digest and what it was built for."""
    header = {
        "format": FORMAT,
        "kind": kind,
        "tool": f"wasmsbx {__version__}",
        "created": time.time(),
        "fingerprint": normalise(fingerprint),
        "module": {
            "sha256": module_sha256,
            "blake3": module_digest,  # what the cache key is made of (cache entries)
            "size": module_size,
            "name": module_name,
            "features": sorted(features),
            # [{name, kind, params, results}]: what a typed call needs, without parsing the
            # module again (or asking wasmtime-py, which aborts on v128 signatures).
            "exports": None if exports is None else list(exports),
        },
        "payload": {"size": len(payload), "blake3": digest(payload)},
    }
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return MAGIC + struct.pack("<I", len(text)) + text + payload


def export_records(wasm: bytes) -> Optional[list]:
    """The module's exports as header records; None if the module cannot be read."""
    from .facts import FactsError, read_interface

    try:
        exports = read_interface(wasm).exports
    except FactsError:
        return None
    return [
        {
            "name": e.name,
            "kind": e.kind,
            "params": list(e.type.params) if e.kind == "func" and e.type is not None else None,
            "results": list(e.type.results) if e.kind == "func" and e.type is not None else None,
        }
        for e in exports
    ]


def read_header(data: bytes) -> dict:
    """The header alone (not verified against the payload)."""
    if not is_artifact(data):
        raise Corrupt("not a wasmsbx artifact (bad magic)")
    start = len(MAGIC) + 4
    if len(data) < start:
        raise Corrupt("truncated header")
    (length,) = struct.unpack("<I", data[len(MAGIC) : start])
    if length > MAX_HEADER or len(data) < start + length:
        raise Corrupt("truncated header" if length <= MAX_HEADER else "header length is absurd")
    try:
        header = json.loads(data[start : start + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Corrupt("unreadable header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise Corrupt(f"unsupported format {found!r} (this wasmsbx reads format {FORMAT})")
    for field in ("fingerprint", "module", "payload", "kind"):
        if field not in header:
            raise Corrupt(f"header lacks {field!r}")
    header["_offset"] = start + length
    return header


def unpack(data: bytes, kind: Optional[str] = None) -> Artifact:
    """Parse and verify: size and digest of the payload must match the header.

    The artifact's payload is a memoryview into ``data`` (writable if ``data`` is a
    bytearray, which lets wasmtime deserialize it without a copy)."""
    header = read_header(data)
    offset = header.pop("_offset")
    if kind is not None and header["kind"] != kind:
        raise Corrupt(f"is a {header['kind']}, expected a {kind}")
    payload = memoryview(data)[offset:]  # no copy: the payload can be megabytes
    want = header["payload"]
    if len(payload) != want.get("size"):
        raise Corrupt(f"truncated: payload is {len(payload)} bytes, header says {want.get('size')}")
    if not payload_intact(payload, want):
        raise Corrupt("digest mismatch: the payload was modified after it was written")
    return Artifact(header, payload)


def differences(built: dict, here: dict) -> list:
    """Human lines for every fingerprint field that differs: "version: 49.0.0 here 50.0.1"."""
    built, here = normalise(built), normalise(here)
    out = []
    for key in sorted(set(built) | set(here)):
        if built.get(key) != here.get(key):
            out.append(
                f"{key}: built for {_short(built.get(key))}, this is {_short(here.get(key))}"
            )
    return out


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_compatible(artifact: Artifact, fingerprint: dict, origin: str) -> None:
    """Raise ModuleError unless ``artifact`` was built for exactly this engine."""
    diff = differences(artifact.fingerprint, fingerprint)
    if diff:
        raise errors.ModuleError(
            f"{origin}: precompiled for {artifact.label}, not for this engine "
            f"({label_of(fingerprint)}): {'; '.join(diff[:3])}",
            hint="rebuild it with `wasmsbx compile MODULE -o FILE` here (same --policy), "
            "or run the original module",
            path=origin,
        )


def load_file(path) -> Artifact:
    """Read and verify a standalone artifact; ModuleError/InputError on failure."""
    from pathlib import Path

    from .inputs import ARTIFACT_MAX_BYTES, TooLarge, read_capped

    path = Path(path)
    try:
        data = read_capped(path, lambda head: ARTIFACT_MAX_BYTES if is_artifact(head) else 0)
    except TooLarge as exc:
        if not exc.limit:  # refused from its first bytes (/dev/zero stops here)
            raise errors.ModuleError(
                f"{path}: refused precompiled artifact: not a wasmsbx artifact (bad magic)",
                hint="give a file written by `wasmsbx compile MODULE -o FILE`",
                path=str(path),
            ) from None
        raise errors.ModuleError(
            f"{path}: refused precompiled artifact: {exc.strerror}", path=str(path)
        ) from None
    except FileNotFoundError:
        raise errors.InputError(f"{path}: no such file", path=str(path)) from None
    except OSError as exc:
        raise errors.InputError(f"{path}: cannot read: {exc.strerror}", path=str(path)) from None
    return verify_artifact(data, str(path))


def verify_artifact(data: bytes, origin: str) -> Artifact:
    try:
        return unpack(data, kind="artifact")._replace(origin=origin)
    except Corrupt as exc:
        raise errors.ModuleError(
            f"{origin}: refused precompiled artifact: {exc}",
            hint="rebuild it with `wasmsbx compile MODULE -o FILE`, or run the original module",
            path=origin,
        ) from None


# ---------------------------------------------------------------------------- for the runner
# Sandbox's handling of standalone artifacts, here so `wasmsbx run` of a plain module does
# not load it. Each takes the Sandbox; a refused artifact is an error when there is no
# module to fall back on, else a warning and the module is compiled instead.


def refuse(box: Any, exc: errors.WasmsbxError) -> None:
    box.artifact = None
    if box.wasm is None:
        raise exc
    box.warnings.append(f"{exc.message}; using {box.path.name} instead")
    return None


def open_for(box: Any, data: Optional[bytes], origin: str) -> Optional[Artifact]:
    """The verified artifact in ``data`` (or in the file ``origin``), or None."""
    try:
        if data is None:
            return load_file(origin)
        return verify_artifact(data, origin) if is_artifact(data) else None
    except errors.WasmsbxError as exc:
        return refuse(box, exc)


def backend_for(box: Any, backend: Optional[str], kind: str) -> Optional[tuple]:
    """(backend, compiler) the artifact was built for, if the policy and --backend allow."""
    from .backends import get, names, select, split

    fp, origin = box.artifact.fingerprint, box.artifact.origin or str(box.path)
    name, compiler = fp.get("backend"), fp.get("compiler")
    spec = backend or box.policy.values["runtime.backend"]
    wanted, wanted_compiler = split(spec)
    if name not in names():
        return refuse(box, errors.ModuleError(f"{origin}: built for {name}, not installed"))
    adapter = get(name)
    compiler = compiler if compiler in adapter.compilers else adapter.default_compiler
    label = f"{name}:{compiler}" if len(adapter.compilers) > 1 else name
    if spec != "auto" and (wanted != name or wanted_compiler not in (None, compiler)):
        return refuse(
            box, errors.ModuleError(f"{origin}: precompiled for {label}, but {spec} was asked for")
        )
    if len(names()) > 1:  # the backend is fixed; it must still honour the whole policy
        try:
            box.selection = select.select(box.policy, box._features(), kind, label)
        except errors.BackendUnavailable as exc:
            return refuse(box, exc)
    return name, compiler


def load_for(box: Any) -> Any:
    """The deserialized module, after checking it was built from box's module (if given)
    and for box's engine."""
    started = time.perf_counter()
    artifact = box.artifact
    origin = artifact.origin or str(box.path)
    try:
        if box.wasm is not None and sha256(box.wasm) != artifact.module_sha256:
            raise errors.ModuleError(
                f"{origin}: precompiled from a different module than {box.path.name}"
            )
        check_compatible(artifact, box.engine.fingerprint(), origin)
        module = box.engine.deserialize(artifact.payload)
    except errors.ModuleError as exc:
        return refuse(box, exc)
    box.timings["load"] = time.perf_counter() - started
    box.cache_state = "artifact"
    return module
