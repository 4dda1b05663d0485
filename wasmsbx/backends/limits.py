"""Compile a policy's memory and table caps into a module's own declared maxima.

wasmer (1.1.0 / engine 2.1) has no memory-limit or table-limit API, but it honours a
module's declared maximum: ``memory.grow`` past it returns -1, ``table.grow`` too. So
before compiling for wasmer, every memory and table the module *defines* gets
``max = min(declared max, cap)``. Only the limits in the memory section (5) and the table
section (4) change; every other byte is kept, so function offsets in traps stay right.

Imported memories and tables are left alone: wasmsbx provides WASI only, which exports
neither, so such a module cannot link anyway. The section layout follows
``wasmsbx.wasm.facts`` (which reads but does not rewrite).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

PAGE = 65536
MAX_PAGES32 = 65536  # 4 GiB: the most a 32-bit memory can declare
_MEMORY_SECTION = 5
_TABLE_SECTION = 4
_REF_TYPES = (0x70, 0x6F)  # funcref, externref (typed refs need function-references)


class LimitsError(ValueError):
    """The module's limits could not be read or rewritten."""


class Capped(NamedTuple):
    """Declared ``(min, max)`` per defined memory (pages) and table (elements), before capping."""

    wasm: bytes
    memories: tuple  # ((min, max or None), ...)
    tables: tuple


def _uleb(data: bytes, pos: int) -> tuple:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise LimitsError(f"truncated LEB128 at offset 0x{pos:x}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise LimitsError(f"LEB128 too long at offset 0x{pos:x}")


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _limits(data: bytes, pos: int, cap: Optional[int], what: str) -> tuple:
    """Re-encode one limits entry at ``pos``: (new bytes, end position, (min, max))."""
    flags = data[pos]
    if flags & ~0x07:
        raise LimitsError(f"{what} limits flags 0x{flags:02x} are not supported")
    minimum, pos = _uleb(data, pos + 1)
    maximum = None
    if flags & 1:
        maximum, pos = _uleb(data, pos)
    declared = (minimum, maximum)
    if cap is not None and what == "memory" and not flags & 4:
        cap = min(cap, MAX_PAGES32)  # a larger maximum is invalid for a 32-bit memory
    if cap is None or minimum > cap or (maximum is not None and maximum <= cap):
        # No cap, a module that cannot start under it (refused at instantiation), or
        # already within it: keep the entry as it is.
        new_max, new_flags = maximum, flags
    else:
        new_max, new_flags = cap, flags | 1
    body = bytes([new_flags]) + _leb(minimum) + (_leb(new_max) if new_flags & 1 else b"")
    return body, pos, declared


def _memory_section(body: bytes, cap: Optional[int]) -> tuple:
    count, pos = _uleb(body, 0)
    out, declared = bytearray(_leb(count)), []
    for _ in range(count):
        entry, pos, limits = _limits(body, pos, cap, "memory")
        out += entry
        declared.append(limits)
    if pos != len(body):
        raise LimitsError("memory section has trailing bytes")
    return bytes(out), declared


def _table_section(body: bytes, cap: Optional[int]) -> tuple:
    count, pos = _uleb(body, 0)
    out, declared = bytearray(_leb(count)), []
    for _ in range(count):
        if pos >= len(body) or body[pos] not in _REF_TYPES:
            raise LimitsError("table with a typed reference or initialiser is not supported")
        out.append(body[pos])
        entry, pos, limits = _limits(body, pos + 1, cap, "table")
        out += entry
        declared.append(limits)
    if pos != len(body):
        raise LimitsError("table section has trailing bytes")
    return bytes(out), declared


def cap_limits(
    wasm: bytes, memory_bytes: Optional[int], table_elements: Optional[int], each: bool = False
) -> Capped:
    """``wasm`` with its defined memories capped so that together they hold at most
    ``memory_bytes`` (whole pages), and its tables at most ``table_elements`` elements
    (each gets its share, see plan()); None leaves that kind alone. ``each``: the two
    are already per-item caps (a member of a group, planned over the group)."""
    if wasm[:8] != b"\0asm\x01\0\0\0":
        raise LimitsError("not a WebAssembly core module")
    found = layout(wasm)
    if found is not None and memory_bytes is not None and not each:
        # The caps are totals: each memory and table gets its share (see plan()).
        try:
            caps = plan(found, memory_bytes, table_elements)
        except TotalsError:
            pass  # cannot start under the totals: instantiation refuses it
        else:
            memory_bytes, table_elements = caps.memory_each, caps.table_each
    memory_cap = None if memory_bytes is None else memory_bytes // PAGE
    out = bytearray(wasm[:8])
    memories: list = []
    tables: list = []
    pos = 8
    while pos < len(wasm):
        sid = wasm[pos]
        size, body_at = _uleb(wasm, pos + 1)
        end = body_at + size
        if end > len(wasm):
            raise LimitsError(f"truncated section {sid} at offset 0x{pos:x}")
        body = wasm[body_at:end]
        if sid == _MEMORY_SECTION:
            body, memories = _memory_section(body, memory_cap)
        elif sid == _TABLE_SECTION:
            body, tables = _table_section(body, table_elements)
        else:
            out += wasm[pos:end]
            pos = end
            continue
        out += bytes([sid]) + _leb(len(body)) + body
        pos = end
    return Capped(bytes(out), tuple(memories), tuple(tables))


# ---------------------------------------------------------------------------- totals
#
# limits.memory and limits.table_elements are totals over everything an instance holds,
# but runtimes cap each memory (and each table) separately: wasmtime's store limiter has
# one per-memory size plus a count of memories; wasmer honours each declared maximum. So
# each memory gets a share: the largest per-memory cap X with sum(min(max_i, X)) <=
# total ("water-filling"), which lets a memory with a small declared maximum leave the
# rest to the others, and bounds the sum whatever the guest grows. Shared memories grow
# outside wasmtime's limiter (measured: wasmtime 50 grows a shared memory past
# memory_size), so each counts at its declared maximum, which the validator requires.


# The runtime's memory an instance holds outside its linear memories and tables, which
# no store limit counts: wasmtime keeps a context (vmctx) per core instance with a slot
# for every global and function. Measured with wasmtime 51 (RSS and VmData of 100
# instances of one module in a store): 15.3 bytes per defined global (a 16-byte slot,
# whatever its type), 22.8 per function that escapes (exported, in a table, ref.func:
# its VMFuncRef; every function is counted here, escaping or not), 64 of address space
# (35 touched) per imported function, 540 bytes for an empty instance, 1.35 KiB per
# core instance of a component. These err above what was measured. A component that
# instantiated a module of 100,000 globals 1,001 times held 1.6 GB under --memory 16MiB
# (red team round 76); limits.memory now bounds this estimate too, on its own.
# Red team round 93 found three more that grow per instance (measured the same way):
# 106 bytes per passive element segment and 15 per item in one (each kept for
# table.init; active and declared ones are dropped, 0 measured), 10 per passive data
# segment, 3.6 per tag: 100,000 element segments in a module a component instantiated
# 400 times held 4.4 GB under --memory 16MiB.
INSTANCE_BYTES = 2048
GLOBAL_BYTES = 16
FUNC_BYTES = 24
IMPORT_BYTES = 64  # an imported function's slot (on top of FUNC_BYTES)
ELEM_SEGMENT_BYTES = 128  # a passive element segment
ELEM_ITEM_BYTES = 16  # an item of one
DATA_SEGMENT_BYTES = 16  # a passive data segment
TAG_BYTES = 8
# Red team round 95: an imported table is about 57 bytes an instance in a component (20
# in a module), an imported memory 29, an imported global 21 (more than the 16 counted
# for every global): 20,000 imported tables in a module a component instantiated 400
# times held 520 MB under --memory 16MiB.
IMPORT_ITEM_BYTES = 64  # an imported table, memory or global (on top of GLOBAL_BYTES)


def module_host(parser: Any) -> int:
    """The runtime memory (bytes) one instance of a parsed module holds outside its
    linear memories and tables, estimated from the measurements above (a module with
    1M globals: 17 MB an instance, whatever limits.memory said)."""
    functions = len(parser.func_type_idx)
    imported = functions - parser.defined_functions
    return (
        INSTANCE_BYTES
        + GLOBAL_BYTES * len(parser.globals)
        + FUNC_BYTES * functions
        + IMPORT_BYTES * imported
        + ELEM_SEGMENT_BYTES * parser.passive_element_segments
        + ELEM_ITEM_BYTES * parser.passive_element_items
        + DATA_SEGMENT_BYTES * parser.passive_data_segments
        + TAG_BYTES * len(parser.tag_type_idx)
        + IMPORT_ITEM_BYTES
        * (
            sum(1 for t in parser.tables if t.imported)
            + sum(1 for m in parser.memories if m.imported)
            + sum(1 for g in parser.globals if g.imported)
        )
    )


class Layout(NamedTuple):
    """What a module defines: ``(min, max or None, shared)`` per memory in bytes, and
    ``(min, max or None)`` per table in elements; ``host``: the runtime memory an
    instance holds besides (module_host), bounded by limits.memory on its own."""

    memories: tuple
    tables: tuple
    host: int = 0


class Plan(NamedTuple):
    """Per-item caps that keep the totals: a runtime caps each memory at
    ``memory_each`` bytes (at most ``memories`` of them), each table likewise."""

    memory_each: int
    memories: int
    table_each: Optional[int]
    tables: int


class TotalsError(ValueError):
    """The module cannot start within the totals (``kind`` is "memory", "table", or
    "host": its instance's runtime memory, Layout.host, passes limits.memory)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def layout(wasm: bytes, parser: Any = None) -> Optional[Layout]:
    """The memories and tables ``wasm`` defines, or None when it cannot be read (the
    runtime then reports the module as invalid, or the fallback plan applies).
    ``parser``: ``wasm`` already parsed (``wasm.facts._parse``, scan_code=False)."""
    from ..wasm.facts import FactsError, _parse

    try:
        parser = parser or _parse(wasm, scan_code=False)
    except FactsError:
        return None
    memories = tuple(
        (
            m.limits.min * PAGE,
            None if m.limits.max is None else m.limits.max * PAGE,
            m.limits.shared,
        )
        for m in parser.memories
        if not m.imported
    )
    if parser.gc_heap:
        # wasmtime keeps struct, array and exception objects in a GC heap of its own,
        # which its store limiter caps like one more memory: counted here as a growable
        # memory, it takes its share of limits.memory (before, it came on top: 2x the
        # limit, red team rounds 23 and 26).
        memories += (GC_HEAP,)
    tables = tuple((t.limits.min, t.limits.max) for t in parser.tables if not t.imported)
    return Layout(memories, tables, module_host(parser))


GC_HEAP = (0, None, False)  # a Layout memory: the GC heap (starts empty, no maximum)


def _bytes(pages: Optional[int]) -> Optional[int]:
    return None if pages is None else pages * PAGE


def share(maxima: list, total: int) -> int:
    """The largest X with ``sum(min(m, X) for m in maxima) <= total`` (None = unbounded)."""
    left, count = total, len(maxima)
    for m in sorted(maxima, key=lambda m: float("inf") if m is None else m):
        if m is not None and m * count <= left:
            left -= m
            count -= 1
            continue
        return left // count
    return total  # every maximum fits: the cap never binds


def plan(found: Optional[Layout], memory: int, tables: Optional[int]) -> Plan:
    """Per-item caps for a module (or, later, a linked group's layouts summed) under the
    totals. An unknown layout (native code without its module) allows one memory and one
    table, each up to the total: sound, and enough for nearly every module."""
    if found is None:
        return Plan(memory, 1, tables, 1)
    if found.host > memory:
        raise TotalsError("host", host_message(found.host))
    fixed = sum(m[1] for m in found.memories if m[2])
    growable = [m for m in found.memories if not m[2]]
    if fixed > memory:
        raise TotalsError(
            "memory",
            f"its shared memories can grow to {_size(fixed)}, more than limits.memory "
            f"{_limit(memory)} (a shared memory counts at its declared maximum)",
        )
    each = share([m[1] for m in growable], memory - fixed) if growable else memory
    needed = sum(m[0] for m in found.memories)
    if needed > memory or any(m[0] > each for m in growable):
        gc = " (with its GC heap, which takes a share)" if GC_HEAP in found.memories else ""
        raise TotalsError("memory", f"module needs {_size(needed)} of memory at start{gc}")
    table_each = None
    if tables is not None and found.tables:
        table_each = share([t[1] for t in found.tables], tables)
        if sum(t[0] for t in found.tables) > tables or any(t[0] > table_each for t in found.tables):
            raise TotalsError("table", "module needs more table elements at start")
    return Plan(each, len(found.memories), table_each, len(found.tables))


def host_message(host: int) -> str:
    return (
        f"an instance would hold about {_size(host)} of the runtime's memory for its "
        "globals and functions (16 bytes a global, 24 a function), passive segments, tags "
        "and imports, outside linear memory"
    )


MAX_TABLE = 2**32 - 1
MAX_FUTURE = 256  # future members a group's shares are kept for (bounds the planning cost)


class Budget:
    """What a linked group has left of limits.memory and limits.table_elements.

    A runtime fixes a memory's or table's maximum when it is created (wasmer), or caps
    every memory of a store alike (wasmtime), so a member cannot hand budget back later.
    Each member's memories and tables (its own and the host ones it brings) are capped
    at an even share of what is left, shared with the instances the policy still allows
    after it (``limits.instances``), and that share is taken from the budget: the total
    holds whatever the members grow. A lone instance (``in_group`` False) gets it all."""

    def __init__(self, limits: Any, in_group: bool) -> None:
        self.in_group = in_group
        self.instances = limits.instances
        self.memory_left = limits.memory
        self.table_left = limits.table_elements
        self.host_left = limits.memory  # the members' runtime memory (Layout.host)
        self.members = 0
        self.failed = 0  # members whose instantiation failed after the runtime allocated

    def state(self) -> tuple:
        """What ``give_back`` restores: the budget before a member took its share."""
        return (self.memory_left, self.table_left, self.host_left, self.members)

    def give_back(self, state: tuple) -> None:
        """Undo the share of a member that was never instantiated (``state``: from
        ``state()`` before its ``take``): a link refused before the runtime allocated
        anything for it. A member whose start function failed keeps its share: its
        instance and memories stay in the store until the group is closed."""
        self.memory_left, self.table_left, self.host_left, self.members = state

    def take(self, found: Optional[Layout], memories: list, tables: list) -> Plan:
        """Per-item caps for a new member (``found``) plus host ``memories`` (``(min,
        max)`` in bytes) and ``tables`` (elements). TotalsError when they cannot start
        within what is left."""
        if self.instances is not None and self.members >= self.instances:
            from ..errors import InstanceLimitExceeded

            failed = ""
            if self.failed:
                failed = (
                    f" (with {self.failed} whose start failed: they stay in the group's "
                    "store until it is closed)"
                )
            raise InstanceLimitExceeded(
                f"instance limit reached: limits.instances = {self.instances}{failed}",
                hint="raise limits.instances",
            )
        found = found or Layout((), ())
        if found.host > self.host_left:
            raise TotalsError("host", host_message(found.host))
        mems = [(m[0], _mem_max(m[1]), m[2]) for m in found.memories]
        mems += [(low, _mem_max(high), False) for low, high in memories]
        tabs = [(t[0], MAX_TABLE if t[1] is None else t[1]) for t in (*found.tables, *tables)]
        future = 0
        if self.in_group and self.instances is not None:
            future = min(MAX_FUTURE, max(0, self.instances - self.members - 1))
        caps = plan(Layout(tuple(mems), tuple(tabs)), self.memory_left, self.table_left)
        if future:  # keep shares for the members to come, never below what this one needs
            try:
                kept = plan(
                    Layout(
                        tuple(mems) + ((0, None, False),) * (future if mems else 0),
                        tuple(tabs) + ((0, None),) * (future if tabs else 0),
                    ),
                    self.memory_left,
                    self.table_left,
                )
            except TotalsError:
                kept = Plan(0, 0, 0, 0)
            table_floor = max((t[0] for t in tabs), default=0)
            caps = caps._replace(
                memory_each=min(
                    caps.memory_each,
                    max(kept.memory_each, max((m[0] for m in mems if not m[2]), default=0)),
                ),
                table_each=None
                if caps.table_each is None
                else min(caps.table_each, max(kept.table_each or 0, table_floor)),
            )
        self.memory_left -= sum(m[1] if m[2] else min(m[1], caps.memory_each) for m in mems)
        self.host_left -= found.host
        if self.table_left is not None and caps.table_each is not None:
            self.table_left -= sum(min(t[1], caps.table_each) for t in tabs)
        self.members += 1
        return caps


def _mem_max(maximum: Optional[int]) -> int:
    """A 32-bit memory never holds more than 4 GiB, declared maximum or not."""
    top = MAX_PAGES32 * PAGE
    return top if maximum is None else min(maximum, top)


def _size(n: int) -> str:
    from ..units import format_size

    return format_size(n)


def _limit(n: int) -> str:
    from ..units import format_limit

    return format_limit(n)


# ---------------------------------------------------------------------------- memory in use

HIDDEN_EXPORT = "wasmsbx:memory:"  # + the memory's index
_EXPORT_SECTION = 7
_AFTER_EXPORTS = (8, 9, 12, 10, 11)  # start, element, data count, code, data


class Exported(NamedTuple):
    """A module with every defined memory exported (so the host can read how much memory
    it holds, ``--stats``), and where the bytes moved: offsets at or after ``at`` in the
    original are ``shift`` bytes later in ``wasm``."""

    wasm: bytes
    at: int
    shift: int

    def original_offset(self, offset: int) -> int:
        """A code offset in ``wasm`` (a trap's frame) as an offset in the original module."""
        return offset - self.shift if offset >= self.at + self.shift else offset


def export_memories(wasm: bytes, parser: Any = None) -> Exported:
    """``wasm`` plus one export named ``HIDDEN_EXPORT + index`` per defined memory.

    Runtimes report only exported memories, and a module with 8 unexported memories held
    512 MiB while ``--stats`` said null. The export section is extended (or inserted in
    its place in the section order); no other byte changes, and ``Exported`` says how to
    map offsets back. An unreadable module is returned as is (the runtime refuses it).
    ``parser``: as for :func:`layout`."""
    from ..wasm.facts import FactsError, _parse

    try:
        parser = parser or _parse(wasm, scan_code=False)
    except FactsError:
        return Exported(wasm, len(wasm), 0)
    defined = [m.index for m in parser.memories if not m.imported]
    if not defined or any(e.name.startswith(HIDDEN_EXPORT) for e in parser.exports):
        # Nothing to count, or a module that uses the reserved names itself (it then
        # keeps them, and --stats counts only the memories it exports).
        return Exported(wasm, len(wasm), 0)
    entries = b"".join(_export(HIDDEN_EXPORT + str(i), 2, i) for i in defined)
    pos, insert_at = 8, None
    while pos < len(wasm):
        sid = wasm[pos]
        size, body_at = _uleb(wasm, pos + 1)
        end = body_at + size
        if sid == _EXPORT_SECTION:
            count, first = _uleb(wasm, body_at)
            body = _leb(count + len(defined)) + wasm[first:end] + entries
            new = bytes([sid]) + _leb(len(body)) + body
            return Exported(wasm[:pos] + new + wasm[end:], pos, len(new) - (end - pos))
        if insert_at is None and sid in _AFTER_EXPORTS:
            insert_at = pos
        pos = end
    at = len(wasm) if insert_at is None else insert_at
    body = _leb(len(defined)) + entries
    new = bytes([_EXPORT_SECTION]) + _leb(len(body)) + body
    return Exported(wasm[:at] + new + wasm[at:], at, len(new))


def _export(name: str, kind: int, index: int) -> bytes:
    raw = name.encode("utf-8")
    return _leb(len(raw)) + raw + bytes([kind]) + _leb(index)
