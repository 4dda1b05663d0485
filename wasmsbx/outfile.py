"""The one way wasmsbx writes a file the user named (``-o``, ``--output``,
``--save-baseline``, checkpoints, key files): never over a device, a link or an input.

- A new file is created whole: written to a temporary file beside it, then linked into
  place, which fails if anything appeared at that name meanwhile.
- A regular file is replaced atomically (temporary file + rename), keeping its mode.
- A symbolic link is written through: its target gets these same rules; a link to
  nothing is refused (following it would create a file wherever it points).
- A character device or a FIFO (``/dev/null``, ``/dev/stdout``, a named pipe) is
  written directly, as a shell's ``>`` would; it is never replaced by a file, which is
  what a rename over ``/dev/null`` does when run as root.
- A directory, a block device or a socket is refused.
- An output that is the same file as one of the command's inputs (module, source,
  policy, baseline) is refused, before any work where the command checks early.
- A missing parent folder is an error with a hint, not created silently.
- Nothing but a policy (``audit --suggest-policy``) is written to a file named
  ``sandbox.toml`` (any case, nor through a link to one): every later command run in its
  folder would discover it as its policy.
- Nothing is written into the trust folder (symlinks followed), except the key files
  ``wasmsbx trust`` writes: an output there could replace your secret key with bytes
  someone else chose (a guest's stdout, an artifact).

Every failure is an :class:`errors.InputError` (exit 105) naming the path.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from typing import Any, Optional, Union

from . import errors

# policy.POLICY_FILENAME, the file discovery reads (named again here: policy imports
# this module, and an import back would be a cycle).
POLICY_NAME = "sandbox.toml"
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _fail(path: str, why: str, hint: Optional[str] = None) -> errors.InputError:
    return errors.InputError(f"{path}: {why}", hint=hint, path=path)


def _stat(path: str) -> Optional[os.stat_result]:
    """stat() following links; None if nothing is there."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _fail(path, f"cannot write: {exc.strerror or exc}") from None


def _same_as_input(path: str, info: os.stat_result, inputs: Iterable) -> Optional[str]:
    for item in inputs:
        if item is None:
            continue
        try:
            other = os.stat(item)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
            return os.fspath(item)
    return None


def check_output(
    path: Any, inputs: Iterable = (), *, trust_folder: bool = False, policy: bool = False
) -> None:
    """Raise InputError now if writing ``path`` later would be refused (so a command
    does not compile for a minute before finding out). ``trust_folder``: the caller is
    ``native.trust`` writing a key file, the one writer allowed in the trust folder;
    ``policy``: what is written is a policy, the one output a sandbox.toml may be."""
    text = os.fspath(path)
    if not text:
        raise _fail("''", "an empty output path")
    if text.startswith("-"):  # `-o -` or `-o --json`: an option or stdout meant, not a file
        raise _fail(
            text,
            "looks like an option or standard output, not a file name; nothing was written"
            if text != "-"
            else "is not standard output here (native code and reports go to a file)",
            f"to write a file of that name, say ./{text}",
        )
    if not trust_folder:
        refuse_trust_folder(text)
    info = _stat(text)
    if info is None:
        if os.path.islink(text):
            raise _fail(text, "is a symbolic link to a missing file; not followed")
        _check_parent(text)
        if not policy:
            refuse_policy_name(text)
        return
    kind = _kind_refused(info)
    if kind:
        raise _fail(text, f"is {kind}, not a file wasmsbx can write", _HINT)
    same = _same_as_input(text, info, inputs)
    if same is not None:
        raise _fail(
            text,
            f"is the same file as the input {same}; refusing to overwrite it",
            "choose another output name",
        )
    if stat.S_ISREG(info.st_mode) and not trust_folder and not os.access(text, os.W_OK):
        # (replaced through a new file and a rename, which needs only the folder's
        # write permission: a write-protected file was replaced where the shell's `>`
        # refuses it, red team round 77)
        raise _fail(
            text,
            f"is write-protected (mode {stat.S_IMODE(info.st_mode):04o}); not replaced",
            "make it writable (chmod u+w) or choose another output path",
        )
    if not policy:
        refuse_policy_name(text)


def refuse_policy_name(text: str) -> None:
    """InputError if ``text``, or the file a link there leads to, is named
    ``sandbox.toml``: wasmsbx would discover what it wrote as the policy of every later
    command in that folder. Red team 77: ``run --audit-log sandbox.toml`` in a folder
    without one created it, and every command there failed (invalid TOML, exit 101)."""
    names = {os.path.basename(text), os.path.basename(errors.real_path(text))}
    if any(name.lower() == POLICY_NAME for name in names):
        raise _fail(
            text,
            f"would be a {POLICY_NAME}, the policy file wasmsbx finds in the folder it "
            "runs in; refusing to write it",
            "choose another name: every wasmsbx command run in that folder would read "
            "what is written there as its policy",
        )


def refuse_linked_in_place(text: str, what: str, fd: int) -> os.stat_result:
    """InputError if ``fd``, ``text`` as opened (and nothing written yet), is a regular
    file with more than one name (hard links): an output written in place (the audit
    log appended to, a guest's stdout file) changes every name of it, which
    ``refuse_policy_name`` cannot see, a ``sandbox.toml`` elsewhere among them (red team
    round 80). Checked on the descriptor: a link made between a check of the name and
    the open went unseen (round 81). Outputs replaced whole (``write_output``) get a new
    file and leave the other names as they were. The descriptor's stat()."""
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        raise _fail(
            text,
            f"has {info.st_nlink} names (hard links); {what} would change every one of them",
            "give a file with one name, or a new path",
        )
    return info


def refuse_trust_folder(text: str) -> None:
    """InputError if ``text`` is in the trust folder (symlinks followed)."""
    from .native.trustdir import resolved, trust_dir_text, within

    # (errors.real_path: a link on the way that changes as it is resolved is an error,
    # not an internal one; the trust folder's own path is the user's)
    if within(errors.real_path(text), resolved(trust_dir_text())):
        raise _fail(
            text,
            "is in the trust folder, which holds your keys; refusing to write there",
            "choose an output outside it; only `wasmsbx trust` changes the files there",
        )


_HINT = "give the name of a regular file (or a FIFO or character device such as /dev/null)"


def _kind_refused(info: os.stat_result) -> Optional[str]:
    mode = info.st_mode
    if stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return None
    return kind_of(mode)


_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` is, as messages say it ("a directory", "a socket")."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _check_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise _fail(
            path,
            f"cannot write: the folder {parent} does not exist",
            f"create it first (mkdir -p {parent}) or choose another output path",
        )
    # A new file needs the folder's write permission: found out only when the output was
    # written, after the work (a batch's --checkpoint in a read-only folder printed every
    # result, then failed: red team round 77). access() says what the kernel will.
    effective = os.access in os.supports_effective_ids
    if not os.access(parent, os.W_OK | os.X_OK, effective_ids=effective):
        raise _fail(
            path,
            f"cannot write: no permission to make files in the folder {parent}"
            " (or it is on a read-only file system); nothing was run",
            "choose an output path in a folder you can write",
        )


def write_output(
    path: Any,
    data: Union[bytes, str],
    *,
    inputs: Iterable = (),
    mode: Optional[int] = None,
    durable: bool = False,
    trust_folder: bool = False,
    policy: bool = False,
) -> str:
    """Write ``data`` to ``path`` by the rules above; how it was done: "created",
    "replaced" or "written" (a device or FIFO). ``mode`` sets a new or replaced file's
    permissions (default: a new file gets 0666 less the umask, a replaced one keeps its
    own); ``durable`` fsyncs before the rename; ``trust_folder`` lets ``native.trust``
    write its key files; ``policy``: ``data`` is a policy, which may be a sandbox.toml."""
    text = os.fspath(path)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    inputs = list(inputs)
    for _ in range(3):  # something appeared or changed at the name meanwhile: look again
        check_output(text, inputs, trust_folder=trust_folder, policy=policy)
        info = _stat(text)
        try:
            if info is None:
                if _create(text, blob, mode, durable):
                    return "created"
                continue
            if stat.S_ISREG(info.st_mode):
                target = errors.real_path(text) if os.path.islink(text) else text
                if _replace(target, info, blob, mode, durable):
                    return "replaced"
                continue
            _write_direct(text, blob)
            return "written"
        except OSError as exc:
            raise _fail(text, f"cannot write: {exc.strerror or exc}") from None
    raise _fail(text, "cannot write: it keeps changing while being written")


def _temporary(folder: str, name: str, mode: Optional[int]) -> tuple:
    """(fd, path) of a new private-named file in ``folder``."""
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    fd = os.open(tmp, flags, 0o666 if mode is None else mode)
    return fd, tmp


def _fill(fd: int, blob: bytes, mode: Optional[int], durable: bool) -> None:
    with os.fdopen(fd, "wb", closefd=False) as handle:
        handle.write(blob)
        handle.flush()
        if mode is not None:
            os.fchmod(fd, mode)
        if durable:
            os.fsync(fd)


def _create(path: str, blob: bytes, mode: Optional[int], durable: bool) -> bool:
    """Create ``path`` whole; False if something appeared there meanwhile."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = _temporary(folder, name, mode)
    try:
        _fill(fd, blob, mode, durable)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)  # unlike rename, never replaces what is there
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            os.rename(tmp, path)  # a file system without hard links
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        _discard(tmp)


_NO_LINKS = {getattr(errno, n, -1) for n in ("EPERM", "ENOTSUP", "EOPNOTSUPP")}


def _replace(
    path: str, before: os.stat_result, blob: bytes, mode: Optional[int], durable: bool
) -> bool:
    """Replace the regular file ``path`` atomically; False if it changed meanwhile."""
    folder, name = os.path.split(os.path.abspath(path))
    keep = stat.S_IMODE(before.st_mode) if mode is None else mode
    fd, tmp = _temporary(folder, name, 0o600)
    try:
        _fill(fd, blob, keep, durable)
        os.close(fd)
        fd = -1
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            return False  # became a link, a device, another file: decide again
        os.replace(tmp, path)
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        _discard(tmp)


def _write_direct(path: str, blob: bytes) -> None:
    """A character device or FIFO: opened for writing as it is, never created or
    truncated (O_CREAT absent: if it vanished meanwhile, this fails instead). A FIFO
    nobody reads is refused at once (opened without blocking, as --audit-log opens one),
    where the open waited for a reader for ever (red team round 40); writes then block
    as a shell's ``>`` would."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | _CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                mode = 0
            if stat.S_ISSOCK(mode):
                raise _fail(path, "is a socket; nothing was written", "write to a file") from None
            if not stat.S_ISFIFO(mode):  # (/dev/tty without a terminal: red team round 69)
                raise _fail(
                    path,
                    "is a device with nothing behind it (no such device or address); "
                    "nothing was written",
                    "write to a file",
                ) from None
            raise _fail(
                path,
                "is a FIFO nobody is reading; nothing was written",
                "start its reader first (e.g. cat FIFO &), or write to a file",
            ) from None
        raise
    try:
        os.set_blocking(fd, True)
        info = os.fstat(fd)
        if not (stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode)):
            raise _fail(path, "changed while being written; not written")
        view = memoryview(blob)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
