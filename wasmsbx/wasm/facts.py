"""Module facts: a pure-Python reader for WebAssembly binaries.

Reads a core module *without* instantiating or compiling it (no wasm runtime is involved) and
reports what it imports, exports, declares and which post-MVP features its code actually uses.
It is meant for security audits, backend selection and interface-diff reports.

The reader is hardened against hostile input: anything malformed raises :class:`FactsError`
(a ``ValueError``) whose message says what is wrong and at which byte offset.  No other
exception escapes, every count is checked against the bytes that remain before it is used
to loop or allocate, and the work done is linear in the size of the input.

It *decodes* but does not *validate*: index bounds, type correctness and the like are left to
the runtime, which is the final judge.  Function bodies are scanned with a full opcode decoder
(MVP plus the proposals listed in :data:`FEATURES`); an opcode it does not know stops the scan
of that one body and adds the feature ``"unknown"`` instead of failing.
"""

from __future__ import annotations

import os
from collections import namedtuple
from typing import Any, Optional, Union

from ..capabilities import WASM_FEATURES
from ..inputs import TICK as _TICK
from ..inputs import Clock
from .model import Export, FuncType, Import, Interface, Limits  # noqa: F401 - re-exported
from .reader import (  # noqa: F401 - FactsError is re-exported
    _HEAP_TYPES,
    _NUM_TYPES,
    _VALTYPE_BYTES,
    FactsError,
    _leb,
    _Reader,
    _sleb,
    _UnknownEncoding,
)

__all__ = [
    "FEATURES",
    "CustomSection",
    "Export",
    "FactsError",
    "FuncType",
    "Global",
    "Import",
    "Limits",
    "Memory",
    "ModuleFacts",
    "Table",
    "load_facts",
    "read_facts",
]

#: Every name that can appear in :attr:`ModuleFacts.features` (the proposal names of
#: ``wasmsbx.capabilities.WASM_FEATURES``, plus ``"unknown"``).  Relaxed SIMD counts as
#: ``"simd"``; proposals decoded but outside this vocabulary (wide arithmetic, custom page
#: sizes) and anything this reader cannot decode are reported as ``"unknown"``.
FEATURES = (frozenset(WASM_FEATURES) - {"component-model"}) | {"unknown"}

_MAGIC = b"\x00asm"
_CORE_VERSION = b"\x01\x00\x00\x00"


# --------------------------------------------------------------------------------------------
# Public data model
# --------------------------------------------------------------------------------------------


class Memory(namedtuple("Memory", "index limits imported")):
    # index: int
    # limits: Limits
    # imported: bool
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "limits": self.limits.to_dict(), "imported": self.imported}


class Table(namedtuple("Table", "index limits elem imported")):
    # index: int
    # limits: Limits
    # elem: str
    # imported: bool
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "limits": self.limits.to_dict(),
            "elem": self.elem,
            "imported": self.imported,
        }


class Global(namedtuple("Global", "index type mutable imported")):
    # index: int
    # type: str
    # mutable: bool
    # imported: bool
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class CustomSection(namedtuple("CustomSection", "name size")):
    # name: str
    # size: int  payload size of the whole section, name included
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class ModuleFacts(
    namedtuple(
        "ModuleFacts",
        [
            "size",
            "sha256",
            "types",
            "imports",
            "exports",
            "memories",
            "tables",
            "globals",
            "functions",
            "start",
            "data_segments",
            "element_segments",
            "custom_sections",
            "producers",
            "has_name_section",
            "has_debug_info",
            "features",
        ],
        defaults=(
            False,
            False,
            frozenset(),
        ),
    )
):
    # size: int
    # sha256: str
    # types: tuple  of FuncType
    # imports: tuple  of Import
    # exports: tuple[Export, ...]
    # memories: tuple[Memory, ...]
    # tables: tuple[Table, ...]
    # globals: tuple[Global, ...]
    # functions: int
    # start: Optional[int]
    # data_segments: tuple[int, ...]
    # element_segments: int
    # custom_sections: tuple[CustomSection, ...]
    # producers: dict  field -> ["name version", ...]
    # has_name_section: bool
    # has_debug_info: bool
    # features: frozenset[str]
    __slots__ = ()

    def export(self, name: str) -> Optional[Export]:
        for exp in self.exports:
            if exp.name == name:
                return exp
        return None

    def func_exports(self) -> list[Export]:
        return [exp for exp in self.exports if exp.kind == "func"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "sha256": self.sha256,
            "types": [t.to_dict() for t in self.types],
            "imports": [i.to_dict() for i in self.imports],
            "exports": [e.to_dict() for e in self.exports],
            "memories": [m.to_dict() for m in self.memories],
            "tables": [t.to_dict() for t in self.tables],
            "globals": [g.to_dict() for g in self.globals],
            "functions": self.functions,
            "start": self.start,
            "data_segments": list(self.data_segments),
            "element_segments": self.element_segments,
            "custom_sections": [c.to_dict() for c in self.custom_sections],
            "producers": {k: list(v) for k, v in self.producers.items()},
            "has_name_section": self.has_name_section,
            "has_debug_info": self.has_debug_info,
            "features": sorted(self.features),
        }


# --------------------------------------------------------------------------------------------
# Encoding tables
# --------------------------------------------------------------------------------------------

_EXTERN_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}

_SECTION_NAMES = {
    0: "custom",
    1: "type",
    2: "import",
    3: "function",
    4: "table",
    5: "memory",
    6: "global",
    7: "export",
    8: "start",
    9: "element",
    10: "code",
    11: "data",
    12: "data count",
    13: "tag",
}
# Required order of the known non-custom sections (the tag section sits between memory and
# global, data count between element and code).
_SECTION_ORDER = {sid: i for i, sid in enumerate((1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11))}

# The most of each kind a module may declare: wasmparser's limits (crates/wasmparser/src/
# limits.rs: MAX_WASM_TYPES, _FUNCTIONS, _GLOBALS, _TAGS 1,000,000, _IMPORTS and
# _EXPORTS 1,000,000 (100,000 in older releases), _DATA_SEGMENTS and _ELEMENT_SEGMENTS
# 100,000, _MEMORIES 100), as wasmtime 51 applies them: it refuses one item more of
# each ("memories count exceeds limit of 100"), and it accepts 100,000 tables, not the
# 100 of older releases (measured). Imported items count with the defined ones. A module
# past one is invalid wherever it goes, so the reader refuses it before looping: 400,000
# memories in 0.8 MB became 400,000 records, findings and rows, and `audit --json` ran
# out of memory at 2.1 GB (red team round 77). Wasmer 1.1's older wasmparser allows
# less (2 memories, 100 tables), never more, but for element segments (not stored).
MAX_COUNTS = {
    "types": 1_000_000,
    "functions": 1_000_000,
    "imports": 1_000_000,
    "exports": 1_000_000,
    "globals": 1_000_000,
    "tags": 1_000_000,
    "tables": 100_000,
    "memories": 100,
    "data segments": 100_000,
    "element segments": 100_000,
}
# An import of these kinds adds one to (MAX_COUNTS key, the _Parser list it lands in).
_IMPORTED_COUNTS = {
    "func": ("functions", "func_type_idx"),
    "table": ("tables", "tables"),
    "memory": ("memories", "memories"),
    "global": ("globals", "globals"),
    "tag": ("tags", "tag_type_idx"),
}


class _Parser:
    def __init__(self, data: bytes, scan_code: bool = True, weigh: bool = False):
        self.data = data
        self.clock = Clock()  # (wasm.source.bounded_reads: the instant reads end by)
        self.by = self.clock.by
        self.scan_code = scan_code
        self.weigh = weigh or scan_code  # read the bodies' locals (compile_weight)
        self._scanner = None
        self.features: set[str] = set()
        # A struct or array type, or a tag (exceptions): instances may allocate on the
        # runtime's GC heap, which shares limits.memory with the linear memories
        # (backends.limits.layout).
        self.gc_heap = False
        self.all_types: list[Optional[FuncType]] = []  # by type index; None for struct/array
        self.func_type_idx: list[int] = []  # by function index
        self.tag_type_idx: list[int] = []
        self.imports: list[Import] = []
        self.exports: list[Export] = []
        self.memories: list[Memory] = []
        self.tables: list[Table] = []
        self.globals: list[Global] = []
        self.defined_functions = 0
        self.code_count: Optional[int] = None
        self.start: Optional[int] = None
        self.data_segments: list[int] = []
        self.passive_data_segments = 0  # (flags 1: kept per instance for memory.init)
        self.data_count: Optional[int] = None
        self.data_count_at = 0
        self.element_segments = 0
        # Passive ones (flags 1, 5) and their items: an instance keeps each for
        # table.init/elem.drop (backends.limits.module_host counts them)
        self.passive_element_segments = 0
        self.passive_element_items = 0
        self.elem_types: set[str] = set()  # element segments' types (funcref, externref...)
        self.simd_ops: set[int] = set()  # 0xfd sub-opcodes in the code (backend gaps)
        self.custom: list[CustomSection] = []
        self.producers: dict[str, list[str]] = {}
        self.has_name = False
        self.has_debug = False
        # Locals x body bytes, summed over the functions: what a compiler's memory grows
        # with (backends.compiling.HEAVY; functions compile in parallel); params count
        # as locals.
        self.compile_weight = 0

    def items(self, n: int) -> Any:
        """range(n), the clock looked at every _TICK items against READ_BY. A short run
        counts towards the next look: vectors of up to _TICK items nested in vectors of
        up to _TICK (4,095 rec groups of struct types of 4,095 fields) were read for 20 s
        past a 1 s bound without one (red team 154)."""
        if self.by is None:
            return range(n)
        if n <= _TICK:
            self.clock.tick(n)
            return range(n)
        return self._ticking(n)

    def _ticking(self, n: int) -> Any:
        for start in range(0, n, _TICK):
            self.late()
            yield from range(start, min(n, start + _TICK))

    def late(self) -> None:
        """The READ_BY error if its instant has passed."""
        self.clock.check()

    def room(self, r: _Reader, kind: str, total: int, at: int) -> None:
        """Refuses a module whose ``total`` of ``kind`` (those declared so far and the
        count read at ``at``) exceeds MAX_COUNTS: checked before the items are read."""
        limit = MAX_COUNTS[kind]
        if total > limit:
            raise r.error(f"{total:,} {kind}, more than the {limit:,} wasmtime accepts", at)

    def counted(self, r: _Reader, kind: str, have: int, min_item_size: int = 1) -> int:
        """A vector length (``_Reader.count``) that with the ``have`` already declared
        stays within MAX_COUNTS."""
        at = r.pos
        n = r.count("memory" if kind == "memories" else kind[:-1], min_item_size)
        self.room(r, kind, have + n, at)
        return n

    # ---- types -----------------------------------------------------------------------------

    def heaptype(self, r: _Reader) -> Optional[int]:
        """Reads a heap type; returns the abstract type byte, or None for a type index."""
        start = r.pos
        value = r.sleb(33)
        if value >= 0:
            return None
        code = value + 0x80
        if code not in _HEAP_TYPES:
            raise _UnknownEncoding(f"unknown heap type at offset 0x{start:x}", start)
        implied = _HEAP_TYPES[code][1]
        if implied:
            self.features.add(implied)
        return code

    def valtype(self, r: _Reader, *, packed: bool = False) -> str:
        start = r.pos
        b = r.byte()
        if b in _NUM_TYPES:
            return _NUM_TYPES[b]
        if b in _HEAP_TYPES:
            name, implied = _HEAP_TYPES[b]
            if implied:
                self.features.add(implied)
            return name
        if b in (0x63, 0x64):  # (ref null ht), (ref ht)
            self.features.add("function-references")
            code = self.heaptype(r)
            if b == 0x63 and code in (0x70, 0x6F):
                return _HEAP_TYPES[code][0]
            return "ref"
        if packed and b in (0x78, 0x77):
            return "i8" if b == 0x78 else "i16"
        raise _UnknownEncoding(f"unknown value type 0x{b:02x} at offset 0x{start:x}", start)

    def note_valtype(self, t: str) -> None:
        if t == "v128":
            self.features.add("simd")
        elif t in ("funcref", "externref"):
            self.features.add("reference-types")

    def functype(self, r: _Reader) -> FuncType:
        params = []
        for _ in self.items(r.count("parameter")):
            params.append(self.valtype(r))
        results = []
        for _ in self.items(r.count("result")):
            results.append(self.valtype(r))
        for t in params + results:
            self.note_valtype(t)
        if len(results) > 1:
            self.features.add("multi-value")
        return FuncType(tuple(params), tuple(results))

    def comptype(self, r: _Reader) -> Optional[FuncType]:
        start = r.pos
        form = r.byte()
        if form == 0x60:
            return self.functype(r)
        self.features.add("gc")
        self.gc_heap = True  # (a struct or an array: any other form is refused below)
        if form == 0x5F:  # struct
            for _ in self.items(r.count("field")):
                self.fieldtype(r)
            return None
        if form == 0x5E:  # array
            self.fieldtype(r)
            return None
        raise r.error(f"unknown type form 0x{form:02x}", start)

    def fieldtype(self, r: _Reader) -> None:
        self.note_valtype(self.valtype(r, packed=True))
        mut_at = r.pos
        if r.byte() not in (0, 1):
            raise r.error("invalid field mutability", mut_at)

    def subtype(self, r: _Reader) -> Optional[FuncType]:
        b = r.data[r.pos] if r.pos < r.end else -1
        if b in (0x50, 0x4F):  # sub, sub final
            r.pos += 1
            self.features.add("gc")
            skip_ulebs(r, r.count("supertype"))
        return self.comptype(r)

    def limits(self, r: _Reader, kind: str) -> Limits:
        start = r.pos
        flags = r.byte()
        if flags & ~0x0F:
            raise r.error(f"invalid {kind} limits flags 0x{flags:02x}", start)
        has_max, shared, is64, custom_page = flags & 1, flags & 2, flags & 4, flags & 8
        bits = 64 if is64 else 32
        lo = r.uleb(bits)
        hi = r.uleb(bits) if has_max else None
        if custom_page:
            r.uleb()  # log2 of the page size
            self.features.add("unknown")  # custom-page-sizes: no capability name for it
        if shared:
            self.features.add("threads")
        if is64:
            self.features.add("memory64")
        return Limits(lo, hi, bool(shared), bool(is64))

    def tabletype(self, r: _Reader) -> tuple[str, Limits]:
        elem = self.valtype(r)
        if elem not in ("funcref", "ref"):
            self.note_valtype(elem)
        if elem in _NUM_TYPES.values():
            raise r.error("table element type is not a reference type", r.pos - 1)
        return elem, self.limits(r, "table")

    def globaltype(self, r: _Reader) -> tuple[str, bool]:
        t = self.valtype(r)
        self.note_valtype(t)
        at = r.pos
        mut = r.byte()
        if mut not in (0, 1):
            raise r.error("invalid global mutability", at)
        return t, bool(mut)

    def type_at(self, idx: int) -> Optional[FuncType]:
        return self.all_types[idx] if 0 <= idx < len(self.all_types) else None

    def func_type(self, func_idx: int) -> Optional[FuncType]:
        if 0 <= func_idx < len(self.func_type_idx):
            return self.type_at(self.func_type_idx[func_idx])
        return None

    # ---- instruction scanning --------------------------------------------------------------

    def const_expr(self, r: _Reader) -> None:
        r.pos = self.scan(r.pos, r.end, True, r.what)

    def scan(self, pos: int, end: int, const: bool, what: str) -> int:
        """Decode instructions in [pos, end) (see wasmsbx.wasm.code, loaded on first use)."""
        if self._scanner is None:  # once: an import statement per body costs ~1 us
            from .code import CodeScanner

            self._scanner = CodeScanner(self)
        done = self._scanner.scan(pos, end, const, what)
        # (the scanner looks every 65,536 instructions of one scan; the scans add up: 400
        # constant expressions of 64,001 instructions each were read for 3.6 s past a
        # 1 s bound, red team 154. A unit of the clock is about 16 bytes scanned.)
        self.clock.tick(1 + ((done - pos) >> 4))
        return done

    def parse(self) -> None:
        data = self.data
        if not data:
            raise FactsError("empty input, not a WebAssembly binary", 0)
        if data[:4] != _MAGIC[: len(data)]:
            raise FactsError("not a WebAssembly binary (bad magic)", 0)
        if len(data) < 8:
            raise FactsError(f"truncated header at offset 0x{len(data):x}", len(data))
        version = data[4:8]
        if version != _CORE_VERSION:
            if version[2:4] == b"\x01\x00":
                raise FactsError("a WebAssembly component, not a core module", 4, component=True)
            num = int.from_bytes(version, "little")
            raise FactsError(f"unsupported WebAssembly version 0x{num:x} at offset 0x4", 4)

        r = _Reader(data, 8, len(data), "section header")
        last_order = -1
        seen: set[int] = set()
        sections = 0
        while r.pos < r.end:
            sections += 1
            if not sections % _TICK:  # (3,000,000 empty custom sections: 19 s, round 149)
                self.late()
            header_at = r.pos
            sid = r.byte()
            size = r.uleb()
            body_at = r.pos
            label = f"section {sid}"
            if size > r.end - body_at:
                raise FactsError(
                    f"truncated {label} at offset 0x{header_at:x} "
                    f"(declares {size} bytes, {r.end - body_at} remain)",
                    header_at,
                )
            sr = _Reader(data, body_at, body_at + size, label)
            if sid == 0:
                self.custom_section(sr, size)
            elif sid in _SECTION_ORDER:
                if sid in seen:
                    raise FactsError(f"duplicate {label} at offset 0x{header_at:x}", header_at)
                order = _SECTION_ORDER[sid]
                if order < last_order:
                    raise FactsError(f"{label} out of order at offset 0x{header_at:x}", header_at)
                seen.add(sid)
                last_order = order
                getattr(self, "section_" + _SECTION_NAMES[sid].replace(" ", "_"))(sr)
                if sr.pos != sr.end:
                    raise FactsError(
                        f"{label} size mismatch at offset 0x{sr.pos:x} "
                        f"({sr.end - sr.pos} bytes left over)",
                        sr.pos,
                    )
            else:
                self.features.add("unknown")  # a section this reader does not know: skip it
            r.pos = body_at + size

        if self.code_count is None and self.defined_functions:
            raise FactsError(
                f"missing code section: the function section declares {self.defined_functions} "
                f"functions (end of module at offset 0x{len(data):x})",
                len(data),
            )
        if self.data_count is not None and self.data_count != len(self.data_segments):
            at = self.data_count_at
            raise FactsError(
                f"data count {self.data_count} at offset 0x{at:x} does not match "
                f"the {len(self.data_segments)} data segments",
                at,
            )
        if len(self.memories) > 1:
            self.features.add("multi-memory")
        if len(self.tables) > 1:
            self.features.add("reference-types")

    def custom_section(self, r: _Reader, size: int) -> None:
        name = r.name()
        self.custom.append(CustomSection(name, size))
        if name == "name":
            self.has_name = True
        elif name.startswith(".debug"):
            self.has_debug = True
        elif name == "producers" and not self.producers:
            # Custom sections are not validated by runtimes, so a malformed producers section
            # does not make the module invalid: ignore it rather than fail.
            try:
                self.producers = _parse_producers(r, self.items)
            except FactsError:
                self.producers = {}

    def section_type(self, r: _Reader) -> None:
        for _ in self.items(self.counted(r, "types", len(self.all_types))):
            at = r.pos
            b = r.byte()
            if b == 0x4E:  # rec group
                self.features.add("gc")
                group_at = r.pos
                group = r.count("recursive type")
                self.room(r, "types", len(self.all_types) + group, group_at)
                for _ in self.items(group):
                    self.all_types.append(self.subtype(r))
            else:
                r.pos = at
                self.all_types.append(self.subtype(r))

    def section_import(self, r: _Reader) -> None:
        for _ in self.items(self.counted(r, "imports", 0, 4)):
            module = r.name()
            name = r.name()
            at = r.pos
            kind_byte = r.byte()
            kind = _EXTERN_KINDS.get(kind_byte)
            if kind in _IMPORTED_COUNTS:  # (one more of its kind)
                kinds, have = _IMPORTED_COUNTS[kind]
                self.room(r, kinds, len(getattr(self, have)) + 1, at)
            if kind == "func":
                tidx = r.uleb()
                self.func_type_idx.append(tidx)
                self.imports.append(Import(module, name, kind, type=self.type_at(tidx)))
            elif kind == "table":
                elem, lim = self.tabletype(r)
                self.tables.append(Table(len(self.tables), lim, elem, True))
                self.imports.append(Import(module, name, kind, limits=lim, elem=elem))
            elif kind == "memory":
                lim = self.limits(r, "memory")
                self.memories.append(Memory(len(self.memories), lim, True))
                self.imports.append(Import(module, name, kind, limits=lim))
            elif kind == "global":
                t, mut = self.globaltype(r)
                if mut:
                    self.features.add("mutable-globals")
                self.globals.append(Global(len(self.globals), t, mut, True))
                self.imports.append(Import(module, name, kind, global_type=t, mutable=mut))
            elif kind == "tag":
                tidx = self.tagtype(r)
                self.imports.append(Import(module, name, kind, type=self.type_at(tidx)))
            else:
                raise r.error(f"unknown import kind 0x{kind_byte:02x}", at)

    def tagtype(self, r: _Reader) -> int:
        self.features.add("exceptions")
        self.gc_heap = True  # (wasmtime keeps thrown exceptions on the GC heap too)
        at = r.pos
        if r.byte() != 0:
            raise r.error("invalid tag attribute", at)
        tidx = r.uleb()
        self.tag_type_idx.append(tidx)
        return tidx

    def section_function(self, r: _Reader) -> None:
        n = self.counted(r, "functions", len(self.func_type_idx))
        for _ in self.items(n):
            self.func_type_idx.append(r.uleb())
        self.defined_functions = n

    def section_table(self, r: _Reader) -> None:
        for _ in self.items(self.counted(r, "tables", len(self.tables), 3)):
            init = r.pos < r.end and r.data[r.pos] == 0x40
            if init:  # table type with an explicit initialiser (function-references)
                r.pos += 1
                at = r.pos
                if r.byte() != 0:
                    raise r.error("invalid table encoding", at)
                self.features.add("function-references")
            elem, lim = self.tabletype(r)
            if init:
                self.const_expr(r)
            self.tables.append(Table(len(self.tables), lim, elem, False))

    def section_memory(self, r: _Reader) -> None:
        for _ in self.items(self.counted(r, "memories", len(self.memories), 2)):
            self.memories.append(Memory(len(self.memories), self.limits(r, "memory"), False))

    def section_tag(self, r: _Reader) -> None:
        self.features.add("exceptions")
        for _ in self.items(self.counted(r, "tags", len(self.tag_type_idx), 2)):
            self.tagtype(r)

    def section_global(self, r: _Reader) -> None:
        for _ in self.items(self.counted(r, "globals", len(self.globals), 3)):
            t, mut = self.globaltype(r)
            self.const_expr(r)
            self.globals.append(Global(len(self.globals), t, mut, False))

    def section_export(self, r: _Reader) -> None:
        for _ in self.items(self.counted(r, "exports", 0, 3)):
            name = r.name()
            at = r.pos
            kind_byte = r.byte()
            kind = _EXTERN_KINDS.get(kind_byte)
            if kind is None:
                raise r.error(f"unknown export kind 0x{kind_byte:02x}", at)
            idx = r.uleb()
            ftype = None
            if kind == "func":
                ftype = self.func_type(idx)
            elif kind == "tag" and idx < len(self.tag_type_idx):
                ftype = self.type_at(self.tag_type_idx[idx])
            elif kind == "global" and idx < len(self.globals) and self.globals[idx].mutable:
                self.features.add("mutable-globals")
            self.exports.append(Export(name, kind, idx, ftype))

    def section_start(self, r: _Reader) -> None:
        self.start = r.uleb()

    def section_element(self, r: _Reader) -> None:
        for _ in self.items(self.counted(r, "element segments", 0, 2)):
            at = r.pos
            flags = r.uleb()
            if flags > 7:
                raise r.error(f"invalid element segment flags {flags}", at)
            passive_or_declarative = flags & 1
            explicit_table = flags & 2
            uses_exprs = flags & 4
            if flags in (1, 5):
                self.features.add("bulk-memory")  # passive
            elif flags in (3, 7):
                self.features.add("reference-types")  # declarative
            if not passive_or_declarative:
                if explicit_table and r.uleb():
                    self.features.add("reference-types")
                self.const_expr(r)
            if passive_or_declarative or explicit_table:
                at = r.pos
                if uses_exprs:
                    elem = self.valtype(r)
                    self.elem_types.add(elem)
                    if elem != "funcref":  # funcref elements are MVP
                        self.note_valtype(elem)
                elif r.byte() != 0:
                    raise r.error("invalid element kind", at)
            if uses_exprs:
                items = r.count("element expression")
                for _ in self.items(items):
                    self.const_expr(r)
            else:
                items = r.count("element function index")
                skip_ulebs(r, items)
            self.element_segments += 1
            if flags in (1, 5):
                self.passive_element_segments += 1
                self.passive_element_items += items

    def section_data_count(self, r: _Reader) -> None:
        self.features.add("bulk-memory")
        self.data_count_at = r.pos
        self.data_count = r.uleb()

    def section_code(self, r: _Reader) -> None:
        n = r.count("function body", 2)
        if n != self.defined_functions:
            raise r.error(
                f"code section has {n} bodies but the function section declares "
                f"{self.defined_functions}"
            )
        self.code_count = n
        for i in self.items(n):
            size_at = r.pos
            size = r.uleb()
            if size > r.end - r.pos:
                raise r.error(f"function body {i} runs past the end of the code section", size_at)
            body_end = r.pos + size
            what = f"function body {i}"
            if not self.weigh:  # (read_interface, on run's start-up path: bodies skipped)
                r.pos = body_end
                continue
            br = _Reader(r.data, r.pos, body_end, what)
            ftype = self.func_type(len(self.func_type_idx) - n + i)
            locals_ = len(ftype.params) if ftype is not None else 0
            try:
                # (on the clock: 124 MB of local declarations, read with a plain range,
                # ran 38 s past a 1 s bound, red team 154)
                for _ in self.items(br.count("local declaration", 2)):
                    locals_ += br.uleb()
                    self.note_valtype(self.valtype(br))
            except _UnknownEncoding:
                self.features.add("unknown")  # a local type this reader does not know
            else:
                if self.scan_code:
                    self.scan(br.pos, body_end, False, what)
            self.compile_weight += locals_ * size
            r.pos = body_end

    def section_data(self, r: _Reader) -> None:
        for _ in self.items(self.counted(r, "data segments", 0, 2)):
            at = r.pos
            flags = r.uleb()
            if flags == 0:
                self.const_expr(r)
            elif flags == 1:
                self.features.add("bulk-memory")
                self.passive_data_segments += 1
            elif flags == 2:
                if r.uleb():
                    self.features.add("multi-memory")
                self.const_expr(r)
            else:
                raise r.error(f"invalid data segment flags {flags}", at)
            size_at = r.pos
            size = r.uleb()
            if size > r.end - r.pos:
                raise r.error(f"data segment of {size} bytes runs past the end", size_at)
            r.pos += size
            self.data_segments.append(size)

    def facts(self, hashed: bool = True) -> ModuleFacts:
        data = self.data
        sha256 = ""
        if hashed:
            import hashlib  # not at module level: read_interface() is on run's start-up path

            sha256 = hashlib.sha256(data).hexdigest()
        return ModuleFacts(
            size=len(data),
            sha256=sha256,
            types=tuple(t for t in self.all_types if t is not None),
            imports=tuple(self.imports),
            exports=tuple(self.exports),
            memories=tuple(self.memories),
            tables=tuple(self.tables),
            globals=tuple(self.globals),
            functions=self.defined_functions,
            start=self.start,
            data_segments=tuple(self.data_segments),
            element_segments=self.element_segments,
            custom_sections=tuple(self.custom),
            producers=self.producers,
            has_name_section=self.has_name,
            has_debug_info=self.has_debug,
            features=frozenset(self.features),
        )


def _parse_producers(r: _Reader, items: Any = range) -> dict[str, list[str]]:
    """``items``: range, or the parser's (the clock looked at: 5,000,000 values were
    read for 9 s past a 1 s timeout, red team 149)."""
    out: dict[str, list[str]] = {}
    for _ in items(r.count("producers field", 2)):
        fname = r.name()
        values = out.setdefault(fname, [])
        for _ in items(r.count("producers value", 2)):
            name = r.name()
            version = r.name()
            values.append(f"{name} {version}" if version else name)
    if r.pos != r.end:
        raise r.error("producers section size mismatch")
    return out


_CONTINUED = bytes(range(0x80, 0x100))  # LEB128 bytes that another follows
_SKIP_CHUNK = 1 << 16


def skip_ulebs(r: _Reader, count: int) -> None:
    """Move ``r`` past ``count`` unsigned LEB128 numbers (an element segment's function
    indexes, whose values no fact needs): counted by their last bytes a chunk at a time
    (bytes.translate), not decoded one by one in Python (100,000,000 of them took 65 s:
    red team 148). One of more than 5 bytes, too long for a u32, is refused."""
    import re

    data, pos, end = r.data, r.pos, r.end
    while count > 0:
        stop = min(end, pos + _SKIP_CHUNK)
        if stop <= pos:
            raise r.truncated()
        chunk = data[pos:stop]
        last = len(chunk.translate(None, _CONTINUED))  # (the bytes that end a number)
        if last >= count:  # (the count ends in this chunk)
            for i, byte in enumerate(chunk):
                if byte < 0x80:
                    count -= 1
                    if not count:
                        stop = pos + i + 1
                        break
            chunk = chunk[: stop - pos]
        else:
            count -= last
        if re.search(rb"[\x80-\xff]{5}", chunk):
            raise r.error("integer representation too long", pos)
        pos = stop
    r.pos = pos


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _parse(data: bytes, scan_code: bool, weigh: bool = False) -> _Parser:
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"read_facts() needs bytes, not {type(data).__name__}")
    parser = _Parser(data, scan_code, weigh)
    try:
        parser.parse()
    except FactsError:
        raise
    except (IndexError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        # Defence in depth: the reader is meant never to get here.
        raise FactsError(f"malformed module (internal {type(exc).__name__})") from None
    return parser


def read_facts(data: bytes, scan_code: bool = True, hashed: bool = True) -> ModuleFacts:
    """Reads the facts of a binary WebAssembly core module.

    Raises :class:`FactsError` for anything that is not a well-formed core module (with
    ``.component`` set for a WebAssembly component). ``scan_code=False`` skips decoding
    function bodies: the interface (types, imports, exports, memories...) is complete and
    cheap to read, but ``features`` then only reflects what the other sections show.
    ``hashed=False`` leaves ``sha256`` empty (a component's run reads the core modules
    inside it for their memories: hashing them cost that run 2 ms of importing hashlib).
    """
    return _parse(data, scan_code).facts(hashed)


def read_facts_weighed(data: bytes) -> tuple:
    """``(read_facts(data), compile_weight(data))`` from one parse (``compile -o``)."""
    parser = _parse(data, scan_code=True)
    return parser.facts(), parser.compile_weight


def compile_weight(data: bytes) -> int:
    """Locals x body bytes summed over the module's functions, params counted as locals
    (backends.compiling.HEAVY): read without decoding any instruction."""
    return _parse(data, scan_code=False, weigh=True).compile_weight


def read_features(data: bytes) -> frozenset:
    """Just the wasm proposals the module uses (``read_facts(data).features``), without
    the digest and records: backend selection needs this on every run."""
    return frozenset(_parse(data, scan_code=True).features)


class CodeDetails(namedtuple("CodeDetails", "features simd_ops elem_types")):
    # features: frozenset  as read_features
    # simd_ops: frozenset  of 0xfd sub-opcodes the code uses
    # elem_types: frozenset  of element segment types given explicitly ("externref"...)
    __slots__ = ()


def read_code_details(data: bytes) -> CodeDetails:
    """The features and the finer facts a backend with gaps inside a proposal needs
    (wasmer: SIMD operators cranelift lacks, externref element segments)."""
    parser = _parse(data, scan_code=True)
    return CodeDetails(
        frozenset(parser.features), frozenset(parser.simd_ops), frozenset(parser.elem_types)
    )


def read_interface(data: bytes) -> Interface:
    """Just the imports and exports (with types), as cheaply as possible.

    ``wasmsbx run`` types its arguments from this rather than from the runtime: asking
    wasmtime-py for the type of a function with a v128 parameter aborts the process.
    """
    parser = _parse(data, scan_code=False)
    return Interface(tuple(parser.imports), tuple(parser.exports))


def _looks_like_text(data: bytes) -> bool:
    """True if ``data`` starts, after whitespace and comments, with "(" (WAT text)."""
    i = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    n = len(data)
    while i < n:
        c = data[i]
        if c in b" \t\r\n":
            i += 1
        elif data.startswith(b";;", i):
            nl = data.find(b"\n", i)
            if nl < 0:
                return False
            i = nl + 1
        elif data.startswith(b"(;", i):
            depth = 0
            while i < n:
                if data.startswith(b"(;", i):
                    depth += 1
                    i += 2
                elif data.startswith(b";)", i):
                    depth -= 1
                    i += 2
                    if depth == 0:
                        break
                else:
                    i += 1
            if depth:
                return False
        else:
            return c == 0x28  # "("
    return False


def load_facts(path: Union[str, os.PathLike]) -> ModuleFacts:
    """Reads the facts of a module file, binary or WAT text (converted with wasmtime).

    Raises :class:`FactsError` for a malformed module or invalid WAT, and ``OSError`` if the
    file cannot be read.
    """
    from ..inputs import MODULE_MAX_BYTES, read_capped

    data = read_capped(path, MODULE_MAX_BYTES)  # OSError (TooLarge) past the cap
    if not data.startswith(_MAGIC) and (
        str(path).lower().endswith(".wat") or _looks_like_text(data)
    ):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise FactsError(f"invalid WAT in {path}: not UTF-8 text") from None
        try:
            from wasmtime import wat2wasm
        except ImportError:
            raise FactsError(f"cannot convert WAT in {path}: wasmtime is not installed") from None
        try:
            data = bytes(wat2wasm(text))
        except Exception as exc:  # wasmtime.WasmtimeError and friends
            lines = str(exc).strip().splitlines()
            first = lines[0].strip() if lines else type(exc).__name__
            raise FactsError(f"invalid WAT in {path}: {first}") from None
    return read_facts(data)
