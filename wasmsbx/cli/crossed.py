"""What a run writes never goes into what it reads or keeps (``refuse_crossed``).

A run reads its module, its policy (given, or the ``./sandbox.toml`` discovery found),
an artifact, a batch input, the guest's stdin file, and standard input when it is an
input; it keeps a checkpoint and an audit log. It writes standard output and standard
error (the shell's redirections), the guest's stdout and stderr files (``[stdio]``), the
audit log and the checkpoint. If one of those writes is one of those files, the run
eats its own input (``--batch L.jsonl >> L.jsonl`` never ended: red team round 52),
truncates it (a discovered ``stdio.stdout`` naming the batch input emptied it, exit 0:
round 53), or forges a record (a guest's stdout naming the audit log). Refused before
anything runs: exit 105, as ``cat`` refuses "input file is output file".

Files are compared by what they are (device and inode, so links and other spellings of
a name are caught); a file that does not exist yet by its real path. Only regular files
count (a terminal, a pipe or /dev/null is shared by design). What the run keeps, and
the batch input, may not lie where the guest can write either (``refuse_in_grants``),
nor have a second name (a hard link) while the guest may write anywhere. Not covered: two
new names of one file through a bind mount, a bind mount of a folder or file inside a
read-write grant (a bind mount of the grant itself is seen), and a name another process
swaps for a link between this check and the open (README "Batch and streaming").
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Optional

from .. import errors
from ..native.trustdir import resolved
from ..policy import OUTPUT_WORDS, STDIN_WORDS


def refuse_crossed(args: Any, policy: Any) -> None:
    """InputError (105) if a file ``wasmsbx run`` writes is one it reads or keeps."""
    o = args.options
    module = (args.positionals or [None])[0]
    values = policy.values
    batch, stream = o.get("batch"), bool(o.get("stream"))
    stdin_read = batch == "-" or stream or module == "-" or values["stdio.stdin"] == "inherit"
    batch_input = ("the batch input", batch if batch != "-" else None)
    the_policy = ("the policy", getattr(policy, "source", None))
    reads = [
        ("the module", module if module != "-" else None),
        the_policy,
        ("the artifact", o.get("artifact")),
        batch_input,
        ("the guest's stdin file (stdio.stdin)", stdio_path(values["stdio.stdin"], stdin=True)),
        ("standard input", 0 if stdin_read else None),
    ]
    kept = [("the checkpoint", o.get("checkpoint")), ("the audit log", o.get("audit_log"))]
    refuse(reads, kept, [*standard_writes(), *guest_writes(policy)])
    # The policy too: rewritten by the guest, the next run would read grants and limits
    # of its choosing. A discovered one as well (red team round 58): it cannot grant its
    # own folder, but `--dir .` can, and its guest then raised the limits the user had
    # lowered (up to the defaults) for every later run in that folder.
    # (a batch from `-` or a stream read from a file there, as --batch FILE: round 56)
    piped = ("standard input", write_path(0) if batch == "-" or stream else None)
    refuse_in_grants(policy, [batch_input, piped, the_policy, *kept])
    if piped[1] is not None and any(grant.writable for grant in policy.grants):
        _refuse_unseen_stdin(piped[1])


def refuse_in_grants(policy: Any, named: list, one_name: bool = True) -> None:
    """InputError (105) if one of ``named`` ((what, path) pairs) lies in a folder the
    guest may write: it could change the batch input under the run (append items to it),
    forge the audit log or the checkpoint (red team round 55: a guest granted the
    folder of the log erased its record and wrote one of its own), or rewrite the policy
    the next run reads. Judged as stdio files are (runner.sandbox.writable_grant_on_way:
    every folder on the way to it). ``one_name``: nor may they have a second name
    (``_refuse_other_names``; ``watch`` asks it of the policy only, not of its module:
    cargo hard-links what it builds)."""
    if not any(grant.writable for grant in policy.grants):
        return
    from ..runner.sandbox import writable_grant_on_way

    for what, where in named:
        if not isinstance(where, str) or not where or where == "-":
            continue
        grant = writable_grant_on_way(policy, os.fspath(Path(where)))
        if grant is not None:
            raise errors.InputError(
                f"{what} ({errors.inert(where)}) lies in a folder the guest can write "
                f"(filesystem.read_write {errors.inert(grant.host)}); nothing was run",
                hint="keep it outside the folders granted read-write",
            )
        if one_name:
            _refuse_other_names(what, where)


def _refuse_unseen_stdin(name: str) -> None:
    """InputError (105) if standard input is a file whose name was removed since it was
    opened while it has another (``--batch - <&3`` after ``rm``): that name, unknown, may
    lie in a folder the guest can write (red team 131). ``name``: the one it was opened
    by (``write_path(0)``)."""
    try:
        info = os.fstat(0)
    except OSError:
        return
    if not stat.S_ISREG(info.st_mode) or info.st_nlink == 0:
        return
    try:
        named = os.stat(name)
        seen = (named.st_dev, named.st_ino) == (info.st_dev, info.st_ino)
    except FileNotFoundError:
        seen = False
    except OSError:  # (a name this process may not look up: sudo -u ... < file, a
        return  # service's StandardInput=file:; not a removed one: red team 132)
    if not seen:
        raise errors.InputError(
            "standard input is a file whose name was removed while it has another, which "
            "may lie in a folder the guest can write (filesystem.read_write); nothing was run",
            hint="give the batch a file by a name it still has",
        )


def _refuse_other_names(what: str, where: str) -> None:
    """InputError (105) if ``where`` is a regular file with more than one name: another
    name (a hard link) may lie in a folder the guest can write, and a name does not say
    where the others are (red team 130: a policy hard-linked into a granted folder, as
    a tarball can ship it, was rewritten by the guest, and the next run granted what
    the guest chose). Called only when the run has a read-write grant."""
    try:
        info = os.stat(where)
    except (OSError, ValueError):
        return  # (missing: made by this run; unreadable: its own error comes later)
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        raise errors.InputError(
            f"{what} ({errors.inert(where)}) has {info.st_nlink} names (hard links), and "
            "the guest may write a folder (filesystem.read_write): another name could lie "
            "there; nothing was run",
            hint="give it a name of its own (copy it, then use the copy)",
        )


def standard_writes() -> list:
    return [("standard output", 1), ("standard error", 2)]


def guest_writes(policy: Any) -> list:
    """The guest's stdout and stderr files a policy names (``[stdio]``)."""
    values = policy.values
    return [
        ("the guest's stdout file (stdio.stdout)", stdio_path(values["stdio.stdout"])),
        ("the guest's stderr file (stdio.stderr)", stdio_path(values["stdio.stderr"])),
    ]


def refuse(reads: list, kept: list, writes: list) -> None:
    """InputError (105) if one of ``writes`` or ``kept`` is one of ``reads`` or another
    of ``kept``: (what, where) pairs, ``where`` a path, a descriptor number or None."""
    for what, where in writes:
        if isinstance(where, str) and _closed_descriptor(where):
            raise errors.InputError(
                f"{what} ({errors.inert(where)}) names a file descriptor that is not open "
                "now; nothing was run",
                hint="name a file (a descriptor opened later would be another file)",
            )
    seen = {}
    for what, where in reads + kept:
        found = _identity(where)
        if found is not None:
            seen.setdefault(found, (what, where))
    for what, where in writes + kept:
        found = _identity(where)
        other = seen.get(found) if found is not None else None
        if other is not None and other[0] != what:
            raise _crossed(what, other)


def refuse_log_early(path: str, args: Any) -> None:
    """The part of ``refuse_crossed`` that needs no policy, for the audit log before it
    is opened (its first line would go into that file): the log is neither standard
    input, when that is the run's input (``--stream --audit-log F < F``), nor the
    checkpoint, even where neither exists yet."""
    o = args.options
    module = (args.positionals or [None])[0]
    log = _identity(path)
    if o.get("batch") == "-" or o.get("stream") or module == "-":
        found = _identity(0)
        if found is not None and found == log:
            raise _crossed("the audit log", ("standard input", 0))
    checkpoint = o.get("checkpoint")
    if checkpoint and log is not None and _identity(checkpoint) == log:
        raise _crossed("the audit log", ("the checkpoint", checkpoint))


def write_path(where: Any) -> Optional[str]:
    """The real path of a regular file written: a path as given, or what a standard
    stream's descriptor holds (/proc/self/fd); None for anything else."""
    if _identity(where) is None:
        return None
    if isinstance(where, int):
        try:
            return os.readlink(f"/proc/self/fd/{where}")
        except OSError:
            return None
    return errors.real_path(where)


def stdio_path(value: Any, stdin: bool = False) -> Optional[str]:
    """The file a stdio value names, if any ("capture" is an output's word: stdin opens
    it as a file)."""
    words = STDIN_WORDS if stdin else OUTPUT_WORDS
    return value if isinstance(value, str) and value and value not in words else None


_DESCRIPTOR = re.compile(r"/(?:dev/fd|proc/(?:self|thread-self|[0-9]+)(?:/task/[0-9]+)?/fd)/[0-9]+")


def _closed_descriptor(path: str) -> bool:
    """Whether ``path`` names a file descriptor (/dev/fd/N, /proc/self/fd/N) that is not
    open: opened later, it would be whatever file that number holds then, say the batch
    input (red team round 54: ``stdio.stdout = "/proc/self/fd/5"`` emptied it). Judged
    by the text and by the real path, which resolves every other spelling
    (``//proc/self/fd/5``, ``/proc/self/root/dev/fd/5``, a link to /proc/self/fd: round
    55)."""
    if os.path.exists(path):
        return False
    text = os.path.normpath(os.path.abspath(path))
    return any(_DESCRIPTOR.fullmatch(t) for t in (text, errors.real_path(path)))


def _identity(where: Any) -> Optional[tuple]:
    """("file", device, inode) of a regular file, by descriptor or by path (a path as the
    loaders read it: "m.wasm/." is m.wasm, round 54); ("new", real path) for a path where
    nothing is yet; None for anything else (a terminal, a pipe, /dev/null: shared by
    design)."""
    if where is None or where == "":
        return None
    try:
        if isinstance(where, int):
            info = os.fstat(where)
        else:
            where = os.fspath(Path(where))
            info = os.stat(where)
    except FileNotFoundError:
        if isinstance(where, int):
            return None
        # (a link swapped as it is read made realpath raise here, outside the handler
        # below: exit 100, red team round 87)
        return ("new", resolved(where))
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return ("file", info.st_dev, info.st_ino)


def _crossed(what: str, other: tuple) -> errors.InputError:
    name, where = other
    shown = "" if isinstance(where, int) else f" ({errors.inert(where)})"
    return errors.InputError(
        f"{what} is {name}{shown}: the run would write into what it reads or keeps; "
        "nothing was run",
        hint="write results, logs and the guest's output to other files (e.g. >> results.jsonl)",
    )
