"""A static scan of a component binary: its core modules, core instances and memories.

Nothing here instantiates or validates (wasmtime does that when compiling); the scan
only counts what instantiating the component creates, so the runner can set the
store's limits from the policy:

- ``core_instances``: core instances made by ``instantiate`` (the inline-export form
  makes none). wasmtime's instance limit counts exactly these: 4 for a C command built
  with the preview1 adapter (main, adapter, shim, fixup). A nested component counts
  once per instantiation of it.
- The core module and component index spaces are followed through aliases, imports and
  exports, so an index names the module it names for wasmtime (an outer alias reaches
  the parent's). A component that instantiates a core module or component it imports or
  takes from an instance's exports is refused (ComponentUnsupported): what it makes
  cannot be counted, and an undercount would loosen the per-memory cap.
- ``adapters``: core instances wasmtime adds on its own: a ``canon lower`` of a function
  another component instance (or this one) lifted becomes a fused adapter, which lives
  in an adapter module wasmtime generates and instantiates. Which lowers are fused
  needs wasmtime's inlining pass, so every canonical function counts as a possible one,
  once per instantiation of its component: an upper bound (before, composed components
  such as ``wac`` output were refused as past the instance limit, red team round 76).
- ``host``: the runtime's own memory the core instances hold outside their linear
  memories and tables (their globals, function references and imports; see
  ``backends.limits.module_host``), once per instantiation, so ``limits.memory``
  bounds it too.
- ``memories``: ``(min_bytes, max_bytes or None)`` of every linear memory a core module
  defines, once per instantiation. Imported memories are the same memory again.
  ``tables`` the same for tables (in elements); ``gc_heap``: some core module has
  struct, array or exception types, which live in the store's one GC heap.

Hand-written rather than a library: the only Python component parser would be a
wasm-tools binding, and the runner needs just these counts on every run.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Optional

from ..backends.limits import INSTANCE_BYTES, module_host
from ..inputs import Clock
from ..wasm.facts import FactsError, _leb, _parse

PAGE = 65536
MAX_DEPTH = 64  # nested components; wasmtime's own limit is lower
MAX_COUNT = 100_000  # core instances or memories: far beyond any real component

# A canonical function's entries in the component's own context (measured 29-31 bytes
# with wasmtime 51, fused or not; the instance costs are in backends.limits)
CANON_BYTES = 64
# A type an instance of the component defines (a resource type: about 30 bytes an
# instance, red team round 96: 2,000 resource types in a component instantiated 2,000
# times held 122 MB an instance under --memory 16MiB). Every entry of the type section is
# counted, as reading which are resources would take the whole type grammar; ordinary
# components define tens to hundreds.
TYPE_BYTES = 32
_TYPE = 7
_CORE_MODULE, _CORE_INSTANCE, _COMPONENT, _INSTANCE = 1, 2, 4, 5


class CoreModule(namedtuple("CoreModule", "index offset size")):
    """One core module embedded in the component (``offset`` into the whole binary)."""

    index: int
    offset: int
    size: int
    __slots__ = ()


class Layout(
    namedtuple(
        "Layout",
        "core_modules core_instances memories components probed gc_heap tables adapters host",
        defaults=(False, False, (), 0, 0),
    )
):
    """What instantiating the component creates (see the module docstring)."""

    core_modules: tuple
    core_instances: int
    memories: tuple
    components: int  # nested component definitions, at every depth
    probed: bool  # with wasmsbx's memory probe (components.probe): counted in core_instances
    gc_heap: bool  # a core module has struct, array or exception types: the store's GC heap
    tables: tuple  # (min, max or None) elements of every table defined, once per instantiation
    adapters: int  # at most this many fused-adapter core instances besides core_instances
    host: int  # bytes of runtime memory the core instances hold (module docstring)
    __slots__ = ()

    def instance_limit(self) -> int:
        """The core instances wasmtime may make for one instance of the component."""
        return self.core_instances + self.adapters


class ComponentFormatError(ValueError):
    """The component binary is truncated or malformed where the scan reads it."""

    hint: Optional[str] = "check it with `wasm-tools validate`"


class ComponentUnsupported(ComponentFormatError):
    """A valid component whose core instances or memories the scan cannot count: its
    limits could not be enforced, so it is refused."""

    hint = (
        "wasmsbx runs components whose core modules and nested components are defined "
        "in the component itself (not imported, not taken from an instance's exports)"
    )


def scan(data: bytes) -> Layout:
    """The layout of the component ``data`` (ComponentFormatError if it cannot be read),
    read by the instant ``wasm.source.bounded_reads`` sets, if any (its error): the clock
    ticks every TICK sections, index space entries, instances and arguments (a 20 MB
    component of 4,000,000 imports took 1.9 s to scan whatever the bound)."""
    try:
        return _scan(memoryview(data), 0, len(data), 0, (), Clock())
    except ComponentUnsupported as exc:
        raise ComponentUnsupported(f"component not supported: {exc}") from None
    except (IndexError, FactsError, ComponentFormatError) as exc:
        reason = str(exc) if not isinstance(exc, IndexError) else "unexpected end of the binary"
        raise ComponentFormatError(f"malformed component: {reason}") from None


def late() -> None:
    """The error of ``wasm.source.bounded_reads`` if its instant has passed (a caller
    reading core modules one by one: see _scan's look before each)."""
    Clock().check()


def _scan(data: memoryview, start: int, end: int, depth: int, outer: tuple, clock: Clock) -> Layout:
    """The layout of the component whose bytes are ``data[start:end]``; ``outer``: the
    enclosing components' scopes (innermost last), which outer aliases reach into."""
    if depth > MAX_DEPTH:
        raise ComponentFormatError(f"components nested more than {MAX_DEPTH} deep")
    pos = start + 8
    scope = _Scope()
    scopes = outer + (scope,)
    defined: list = []  # CoreModule and nested Layout definitions, for Layout's totals
    nested_defined: list = []
    memories: list = []
    tables: list = []
    gc_heap = False
    instances = adapters = host = 0
    while pos < end:
        clock.tick()
        section = data[pos]
        size, pos = _leb(data, pos + 1)
        body_end = pos + size
        if body_end > end:
            raise ComponentFormatError(f"section {section} runs past the end at 0x{pos:x}")
        if section == _CORE_MODULE:
            module = CoreModule(len(defined), pos, size)
            defined.append(module)
            scope.modules.append(module)
        elif section == _CORE_INSTANCE:
            made, used = _core_instances(data, pos, clock)
            instances += made
            for index in used:
                # (each core module's own reads tick every TICK items: modules of 4,095
                # types each, instantiated by the thousand, never reached one: red team 153)
                clock.check()
                found = scope.items_of(data, index)
                memories.extend(found.memories)
                tables.extend(found.tables)
                gc_heap = gc_heap or found.gc_heap
                host += found.host
                # (each instance, as it is counted: one section of 3-byte instances of a
                # module of 100,000 tables took 2.4 GB to list before it was refused, red
                # team 125)
                if max(len(memories), len(tables)) > MAX_COUNT:
                    break
        elif section == _COMPONENT:
            layout = _scan(data, pos, body_end, depth + 1, scopes, clock)
            nested_defined.append(layout)
            scope.components.append(layout)
        elif section == _INSTANCE:
            for index in _component_instances(data, pos, clock):
                layout = scope.component(index)
                instances += layout.core_instances
                adapters += layout.adapters
                host += layout.host
                memories.extend(layout.memories)
                tables.extend(layout.tables)
                gc_heap = gc_heap or layout.gc_heap
                if instances + adapters > MAX_COUNT or max(len(memories), len(tables)) > MAX_COUNT:
                    break
        elif section in (_ALIAS, _IMPORT, _EXPORT):
            _index_spaces(data, pos, section, scopes, clock)
        elif section == _TYPE:
            host += _leb(data, pos)[0] * TYPE_BYTES
        elif section == _CANON:  # each one a possible fused adapter (module docstring)
            count = _leb(data, pos)[0]
            adapters += count
            host += count * (CANON_BYTES + INSTANCE_BYTES)
        pos = body_end
        if instances + adapters > MAX_COUNT or max(len(memories), len(tables)) > MAX_COUNT:
            raise ComponentFormatError(
                f"more than {MAX_COUNT:,} core instances (fused adapters included), "
                "memories or tables"
            )
    # Each level copies the core modules of the levels inside it: on the clock, and at
    # most MAX_COUNT of them (420,000 empty modules inside 64 nested components were
    # copied for 2-3 s past a 1 s bound, red team 156).
    inner = sum(len(n.core_modules) for n in nested_defined)
    if len(defined) + inner > MAX_COUNT:
        raise ComponentFormatError(f"more than {MAX_COUNT:,} core modules")
    clock.tick(len(defined) + inner)
    return Layout(
        tuple(defined + [m for n in nested_defined for m in n.core_modules]),
        instances,
        tuple(memories),
        len(nested_defined) + sum(n.components for n in nested_defined),
        False,
        gc_heap,
        tuple(tables),
        adapters,
        host,
    )


class _Scope:
    """One component's core module and component index spaces. An entry is what the
    index names: a CoreModule or a nested Layout defined (or re-exported, or reached by an
    outer alias) here, or None for one imported or taken from an instance's exports, whose
    memories and core instances this scan cannot count."""

    def __init__(self) -> None:
        self.modules: list = []
        self.components: list = []
        # What a module defines, read once: by its index here, and by its bytes' offset
        # (the same module under another index). Two dicts: one keyed by both took
        # module 10 for the module at offset 10, the first one's, so a decoy there
        # hid the real module's memories and tables (red team round 70).
        self._by_index: dict = {}
        self._by_offset: dict = {}

    def items_of(self, data: memoryview, index: int) -> _Items:
        found = self._by_index.get(index)
        if found is None:
            if index >= len(self.modules):
                raise ComponentFormatError(f"core module {index} is not defined")
            module = self.modules[index]
            if module is None:
                raise ComponentUnsupported(
                    f"core module {index} is imported or taken from an instance: "
                    "wasmsbx cannot count the memories it makes"
                )
            found = self._by_offset.get(module.offset)
            if found is None:
                found = self._by_offset[module.offset] = _module_items(data, module)
            self._by_index[index] = found
        return found

    def component(self, index: int) -> Layout:
        if index >= len(self.components):
            raise ComponentFormatError(f"component {index} is not defined")
        layout = self.components[index]
        if layout is None:
            raise ComponentUnsupported(
                f"component {index} is imported or taken from an instance: "
                "wasmsbx cannot count the core instances and memories it makes"
            )
        return layout


_CORE_SORT, _CORE_MODULE_SORT, _COMPONENT_SORT = 0x00, 0x11, 0x04
_ALIAS, _CANON, _IMPORT, _EXPORT = 6, 8, 10, 11


def _index_spaces(data: memoryview, pos: int, section: int, scopes: tuple, clock: Clock) -> None:
    """The core modules and components an alias, import or export section adds to the
    index spaces of ``scopes[-1]`` (an export is a new index for the same item)."""
    scope = scopes[-1]
    count, pos = _leb(data, pos)
    for _ in range(count):
        clock.tick()
        if section == _IMPORT:
            pos = _extern_name(data, pos)
            kind = data[pos]
            if kind == _CORE_SORT:
                if data[pos + 1] == _CORE_MODULE_SORT:
                    scope.modules.append(None)
                pos = _leb(data, pos + 2)[1]
            elif kind in (0x02, 0x03):  # value or type bound: 0x00 index / 0x01 ...
                bound = data[pos + 1]
                if kind == 0x02 or bound == 0x00:
                    pos = _leb(data, pos + 2)[1]
                else:
                    pos += 2
            else:
                if kind == _COMPONENT_SORT:
                    scope.components.append(None)
                pos = _leb(data, pos + 1)[1]
            continue
        if section == _EXPORT:
            pos = _extern_name(data, pos)
        sort, pos = _sort(data, pos)
        if section == _EXPORT:
            index, pos = _leb(data, pos)
            if data[pos] == 0x01:  # an ascribed type: ignored, the item is the same
                pos = _skip_externdesc(data, pos + 1)
            else:
                pos += 1
            _append(scope, sort, _item(scope, sort, index))
            continue
        target = data[pos]
        pos += 1
        if target in (0x00, 0x01):  # an instance's export: unknown
            pos = _skip_name(data, _leb(data, pos)[1])
            _append(scope, sort, None)
        elif target == 0x02:  # outer: ct enclosing components up, index there
            ct, pos = _leb(data, pos)
            index, pos = _leb(data, pos)
            if ct >= len(scopes):
                raise ComponentFormatError(f"outer alias {ct} levels up")
            _append(scope, sort, _item(scopes[-1 - ct], sort, index))
        else:
            raise ComponentFormatError(f"unknown alias target 0x{target:02x}")


def _item(scope: _Scope, sort: tuple, index: int) -> object:
    """What ``index`` names in ``scope``'s index space of ``sort`` (None: unknown)."""
    items = scope.modules if sort == (True, _CORE_MODULE_SORT) else scope.components
    return items[index] if index < len(items) else None


def _append(scope: _Scope, sort: tuple, item: object) -> None:
    if sort == (True, _CORE_MODULE_SORT):
        scope.modules.append(item)
    elif sort == (False, _COMPONENT_SORT):
        scope.components.append(item)


def _sort(data: memoryview, pos: int) -> tuple:
    """((core?, sort byte), next position)."""
    if data[pos] == _CORE_SORT:
        return (True, data[pos + 1]), pos + 2
    return (False, data[pos]), pos + 1


def _extern_name(data: memoryview, pos: int) -> int:
    if data[pos] not in (0x00, 0x01):
        raise ComponentFormatError(f"unknown import or export name form 0x{data[pos]:02x}")
    return _skip_name(data, pos + 1)


def _skip_externdesc(data: memoryview, pos: int) -> int:
    kind = data[pos]
    if kind == _CORE_SORT:
        return _leb(data, pos + 2)[1]
    if kind in (0x02, 0x03):
        if kind == 0x02 or data[pos + 1] == 0x00:
            return _leb(data, pos + 2)[1]
        return pos + 2
    return _leb(data, pos + 1)[1]


def _component_instances(data: memoryview, pos: int, clock: Clock) -> list:
    """The component index each ``instantiate`` of an instance section names (the
    inline-export form makes no instance)."""
    count, pos = _leb(data, pos)
    used = []
    for _ in range(count):
        clock.tick()
        form = data[pos]
        pos += 1
        if form == 0x00:  # instantiate componentidx (name, sortidx)*
            index, pos = _leb(data, pos)
            used.append(index)
            args, pos = _leb(data, pos)
            for _ in range(args):
                clock.tick()
                pos = _skip_name(data, pos)
                pos = _leb(data, _sort(data, pos)[1])[1]
        elif form == 0x01:  # inline exports (exportname', sortidx)*
            exports, pos = _leb(data, pos)
            for _ in range(exports):
                clock.tick()
                pos = _extern_name(data, pos)
                pos = _leb(data, _sort(data, pos)[1])[1]
        else:
            raise ComponentFormatError(f"unknown instance form 0x{form:02x}")
    return used


def _core_instances(data: memoryview, pos: int, clock: Clock) -> tuple:
    """(instances made by ``instantiate``, the module index of each) in one section."""
    count, pos = _leb(data, pos)
    used = []
    for _ in range(count):
        clock.tick()
        form = data[pos]
        pos += 1
        if form == 0x00:  # instantiate moduleidx (name, 0x12 instanceidx)*
            module, pos = _leb(data, pos)
            used.append(module)
            args, pos = _leb(data, pos)
            for _ in range(args):
                clock.tick()
                pos = _skip_name(data, pos)
                pos = _leb(data, pos + 1)[1]  # 0x12 instanceidx
        elif form == 0x01:  # inline exports (name, sort idx)*
            exports, pos = _leb(data, pos)
            for _ in range(exports):
                clock.tick()
                pos = _skip_name(data, pos)
                pos = _leb(data, pos + 1)[1]  # sort byte, index
        else:
            raise ComponentFormatError(f"unknown core instance form 0x{form:02x}")
    return len(used), used


def _skip_name(data: memoryview, pos: int) -> int:
    length, pos = _leb(data, pos)
    return pos + length


class _Items(namedtuple("_Items", "memories tables gc_heap host")):
    """What one core module defines: memories (bytes), tables (elements), a GC heap,
    and the runtime memory one instance of it holds (bytes, ``limits.module_host``)."""

    __slots__ = ()


def _module_items(data: memoryview, module: CoreModule) -> _Items:
    """The memories and tables ``module`` defines (not those it imports), and whether
    it has struct, array or exception types (the store's GC heap)."""
    parser = _parse(bytes(data[module.offset : module.offset + module.size]), False)
    return _Items(
        [
            (m.limits.min * PAGE, None if m.limits.max is None else m.limits.max * PAGE)
            for m in parser.memories
            if not m.imported
        ],
        [(t.limits.min, t.limits.max) for t in parser.tables if not t.imported],
        parser.gc_heap,
        module_host(parser),
    )


def memory_cap(limit: int, memories: tuple) -> Optional[int]:
    """The per-memory cap that keeps the *total* of ``memories`` within ``limit``.

    wasmtime's store limit applies to each linear memory alone. Water-filling: the
    largest cap C with sum(min(max_i, C)) <= limit, so memories with a small declared
    maximum (the preview1 adapter's, say) keep it, and the rest share what is left.
    None when even the declared minimums do not fit (instantiation must fail).
    """
    if not memories:
        return limit
    if sum(low for low, _ in memories) > limit:
        return None
    bounded = sorted(high for _, high in memories if high is not None)
    unbounded = len(memories) - len(bounded)
    spent = 0
    for i, high in enumerate(bounded):
        rest = unbounded + len(bounded) - i
        share = (limit - spent) // rest
        if high > share:
            return share
        spent += high
    return limit - spent if unbounded == 0 else (limit - spent) // unbounded


def layout_record(layout: Layout) -> dict:
    """The layout as JSON data: what a component artifact's header carries, so the
    artifact runs alone under the same limits (its header is authenticated with it)."""
    return {
        "core_modules": [list(m) for m in layout.core_modules],
        "core_instances": layout.core_instances,
        "memories": [list(m) for m in layout.memories],
        "components": layout.components,
        "probed": layout.probed,
        "gc_heap": layout.gc_heap,
        "tables": [list(t) for t in layout.tables],
        "adapters": layout.adapters,
        "host": layout.host,
    }


def layout_from_record(record: object) -> Layout:
    """A Layout from :func:`layout_record`'s data (ComponentFormatError if malformed)."""
    try:
        modules = tuple(CoreModule(*(_count(v) for v in m)) for m in record["core_modules"])
        memories = tuple(
            (_count(low), None if high is None else _count(high))
            for low, high in record["memories"]
        )
        probed = record.get("probed", False)
        gc_heap = record.get("gc_heap", False)
        for flag in (probed, gc_heap):
            if type(flag) is not bool:
                raise ValueError(f"{flag!r} is not a flag")
        tables = tuple(  # (a record made before tables were counted has none: refused)
            (_count(low), None if high is None else _count(high)) for low, high in record["tables"]
        )
        instances = _count(record["core_instances"])
        # (a record made before fused adapters and the runtime's memory were counted
        # has neither: refused, red team round 76)
        adapters, host = _count(record["adapters"]), _count(record["host"])
        # (what a scan refuses, a record may not hold either: it is authentic, but any
        # key holder could have written it)
        if instances + adapters > MAX_COUNT or max(len(memories), len(tables)) > MAX_COUNT:
            raise ValueError(f"more than {MAX_COUNT:,} core instances, memories or tables")
        for low, high in memories + tables:
            if high is not None and low > high:
                raise ValueError(f"a minimum of {low} above its maximum of {high}")
        return Layout(
            modules,
            instances,
            memories,
            _count(record["components"]),
            probed,
            gc_heap,
            tables,
            adapters,
            host,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ComponentFormatError(f"unreadable component layout ({exc})") from None


def _count(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value
