"""Folders a guest may have filled: removed and measured whatever their shape.

A guest granted a folder (an MCP session's /scratch, a policy's writable grant) can make
a tree of any depth: WASI resolves each path relative to a folder it opened, so a chain
of 100,000 folders, or one whose path is far longer than PATH_MAX, is a few calls.
``shutil.rmtree`` recurses once per level (RecursionError past about 1,000 on Python
3.9-3.11, which ``ignore_errors`` does not catch) and ``os.scandir`` of a path longer
than PATH_MAX fails (ENAMETOOLONG): such a tree outlived its session, uncounted (red
team round 73). Both walks here go by descriptors, never by whole paths, and never
follow a link. Imports nothing of wasmsbx but native.trustdir's reading of a
descriptor's mount (itself a leaf).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

from .native.trustdir import mount_id

_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_DIR |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def remove_tree(path: str) -> bool:
    """Remove ``path`` and everything under it (a link or a file at ``path`` is
    unlinked, never followed). No recursion and two descriptors at most, at any depth:
    each folder's subfolders are moved up into the top folder (renamed there) before it
    is removed, so the tree flattens as it goes. Whether it is gone; never raises."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True
    try:
        top = os.open(path, _DIR)
    except OSError:
        return False
    try:
        mount = _mount_of(top)
        if mount != _parent_mount(path) or (not mount[1] and _pinned_by_a_mount(path)):
            return False  # (a mount point: what is mounted there is not this tree's)
        _empty(top)
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _mount_of(fd: int) -> tuple:
    """What tells the mount the folder open at ``fd`` lies on from another: (its
    device, the mount's id from /proc/self/fdinfo, b"" where /proc cannot tell). A bind
    mount shares its file system's device, so the id is what tells one."""
    try:
        device = os.fstat(fd).st_dev
    except OSError:
        return (None, b"")
    # (no /proc: statx says, on Linux 5.8 and later; red team 149 hid /proc, and a bind
    # mount was entered)
    return (device, mount_id(fd) or _statx_mount(fd))


_STATX_MNT_ID = 0x1000  # statx mask bit: stx_mnt_id (Linux 5.8)
_AT_EMPTY_PATH = 0x1000
_STX_MNT_ID_AT = 144  # byte offset of stx_mnt_id in struct statx


def _statx_mount(fd: int) -> bytes:
    """The mount id of the folder open at ``fd`` from statx(2), b"" where it cannot
    tell (not Linux, an older kernel or libc)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        buffer = ctypes.create_string_buffer(256)  # (struct statx: 256 bytes)
        if libc.statx(fd, b"", _AT_EMPTY_PATH, _STATX_MNT_ID, buffer) != 0:
            return b""
    except (OSError, AttributeError, ValueError, ImportError):
        return b""
    if not ctypes.c_uint32.from_buffer(buffer).value & _STATX_MNT_ID:
        return b""
    return str(ctypes.c_uint64.from_buffer(buffer, _STX_MNT_ID_AT).value).encode()


def _pinned_by_a_mount(name: str, where: Optional[int] = None) -> bool:
    """Whether the folder ``name`` (of the folder open as ``where``) is a mount point,
    where no mount id can be had (/proc hidden, no statx from Python: the private 3.9
    build's ctypes needs /proc, red team 149): the kernel refuses to rename a mount
    point (EBUSY), so it is renamed to a name of its own and back."""
    probe = f".wasmsbx-mount-probe-{os.getpid()}-{os.urandom(6).hex()}"
    if where is None:  # (a path: the probe beside it)
        probe = os.path.join(os.path.dirname(os.path.abspath(name)), probe)
    try:
        os.rename(name, probe, src_dir_fd=where, dst_dir_fd=where)
    except OSError:  # (EBUSY; and any other refusal is no proof of the opposite: the
        return True  # kernel looks at a target planted at the probe's name first, red
        # team 150: ENOTDIR, and the mount under it was entered)
    try:
        os.rename(probe, name, src_dir_fd=where, dst_dir_fd=where)
    except OSError:
        return True  # (not put back: taken as one, left alone)
    return False


def _parent_mount(path: str) -> tuple:
    try:
        parent = os.open(os.path.join(path, os.pardir), _DIR)
    except OSError:
        return (None, b"")
    try:
        return _mount_of(parent)
    finally:
        os.close(parent)


def _empty(top: int) -> None:
    """Empty the folder open as ``top`` (see remove_tree). Stops when a pass over it
    removes nothing (what is left could not be removed). Never enters another mount (a
    folder bound inside, the trust folder say: `cache clear` deleted its keys through
    one, red team 147): such a folder is left, and so is the tree around it."""
    moved = 0
    here = _mount_of(top)
    while True:
        progress = False
        try:
            with os.scandir(top) as listing:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
        except OSError:
            return
        if not entries:
            return
        for name, is_dir in entries:
            if not is_dir:
                progress |= _unlink(name, top)
                continue
            try:
                folder = os.open(name, _DIR, dir_fd=top)
            except OSError:
                progress |= _unlink(name, top)  # (replaced by a file meanwhile)
                continue
            try:
                if _mount_of(folder) != here:
                    continue  # (a mount point: left; the finally closes it)
                if not here[1] and _pinned_by_a_mount(name, top):
                    continue  # (ids unknown: told by the kernel refusing to move it)
                with os.scandir(folder) as listing:
                    inner = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
                for child, child_is_dir in inner:
                    if child_is_dir:
                        moved, done = _move_up(child, folder, top, moved)
                        progress |= done  # (a rename refused is no progress: a folder
                    else:  # that cannot change, read-only or immutable, ends the loop)
                        _unlink(child, folder)
            except OSError:
                pass
            finally:
                os.close(folder)
            try:
                os.rmdir(name, dir_fd=top)
                progress = True
            except OSError:
                pass
        if not progress:
            return


def _unlink(name: str, where: int) -> bool:
    try:
        os.unlink(name, dir_fd=where)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _move_up(name: str, folder: int, top: int, moved: int) -> tuple:
    """Rename the folder ``name`` of ``folder`` into ``top`` under a new name: (the count
    of names used so far, whether it moved). A name taken by something else is skipped."""
    for _ in range(64):
        moved += 1
        target = f".wasmsbx-rm-{moved}"
        try:
            os.rename(name, target, src_dir_fd=folder, dst_dir_fd=top)
            return moved, True
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                return moved, False
    return moved, False


ENTRY_COST = 256  # bytes each entry is counted for beyond its size (its inode)


def held(info: os.stat_result) -> int:
    """What an entry takes: its size, or the blocks it holds if more (a 1-byte file takes
    a 4 KiB block: counted by size, 82,177 of them held 323 MiB of disk under a 48 MiB
    session budget, red team round 84). A sparse file counts by its size."""
    return max(info.st_size, getattr(info, "st_blocks", 0) * 512)


def tree_bytes(path: str, max_entries: int, max_depth: int) -> Optional[int]:
    """Bytes under ``path``: what every entry takes (``held``), folders too (ext4 gives
    a folder a block per 4 KiB of names and never shrinks it: 100,000 empty folders held
    412 MB that counting files alone left out, red team round 74), plus ENTRY_COST each (an
    inode); links not followed, counted as themselves. None if it holds more than
    ``max_entries`` entries or goes deeper than ``max_depth`` folders (what cannot be
    measured cheaply counts as over any budget). By descriptors, one per level of the
    folder being read: any path length."""
    try:
        top = os.open(path, _DIR)
    except OSError:
        return 0
    try:
        own = held(os.fstat(top))
    except OSError:
        own = 0
    total, seen, folders = _listing(top)
    total += own
    stack: list = [(top, folders)]  # (descriptor, its subfolders still to visit)
    try:
        while stack:
            if seen > max_entries:
                return None
            fd, pending = stack[-1]
            if not pending:
                os.close(fd)
                stack.pop()
                continue
            name = pending.pop()
            if len(stack) >= max_depth:
                return None
            try:
                child = os.open(name, _DIR, dir_fd=fd)
            except OSError:
                continue
            stack.append((child, []))
            size, count, folders = _listing(child)
            stack[-1] = (child, folders)
            total, seen = total + size, seen + count
        return total
    finally:
        for fd, _ in stack:
            os.close(fd)


def _listing(fd: int) -> tuple:
    """(bytes of its entries, folders included, with ENTRY_COST each; entries; names of
    its folders) of the folder open as ``fd``."""
    size, count, folders = 0, 0, []
    try:
        with os.scandir(fd) as listing:
            for entry in listing:
                count += 1
                size += ENTRY_COST
                try:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.name)
                    size += held(entry.stat(follow_symlinks=False))
                except OSError:
                    pass
    except OSError:
        pass
    return size, count, folders
