"""The memory a component holds, for ``--stats``: a hidden probe added at compile time.

wasmtime-py (and the C API under it) gives the host no way to reach a component's core
memories: only the component's own exports are visible, and a component cannot export a
core memory. So ``instrument`` rewrites the component before it is compiled, as
``export_memories`` does for a core module:

1. every core module the component instantiates gets its defined memories exported
   under hidden names (``backends.limits.export_memories``, unchanged);
2. appended at the end of the component: a small core module that imports those memories
   and exports ``bytes`` (the sum of their ``memory.size``, in bytes), an instance of it
   fed with the memories aliased out of every core instance, and that function lifted
   and exported from the component as ``NAME`` (``func() -> u64``).

``runtime.ComponentInstance.usage`` calls it after each call (memories only grow, so the
final size is the peak), and ``runtime.exports`` hides it from every listing. The probe
adds one core instance (``Layout.probed``) and no memory.

What stays out (``instrument`` returns None, and ``--stats`` shows no memory figure): a
component that already uses ``NAME`` or a hidden memory export name anywhere, one
whose memories sit in nested components or in core modules it does not define itself,
one using a canonical built-in beyond lift, lower and the resource ones (the async
proposals), a memory with a custom page size. After a trap (or ``exit`` with a nonzero
code, which is a trap) the instance refuses every call, the probe's too: no figure then
either.

Hand-written rather than a library: no Python library edits component binaries, and the
rewrite only appends sections whose indices it counts here.
"""

from __future__ import annotations

from typing import Optional

from ..backends.limits import HIDDEN_EXPORT, export_memories
from ..wasm.facts import FactsError, _leb, read_facts

NAME = "wasmsbx-memory-bytes"  # the hidden export: func() -> u64
_FUNC = "bytes"  # the probe module's export
_U64 = 0x77  # primvaltype u64


class _Unsupported(Exception):
    """The component holds something this rewrite does not follow: leave it as it is."""


def ours(wasm: bytes) -> bool:
    """Whether an export ``NAME`` of the component compiled from ``wasm`` is the probe:
    ``wasm`` does not hold the name anywhere, so the guest cannot have exported it."""
    return NAME.encode() not in wasm


def instrument(wasm: bytes) -> Optional[bytes]:
    """``wasm`` with the memory probe, or None when it cannot be added (see above)."""
    if not ours(wasm) or HIDDEN_EXPORT.encode() in wasm:
        # The hidden names too: an alias naming one (invalid as written) would become
        # valid once the rewrite adds that export, so the component would run here only.
        return None
    try:
        plan = _Plan(bytes(wasm))
    except (_Unsupported, IndexError, FactsError, ValueError):
        return None
    if not plan.memories:
        return None
    return plan.rewrite(wasm)


# ------------------------------------------------------------------- reading the component

_CORE_MODULE, _CORE_INSTANCE, _COMPONENT, _INSTANCE = 1, 2, 4, 5
_ALIAS, _TYPE, _CANON, _IMPORT, _EXPORT = 6, 7, 8, 10, 11
_SKIPPED = (0, 3, 9, 12)  # custom, core type, start, value: no index this rewrite uses
_CORE_FUNC, _CORE_MEMORY, _CORE_MODULE_SORT, _CORE_INSTANCE_SORT = 0x00, 0x02, 0x11, 0x12
_FUNC_SORT, _VALUE_SORT, _TYPE_SORT = 0x01, 0x02, 0x03


class _Plan:
    """One pass over the top-level sections: the index spaces' sizes at the end, the core
    modules, and the memories of every core instance."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.core_funcs = self.core_memories = 0
        self.types = self.funcs = 0
        self.modules: list = []  # per core module index: (offset, size) or None
        self.instances: list = []  # per core instance index: module index or None
        self.nested = False
        pos = 8
        while pos < len(data):
            section = data[pos]
            size, pos = _leb(data, pos + 1)
            end = pos + size
            if end > len(data):
                raise _Unsupported("truncated")
            self._section(section, pos, end)
            pos = end
        self.memories = self._memories()

    # ---------------------------------------------------------------- sections
    def _section(self, section: int, pos: int, end: int) -> None:
        d = self.data
        if section == _CORE_MODULE:
            self.modules.append((pos, end - pos))
        elif section == _CORE_INSTANCE:
            count, pos = _leb(d, pos)
            for _ in range(count):
                form, pos = d[pos], pos + 1
                if form == 0x00:
                    module, pos = _leb(d, pos)
                    args, pos = _leb(d, pos)
                    for _ in range(args):
                        pos = _name(d, pos)
                        if d[pos] != _CORE_INSTANCE_SORT:
                            raise _Unsupported("instantiate argument")
                        pos = _leb(d, pos + 1)[1]
                    self.instances.append(module)
                elif form == 0x01:
                    exports, pos = _leb(d, pos)
                    for _ in range(exports):
                        pos = _name(d, pos)
                        pos = _leb(d, pos + 1)[1]
                    self.instances.append(None)
                else:
                    raise _Unsupported("core instance form")
        elif section in (_COMPONENT, _INSTANCE):
            self.nested = True  # counted by binary.scan; checked in _memories
        elif section == _ALIAS:
            count, pos = _leb(d, pos)
            for _ in range(count):
                sort, pos = _sort(d, pos)
                target, pos = d[pos], pos + 1
                if target in (0x00, 0x01):
                    pos = _name(d, _leb(d, pos)[1])
                elif target == 0x02:
                    pos = _leb(d, _leb(d, pos)[1])[1]
                else:
                    raise _Unsupported("alias target")
                self._add(sort)
        elif section == _TYPE:
            self.types += _leb(d, pos)[0]
        elif section == _CANON:
            self._canon(pos)
        elif section == _IMPORT:
            count, pos = _leb(d, pos)
            for _ in range(count):
                pos = _extern_name(d, pos)
                sort, pos = _externdesc(d, pos)
                self._add(sort)
        elif section == _EXPORT:
            count, pos = _leb(d, pos)
            for _ in range(count):
                pos = _extern_name(d, pos)
                sort, pos = _sort(d, pos)
                pos = _leb(d, pos)[1]
                if d[pos] == 0x01:
                    pos = _externdesc(d, pos + 1)[1]
                elif d[pos] != 0x00:
                    raise _Unsupported("export type")
                else:
                    pos += 1
                self._add(sort)
        elif section not in _SKIPPED:
            raise _Unsupported(f"section {section}")

    def _canon(self, pos: int) -> None:
        d = self.data
        count, pos = _leb(d, pos)
        for _ in range(count):
            op, pos = d[pos], pos + 1
            if op in (0x00, 0x01):  # lift (core func, opts, type) / lower (func, opts)
                if d[pos] != 0x00:
                    raise _Unsupported("canon sort")
                pos = _opts(d, _leb(d, pos + 1)[1])
                if op == 0x00:
                    pos = _leb(d, pos)[1]
                    self.funcs += 1
                else:
                    self.core_funcs += 1
            elif op in (0x02, 0x03, 0x04):  # resource.new / drop / rep: a type index
                pos = _leb(d, pos)[1]
                self.core_funcs += 1
            else:  # the async built-ins: their encoding still moves
                raise _Unsupported(f"canon 0x{op:02x}")

    def _add(self, sort: tuple) -> None:
        """One more item in ``sort``'s index space (a core module this rewrite cannot read
        is recorded as None)."""
        core, kind = sort
        if core:
            if kind == _CORE_FUNC:
                self.core_funcs += 1
            elif kind == _CORE_MEMORY:
                self.core_memories += 1
            elif kind == _CORE_MODULE_SORT:
                self.modules.append(None)
            elif kind == _CORE_INSTANCE_SORT:
                self.instances.append(None)
        elif kind == _FUNC_SORT:
            self.funcs += 1
        elif kind == _TYPE_SORT:
            self.types += 1

    # ---------------------------------------------------------------- memories
    def _memories(self) -> list:
        """(core instance, hidden export name, limits) of every memory a core instance
        defines."""
        from . import binary

        out = []
        self.facts: dict = {}
        for instance, module in enumerate(self.instances):
            if module is None:
                continue
            if module >= len(self.modules) or self.modules[module] is None:
                raise _Unsupported("a core module the component does not define")
            facts = self._facts(module)
            for memory in facts.memories:
                if not memory.imported:
                    out.append((instance, HIDDEN_EXPORT + str(memory.index), memory.limits))
        # Memories made inside nested components are out of reach from here.
        if self.nested and len(binary.scan(self.data).memories) != len(out):
            raise _Unsupported("memories in nested components")
        return out

    def _facts(self, module: int):
        found = self.facts.get(module)
        if found is None:
            offset, size = self.modules[module]
            found = read_facts(self.data[offset : offset + size], False, hashed=False)
            if "unknown" in found.features:  # custom page sizes, among others
                raise _Unsupported("a memory this probe cannot import")
            if any(e.name.startswith(HIDDEN_EXPORT) for e in found.exports):
                raise _Unsupported("the reserved export names are taken")
            self.facts[module] = found
        return found

    # ---------------------------------------------------------------- rewriting
    def rewrite(self, wasm: bytes) -> bytes:
        used = sorted({self.instances[i] for i, _, _ in self.memories})
        out = bytearray(wasm[:8])
        pos = 8
        for module in used:  # each module section, its memories exported
            offset, size = self.modules[module]
            out += wasm[pos : _section_start(wasm, offset)]
            body = export_memories(wasm[offset : offset + size]).wasm
            out += bytes([_CORE_MODULE]) + _uleb(len(body)) + body
            pos = offset + size
        out += wasm[pos:]
        out += self._appended()
        return bytes(out)

    def _appended(self) -> bytes:
        n = len(self.memories)
        probe_module = len(self.modules)
        first_memory = self.core_memories
        feed = len(self.instances)  # the instance of aliased memories, then the probe's
        probe = feed + 1
        sections = [
            _section(_CORE_MODULE, _probe_module([lim for _, _, lim in self.memories])),
            _section(
                _ALIAS,
                _vec(
                    bytes([0x00, _CORE_MEMORY, 0x01]) + _uleb(instance) + _str(name)
                    for instance, name, _ in self.memories
                ),
            ),
            _section(
                _CORE_INSTANCE,
                _vec(
                    [
                        b"\x01"
                        + _vec(
                            _str(str(k)) + bytes([_CORE_MEMORY]) + _uleb(first_memory + k)
                            for k in range(n)
                        ),
                        b"\x00"
                        + _uleb(probe_module)
                        + _vec([_str("m") + bytes([_CORE_INSTANCE_SORT]) + _uleb(feed)]),
                    ]
                ),
            ),
            _section(_ALIAS, _vec([bytes([0x00, _CORE_FUNC, 0x01]) + _uleb(probe) + _str(_FUNC)])),
            _section(_TYPE, _vec([b"\x40\x00\x00" + bytes([_U64])])),  # func() -> u64
            _section(
                _CANON,
                _vec([b"\x00\x00" + _uleb(self.core_funcs) + b"\x00" + _uleb(self.types)]),
            ),
            _section(
                _EXPORT,
                _vec([b"\x00" + _str(NAME) + bytes([_FUNC_SORT]) + _uleb(self.funcs) + b"\x00"]),
            ),
        ]
        return b"".join(sections)


def _probe_module(limits: list) -> bytes:
    """A core module importing ``limits``' memories as ``m``/``0``... and exporting
    ``bytes``: the sum of their sizes in bytes (i64)."""
    imports = []
    body = bytearray(b"\x00")  # no locals
    for k, lim in enumerate(limits):
        flags = (0x02 if lim.shared else 0) | (0x04 if lim.memory64 else 0)
        desc = bytes([flags | (0x01 if lim.shared else 0)]) + _uleb(0)
        if lim.shared:
            desc += _uleb(lim.max)
        imports.append(_str("m") + _str(str(k)) + b"\x02" + desc)
        body += b"\x3f" + _uleb(k)  # memory.size k
        if not lim.memory64:
            body += b"\xad"  # i64.extend_i32_u
        body += b"\x42\x10\x86"  # i64.const 16; i64.shl (64 KiB pages)
        if k:
            body += b"\x7c"  # i64.add
    body += b"\x0b"
    return b"".join(
        [
            b"\0asm\x01\x00\x00\x00",
            _section(1, _vec([b"\x60\x00\x01\x7e"])),  # type 0: () -> i64
            _section(2, _vec(imports)),
            _section(3, _vec([b"\x00"])),
            _section(7, _vec([_str(_FUNC) + b"\x00\x00"])),
            _section(10, _vec([_uleb(len(body)) + bytes(body)])),
        ]
    )


# ------------------------------------------------------------------- encoding helpers


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _uleb(len(raw)) + raw


def _vec(items) -> bytes:
    items = list(items)
    return _uleb(len(items)) + b"".join(items)


def _section(section: int, body: bytes) -> bytes:
    return bytes([section]) + _uleb(len(body)) + body


def _section_start(wasm: bytes, body_offset: int) -> int:
    """Where the section whose body starts at ``body_offset`` starts (its id byte): the
    size LEB before the body is walked back over."""
    pos = body_offset - 1  # the last byte of the size LEB (no continuation bit)
    while wasm[pos - 1] & 0x80:
        pos -= 1
    return pos - 1


def _name(d: bytes, pos: int) -> int:
    length, pos = _leb(d, pos)
    return pos + length


def _extern_name(d: bytes, pos: int) -> int:
    """An import or export name: 0x00 or 0x01, then the name."""
    if d[pos] not in (0x00, 0x01):
        raise _Unsupported("extern name form")
    return _name(d, pos + 1)


def _sort(d: bytes, pos: int) -> tuple:
    """((core?, sort byte), next position)."""
    if d[pos] == 0x00:
        return (True, d[pos + 1]), pos + 2
    return (False, d[pos]), pos + 1


def _externdesc(d: bytes, pos: int) -> tuple:
    kind = d[pos]
    if kind == 0x00:
        if d[pos + 1] != _CORE_MODULE_SORT:
            raise _Unsupported("core extern")
        return (True, _CORE_MODULE_SORT), _leb(d, pos + 2)[1]
    if kind == _TYPE_SORT:
        bound = d[pos + 1]
        if bound == 0x00:
            return (False, kind), _leb(d, pos + 2)[1]
        if bound == 0x01:
            return (False, kind), pos + 2
        raise _Unsupported("type bound")
    if kind in (0x01, 0x04, 0x05):
        return (False, kind), _leb(d, pos + 1)[1]
    raise _Unsupported(f"extern kind 0x{kind:02x}")  # values: behind a feature flag


def _opts(d: bytes, pos: int) -> int:
    count, pos = _leb(d, pos)
    for _ in range(count):
        opt, pos = d[pos], pos + 1
        if opt in (0x03, 0x04, 0x05, 0x07):
            pos = _leb(d, pos)[1]
        elif opt not in (0x00, 0x01, 0x02, 0x06):
            raise _Unsupported(f"canon option 0x{opt:02x}")
    return pos
