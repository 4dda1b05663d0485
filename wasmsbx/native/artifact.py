"""The on-disk format of standalone artifacts (``compile -o``), and what they share with
cache entries (whose own layout, format 3, is in :mod:`wasmsbx.native.entry`).

Loading native code runs whatever machine code it holds, so nothing is deserialized
before it is *authenticated* (see README, "Security model"): its last 32 bytes are a
keyed BLAKE3 tag over every byte before them, made with a key derived from the user's
secret (:mod:`wasmsbx.native.trust`); an artifact from elsewhere may instead carry an Ed25519
signature by a key the user trusts. Only then is the header parsed and the code checked
against this engine (:func:`check_compatible`). A digest alone would be no defence: anyone
can recompute one after swapping the code. Layout, all written by :func:`pack`::

    MAGIC (8)  u32 header length H  u32 signature length S (0 or 96)
    header (H bytes, UTF-8 JSON)  payload  [Ed25519 public key (32)  signature (64)]
    tag (32): keyed BLAKE3 of everything before it

The signature signs BLAKE3 of everything before it (prefix, header, payload). The header
records what the payload was built for (``fingerprint``, from ``Engine.fingerprint()``),
which module it came from (``module.sha256``, and for cache entries ``module.blake3``,
the digest their key is made of) and the payload's size.
"""

from __future__ import annotations

import json
import struct
import time
from _operator import _compare_digest  # (hmac's, without importing hmac: see _equal)
from collections import namedtuple
from typing import Any, NamedTuple, Optional

from .. import errors
from .._version import __version__

MAGIC = b"\x89WSBX\r\n\x1a"  # \x89: not text; \r\n: catches newline translation
FORMAT = 2  # 1: wasmsbx 0.1, an unkeyed payload digest (refused: anyone could forge it)
PREFIX = struct.Struct("<II")  # header length, signature block length
START = len(MAGIC) + PREFIX.size
TAG_SIZE = 32
SIGNATURE_SIZE = 32 + 64  # Ed25519 public key, signature
MAX_HEADER = 1 << 20
KINDS = ("cache-entry", "artifact")


class Corrupt(Exception):
    """The bytes are not an intact, authentic artifact or cache entry."""


class Unauthenticated(Corrupt):
    """Intact in shape, but no key the user trusts vouches for it."""


class Artifact(NamedTuple):
    header: dict
    payload: Any  # a memoryview into the bytes read
    origin: Optional[str] = None  # the file it was read from
    by: str = "your key"  # who vouched for it

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

    def native(self) -> Any:
        """The payload as :class:`trust.Authenticated`, what ``deserialize`` takes."""
        from .trust import Authenticated

        return Authenticated(self.payload, self.by)

    def to_dict(self) -> dict:
        return dict(self.header)


def label_of(fingerprint: dict) -> str:
    """ "wasmtime 50.0.1 (cranelift, speed) on linux-x86_64" for messages."""
    fp = fingerprint
    extras = ", ".join(str(fp[k]) for k in ("compiler", "optimize") if fp.get(k))
    extras = f" ({extras})" if extras else ""
    return f"{fp.get('backend', '?')} {fp.get('version', '?')}{extras} on {fp.get('target', '?')}"


def normalise(fingerprint: dict) -> dict:
    """The fingerprint as it reads back from JSON (tuples become lists, keys strings),
    its keys in order. Built directly when it holds only what JSON gives back as it is
    (the first ``json.loads`` of a process costs its first cached load 30 µs); through
    JSON otherwise."""
    plain = _plain(fingerprint)
    if plain is _NOT_PLAIN:
        return json.loads(json.dumps(fingerprint, sort_keys=True))
    return plain


_NOT_PLAIN = object()


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON reads it back, or _NOT_PLAIN if that needs JSON itself: a
    float that is not finite, a dict key that is not text, a type of its own (an int
    enum, say), nesting deeper than a fingerprint's."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if value - value == 0.0 else _NOT_PLAIN  # (not inf, not nan)
    if depth > 8:
        return _NOT_PLAIN
    if kind is list or kind is tuple:
        items = [_plain(item, depth + 1) for item in value]
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in items) else items
    if kind is dict:
        if not all(type(key) is str for key in value):
            return _NOT_PLAIN
        out = {key: _plain(value[key], depth + 1) for key in sorted(value)}
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in out.values()) else out
    return _NOT_PLAIN


def sha256(data: bytes) -> str:
    """The module identity users see (``cache list``, headers): plain SHA-256."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def digest(data: Any) -> str:
    """BLAKE3 of ``data``: the cache key's module digest.

    A hit hashes the module (to find its entry) and the entry (to authenticate it) on
    every run: SHA-256 of a 1 MB module and its 2.3 MB of code takes 1.6 ms here, BLAKE3
    0.5 ms, and importing blake3 costs 0.8 ms against hashlib's 2.5 (OpenSSL).
    """
    from blake3 import blake3

    return blake3(data).hexdigest()


def is_artifact(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


# ---------------------------------------------------------------------------- writing


def pack(
    kind: str,
    fingerprint: dict,
    payload: Any,
    module_sha256: str,
    module_size: int,
    module_name: Optional[str] = None,
    features: tuple = (),
    exports: Optional[list] = None,
    module_digest: Optional[str] = None,
    *,
    key: bytes,
    signer: Any = None,
    component: Optional[dict] = None,
) -> bytes:
    """Prefix, header, payload, [signature], tag made with ``key`` (``trust.tag_key``);
    ``signer`` (a ``trust.Signer``) adds an Ed25519 signature for other machines.
    ``component``: a component's layout (``components.binary.layout_record``), which its
    limits need when the artifact runs alone."""
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
        "payload": {"size": len(payload)},
    }
    if component is not None:
        header["module"]["component"] = component
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    sig_size = SIGNATURE_SIZE if signer is not None else 0
    parts = [MAGIC, PREFIX.pack(len(text), sig_size), text, bytes(payload)]
    if signer is not None:
        parts += [signer.public, signer.sign(_blake3(b"".join(parts)))]
    body = b"".join(parts)
    return body + _tag(key, body, len(body))


def _blake3(data: Any, key: Optional[bytes] = None) -> bytes:
    from blake3 import blake3

    return (blake3(data) if key is None else blake3(data, key=key)).digest()


def _tag(key: bytes, data: Any, end: int) -> bytes:
    return _blake3(memoryview(data)[:end], key)


def _equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison (hmac.compare_digest, without importing hmac and so
    OpenSSL's hashlib, 2.5 ms, on the run path)."""
    return _compare_digest(a, b)


# ---------------------------------------------------------------------------- reading


class Layout(namedtuple("Layout", "header_end signed_end tag_start")):
    header_end: int  # the payload starts here
    signed_end: int  # the payload ends (and the signature block starts) here
    tag_start: int
    __slots__ = ()


def layout(data: Any) -> Layout:
    """Where the parts are, from the fixed prefix alone (nothing is parsed yet)."""
    if not is_artifact(data):
        raise Corrupt("not a wasmsbx artifact (bad magic)")
    if len(data) >= START + 1 and bytes(data[START - 4 : START - 3]) == b"{":
        raise Corrupt("made by wasmsbx 0.1 (format 1), whose native code carries no authentication")
    if len(data) < START + TAG_SIZE:
        raise Corrupt("truncated header")
    header_size, sig_size = PREFIX.unpack_from(data, len(MAGIC))
    if header_size > MAX_HEADER or sig_size not in (0, SIGNATURE_SIZE):
        raise Corrupt("damaged prefix (absurd header or signature length)")
    tag_start = len(data) - TAG_SIZE
    signed_end = tag_start - sig_size
    if signed_end < START + header_size:
        raise Corrupt("truncated")
    return Layout(START + header_size, signed_end, tag_start)


def tag_ok(data: Any, key: Optional[bytes], parts: Optional[Layout] = None) -> bool:
    """Whether ``data`` ends with a valid tag made with ``key``."""
    if key is None:
        return False
    parts = parts or layout(data)
    return _equal(_tag(key, data, parts.tag_start), bytes(data[parts.tag_start :]))


def parse(data: Any, parts: Layout, kind: Optional[str], by: str = "your key") -> Artifact:
    """The header and payload of authenticated bytes, checked for shape and kind."""
    try:
        header = json.loads(bytes(data[START : parts.header_end]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # (RecursionError: [[[[...)
        raise Corrupt("unreadable header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise Corrupt(f"unsupported format {found!r} (this wasmsbx reads format {FORMAT})")
    for field in ("fingerprint", "module", "payload", "kind"):
        if field not in header:
            raise Corrupt(f"header lacks {field!r}")
    if kind is not None and header["kind"] != kind:
        raise Corrupt(f"is a {header['kind']}, expected a {kind}")
    payload = memoryview(data)[parts.header_end : parts.signed_end]  # no copy
    if len(payload) != header["payload"].get("size"):
        raise Corrupt(f"payload is {len(payload)} bytes, header says {header['payload']}")
    return Artifact(header, payload, by=by)


def read_header(data: Any) -> dict:
    """The header alone, NOT authenticated: for tests and inspection only."""
    return parse(data, layout(data), None).header


def claims_component(path: Any) -> bool:
    """Whether the artifact file (or bytes) at ``path`` *says* it holds a component's
    code. NOT authenticated: it only picks which sandbox opens the artifact, and that
    sandbox authenticates it before reading anything else (a relabelled header breaks
    the tag or signature). False for anything unreadable: the regular path reports it."""
    try:
        if isinstance(path, (bytes, bytearray, memoryview)):
            head = bytes(path[: START + MAX_HEADER])
        else:
            # Without waiting, a regular file only: the name may have been swapped for a
            # FIFO since the caller looked (red team 133: a blocking open here waited for
            # a writer for ever, before any timeout was armed).
            import functools
            import os
            import stat

            from ..inputs import _read_full

            flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(path, flags)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return False
                read = functools.partial(os.read, fd)
                head = _read_full(read, START)
                if len(head) == START and is_artifact(head):
                    wanted = min(PREFIX.unpack_from(head, len(MAGIC))[0], MAX_HEADER)
                    head += _read_full(read, wanted)
            finally:
                os.close(fd)
        if not is_artifact(head) or len(head) < START:
            return False
        size = PREFIX.unpack_from(head, len(MAGIC))[0]
        header = json.loads(head[START : START + size].decode("utf-8"))
        return header["fingerprint"].get("kind") == "component"
    # (RecursionError: an unauthenticated header of [[[[... nests deeper than json can go)
    except (OSError, TypeError, ValueError, KeyError, AttributeError, struct.error, RecursionError):
        return False


def open_sealed(data: Any, key: Optional[bytes], kind: str) -> Artifact:
    """Bytes tagged with ``key`` (a cache entry): Unauthenticated unless the tag is valid.

    The payload is a memoryview into ``data`` (writable if ``data`` is a bytearray, which
    lets wasmtime deserialize it without a copy)."""
    parts = layout(data)
    if not tag_ok(data, key, parts):
        raise Unauthenticated("not tagged with your key: altered, damaged, or not made by you")
    return parse(data, parts, kind)


def signature_of(data: Any, parts: Layout) -> Optional[tuple]:
    """(public key, signature) of a signed artifact, or None."""
    if parts.tag_start == parts.signed_end:
        return None
    block = bytes(data[parts.signed_end : parts.tag_start])
    return block[:32], block[32:]


# ---------------------------------------------------------------------------- artifacts


def authenticate_artifact(data: Any, origin: str) -> Artifact:
    """An artifact vouched for by the user's key or a trusted signature; a ModuleError
    that says what it is and how to trust it otherwise."""
    from . import trust

    try:
        parts = layout(data)
    except Corrupt as exc:
        raise _refused(
            origin, str(exc), "compile it again: `wasmsbx compile MODULE -o FILE`"
        ) from None
    problem = None
    try:
        key = trust.tag_key("artifact")
    except trust.KeyProblem as exc:
        key, problem = None, exc
    if tag_ok(data, key, parts):
        return _parsed(data, parts, origin, "your key")
    signed = signature_of(data, parts)
    if signed is None and problem is not None:
        raise _refused(origin, f"it cannot be authenticated: {problem.message}", problem.hint)
    if signed is None:
        raise _refused(
            origin,
            "it is not authenticated: it was not compiled with your key (it was built by "
            "another user or machine, or altered since) and it carries no signature",
            "compile it yourself from its module (`wasmsbx compile MODULE -o FILE`), or "
            "have its author sign it (`wasmsbx compile --sign`) and trust their key "
            "(`wasmsbx trust add KEY`)",
        )
    public, signature = signed
    if trust.weak_public(public):
        raise _refused(
            origin,
            f"it is signed by {trust.encode_public(public)}, which is no real public key "
            "(a point of small order or off the curve's group: anyone can make its "
            "signatures)",
            "run the original module; a signed artifact needs its author's real key",
        )
    try:
        known = trust.find_trusted(public)
    except trust.KeyProblem as exc:
        raise _refused(
            origin, f"its signature cannot be checked: {exc.message}", exc.hint
        ) from None
    text = trust.encode_public(public)
    if known is None:
        raise _refused(
            origin,
            f"it is signed by {text} (id {trust.key_id(public)}), a key you do not trust",
            f"if that is its author's key (ask them), `wasmsbx trust add {text} --name NAME`; "
            "otherwise run the original module",
        )
    digest_ = _blake3(memoryview(data)[: parts.signed_end])
    if not trust.verify_signature(public, signature, digest_):
        raise _refused(
            origin,
            f"its signature by {known.name!r} does not match: it was altered after signing",
            "get a fresh copy from its author, or run the original module",
        )
    return _parsed(data, parts, origin, f"signature by {known.name!r}")


def _parsed(data: Any, parts: Layout, origin: str, by: str) -> Artifact:
    try:
        artifact = parse(data, parts, "artifact", by)
    except Corrupt as exc:
        raise _refused(
            origin, str(exc), "compile it again: `wasmsbx compile MODULE -o FILE`"
        ) from None
    return artifact._replace(origin=origin)


def _refused(origin: str, why: str, hint: Optional[str]) -> errors.ModuleError:
    return errors.ModuleError(
        f"{origin}: refused precompiled artifact: {why}", hint=hint, path=origin
    )


def export_records(wasm: bytes) -> Optional[list]:
    """The module's exports as header records; None if the module cannot be read."""
    from ..wasm.facts import FactsError, read_interface

    try:
        exports = read_interface(wasm).exports
    except FactsError:
        return None
    return records_of(exports)


def records_of(exports: Any) -> list:
    """Header records of ``facts.Export`` values (read_interface's or read_facts')."""
    return [
        {
            "name": e.name,
            "kind": e.kind,
            "params": list(e.type.params) if e.kind == "func" and e.type is not None else None,
            "results": list(e.type.results) if e.kind == "func" and e.type is not None else None,
        }
        for e in exports
    ]


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
    if value is None:
        return "(not set)"  # a key only some engines have (memory_layout: the default)
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

    from ..inputs import ARTIFACT_MAX_BYTES, TooLarge, read_capped

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
    """Shorthand kept for callers: :func:`authenticate_artifact`."""
    return authenticate_artifact(data, origin)


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


def epochless(box: Any, group: Any) -> bool:
    """May ``box`` load its artifact, compiled without epoch checks (``compile -o``'s
    default)? Only in ``wasmsbx run``, which runs one guest and has a hard stop that ends
    the process at the deadline (``KEEPER.sole_run``): anywhere else (Python, batch,
    bench, watch, a server) nothing could stop that code at limits.timeout, so it is
    refused (a warning and the module compiled instead, if it was given)."""
    from ..backends.deadline import KEEPER

    if group is None and KEEPER.sole_run and KEEPER.hard_stop is not None:
        return True
    origin = box.artifact.origin or str(box.path)
    refuse(
        box,
        errors.ModuleError(
            f"{origin}: compiled without epoch checks, for `wasmsbx run` alone (which ends "
            "the process at the timeout): nothing here could stop it at limits.timeout",
            hint="compile it with `wasmsbx compile MODULE -o FILE --interruptible` to load "
            "it from Python, batch, stream, bench or a server",
            path=origin,
        ),
    )
    return False


def backend_for(box: Any, backend: Optional[str], kind: str) -> Optional[tuple]:
    """(backend, compiler) the artifact was built for, if the policy and --backend allow."""
    from ..backends import get, names, select, split

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
        module = box.engine.deserialize(artifact.native())
    except errors.ModuleError as exc:
        return refuse(box, exc)
    box.timings["load"] = time.perf_counter() - started
    box.cache_state = "artifact"
    return module
