"""The compiled-code cache: native code kept between runs, safely.

A private directory (``resolve_dir``: ``--cache-dir``, then the policy's
``runtime.cache_dir``, then ``$WASMSBX_CACHE_DIR``, then platformdirs' user cache dir).
Each module compiled by one engine is one entry, keyed by the module's BLAKE3 digest and
``Engine.fingerprint()`` (backend, versions, compiler, optimisation level, features,
target). Per entry:

- ``code/KEY[:2]/KEY.entry``: the entry in the :mod:`wasmsbx.native.entry` format (native
  code, raw or zstd-compressed, then header and tag), written to a new file renamed into
  place; it is authenticated (the tag), then checked (fingerprint, module digest) before
  any deserialization, and an entry that fails is deleted, recompiled and reported;
- in the diskcache database, ``m:KEY``: a JSON record for listing: module, backend,
  sizes, created, last used, hits.

Also in the database: counters ``n:hits:LABEL`` / ``n:misses:LABEL`` for hit rates, and
``l:KEY``, the lock that makes concurrent processes compile a module once while the
others wait. Values are only text and integers, so diskcache never unpickles anything.
A hit appends a line to ``hits.log`` instead of writing the database; the journal is
folded into the records whenever they are read. The total size is bounded by
``runtime.cache_size``: after each store the least recently used entries go.

Why the code is not a diskcache value (diskcache would keep values this big in files of
its own anyway): a hit then needs no database at all, and importing diskcache and
sqlite3 costs 13 ms, six times the rest of a cached load of a 1 MB module.

Only the run path imports this module, and only for modules of at least
``runtime.cache_min_size`` bytes.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from blake3 import blake3  # noqa: F401 - see below

from .. import errors
from ..lru import Lru, sample_key
from . import artifact as aot
from . import entry as entry_format
from . import located, recorded, trust
from .trustdir import (
    ENTRY_SUFFIX,
    in_metadata,
    make_private,
    missing_folders,
    mount_id,
    proc_target,
    trust_dir_text,
    user_cache_text,
    within,
)
from .trustdir import real as realpath

# Every use of this module on the run path hashes the module (BLAKE3, to find its entry),
# asks for the user's key (trust) and, on a hit, locks the hit journal (fcntl): all are
# imported with it, once per process, rather than by the first load (0.8, 1, 0.2 ms).
try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - POSIX is the supported platform
    _fcntl = None  # type: ignore[assignment]

ENTRY_MODE = 0o400  # an entry's mode: read-only to its owner too (see Store.put)
CODE_DIR = "code"  # native code: code/KEY[:2]/KEY.entry, in the wasmsbx.native.entry format
CODE_SUFFIX = ENTRY_SUFFIX
MEMO_SUFFIX = ".verified"  # beside an entry: that it was verified (entry.Memo)
# With runtime.cache_compress, payloads of COMPRESS_MIN bytes and more are stored
# zstd-compressed at COMPRESS_LEVEL (benchmarks/cached_load.py); by default, and below it,
# they stay raw so that a hit maps them in place (README "Size and compression").
COMPRESS_MIN = 8 << 20
COMPRESS_LEVEL = 3
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_ENTRY_ROWS = ("m:", "a:")  # database rows named by an entry key (Store.keys)
HITS = "hits.log"  # the hit journal: "KEY LABEL TIME" per hit
HITS_FOLD_SIZE = 1 << 16  # the hit that takes the journal past a multiple of this folds it
HITS_MAX = 16 << 20  # a journal that cannot be folded stops growing here
ORPHAN_GRACE = 60.0  # a code file this young may be waiting for its record (a store under way)
LOCK_TTL = 600.0  # a lock older than this is stale (its holder died on another host)
LOCK_WAIT = 600.0  # the longest a process waits for another to finish compiling
# What wasmsbx keeps in a cache directory (diskcache: the database and its journals).
OURS = ("CACHEDIR.TAG", "cache.db", "cache.db-wal", "cache.db-shm", CODE_DIR, HITS, "probes")
TAG_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by wasmsbx.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)


class CacheUnavailable(Exception):
    """The cache directory cannot be used (not ours, not a directory, unwritable...)."""

    def __init__(self, message: str) -> None:
        super().__init__(shown(message))  # (the folder's name, not its /proc/self/fd path)


class Outcome(NamedTuple):
    module: Any
    state: str  # hit | miss | error
    timings: dict
    warnings: list
    key: Optional[str] = None
    exports: Optional[list] = None  # the module's export records (aot.export_records)
    store: Any = None  # the Store of the entry (its uses are counted there)


# ---------------------------------------------------------------------------- where


def _expand(text: str, what: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~someone" for a user that does not exist
        raise errors.UsageError(f"{what}: cannot expand {text!r}: no such user") from None


def resolve_dir(policy: Any = None, override: Optional[str] = None) -> tuple:
    """(directory, where it came from): option, policy, env or default."""
    if override and not override.isspace():  # (blank: unset, as the variable's)
        if override[:1] == os.sep and type(override) is str:  # (absolute, no ~: as below)
            return _path_of(override), "option"
        return _expand(override, "--cache-dir").absolute(), "option"
    configured = policy.values.get("runtime.cache_dir") if policy is not None else ""
    if configured and not configured.isspace():
        path = _expand(configured, "runtime.cache_dir")
        source = getattr(policy, "source", None)
        if not path.is_absolute() and source and Path(source).is_file():
            path = Path(source).resolve().parent / path
        return path.absolute(), "policy"
    env = os.environ.get("WASMSBX_CACHE_DIR")
    if env and not env.isspace():  # (blank: unset, not a folder " " made here)
        if env[:1] == os.sep:  # (absolute, no ~: the same Path every time)
            return _path_of(env), "env"
        return _expand(env, "WASMSBX_CACHE_DIR").absolute(), "env"
    return _path_of(user_cache_text()), "default"


_PATHS: dict = {}  # absolute text -> its Path: a cached load asks for the folder each time


def _path_of(text: str) -> Path:
    found = _PATHS.get(text)
    if found is None:
        if len(_PATHS) > 64:
            _PATHS.clear()
        found = _PATHS[text] = Path(text)
    return found


def prepare_dir(root: Path, inside: str = "") -> str:
    """Create ``root`` private to this user (0700), refuse one that belongs to another;
    the text through which the folder is used from then on (``_pinned``): on Linux its
    descriptor's /proc/self/fd path, so the folder checked is the folder written, read
    and cleared even if its name is swapped for a link meanwhile. ``inside``: the real
    folder that the folder opened must be in (a discovered policy's, ``_confined``)."""
    _refuse_variables(root)
    text = str(root)  # (text, not Path methods: on the first cached load of every process)
    fd, made, parents = None, False, []
    try:
        if _PIN:  # a folder already there is opened as it is and checked as opened
            try:
                fd = os.open(text, _PIN | _CLOEXEC)
            except FileNotFoundError:
                pass
        if fd is None:
            _refuse_trust(root)  # before mkdir: no folder is made in the trust folder
            _refuse_trust_mounted_above(root)  # (by any path)
            if inside and _PIN:
                fd, made = _make_inside(root, text, inside)
            else:
                try:
                    os.mkdir(text, 0o700)
                    made = True
                except FileExistsError:
                    pass
                except FileNotFoundError:
                    parents = missing_folders(text)  # (removed if the folder is refused)
                    make_private(text)
        if _PIN:
            if fd is None:
                fd = os.open(text, _PIN | _CLOEXEC)
            info = os.fstat(fd)
        else:  # pragma: no cover - Linux is the supported platform
            info = os.stat(text)
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        if exc.errno == errno.ENOTDIR:
            raise CacheUnavailable(f"{root} is not a directory") from None
        doing = "open or create" if exc.errno == errno.EACCES else "create"
        raise CacheUnavailable(f"cannot {doing} {root}: {exc.strerror or exc}") from None
    try:
        where = _check_dir(root, info, fd, inside)
    except BaseException:
        if fd is not None:
            if made:
                _unmake(fd, info, os.path.basename(text))
            os.close(fd)
        for folder in parents:  # (deepest first; only empty ones: red team 149 found one
            try:  # left in a trust folder reached through a bind mount of its parent)
                os.rmdir(folder)
            except OSError:
                break
        raise
    return where if fd is None else _pinned(text, fd, info)


def _make_inside(root: Path, text: str, inside: str) -> tuple:
    """``mkdir -p`` of a discovered policy's cache folder ``text`` (its real path when
    the policy was read, inside the real folder ``inside``): each folder on the way from
    ``inside`` opened without following a link, each missing one made in its parent as
    opened. A folder on the way swapped for a link since (``sub -> .git``, ``sub ->
    $HOME``) is refused before anything is made: ``os.makedirs`` followed it and made
    ``.git/hooks/pre-commit/`` or ``~/.ssh/authorized_keys/`` (red team 103). (The last
    folder opened, O_PATH: the one checked and used, never looked up by name again;
    whether it was made here.)"""
    if not within(text, inside) or text == inside:
        raise CacheUnavailable(
            f"{root} leads outside the folder of the sandbox.toml that names it: it changed "
            "after the policy was checked"
        )
    if in_metadata(text, inside):
        raise CacheUnavailable(f"{root} leads into version-control metadata: not a cache folder")
    parts = [part for part in text[len(inside.rstrip(os.sep)) :].split(os.sep) if part]
    current = os.open(inside, _PIN | _CLOEXEC)
    made = False
    try:
        for part in parts:
            if part in (".", ".."):
                raise CacheUnavailable(f"{root} leads into {part}: not a cache folder")
            try:
                os.mkdir(part, 0o700, dir_fd=current)
                made = True
            except FileExistsError:
                made = False
            try:
                step = os.open(part, _PIN | _NOFOLLOW | _CLOEXEC, dir_fd=current)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise CacheUnavailable(
                        f"{root} leads through {part}, now a link or a file: it changed "
                        "after the policy was checked"
                    ) from None
                raise
            os.close(current)
            current = step
    except BaseException:
        os.close(current)
        raise
    return current, made


def _unmake(fd: int, info: os.stat_result, name: str) -> None:
    """Remove the empty folder this prepare_dir made and then refused (a name on the way
    swapped for a link as it was made: it was made where the link leads, outside a
    project, red team round 20), relative to its parent as opened, if ``name`` there is
    still that folder. Best effort: only an empty folder can go."""
    try:
        parent = os.open(f"/proc/self/fd/{fd}/..", _PIN | _CLOEXEC)
    except OSError:
        return
    try:
        now = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
            os.rmdir(name, dir_fd=parent)
    except OSError:
        pass
    finally:
        os.close(parent)


def _check_dir(root: Path, info: os.stat_result, fd: Optional[int], inside: str) -> str:
    """prepare_dir's checks of the folder opened (``fd``, if pinned); its text."""
    if not stat.S_ISDIR(info.st_mode):
        raise CacheUnavailable(f"{root} is not a directory")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise CacheUnavailable(
            f"{root} belongs to another user (uid {info.st_uid}); native code is only "
            "loaded from a cache directory of your own"
        )
    where = str(root) if fd is None else f"/proc/self/fd/{fd}"
    try:  # (again: the folder opened may not be the one checked before mkdir)
        real = os.readlink(where) if fd is not None else ""
    except OSError:  # pragma: no cover - /proc was there a moment ago
        real = ""
    _refuse_trust(root, real)
    if fd is not None:
        _refuse_trust_mounted(root, fd)
    if inside:
        real = real or realpath(where)
        if not within(real, inside):
            raise CacheUnavailable(
                f"{root} leads outside the folder of the sandbox.toml that names it "
                f"({real}): it changed after the policy was checked"
            )
        if in_metadata(real, inside):  # (a folder swapped for a link to .git since: red team 102)
            raise CacheUnavailable(
                f"{root} leads into version-control metadata ({real}): it changed after "
                "the policy was checked"
            )
    _refuse_links(root, where, fd)
    tagged = _ours(where)
    if not tagged:
        try:
            _refuse_foreign(root, where)
        except CacheUnavailable:
            # Another process of ours tagged it since (runs starting together on a new
            # cache: it tagged the folder, then made its database, after this looked).
            if not _ours(where):
                raise
            tagged = True
    if info.st_mode & 0o077:
        try:
            os.chmod(where, 0o700)
        except OSError as exc:
            raise CacheUnavailable(f"cannot make {root} private: {exc.strerror}") from None
    if not tagged:
        tmp = os.path.join(where, f".CACHEDIR.TAG.{os.getpid()}")
        create = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC
        try:
            try:  # (created, never opened: a link planted at the name is not followed)
                tag_fd = os.open(tmp, create, 0o600)
            except FileExistsError:  # left by a process killed that had this pid
                os.unlink(tmp)
                tag_fd = os.open(tmp, create, 0o600)
            try:
                os.write(tag_fd, TAG_TEXT.encode())
            finally:
                os.close(tag_fd)
            os.replace(tmp, os.path.join(where, "CACHEDIR.TAG"))
        except OSError as exc:
            raise CacheUnavailable(f"cannot write in {root}: {exc.strerror}") from None
    return where


# Linux: the cache folder is opened once (O_PATH) and used through /proc/self/fd/N, so a
# name swapped for a link after the checks (renameat2 RENAME_EXCHANGE of a project's
# `.wc`, red team round 19) leads nowhere new: `cache clear` had deleted the code folder
# of the folder the link named and made a database there. sqlite and diskcache take only
# a path, which this is.
_PIN = 0
if getattr(os, "O_PATH", 0) and os.path.isdir("/proc/self/fd"):
    _PIN = os.O_PATH | os.O_DIRECTORY

# root text -> (descriptor, its /proc/self/fd text).
# Never closed: texts made from them (entry paths, a store's database) may outlive any
# store, and a number closed and reused would lead them into another folder. One per
# folder a process uses, plus one each time that folder is replaced by another.
_PINNED: dict = {}


def _pinned(text: str, fd: int, info: os.stat_result) -> str:
    """The /proc/self/fd text of the folder ``fd`` (checked; ``info`` its fstat), kept
    open for the process: the one already pinned for ``text`` if that is the same folder,
    still in place (one descriptor per folder). A folder replaced at that name (removed
    and made again by another process's `cache clear`) takes over its predecessor's
    number (dup2), so texts made before lead to the folder that name now holds, as names
    did, and a process that sees its cache replaced again and again holds one
    descriptor, not one more each time. Past ``_PIN_MAX`` folders, further ones are used
    by name (red team round 20: a descriptor per folder, kept forever, let a process
    using thousands of cache folders run out of descriptors).

    A number that no longer holds what was pinned there (closed by other code of the
    process, then reused) is not ours: never replaced by dup2 (that would take another
    pin's, or anyone's, descriptor), and its entry is dropped, here or when another
    folder is pinned at that number (so one name stands for each number: cache.shown)."""
    known = _PINNED.get(text)
    if known is not None:
        try:
            held: Optional[os.stat_result] = os.fstat(known[0])
        except OSError:
            held = None
        if held is not None and (held.st_dev, held.st_ino) == recorded.PINS.get(known[0]):
            # (a folder removed has no links; its inode number may come again)
            same = (held.st_dev, held.st_ino) == (info.st_dev, info.st_ino)
            if not (same and held.st_nlink):
                os.dup2(fd, known[0], inheritable=False)
                recorded.PINS[known[0]] = (info.st_dev, info.st_ino)
            os.close(fd)
            return known[1]
        del _PINNED[text]
    if len(_PINNED) >= _PIN_MAX:
        os.close(fd)
        return text
    where = f"/proc/self/fd/{fd}"
    for stale in [name for name, pin in _PINNED.items() if pin[0] == fd]:
        del _PINNED[stale]
    _PINNED[text] = (fd, where)
    recorded.PINS[fd] = (info.st_dev, info.st_ino)
    return where


_PIN_MAX = 64  # folders a process pins (_pinned)


def shown(text: str) -> str:
    """``text`` with each pinned folder's /proc/self/fd path written as its name: what
    users see (messages, reports)."""
    if "/proc/self/fd/" in text:
        for name, (_, where) in _PINNED.items():
            if where in text:
                text = text.replace(where + os.sep, name + os.sep)
                if text.endswith(where):
                    text = text[: -len(where)] + name
    return text


def _refuse_foreign(root: Path, where: str) -> None:
    """A directory with files but no CACHEDIR.TAG of wasmsbx is not a cache: wasmsbx will
    not tag it (backup tools skip tagged folders), tighten its mode or write a database
    into it. Names wasmsbx itself uses count too: a folder of the user's that holds only
    a `code/` folder was adopted, tagged, and `cache clear` then deleted its `code/` (red
    team, round 20; wasmsbx tags a folder before it puts anything there). Allowed: the
    wasmer backend's probe results (``_ours_untagged``: written without a tag, by
    ``wasmsbx backends``) and a tag being written (``.CACHEDIR.TAG.PID``, a file).
    (``where``: the folder opened, prepare_dir)"""
    try:
        names = [n for n in os.listdir(where) if not _ours_untagged(where, n)]
    except OSError as exc:
        raise CacheUnavailable(f"cannot read {root}: {exc.strerror}") from None
    if names:
        raise CacheUnavailable(
            f"{root} is not empty and is not a wasmsbx cache (no CACHEDIR.TAG of "
            "wasmsbx); choose an empty or new directory"
        )


def _ours_untagged(where: str, name: str) -> bool:
    """Whether ``name`` in the folder ``where`` is what wasmsbx may have left in a cache
    folder before tagging it: a tag being written, or wasmer's probe results."""
    try:
        info = os.lstat(os.path.join(where, name))
    except OSError:
        return True  # (gone meanwhile)
    if _tag_being_written(name):
        return stat.S_ISREG(info.st_mode)
    if name != "probes" or not stat.S_ISDIR(info.st_mode):
        return False
    folder = os.path.join(where, name)
    try:
        for entry in os.scandir(folder):
            if not (_probe_name(entry.name) and entry.is_file(follow_symlinks=False)):
                return False
    except OSError:
        return False
    return True


def _tag_being_written(name: str) -> bool:
    """A name prepare_dir gives the tag it is writing: .CACHEDIR.TAG.PID."""
    return name.startswith(".CACHEDIR.TAG.") and name[14:].isdigit()


def _probe_name(name: str) -> bool:
    """A name backends.wasmer gives its probe results: wasmer-HEX16.txt, .probe-XXX."""
    if name.startswith(".probe-"):
        return name[7:].replace("_", "").isalnum()
    hexes = name[7:-4]
    return (
        name.startswith("wasmer-")
        and name.endswith(".txt")
        and len(hexes) == 16
        and all(c in "0123456789abcdef" for c in hexes)
    )


def _real_of(where: str) -> str:
    """The real path of the folder pinned at ``where`` (a /proc/self/fd text: one system
    call), or "" (work it out from the name)."""
    return proc_target(where) if where.startswith("/proc/self/fd/") else ""


def _ours(where: str) -> bool:
    """Whether the folder ``where`` carries wasmsbx's CACHEDIR.TAG: a regular file (not
    a link, not a folder) that is a cache tag naming wasmsbx. Any tag counted, so a
    folder of another tool's (or a folder named CACHEDIR.TAG) holding a `code/` folder
    was a cache whose `code/` `cache clear` deleted (red team, round 20)."""
    head = _tag_head(where)
    return head.startswith(b"Signature: 8a477f597d28d172789f06886806bc55") and b"wasmsbx" in head


def _refuse_links(root: Path, where: str, fd: Optional[int] = None) -> None:
    """wasmsbx writes the files of a cache by name (the hit journal, sqlite's database and
    its -wal/-shm files), so a link planted there (a project's cache comes with its
    repository, and git keeps links) would aim those writes at any file of yours.
    (``where``: the folder opened, prepare_dir; ``fd``: its descriptor, if pinned: each
    name is then looked up in it, not through /proc again, half the time on every
    process's first cached load)"""
    for name in OURS:
        try:
            if fd is None:
                info = os.lstat(os.path.join(where, name))
            else:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (OSError, ValueError):
            continue
        if stat.S_ISLNK(info.st_mode):
            raise CacheUnavailable(
                f"{root / name} is a symbolic link; a cache folder holds none (writes "
                "through it would land elsewhere); `wasmsbx cache clear` removes it, or "
                "choose another cache folder"
            )


def unlink_planted(root: Path, inside: str = "") -> list:
    """Remove the symbolic links standing at names wasmsbx writes in the cache folder
    ``root`` (``_refuse_links`` refuses a cache holding one), if ``root`` is one of the
    user's wasmsbx caches (its owner, its tag, not the trust folder, ``inside``: see
    prepare_dir), checked on the folder opened; the names removed. Never follows them:
    `cache clear` repairs such a cache instead of refusing it as every other command
    does."""
    if not os.path.isdir(root):
        return []
    with _opened(root) as where:
        info = os.stat(where)
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            return []
        if not _ours(where):
            return []
        real = realpath(where)
        _refuse_trust(root, real)
        if inside and not within(real, inside):
            return []
        removed = []
        for name in OURS:
            path = os.path.join(where, name)
            if os.path.islink(path):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                removed.append(name)
        return removed


def _private_path(root: str) -> bool:
    """Whether only this user (or root) can change what ``root`` leads to: every folder
    on the way as the kernel walks it, and every link on the way (a link to a link too,
    and the folders it goes through), belongs to this user or to root, and no folder is
    writable by others unless sticky (/tmp). Else another user could swap a folder for
    one of theirs between an entry's check and its mapping (`WASMSBX_CACHE_DIR=/tmp/wsx`,
    with /tmp/wsx a link someone else made, or ~/wsx a link of yours to it), so entries
    are loaded from sealed copies instead."""
    if not hasattr(os, "getuid"):  # pragma: no cover - POSIX is the supported platform
        return False
    mine = (os.getuid(), 0)

    def private(current: str) -> Optional[os.stat_result]:
        try:
            info = os.lstat(current)
        except OSError:
            return None
        if info.st_uid not in mine:
            return None
        if stat.S_ISDIR(info.st_mode) and info.st_mode & 0o022 and not info.st_mode & 0o1000:
            return None
        return info

    # Walked as the kernel walks it: each folder, each link, each link's target and the
    # links that target passes too (realpath shows only where the walk ends).
    start = root if os.path.isabs(root) else os.path.join(os.getcwd(), root)
    todo = [p for p in reversed(start.split(os.sep)) if p]
    current, hops = os.sep, 0
    if private(current) is None:
        return False
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)  # (current holds no link: physical)
            continue
        step = os.path.join(current, part)
        info = private(step)
        if info is None:
            return False
        if not stat.S_ISLNK(info.st_mode):
            current = step
            continue
        hops += 1
        try:
            target = os.readlink(step)
        except OSError:
            return False
        if hops > 40 or not target:
            return False
        if target.startswith(os.sep):
            current = os.sep
        todo.extend(p for p in reversed(target.split(os.sep)) if p)
    return True


def _refuse_variables(root: Path) -> None:
    """diskcache expands ``$NAME`` in the folder it opens (and wasmsbx does not), so the
    database of ``c$EVIL`` would land wherever ``$EVIL`` leads, outside every check."""
    text = str(root)
    if os.path.expandvars(text) != text:
        raise CacheUnavailable(
            f"{root}: its name holds an environment variable ($NAME), which the cache's "
            "database would expand to another folder; choose a name without $"
        )


def _refuse_trust(root: Path, real: str = "") -> None:
    """The trust folder, a folder around it or one inside it is never a cache (``real``:
    the folder's real path, if known)."""
    # (Text, not Path.resolve(): every first load of a process checks this, and Path
    # objects cost it 0.1 ms. A symlink loop resolves to some path, which mkdir refuses.)
    keys, real = realpath(trust_dir_text()), real or realpath(str(root))
    if trust._overlaps(real, keys):
        raise CacheUnavailable(f"{real} overlaps the trust folder {keys}; not a cache")


def _refuse_trust_mounted(root: Path, fd: int) -> None:
    """The folder open at ``fd`` is never the trust folder, nor in it, by another path
    than its own: a bind mount of it (``--cache-dir k/bt/c2``, ``k/bt`` the trust folder
    bound there, made a cache in the trust folder: red team 147) or an overlay whose
    upper layer it is; nor on a mount this process cannot place. Told as outputs are
    (``outfile.refuse_guarded``): by device and inode up to the root, and by the mount
    the folder was opened through."""
    if _same_mount_as_trust(fd):  # (then its real path, checked already, says it all)
        return
    from ..outfile import refuse_guarded

    try:
        refuse_guarded(str(root), fd, "not a cache", kinds=("trust",))
    except errors.InputError as exc:
        raise CacheUnavailable(exc.message) from None


def _same_mount_as_trust(fd: int) -> bool:
    """Whether the folder open at ``fd`` and the trust folder were opened through one
    mount, whose paths are both real paths of this process's (0.05 ms, where the whole
    check of the mounts costs a first load about 0.6 ms with its imports)."""
    mine = mount_id(fd)
    if not mine:
        return False
    try:
        keys = os.open(trust_dir_text(), _PIN | _CLOEXEC)
    except FileNotFoundError:  # (no trust folder: none to be in)
        return True
    except OSError:
        return False
    try:
        return mount_id(keys) == mine
    finally:
        os.close(keys)


def _refuse_trust_mounted_above(root: Path) -> None:
    """``_refuse_trust_mounted`` of the nearest folder there is on the way to ``root``
    (before it is made: no folder is made in the trust folder, by any path)."""
    text = os.path.abspath(str(root))
    while True:
        try:
            fd = os.open(text, _PIN | _CLOEXEC) if _PIN else None
        except OSError:
            parent = os.path.dirname(text)
            if parent == text:
                return
            text = parent
            continue
        if fd is None:  # pragma: no cover - Linux is the supported platform
            return
        try:
            _refuse_trust_mounted(root, fd)
        finally:
            os.close(fd)
        return


def exists(root: Path) -> bool:
    """A database, or code files (``verify`` must see code that was put there without
    one, e.g. committed to a repository)."""
    text = str(root)
    for name, kind in (("cache.db", stat.S_ISREG), (CODE_DIR, stat.S_ISDIR)):
        try:
            if kind(os.stat(os.path.join(text, name)).st_mode):
                return True
        except PermissionError:  # a folder you cannot search (another user's): there is
            return True  # something, and opening it says whose (it read as no cache at all)
        except (OSError, ValueError):
            continue
    return False


def _tag_head(root: Any) -> bytes:
    """The start of the folder's CACHEDIR.TAG (ours is ~100 bytes), if it is a regular
    file: never through a link, never blocking on a FIFO, never more than 4 KiB (a tag
    made sparse and huge was read whole); b"" otherwise."""
    try:
        fd = os.open(
            os.path.join(str(root), "CACHEDIR.TAG"), os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC
        )
    except (OSError, ValueError):
        return b""
    try:
        return os.read(fd, 4096) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        return b""
    finally:
        os.close(fd)


def wipe(root: Path, where: str) -> None:
    """Delete a cache directory whose database is damaged: only one tagged as ours, and
    only what wasmsbx keeps there (a policy may name the directory: whatever else is in
    it stays). ``where``: the folder as the store whose database failed opened it
    (Store.open's ``cache_where``), never the name again: a name swapped for a link to
    another cache meanwhile had that cache deleted (red team, round 20). The tag goes
    last, so a wipe that fails halfway leaves a cache `cache clear` still recognises."""
    from ..fstree import remove_tree

    if not _ours(where):
        raise CacheUnavailable(f"{root} has no wasmsbx CACHEDIR.TAG; not deleting it")
    names = [n for n in os.listdir(where) if n in OURS or _tag_being_written(n)]
    names.sort(key=lambda n: n == "CACHEDIR.TAG")
    for name in names:
        path = os.path.join(where, name)
        if os.path.isdir(path) and not os.path.islink(path):
            if not remove_tree(path):  # (any depth: a planted tree broke shutil.rmtree)
                raise CacheUnavailable(f"could not remove everything in {shown(path)}")
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    try:
        if os.listdir(where):
            return  # something else lives there
        info, now = os.stat(where), os.lstat(root)
        if (info.st_dev, info.st_ino) == (now.st_dev, now.st_ino):
            os.rmdir(root)  # (by name: the folder emptied, if the name still is it)
    except OSError:
        pass


class _opened:
    """``with _opened(root) as where``: the folder ``root`` opened for the block (a
    descriptor closed after it), ``where`` its /proc/self/fd text; ``root`` itself where
    folders cannot be pinned. Only for texts that do not outlive the block (see _PINNED)."""

    def __init__(self, root: Path) -> None:
        self.root, self.fd = str(root), None

    def __enter__(self) -> str:
        if not _PIN:  # pragma: no cover - Linux is the supported platform
            return self.root
        try:
            self.fd = os.open(self.root, _PIN | _CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise CacheUnavailable(f"{self.root} is not a directory") from None
            raise
        return f"/proc/self/fd/{self.fd}"

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)


# ---------------------------------------------------------------------------- keys


_FORMAT_TEXT = json.dumps(aot.FORMAT)


def entry_key(module_digest: str, fingerprint: dict, fingerprint_text: str = "") -> str:
    """The cache key: the module's digest (``aot.digest``, BLAKE3) and everything that
    changes the machine code. ``fingerprint_text``: ``json.dumps(fingerprint,
    sort_keys=True)``, if the caller keeps it (per engine: see ``_identity``)."""
    # The text is json.dumps({"fingerprint": ..., "format": ..., "module": ...},
    # sort_keys=True), put together from its parts (tests/test_cache.py checks they are
    # the same): the fingerprint is the same for every module of an engine.
    # (aot.FORMAT, 2, not the entry format: an entry of an earlier format sits where its
    # successor goes, so it is found, refused and replaced rather than left over)
    if not fingerprint_text:
        fingerprint_text = json.dumps(fingerprint, sort_keys=True)
    digest = module_digest
    quoted = f'"{digest}"' if recorded.is_digest(digest) else json.dumps(digest)
    text = f'{{"fingerprint": {fingerprint_text}, "format": {_FORMAT_TEXT}, "module": {quoted}}}'

    return aot.digest(text.encode("utf-8"))


def fingerprint_label(fp: dict) -> str:
    """ "wasmtime", "wasmer:llvm": how users name the backend that built an entry."""
    backend = fp.get("backend", "?")
    compiler = fp.get("compiler")
    if compiler and backend != "wasmtime":
        return f"{backend}:{compiler}"
    return backend


# ---------------------------------------------------------------------------- the store


class Store:
    """The cache directory: native code in files named by key, everything else in diskcache.

    The diskcache database (``cache.db``) is opened only when something needs it: a
    miss (the compile lock, the record, eviction), a damaged entry, the ``cache``
    commands. A hit reads one file and appends one line to the hit journal, so it never
    imports diskcache or sqlite3 (13 ms, more than the rest of a cached load).
    """

    compress = False  # runtime.cache_compress for this folder (cache.settings)
    checked: Optional[tuple] = None  # _folder_state when its checks last passed

    def __init__(self, root: Path, size_limit: int, where: str = "") -> None:
        from .trust import in_cache_roots

        self.root = root  # (what users see)
        # The folder as prepare_dir opened it (pin): every file is reached through it.
        self.where = where or str(root)
        # (Text: Path objects cost a cold start tens of µs per join on the run path.)
        self.code_text = os.path.join(self.where, CODE_DIR)
        self.hits_text = os.path.join(self.where, HITS)
        self.size_limit = size_limit
        self._db: Any = None
        self.checked: Optional[tuple] = None  # _folder_state when prepare_dir last passed
        # The user's own cache (no guest is granted it): entries are mapped in place,
        # if no one else can change the folders on the way to it either.
        self.protected = in_cache_roots(str(root), _real_of(self.where)) and _private_path(
            str(root)
        )

    @property
    def db(self) -> Any:
        if self._db is None:
            import diskcache

            recorded.check_pin(self.where)

            # A database that came with the folder (a project's cache_dir) is read by
            # diskcache as if it were its own: vetted first (red team 103), and every
            # setting diskcache would take from it given here instead.
            _vet_database(os.path.join(self.where, "cache.db"))
            self._db = diskcache.Cache(
                self.where, disk=_safe_disk(), timeout=60, **_database_settings()
            )
        return self._db

    @classmethod
    def open(
        cls,
        root: Path,
        size_limit: int,
        create: bool = True,
        connect: bool = False,
        inside: str = "",
    ) -> Optional[Store]:
        """The store in ``root`` (None if ``create`` is false and there is none); with
        ``connect``, its database is opened now, so a damaged one fails here. ``inside``:
        see prepare_dir."""
        if not create and not exists(root):
            return None
        store = cls(root, size_limit, prepare_dir(root, inside))
        if connect:
            try:
                store.db  # noqa: B018 - opens it
            except Exception as exc:
                # (the folder whose database failed, as checked: `cache clear` wipes it)
                exc.cache_where = store.where  # type: ignore[attr-defined]
                raise
        return store

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ---------------------------------------------------------- native code
    def code_path(self, key: str) -> Path:
        return Path(self.code_text_for(key))

    def code_text_for(self, key: str) -> str:
        return f"{self.code_text}{os.sep}{key[:2]}{os.sep}{key}{CODE_SUFFIX}"

    def blob(self, key: str) -> Optional[bytearray]:
        """The entry's bytes, read into a writable buffer so the backend can deserialize
        from it without another copy (wasmtime-py copies anything read-only). As a load
        opens it (entry.load): never through a link, never a FIFO or device (a planted one
        would hang ``cache verify`` or hand it endless bytes), never more than an entry
        can hold (a sparse file claiming a terabyte), never through a link in place of its
        folder (recorded.open_in_folder): OSError."""
        flags = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC
        try:
            fd = recorded.open_in_folder(self.code_text_for(key), flags)
        except FileNotFoundError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if info.st_size > entry_format.MAX_ENTRY:
                raise OSError(errno.EFBIG, f"{info.st_size} bytes, larger than any entry")
            data = bytearray(info.st_size)
            got = os.preadv(fd, [data], 0) if data else 0
        finally:
            os.close(fd)
        if got != len(data):  # shrank while we read: the digest check will reject what is left
            del data[got:]
        return data

    def has(self, key: str) -> bool:
        return self.code_path(key).is_file()

    def write_blob(self, key: str, blob: bytes) -> None:
        """Write the entry's file as a new file renamed into place, so no reader ever sees
        part of one, relative to its folder opened without following a link (a folder
        planted or swapped in as a link would aim the write elsewhere). (Not fsynced:
        after a power loss the file may be empty or damaged, which the digest check
        catches.)"""
        folder, name = os.path.split(self.code_text_for(key))
        try:
            where = recorded.open_code_folder(folder)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            raise CacheUnavailable(
                f"{folder} or its parent is a symbolic link or not a folder; a cache folder "
                "holds none (the entry would be written wherever it leads)"
            ) from None
        try:
            # Read-only (0400): no process of the user's opens it for writing by any
            # name, a guest's WASI writes through a hard link made after the entry was
            # mapped included (red team 149; WASI cannot change a mode). Root is not
            # held back by a mode: see README "Not seen".
            recorded.write_in_folder(where, name, blob, key[:16], ENTRY_MODE)
        except OSError as exc:
            exc.filename = os.path.join(folder, name)  # (not the temporary file's name)
            raise
        finally:
            os.close(where)

    def put(self, key: str, blob: bytes, record: dict) -> None:
        self.write_blob(key, blob)  # first the code, then the record that lists it
        with self.db.transact():
            self.db.set("m:" + key, json.dumps(record, sort_keys=True))
            self.db.delete("a:" + key)  # its code as an earlier build kept it, if any

    def _code_files(self, pattern: str) -> Iterator:
        """(path, lstat) of the files matching ``pattern`` in the code folders
        (``code/??/``). A folder there that is a link is not followed: one planted in a
        project's cache would have let ``prune`` delete files wherever it leads."""
        from fnmatch import fnmatchcase

        try:
            folders = list(os.scandir(self.code_text))
        except OSError:
            return
        for folder in folders:
            try:
                if len(folder.name) != 2 or not folder.is_dir(follow_symlinks=False):
                    continue
                files = list(os.scandir(folder.path))
            except OSError:  # removed meanwhile
                continue
            for file in files:
                if fnmatchcase(file.name, pattern):
                    try:
                        yield Path(file.path), file.stat(follow_symlinks=False)
                    except OSError:  # removed meanwhile
                        continue

    def code_keys(self) -> list:
        """Keys of every code file, with how old the file is (seconds)."""
        now = time.time()
        return [
            (path.name[: -len(CODE_SUFFIX)], now - info.st_mtime)
            for path, info in self._code_files("*" + CODE_SUFFIX)
        ]

    def code_volume(self) -> int:
        return sum(info.st_size for _, info in self._code_files("*"))

    # ---------------------------------------------------------- records
    def record(self, key: str) -> Optional[dict]:
        """The record of ``key`` if it has the shape wasmsbx writes (None otherwise: a
        database planted in a project's cache could hold any JSON, and a size of "huge"
        or a last use of null made every `cache` command and each miss of `run`, which
        evicts, fail with an internal error)."""
        text = self.db.get("m:" + key)
        if not isinstance(text, str):
            return None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # (RecursionError: a planted [[[[...)
            return None
        return data if _well_formed(data) else None

    def hit(self, key: str, label: str) -> None:
        """One more hit for ``key`` (its record's hits and last use) and for ``label``:
        a line for the hit journal, folded into the records when they are read.

        The line is kept in memory (``flush_hits``) and written with the others this
        process made when there are ``HITS_BATCH`` of them, when the first is
        ``HITS_DELAY`` seconds old, when this process reads the records, and when it
        exits: a cold start writes no file (five system calls and a lock, 4 % of a first
        Sandbox of graphviz.wasm). Hits of a process killed meanwhile are lost; they are
        statistics (``cache list``, and which entries are evicted first).
        """
        # In microseconds, floored (a rounded time could be in the future): milliseconds
        # ordered a hit before the creation of an entry made less than 1 ms earlier, so
        # eviction took the entry just used (CI failed on it twice).
        us = time.time_ns() // 1000
        line = f"{key} {label} {us // 1_000_000}.{us % 1_000_000:06d}\n".encode()
        global _PENDING_SINCE, _FLUSH_AT_EXIT
        with _PENDING_LOCK:
            if not _PENDING:
                _PENDING_SINCE = time.monotonic()
                if not _FLUSH_AT_EXIT:
                    atexit.register(flush_hits)
                    _FLUSH_AT_EXIT = True
                _flush_in_multiprocessing()
            _PENDING.append((self, line))
            due = len(_PENDING) >= HITS_BATCH or time.monotonic() - _PENDING_SINCE >= HITS_DELAY
        if due:
            flush_hits()

    def _journal(self, lines: bytes) -> None:
        """Append ``lines`` (whole hit lines) to the hit journal; fold it when they take
        it past a multiple of ``HITS_FOLD_SIZE``, so a cache only ever hit stays small.
        If the database cannot be opened, that is tried again only at the next multiple;
        past ``HITS_MAX`` hits are no longer counted.

        Written only while the cache folder is the one checked when it was opened (the
        device, inode, mode and owner ``_folder_state`` saw then; not its times, which
        the journal's own creation moves): hits kept since may outlive a folder swapped
        for a link to another (they are then dropped). Never through a link, never
        blocking on a FIFO, and never while this process forks (``_JOURNAL_LOCK``: a
        child would inherit the journal's lock, held, and wait for it forever)."""
        if self.checked is not None:
            now = _folder_state(self.root)
            if now is None or now[:4] != self.checked[:4]:
                return
        with _JOURNAL_LOCK:
            try:
                recorded.check_pin(self.hits_text)
            except OSError:
                return  # (the hits go uncounted: statistics only)
            fd = self._open_journal(os.O_CREAT | os.O_WRONLY | os.O_APPEND)
            if fd is None:  # the hits go uncounted (statistics only)
                return
            try:  # (locked: the journal's size is the one seen before this write)
                size = os.fstat(fd).st_size
                if size > HITS_MAX:
                    return
                size += os.write(fd, lines)
            finally:
                os.close(fd)  # releases the lock
        if size // HITS_FOLD_SIZE > (size - len(lines)) // HITS_FOLD_SIZE:
            self.fold_hits()

    def _open_journal(self, flags: int) -> Optional[int]:
        """The hit journal opened with ``flags`` and locked (``flock``; closing the
        descriptor releases it), or None: missing, a link (never followed: one swapped in
        after prepare_dir, see _refuse_links), a hard link (a file with another name
        elsewhere, which a fold would empty), or not a regular file (a FIFO or a device
        planted there: never read nor written, and opened without blocking, no lock
        waited for), or locked by another for ``JOURNAL_WAIT`` seconds. Called with
        ``_JOURNAL_LOCK`` held."""
        try:
            fd = os.open(self.hits_text, _JOURNAL_FLAGS | flags, 0o600)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            # (a second name is a hard link to a file elsewhere: appended to and emptied)
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and _flock(fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def fold_hits(self) -> int:
        """Move the hit journal into the records and counters; the number of hits.

        The database is opened first (a journal is kept while it cannot be); the journal's
        lock is held only to take its lines and empty it, never while waiting for the
        database. Hits taken by a fold that then fails are lost: they are statistics.
        """
        flush_hits()  # (this process's own hits first)
        db = self.db
        recorded.check_pin(self.hits_text)
        with _JOURNAL_LOCK:
            fd = self._open_journal(os.O_RDWR)
            if fd is None:  # (none, or one that is never emptied)
                return 0
            try:
                with os.fdopen(os.dup(fd), "rb") as f:
                    lines = f.read().splitlines()
                if lines:
                    os.ftruncate(fd, 0)
            finally:
                os.close(fd)
        per_key: dict = {}
        per_label: dict = {}
        now = time.time()
        for line in lines:
            parts = line.decode("utf-8", "replace").split()
            if len(parts) != 3:
                continue
            try:
                when = float(parts[2])
            except ValueError:
                continue
            # A journal planted in a project's cache: "inf" or "nan" made `cache list
            # --json` print Infinity (not JSON) and a time to come kept an entry from
            # ever being pruned. A hit is never later than now.
            if not 0.0 <= when <= now:
                continue
            count, last = per_key.get(parts[0], (0, 0.0))
            per_key[parts[0]] = (count + 1, max(last, when))
            per_label[parts[1]] = per_label.get(parts[1], 0) + 1
        if not per_label:
            return 0
        with db.transact():
            for key, (count, last) in per_key.items():
                record = self.record(key)
                if record is not None:
                    record["hits"] = int(record.get("hits", 0)) + count
                    record["last_used"] = max(float(record.get("last_used", 0)), last)
                    db.set("m:" + key, json.dumps(record, sort_keys=True))
            for label, count in per_label.items():
                db.incr(f"n:hits:{label}", count)
        return sum(per_label.values())

    def miss(self, label: str) -> None:
        self.db.incr(f"n:misses:{label}")

    def remove(self, key: str) -> int:
        """Delete an entry; return the bytes it held."""
        record = self.record(key) or {}
        code = self.code_path(key)
        for path in (code, code.with_suffix(MEMO_SUFFIX)):  # (first: a file that cannot
            _remove_file(path)  # be removed leaves its record, so the two stay together)
        self.db.delete("m:" + key)
        self.db.delete("a:" + key)  # its code, if an earlier build kept it in the database
        return int(record.get("size", 0))

    def clear(self) -> None:
        """Every entry, counter and lock, and the hit journal. Whatever stands in place of
        the code folder goes too (a file, a FIFO: removing the folder would open it and
        wait for a writer forever); CacheUnavailable if something could not be removed."""
        from ..fstree import remove_tree

        code = self.code_text
        recorded.check_pin(code)
        try:
            info: Optional[os.stat_result] = os.lstat(code)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            remove_tree(code)  # (any depth: 1,000 levels raised RecursionError in rmtree)
        elif info is not None:
            os.unlink(code)  # (a link is removed, never followed)
        if os.path.lexists(code):  # (the records stay with what is left)
            raise CacheUnavailable(f"could not remove everything in {shown(code)}")
        self.db.clear()
        try:
            os.unlink(self.hits_text)
        except FileNotFoundError:
            pass

    def keys(self, prefix: str) -> list:
        found = [
            k[len(prefix) :] for k in self.db.iterkeys() if isinstance(k, str) and k[:2] == prefix
        ]
        if prefix in _ENTRY_ROWS:  # (keys that name files: only digests, as entry_key makes)
            found = [k for k in found if recorded.is_digest(k)]
        return found

    def records(self) -> list:
        self.fold_hits()
        out = []
        for key in self.keys("m:"):
            record = self.record(key)
            if record is not None:
                record["key"] = key
                out.append(record)
        return out

    def counters(self) -> dict:
        """{(event, label): n} for hits and misses."""
        self.fold_hits()
        out = {}
        for name in self.keys("n:"):
            event, _, label = name.partition(":")
            value = self.db.get("n:" + name)
            if isinstance(value, int):
                out[(event, label)] = value
        return out

    def volume(self) -> int:
        return int(self.db.volume()) + self.code_volume()

    def evict(self, limit: int, keep: tuple = ()) -> list:
        """Remove least recently used entries until their sizes add up to ``limit`` or less.

        The bound counts the entries (native code and headers), not SQLite's own pages,
        which it reuses but never returns to the file system.
        """
        records = sorted(self.records(), key=lambda r: r.get("last_used", 0))
        total = sum(int(r.get("size", 0)) for r in records)
        removed = []
        for record in records:
            if total <= limit:
                break
            if record["key"] in keep:
                continue
            total -= self.remove(record["key"])
            removed.append(record)
        return removed

    # ---------------------------------------------------------- the compile lock
    def lock(self, key: str, wait: float = LOCK_WAIT) -> Optional[str]:
        """Take the compile lock for ``key``; None if the entry appeared while waiting
        (or the wait ran out: then the caller compiles anyway)."""
        token = f"{os.uname().nodename}:{os.getpid()}:{time.time()}"
        deadline = time.monotonic() + wait
        delay = 0.005
        while True:
            if self.db.add("l:" + key, token, expire=LOCK_TTL):
                return token
            if self.has(key) or time.monotonic() > deadline:
                return None
            self._break_stale("l:" + key)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _break_stale(self, lock_key: str) -> None:
        holder = self.db.get(lock_key)
        if not isinstance(holder, str):
            return
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host != os.uname().nodename or not pid.isdigit() or _alive(int(pid)):
            return
        with self.db.transact():
            if self.db.get(lock_key) == holder:
                self.db.delete(lock_key)

    def unlock(self, key: str, token: Optional[str]) -> None:
        if token is None:
            return
        with self.db.transact():
            if self.db.get("l:" + key) == token:
                self.db.delete("l:" + key)


_RECORD_NUMBERS = ("size", "native_size", "created", "last_used", "hits")
_RECORD_TEXTS = ("backend", "label", "compiler", "version", "optimize", "target")


def _number(value: Any) -> bool:
    import math

    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value < 1 << 63
    )


def _well_formed(data: Any) -> bool:
    """Whether ``data`` has the shape of a record :meth:`Lookup.record` writes."""
    if not isinstance(data, dict):
        return False
    if any(name in data and not _number(data[name]) for name in _RECORD_NUMBERS):
        return False
    if any(
        data.get(name) is not None and not isinstance(data[name], str) for name in _RECORD_TEXTS
    ):
        return False
    module = data.get("module", {})
    if not isinstance(module, dict):
        return False
    # The module's BLAKE3 names files (its facts record, its source memos): a digest, or
    # a planted row could name "../../x" and have `cache clear --module` delete x.facts.
    digest = module.get("blake3")
    if digest is not None and not (isinstance(digest, str) and recorded.is_digest(digest)):
        return False
    return all(
        module.get(n) is None or isinstance(module[n], str) for n in ("name", "sha256")
    ) and (module.get("size") is None or _number(module["size"]))


# The schema diskcache (5.x) makes, and wasmsbx's settings (eviction_policy "none": no
# index of its own): what a cache.db may hold, as sqlite_master lists it.
_SCHEMA = frozenset(
    {
        ("table", "Settings", "CREATE TABLE Settings ( key TEXT NOT NULL UNIQUE, value)"),
        ("index", "sqlite_autoindex_Settings_1", None),
        (
            "table",
            "Cache",
            "CREATE TABLE Cache ( rowid INTEGER PRIMARY KEY, key BLOB, raw INTEGER, "
            "store_time REAL, expire_time REAL, access_time REAL, access_count INTEGER "
            "DEFAULT 0, tag BLOB, size INTEGER DEFAULT 0, mode INTEGER DEFAULT 0, filename "
            "TEXT, value BLOB)",
        ),
        ("index", "Cache_key_raw", "CREATE UNIQUE INDEX Cache_key_raw ON Cache(key, raw)"),
        ("index", "Cache_expire_time", "CREATE INDEX Cache_expire_time ON Cache (expire_time)"),
        *(
            (
                "trigger",
                f"Settings_{what}_{when.lower()}",
                f"CREATE TRIGGER Settings_{what}_{when.lower()} AFTER {when} ON Cache FOR "
                f'EACH ROW BEGIN UPDATE Settings SET value = {change} WHERE key = "{what}"; END',
            )
            for what, when, change in (
                ("count", "INSERT", "value + 1"),
                ("count", "DELETE", "value - 1"),
                ("size", "INSERT", "value + NEW.size"),
                ("size", "UPDATE", "value + NEW.size - OLD.size"),
                ("size", "DELETE", "value - OLD.size"),
            )
        ),
    }
)
# Steps of SQLite's machine the vetting may take (a few hundred for a real database: it
# reads the schema's rows and the 16 of Settings), counted every _VET_EVERY steps.
_VET_STEPS = 1_000_000
_VET_EVERY = 1000


def _database_settings() -> dict:
    """Every setting diskcache would otherwise take from the database's Settings rows
    (each ``sqlite_*`` one becomes a PRAGMA, each ``disk_*`` one a keyword of the Disk):
    its defaults, with wasmsbx's choices. eviction_policy "none" and cull_limit 0: entries
    leave only by evict()/prune/clear, which keep the code and its record together.
    sqlite_synchronous 0: no fsync. With fsyncs every open and close of the database
    cost 10-30 ms; what they protect against, an OS crash tearing the database, costs a
    cache at most: entries are verified before use, and `wasmsbx cache clear` removes a
    damaged database."""
    from diskcache.core import DEFAULT_SETTINGS

    return {
        **DEFAULT_SETTINGS,
        "eviction_policy": "none",
        "cull_limit": 0,
        "statistics": 0,
        "tag_index": 0,
        "sqlite_synchronous": 0,
    }


def _vet_database(path: str) -> None:
    """Refuse a ``cache.db`` that diskcache did not make as wasmsbx opens it (sqlite3's
    DatabaseError: the run goes on without the cache, ``cache clear`` deletes it). A
    cache folder can come with its database (a cloned project's ``cache_dir``), and
    diskcache trusts it: a trigger planted on Settings ran an endless recursive view in
    every process that opened it, ``cache clear`` included, and a ``disk_foo`` row became
    a keyword its Disk refused (an internal error), a ``sqlite_x`` row a PRAGMA (red team
    103). So: its schema is exactly what diskcache makes (read without running any of
    it: no view, no trigger of its own), its Settings rows only names diskcache knows,
    its counters numbers; and reading it takes a bounded number of SQLite's steps."""
    import sqlite3

    from diskcache.core import DEFAULT_SETTINGS, METADATA

    if not os.path.lexists(path):
        return  # (diskcache makes it)
    con = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        steps = [0]

        def bounded() -> int:
            steps[0] += _VET_EVERY
            return steps[0] > _VET_STEPS  # (true: SQLite stops the query, "interrupted")

        con.set_progress_handler(bounded, _VET_EVERY)
        con.execute("PRAGMA trusted_schema = OFF")
        con.execute("PRAGMA query_only = ON")
        rows = con.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        odd = [name for kind, name, sql in rows if (kind, name, sql) not in _SCHEMA]
        if odd:
            raise sqlite3.DatabaseError(
                f"cache.db was not made by wasmsbx: it holds {shown(str(odd[0]))[:80]}"
            )
        if not any(name == "Settings" for _, name, _ in rows):
            return
        known = {**DEFAULT_SETTINGS, **METADATA}
        # Every row (diskcache reads them all: a key past any limit here was used, red
        # team 107), each key once (a schema edited by hand can drop UNIQUE). The steps
        # bound the reading of a table made huge.
        seen: set = set()
        for key, value in con.execute("SELECT key, value FROM Settings"):
            if key in seen:
                raise sqlite3.DatabaseError(
                    f"cache.db was not made by wasmsbx: the setting {shown(str(key))[:80]!r} "
                    "is there twice"
                )
            seen.add(key)
            if key not in known:
                raise sqlite3.DatabaseError(
                    f"cache.db was not made by wasmsbx: a setting {shown(str(key))[:80]!r}"
                )
            if key in METADATA and type(value) is not int:
                raise sqlite3.DatabaseError(
                    f"cache.db was not made by wasmsbx: {key} is not a count"
                )
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise sqlite3.DatabaseError(
                "cache.db was not made by wasmsbx: it took too long to read"
            ) from None
        raise
    finally:
        con.close()


def _safe_disk() -> type:
    """diskcache's Disk, minus what a database someone else wrote could abuse.

    A cache directory may come with its ``cache.db`` (a policy's ``cache_dir`` in a
    cloned repository), and diskcache trusts its rows: a pickled key or value would be
    unpickled (running code), a row's ``filename`` read or deleted wherever it points.
    wasmsbx stores only text and integers, inline: anything else is treated as absent.
    """
    import diskcache

    class SafeDisk(diskcache.Disk):
        def get(self, key: Any, raw: bool) -> Any:
            return super().get(key, raw) if raw else None  # never unpickles a key

        def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
            if mode != diskcache.core.MODE_RAW or filename is not None:
                return None  # never unpickles, never opens a file a row names
            return super().fetch(mode, filename, value, read)

        def remove(self, file_path: Any) -> Any:
            return None  # wasmsbx keeps no values in files: a row naming one was planted

    return SafeDisk


def _remove_file(path: Any) -> None:
    """Unlink ``path`` if it is there; a folder under a name the cache uses is left (a
    hostile project's cache can bring one: nothing reads it as a file, and failing on it
    made `cache prune`, `verify` and `clear` end in an internal error), and so is
    anything whose folder is a link (``code`` or ``code/NA`` planted or swapped in as a
    link to elsewhere: the unlink would have removed a file there; recorded.open_folder
    opens each level without following one), and anything whose folder is a file (no
    file can be in it: `cache verify`, `prune` and `clear --module` went on to an
    internal error)."""
    folder, name = os.path.split(os.fspath(path))
    try:
        fd = recorded.open_folder(folder)  # (O_PATH: needs no read permission)
    except OSError as exc:
        # none there, a link in place of code or NA (ENOTDIR under O_DIRECTORY on
        # Linux, ELOOP elsewhere), or a file there (ENOTDIR)
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return
        raise
    except ValueError:  # an embedded NUL: no such file
        return
    try:
        os.unlink(name, dir_fd=fd)
    except (FileNotFoundError, IsADirectoryError):
        pass
    finally:
        os.close(fd)


JOURNAL_WAIT = 2.0  # seconds a hit journal's lock is waited for; then the hits go uncounted


def _flock(fd: int) -> bool:
    """Lock the journal open as ``fd``; False if another holder kept it ``JOURNAL_WAIT``
    seconds. Never waited on for ever: hits are statistics, and a process that held the
    lock and stopped (a stopped or stuck wasmsbx, a child that inherited its descriptor)
    must not hang every later run and its exit (flush_hits runs at exit)."""
    if _fcntl is None:  # not POSIX: hit counts may lose a line under contention
        return True
    exclusive = _fcntl.LOCK_EX | _fcntl.LOCK_NB
    deadline = time.monotonic() + JOURNAL_WAIT
    pause = 0.001
    while True:
        try:
            _fcntl.flock(fd, exclusive)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, but not ours to signal
    return True


def cache_errors() -> tuple:
    """What a broken or busy cache raises; the run goes on without it. sqlite3's and
    diskcache's errors only if they are loaded: if not, nothing can have raised them
    (and a hit, which never loads them, does not pay for importing them here)."""
    import sys

    found = [OSError, ValueError, CacheUnavailable]
    sqlite3, diskcache = sys.modules.get("sqlite3"), sys.modules.get("diskcache")
    if sqlite3 is not None:
        found.append(sqlite3.Error)
        found.append(sqlite3.Warning)  # (not an Error on Python 3.9: "one statement at a time")
    if diskcache is not None:
        found.append(diskcache.Timeout)
    return tuple(found)


_SHARED: dict = {}  # root -> Store kept open by the run path, for this process


def settings(policy: Any, source: str) -> tuple:
    """(runtime.cache_size, runtime.cache_compress) for the cache folder ``resolve_dir``
    found from ``source``: what a discovered policy asked (``policy.capped``, see
    policy.OWN_CACHE_KEYS) only for the folder it names itself ("policy"); for any other
    (yours: --cache-dir, $WASMSBX_CACHE_DIR, the default) the values in force."""
    values = policy.values
    size, compress = values["runtime.cache_size"], values["runtime.cache_compress"]
    if source == "policy":
        held = getattr(policy, "capped", None)
        if held:
            size = held.get("runtime.cache_size", size)
            compress = held.get("runtime.cache_compress", compress)
    return size, compress


def open_store(policy: Any, override: Optional[str] = None, create: bool = True):
    """A new Store with its database open (close it when done), or None if ``create`` is
    false and none exists."""
    root, source = resolve_dir(policy, override)
    size, compress = settings(policy, source)
    store = Store.open(root, size, create, True, _confined(policy, source))
    if store is not None:
        store.compress = compress
    return store


def _confined(policy: Any, source: str) -> str:
    """The real folder of a discovered sandbox.toml that named the cache folder: the
    folder opened must still be in it (policy.confine checked its name, and a name can
    be swapped for a link to elsewhere before the folder is opened); "" otherwise."""
    return getattr(policy, "confined", "") if source == "policy" else ""


def shared_store(policy: Any, override: Optional[str] = None) -> Store:
    """The run path's Store for this directory, opened once per process: opening the
    database costs about a millisecond, which matters to a process that runs many
    modules (``watch``, the Python API) and to the cached load time."""
    return _shared_store_at(*resolve_dir(policy, override), policy)


def _shared_store_at(root: Path, source: str, policy: Any) -> Store:
    store = _SHARED.get(root)
    if store is not None:
        seen = _folder_state(root)
        if seen is None or seen != store.checked:
            # Another folder (another device or inode: removed and made again, say) gets
            # a store of its own, with its own database; the same one is checked again
            # (prepare_dir: still ours, still private).
            another = seen is None or store.checked is None or seen[:2] != store.checked[:2]
            inside = _confined(policy, source)
            if another or not exists(root) or prepare_dir(root, inside) != store.where:
                seen = None
            else:
                store.checked = _folder_state(root)
        if seen is not None:
            store.size_limit, store.compress = settings(policy, source)
            return store
    size, compress = settings(policy, source)
    opened = Store.open(root, size, inside=_confined(policy, source))
    assert opened is not None  # (create=True: made if missing)
    opened.compress = compress
    opened.checked = _folder_state(root)
    _SHARED[root] = opened
    return opened


# Hits not yet in their journal (Store.hit): (store, line), in the order they came.
_PENDING: list = []
_PENDING_SINCE = 0.0  # time.monotonic() of the oldest
_PENDING_LOCK = threading.Lock()
_FLUSH_AT_EXIT = False  # flush_hits registered with atexit
_FLUSH_IN_MP: Optional[int] = None  # the process whose multiprocessing finalizers flush
# Held while a journal is open (Store._journal, fold_hits) and by a fork (os.register_at_fork)
_JOURNAL_LOCK = threading.Lock()
_JOURNAL_FLAGS = _NOFOLLOW | _NONBLOCK | getattr(os, "O_CLOEXEC", 0)  # (Store._open_journal)
HITS_BATCH = 64  # pending hits written together
HITS_DELAY = 10.0  # seconds the oldest pending hit may wait for a later one


def flush_hits() -> None:
    """Write the hits this process has not yet written, each to its store's journal
    (called by atexit, by a fold, and by the commands and workers that leave with
    ``os._exit``). Failures are ignored: hits are statistics."""
    with _PENDING_LOCK:
        if not _PENDING:
            return
        pending = _PENDING[:]
        del _PENDING[:]
    by_store: dict = {}
    for store, line in pending:
        by_store.setdefault(store, []).append(line)
    for store, lines in by_store.items():
        try:
            store._journal(b"".join(lines))
        except Exception:  # noqa: BLE001 - never fail a run (or its exit) over statistics
            pass


def _forget_pending_hits() -> None:
    """In a forked child: the parent writes its own pending hits. A child of
    multiprocessing leaves with os._exit after its finalizers: flush_hits is one."""
    global _PENDING_LOCK, _JOURNAL_LOCK
    _PENDING_LOCK = threading.Lock()
    _JOURNAL_LOCK = threading.Lock()
    del _PENDING[:]
    _flush_in_multiprocessing()


def _flush_in_multiprocessing() -> None:
    """Have multiprocessing's exit (its children leave with os._exit after running
    their finalizers, skipping atexit) write this process's hits: registered in each
    process that has multiprocessing loaded, once (never imports it)."""
    global _FLUSH_IN_MP
    util = sys.modules.get("multiprocessing.util")
    if util is None or os.getpid() == _FLUSH_IN_MP:
        return
    try:
        util.Finalize(None, flush_hits, exitpriority=100)
        # (a child's bootstrap clears the finalizers it inherited, then runs these)
        util.register_after_fork(_MP_ANCHOR, _in_multiprocessing_child)
    except Exception:  # noqa: BLE001 - statistics only
        return
    _FLUSH_IN_MP = os.getpid()


class _Anchor:
    """What multiprocessing's after-fork registry holds (weakly) for this module."""


_MP_ANCHOR = _Anchor()


def _in_multiprocessing_child(_anchor: Any) -> None:
    global _FLUSH_IN_MP
    _FLUSH_IN_MP = None  # (registered at fork, then cleared by the child's bootstrap)
    _flush_in_multiprocessing()


def _before_fork() -> None:
    _JOURNAL_LOCK.acquire()


def _after_fork_in_parent() -> None:
    _JOURNAL_LOCK.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_forget_pending_hits,
    )


def _existing_store(found: tuple, policy: Any) -> Optional[Store]:
    """The shared store of the folder ``found`` names (``resolve_dir``: folder, source)
    if a cache is there (``exists``), else None: looking in the cache never creates one.
    A store this process opened, whose folder is as it was (``_folder_state``: a
    database or code folder removed would change its mtime), is not looked for again."""
    root, source = found
    store = _SHARED.get(root)
    if store is not None and store.checked is not None and _folder_state(root) == store.checked:
        store.size_limit, store.compress = settings(policy, source)
        return store
    if not exists(root):
        return None
    return _shared_store_at(root, source, policy)


def _folder_state(root: Path) -> Optional[tuple]:
    """What stat() says of the cache folder (and where the trust folder is), after
    ``prepare_dir`` passed: while it says the same, the checks hold still (a folder
    swapped, chmodded, chowned, or with a name added or removed, a link planted say,
    has another inode, mode, owner, mtime or ctime), so a process that loads many
    modules checks its cache folder once, not on every load (0.2 ms each)."""
    keys = trust_dir_text()
    try:
        info = os.stat(root)
    except OSError:
        return None
    trust: tuple
    try:
        found = os.stat(keys)
        trust = (keys, found.st_dev, found.st_ino)
    except OSError:
        trust = (keys, None, None)
    return (
        info.st_dev,
        info.st_ino,
        info.st_mode,
        info.st_uid,
        info.st_mtime_ns,
        info.st_ctime_ns,
        trust,
    )


# ---------------------------------------------------------------------------- the run path


def load_or_compile(
    engine: Any,
    wasm: bytes,
    policy: Any,
    name: Optional[str] = None,
    compile_fn: Optional[Callable[[bytes], Any]] = None,
    cache_dir: Optional[str] = None,
    digest: Optional[str] = None,
    store: Optional[Store] = None,
) -> Outcome:
    """The module from the cache if an intact entry exists, else compiled and stored.
    ``wasm``: its bytes, or a function that reads them (called only if they are needed:
    a miss). ``digest``: the module's (``aot.digest``), if the caller has it already
    (required with a function); ``store``:
    the shared store of this cache folder, if the caller just had it (module_facts).

    Never fails because of the cache: a broken cache is reported in ``warnings`` and
    the module is compiled as if there were none.
    """
    started = time.perf_counter()
    try:
        store = store or shared_store(policy, cache_dir)
        lookup = Lookup(store, engine, wasm, name, compile_fn, digest)
    except cache_errors() as exc:
        timings: dict = {}
        if callable(wasm):  # (read only now: the cache was to give the module)
            wasm = wasm()
        module = _timed(compile_fn or engine.compile, wasm, timings)
        warning = f"cache unavailable ({reason(exc)}); compiled without it"
        return Outcome(module, "error", timings, [warning])
    lookup.timings["cache"] = time.perf_counter() - started
    return lookup.run()


def module_facts(policy: Any, cache_dir: Optional[str], wasm: bytes) -> tuple:
    """(digest, facts, recorded, store) of ``wasm`` for a run that uses the cache: its
    digest (the cache key's), what a run needs to know of it (``recorded.RunFacts``: from
    its authenticated record in the cache, else parsed; None if it cannot be parsed, the
    runtime then gives the precise error), whether that came from a record, and the
    store it looked in (for the load that follows; None if the cache is unavailable)."""
    digest = aot.digest(wasm)
    store, facts = None, None
    try:
        # (a run refused before it compiles leaves no cache behind)
        store = _existing_store(resolve_dir(policy, cache_dir), policy)
        if store is not None:
            facts = recorded.recall(store.code_text, digest, _facts_key())
    except cache_errors():
        facts = None
    if facts is not None:
        return digest, facts, True, store
    from ..wasm.facts import FactsError

    try:
        return digest, recorded.read(wasm), False, store
    except FactsError:
        return digest, None, False, store


def known_file(policy: Any, cache_dir: Optional[str], path_text: str, info: Any) -> Optional[tuple]:
    """(digest, facts, store) of the module file at ``path_text`` (absolute; ``info``:
    its stat()), if an authentic source memo names exactly that file (native.located)
    and the module's facts record is authentic; else None (never an error: the file is
    then read and hashed as always)."""
    try:
        store = _existing_store(resolve_dir(policy, cache_dir), policy)
        if store is None:
            return None
        code = store.code_text
        try:
            keys = trust.tag_keys(("cache-source", "cache-facts"))
        except trust.KeyProblem:
            keys = None
        if keys is None:
            return None
        digest = located.recall(code, path_text, info, keys[0])
        if digest is None:
            return None
        facts = recorded.recall(code, digest, keys[1])
    except cache_errors():
        return None
    if facts is None or facts.interface is None:
        return None
    return digest, facts, store


def remember_source(
    policy: Any,
    cache_dir: Optional[str],
    path_text: str,
    info: Any,
    digest: str,
    read_at: Optional[float] = None,
) -> None:
    """Write the source memo of the module file at ``path_text`` (native.located)."""
    try:
        code = shared_store(policy, cache_dir).code_text
        located.remember(code, path_text, info, digest, _source_key(), read_at)
    except cache_errors():
        pass


def _source_key() -> Optional[bytes]:
    try:
        return trust.tag_key("cache-source")
    except trust.KeyProblem:
        return None


def remember_facts(policy: Any, cache_dir: Optional[str], digest: str, facts: Any) -> None:
    """Record ``facts`` of the module of ``digest`` in the cache (see native.recorded),
    for the next process; a cache that cannot take it is left alone."""
    try:
        code = shared_store(policy, cache_dir).code_text
        recorded.remember(code, digest, facts, _facts_key())
    except cache_errors():
        pass


def _facts_key() -> Optional[bytes]:

    try:
        return trust.tag_key("cache-facts")
    except trust.KeyProblem:
        return None


def cached(
    engine: Any,
    wasm: bytes,
    policy: Any,
    name: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> Any:
    """The module from an existing cache entry that passes every check ``run`` makes
    (authenticated with the user's key, built from ``wasm`` for ``engine``), or None.
    Looks only: creates no cache, stores and counts nothing; a broken cache is None."""
    try:
        store = open_store(policy, cache_dir, create=False)
        if store is None:
            return None
        try:
            return Lookup(store, engine, wasm, name).load(touch=False)
        finally:
            store.close()
    except cache_errors():
        return None


def _identity(engine: Any) -> tuple:
    """(fingerprint, label, fingerprint as the cache key's JSON) of ``engine``, worked
    out once per engine: its fingerprint names the runtime's version, which wasmtime's
    backend reads from the installed package (0.2 ms a load otherwise). Callers must not
    change the dict."""
    found = getattr(engine, "_wasmsbx_identity", None)
    if found is None:
        fingerprint = aot.normalise(engine.fingerprint())
        text = json.dumps(fingerprint, sort_keys=True)
        found = (fingerprint, fingerprint_label(fingerprint), text)
        try:
            engine._wasmsbx_identity = found
        except AttributeError:  # (an engine with __slots__)
            pass
    return found


# Digests of module bytes given to load_or_compile, held with the bytes they are of: a
# process that loads the same module again (a server holding its modules, a worker) does
# not hash it again. Found by length and ends, then compared with the bytes given (the
# same object, else byte for byte: 0.1 ms for 0.9 MB against 0.3 ms of hashing), so a
# digest is only ever used for exactly the bytes it was computed from. Bounded: entries
# and bytes held (bytes a caller still holds cost nothing more).
_DIGESTS = Lru(32, 128 << 20)


def module_digest(wasm: Any) -> str:
    """``aot.digest(wasm)``, computed once per process for the same ``bytes`` (mutable
    buffers are hashed every time: they may change between two loads)."""
    if type(wasm) is not bytes:
        return aot.digest(wasm)
    key = sample_key(wasm)
    found = _DIGESTS.get(key)
    if found is not None and (found[0] is wasm or found[0] == wasm):
        return found[1]
    digest = aot.digest(wasm)
    _DIGESTS.put(key, (wasm, digest), len(wasm))
    return digest


# Entry keys worked out in this process: (module digest, fingerprint text) -> key. A
# process that loads the same module again hashes no key text (10 µs of a 0.2 ms warm
# load). Bounded: cleared when full.
_KEYS: dict = {}
KEYS_MAX = 1024


def _key_of(digest: str, fingerprint: dict, fingerprint_text: str) -> str:
    """``entry_key``, remembered (by the fingerprint's text: the same text, the same key)."""
    found = _KEYS.get((digest, fingerprint_text)) if fingerprint_text else None
    if found is None:
        found = entry_key(digest, fingerprint, fingerprint_text)
        if fingerprint_text:
            if len(_KEYS) >= KEYS_MAX:
                _KEYS.clear()
            _KEYS[(digest, fingerprint_text)] = found
    return found


class Lookup:
    """One module's trip through the cache: find, verify and load it, or compile and store."""

    def __init__(
        self,
        store: Store,
        engine: Any,
        wasm: bytes,
        name: Optional[str],
        compile_fn: Optional[Callable] = None,
        digest: Optional[str] = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self._wasm = wasm  # the module's bytes, or a function that reads them (a miss)
        self.name = name
        self.compile_fn = compile_fn or engine.compile
        self.fingerprint, self.label, fingerprint_text = _identity(engine)
        self.module_digest = digest or module_digest(self.wasm)
        self.key = _key_of(self.module_digest, self.fingerprint, fingerprint_text)
        self._module_sha: Optional[str] = None
        self.timings: dict = {}
        self.warnings: list = []
        self.exports: Optional[list] = None

    @property
    def wasm(self) -> bytes:
        if callable(self._wasm):
            self._wasm = self._wasm()
        return self._wasm

    @property
    def module_sha(self) -> str:
        """SHA-256 of the module, for its record and header: computed on a miss only."""
        if self._module_sha is None:
            self._module_sha = aot.sha256(self.wasm)
        return self._module_sha

    def outcome(self, module: Any, state: str) -> Outcome:
        return Outcome(
            module, state, self.timings, self.warnings, self.key, self.exports, self.store
        )

    def run(self) -> Outcome:
        try:
            module = self.load()
            if module is not None:
                return self.outcome(module, "hit")
            waited = time.perf_counter()
            token = self.store.lock(self.key)  # one process compiles, the others wait
            self.timings["cache"] += time.perf_counter() - waited
        except cache_errors() as exc:
            self.warnings.append(f"cache unavailable ({reason(exc)}); compiled without it")
            return self.outcome(self.compile(), "error")
        try:
            try:
                if token is None or self.store.has(self.key):  # stored by another process
                    module = self.load()
                    if module is not None:
                        return self.outcome(module, "hit")
            except cache_errors() as exc:  # (its folder replaced meanwhile, say)
                self.warnings.append(f"cache unavailable ({reason(exc)}); compiled without it")
                return self.outcome(self.compile(), "error")
            module = self.compile()
            try:
                self.save(module)
                self.store.miss(self.label)
            except cache_errors() as exc:
                self.warnings.append(f"could not store compiled code in the cache ({reason(exc)})")
                # (not "miss", which says "compiled, then stored": red team 129)
                return self.outcome(module, "error")
            return self.outcome(module, "miss")
        finally:
            try:
                self.store.unlock(self.key, token)
            except cache_errors():
                pass  # the lock expires on its own

    def compile(self) -> Any:
        return _timed(self.compile_fn, self.wasm, self.timings)

    def load(self, touch: bool = True) -> Any:
        """Open, authenticate, verify, deserialize (native/entry.py says how, and what
        is checked when); a bad entry is deleted and reported, never loaded. With a key
        file that is refused (see trust), the cache is unavailable: nothing is loaded,
        nothing deleted."""
        started = time.perf_counter()
        try:
            path = self.store.code_text_for(self.key)
            loaded = entry_format.load(
                path,
                lambda: self.tag_key(create=True),  # a first entry found without a key
                self.store.protected,  # is not ours
                (path[: -len(CODE_SUFFIX)] + MEMO_SUFFIX, self.memo_key),
            )
            if loaded is None:
                return None
            with loaded:
                header = loaded.header
                if header["module"].get("blake3") != self.module_digest:
                    raise aot.Corrupt("it belongs to another module")
                found = header["fingerprint"]
                diff = [] if found == self.fingerprint else aot.differences(found, self.fingerprint)
                if diff:
                    raise aot.Corrupt("built for another engine: " + "; ".join(diff[:2]))
                module = self.engine.deserialize(loaded.native())
        except (aot.Corrupt, errors.ModuleError) as exc:
            self.store.remove(self.key)
            what = f"cache entry for {self.name or self.module_digest[:12]} ({self.label})"
            if isinstance(exc, entry_format.OldFormat):
                self.warnings.append(f"{what} {reason(exc)}; discarded and recompiled")
            elif "incompatible with native host" in str(exc):
                # (authentic, made where the CPU has features this process cannot use:
                # under valgrind, say; not an integrity failure, round 42)
                self.warnings.append(
                    f"{what} was built for CPU features this process cannot use "
                    f"({reason(exc)}); recompiled"
                )
            else:
                self.warnings.append(
                    f"{what} failed its integrity check ({reason(exc)}); discarded and recompiled"
                )
            return None
        self.exports = header["module"].get("exports")
        if touch:
            try:
                self.store.hit(self.key, self.label)
            except cache_errors():
                pass  # a hit that cannot be counted is still a hit
        self.timings["load"] = time.perf_counter() - started
        return module

    def tag_key(self, create: bool) -> Optional[bytes]:
        """The user's key for cache entries (trust.tag_key); a refused key file is
        reported once and the run goes on without the cache."""

        try:
            return trust.tag_key("cache-entry", create=create)
        except trust.KeyProblem as exc:
            raise CacheUnavailable(exc.message) from None

    def memo_key(self) -> Optional[bytes]:

        try:
            return trust.tag_key("cache-memo")
        except trust.KeyProblem:
            return None

    def save(self, module: Any) -> None:
        started = time.perf_counter()
        key = self.tag_key(create=True)
        payload = self.engine.serialize(module)
        self.exports = aot.export_records(self.wasm)  # so a hit need not parse the module
        blob = entry_format.pack(
            self.fingerprint,
            payload,
            self.module_sha,
            len(self.wasm),
            self.name,
            exports=self.exports,
            module_digest=self.module_digest,
            key=key,
            level=COMPRESS_LEVEL if self.store.compress and len(payload) >= COMPRESS_MIN else None,
        )
        if len(blob) <= self.store.size_limit:  # an entry bigger than the cache is not kept
            self.store.put(self.key, blob, self.record(len(blob), len(payload)))
            self.store.evict(self.store.size_limit, keep=(self.key,))
        self.timings["store"] = time.perf_counter() - started

    def record(self, size: int, native: int) -> dict:
        fp, now = self.fingerprint, time.time()
        module = {"name": self.name, "sha256": self.module_sha, "size": len(self.wasm)}
        module["blake3"] = self.module_digest  # whose facts record (native.recorded) it keeps
        return {
            "module": module,
            "backend": fp.get("backend"),
            "label": self.label,
            "compiler": fp.get("compiler"),
            "version": fp.get("version"),
            "optimize": fp.get("optimize"),
            "target": fp.get("target"),
            "size": size,  # on disk
            "native_size": native,  # the native code, decompressed
            "created": now,
            "last_used": now,
            "hits": 0,
        }


def _timed(compile_fn: Callable, wasm: bytes, timings: dict) -> Any:
    started = time.perf_counter()
    module = compile_fn(wasm)
    timings["compile"] = time.perf_counter() - started
    return module


def reason(exc: BaseException) -> str:
    if isinstance(exc, errors.WasmsbxError):
        return exc.message
    if isinstance(exc, NotADirectoryError) and exc.filename:
        name = shown(str(exc.filename))
        return f"{exc.strerror}: {name} (a file or a symbolic link where a folder belongs)"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {shown(str(exc.filename))}" if exc.filename else exc.strerror
    return shown(str(exc)) or type(exc).__name__


# ---------------------------------------------------------------------------- compile command


def store_compiled(
    engine: Any,
    wasm: bytes,
    policy: Any,
    name: Optional[str] = None,
    compile_fn: Optional[Callable] = None,
    cache_dir: Optional[str] = None,
    force: bool = False,
) -> dict:
    """``wasmsbx compile`` into the cache: compile (unless an intact entry exists) and store.

    Unlike the run path, failures to use the cache are errors here: storing is the point.
    """
    try:
        store = open_store(policy, cache_dir)
    except cache_errors() as exc:
        raise errors.InputError(
            f"cache unavailable: {reason(exc)}", hint="choose another --cache-dir"
        ) from None
    try:
        lookup = Lookup(store, engine, wasm, name, compile_fn)
        try:
            listed = store.has(lookup.key) and store.record(lookup.key) is not None
            if not force and listed and lookup.load(touch=False) is not None:
                return _compiled(lookup, "cached")  # (code without a record is stored again)
        except cache_errors() as exc:
            raise errors.InputError(
                f"cannot read the cache: {reason(exc)}", hint="choose another --cache-dir"
            ) from None
        module = lookup.compile()
        try:
            lookup.save(module)
        except cache_errors() as exc:
            raise errors.InputError(
                f"cannot store in the cache: {reason(exc)}",
                hint="free some space, or choose another --cache-dir",
            ) from None
        if not store.has(lookup.key):
            lookup.warnings.append(
                f"compiled code is larger than runtime.cache_size ({store.size_limit} bytes); "
                "not kept"
            )
        return _compiled(lookup, "stored")
    finally:
        store.close()


def _compiled(lookup: Lookup, state: str) -> dict:
    record = lookup.store.record(lookup.key) or {}
    return {
        "backend": lookup.label,
        "version": lookup.fingerprint.get("version"),
        "state": state,
        "key": lookup.key,
        "size": record.get("size"),
        "timings": {k: round(v, 6) for k, v in lookup.timings.items()},
        "warnings": list(lookup.warnings),
    }


# ---------------------------------------------------------------------------- reports


def entries(store: Store) -> list:
    """Every entry's record, newest use first, with its age in seconds."""
    now = time.time()
    out = []
    for record in store.records():
        record["age"] = max(0.0, now - record.get("created", now))
        record["idle"] = max(0.0, now - record.get("last_used", now))
        out.append(record)
    return sorted(out, key=lambda r: -r.get("last_used", 0))


def stats(store: Store) -> dict:
    records = store.records()
    counters = store.counters()
    per: dict = {}
    for record in records:
        slot = per.setdefault(record.get("label", "?"), _slot())
        slot["entries"] += 1
        slot["size"] += int(record.get("size", 0))
    for (event, label), n in counters.items():
        if event in ("hits", "misses"):
            per.setdefault(label, _slot())[event] += n
    for slot in per.values():
        slot["hit_rate"] = _rate(slot["hits"], slot["misses"])
    hits = sum(s["hits"] for s in per.values())
    misses = sum(s["misses"] for s in per.values())
    return {
        "entries": len(records),
        "total_size": sum(int(r.get("size", 0)) for r in records),
        "disk_usage": store.volume(),
        "size_limit": store.size_limit,
        "hits": hits,
        "misses": misses,
        "hit_rate": _rate(hits, misses),
        "backends": dict(sorted(per.items())),
    }


def _slot() -> dict:
    return {"entries": 0, "size": 0, "hits": 0, "misses": 0}


def _rate(hits: int, misses: int) -> Optional[float]:
    return round(hits / (hits + misses), 4) if hits + misses else None


def clear(store: Store, module_sha: Optional[str] = None, backend: Optional[str] = None) -> dict:
    """Remove every entry, or those of one module and/or one backend."""
    if module_sha is None and backend is None:
        count, size = len(store.keys("m:")), stats_size(store)
        store.clear()
        return {"removed": count, "freed": size}
    removed, freed, modules = 0, 0, set()
    for record in store.records():
        if module_sha and record.get("module", {}).get("sha256") != module_sha:
            continue
        if backend and backend not in (record.get("label"), record.get("backend")):
            continue
        freed += store.remove(record["key"])
        removed += 1
        modules.add((record.get("module") or {}).get("blake3"))
    # What the cache knew of those modules (their facts records, the source memos naming
    # them) goes too, unless an entry for another backend still holds the module.
    modules -= {(r.get("module") or {}).get("blake3") for r in store.records()}
    modules.discard(None)
    if modules:
        for digest in modules:
            _remove_file(recorded.path_for(store.code_text, digest))
        for memo, info in store._code_files("*" + located.SUFFIX):
            if _memo_names(memo, info) in modules:
                _remove_file(memo)
    return {"removed": removed, "freed": freed}


def _memo_names(memo: Path, info: os.stat_result) -> Optional[str]:
    """The module digest a source memo (native.located) names, unauthenticated; None for
    one that is not a regular file or names none."""
    if not stat.S_ISREG(info.st_mode):
        return None
    try:
        fd = os.open(memo, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
        try:
            return located.digest_of(os.read(fd, 128))
        finally:
            os.close(fd)
    except OSError:
        return None


def stats_size(store: Store) -> int:
    return sum(int(r.get("size", 0)) for r in store.records())


def prune(store: Store, older_than: Optional[float] = None, max_size: Optional[int] = None) -> dict:
    """Remove entries unused for ``older_than`` seconds, then LRU ones beyond ``max_size``
    (default: the configured runtime.cache_size); also orphans and stale locks."""
    now = time.time()
    removed, freed = [], 0
    for record in store.records():
        if older_than is not None and now - record.get("last_used", 0) >= older_than:
            freed += store.remove(record["key"])
            removed.append(record["key"])
    limit = store.size_limit if max_size is None else max_size
    for record in store.evict(limit):
        freed += int(record.get("size", 0))
        removed.append(record["key"])
    orphans = _orphans(store)
    store.db.expire()  # stale compile locks
    return {
        "removed": len(removed),
        "freed": freed,
        "orphans": orphans,
        "entries": len(store.keys("m:")),
        "total_size": stats_size(store),
    }


def _unlisted(records: set, code: dict) -> list:
    """Keys of code files (``code``: key -> age) without a record, old enough not to be
    a store under way."""
    return [key for key, age in code.items() if key not in records and age > ORPHAN_GRACE]


def _orphans(store: Store) -> int:
    """Remove records without code and code without records (or a torn temporary file)."""
    records, code = set(store.keys("m:")), dict(store.code_keys())
    removed = 0
    for key in records - set(code):
        store.db.delete("m:" + key)
        removed += 1
    for key in _unlisted(records, code):
        _remove_file(store.code_path(key))
        removed += 1
    for key in store.keys("a:"):  # native code as diskcache values (earlier builds)
        store.db.delete("a:" + key)
        removed += 1
    for memo, _ in store._code_files("*" + MEMO_SUFFIX):
        if not memo.with_suffix(CODE_SUFFIX).exists():
            _remove_file(memo)
    # Facts records (native.recorded) of modules no entry holds any more. (Records made
    # before they named their module's BLAKE3 name none: their facts are read again.)
    modules = {(r.get("module") or {}).get("blake3") for r in store.records()}
    now = time.time()
    for facts, info in store._code_files("*" + recorded.SUFFIX):
        module = facts.name[: -len(recorded.SUFFIX)]
        if module not in modules and now - info.st_mtime > ORPHAN_GRACE:
            _remove_file(facts)
    # Source memos (native.located) naming a module no entry holds (or not files).
    for memo, info in store._code_files("*" + located.SUFFIX):
        if now - info.st_mtime <= ORPHAN_GRACE:
            continue
        named = _memo_names(memo, info)
        if named is None or named not in modules:
            _remove_file(memo)
    now = time.time()
    for tmp, info in store._code_files(".*.tmp"):
        if now - info.st_mtime > ORPHAN_GRACE:
            try:
                _remove_file(tmp)  # (never through a folder swapped for a link meanwhile)
            except OSError:
                pass
    return removed


def verify(store: Store, remove: bool = True) -> dict:
    """Check every entry: tagged with the user's key, header agreeing with its key."""

    try:
        tag_key = trust.tag_key("cache-entry")
    except trust.KeyProblem as exc:
        raise errors.InputError(f"cannot verify the cache: {exc.message}", hint=exc.hint) from None
    checked, bad = 0, []
    listed = set(store.keys("m:"))  # (before any removal: a removed record's code,
    # left behind because it is a folder, was reported again as code without a record)
    for record in store.records():
        checked += 1
        key = record["key"]
        reason = _check_entry(store, key, record, tag_key)
        if reason:
            bad.append(
                {"key": key, "module": record.get("module", {}).get("name"), "reason": reason}
            )
            if remove:
                store.remove(key)
                bad[-1]["reason"] += _left(store, key)
    for key, age in store.code_keys():
        if key in listed:
            continue
        # Code without a record: a store under way (young, and then authentic) or a file
        # put there by someone else, which fails the tag at any age.
        reason = _check_entry(store, key, {}, tag_key)
        if reason is None and age > ORPHAN_GRACE:
            reason = "no record for this entry"
        if reason is None:
            continue
        checked += 1
        bad.append({"key": key, "module": None, "reason": reason})
        if remove:
            store.remove(key)
            bad[-1]["reason"] += _left(store, key)
    # Facts records (native.recorded): like code without a record, counted only if bad
    # (a run ignores a bad one; here it is reported and removed).
    facts_key = _facts_key()
    for path, _ in store._code_files("*" + recorded.SUFFIX):
        digest = path.name[: -len(recorded.SUFFIX)]
        # Where a run looks for it, and a name a digest has: a file with another name (a
        # planted "é.facts" made the tag's ASCII encoding raise) or in another folder
        # (recall would check the record at its right place instead) is no record.
        if (
            path.parent.name == digest[:2]
            and recorded.recall(path.parent.parent, digest, facts_key) is not None
        ):
            continue
        checked += 1
        reason = "facts record not authentic for its module and this wasmsbx version"
        bad.append({"key": path.name, "module": None, "reason": reason})
        if remove:
            _remove_file(path)  # (a folder of that name stays; never through a link)
    return {"checked": checked, "ok": checked - len(bad), "bad": bad, "removed": remove}


def _left(store: Store, key: str) -> str:
    """What a removal left (a folder under an entry's name stays: ``_remove_file``)."""
    try:
        folder = stat.S_ISDIR(os.lstat(store.code_path(key)).st_mode)
    except OSError:
        return ""
    return " (a folder: left in place; `wasmsbx cache clear` removes it)" if folder else ""


def _check_entry(store: Store, key: str, record: dict, tag_key: Optional[bytes]) -> Optional[str]:
    try:
        blob = store.blob(key)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    if blob is None:
        return "its native code is missing"
    if tag_key is None:
        return "not authenticated: you have no secret key, so this entry is not yours"
    try:
        artifact = entry_format.open_buffer(blob, tag_key)
    except aot.Corrupt as exc:
        return str(exc)
    if entry_key(artifact.module_digest, artifact.fingerprint) != key:
        return "its header does not match its key"
    return None
