"""Cache entries on disk (format 3): native code first, a tagged trailer last.

Layout, all written by :func:`pack`::

    stored payload (S bytes): the engine's serialized module, or one zstd frame of it
    header (H bytes, UTF-8 JSON)
    footer (16): u32 H, u32 0 (reserved), MAGIC (8)
    tag (32): keyed BLAKE3 (the user's cache-entry key) of every byte before it

The tag covers the bytes *as stored* (compressed ones when compressed), so nothing is
decompressed, parsed or mapped before it is authenticated. The native code comes first
so that a verified, uncompressed entry can be handed to wasmtime as a file
(``Module.deserialize_file`` maps it instead of copying it; trailing bytes are ignored).

Loading (:func:`load`) never hands the engine bytes that can change after they were
checked (a file can be rewritten between check and use):

- an entry in a *protected* cache folder (the user's own cache, which no policy can name
  and no guest can be granted, see trust.refuse_key_grants), with one name (no hard
  link elsewhere, which a guest could be granted), is hashed through a read-only
  mapping of the descriptor it was opened by, then mapped by wasmtime from that same
  descriptor (``/proc/self/fd/N``: a rename over the path changes nothing). Nothing but
  the user's own processes can write to it, and they could read the key as well;
- anywhere else, and for compressed entries, the bytes are first copied into memory no
  other process can write: a sealed memfd (``F_SEAL_WRITE``: not even this process can
  change it any more) on Linux, else a private buffer; the check and the load both read
  that copy.

A compressed entry's decompressed size comes from its authenticated header and is
capped (``MAX_NATIVE``); the decompressor writes into a buffer of exactly that size and
an entry whose frame holds more (or less) is refused, so a bomb cannot exhaust memory.
"""

from __future__ import annotations

import json
import marshal
import os
import stat
import struct
import time
from typing import Any, Callable, Optional

from blake3 import blake3  # (imported with native.cache anyway; memos: every cold start)

from .._version import __version__
from ..lru import Lru
from .artifact import Artifact, Corrupt, Unauthenticated, _equal, normalise
from .located import identity  # (what a source memo holds of a file: the same five fields)
from .recorded import open_in_folder, read_small, write_small
from .trust import Authenticated, VerifiedFile
from .trustdir import ENTRY_MAGIC

FORMAT = 3  # 2: header first, never compressed (wasmsbx before 2026-12-02): refused
MAGIC = ENTRY_MAGIC
FOOTER = struct.Struct("<II8s")  # header length, reserved, magic
TAG_SIZE = 32
TRAILER = FOOTER.size + TAG_SIZE
OLD_MAGIC = b"\x89WSBX\r\n\x1a"  # formats 1 and 2 start with it
MAX_HEADER = 1 << 20
CHUNK = 1 << 20  # decompressed a MiB at a time
MAX_NATIVE = 1 << 30  # no module's native code is larger; a header saying so is refused
# No entry is larger: raw code is at most MAX_NATIVE, compressed code smaller still (kept
# only when it saves a tenth). A file beyond it (a sparse file planted in a project's
# cache) is refused before a byte of it is copied or hashed.
MAX_ENTRY = MAX_NATIVE + MAX_HEADER + TRAILER
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_SEALS = 0x0001 | 0x0002 | 0x0004 | 0x0008  # F_SEAL_SEAL, SHRINK, GROW, WRITE
_F_ADD_SEALS = 1033


# ---------------------------------------------------------------------------- writing


def pack(
    fingerprint: dict,
    payload: Any,
    module_sha256: str,
    module_size: int,
    module_name: Optional[str] = None,
    exports: Optional[list] = None,
    module_digest: Optional[str] = None,
    *,
    key: bytes,
    level: Optional[int] = None,
) -> bytes:
    """The entry's bytes; ``level``: zstd-compress the payload at that level (kept raw
    if that saves less than a tenth)."""
    raw = memoryview(payload)
    stored, encoding = raw, "none"
    if level is not None:
        squeezed = compress(raw, level)
        if len(squeezed) < len(raw) * 0.9:
            stored, encoding = memoryview(squeezed), "zstd"
    header = {
        "format": FORMAT,
        "kind": "cache-entry",
        "tool": f"wasmsbx {__version__}",
        "created": time.time(),
        "fingerprint": normalise(fingerprint),
        "module": {
            "sha256": module_sha256,
            "blake3": module_digest,
            "size": module_size,
            "name": module_name,
            "exports": None if exports is None else list(exports),
        },
        "payload": {"size": len(raw), "stored": len(stored), "encoding": encoding},
    }
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    body = b"".join([stored, text, FOOTER.pack(len(text), 0, MAGIC)])
    from blake3 import blake3

    return body + blake3(body, key=key).digest()


def compress(data: Any, level: int) -> bytes:
    """One zstd frame with the content size in its header, on every core (zstandard's
    threads only change the speed, never the bytes' meaning)."""
    import zstandard

    return zstandard.ZstdCompressor(level=level, threads=-1, write_content_size=True).compress(data)


# ---------------------------------------------------------------------------- reading


def _trailer(tail: Any, size: int) -> tuple:
    """(header length, tag) from the last TRAILER bytes of an entry of ``size`` bytes."""
    if size < TRAILER:
        raise Corrupt("truncated")
    header_size, _, magic = FOOTER.unpack_from(tail, 0)
    if magic != MAGIC:
        raise Corrupt("truncated or damaged: no cache-entry footer")
    if header_size > MAX_HEADER or header_size + TRAILER > size:
        raise Corrupt("damaged footer (absurd header length)")
    return header_size, bytes(tail[FOOTER.size :])


class OldFormat(Corrupt):
    """An entry an earlier wasmsbx wrote (header first, never compressed)."""


def _old_format(head: bytes) -> None:
    if head[: len(OLD_MAGIC)] == OLD_MAGIC:
        raise OldFormat(
            "was written by an earlier wasmsbx (cache format 2 or older), or is an artifact "
            "(`compile -o`), not a cache entry"
        )


def _header(text: Any, stored: int) -> dict:
    """The parsed, *already authenticated* header, checked for shape."""
    try:
        header = json.loads(bytes(text).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # (RecursionError: [[[[...)
        raise Corrupt("unreadable header") from None
    return _checked(header, stored)


def _shape(header: Any, size: int) -> dict:
    """A header a verification memo kept, checked as ``_header`` checks one, for an
    entry of ``size`` bytes."""
    payload = header.get("payload") if isinstance(header, dict) else None
    stored = payload.get("stored") if isinstance(payload, dict) else None
    if type(stored) is not int or not 0 <= stored <= size - TRAILER:
        raise Corrupt("its verification memo holds no header")
    return _checked(header, stored)


def _checked(header: Any, stored: int) -> dict:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise Corrupt("unsupported format")
    for field in ("fingerprint", "module", "payload", "kind"):
        if field not in header:
            raise Corrupt(f"header lacks {field!r}")
    if header["kind"] != "cache-entry":
        raise Corrupt(f"is a {header['kind']}, expected a cache-entry")
    payload = header["payload"]
    size, encoding = payload.get("size"), payload.get("encoding")
    if payload.get("stored") != stored or type(size) is not int or size < 0:
        raise Corrupt(f"payload is {stored} bytes, header says {payload}")
    if encoding == "none" and size != stored:
        raise Corrupt(f"payload is {stored} bytes, header says {payload}")
    if encoding not in ("none", "zstd"):
        raise Corrupt(f"unknown payload encoding {encoding!r}")
    if size > MAX_NATIVE:
        raise Corrupt(f"header claims {size} bytes of native code (at most {MAX_NATIVE})")
    return header


def open_buffer(data: Any, key: Optional[bytes]) -> Artifact:
    """An entry held in memory (``cache verify``, tests): authenticated, then parsed; the
    payload is the native code (decompressed into a new buffer if it was compressed)."""
    _old_format(bytes(data[: len(OLD_MAGIC)]))
    size = len(data)
    if size > MAX_ENTRY:
        raise Corrupt(f"is {size} bytes, larger than any cache entry (at most {MAX_ENTRY})")
    header_size, tag = _trailer(memoryview(data)[size - TRAILER :], size)
    if key is None or not _equal(_digest(memoryview(data)[: size - TAG_SIZE], key), tag):
        raise Unauthenticated("not tagged with your key: altered, damaged, or not made by you")
    stored = size - TRAILER - header_size
    header = _header(memoryview(data)[stored : stored + header_size], stored)
    view = memoryview(data)[:stored]
    if header["payload"]["encoding"] == "zstd":
        view = memoryview(_into_buffer(view, header["payload"]["size"]))
    return Artifact(header, view)


def _into_buffer(stored: Any, size: int) -> bytearray:
    out = bytearray()
    _decompress_into(stored, size, out.extend)
    return out


def _digest(data: Any, key: bytes) -> bytes:
    from blake3 import blake3

    return blake3(data, key=key).digest()


def _decompress_into(stored: Any, size: int, write: Callable) -> None:
    """Decompress ``stored`` through ``write`` (a chunk at a time): exactly ``size``
    bytes, the size the authenticated header gives. A frame that holds more or less is
    refused, and no more than a chunk beyond ``size`` is ever decompressed."""
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=False)
    try:
        filled = 0
        while True:
            chunk = reader.read(min(CHUNK, size - filled + 1))
            if not chunk:
                break
            filled += len(chunk)
            if filled > size:
                raise Corrupt(
                    f"compressed payload holds more than the {size} bytes its header says"
                )
            write(chunk)
        if filled != size:
            raise Corrupt(f"compressed payload holds {filled} bytes, header says {size}")
    except zstandard.ZstdError as exc:
        raise Corrupt(f"compressed payload does not decompress ({exc})") from None
    finally:
        reader.close()


# ---------------------------------------------------------------------------- loading


class Loaded:
    """An authenticated entry ready to deserialize: ``header``, and ``code``, the native
    code as a buffer or as a :class:`trust.VerifiedFile`. Close it after deserializing."""

    def __init__(self, header: dict, code: Any, fds: tuple = ()) -> None:
        self.header, self.code, self._fds = header, code, fds

    def native(self) -> Any:
        return Authenticated(self.code, "your key")

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = ()

    def __enter__(self) -> Loaded:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load(
    path: str, key_fn: Callable, protected: bool, memo: Optional[tuple] = None
) -> Optional[Loaded]:
    """The entry at ``path`` authenticated with ``key_fn()`` (asked only if the file
    exists and no memo vouches for it; None if there is none); Corrupt if it fails.
    ``protected``: the folder is one only the user's processes can write (see the module
    docstring), so an uncompressed entry may be mapped where it is. ``memo``: (path,
    key function) of the entry's verification memo (see :class:`Memo`), used only when
    ``protected``."""
    try:
        fd = open_in_folder(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a file or a link where a folder of the cache goes: the
        raise  # cache's trouble, not this entry's (the run goes on without the cache)
    except OSError as exc:
        raise Corrupt(f"cannot be opened ({exc.strerror})") from None
    loaded = None
    try:
        loaded = _load_fd(fd, key_fn, protected, Memo(*memo) if memo and protected else None)
        return loaded
    finally:
        if loaded is None or fd not in loaded._fds:  # else the engine maps it: kept open
            os.close(fd)


MEMO_MARGIN = 5.0  # seconds an entry's last change must precede its verification (see Memo)
MEMO_MAX = 1 << 20  # a memo is read only if it is at most this long (a header is ~1 KB)
_MEMO_DOMAIN = b"wasmsbx cache memo 2\0"  # (1: the tag's MAC alone, in hex)


class Memo:
    """That an entry in the user's own cache was verified, kept beside it, so that later
    loads of the same, unchanged file need not hash it again.

    The memo holds a keyed BLAKE3 (its own key, derived from the secret) of the entry's
    file identity and last change as the kernel reports them (device, inode, size,
    mtime and ctime in ns) and of the entry's tag. A load that finds the entry's fstat()
    and tag equal to what the memo vouches for loads without hashing the entry: the
    file is the one that was verified, unchanged since. A write, a truncation, a rename
    or copy over it (even one that restores the mtime) sets its ctime to the current
    time, which no unprivileged process can set back. Not covered: a process of the
    user's that keeps the entry mapped writable (MAP_SHARED) may change bytes without a
    new ctime until writeback (seen: a changed `add` ran from its memo). Such a process
    can read the user's key and forge a tag anyway (README "Integrity and authenticity").

    A memo is written only when the entry's ctime is at least ``MEMO_MARGIN`` seconds
    older than the verification, so a change made later cannot fall in the same
    timestamp tick (file systems count ctime in ticks of up to 2 s) and keep the ctime
    the memo holds. Only for entries in the user's own cache, owned by the user (the
    same condition under which an entry is mapped where it is: only the user's own
    processes can write there, see the module docstring); a memo that is missing,
    unreadable, damaged or for another file is ignored and the entry hashed in full.

    Since memo format 2 it also holds the tag and the entry's header as verified
    (``marshal``, read only after the memo's own tag matched, as native.recorded's
    records are), so such a load reads neither the entry's trailer nor its header.
    """

    __slots__ = ("key_fn", "path")

    def __init__(self, path: str, key_fn: Callable) -> None:
        self.path, self.key_fn = path, key_fn

    def _text(self, info: os.stat_result, tag: bytes) -> bytes:
        fields = identity(info)
        return (" ".join(map(str, fields)) + " " + tag.hex()).encode()

    def _mac(self, key: bytes, text: bytes, body: bytes) -> bytes:
        return blake3(_MEMO_DOMAIN + text + b"\0" + body, key=key).digest()

    def recall(self, info: os.stat_result) -> Optional[tuple]:
        """(tag, header) of the file ``info`` describes, if the memo says it was verified
        as it is now; else None."""
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            return None
        key = self.key_fn()
        if key is None:
            return None
        fields = identity(info)
        held = _RECALLED.get(self.path)
        if held is not None and held[0] == fields and _equal(held[1], key):
            # (this process read or wrote the memo; its header is read again from the
            # bytes held: a caller may change what it is given, e.g. Outcome.exports)
            return held[2], marshal.loads(held[3])
        # (read as native.recorded reads its records: a regular file, never through a
        # link, never blocking, read once into a buffer of its size)
        data = read_small(self.path, MEMO_MAX)
        if data is None or len(data) <= 2 * TAG_SIZE:
            return None
        got, tag, body = data[:TAG_SIZE], data[TAG_SIZE : 2 * TAG_SIZE], data[2 * TAG_SIZE :]
        if not _equal(got, self._mac(key, self._text(info, tag), body)):
            return None
        try:
            header = marshal.loads(body)
        except (ValueError, TypeError, EOFError):  # (authentic, so never seen)
            return None
        _held(self.path, fields, key, tag, body)
        return tag, header

    def record(self, info: os.stat_result, tag: bytes, header: dict) -> None:
        """Remember that the file ``info`` describes, tagged ``tag``, with ``header``, was
        just verified (when its last change is old enough; failures are ignored: a memo
        only saves time)."""
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            return
        if info.st_ctime_ns > (time.time() - MEMO_MARGIN) * 1e9:
            return
        try:
            body = marshal.dumps(header, 4)
        except ValueError:
            return
        key = self.key_fn()
        if key is None or 2 * TAG_SIZE + len(body) > MEMO_MAX:
            return
        mac = self._mac(key, self._text(info, tag), body)
        # (as records and source memos are written: a dot-named .tmp renamed into place,
        # which `cache prune` removes if a crash leaves it)
        if write_small(self.path, mac + tag + body, os.path.basename(self.path)[:16]):
            _held(self.path, identity(info), key, tag, body)


# What this process's memos vouch for (Memo.recall, Memo.record): memo path -> (the
# entry's file identity and last change, the memo key, tag, the memo's body), so that
# loading the same unchanged entry again in this process (a server, a worker, another
# engine) reads no memo: it takes the fstat() every load makes and, as the memo's own
# check does, compares it and the current memo key (a key rotated since is another key).
# Only what a memo vouched for or was written with goes in, so the margin on the last
# change (MEMO_MARGIN) holds here as well. The header is held as the marshal bytes the
# memo holds (a few µs to read) and each load gets its own: one held as objects was
# handed to every later load, so a caller that changed the export records it was given
# (Outcome.exports, Sandbox.recorded_exports) changed every later load's. Bounded in
# entries and in bytes (a guest's module of tens of thousands of exports has a memo of
# up to MEMO_MAX).
_RECALLED = Lru(256, 4 << 20)
RECALLED_MAX = _RECALLED.max_entries


def _held(path: str, fields: tuple, key: bytes, tag: bytes, body: bytes) -> None:
    _RECALLED.put(path, (fields, key, tag, body), len(body))


def forget_recalled() -> None:
    """Forget what this process's memos vouched for (tests: as a new process would)."""
    _RECALLED.clear()


def _load_fd(fd: int, key_fn: Callable, protected: bool, memo: Optional[Memo] = None) -> Loaded:
    """``key_fn``: the entry key's (asked for unless a memo vouches for the entry)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise Corrupt("not a regular file")
    size = info.st_size
    if size < TRAILER:
        _old_format(os.pread(fd, len(OLD_MAGIC), 0))
        raise Corrupt("truncated")
    if size > MAX_ENTRY:
        raise Corrupt(f"is {size} bytes, larger than any cache entry (at most {MAX_ENTRY})")
    # An entry with a second name (a hard link: a `cp -al` or `rsync --link-dest` backup
    # of the home folder) can be written through a folder a guest is granted, and a
    # mapping follows the file: a guest rewrote its own native code as it ran and the
    # host ran x86 code of its choosing (red team 147). Such an entry is copied, never
    # mapped where it lies.
    protected = protected and info.st_nlink == 1
    if protected and memo is not None and _proc_fd(fd):
        known = memo.recall(info)  # verified before, unchanged since: no trailer, no header
        if known is not None:
            header = _shape(known[1], size)
            if header["payload"]["encoding"] == "none":
                return Loaded(header, VerifiedFile(fd, header["payload"]["stored"]), (fd,))
    key = key_fn()  # (no secret: no memo key either, so no memo vouched above)
    if key is None:
        raise Unauthenticated("not tagged with your key: you have no secret key yet")
    tail = os.pread(fd, TRAILER, size - TRAILER)  # a private copy: what is checked is used
    try:
        header_size, tag = _trailer(tail, size)
    except Corrupt:
        _old_format(os.pread(fd, len(OLD_MAGIC), 0))
        raise
    stored = size - TRAILER - header_size
    text = os.pread(fd, header_size, stored)
    if len(text) != header_size or len(tail) != TRAILER:
        raise Corrupt("truncated while read")
    # (Which way to go is read from the header before it is checked: both ways check it.)
    if protected and b'"encoding":"none"' in text and _proc_fd(fd):
        hashed = _hash_mapped(fd, stored, key)
        if hashed is not None:  # the file as it is: only the user's processes can write it
            _check(hashed, text, tail, key, tag)
            header = _header(text, stored)
            if header["payload"]["encoding"] == "none":
                if memo is not None and _same(info, os.fstat(fd)):  # unchanged while hashed
                    memo.record(info, tag, header)
                return Loaded(header, VerifiedFile(fd, stored), (fd,))
    return _load_copy(fd, size, stored, text, tail, key, tag)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return identity(a) == identity(b)


def _check(hasher: Any, text: bytes, tail: bytes, key: bytes, tag: bytes) -> None:
    hasher.update(text)
    hasher.update(tail[: FOOTER.size])
    if not _equal(hasher.digest(), tag):
        raise Unauthenticated("not tagged with your key: altered, damaged, or not made by you")


def _hash_mapped(fd: int, stored: int, key: bytes) -> Any:
    """A keyed hasher fed the first ``stored`` bytes of the file through a read-only
    mapping (page-cache pages, no copy); None if it cannot be mapped."""
    import mmap

    from blake3 import blake3

    hasher = blake3(key=key)
    if stored == 0:
        return hasher
    try:
        view = mmap.mmap(fd, stored, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        return None
    try:
        hasher.update(view)
    finally:
        view.close()
    return hasher


def _load_copy(
    fd: int, size: int, stored: int, text: bytes, tail: bytes, key: bytes, tag: bytes
) -> Loaded:
    """Copy the stored payload where no other process can write, check it there, and
    hand the engine that copy (decompressed into a sealed memfd, or a private buffer)."""
    from blake3 import blake3

    sealed = _memfd_copy(fd, stored) if _proc_fd(fd) else None
    if sealed is not None:
        hasher = _hash_mapped(sealed, stored, key)
        if hasher is None:
            os.close(sealed)
            sealed = None
    if sealed is None:
        data = bytearray(stored)
        got = os.preadv(fd, [data], 0) if stored else 0
        if got != stored:
            raise Corrupt("truncated while read")
        hasher = blake3(data, key=key)
    try:
        _check(hasher, text, tail, key, tag)
        header = _header(text, stored)
        if header["payload"]["encoding"] == "zstd":
            try:
                return _decompressed(header, sealed, data if sealed is None else None)
            finally:
                if sealed is not None:  # the compressed copy: no longer needed
                    os.close(sealed)
                    sealed = None
        if sealed is not None:
            return Loaded(header, VerifiedFile(sealed, stored), (sealed,))
        return Loaded(header, data)
    except BaseException:
        if sealed is not None:
            os.close(sealed)
        raise


def _decompressed(header: dict, sealed: Optional[int], data: Optional[bytearray]) -> Loaded:
    """The authenticated compressed payload, decompressed into a new sealed memfd (or a
    private buffer) of exactly the size the header gives."""
    import mmap

    raw = header["payload"]["size"]
    if sealed is not None:
        stored = header["payload"]["stored"]
        source = mmap.mmap(sealed, stored, prot=mmap.PROT_READ) if stored else b""
        try:
            out = _memfd(0)
            try:
                _decompress_into(source, raw, lambda chunk: _write_all(out, chunk))
                _seal(out)
            except BaseException:
                os.close(out)
                raise
        finally:
            if not isinstance(source, bytes):
                source.close()
        return Loaded(header, VerifiedFile(out, raw), (out,))
    return Loaded(header, _into_buffer(memoryview(data), raw))


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


_PROC: list = []  # [bool]: whether /proc/self/fd works here (checked once)


def _proc_fd(fd: int) -> bool:
    """Whether the engine can open what ``fd`` is through /proc/self/fd (Linux, /proc
    mounted, memfd_create available)."""
    if not _PROC:
        _PROC.append(hasattr(os, "memfd_create") and os.path.exists(f"/proc/self/fd/{fd}"))
    return _PROC[0]


def _memfd(size: int) -> int:
    fd = os.memfd_create("wasmsbx-native", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    if size:
        os.ftruncate(fd, size)
    return fd


def _seal(fd: int) -> None:
    import fcntl

    fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)


def _memfd_copy(fd: int, stored: int) -> Optional[int]:
    """A sealed memfd holding the first ``stored`` bytes of ``fd``, copied in the kernel;
    None if that fails (the caller reads into a buffer instead)."""
    try:
        out = os.memfd_create("wasmsbx-native", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:
        return None
    try:
        done = 0
        while done < stored:
            got = os.sendfile(out, fd, done, stored - done)
            if not got:
                raise Corrupt("truncated while read")
            done += got
        _seal(out)
    except OSError:
        os.close(out)
        return None
    except BaseException:
        os.close(out)
        raise
    return out


def spans(data: Any) -> tuple:
    """(payload end, header end) of an entry's bytes, NOT authenticated: for tests and
    inspection only."""
    size = len(data)
    header_size, _ = _trailer(memoryview(data)[size - TRAILER :], size)
    stored = size - TRAILER - header_size
    return stored, stored + header_size
