"""What sandboxes of one process share: prepared module bytes and compiled modules.

A ``Sandbox`` per tenant must cost about what a hand-written wasmtime-py program pays
for a Store and an Instance (issue #16), so everything that depends only on the module
and the engine configuration is done once per process, not once per sandbox:

- ``prepared(data)``: the binary (WAT translated) and its interface (imports, exports
  with types), for the bytes given: found by their length and a few hundred of their
  bytes, and compared byte for byte before use (no digest, not even Python's hash():
  hashing 0.9 MB costs 0.4 ms, comparing it 0.1 ms; nothing here needs a hash, since
  equality is checked). For a module that goes through the disk cache, the interface
  comes with the rest of what a run needs to know of it (``native.recorded``: read
  from its authenticated record in the cache, else parsed once) and its digest;
- ``compiled(engine, prepared, make)``: the runtime's compiled module, keyed by the
  engine (one per configuration, see backends/wasmtime ``engine_key``) and the prepared
  module. Modules loaded from the disk cache (or compiled and stored there) are kept in
  a table of their own (``loaded``/``keep``): a second sandbox of a cached module
  reports ``cache_state`` "memory" and reads no cache entry.

Each sandbox keeps its own store, limiter, fuel and deadline: nothing here holds
per-sandbox state. Both tables are bounded LRUs (entries and bytes), so a process that
loads many different modules keeps only the recent ones; a module evicted here stays
alive as long as a sandbox holds it.
"""

from __future__ import annotations

import atexit
import sys
import time
from typing import Any, Callable, Optional

from ..lru import Lru as _Lru
from ..lru import sample_key as _key

MAX_ENTRIES = 64  # modules per table
MAX_BYTES = 256 << 20  # module bytes held per table (compiled code is a few times that)


class Prepared:
    """The bytes given, the module's binary and its interface (None when the reader
    refused it: the runtime then gives the precise error); for a module the disk cache
    holds, its ``digest`` and ``facts`` (``native.recorded.RunFacts``), and whether
    they are ``recorded`` in the cache."""

    __slots__ = (
        "_read",
        "_wasm",
        "data",
        "digest",
        "exports",
        "facts",
        "imports_ok",
        "interface",
        "recorded",
        "size",
        "types",
    )

    def __init__(
        self,
        data: Optional[bytes],
        wasm: Optional[bytes],
        interface: Any,
        size: Optional[int] = None,
        read: Optional[Callable[[], bytes]] = None,
    ) -> None:
        self.data = data
        self._wasm = wasm
        self._read = read  # for a module known by its file (file_prepared): reads it
        self.size = len(wasm) if wasm is not None else size
        self.interface = interface
        self.digest: Optional[str] = None
        self.facts: Any = None
        self.recorded = False
        self.imports_ok = False  # its imports passed check_interface with none provided
        self.exports: Optional[list] = None  # ExportInfo list, filled by the first sandbox
        self.types: Optional[dict] = None  # export name -> (params, results), likewise

    @property
    def wasm(self) -> bytes:
        """The binary; for a module known by its file, read (and checked against its
        digest) the first time something needs it."""
        if self._wasm is None:
            assert self._read is not None
            self._wasm = self._read()
        return self._wasm


_PREPARED = _Lru(MAX_ENTRIES * 4, MAX_BYTES)
_COMPILED = _Lru(MAX_ENTRIES, MAX_BYTES)
_LOADED = _Lru(MAX_ENTRIES, MAX_BYTES)  # modules the disk cache gave (see loaded/keep)
_FILES = _Lru(MAX_ENTRIES * 4, MAX_BYTES)  # (path, file identity) -> Prepared (file_prepared)


def prepared(
    data: bytes, translate: Callable[[bytes], bytes], learn: Optional[Callable] = None
) -> Prepared:
    """The binary of ``data`` (``translate`` turns WAT into it) and its interface, once
    per process for the same bytes. ``learn(wasm)``: (digest, facts, recorded) for a
    module the disk cache will hold (see native.cache.module_facts), else the interface
    is parsed here. Errors are raised, never cached."""
    key = _key(data)
    found = _PREPARED.get(key)
    if found is not None and found.data == data:
        return found
    wasm = translate(data)
    learned = None if learn is None else learn(wasm)
    if learned is not None:
        digest, facts, recorded = learned
        entry = Prepared(data, wasm, None if facts is None else facts.interface)
        entry.digest, entry.facts, entry.recorded = digest, facts, recorded
    else:
        from ..wasm.facts import FactsError, read_interface

        try:
            interface = read_interface(wasm)
        except FactsError:
            interface = None
        entry = Prepared(data, wasm, interface)
    _PREPARED.put(key, entry, len(data) + (0 if wasm is data else len(wasm)))
    return entry


def by_file(path_text: str, identity: tuple) -> Optional[Prepared]:
    """The module known by its file (``file_prepared``) at ``path_text`` while the file
    is the same one, unchanged (``identity``: native.located.identity of its stat())."""
    return _FILES.get((path_text, identity))


def file_prepared(
    path_text: str,
    identity: tuple,
    digest: str,
    facts: Any,
    read: Callable[[], bytes],
) -> Prepared:
    """A module known by its file, not read: its digest from an authentic source memo
    (native.located), its facts from its authentic record (native.recorded); ``read()``
    gives its bytes if something needs them. Kept for later sandboxes of the same file
    in this process. Never shared with ``prepared`` (a group member, which needs the
    bytes, reads them there)."""
    entry = Prepared(None, None, facts.interface, identity[2], read)
    entry.digest, entry.facts, entry.recorded = digest, facts, True
    _FILES.put((path_text, identity), entry, identity[2])
    return entry


def compiled(engine: Any, prepared: Prepared, make: Callable[[], Any]) -> tuple:
    """(module, shared): the engine's compiled module of ``prepared``, compiled by
    ``make()`` the first time."""
    module = _held(_COMPILED, engine, prepared)
    if module is not None:
        return module, True
    module = make()
    _hold(_COMPILED, engine, prepared, module)
    return module, False


def loaded(engine: Any, prepared: Prepared) -> Any:
    """The module of ``prepared`` this process already has for ``engine`` (compiled, or
    loaded from the cache and verified then), or None: the cache's in-memory layer.
    Found by the module's bytes (``prepared``), never by a path or a cache entry: a
    module changed on disk is other bytes, hence another entry, and a cache entry
    changed on disk is never read again for a module held here.

    A use from here counts as a use of its cache entry (``keep``'s ``use``), at most
    once every ``USE_EVERY`` seconds: a long-lived process (watch, the MCP server, a
    host) serving a module from memory read no entry, so the entry looked unused and
    went first when another process evicted (least recently used)."""
    found = _entry(_LOADED, engine, prepared)
    if found is None:
        return None
    use = found[3]
    if use is not None:
        now = time.monotonic()
        if now - use[3] >= USE_EVERY:
            use[3] = now
            try:
                use[0].hit(use[1], use[2])
            except Exception:  # noqa: BLE001 - a use that cannot be counted is still a use
                pass
    return found[2]


USE_EVERY = 60.0  # seconds between two uses of a module held here counted in its entry


def keep(engine: Any, prepared: Prepared, module: Any, use: Optional[tuple] = None) -> None:
    """Hold ``module`` (compiled from, or verified as, ``prepared`` for ``engine``);
    ``use``: (store, entry key, label) its cache entry's uses are counted with."""
    counted = None if use is None else [*use, time.monotonic()]
    entry = (engine, prepared, module, counted)
    _LOADED.put((id(engine), id(prepared)), entry, prepared.size)


def _held(table: _Lru, engine: Any, prepared: Prepared) -> Any:
    """The module ``table`` holds for ``engine`` and ``prepared``, or None."""
    found = _entry(table, engine, prepared)
    return None if found is None else found[2]


def _entry(table: _Lru, engine: Any, prepared: Prepared) -> Optional[tuple]:
    """``table``'s entry for ``engine`` and ``prepared`` (engine, prepared, module, ...),
    or None. An entry holds the engine and the prepared module, so the ids in its key
    cannot be reused while it is there (checked by identity all the same)."""
    found = table.get((id(engine), id(prepared)))
    if found is not None and found[0] is engine and found[1] is prepared:
        return found
    return None


def _hold(table: _Lru, engine: Any, prepared: Prepared, module: Any) -> None:
    table.put((id(engine), id(prepared)), (engine, prepared, module), prepared.size)


# id(bytes), or a module file's path as given -> runner.sandbox._Plan objects made for
# that bytes object or path, the most recent first (keep_plan). Each plan holds its
# bytes, so no other object has that id while it is here.
_PLANS: dict = {}
PLANNED_MODULES = 16  # bytes objects with plans
PLANS_PER_MODULE = 8  # plans (distinct policy values) per bytes object


def plans(module: Any) -> tuple:
    """The plans made for this bytes object, or for the module file at this path as
    given (``str``: each with the content it was made of, to compare with the file's
    now), the most recent first (runner.sandbox._Plan); empty if none."""
    if type(module) is str:
        return _PLANS.get(module, ())
    found = _PLANS.get(id(module), ())
    return found if found and found[0].data is module else ()


def keep_plan(plan: Any) -> None:
    """Keep ``plan`` first among its bytes object's, in place of one with the same values;
    the oldest bytes object's plans go when more than PLANNED_MODULES have some, or when
    the modules the plans hold come to more than MAX_BYTES (each plan counted: plans
    under other engines hold other compiled modules; red team round 89 held 1.8 GiB in
    128 plans of 12 MiB modules). A module larger than that is not planned."""
    size = plan.prepared.size or 0
    if size > MAX_BYTES:
        return
    key = id(plan.data) if plan.path is None else plan.path
    found = _PLANS.pop(key, ())
    if found and plan.path is None and found[0].data is not plan.data:
        found = ()  # (another object, freed, had that id)
    room = PLANS_PER_MODULE if not size else min(PLANS_PER_MODULE, MAX_BYTES // size)
    kept = [p for p in found if p.values != plan.values][: room - 1]
    while len(_PLANS) >= PLANNED_MODULES or _planned_bytes() + size * (1 + len(kept)) > MAX_BYTES:
        try:
            del _PLANS[next(iter(_PLANS))]
        except (KeyError, RuntimeError, StopIteration):  # (none left, or another thread's)
            break
    _PLANS[key] = (plan, *kept)


def _planned_bytes() -> int:
    """The module bytes the plans hold, each plan counted."""
    return sum(p.prepared.size or 0 for group in list(_PLANS.values()) for p in group)


def forget_loaded() -> None:
    """Forget the modules kept by ``keep``, and which cache entries this process found
    verified (native.entry ``forget_recalled``): the next sandbox of each reads the disk
    cache again, as a new process would (tests of the cache)."""
    _LOADED.clear()
    _FILES.clear()
    entry = sys.modules.get("wasmsbx.native.entry")  # (loaded with the cache, if ever)
    if entry is not None:
        entry.forget_recalled()


def clear() -> None:
    """Forget every shared module (tests; a long-lived host that wants memory back)."""
    _PREPARED.clear()
    _COMPILED.clear()
    _LOADED.clear()
    _FILES.clear()
    _PLANS.clear()


# wasmtime-py's tables of the Python objects its stores reach (externref values, host
# functions, WASI output callbacks): module, table.
_RUNTIME_TABLES = (
    ("wasmtime._value", "SLAB"),
    ("wasmtime._func", "FUNCTIONS"),
    ("wasmtime._wasi", "CUSTOM_OUTPUTS"),
    ("wasmtime.component._linker", "FUNCTIONS"),
    ("wasmtime.component._linker", "RESOURCE_DTORS"),
)


def _at_exit() -> None:
    """Free what is held here, and every store only wasmtime-py's own tables keep alive,
    while the runtime is whole.

    Otherwise finalization clears the runtime's modules first and frees what is held here
    through a runtime that is gone ("Exception ignored in Managed.__del__ ...
    'NoneType' object is not callable"; this module is often imported before the
    runtime's). And a store reached only through such a table (an externref holding an
    object that holds its sandbox: a cycle through the runtime, which the cycle
    collector cannot see) was freed at the very end, after the ctypes thunk it calls to
    release that externref: a segfault at exit (red team round 24). Emptying the tables
    breaks those cycles now; a store freed later releases handles already gone, which
    wasmtime-py ignores. The ``wasmsbx`` command leaves with ``os._exit`` and never runs
    this."""
    clear()
    emptied = False
    for module_name, name in _RUNTIME_TABLES:
        table = getattr(sys.modules.get(module_name), name, None)
        handles = getattr(table, "handles", None)
        if isinstance(handles, dict) and handles:
            handles.clear()
            emptied = True
    if emptied:
        import gc

        gc.collect()  # (sandboxes in cycles of their own: freed while the runtime is whole)


atexit.register(_at_exit)
