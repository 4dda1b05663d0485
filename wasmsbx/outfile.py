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
        _refuse_guarded_early(text)
    info = _stat(text)
    if info is None:
        if os.path.islink(text):
            raise _fail(text, "is a symbolic link to a missing file; not followed")
        _check_parent(text)
        if not policy:
            refuse_policy_name(text)
        return
    _refuse_existing(text, info, inputs)
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


def refuse_guarded_output(path: Any) -> None:
    """check_output's refusals of a file in the trust folder or a cache folder, by any
    path, bind mount or link, alone: for an output that already exists and is read
    before it is written (a checkpoint), where the rest of check_output does not apply."""
    text = os.fspath(path)
    refuse_trust_folder(text)
    _refuse_guarded_early(text)
    _refuse_guarded_file(text, "refusing to write there")


def _refuse_guarded_file(text: str, why: str) -> None:
    """The file at ``text`` (followed), told by what it is, whatever its names: a key
    file, a cache entry (its footer), a file at the top of a cache folder; or one an
    overlay shows from the trust folder (a lower layer: a read goes there). Red team
    147: a checkpoint that was a hard link of one, or under such an overlay, was read
    as a checkpoint first ("not a wasmsbx checkpoint", exit 2)."""
    from .native.trustdir import (
        mounted_aliases,
        mountinfo,
        resolved,
        trust_dir_text,
        within,
    )

    if _FOLLOWED_PIN is None:  # pragma: no cover - Linux is the supported platform
        return
    try:  # (O_PATH: a device or a FIFO there is not opened; holds_entry reads a file)
        fd = os.open(text, _FOLLOWED_PIN)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return
        _refuse_by_content(text, fd, info, why, "path")
        real = os.readlink(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") else ""
    finally:
        os.close(fd)
    try:
        keys = resolved(trust_dir_text())
    except OSError:
        return
    if real.startswith(os.sep):
        for alias in mounted_aliases(keys, mountinfo()):
            if within(real, alias):
                raise _guarded_error(text, "trust", keys, why)


def _refuse_guarded_early(text: str) -> None:
    """check_output's ``refuse_guarded`` of the folder ``text`` would be written in, if
    it can be opened (a missing one is ``_check_parent``'s), and of the file already
    there, followed if it is a link: before the work, as the check of its real path is
    (red team 141: a compile through a bind mount of the trust folder was refused only
    once compiled, a batch after its first item; round 146: a link to a key file bound
    alone, or to a cache entry by another path)."""
    folder, name = os.path.split(text)
    try:
        fd = os.open(folder or ".", _PIN)
    except OSError:
        return
    there = -1
    try:
        _refuse_ours(text, os.path.join(_real_folder(fd, folder or "."), name))
        if name and _FOLLOWED_PIN is not None:
            try:  # (a file there, bound alone: replaced, it is EBUSY only once compiled)
                there = os.open(name, _FOLLOWED_PIN, dir_fd=fd)
                if not stat.S_ISREG(os.fstat(there).st_mode):
                    os.close(there)  # (a pipe, a terminal: `-o /dev/stdout`, no place
                    there = -1  # in a file system; a folder: check_output refuses it)
            except OSError:  # (none, or a dangling link: check_output's to refuse)
                pass
        refuse_guarded(text, fd, "refusing to write there", name, there)
    finally:
        os.close(fd)
        if there >= 0:
            os.close(there)


def _refuse_existing(text: str, info: os.stat_result, inputs: Iterable) -> None:
    """InputError if the file already at the output (``info``, its stat) is not one
    wasmsbx writes (a directory, a socket, a block device) or is one of the inputs."""
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


def refuse_policy_name(text: str) -> None:
    """InputError if ``text``, or the file a link there leads to, is named
    ``sandbox.toml``: wasmsbx would discover what it wrote as the policy of every later
    command in that folder. Red team 77: ``run --audit-log sandbox.toml`` in a folder
    without one created it, and every command there failed (invalid TOML, exit 101)."""
    names = {os.path.basename(text), os.path.basename(errors.real_path(text))}
    if any(name.lower() == POLICY_NAME for name in names):
        raise _policy_named(text)


def _policy_named(text: str) -> errors.InputError:
    return _fail(
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


def refuse_opened_astray(text: str, what: str, fd: int) -> None:
    """InputError if ``fd``, ``text`` opened for writing in place (nothing written yet,
    nothing truncated), is in the trust folder or is a ``sandbox.toml``. Checked by name
    before, the path may lead elsewhere by the time it is opened (a folder on its way
    swapped for a link, by another run's guest say): a guest's output written over the
    secret key would let it forge native code (the class of red team round 89's output
    race). Where there is no /proc, the check by name is all there is."""
    from .native.trustdir import proc_target

    real = proc_target(f"/proc/self/fd/{fd}")
    if not real:
        return  # (no /proc, or not a file of this root: a pipe, a socket)
    _refuse_ours(text, real, f"{what} is not written there")
    if os.path.basename(real).lower() == POLICY_NAME:
        raise _fail(
            text,
            f"leads to a {POLICY_NAME} ({errors.inert(real)}); {what} is not written there",
            "every wasmsbx command run in that folder would read it as its policy",
        )


def refuse_opened_astray_file(fd: int, what: str) -> None:
    """InputError if the file open at ``fd`` (a redirected stdout or stderr) is in the
    trust folder or a wasmsbx cache."""
    from .native.trustdir import proc_target

    why = f"the command's {what} is not written there"
    try:
        info = os.fstat(fd)
        real = proc_target(f"/proc/self/fd/{fd}")
        if not real and info.st_nlink:  # (a name that ends in " (deleted)": red team 139)
            real = os.readlink(f"/proc/self/fd/{fd}")
        elif not real:  # (removed: the path it had; a cache entry a host still maps,
            real = os.readlink(f"/proc/self/fd/{fd}")  # red team 142)
            if real.endswith(" (deleted)"):
                real = real[: -len(" (deleted)")]
    except OSError:
        return
    try:
        if real.startswith(os.sep):
            _refuse_ours(f"<{what}>", real, why)
    except errors.WasmsbxError as exc:
        if not isinstance(exc, OSError):  # (no home folder for the cache's roots: on to
            raise  # the key files, which $WASMSBX_TRUST_DIR may still name: round 139)
    if real.startswith(os.sep):
        try:  # (the folder the file is in, by what it is: a bind mount of the trust folder)
            folder = os.open(os.path.dirname(real), _PIN)
        except OSError:
            pass
        else:
            try:  # (and the file itself: one bound alone)
                refuse_guarded(f"<{what}>", folder, why, os.path.basename(real), fd, inherited=True)
            finally:
                os.close(folder)
    _refuse_by_content(f"<{what}>", fd, info, why, "output")


def _refuse_by_content(name: str, fd: int, info: os.stat_result, why: str, instead: str) -> None:
    """InputError if the file open at ``fd`` (``info``: its fstat) is, by any of its
    names, a key file, a cache entry (by what it holds: a hard link of one, red team
    143) or, with a second name, a file at the top of a cache folder."""
    from .native.trustdir import holds_entry

    refuse_key_file(name, info, why)
    if holds_entry(fd):
        raise _fail(
            name,
            f"is a wasmsbx cache entry (its native code); {why}",
            f"choose another {instead}: the cache holds native code that processes run",
        )
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        _refuse_cache_file(name, info, why)


_CACHE_NAMES_SEEN = 256  # names at the top of a cache folder looked at (it holds a few)


def _refuse_cache_file(text: str, info: os.stat_result, why: str) -> None:
    """InputError if ``info`` (a redirected stdout's stat, a file of several names) is
    one of the files at the top of one of the user's cache folders (or in its
    ``probes``) by another name
    (a hard link of its ``CACHEDIR.TAG``, overwritten, made it "not a wasmsbx cache";
    of ``cache.db``, damaged its index). Entries are told by what they hold; the facts
    records beside them are authenticated, and damage there is a recompile."""
    from .native.trustdir import cache_roots

    try:
        roots = cache_roots()
    except OSError:  # (no home folder: no cache folder of the user's)
        return
    folders = [os.path.join(root, inner) for root in roots for inner in ("", "probes")]
    for root in folders:  # (probes/: the wasmer backend's verdicts, red team 147)
        try:
            with os.scandir(root) as names:
                for seen, name in enumerate(names):
                    if seen >= _CACHE_NAMES_SEEN:
                        break
                    if name.inode() != info.st_ino:
                        continue
                    if name.stat(follow_symlinks=False).st_dev == info.st_dev:
                        raise _fail(
                            text,
                            f"is the wasmsbx cache's {errors.inert(name.name)} by another "
                            f"name (a hard link); {why}",
                            "choose another output: the cache's own files are not written",
                        )
        except OSError:
            continue


def refuse_key_file(text: str, info: os.stat_result, why: str) -> None:
    """InputError if ``info`` (a file's stat) is one of the trust folder's key files by
    any other name: a link to ~/dotfiles/trusted_keys, a hard link, a bind mount of the
    file alone (red team 138), told by the file itself (device and inode)."""
    from .native.trustdir import KEY_FILES, resolved, trust_dir_text

    try:
        keys = resolved(trust_dir_text())
    except OSError:  # (no home folder and no $WASMSBX_TRUST_DIR: no trust folder)
        return
    for name in KEY_FILES:
        try:
            key = os.stat(os.path.join(keys, name))
        except (OSError, ValueError):
            continue
        if (key.st_dev, key.st_ino) == (info.st_dev, info.st_ino):
            raise _fail(
                text,
                f"is the trust folder's {name} by another name; {why}",
                "choose an output outside it; only `wasmsbx trust` changes the files there",
            )


def _guarded(kinds: tuple = ("trust", "cache")) -> dict:
    """{(st_dev, st_ino): (what, real path, descriptor)} of the trust folder ("trust")
    and the user's cache folders ("cache") that exist, of those ``kinds``, each open
    (O_PATH; the caller closes them): its real path read from /proc as opened (realpath
    is slower)."""
    from .native.trustdir import cache_roots, resolved, trust_dir_text

    found: dict = {}
    for what, path in (("trust", trust_dir_text), ("cache", cache_roots)):
        if what not in kinds:
            continue
        try:
            paths = path()
        except OSError:  # (no home folder: no such folder)
            continue
        for one in [paths] if isinstance(paths, str) else paths:
            try:
                fd = os.open(one, _PIN)
            except (OSError, ValueError):
                continue
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) in found:
                os.close(fd)
                continue
            try:
                real = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                real = resolved(one)
            found[(info.st_dev, info.st_ino)] = (what, real, fd)
    return found


def _guarded_error(text: str, what: str, path: str, why: str) -> errors.InputError:
    if what == "entry":
        return _fail(
            text,
            f"is a wasmsbx cache entry ({errors.inert(path)}) by another path (a bind "
            f"mount or an overlay); {why}",
            "choose a path outside it: the cache holds native code that processes run",
        )
    if what == "trust":
        return _fail(
            text,
            "is in the trust folder, which holds your keys, reached by another path (a "
            f"bind mount or an overlay); {why}",
            "choose a path outside it; only `wasmsbx trust` changes the files there",
        )
    return _fail(
        text,
        f"is in a wasmsbx cache folder ({errors.inert(path)}), reached by another path (a "
        f"bind mount or an overlay); {why}",
        "choose a path outside it: the cache holds native code that processes run",
    )


def refuse_guarded(
    text: str,
    fd: int,
    why: str,
    name: str = "",
    also: int = -1,
    inherited: bool = False,
    kinds: tuple = ("trust", "cache"),
) -> None:
    """InputError if what is open at ``fd`` (a folder an output goes in, as ``name``;
    or a file written in place) is in the trust folder or one of the user's cache
    folders (or is a cache entry, in any cache) by another path than theirs, which the
    checks of real paths (``_refuse_ours``) do not see: a bind mount of the folder, of
    a folder around it or inside it, or of one file (``mount --bind
    ~/.config/wasmsbx/trust proj/keys``: ``compile -o proj/keys/trusted_keys`` replaced
    the list of trusted keys; a bind of a cache's ``code/NA`` let a guest's stdout into
    an entry a run had mapped, red team 141), or an overlay whose upper layer is one.

    Told by what the folders are, not their names: a folder's device and inode, and
    those of each parent to the root (``..`` as the kernel resolves it); then, where
    /proc tells, the mount the descriptor was opened through and the path within its
    file system (``trustdir.places``), compared with the guarded folders' own (``also``:
    a file open in that folder, as ``name``, whose own mount is compared too: one bound
    alone). A mount this process cannot see (another mount namespace's, through
    /proc/PID/root; one detached) is refused: where it leads cannot be told (red team
    142);
    but not for a descriptor the process was given (``inherited``: stdout or stderr,
    opened by whoever started it, a service manager's log file in the host's
    namespace). Not seen: a mount namespace whose trust folder path is itself covered by
    another mount. ``kinds``: the folders guarded, of "trust" and "cache" (a cache folder
    is checked against the trust folder alone)."""
    guarded = _guarded(kinds)
    try:
        if guarded:
            _refuse_guarded(text, fd, why, name, also, guarded, inherited)
    finally:
        for _, _, folder in guarded.values():
            os.close(folder)


def _refuse_guarded(
    text: str, fd: int, why: str, name: str, also: int, guarded: dict, inherited: bool
) -> None:
    from .native.trustdir import is_cache_entry, mountinfo, places, within

    if stat.S_ISDIR(os.fstat(fd).st_mode):
        _climb(text, fd, why, guarded)
    table = mountinfo()
    if not table:
        return
    mine: list = []
    for at, named in ((fd, name), (also, "")):
        found = places(at, table) if at >= 0 else []
        if found is None:
            if inherited:
                continue
            raise _fail(
                text,
                "lies on a mount whose place this process cannot tell (another mount "
                f"namespace's, or a detached one); {why}",
                "give a path on this process's own mounts",
            )
        mine += [(place, named) for place in found]
    for (_, inside), named in mine:
        if is_cache_entry(f"{inside.rstrip(os.sep)}{os.sep}{named}" if named else inside):
            raise _guarded_error(text, "entry", inside, why)
    for what, path, folder in guarded.values():
        theirs = places(folder, table) or []
        for (dev, inside), _ in mine:
            if not dev:  # (an overlay's upper layer: a real path)
                if within(inside, path):
                    raise _guarded_error(text, what, path, why)
                continue
            if any(dev == d and within(inside, at) for d, at in theirs):
                raise _guarded_error(text, what, path, why)


_FOLDERS_CLIMBED = 256  # parents looked at before giving up (a path is at most 4 KiB)


def _climb(text: str, fd: int, why: str, guarded: dict) -> None:
    """refuse_guarded's walk from the folder at ``fd`` up to the root."""
    current = os.dup(fd)
    try:
        for _ in range(_FOLDERS_CLIMBED):
            info = os.fstat(current)
            found = guarded.get((info.st_dev, info.st_ino))
            if found is not None:
                raise _guarded_error(text, found[0], found[1], why)
            try:
                parent = os.open("..", _PIN, dir_fd=current)
            except OSError:  # (a folder that cannot be searched: as far as can be seen)
                return
            os.close(current)
            current = parent
            above = os.fstat(current)
            if (above.st_dev, above.st_ino) == (info.st_dev, info.st_ino):
                return  # (the root)
    finally:
        os.close(current)


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
    written: Optional[list] = None,
) -> str:
    """Write ``data`` to ``path`` by the rules above; how it was done: "created",
    "replaced" or "written" (a device or FIFO). ``mode`` sets a new or replaced file's
    permissions (default: a new file gets 0666 less the umask, a replaced one keeps its
    own); ``durable`` fsyncs before the rename; ``trust_folder`` lets ``native.trust``
    write its key files; ``policy``: ``data`` is a policy, which may be a sandbox.toml;
    ``written``: a list given is filled with the (device, inode) of the file made or
    replaced (``remove_output`` removes only that file).

    The folder written is opened once (``_Target``) and checked as opened; the file is
    then made, replaced or opened relative to that descriptor. Checked by name and
    written by name, a folder on the way swapped for a link in between put the output
    in the trust folder, over the secret key (red team round 89)."""
    text = os.fspath(path)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    inputs = list(inputs)
    for _ in range(3):  # something appeared or changed at the name meanwhile: look again
        check_output(text, inputs, trust_folder=trust_folder, policy=policy)
        try:
            target = _Target.open(text, inputs, trust_folder, policy)
        except OSError as exc:
            raise _fail(text, f"cannot write: {exc.strerror or exc}") from None
        try:
            info = target.info
            if info is None:
                if target.create(blob, mode, durable, written):
                    return "created"
                continue
            if stat.S_ISREG(info.st_mode):
                if target.replace(blob, mode, durable, written):
                    return "replaced"
                continue
            _write_direct(text, blob, target)
            return "written"
        except OSError as exc:
            raise _fail(text, f"cannot write: {exc.strerror or exc}") from None
        finally:
            target.close()
    raise _fail(text, "cannot write: it keeps changing while being written")


_PIN = getattr(os, "O_PATH", 0) | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
# (a link followed: O_PATH opens nothing, so a FIFO or a device is not opened; without
# it, not opened at all)
_FOLLOWED_PIN = getattr(os, "O_PATH", 0) | _CLOEXEC if hasattr(os, "O_PATH") else None
_LINKS_FOLLOWED = 16  # links written through before giving up (the kernel allows 40)


class _Target:
    """The folder an output goes in, open (``fd``), and the file's name there: what
    ``write_output`` checks and then writes, whatever happens to the names on the way
    meanwhile. A link at the name is written through (its target gets the same checks,
    in the target's folder, opened in turn)."""

    magic = False  # the name is a /proc link to what has no path (a pipe): followed

    def __init__(self, folder: str, fd: int, name: str, info: Optional[os.stat_result]) -> None:
        self.folder, self.fd, self.name, self.info = folder, fd, name, info

    @classmethod
    def open(cls, text: str, inputs: list, trust_folder: bool, policy: bool) -> _Target:
        """The target of ``text`` (InputError if refused; OSError if it cannot be
        opened)."""
        current, followed = text, 0
        while True:
            folder, name = os.path.split(current)
            if name in ("", ".", ".."):
                raise _fail(text, "is not a file name", _HINT)
            fd = os.open(folder or ".", _PIN)
            try:
                target = cls(folder or ".", fd, name, None)
                real = target.real_folder()
                if not trust_folder:
                    _refuse_ours(text, os.path.join(real, name))
                    refuse_guarded(text, fd, "refusing to write there", name)
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    info = None
                if info is not None and stat.S_ISLNK(info.st_mode):
                    followed += 1
                    if followed > _LINKS_FOLLOWED:
                        raise _fail(text, "leads through too many symbolic links")
                    link = os.readlink(name, dir_fd=fd)
                    if not link.startswith(os.sep) and real.startswith("/proc/"):
                        # A descriptor's link in /proc (/dev/stdout, /proc/self/fd/1)
                        # to what has no path ("pipe:[N]", "socket:[N]"): opened as it
                        # is, when the path given names /dev or /proc itself. Reached
                        # through a link elsewhere (planted in a shared folder), it led
                        # a guest's output into a batch worker's pipe to its parent,
                        # which unpickled the guest's bytes (red team round 91).
                        if not os.path.abspath(text).startswith(("/dev/", "/proc/")):
                            raise _fail(
                                text,
                                f"leads through a link to a process's descriptor ({link})",
                                "name /dev/stdout or /dev/fd/N itself, or give a file",
                            )
                        target.info, target.magic = os.stat(name, dir_fd=fd), True
                        _refuse_existing(text, target.info, inputs)
                        return target
                    current = link if os.path.isabs(link) else os.path.join(real, link)
                    os.close(fd)
                    continue
                if info is None and followed:
                    raise _fail(text, "is a symbolic link to a missing file; not followed")
                if not policy and name.lower() == POLICY_NAME:
                    raise _policy_named(text)
                if info is not None:
                    _refuse_existing(text, info, inputs)
                target.info = info
                return target
            except BaseException:
                os.close(fd)
                raise

    def real_folder(self) -> str:
        return _real_folder(self.fd, self.folder)

    def open_name(self, flags: int, mode: int = 0o666) -> int:
        """The file at the name opened with ``flags``, never through a link put there
        since it was checked (a /proc descriptor link is followed: ``magic``)."""
        follow = 0 if self.magic else _NOFOLLOW
        return os.open(self.name, flags | follow | _CLOEXEC, mode, dir_fd=self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def _temporary(self, mode: int) -> tuple:
        """(fd, name) of a new private-named file in the folder."""
        # (the name cut short: a 255-byte name made a temporary name too long to make)
        tmp = f".{self.name[:128]}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
        return os.open(tmp, flags, mode, dir_fd=self.fd), tmp

    def _discard(self, tmp: str) -> None:
        try:
            os.unlink(tmp, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def create(
        self, blob: bytes, mode: Optional[int], durable: bool, written: Optional[list] = None
    ) -> bool:
        """Create the file whole; False if something appeared there meanwhile."""
        fd, tmp = self._temporary(0o666 if mode is None else mode)
        try:
            _fill(fd, blob, mode, durable)
            _identity(fd, written)
            os.close(fd)
            fd = -1
            try:  # unlike rename, never replaces what is there
                os.link(tmp, self.name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                # (a file system without hard links)
                os.rename(tmp, self.name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            return True
        finally:
            if fd >= 0:
                os.close(fd)
            self._discard(tmp)

    def replace(
        self, blob: bytes, mode: Optional[int], durable: bool, written: Optional[list] = None
    ) -> bool:
        """Replace the regular file atomically; False if it changed meanwhile."""
        before = self.info
        assert before is not None
        keep = stat.S_IMODE(before.st_mode) if mode is None else mode
        fd, tmp = self._temporary(0o600)
        try:
            _fill(fd, blob, keep, durable)
            _identity(fd, written)
            os.close(fd)
            fd = -1
            try:
                now = os.stat(self.name, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (
                before.st_dev,
                before.st_ino,
            ):
                return False  # became a link, a device, another file: decide again
            os.replace(tmp, self.name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            return True
        finally:
            if fd >= 0:
                os.close(fd)
            self._discard(tmp)


def _real_folder(fd: int, folder: str) -> str:
    """The real path of ``folder`` as opened (``fd``); by its name where there is no
    /proc, as before: checked, then written, by name."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return errors.real_path(folder)


def _refuse_ours(text: str, real: str, what: str = "refusing to write there") -> None:
    """InputError if ``real`` (a real path: a folder's, as opened, joined with a name) is
    in the trust folder or in a wasmsbx cache: a cache folder of the user's, or any
    cache entry (``code/NA/NAME.entry``), which processes map as native code where it
    lies (red team round 90: a guest's stdout written into an entry a host had loaded
    ran as the host's code)."""
    from .native.trustdir import in_cache_roots, is_cache_entry, resolved, trust_dir_text, within

    if within(real, resolved(trust_dir_text())):
        raise _fail(
            text,
            f"is in the trust folder, which holds your keys; {what}",
            "choose a path outside it; only `wasmsbx trust` changes the files there",
        )
    if is_cache_entry(real) or in_cache_roots(real, real):
        raise _fail(
            text,
            f"is in a wasmsbx cache folder ({errors.inert(real)}); {what}",
            "choose a path outside it: the cache holds native code that processes run",
        )


def open_in_place(text: str, flags: int, what: str) -> int:
    """``text`` opened for writing in place with ``flags`` (O_WRONLY, O_CREAT, O_APPEND,
    O_NONBLOCK...; a new file 0666 less the umask), in its folder as opened and checked
    (``_Target``: not the trust folder nor a cache, not a ``sandbox.toml``; a link at the
    name followed, its target checked in turn), then checked again as opened
    (``refuse_opened_astray``, ``refuse_linked_in_place``), before anything is written.
    A file made only to be refused was left behind: an empty file in the trust folder,
    or a new ``sandbox.toml`` (red team round 90). The caller closes the descriptor.
    OSError as ``os.open`` raises it."""
    target = _Target.open(text, [], False, False)
    try:
        fd = target.open_name(flags)
    finally:
        target.close()
    try:
        info = refuse_linked_in_place(text, what, fd)
        refuse_opened_astray(text, what, fd)
        refuse_guarded(text, fd, f"{what} is not written there")
        refuse_key_file(text, info, f"{what} is not written there")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _identity(fd: int, written: Optional[list]) -> None:
    """Put the (device, inode) of the file ``fd`` into ``written``, if given."""
    if written is not None:
        info = os.fstat(fd)
        written[:] = [(info.st_dev, info.st_ino)]


def remove_output(text: str, identity: Optional[tuple] = None) -> None:
    """Remove the output ``text`` wrote (a checkpoint done with), by its name in its
    folder as opened and checked: removed by name, a folder swapped for a link at the end
    of a run removed a key of the trust folder (red team round 90). Only the file of
    ``identity`` ((device, inode), from ``write_output``'s ``written``), if given: another
    file found at the name is left (red team round 91: a folder swapped for another of
    the user's lost its file of that name). A link at the name is followed, as
    ``write_output`` wrote through it, and the file it leads to is removed (in its own
    folder, opened and checked in turn) if it is that file; the link is left (red team
    121: the link was compared, never matched, and the finished run's checkpoint stayed
    for every later run to resume from). Nothing there is not an error; anything else
    that stops the removal is an InputError."""
    current = text
    for _ in range(_LINKS_FOLLOWED + 1):
        current = _remove_at(text, current, identity)
        if current is None:
            return


def _remove_at(text: str, current: str, identity: Optional[tuple]) -> Optional[str]:
    """remove_output at ``current`` (``text`` or a link's target on the way): None when
    done, else the path the link at ``current`` leads to (only with ``identity``)."""
    folder, name = os.path.split(current)
    if name in ("", ".", ".."):
        return None
    try:
        fd = os.open(folder or ".", _PIN)
    except FileNotFoundError:
        return None
    try:
        real = _real_folder(fd, folder or ".")
        _refuse_ours(text, os.path.join(real, name), "not removed")
        refuse_guarded(text, fd, "not removed", name)
        try:
            if identity is not None:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    link = os.readlink(name, dir_fd=fd)
                    return link if os.path.isabs(link) else os.path.join(real, link)
                if (info.st_dev, info.st_ino) != identity:
                    return None  # (not the file written: left as it is)
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError as exc:  # (a folder there now, no permission: red team round 91)
            raise _fail(text, f"cannot remove: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return None


def _fill(fd: int, blob: bytes, mode: Optional[int], durable: bool) -> None:
    with os.fdopen(fd, "wb", closefd=False) as handle:
        handle.write(blob)
        handle.flush()
        if mode is not None:
            os.fchmod(fd, mode)
        if durable:
            os.fsync(fd)


_NO_LINKS = {getattr(errno, n, -1) for n in ("EPERM", "ENOTSUP", "EOPNOTSUPP")}


def _write_direct(path: str, blob: bytes, target: _Target) -> None:
    """A character device or FIFO: opened for writing as it is, never created or
    truncated (O_CREAT absent: if it vanished meanwhile, this fails instead). A FIFO
    nobody reads is refused at once (opened without blocking, as --audit-log opens one),
    where the open waited for a reader for ever (red team round 40); writes then block
    as a shell's ``>`` would."""
    try:
        fd = target.open_name(os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
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
