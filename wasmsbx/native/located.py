"""Which module a file holds, remembered, so that a cached module file is neither read
nor hashed on every run (issue #16: cold starts).

A run finds a module's cache entry and facts record by the module's BLAKE3 digest, and
the digest takes the whole file: for graphviz.wasm (0.9 MB) reading it into fresh
memory and hashing it was about a third of a cold start; for a 20 MB module, 20-40 ms of
every run. So once a run has read and hashed a module file and the run used the cache,
wasmsbx writes a *source memo* beside the entries: ``code/NA/NAME.src`` (NAME: a BLAKE3
of the file's absolute path as given), holding that path, the file's identity and last
change as the kernel reported them around the read (device, inode, size, mtime and
ctime in ns) and the module's digest, followed by a keyed BLAKE3 tag (a key of its own
derived from the user's secret, ``trust.CONTEXTS["cache-source"]``). A later run
stat()s the file; if a memo for that path is authentic and names that identity, its
digest is taken, and the module's facts record and entry are looked up and
authenticated as always. The file's bytes are read only if something needs them (a
miss, an audit, a checkpoint), and then hashed again and compared with the digest.

What the memo decides is only which entry to look up. Every entry is authenticated on
its own (native/entry.py), so no memo can make code load that is not the user's own
compile of some module. A write, a truncation, a rename or copy over the file (even one
that restores its mtime) sets its ctime to the current time, which no unprivileged
process can set back; memos are written only for files last changed ``MARGIN``
seconds before, so a change in the same timestamp tick (file systems count in ticks of
up to 2 s) cannot keep the ctime a memo holds; and on Linux only on file systems where
that is so (``_CTIME_KEPT``: not FAT, whose ctime follows the mtime, nor FUSE or network
file systems). The identity is the open file's (fstat), before and after the read: a
folder on the path swapped for the read and back cannot bind one file to another's
module. Not covered: a process with a writable
shared mapping of the file changes bytes without moving ctime again until the page is
written back; the run then uses the entry of what the file held when the memo was made,
an authentic compile of bytes that process could have left in the file anyway.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from typing import Any, Optional

from blake3 import blake3  # (imported with native.cache anyway; used on every cold start)

from .recorded import _equal, read_small, write_small

SUFFIX = ".src"
TAG_SIZE = 32
MAX_SIZE = 8192  # a path of PATH_MAX bytes, the identity and the tag fit
MARGIN = 5.0  # seconds a file's last change must precede its memo
_DOMAIN = b"wasmsbx cache source memo 1\0"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
_HEX = frozenset("0123456789abcdef")


def identity(info: os.stat_result) -> tuple:
    """What must not change for a memo to hold: device, inode, size, mtime, ctime."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def path_for(code: Any, path_text: str) -> str:
    """Where the memo of the file at ``path_text`` (absolute) is, in the code folder."""
    name = blake3(_DOMAIN + os.fsencode(path_text)).hexdigest()
    return f"{code}{os.sep}{name[:2]}{os.sep}{name}{SUFFIX}"  # (os.path.join: 3x slower)


def _body(path_text: str, ident: tuple, digest: str) -> bytes:
    return " ".join([digest, *map(str, ident)]).encode("ascii") + b"\n" + os.fsencode(path_text)


def _tag(key: bytes, body: bytes) -> bytes:
    return blake3(_DOMAIN + body, key=key).digest()


def recall(code: Any, path_text: str, info: os.stat_result, key: Optional[bytes]) -> Optional[str]:
    """The digest of the module in the file ``info`` describes (at ``path_text``), if an
    authentic memo says so for exactly that file as it is; None otherwise (never an
    error)."""
    if key is None:
        return None
    data = read_small(path_for(code, path_text), MAX_SIZE)
    if data is None:
        return None
    body, tag = data[:-TAG_SIZE], data[-TAG_SIZE:]
    if not _equal(_tag(key, body), tag):
        return None
    line, _, named = body.partition(b"\n")
    fields = line.split(b" ")
    if named != os.fsencode(path_text) or len(fields) != 6:
        return None
    digest = fields[0].decode("ascii", "replace")
    if len(digest) != 64 or not _HEX.issuperset(digest):
        return None
    try:
        if [int(f) for f in fields[1:]] != list(identity(info)):
            return None
    except ValueError:  # (authentic, so never seen)
        return None
    return digest


def remember(
    code: Any,
    path_text: str,
    info: os.stat_result,
    digest: str,
    key: Optional[bytes],
    read_at: Optional[float] = None,
) -> bool:
    """Write the memo that the file ``info`` describes holds the module of ``digest``,
    if the file's last change is old enough (see the module docstring) before the read
    began (``read_at``, a time.time(); now if not given: a compile may have come
    between); failures are ignored: a memo only saves time. Whether one was written."""
    if key is None or not stat.S_ISREG(info.st_mode):
        return False
    if info.st_ctime_ns > ((time.time() if read_at is None else read_at) - MARGIN) * 1e9:
        return False
    body = _body(path_text, identity(info), digest)
    if len(body) + TAG_SIZE > MAX_SIZE or not _keeps_ctime(path_text, info):
        return False
    path = path_for(code, path_text)
    return write_small(path, body + _tag(key, body), os.path.basename(path)[: -len(SUFFIX)])


# File systems (Linux statfs f_type) where every change to a file's bytes sets its ctime
# to the current time, and no unprivileged process can set it otherwise: ext2/3/4, xfs,
# btrfs, tmpfs, ramfs, overlay, f2fs, zfs, bcachefs, jfs. Not FAT, whose ctime Linux
# keeps equal to the mtime (which utime() sets), exFAT, NTFS, FUSE (the daemon says what
# the ctime is), network file systems (NFS and SMB clients answer stat() from attributes
# cached for up to a minute), nor the image file systems squashfs and erofs, whose only
# timestamp is the one the image was built with (reproducible builds fix it: another
# image mounted at the same place can show a file of another content with the same
# inode number, size and times).
_CTIME_KEPT = frozenset(
    (
        0xEF53,
        0x58465342,
        0x9123683E,
        0x01021994,
        0x858458F6,
        0x794C7630,
        0xF2F52010,
        0x2FC12FC1,
        0xCA451A4E,
        0x3153464A,
    )
)


def _keeps_ctime(path_text: str, info: os.stat_result) -> bool:
    """Whether the file ``info`` describes (still at ``path_text``, unchanged) lies on a
    file system whose ctime a memo can trust (_CTIME_KEPT). Elsewhere than on Linux, the
    file system is not asked (see README, "Source memos")."""
    if not sys.platform.startswith("linux"):
        return True
    try:
        fd = os.open(path_text, os.O_RDONLY | _CLOEXEC | _NONBLOCK | _NOCTTY)
    except OSError:
        return False
    try:
        # the file the memo is for, not what the path names now
        return identity(os.fstat(fd)) == identity(info) and _fs_type(fd) in _CTIME_KEPT
    except OSError:
        return False
    finally:
        os.close(fd)


def _fs_type(fd: int) -> Optional[int]:
    """The Linux file system magic number (statfs f_type) of the file open as ``fd``."""
    import ctypes  # (loaded already with wasmtime-py; else only a run writing a memo pays)

    fstatfs = getattr(ctypes.CDLL(None, use_errno=True), "fstatfs", None)
    if fstatfs is None:
        return None
    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if fstatfs(fd, buffer) != 0:
        return None
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF  # f_type comes first


def digest_of(data: bytes) -> Optional[str]:
    """The digest a memo file ``data`` names (not authenticated: ``cache prune`` uses it
    to find memos of modules the cache no longer holds)."""
    line = data.partition(b"\n")[0]
    digest = line.split(b" ", 1)[0].decode("ascii", "replace")
    return digest if len(digest) == 64 and _HEX.issuperset(digest) else None
