"""The WASI preview1 interface as data: every function, its signature, what it is for.

``wasi_snapshot_preview1`` is the only host interface wasmsbx provides. The audit uses this
table to group a module's imports by the capability they need and to explain each one in a
phrase; a test links every entry against the real runtime, so the signatures are exact.

Capability groups (``GROUPS``) and how the policy relates to them:

- ``filesystem``: files and directories reached through ``[filesystem]`` grants. Only the
  ``path_*`` functions can reach a host file (they resolve a path inside a granted
  directory); the ``fd_*`` functions here act on descriptors those calls opened.
- ``stdio``: reading and writing descriptors, which includes stdin/stdout/stderr (``[stdio]``).
- ``environment``: environment variables (``[env]``).
- ``args``: the command line (``wasmsbx run MODULE -- ARGS``).
- ``clock``, ``random``, ``polling``, ``process``: always provided.
- ``sockets``: never provided (WASI preview1 has no way to open a socket, and ``[network]``
  only accepts ``enabled = false``): the calls fail at run time.
"""

from __future__ import annotations

from collections import namedtuple

#: Import module names that mean WASI preview1 (``wasi_unstable`` is its predecessor,
#: snapshot 0, with the same function names).
PREVIEW1 = "wasi_snapshot_preview1"
UNSTABLE = "wasi_unstable"

#: group -> (title, what the policy says about it)
GROUPS = {
    "filesystem": ("filesystem", "files and directories under [filesystem] grants"),
    "stdio": ("descriptors & stdio", "read/write descriptors, including stdin/stdout/stderr"),
    "environment": ("environment", "environment variables passed by [env]"),
    "args": ("args", "the command-line arguments after --"),
    "clock": ("clock", "wall-clock and monotonic time (always provided)"),
    "random": ("random", "host randomness (always provided)"),
    "polling": ("polling & scheduling", "sleeping and waiting on descriptors (always provided)"),
    "process": ("process exit & signals", "ending the program (always provided)"),
    "sockets": ("sockets/network", "never provided: WASI preview1 cannot open sockets"),
    "custom": ("custom host imports", "non-WASI imports: none is provided, so they do not link"),
}


class WasiFunction(namedtuple("WasiFunction", "name group params results doc")):
    # (collections.namedtuple: typing.NamedTuple cost every run that checks WASI
    # imports 0.3 ms more to import; the annotations below still type the fields)
    name: str
    group: str
    params: tuple
    results: tuple
    doc: str  # one phrase: what the guest can do with it
    __slots__ = ()

    @property
    def signature(self) -> str:
        results = self.results[0] if len(self.results) == 1 else "(" + ", ".join(self.results) + ")"
        return "(" + ", ".join(self.params) + ") -> " + results


def _f(name: str, group: str, params: str, results: str, doc: str) -> WasiFunction:
    return WasiFunction(name, group, tuple(params.split()), tuple(results.split()), doc)


I = "i32"  # noqa: E741 - short on purpose, the table below is easier to read
FUNCTIONS: tuple = (
    _f("args_get", "args", "i32 i32", I, "read the command-line arguments"),
    _f("args_sizes_get", "args", "i32 i32", I, "count the command-line arguments and their size"),
    _f("environ_get", "environment", "i32 i32", I, "read the environment variables"),
    _f("environ_sizes_get", "environment", "i32 i32", I, "count the environment variables"),
    _f("clock_res_get", "clock", "i32 i32", I, "get a clock's resolution"),
    _f("clock_time_get", "clock", "i32 i64 i32", I, "read the current time"),
    _f("fd_advise", "filesystem", "i32 i64 i64 i32", I, "advise the host how a file will be read"),
    _f("fd_allocate", "filesystem", "i32 i64 i64", I, "reserve space in an open file"),
    _f("fd_close", "stdio", "i32", I, "close a descriptor"),
    _f("fd_datasync", "filesystem", "i32", I, "flush an open file's data to disk"),
    _f("fd_fdstat_get", "stdio", "i32 i32", I, "get a descriptor's type, flags and rights"),
    _f("fd_fdstat_set_flags", "stdio", "i32 i32", I, "set a descriptor's flags (append, nonblock)"),
    _f("fd_fdstat_set_rights", "filesystem", "i32 i64 i64", I, "drop rights from a descriptor"),
    _f("fd_filestat_get", "filesystem", "i32 i32", I, "get an open file's size and times"),
    _f("fd_filestat_set_size", "filesystem", "i32 i64", I, "truncate or extend an open file"),
    _f("fd_filestat_set_times", "filesystem", "i32 i64 i64 i32", I, "set an open file's times"),
    _f("fd_pread", "filesystem", "i32 i32 i32 i64 i32", I, "read an open file at an offset"),
    _f("fd_prestat_get", "filesystem", "i32 i32", I, "discover the granted directories"),
    _f("fd_prestat_dir_name", "filesystem", "i32 i32 i32", I, "get a granted directory's name"),
    _f("fd_pwrite", "filesystem", "i32 i32 i32 i64 i32", I, "write an open file at an offset"),
    _f("fd_read", "stdio", "i32 i32 i32 i32", I, "read from stdin or an open file"),
    _f("fd_readdir", "filesystem", "i32 i32 i32 i64 i32", I, "list a directory's entries"),
    _f("fd_renumber", "stdio", "i32 i32", I, "move a descriptor onto another number"),
    _f("fd_seek", "stdio", "i32 i64 i32 i32", I, "move a descriptor's read/write offset"),
    _f("fd_sync", "filesystem", "i32", I, "flush an open file's data and metadata to disk"),
    _f("fd_tell", "stdio", "i32 i32", I, "get a descriptor's read/write offset"),
    _f("fd_write", "stdio", "i32 i32 i32 i32", I, "write to stdout, stderr or an open file"),
    _f("path_create_directory", "filesystem", "i32 i32 i32", I, "create a directory"),
    _f("path_filestat_get", "filesystem", "i32 i32 i32 i32 i32", I, "stat a file by path"),
    _f(
        "path_filestat_set_times",
        "filesystem",
        "i32 i32 i32 i32 i64 i64 i32",
        I,
        "set a file's times by path",
    ),
    _f("path_link", "filesystem", "i32 i32 i32 i32 i32 i32 i32", I, "create a hard link"),
    _f(
        "path_open",
        "filesystem",
        "i32 i32 i32 i32 i32 i64 i64 i32 i32",
        I,
        "open or create a file or directory by path",
    ),
    _f("path_readlink", "filesystem", "i32 i32 i32 i32 i32 i32", I, "read a symlink's target"),
    _f("path_remove_directory", "filesystem", "i32 i32 i32", I, "remove an empty directory"),
    _f("path_rename", "filesystem", "i32 i32 i32 i32 i32 i32", I, "rename or move a file"),
    _f("path_symlink", "filesystem", "i32 i32 i32 i32 i32", I, "create a symbolic link"),
    _f("path_unlink_file", "filesystem", "i32 i32 i32", I, "delete a file"),
    _f("poll_oneoff", "polling", "i32 i32 i32 i32", I, "sleep, or wait for descriptors"),
    _f("proc_exit", "process", "i32", "", "end the program with an exit code"),
    _f("proc_raise", "process", "i32", I, "raise a signal in itself (obsolete)"),
    _f("sched_yield", "polling", "", I, "yield the CPU to other threads"),
    _f("random_get", "random", "i32 i32", I, "read random bytes from the host"),
    _f("sock_accept", "sockets", "i32 i32 i32", I, "accept a connection on a listening socket"),
    _f("sock_recv", "sockets", "i32 i32 i32 i32 i32 i32", I, "receive data from a socket"),
    _f("sock_send", "sockets", "i32 i32 i32 i32 i32", I, "send data on a socket"),
    _f("sock_shutdown", "sockets", "i32 i32", I, "shut down a socket"),
)
del I

BY_NAME = {f.name: f for f in FUNCTIONS}
# (name, (params, results)) of each function: an import of the preview1 module that is
# one of these is provided (one set lookup per import, on every sandbox of a module)
PROVIDED = frozenset((f.name, (f.params, f.results)) for f in FUNCTIONS)


def is_wasi_module(module: str) -> bool:
    """True for the import module the sandbox links: ``wasi_snapshot_preview1`` only.

    ``wasi_unstable`` (snapshot 0) has the same function names, but wasmtime no longer
    provides it, so a module built for it does not link.
    """
    return module == PREVIEW1


# Functions that act on a granted directory's own descriptor (a preopen), opening
# nothing by path: they list it and read or change its times (red team 125: a module
# importing only these listed a home directory's names, and the audit called the grant
# unused)
DIRECTORY_FUNCTIONS = frozenset({"fd_readdir", "fd_filestat_get", "fd_filestat_set_times"})


def opens_paths(name: str) -> bool:
    """True for the functions that reach host files by path (and so need a directory grant)."""
    return name.startswith("path_")


def reaches_grants(name: str) -> bool:
    """True for the functions that reach a granted directory: by path (``opens_paths``)
    or through its own descriptor (DIRECTORY_FUNCTIONS)."""
    return opens_paths(name) or name in DIRECTORY_FUNCTIONS
