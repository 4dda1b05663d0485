"""Where the trust folder is, in a leaf that imports nothing of wasmsbx.

Both ``native.trust`` (which keeps the keys there) and ``outfile`` (which must never
write there for anyone else) need the answer; ``trust`` writes its key files through
``outfile``, so the location lives here to keep the import graph free of cycles.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Optional

_MEMO: dict = {}  # (what, the variables it depends on) -> answer: asked on every cached load
_ENVIRON = os.environ
# os.environ's own dict of bytes (CPython, POSIX): one lookup per variable, where
# os.environ.get is four Python calls (Mapping.get, __getitem__, encode, decode); the
# memo keys below are read on every cached load.
_DATA = getattr(_ENVIRON, "_data", None) if os.name == "posix" else None


def variables(names: tuple) -> tuple:
    """The values of the environment variables ``names`` (bytes, as os.fsencode gives
    them) as a memo key: raw bytes, or str if os.environ was replaced (None if unset)."""
    if _DATA is not None and os.environ is _ENVIRON:
        return tuple(map(_DATA.get, names))
    return tuple(os.environ.get(os.fsdecode(name)) for name in names)


# The trust folder's files (native.trust keeps them; outfile never writes over them)
SECRET_FILE = "secret.key"
SIGNING_FILE = "signing.key"
TRUSTED_FILE = "trusted_keys"
KEY_FILES = (SECRET_FILE, TRUSTED_FILE, SIGNING_FILE)

_CACHE_VARIABLES = (b"XDG_CACHE_HOME", b"HOME")
_TRUST_VARIABLES = (b"WASMSBX_TRUST_DIR", b"XDG_CONFIG_HOME", b"HOME")


def _home() -> str:
    """The user's home folder: $HOME if absolute, else the password database's (a
    relative $HOME would put the user's folders in whatever folder wasmsbx runs in, an
    empty one at the root)."""
    home = os.path.expanduser("~")
    # (an empty $HOME: expanduser gives "/", and the cache and trust folders were made
    # at the root of the file system, red team round 77)
    if not os.path.isabs(home) or not os.environ.get("HOME", "x").strip():
        import pwd

        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:  # (a container's uid: `docker run --user N`, `env -i`)
            home = ""
        if not os.path.isabs(home):
            raise _no_home()
    return home


def _no_home() -> OSError:
    """No home folder to put the cache and trust folders in (red team 137: a uid without
    an entry in the password database and no $HOME was an internal error). An OSError
    (a cache that cannot be used: the run goes on without it) that is also wasmsbx's
    input error, exit 105 (where the folder is needed: the trust folder)."""
    from ..errors import InputError  # (a leaf otherwise: only when there is no home)

    class NoHome(InputError, OSError):
        pass

    return NoHome(
        f"cannot find your home folder: $HOME is not an absolute path and uid {os.getuid()} "
        "has none in the password database",
        hint="set HOME, or XDG_CACHE_HOME and WASMSBX_TRUST_DIR, to folders of your own",
    )


def missing_folders(path: str) -> list:
    """The folders on the way to ``path`` (it too) that do not exist, deepest first."""
    found, current = [], os.path.abspath(path)
    while not os.path.lexists(current):
        found.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return found


def make_private(path: str) -> None:
    """``mkdir -p path`` with every folder it makes 0700 (``os.makedirs`` gives the ones
    on the way the umask's mode: under umask 000, ~/.cache and ~/.config were made
    writable by everyone, red team 137; the XDG spec asks 0700). Nothing if ``path`` is
    there already (or is made meanwhile by another process)."""
    for folder in reversed(missing_folders(path)):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # (made meanwhile by another process)
            pass


def _xdg(variable: str, fallback: str) -> str:
    """platformdirs' Linux rule for a user folder: ``$variable`` if absolute, else
    ``~/fallback``."""
    base = os.environ.get(variable, "").strip()
    if base and os.path.isabs(base):
        return base
    return os.path.join(_home(), fallback)


def user_cache_text() -> str:
    """The user's default cache folder for wasmsbx (platformdirs' ``user_cache_dir``:
    $XDG_CACHE_HOME if absolute, else ~/.cache, plus "wasmsbx" on Linux), written out
    because importing platformdirs costs every run that opens the cache several ms."""
    env = variables(_CACHE_VARIABLES)
    known = _MEMO.get(("cache", env))
    if known is not None:
        return known
    if sys.platform.startswith("linux"):
        found = os.path.join(_xdg("XDG_CACHE_HOME", ".cache"), "wasmsbx")
    else:  # pragma: no cover - Linux is the supported platform
        import platformdirs

        found = platformdirs.user_cache_dir("wasmsbx", appauthor=False)
    _MEMO[("cache", env)] = found
    return found


def trust_dir_text() -> str:
    """The trust folder as text (Path objects cost the cached load tens of µs). On
    Linux the user config dir is platformdirs' rule ($XDG_CONFIG_HOME if absolute, else
    ~/.config), written out because importing platformdirs costs a run several ms."""
    env = variables(_TRUST_VARIABLES)
    known = _MEMO.get(("trust", env))
    if known is None:
        known = _MEMO[("trust", env)] = _trust_dir_text()
    return known


def _trust_dir_text() -> str:
    explicit = os.path.expanduser(os.environ.get("WASMSBX_TRUST_DIR", "").strip())
    if os.path.isabs(explicit):
        return os.path.abspath(explicit)
    # A relative value is ignored, as the XDG rules ignore one in $XDG_CONFIG_HOME: it
    # would name a folder in whatever folder wasmsbx runs in, and a cloned project could
    # bring one holding a secret key it knows (`wasmsbx trust show` reports it).
    if sys.platform.startswith("linux"):
        return os.path.join(_xdg("XDG_CONFIG_HOME", ".config"), "wasmsbx", "trust")
    import platformdirs  # pragma: no cover - Linux is the supported platform

    return os.path.join(platformdirs.user_config_dir("wasmsbx", appauthor=False), "trust")


_O_PATH = getattr(os, "O_PATH", 0)


def real(path: str) -> str:
    """``os.path.realpath(path)``: asked of the kernel for a path that exists (an
    ``O_PATH`` descriptor's /proc/self/fd link: three system calls, where realpath makes
    one lstat() and a round of Python per component, tens of µs on the first cached load
    of every process), else realpath's own answer (the path made absolute if a link in
    it changes as realpath reads it: it raised FileNotFoundError, red team round 82)."""
    if not _O_PATH:  # pragma: no cover - Linux is the supported platform
        return resolved(path)
    try:
        fd = os.open(path, _O_PATH | os.O_CLOEXEC)
    except (OSError, ValueError):
        return resolved(path)
    try:
        found = proc_target(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return found or resolved(path)


_real = real  # (in_cache_roots has a parameter of that name)


def resolved(path: str) -> str:
    """``os.path.realpath(path)``, or ``path`` made absolute if a link in it changes as
    realpath reads it (Python's non-strict realpath raises FileNotFoundError then: a
    guest swapping a granted folder for a link made that exit 100, red team round 82)."""
    try:
        return os.path.realpath(path)
    except OSError:
        return os.path.abspath(path)


def cache_roots() -> list:
    """The user's own cache folders: $WASMSBX_CACHE_DIR and the default one (the user
    cache dir + "wasmsbx"). Only the user's environment chooses them, and no guest is
    ever granted them (``trust.refuse_key_grants``), so only the user's own processes
    write there: cache entries there are mapped where they are once authenticated."""
    roots = []
    # (as native.cache.resolve_dir reads it: blank is unset, and spaces around a name
    # are part of it; stripped here, the cache at "/x/c " was not guarded: red team 141)
    explicit = os.environ.get("WASMSBX_CACHE_DIR", "")
    if explicit and not explicit.isspace():
        roots.append(os.path.abspath(os.path.expanduser(explicit)))
    roots.append(user_cache_text())
    return roots


def in_cache_roots(folder: str, real: str = "") -> bool:
    """Whether ``folder`` is one of :func:`cache_roots` or inside one (``real``: its real
    path, if known)."""
    found = real or _real(folder)
    return any(within(found, root) for root in map(_real, cache_roots()))


ENTRY_SUFFIX = ".entry"  # a cache entry's file name ends so (native.cache CODE_SUFFIX)
ENTRY_MAGIC = b"\x89WSBXc3\n"  # native.entry's footer magic, ENTRY_MAGIC_AT bytes from its end
ENTRY_MAGIC_AT = 40  # (the magic's 8 and the tag's 32)


def holds_entry(fd: int) -> bool:
    """Whether the regular file open at ``fd`` ends as a cache entry does (its footer's
    magic), read through a descriptor of its own (``fd`` may be write-only): told by the
    file, whatever its names (a hard link of an entry, one on a mount this process
    cannot place)."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size < ENTRY_MAGIC_AT:
            return False
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        reader = os.open(f"/proc/self/fd/{fd}", flags)
    except OSError:
        return False
    try:
        return os.pread(reader, 8, info.st_size - ENTRY_MAGIC_AT) == ENTRY_MAGIC
    except OSError:
        return False
    finally:
        os.close(reader)


def is_cache_entry(real: str) -> bool:
    """Whether the real path ``real`` has the shape of a cache entry, in any cache folder
    (``code/NA/NAME.entry``): native code a process maps where it lies."""
    parts = real.rsplit(os.sep, 3)
    return len(parts) == 4 and parts[1] == "code" and parts[3].endswith(ENTRY_SUFFIX)


def proc_target(link: str) -> str:
    """Where a /proc/self/fd link of an open descriptor leads, if that is a path that
    can be used: "" when it cannot be read (no /proc), the file was removed meanwhile
    ("... (deleted)"), or it lies outside this process's root (not absolute)."""
    try:
        found = os.readlink(link)
    except OSError:
        return ""
    if not found.startswith(os.sep) or found.endswith(" (deleted)"):
        return ""
    return found


def ignored_trust_dir() -> str:
    """$WASMSBX_TRUST_DIR if it is set but ignored (relative), else ""."""
    explicit = os.path.expanduser(os.environ.get("WASMSBX_TRUST_DIR", "").strip())
    return "" if not explicit or os.path.isabs(explicit) else explicit


# Version-control metadata: git runs commands its config and hooks name (`core.fsmonitor`
# runs on every `git status`, which shell prompts run on their own), Mercurial its hgrc's
# hooks, and CI checkouts keep tokens there. A clone never brings these files, so a
# discovered policy must not let a guest read or write them.
VCS_NAMES = (
    ".git",
    ".hg",
    ".svn",
    ".bzr",
    "_darcs",
    # Jujutsu (its repo config names a pager and diff tools jj runs; a colocated repo
    # keeps git's store there too), Pijul, Fossil's checkout database: none of them
    # comes with a clone.
    ".jj",
    ".pijul",
    ".fslckout",
    "_fossil_",
    # Sapling (its config names hooks and holds auth tokens) and Monotone (it runs the
    # monotonerc in _MTN): red team 107. Compared lower-cased.
    ".sl",
    "_mtn",
)


def in_metadata(path: str, folder: str) -> bool:
    """Whether ``path``, inside ``folder`` (both real paths), is in or below a folder
    VCS_NAMES names, below ``folder``."""
    rest = os.path.relpath(path, folder).split(os.sep)
    return any(part.lower() in VCS_NAMES for part in rest)


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, as text (both real paths: no
    link is resolved here)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def walked(path: str) -> list:
    """Every folder and file the kernel passes through to open absolute ``path``, links
    followed as it follows them (``a/..`` is the parent of where ``a`` leads, not ``.``;
    a link's target is walked component by component). Each is a path free of links."""
    pending = [part for part in reversed(path.split(os.sep)) if part]
    current, seen, hops = os.sep, [os.sep], 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            seen.append(current)
            continue
        candidate = os.path.join(current, name)
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
        except OSError:  # missing (to be created) or unreadable: the open decides
            is_link = False
        if is_link:
            hops += 1
            if hops > 40:  # ELOOP: the open fails as well
                break
            try:
                target = os.readlink(candidate)
            except OSError:  # replaced meanwhile: the open decides
                break
            if os.path.isabs(target):
                current = os.sep
            pending.extend(part for part in reversed(target.split(os.sep)) if part)
            continue
        current = candidate
        seen.append(current)
    return seen


def unescape_mount(raw: bytes) -> bytes:
    """A mountinfo path field: space, tab, newline and backslash are written as octal
    escapes (backslash, three digits)."""
    if b"\\" not in raw:
        return raw
    import re

    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8) & 0xFF]), raw)


def mountinfo() -> bytes:
    """/proc/self/mountinfo, or b"" where it cannot be read."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            return f.read()
    except OSError:
        return b""


def mount_id(fd: int) -> bytes:
    """The id of the mount the file or folder open at ``fd`` was opened through
    (``mnt_id`` in /proc/self/fdinfo), b"" where /proc cannot tell."""
    try:
        opened = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        info = os.read(opened, 4096)
    except OSError:
        return b""
    finally:
        os.close(opened)
    at = info.find(b"mnt_id:")
    return info[at + 7 : info.find(b"\n", at)].strip() if at >= 0 else b""


def places(fd: int, table: bytes) -> Optional[list]:
    """Where the file or folder open at ``fd`` lies whatever path reached it, from the
    mount it was opened through (``mnt_id`` in /proc/self/fdinfo) and that mount's line
    of ``table`` (mountinfo): ("MAJ:MIN", its path within that file system), the same
    for a bind mount of a folder or of one file as for the folder's own path (a removed
    file: the path it had); and for an overlay's folder, ("", the real path in its
    upper layer), where its writes go (not for one named relative to the mounter's
    folder, which cannot be placed: Docker names them so for an image of many layers).
    [] where /proc cannot tell (no /proc, no mount
    id); None where the mount is not in ``table``: another mount namespace's, reached
    through /proc/PID/root, or a mount detached (``umount -l``) that a descriptor still
    holds (red team 142)."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return []
    mount = mount_id(fd)
    if not mount:
        return []
    if not real.startswith(os.sep):
        return None
    if real.endswith(" (deleted)"):
        try:
            if os.fstat(fd).st_nlink == 0:  # (not a file really named so)
                real = real[: -len(" (deleted)")]
        except OSError:
            return None
    for line in table.split(b"\n"):  # (not splitlines: a mount point may hold a CR)
        head, _, tail = line.partition(b" - ")
        parts = head.split(b" ")
        if len(parts) < 5 or parts[0] != mount:
            continue
        point = os.fsdecode(unescape_mount(parts[4]))
        if not within(real, point):
            return None
        root = os.fsdecode(unescape_mount(parts[3]))
        # (the kernel's paths: absolute, normal, no trailing separator but "/")
        rest = real if point == os.sep else real[len(point) :]
        inside = (root.rstrip(os.sep) + rest) or os.sep
        found = [(parts[2].decode("ascii", "replace"), inside)]
        kind = tail.split(b" ")
        if kind[0] == b"overlay" and len(kind) >= 3:
            for option in kind[2].split(b","):
                if option.startswith(b"upperdir="):
                    upper = os.fsdecode(unescape_mount(option[9:]))
                    if not os.path.isabs(upper):  # (relative to the mounter's folder:
                        continue  # Docker's for many layers; refused, every output was)
                    rest = os.path.relpath(inside, os.sep)
                    found.append(("", os.path.join(resolved(upper), rest)))
        return found
    return None


def mounted_aliases(real: str, table: bytes) -> list:
    """The other paths at which the folder ``real`` (a real path) can be reached, from
    ``table`` (/proc/self/mountinfo): where a bind mount shows it or a folder around it
    (``mount --bind ~/.config/wasmsbx proj/keys``). A grant of such a path showed the
    guest the secret key, since the grant checks compare real paths (red team 140)."""
    try:
        device = os.stat(real).st_dev
    except OSError:
        return []
    return mount_aliases(table, real, f"{os.major(device)}:{os.minor(device)}")


def mount_aliases(text: bytes, real: str, device: str) -> list:
    """``mounted_aliases`` of a mountinfo text, for ``real`` on ``device`` ("MAJ:MIN")."""
    mounts = []  # (root in the file system, mount point) of each mount of the device
    for line in text.split(b"\n"):  # (not splitlines: a mount point may hold a CR)
        parts = line.partition(b" - ")[0].split(b" ")
        if len(parts) >= 5 and parts[2].decode("ascii", "replace") == device:
            root = os.fsdecode(unescape_mount(parts[3]))
            mounts.append((root, os.fsdecode(unescape_mount(parts[4]))))
    # Where ``real`` lies in the file system: from the deepest mount point above it.
    holding = [m for m in mounts if within(real, m[1])]
    aliases: list = []
    if holding:
        root, point = max(holding, key=lambda m: len(m[1]))
        inside = os.path.normpath(os.path.join(root, os.path.relpath(real, point)))
    for other_root, other_point in mounts if holding else ():
        if within(inside, other_root):  # (the folder, or one around it, mounted there)
            alias = os.path.normpath(os.path.join(other_point, os.path.relpath(inside, other_root)))
        elif within(other_root, inside):  # (a part of it: a key file bound elsewhere)
            alias = other_point
        else:
            continue
        if alias != real and alias not in aliases:
            aliases.append(alias)
    return _overlay_aliases(overlay_layers(text), real, aliases)


_ALIASES_MAX = 4096  # aliases found before giving up on more (each is a mount's)


def _overlay_aliases(layers: list, real: str, aliases: list) -> list:
    """``aliases`` (of ``real``) and the mount points of the overlays that show any of
    them, or one around or inside, as a layer, to a fixed point: an overlay shows its
    layers at its own mount point, on a device of its own, so a lower or upper layer
    that is the folder is the folder again (red team 143: an overlay of the trust
    folder, granted, gave the guest the secret key; one over a cache folder, its
    entries to write), and so is one whose layer is a bind mount of it or another such
    overlay (round 144). A layer under /proc (``/proc/self/cwd``, which leads elsewhere
    for each process) cannot be placed: taken as the folder. One named relative to the
    mounter's folder cannot be placed either, and is passed over: Docker names its
    layers so for an image of many, and taking them for the folder would refuse every
    grant in such a container."""
    known = [real, *aliases]
    seen = set(known)
    placed = []
    for point, layer in layers:
        if not os.path.isabs(layer):
            continue
        if _through_descriptors(layer):
            placed.append((point, None))
        else:
            placed.append((point, resolved(layer)))
    fresh = list(known)
    while fresh and len(known) < _ALIASES_MAX:
        found = []
        for point, layer in placed:
            for one in fresh:
                if within(one, point):  # (what this overlay shows already: a layer
                    continue  # does not hold the mounts below it, red team 145)
                if layer is None or within(layer, one):
                    alias = point
                elif within(one, layer):
                    alias = os.path.normpath(os.path.join(point, os.path.relpath(one, layer)))
                else:
                    continue
                if alias not in seen:
                    seen.add(alias)
                    found.append(alias)
        known += found
        fresh = found
    return [alias for alias in known[1:] if alias != real]


def _through_descriptors(layer: str) -> bool:
    """Whether an overlay layer's path leads through /proc or /dev/fd (a descriptor or
    folder of the mounter's, which no other process can resolve as it did: red team
    145, and resolving it here followed this process's own descriptors)."""
    first = layer.lstrip(os.sep).split(os.sep, 1)[0]
    if first == "proc":
        return True
    if first == "dev":
        rest = layer.lstrip(os.sep).split(os.sep)
        return len(rest) > 1 and rest[1] in ("fd", "stdin", "stdout", "stderr")
    return False


def overlay_layers(text: bytes) -> list:
    """(mount point, layer path as given) of each lower and upper layer of each overlay
    in a mountinfo text. (A ``:`` in a layer's path is given as ``\\:``, which
    mountinfo shows with its backslash escaped, ``\\134:``.)"""
    import re

    found = []
    for line in text.split(b"\n"):  # (not splitlines: a mount point may hold a CR)
        head, _, tail = line.partition(b" - ")
        parts, kind = head.split(b" "), tail.split(b" ")
        if len(parts) < 5 or len(kind) < 3 or kind[0] != b"overlay":
            continue
        point = os.fsdecode(unescape_mount(parts[4]))
        for option in kind[2].split(b","):
            name, _, value = option.partition(b"=")
            if name not in (b"lowerdir", b"upperdir", b"lowerdir+", b"datadir+"):
                continue
            value = unescape_mount(value)
            for layer in re.split(rb"(?<!\\):", value) if name == b"lowerdir" else [value]:
                if layer:  # (every backslash escape undone: "\\," too, round 145)
                    found.append((point, os.fsdecode(re.sub(rb"\\(.)", rb"\1", layer))))
    return found
