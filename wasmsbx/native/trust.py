"""Who may vouch for native code: the user's secret key, their signing key, trusted keys.

Native code (cache entries, artifacts) skips WebAssembly validation, so it is loaded only
when something the user trusts vouches for it (see README, "Security model"):

- **the secret key**: 32 random bytes, created on first use, private to the user (0600
  in a 0700 folder). Everything wasmsbx compiles for this user is tagged with a keyed
  BLAKE3 of it, so the user's own cache entries and artifacts need no ceremony;
- **trusted public keys**: Ed25519 keys the user added with ``wasmsbx trust add``,
  whose signatures let artifacts built elsewhere (CI, a colleague) run here;
- **the signing key**: the user's own Ed25519 key (``wasmsbx trust keygen``), which
  ``wasmsbx compile --sign`` uses for artifacts meant for other machines.

All three live in the *trust folder*: ``$WASMSBX_TRUST_DIR``, else the user config dir
(``$XDG_CONFIG_HOME/wasmsbx/trust``, ``~/.config/wasmsbx/trust`` on Linux). Only the
user's environment chooses it; no policy can, because a policy found in the working
folder is written by someone else.

This module is imported by every cached load, so it imports nothing heavy: platformdirs
only off Linux, ``cryptography`` only to sign or to check a signature.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections import namedtuple
from pathlib import Path
from typing import Any, Optional

from .. import errors
from .trustdir import (  # noqa: F401 - (in_cache_roots, the file names: their users)
    KEY_FILES,
    SECRET_FILE,
    SIGNING_FILE,
    TRUSTED_FILE,
    cache_roots,
    in_cache_roots,
    make_private,
    mount_aliases,
    mounted_aliases,
    mountinfo,
    overlay_layers,
    resolved,
    unescape_mount,
)
from .trustdir import proc_target as _proc_target
from .trustdir import real as _real
from .trustdir import trust_dir_text as _trust_dir_text
from .trustdir import within as _within

SECRET_SIZE = 32
KEY_PREFIX = "ed25519:"
# Each use of the secret gets a key of its own (BLAKE3's derive_key mode), so a tag made
# for one purpose never verifies for another.
CONTEXTS = {
    "cache-entry": "wasmsbx 2026-12-02 native code tag: cache entry",
    "artifact": "wasmsbx 2026-12-02 native code tag: artifact",
    "handoff": "wasmsbx 2026-12-02 native code tag: handoff to a worker process",
    "cache-memo": "wasmsbx 2026-12-02 cache entry verified and unchanged since",
    "cache-facts": "wasmsbx 2026-12-02 cache facts record: what a module declares",
    "cache-source": "wasmsbx 2026-12-02 cache source memo: which module a file holds",
}
SIGNATURE_CONTEXT = b"wasmsbx 2026-12-02 artifact signature\0"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as a key must not hang the run


class KeyProblem(errors.InputError):
    """A key file that exists but must not be used (wrong owner, mode, type or size)."""


class Authenticated(namedtuple("Authenticated", "code by")):
    """Native code that passed a check: the only thing a backend's ``deserialize`` takes.

    ``code`` is the engine's serialized module (a buffer), ``by`` says who vouched for
    it ("your key", "signature by NAME", "this process"), for messages and ``--stats``.
    (``collections.namedtuple``: ``typing.NamedTuple`` costs the run path ~0.3 ms.)
    """

    code: Any
    by: str
    __slots__ = ()


class VerifiedFile:
    """Authenticated native code in a file no other process can change (a sealed memfd,
    or an entry in the user's own cache, see native/entry.py), held open by ``fd``: an
    engine that can map a file opens ``path``, which names that descriptor and not a
    path someone could swap; ``bytes()`` reads it for the others."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def __bytes__(self) -> bytes:
        data = os.pread(self.fd, self.size, 0)
        if len(data) != self.size:
            raise OSError(errno.EIO, "native code file shrank")
        return data

    def __len__(self) -> int:
        return self.size


def require(native: Any) -> Any:
    """The code inside ``native``; a TypeError for anything not Authenticated, so no
    caller can hand raw bytes to a deserializer by mistake."""
    if not isinstance(native, Authenticated):
        raise TypeError(
            "native code must be authenticated before it is deserialized "
            f"(got {type(native).__name__}; see wasmsbx.native.trust)"
        )
    return native.code


# ---------------------------------------------------------------------------- the folder


def trust_dir() -> Path:
    """$WASMSBX_TRUST_DIR, else the user config dir + "wasmsbx/trust"."""
    return Path(_trust_dir_text())


def _owned(info: os.stat_result) -> bool:
    return not hasattr(os, "getuid") or info.st_uid == os.getuid()


def private_dir(create: bool) -> Optional[Path]:
    """The trust folder, checked (ours, a directory) and made private (0700); None if it
    does not exist and ``create`` is false."""
    root = trust_dir()
    if create:
        _make_dir(root)
    try:
        info = root.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyProblem(f"cannot read the trust folder {root}: {exc.strerror}") from None
    _check_dir(root, info)
    return root


def _make_dir(root: Path) -> None:
    try:
        try:
            os.mkdir(root, 0o700)  # (the parents first only if missing: one call usually)
        except FileNotFoundError:
            make_private(str(root))
        except FileExistsError:
            if not os.path.exists(root):  # a dangling link: nothing to check, none made
                raise
            # (a file there: private_dir refuses it)
    except OSError as exc:
        raise KeyProblem(
            f"cannot create the trust folder {root}: {exc.strerror or exc}",
            hint="set WASMSBX_TRUST_DIR to a folder of your own",
            path=str(root),
        ) from None


def _check_dir(root: Path, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise KeyProblem(f"the trust folder {root} is not a directory", path=str(root))
    if not _owned(info):
        raise KeyProblem(
            f"the trust folder {root} belongs to another user (uid {info.st_uid})",
            hint="set WASMSBX_TRUST_DIR to a folder of your own",
            path=str(root),
        )
    if info.st_mode & 0o077:  # ours, but open to others: close it (files are checked too)
        if info.st_mode & stat.S_ISVTX or not _holds_only_keys(root):
            # A folder of other things (a home, /tmp, a project) named as the trust
            # folder, by $WASMSBX_TRUST_DIR="~" say: it was made 0700, its other users
            # locked out, even by `trust show` (red team 137).
            raise KeyProblem(
                f"the trust folder {root} is open to others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}) and holds other files: not made "
                "private, not used",
                hint="set WASMSBX_TRUST_DIR to a folder for wasmsbx's keys alone (it is "
                "made if missing)",
                path=str(root),
            )
        try:
            os.chmod(root, 0o700)
        except OSError as exc:
            raise KeyProblem(f"cannot make {root} private: {exc.strerror}") from None


def _holds_only_keys(root: Path) -> bool:
    """Whether the folder holds nothing but the key files (and their temporary files)."""
    temporary = tuple(f".{name}." for name in KEY_FILES)
    try:
        with os.scandir(root) as entries:
            return all(
                entry.name in KEY_FILES
                or (
                    entry.name.startswith(temporary)
                    and entry.name.endswith(".tmp")
                    and entry.is_file(follow_symlinks=False)
                )
                for entry in entries
            )
    except OSError:
        return False


# ---------------------------------------------------------------------------- the secret


def _open_private(path: Path, what: str) -> Optional[int]:
    """A descriptor on ``path`` if it is a private regular file of ours; None if absent.
    Symbolic links are refused: the key is a file the user never needs to link."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _problem(path, what, "is a symbolic link") from None
        raise _problem(path, what, f"cannot be read ({exc.strerror})") from None
    info = os.fstat(fd)
    why = None
    if not stat.S_ISREG(info.st_mode):
        why = "is not a regular file"
    elif not _owned(info):
        why = f"belongs to another user (uid {info.st_uid})"
    elif info.st_mode & 0o077:
        why = f"is readable or writable by others (mode {stat.S_IMODE(info.st_mode):04o})"
    elif info.st_nlink > 1 and not _names_all_here(path, fd):
        why = "has another name outside the trust folder (a hard link)"
    if why:
        os.close(fd)
        raise _problem(path, what, why)
    return fd


def _names_all_here(path: Path, fd: int) -> bool:
    """Whether every name of the key file open at ``fd`` is in its own folder: its
    temporary name while it is made (hard-linked into place), never a copy elsewhere. A
    second name in a folder a guest is granted (a `cp -al` backup) showed the guest the
    key, which the grant checks, by folder, cannot see (red team 139). The count is
    taken again after the folder is listed: a temporary name removed meanwhile (another
    process making the file) is no second name (red team 140)."""
    for _ in range(3):
        info = os.fstat(fd)
        if info.st_nlink <= 1:
            return True
        found = 0
        try:
            with os.scandir(path.parent) as entries:
                for entry in entries:
                    try:
                        seen = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if (seen.st_dev, seen.st_ino) == (info.st_dev, info.st_ino):
                        found += 1
        except OSError:
            return False
        now = os.fstat(fd).st_nlink
        if found >= now:
            return True
        if now == info.st_nlink:  # (steady, and a name is elsewhere)
            return False
    return False


def _problem(path: Path, what: str, why: str) -> KeyProblem:
    hint = (
        "anyone who could read or replace it can forge native code for you: run "
        "`wasmsbx trust rotate` to make a new one (the cache is then recompiled, and your "
        "own artifacts must be compiled again)"
        if what == "secret key"
        else f"fix or remove {path}"
    )
    return KeyProblem(f"your wasmsbx {what} {path} {why}; not used", hint=hint, path=str(path))


def _read_secret(path: Path) -> Optional[bytes]:
    fd = _open_private(path, "secret key")
    if fd is None:
        return None
    try:
        data = os.read(fd, SECRET_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) != SECRET_SIZE:
        # (one byte past the key is read: a larger file was said to hold 33 bytes)
        held = f"more than {SECRET_SIZE}" if len(data) > SECRET_SIZE else str(len(data))
        raise _problem(path, "secret key", f"holds {held} bytes, not {SECRET_SIZE}")
    return data


def _create_secret(path: Path) -> None:
    """Write a new secret to a private temporary file, then link it into place: the link
    fails if another process got there first (its key wins), and no reader ever sees a
    partial key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
    try:
        os.write(fd, os.urandom(SECRET_SIZE))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # created meanwhile by another process: use that one
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)


def secret(create: bool = False) -> Optional[bytes]:
    """The user's secret key (created if missing and ``create``), or None."""
    root = private_dir(create)
    if root is None:
        return None
    path = root / SECRET_FILE
    data = _read_secret(path)
    if data is None and create:
        try:
            _create_secret(path)
        except OSError as exc:
            raise KeyProblem(
                f"cannot create your secret key {path}: {exc.strerror or exc}", path=str(path)
            ) from None
        data = _read_secret(path)
    return data


_DERIVED: dict = {}  # (secret path, purpose) -> (the file's lstat signature, derived key)


def _signature(info: os.stat_result) -> tuple:
    """What identifies one unchanged file: any write, chmod, chown, rename or
    replacement changes it (mtime, ctime, inode)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def tag_key(purpose: str, create: bool = False) -> Optional[bytes]:
    """The key that tags native code for ``purpose`` ("cache-entry", "artifact",
    "handoff"), derived from the secret; None if there is no secret (and ``create`` is
    false).

    Every cached load asks for it, so a process that checked the key file once keeps
    the derived key while one lstat() shows the file unchanged (0.3 ms of checks and
    Path objects otherwise, a tenth of a cached load of a 1 MB module)."""
    keys = tag_keys((purpose,), create)
    return None if keys is None else keys[0]


def tag_keys(purposes: tuple, create: bool = False) -> Optional[tuple]:
    """The keys for each of ``purposes``, after one check of the key file (a cold start
    asks for two at once); None if there is no secret (and ``create`` is false)."""
    path = f"{_trust_dir_text()}{os.sep}{SECRET_FILE}"
    try:
        seen = _signature(os.lstat(path))
    except OSError:
        seen = None
    if seen is not None:
        keys = []
        for purpose in purposes:
            known = _DERIVED.get((path, purpose))
            if known is None or known[0] != seen:
                break
            keys.append(known[1])
        else:
            return tuple(keys)
    from blake3 import blake3

    material = secret(create)
    if material is None:
        return None
    # Every purpose's key at once: a cached load asks for three (entry, memo, facts),
    # and each read of the key file is 0.3 ms of checks.
    derived = {
        name: blake3(material, derive_key_context=text).digest() for name, text in CONTEXTS.items()
    }
    wanted = tuple(derived[purpose] for purpose in purposes)
    try:
        signature = _signature(os.lstat(path))
    except OSError:
        return wanted
    if signature != seen:
        # Replaced (rotated) or created around the read: which file was read is not
        # known, so nothing is kept (the next call reads the key file again).
        return wanted
    for name, key in derived.items():
        _DERIVED[(path, name)] = (signature, key)
    return wanted


def rotate() -> Path:
    """Replace the secret key with a new one (whatever state the old one is in)."""
    root = private_dir(create=True)
    assert root is not None
    path = root / SECRET_FILE
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise KeyProblem(f"cannot remove {path}: {exc.strerror}", path=str(path)) from None
    secret(create=True)
    return path


def seal(code: Any, purpose: str = "handoff") -> bytes:
    """``code`` followed by its tag: native code handed to another process of this user
    (batch workers), which checks it with :func:`unseal`."""
    from blake3 import blake3

    key = tag_key(purpose, create=True)
    assert key is not None
    return bytes(code) + blake3(code, key=key).digest()


def unseal(blob: Any, purpose: str = "handoff") -> Optional[Authenticated]:
    """The code :func:`seal` sealed, authenticated; None if the tag does not match (or
    there is no usable key here, e.g. on another machine)."""
    from _operator import _compare_digest

    from blake3 import blake3

    try:
        key = tag_key(purpose)
    except KeyProblem:
        return None
    if key is None or len(blob) < 32:
        return None
    view = memoryview(blob)
    if not _compare_digest(blake3(view[:-32], key=key).digest(), bytes(view[-32:])):
        return None
    return Authenticated(view[:-32], "your key")


def _overlaps(a: str, b: str) -> bool:
    return _within(a, b) or _within(b, a)


def refuse_key_grants(grants: list, opened: Optional[list] = None) -> None:
    """A PolicyError if a directory grant would show the guest the trust folder or the
    user's own cache: a guest that reads the secret key can forge native code, and one
    that writes in the cache could change native code after it was checked; either
    would then run outside the sandbox. Nor a procfs (``refuse_proc_grant``).

    ``opened``: the grants' directories as opened (``open_grants``: descriptors, the
    real paths of what they hold); the checks are then of those, the very directories
    the guest is given."""
    keys = os.path.realpath(trust_dir())
    caches = [os.path.realpath(root) for root in cache_roots()]
    if not grants:
        return
    table = mountinfo()  # (read once: thousands of mounts take milliseconds to read)
    shown = [keys, *mounted_aliases(keys, table)]
    # (a bind mount of a cache, or of a folder in it: red team 142, a guest wrote into
    # an entry through one)
    caches += [alias for root in list(caches) for alias in mounted_aliases(root, table)]
    procs = proc_mounts(table)
    for i, grant in enumerate(grants):
        if opened is None:
            host, probe = _real(grant.host), None
        else:
            host, probe = opened[i][1], fd_path(opened[i][0])
        refuse_proc_grant(grant.host, host, procs, probe)
        _refuse_overlap(grant.host, host, shown, "your wasmsbx keys ({})", "the trust folder")
        _refuse_overlap(
            grant.host,
            host,
            caches,
            "your wasmsbx cache ({}), whose native code runs outside the sandbox",
            "the cache",
        )


def _refuse_overlap(given: str, host: str, roots: list, what: str, holds: str) -> None:
    """A PolicyError if ``host`` (the real path of the grant of ``given``) is one of
    ``roots``, inside one or around one: ``what`` names the root ({}), ``holds`` what the
    hint says to leave out."""
    for root in roots:
        if _overlaps(host, root):
            raise errors.PolicyError(
                f"the grant of {given} would give the guest {what.format(root)}",
                hint=f"grant a folder that does not contain {holds}",
                key="filesystem",
            )


def refuse_proc_grant(given: str, host: str, procs: list, probe: Optional[str] = None) -> None:
    """A PolicyError if the grant of ``given`` (real path ``host``) is a procfs, is inside
    one, or holds one (``procs``: their mount points). WASI opens the guest's files in
    the process that runs it, so ``/proc/self`` there is that process: its ``mem`` file
    writes the host's own memory (red team round 52: a guest granted ``/proc`` wrote an
    int3 over the host's libc, and read-only it read the host's memory and environment).
    No directory grant can confine that. Also when /proc/self/mountinfo cannot be read
    (a /proc hidden under another file system, round 53): the grant's own file system is
    asked (statfs), which catches a grant on or inside a procfs wherever it is mounted,
    though not one that holds a procfs mounted below it (round 55: only mountinfo says
    where mounts are). ``probe``: a path that opens the grant's directory as checked
    (/proc/self/fd/N), for statfs."""
    if _on_procfs(probe or host):
        procs = [host, *procs]
    _refuse_overlap(
        given,
        host,
        procs,
        "the process file system ({}): /proc/self there is the process that runs the guest",
        "a /proc (copy the files the guest needs)",
    )


def fd_path(fd: int) -> str:
    """The path that names what descriptor ``fd`` holds (a magic link: opening it opens
    that very file or directory, whatever its name now is)."""
    return f"/proc/self/fd/{fd}"


def by_descriptor() -> bool:
    """Whether files can be handed on by descriptor here (/proc/self/fd), so that what
    was checked is what the runtime opens (``open_grants``, ``open_stdin``)."""
    return os.path.isdir("/proc/self/fd")


def open_grants(grants: list) -> Optional[list]:
    """Each granted directory opened once: [(descriptor, real path)], the descriptors
    O_PATH (close them when done); None where /proc/self/fd is missing (then the names
    are checked and given to the runtime as before).

    A grant was checked by its name, and the runtime opened the name again: between the
    two, another guest with write access to the grant's parent (or any process) could
    swap the folder for a symlink to /proc or to the trust folder, and the guest was given
    what the check had refused (red team round 82: the host's libc overwritten through
    /proc/self/mem, the secret key read, about one try in 10 to 80). Now what is checked
    and what the guest gets are one directory: the one this descriptor holds, whose path
    must still be the grant's (resolved when the policy was read: a folder moved, replaced
    by a link or removed since is refused), and the runtime opens it through
    /proc/self/fd/N."""
    if not grants or not by_descriptor():
        return None
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    opened: list = []
    try:
        for grant in grants:
            try:
                fd = os.open(grant.host, flags)
            except OSError as exc:
                raise _grant_gone(grant, exc) from None
            opened.append((fd, ""))
            try:
                real = os.readlink(fd_path(fd))
            except OSError as exc:
                raise _grant_gone(grant, exc) from None
            if real != grant.host:  # (its real path when the grant was made)
                from ..errors import inert

                raise _grant_gone(grant, f"it is now {inert(real)}")
            opened[-1] = (fd, real)
    except BaseException:
        close_grants(opened)
        raise
    return opened


def close_grants(opened: Optional[list]) -> None:
    for fd, _ in opened or ():
        try:
            os.close(fd)
        except OSError:
            pass


def _grant_gone(grant: Any, why: Any) -> errors.WasmsbxError:
    """The grant cannot be given as checked (``why``: text, or the OSError): a
    PolicyError; a ResourceExhausted when the process is out of descriptors (red team
    143: that read as a folder moved or removed, exit 101)."""
    from ..errors import inert

    if isinstance(why, OSError):
        if why.errno in (errno.EMFILE, errno.ENFILE):
            return errors.ResourceExhausted(
                f"out of file descriptors giving the guest {inert(grant.host)} ({why.strerror})",
                hint="raise the open-files limit (ulimit -n), or grant fewer folders",
            )
        why = why.strerror or str(why)
    return errors.PolicyError(
        f"the granted directory {inert(grant.host)} (guest {inert(grant.guest)}) was moved, "
        f"replaced or removed after the policy was read: {why}",
        hint="grant a directory no guest or other process changes while wasmsbx runs",
    )


def open_stdin(path: str) -> Optional[int]:
    """The guest's stdin file found once (an ``O_PATH`` descriptor: no open of a FIFO,
    whose writer a second open would miss, red team round 84) and checked
    (``refuse_stdin``): the runtime is to open this very file through ``fd_path``.
    None where there are no descriptor paths (the runtime opens the name). OSError if it
    cannot be found; close the descriptor when done."""
    if not by_descriptor():
        return None
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        refuse_stdin(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def refuse_stdin(fd: int, path: str) -> None:
    """A PolicyError if the guest's stdin file ``path``, open as ``fd`` (``O_PATH`` will
    do), is in the trust folder, or on a procfs while ``path`` does not name one. A link
    (made, say, by a guest of another run that can write the file's folder) would hand
    the guest the secret key, or /proc/self/environ of the process running it (the class
    of red team round 82's grant swap; round 84 read the key this way). A file of /proc
    named as such (``/proc/cpuinfo``) is the user's to give."""
    from ..errors import inert

    # (``real`` is a real path already: resolving it again raised as a link on its way
    # was swapped, exit 105 or a wasmer crash, red team round 87)
    real = _proc_target(fd_path(fd))
    keys = _real(trust_dir())
    if real and _within(real, keys):
        raise errors.PolicyError(
            f"the guest's stdin {inert(path)} is in the trust folder ({keys}): a guest "
            "that read your wasmsbx keys could forge native code",
            hint="give a file outside the trust folder (was it replaced by a link?)",
        )
    why = _stdin_shows_keys(fd, real, keys)
    if why == _UNPLACED:
        raise errors.PolicyError(
            f"the guest's stdin {inert(path)} lies on a mount whose place this process "
            "cannot tell (another mount namespace's, or a detached one): it may be in the "
            f"trust folder ({keys}), whose keys would let a guest forge native code",
            hint="give a file on this process's own mounts",
        )
    if why:
        raise errors.PolicyError(
            f"the guest's stdin {inert(path)} is in the trust folder ({keys}) {why}: a "
            "guest that read your wasmsbx keys could forge native code",
            hint="give a file outside the trust folder",
        )
    if _on_procfs(fd_path(fd)) and not names_procfs(path):
        raise errors.PolicyError(
            f"the guest's stdin {inert(path)} leads into the process file system: "
            "/proc/self there is the process that runs the guest",
            hint="give a file that is not a link into /proc (was it replaced by one?)",
        )


_UNPLACED = "unplaced"  # (_stdin_shows_keys: on a mount not in this process's table)


def _stdin_shows_keys(fd: int, real: str, keys: str) -> str:
    """How the file open at ``fd`` (real path ``real``) is in the trust folder ``keys``
    by another path, "" if it is not: a bind mount of the folder, of one around it or of
    a key file alone, an overlay that shows one (as grants are checked: red team 147
    gave a guest the secret key as a policy's stdin through each); a key file by a
    second name (a hard link); a mount this process cannot place (another namespace's,
    through /proc/PID/root; a detached one), where the file cannot be told apart."""
    from .trustdir import places

    try:
        info = os.fstat(fd)
    except OSError:
        return ""
    for name in KEY_FILES:
        try:
            key = os.stat(os.path.join(keys, name))
        except OSError:
            continue
        if (key.st_dev, key.st_ino) == (info.st_dev, info.st_ino):
            return f"by another name ({name}: a hard link)"
    table = mountinfo()
    if not table:
        return ""
    if real and any(_within(real, alias) for alias in mounted_aliases(keys, table)):
        return "by another path (a bind mount or an overlay)"
    mine = places(fd, table)
    if mine is None:
        return _UNPLACED
    try:
        folder = os.open(keys, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        theirs = places(folder, table) or []
    finally:
        os.close(folder)
    for dev, inside in mine:
        if (not dev and _within(inside, keys)) or any(
            dev and dev == d and _within(inside, at) for d, at in theirs
        ):
            return "by another path (a bind mount or an overlay)"
    return ""


def names_procfs(path: str) -> bool:
    """Whether ``path`` names a file of a procfs and never leaves one on the way there:
    every folder and link the kernel walks to open it (``trustdir.walked``) lies
    in a procfs mount. ``/proc/cpuinfo`` and ``/proc/self/environ`` do; a file that leads
    there does not, nor one reached through /proc (``/proc/self/cwd/in.txt``, where
    ``in.txt`` is a link a guest of another run planted: red team round 85)."""
    from .trustdir import walked

    mounts = proc_mounts()
    inside = [p for p in walked(os.path.abspath(path)) if p != os.sep]
    return bool(inside) and all(any(_within(p, m) for m in mounts) for p in inside)


_PROC_SUPER_MAGIC = 0x9FA0  # statfs f_type of a procfs (linux/magic.h)


def _on_procfs(path: str) -> bool:
    """Whether ``path`` is on a procfs, by statfs() (Linux; False where it cannot say).
    f_type is the first field of struct statfs, a C long."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buffer = ctypes.create_string_buffer(256)  # (struct statfs: 120 bytes on 64-bit)
        if libc.statfs(os.fsencode(path), buffer) != 0:
            return False
    except (OSError, AttributeError, ValueError):
        return False
    return ctypes.c_long.from_buffer(buffer).value == _PROC_SUPER_MAGIC


def proc_mounts(table: Optional[bytes] = None) -> list:
    """The mount points of this process's procfs file systems (real paths, from
    ``table``, /proc/self/mountinfo read now if not given); ["/proc"] as well, whether
    or not it is one now."""
    return proc_mount_points(mountinfo() if table is None else table)


def proc_mount_points(text: bytes) -> list:
    """``proc_mounts`` of a mountinfo text: "/proc" and the mount point of each line
    whose file system type (after the " - ") is proc."""
    found = ["/proc"]
    for line in text.split(b"\n"):  # (not splitlines: a mount point may hold a CR)
        fields, sep, rest = line.partition(b" - ")
        parts = fields.split(b" ")
        if sep and len(parts) >= 5 and rest.split(b" ", 1)[0] == b"proc":
            found.append(os.fsdecode(unescape_mount(parts[4])))
    return found


# ---------------------------------------------------------------------------- public keys


def encode_public(raw: bytes) -> str:
    import base64

    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def decode_public(text: str) -> bytes:
    """The 32 raw bytes of an "ed25519:BASE64" public key; UsageError if malformed."""
    import base64
    import binascii

    text = text.strip()
    if not text.startswith(KEY_PREFIX):
        raise errors.UsageError(
            f"{text[:60]!r} is not a wasmsbx public key",
            hint=f"keys look like {KEY_PREFIX}BASE64 (`wasmsbx trust keygen` prints one)",
        )
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise errors.UsageError(
            f"{text[:60]!r} is not a valid Ed25519 public key (32 bytes in base64)"
        )
    if weak_public(raw):
        raise errors.UsageError(
            f"{text[:60]!r} is not a usable Ed25519 public key: not a point of the curve's "
            "prime-order group (the identity, a point of small order, or none at all), "
            "under which anyone can make signatures that verify",
            hint="`wasmsbx trust keygen` prints a real key; ask the author for theirs",
        )
    return raw


def weak_public(raw: bytes) -> bool:
    """Whether the 32 bytes ``raw`` are no public key a private key can have made: off
    the curve, not canonically encoded, or of small order. Under the identity point
    (``AQAA...``), say, the signature R = identity, S = 0 verifies for every message, and
    OpenSSL (``cryptography``) accepts such keys (red team 106: an artifact "signed" by
    no one ran once the key was trusted). libsodium's check, through PyNaCl: the point
    must be in the prime-order subgroup, where every real public key is."""
    from nacl.bindings import crypto_core_ed25519_is_valid_point

    return len(raw) != 32 or not crypto_core_ed25519_is_valid_point(bytes(raw))


def key_id(raw: bytes) -> str:
    """A short name for a public key in messages: 16 hex digits of its BLAKE3."""
    from blake3 import blake3

    return blake3(raw).hexdigest()[:16]


class TrustedKey(namedtuple("TrustedKey", "key name")):
    key: str  # "ed25519:BASE64"
    name: str
    __slots__ = ()

    @property
    def raw(self) -> bytes:
        return decode_public(self.key)

    def to_dict(self) -> dict:
        return {"key": self.key, "name": self.name, "id": key_id(self.raw)}


def _trusted_path(create: bool = False) -> Optional[Path]:
    root = private_dir(create)
    return None if root is None else root / TRUSTED_FILE


def trusted_keys() -> list:
    """The keys the user trusts, from the trusted-keys file: one "ed25519:BASE64 NAME" a
    line. A file that others could have written is refused, not half-trusted."""
    path = _trusted_path()
    if path is None:
        return []
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
    except FileNotFoundError:
        return []
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # (a link to ~/dotfiles/trusted_keys: a guest granted
            # that folder could add its author as a signer, red team 139)
            raise _problem(path, "trusted keys file", "is a symbolic link") from None
        raise _problem(path, "trusted keys file", f"cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or not _owned(info) or info.st_mode & 0o022:
            raise _problem(path, "trusted keys file", "is not a regular file only you can write")
        if info.st_nlink > 1 and not _names_all_here(path, handle.fileno()):
            raise _problem(
                path, "trusted keys file", "has another name outside the trust folder (a hard link)"
            )
        text = handle.read().decode("utf-8", "replace")
    keys = []
    # (lines end at "\n" alone, as written: splitlines also split at U+2028 and others a
    # name could hold, which made the rest of a name a trusted key: red team 107)
    for line in text.split("\n"):
        words = line.split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        try:
            decode_public(words[0])
        except errors.UsageError:
            continue  # a damaged line trusts nothing
        keys.append(TrustedKey(words[0], words[1].strip() if len(words) > 1 else ""))
    return keys


def _write_trusted(keys: list) -> Path:
    from ..outfile import write_output

    path = _trusted_path(create=True)
    assert path is not None
    lines = ["# wasmsbx trusted signing keys: artifacts they sign run here (wasmsbx trust)"]
    lines += [f"{k.key} {k.name}".rstrip() for k in keys]
    write_output(path, ("\n".join(lines) + "\n").encode("utf-8"), mode=0o600, trust_folder=True)
    return path


NAME_MAX = 100  # characters of a trusted key's name


def add_trusted(text: str, name: Optional[str] = None) -> TrustedKey:
    """Trust a public key (under ``name``); re-adding a key renames it."""
    raw = decode_public(text)
    key = encode_public(raw)
    name = (name or key_id(raw)).strip().replace("\n", " ")
    if len(name) > NAME_MAX or not name.isprintable():  # (no control, no line separator)
        # (printed by trust list/show and in every refusal of an artifact: red team 106
        # stored an ESC sequence and a name of 100,000 characters)
        raise errors.UsageError(
            f"a trusted key's name is at most {NAME_MAX} characters, none of them control "
            "characters",
            hint="choose another --name",
        )
    keys = [k for k in trusted_keys() if k.key != key]
    if any(k.name == name for k in keys):
        raise errors.UsageError(
            f"another trusted key is already named {name!r}", hint="choose another --name"
        )
    entry = TrustedKey(key, name)
    _write_trusted(keys + [entry])
    return entry


def remove_trusted(which: str) -> list:
    """Stop trusting the keys named ``which`` (a name, a key, or a key id)."""
    keys = trusted_keys()
    gone = [k for k in keys if which in (k.name, k.key, key_id(k.raw))]
    if not gone:
        raise errors.UsageError(
            f"no trusted key matches {which!r}", hint="`wasmsbx trust list` shows them"
        )
    _write_trusted([k for k in keys if k not in gone])
    return gone


def find_trusted(raw: bytes) -> Optional[TrustedKey]:
    key = encode_public(raw)
    return next((k for k in trusted_keys() if k.key == key), None)


# ---------------------------------------------------------------------------- signing


class Signer(namedtuple("Signer", "private public")):
    private: Any  # cryptography's Ed25519PrivateKey
    public: bytes  # raw
    __slots__ = ()

    def sign(self, digest: bytes) -> bytes:
        return self.private.sign(SIGNATURE_CONTEXT + digest)


def _signing_path(create: bool = False) -> Optional[Path]:
    root = private_dir(create)
    return None if root is None else root / SIGNING_FILE


def keygen(force: bool = False) -> str:
    """Create the user's Ed25519 signing key; its public key as text."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = _signing_path(create=True)
    assert path is not None
    if not force and (path.exists() or path.is_symlink()):
        raise errors.UsageError(
            f"you already have a signing key ({path})",
            hint="`wasmsbx trust show` prints its public key; --force replaces it (artifacts "
            "signed with the old one are then no longer trusted by those who trust it)",
        )
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    from ..outfile import write_output

    if path.is_symlink():
        path.unlink()
    write_output(path, pem, mode=0o600, trust_folder=True)
    return encode_public(_public_raw(private))


def _public_raw(private: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def signer() -> Optional[Signer]:
    """The user's signing key, or None if they have none."""
    path = _signing_path()
    if path is None:
        return None
    fd = _open_private(path, "signing key")
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as handle:
        pem = handle.read(1 << 16)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        private = None
    if not isinstance(private, Ed25519PrivateKey):
        raise _problem(path, "signing key", "is not an unencrypted Ed25519 key in PEM")
    return Signer(private, _public_raw(private))


def verify_signature(public: bytes, signature: bytes, digest: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if weak_public(public):  # (a key anyone can sign for: see weak_public)
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, SIGNATURE_CONTEXT + digest)
    except (InvalidSignature, ValueError):
        return False
    return True


def status() -> dict:
    """What ``wasmsbx trust show`` reports: the folder, the keys, and any problem."""
    root = trust_dir()
    report: dict = {"trust_dir": str(root), "secret_key": None, "signing_key": None}
    problems = []
    try:
        report["secret_key"] = "present" if secret() is not None else "not created yet"
    except KeyProblem as exc:
        report["secret_key"] = "unusable"
        problems.append(exc.message)
    try:
        mine = signer()
        report["signing_key"] = None if mine is None else encode_public(mine.public)
    except KeyProblem as exc:
        problems.append(exc.message)
    try:
        report["trusted"] = [k.to_dict() for k in trusted_keys()]
    except KeyProblem as exc:
        report["trusted"] = []
        problems.append(exc.message)
    from .trustdir import ignored_trust_dir

    if ignored_trust_dir():
        problems.append(
            f"WASMSBX_TRUST_DIR={ignored_trust_dir()} is not an absolute path and is ignored "
            "(it would name a folder inside whatever folder wasmsbx runs in)"
        )
    report["problems"] = problems
    return report
