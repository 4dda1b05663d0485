"""What a run needs to know of a module, kept in the cache, so that a cached module is
never parsed in Python again.

A ``Sandbox`` reads a module's imports and exports (to refuse a run that cannot work
before anything is compiled), the memories and tables it defines (limits that are
totals) and where the hidden memory exports shift its code (``--stats``). Reading them
with the pure-Python reader (``wasm.facts``) took 30 of the 37 ms a cold start of a
cached 0.9 MB module cost (graphviz.wasm), three parses of the whole binary.

So the first process that parses a module for the cache writes what it read beside the
entries: ``code/DI/DIGEST.facts`` (DIGEST: the module's BLAKE3, the cache key's module
digest), the facts as nested tuples in ``marshal``'s version 4, followed by a tag, a
keyed BLAKE3 (a key of its own derived from the user's secret,
``trust.CONTEXTS["cache-facts"]``) of the module digest, the wasmsbx version and the
body. A later process with the same module bytes (the same digest)
reads the record instead of parsing. A record is read once into private memory (never
through a link, never a FIFO, at most ``MAX_SIZE`` bytes), authenticated, and only then
parsed; one that is missing, damaged, not tagged with the user's key, made for another
module (a record renamed or copied over another's name), by another wasmsbx version or
by an edited reader (its sources' sizes and mtimes are in the tag: a development build
keeps its version string) is ignored: the module is parsed, and the record
written again. So a record can only ever say what this wasmsbx read from these bytes,
wherever the cache folder is (a folder a policy chose included).

Why ``marshal``: decoding the record is on every cold start of a cached module, and
JSON took 40-80 us for graphviz.wasm's 2 KB against a few for marshal. marshal is
not meant for untrusted data, and never sees any: a record is parsed only after its
tag, keyed with the user's secret, matched, so the bytes are what this wasmsbx wrote
(someone who can forge a tag can forge cache entries, i.e. native code, anyway). Only
None, booleans, integers, strings and tuples are written, and the shape is checked as
it is decoded.
"""

from __future__ import annotations

import errno
import functools
import marshal
import os

# Constant-time comparison of tags (hmac.compare_digest without hmac, as artifact._equal;
# that module is not imported here: it would bring json to every run)
from _operator import _compare_digest as _equal
from collections import namedtuple
from typing import Any, Optional

from blake3 import blake3  # (imported with native.cache anyway; used on every cold start)

from .._version import __version__
from ..inputs import read_whole

FORMAT = 2  # 1: JSON (its records fail the tag of 2: another domain)
SUFFIX = ".facts"
MAX_SIZE = 4 << 20  # no module's interface is larger (a larger record is not written)
TAG_SIZE = 32
_DOMAIN = b"wasmsbx cache facts 2\0"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
# A folder opened only to open a file in it: never through a link (O_PATH: no read access
# asked, the cheapest open; O_RDONLY where there is none)
FOLDER_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0)
FOLDER_FLAGS |= _NOFOLLOW | _CLOEXEC
_HEX = frozenset("0123456789abcdef")


def is_digest(name: str) -> bool:
    """Whether ``name`` can be a module digest (BLAKE3: 64 lowercase hex digits), as a
    record's file name must be (``cache verify`` reads names from the folder)."""
    return len(name) == 64 and _HEX.issuperset(name)


class RunFacts(namedtuple("RunFacts", "interface layout exported start")):
    """A module's facts as a run uses them."""

    interface: Any  # wasm.facts.Interface: imports and exports, with types
    layout: Any  # backends.limits.Layout, or None (unreadable: the runtime decides)
    exported: Any  # backends.limits.Exported without its bytes: where hidden exports go
    start: bool  # whether it has a start section
    __slots__ = ()


def read(wasm: bytes) -> RunFacts:
    """The facts of ``wasm``, read in one pass of the parser (FactsError if it cannot be
    read: the runtime then gives the precise error)."""
    from ..backends.limits import export_memories, layout
    from ..wasm.facts import Interface, _parse

    parser = _parse(wasm, scan_code=False)
    return RunFacts(
        Interface(tuple(parser.imports), tuple(parser.exports)),
        layout(wasm, parser),
        export_memories(wasm, parser)._replace(wasm=b""),
        parser.start is not None,
    )


def path_for(code: Any, digest: str) -> str:
    """Where the record of the module of ``digest`` is, in the cache's code folder."""
    return f"{code}{os.sep}{digest[:2]}{os.sep}{digest}{SUFFIX}"  # (on every cold start)


# The sources whose reading a record holds: the parser and what turns its result into
# facts. A development build keeps one version string across edits, so the tag also
# covers each file's size and mtime (a wheel's files never change; an edited reader's
# records are then ignored, as another version's are).
_READERS = (
    "wasm/reader.py",
    "wasm/facts.py",
    "wasm/model.py",
    "backends/limits.py",
    "native/recorded.py",
)


@functools.cache
def _reader_stamp() -> bytes:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = []
    for name in _READERS:
        try:
            info = os.stat(os.path.join(root, name))
            parts.append(f"{info.st_size}:{info.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return ",".join(parts).encode()


def _tag(key: bytes, digest: str, body: bytes) -> bytes:
    head = _DOMAIN + digest.encode("ascii") + b"\0" + __version__.encode() + b"\0"
    head += _reader_stamp() + b"\0"
    return blake3(head + body, key=key).digest()


# Descriptor number -> (st_dev, st_ino) of the cache folder native.cache pinned there
# (_pinned): paths through /proc/self/fd/N are checked against it before use, so a
# number closed by other code of this process (a double close) and reused for another
# folder is never written through.
PINS: dict = {}
_PROC_FD = "/proc/self/fd/"


def check_pin(path: str) -> None:
    """OSError if ``path`` goes through a pinned cache folder's descriptor that no longer
    holds that folder (one fstat: every cache read, write and removal pays it)."""
    if not path.startswith(_PROC_FD):
        return
    number = path[len(_PROC_FD) :].partition(os.sep)[0]
    want = PINS.get(int(number)) if number.isdigit() else None
    if want is None:
        return
    info = os.fstat(int(number))  # (EBADF if it was closed)
    if (info.st_dev, info.st_ino) != want:
        raise OSError(
            errno.ESTALE,
            "the cache folder's descriptor was closed by other code of this process",
            path,
        )


def open_folder(folder: str, make: bool = False) -> int:
    """A descriptor of the cache folder ``folder`` (``code/NA``), opened without
    following a link at either level: ``code`` by its path (the cache's own folder may be
    a link; a link in place of ``code`` is not followed), then ``NA`` relative to it, so
    neither a planted link nor one swapped in meanwhile (a project's cache comes with its
    repository, and git keeps links) is ever gone through. With ``make``, each is made
    private (0700) if missing. NotADirectoryError for a link or a file in place of
    either (ELOOP where a system says that for a link), FileNotFoundError for none."""
    check_pin(folder)
    parent, name = os.path.split(folder)
    if make:
        try:
            os.mkdir(parent, 0o700)
        except FileExistsError:
            pass
    top = os.open(parent, FOLDER_FLAGS)
    try:
        if make:
            try:
                os.mkdir(name, 0o700, dir_fd=top)
            except FileExistsError:
                pass
        return os.open(name, FOLDER_FLAGS, dir_fd=top)
    except OSError as exc:
        exc.filename = folder  # (the whole path in messages, not the name relative to top)
        raise
    finally:
        os.close(top)


def open_in_folder(path: str, flags: int) -> int:
    """``os.open(path, flags)`` of a file in a cache folder (``code/NA/NAME``), relative
    to the folder opened by ``open_folder``: never through a link in place of ``code`` or
    ``NA``. OSError as ``open_folder`` and ``os.open`` raise it."""
    folder, name = os.path.split(path)
    where = open_folder(folder)
    try:
        return os.open(name, flags, dir_fd=where)
    except OSError as exc:
        exc.filename = path
        raise
    finally:
        os.close(where)


def open_code_folder(folder: str) -> int:
    """``open_folder(folder, make=True)``: where entries, records and memos are written
    (a folder swapped for a link while a file is written would aim the write elsewhere:
    the file is created and renamed relative to this descriptor)."""
    return open_folder(folder, make=True)


def write_in_folder(where: int, name: str, data: bytes, stem: str, mode: int = 0o600) -> None:
    """Write ``data`` as the file ``name`` of the folder open as ``where``: a new file
    (``.STEM.PID.RANDOM.tmp``, ``mode``) renamed into place, so no reader ever sees part
    of one. OSError (the temporary file removed)."""
    tmp = f".{stem}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode, dir_fd=where
    )
    try:
        try:
            view, written = memoryview(data), 0
            while written < len(view):  # (a short write goes on where it stopped)
                done = os.write(fd, view[written:])
                if done <= 0:  # (no progress: never spin)
                    raise OSError(errno.EIO, "the write made no progress")
                written += done
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=where, dst_dir_fd=where)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=where)
        except OSError:
            pass
        raise


def read_small(path: str, max_size: int) -> Optional[bytes]:
    """The bytes of the regular file at ``path`` (more than a tag's, at most
    ``max_size``), read once into private memory (what is checked is what is used), never
    through a link, never blocking on a FIFO; None otherwise (never an error). Records
    and source memos (native.located) are read this way, never through a link in place
    of their folder either (``open_in_folder``)."""
    try:
        fd = open_in_folder(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
    except OSError:
        return None
    read = read_whole(fd, TAG_SIZE, max_size)
    return read[0] if read is not None and TAG_SIZE < len(read[0]) <= max_size else None


def recall(code: Any, digest: str, key: Optional[bytes]) -> Optional[RunFacts]:
    """The facts recorded for the module of ``digest`` in the cache's code folder
    ``code``, if a record is there and authentic; None otherwise (never an error)."""
    if key is None or not is_digest(digest):
        return None
    data = read_small(path_for(code, digest), MAX_SIZE)
    if data is None:
        return None
    body, tag = data[:-TAG_SIZE], data[-TAG_SIZE:]
    if not _equal(_tag(key, digest, body), tag):
        return None
    try:
        return _decode(marshal.loads(body), digest)
    except (ValueError, TypeError, EOFError, IndexError, AttributeError):
        return None  # (authentic, so never seen)


def remember(code: Any, digest: str, facts: RunFacts, key: Optional[bytes]) -> None:
    """Record ``facts`` for the module of ``digest`` (a new file renamed into place;
    failures are ignored: a record only saves time)."""
    if key is None:
        return
    body = marshal.dumps(_encode(facts, digest), 4)
    if len(body) + TAG_SIZE > MAX_SIZE:
        return
    write_small(path_for(code, digest), body + _tag(key, digest, body), digest[:16])


def write_small(path: str, data: bytes, stem: str) -> bool:
    """Write ``data`` as the file ``path`` in a two-level folder of the cache's code
    folder (``open_code_folder``: made private if missing, refused if a link or a file
    stands for one, never followed) as a new file renamed into place. Whether it was
    written (failures are ignored: records and memos only save time)."""
    folder, name = os.path.split(path)
    try:
        where = open_code_folder(folder)
    except (OSError, ValueError):
        return False
    try:
        write_in_folder(where, name, data, stem)
    except OSError:
        return False
    finally:
        os.close(where)
    return True


# ------------------------------------------------------------------------- the record


def _functype(t: Any) -> Any:
    return None if t is None else (tuple(t.params), tuple(t.results))


def _limits(lim: Any) -> Any:
    return None if lim is None else (lim.min, lim.max, lim.shared, lim.memory64)


def _encode(facts: RunFacts, digest: str) -> tuple:
    """The record's body: plain tuples, in the order ``_decode`` reads them."""
    interface = facts.interface
    layout = facts.layout
    return (
        FORMAT,
        digest,
        tuple(
            (
                i.module,
                i.name,
                i.kind,
                _functype(i.type),
                _limits(i.limits),
                i.elem,
                i.global_type,
                i.mutable,
            )
            for i in interface.imports
        ),
        tuple((e.name, e.kind, e.index, _functype(e.type)) for e in interface.exports),
        None
        if layout is None
        else (tuple(map(tuple, layout.memories)), tuple(map(tuple, layout.tables)), layout.host),
        (facts.exported.at, facts.exported.shift),
        bool(facts.start),
    )


def _fields(values: tuple, count: int) -> tuple:
    if len(values) != count:
        raise ValueError("not a record")
    return values


_TYPES: list = []  # the classes _decode builds, imported on its first use


def _types() -> tuple:
    if not _TYPES:
        from ..backends.limits import Exported, Layout
        from ..wasm.model import Export, FuncType, Import, Interface, Limits

        _TYPES.append((Exported, Layout, Export, FuncType, Import, Interface, Limits))
    return _TYPES[0]


class RecordedInterface:
    """A recorded module's imports and exports (``interface`` of the facts a record
    gives): the records' own tuples, built into ``wasm.model`` objects only when
    ``imports`` or ``exports`` is first asked for. The checks every cold start makes
    (``runner.sandbox.check_interface``: are the imports WASI functions the sandbox
    provides, is there a ``_start``) read the tuples as they are: building 24 objects
    for graphviz.wasm was half the instructions of reading its record.

    ``raw_imports``: (module, name, kind, (params, results) or None, limits, elem,
    global_type, mutable) each; ``raw_exports``: (name, kind, index, type) each, as
    ``_encode`` wrote them. Equal to the ``Interface`` it builds."""

    __slots__ = ("raw_imports", "raw_exports", "_built")

    def __init__(self, raw_imports: tuple, raw_exports: tuple) -> None:
        self.raw_imports, self.raw_exports, self._built = raw_imports, raw_exports, None

    def built(self) -> Any:
        """The ``wasm.model.Interface``, built the first time."""
        if self._built is None:
            self._built = _build(self.raw_imports, self.raw_exports)
        return self._built

    @property
    def imports(self) -> tuple:
        return self.built().imports

    @property
    def exports(self) -> tuple:
        return self.built().exports

    def __iter__(self) -> Any:
        return iter(self.built())

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: Any) -> Any:
        return self.built()[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordedInterface):
            other = other.built()
        return self.built() == other

    def __hash__(self) -> int:
        return hash(self.built())

    def __repr__(self) -> str:
        return repr(self.built())

    def __reduce__(self) -> tuple:  # (every pickle protocol, as the namedtuple)
        return (RecordedInterface, (self.raw_imports, self.raw_exports))


def _build(imports: tuple, exports: tuple) -> Any:
    Exported, Layout, Export, FuncType, Import, Interface, Limits = _types()
    # The records are built with tuple.__new__ (a namedtuple's own __new__ is Python
    # code: half of this function's time), from tuples of exactly their fields.
    new = tuple.__new__
    types: dict = {None: None}  # (params, results) -> FuncType: modules repeat a few types
    for t in {i[3] for i in imports}.union([e[3] for e in exports]):
        if t is not None:
            params, results = t
            types[t] = new(FuncType, (tuple(params), tuple(results)))
    imported = tuple(
        [
            new(
                Import,
                (m, n, k, types[t], None if lim is None else new(Limits, _fields(lim, 4)), e, g, u),
            )
            for m, n, k, t, lim, e, g, u in imports
        ]
    )
    exported_names = tuple([new(Export, (n, k, i, types[t])) for n, k, i, t in exports])
    return Interface(imported, exported_names)


def _decode(data: Any, digest: str) -> Optional[RunFacts]:
    Exported, Layout = _types()[:2]
    if type(data) is not tuple:  # (what _encode writes; anything else is not a record)
        return None
    form, module, imports, exports, shape, exported, start = data
    if form != FORMAT or module != digest:
        return None
    # (authentic, so always what _encode wrote; the shapes are checked all the same,
    # here, with every operation _build makes but the objects: a record that passes
    # builds, one that does not is ignored, as before the interface was built lazily)
    if type(imports) is not tuple or type(exports) is not tuple:
        return None
    for _, _, _, t, lim, _, _, _ in imports:
        if t is not None:
            hash(t)
            params, results = t
            tuple(params), tuple(results)
        if lim is not None:
            _fields(lim, 4)
    for _, _, _, t in exports:
        if t is not None:
            hash(t)
            params, results = t
            tuple(params), tuple(results)
    layout = None
    if shape is not None:
        memories, tables, host = shape
        if type(host) is not int:
            return None
        layout = Layout(tuple(map(tuple, memories)), tuple(map(tuple, tables)), host)
    at, shift = exported
    return RunFacts(
        RecordedInterface(imports, exports), layout, Exported(b"", at, shift), bool(start)
    )
