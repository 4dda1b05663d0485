"""Instruction decoding for wasmsbx.wasm.facts: opcode tables and the function-body scanner.

Split from facts.py so that reading a module's interface (``read_interface``, on the
start-up path of ``wasmsbx run``) does not pay for loading the opcode decoder.
"""

from __future__ import annotations

from typing import Any, Optional

from .reader import _VALTYPE_BYTES, FactsError, _leb, _Reader, _sleb, _UnknownEncoding

# Immediate kinds of single-byte opcodes.
_K_NONE = 0
_K_LEB = 1  # one LEB128 (index, label, i32/i64 const)
_K_BLOCK = 3  # block type
_K_BR_TABLE = 4
_K_MEMARG = 5
_K_F32 = 6
_K_F64 = 7
_K_CALL_INDIRECT = 8  # type index, table index
_K_MEMIDX = 9  # memory.size / memory.grow
_K_SELECT_T = 10
_K_HEAPTYPE = 11
_K_TRY_TABLE = 12
_K_PREFIX_FB = 13
_K_PREFIX_FC = 14
_K_PREFIX_FD = 15
_K_PREFIX_FE = 16
_K_UNKNOWN = 17


def _build_opcode_tables() -> tuple[tuple[int, ...], tuple[Optional[tuple[str, ...]], ...]]:
    imm = [_K_UNKNOWN] * 256
    feat: list[Optional[tuple[str, ...]]] = [None] * 256

    def put(ops: Any, kind: int, *features: str) -> None:
        for op in ops if isinstance(ops, range) else (ops,):
            imm[op] = kind
            feat[op] = features or None

    put(0x00, _K_NONE)  # unreachable
    put(0x01, _K_NONE)  # nop
    put(range(0x02, 0x05), _K_BLOCK)  # block loop if
    put(0x05, _K_NONE)  # else
    put(0x06, _K_BLOCK, "exceptions")  # try (legacy)
    put(0x07, _K_LEB, "exceptions")  # catch (legacy)
    put(0x08, _K_LEB, "exceptions")  # throw
    put(0x09, _K_LEB, "exceptions")  # rethrow (legacy)
    put(0x0A, _K_NONE, "exceptions")  # throw_ref
    put(0x0B, _K_NONE)  # end
    put(0x0C, _K_LEB)  # br
    put(0x0D, _K_LEB)  # br_if
    put(0x0E, _K_BR_TABLE)
    put(0x0F, _K_NONE)  # return
    put(0x10, _K_LEB)  # call
    put(0x11, _K_CALL_INDIRECT)
    put(0x12, _K_LEB, "tail-call")  # return_call
    put(0x13, _K_CALL_INDIRECT, "tail-call")  # return_call_indirect
    put(0x14, _K_LEB, "function-references")  # call_ref
    put(0x15, _K_LEB, "function-references", "tail-call")  # return_call_ref
    put(0x18, _K_LEB, "exceptions")  # delegate (legacy)
    put(0x19, _K_NONE, "exceptions")  # catch_all (legacy)
    put(0x1A, _K_NONE)  # drop
    put(0x1B, _K_NONE)  # select
    put(0x1C, _K_SELECT_T, "reference-types")  # select t*
    put(0x1F, _K_TRY_TABLE, "exceptions")
    put(range(0x20, 0x25), _K_LEB)  # local.get/set/tee, global.get/set
    put(0x25, _K_LEB, "reference-types")  # table.get
    put(0x26, _K_LEB, "reference-types")  # table.set
    put(range(0x28, 0x3F), _K_MEMARG)  # loads and stores
    put(range(0x3F, 0x41), _K_MEMIDX)  # memory.size, memory.grow
    put(0x41, _K_LEB)  # i32.const
    put(0x42, _K_LEB)  # i64.const
    put(0x43, _K_F32)
    put(0x44, _K_F64)
    put(range(0x45, 0xC0), _K_NONE)  # numeric
    put(range(0xC0, 0xC5), _K_NONE, "sign-extension")
    put(0xD0, _K_HEAPTYPE, "reference-types")  # ref.null
    put(0xD1, _K_NONE, "reference-types")  # ref.is_null
    put(0xD2, _K_LEB, "reference-types")  # ref.func
    put(0xD3, _K_NONE, "function-references")  # ref.as_non_null
    put(0xD4, _K_LEB, "function-references")  # br_on_null
    put(0xD5, _K_NONE, "gc")  # ref.eq
    put(0xD6, _K_LEB, "function-references")  # br_on_non_null
    put(0xFB, _K_PREFIX_FB, "gc")
    put(0xFC, _K_PREFIX_FC)
    put(0xFD, _K_PREFIX_FD, "simd")
    put(0xFE, _K_PREFIX_FE, "threads")
    return tuple(imm), tuple(feat)


_TABLES: list = []


def _opcode_tables() -> tuple:
    """Built on first use: reading a module's interface (scan_code=False) never needs them."""
    if not _TABLES:
        _TABLES.extend(_build_opcode_tables())
    return _TABLES[0], _TABLES[1]


# i32/i64 add, sub, mul: the extended-const proposal allows these in constant expressions.
_EXT_CONST_OPS = frozenset({0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E})

# 0xFB (GC) sub-opcodes -> immediates: "t" type index, "x" any other LEB index, "h" heap type,
# "c" br_on_cast(_fail) immediates.
_GC_OPS: dict[int, str] = {
    0: "t",  # struct.new
    1: "t",  # struct.new_default
    2: "tx",  # struct.get
    3: "tx",  # struct.get_s
    4: "tx",  # struct.get_u
    5: "tx",  # struct.set
    6: "t",  # array.new
    7: "t",  # array.new_default
    8: "tx",  # array.new_fixed
    9: "tx",  # array.new_data
    10: "tx",  # array.new_elem
    11: "t",  # array.get
    12: "t",  # array.get_s
    13: "t",  # array.get_u
    14: "t",  # array.set
    15: "",  # array.len
    16: "t",  # array.fill
    17: "tt",  # array.copy
    18: "tx",  # array.init_data
    19: "tx",  # array.init_elem
    20: "h",  # ref.test
    21: "h",  # ref.test null
    22: "h",  # ref.cast
    23: "h",  # ref.cast null
    24: "c",  # br_on_cast
    25: "c",  # br_on_cast_fail
    26: "",  # any.convert_extern
    27: "",  # extern.convert_any
    28: "",  # ref.i31
    29: "",  # i31.get_s
    30: "",  # i31.get_u
}

# 0xFC (misc) sub-opcodes -> (number of LEB immediates, feature).
_MISC_OPS: dict[int, tuple[int, str]] = {
    **{i: (0, "saturating-float-to-int") for i in range(8)},
    8: (2, "bulk-memory"),  # memory.init data mem
    9: (1, "bulk-memory"),  # data.drop
    10: (2, "bulk-memory"),  # memory.copy mem mem
    11: (1, "bulk-memory"),  # memory.fill mem
    12: (2, "bulk-memory"),  # table.init elem table
    13: (1, "bulk-memory"),  # elem.drop
    14: (2, "bulk-memory"),  # table.copy table table
    15: (1, "reference-types"),  # table.grow
    16: (1, "reference-types"),  # table.size
    17: (1, "reference-types"),  # table.fill
    19: (0, "unknown"),  # i64.add128 (wide arithmetic: no capability name for it)
    20: (0, "unknown"),  # i64.sub128
    21: (0, "unknown"),  # i64.mul_wide_s
    22: (0, "unknown"),  # i64.mul_wide_u
}


def _simd_kind(sub: int) -> Optional[str]:
    """Immediates of a 0xFD sub-opcode: "" none, "m" memarg, "ml" memarg+lane, "l" lane,
    "16" 16 bytes; None if unknown."""
    if sub <= 11 or sub in (0x5C, 0x5D):
        return "m"
    if sub in (12, 13):  # v128.const, i8x16.shuffle
        return "16"
    if 21 <= sub <= 34:  # extract/replace lane
        return "l"
    if 0x54 <= sub <= 0x5B:  # load/store lane
        return "ml"
    if sub <= 0xFF or 0x100 <= sub <= 0x113:  # plain ops (0x100.. are relaxed SIMD)
        return ""
    return None


def _atomic_kind(sub: int) -> Optional[str]:
    if sub <= 2 or 0x10 <= sub <= 0x4E:
        return "m"
    if sub == 3:  # atomic.fence
        return "b"
    return None


# A run of the instructions most code is made of, none of which implies a feature: those
# without immediates (numeric ops, end, drop...), with one LEB128 (local.get, call, br_if,
# i32.const...), loads and stores with a one-byte alignment (no memory index),
# call_indirect of table 0, memory.size/grow of memory 0, float constants, and blocks of
# no or one numeric type. CodeScanner.scan lets ``re`` skip such runs (in C, ~5x faster
# than decoding them here: graphviz.wasm's 0.8 MB of code in 25 ms instead of 125 ms) and
# decodes the rest itself, so every feature is still seen. An instruction the pattern does
# not match whole (a long alignment, a table index above 0, immediates past the window)
# is decoded by the loop as before: the pattern only ever skips what the loop would skip.
_LEB = rb"[\x80-\xff]*[\x00-\x7f]"
_LEB_OPS = rb"[\x20-\x24\x41\x42\x0c\x0d\x10]"  # local.*, global.*, i32/i64.const, call, br(_if)
_SIMPLE = (
    _LEB_OPS + rb"[\x00-\x7f]",  # the same with a one-byte immediate, the most common
    rb"[\x45-\xbf\x00\x01\x05\x0b\x0f\x1a\x1b]",  # no immediates
    _LEB_OPS + _LEB,
    rb"[\x28-\x3e][\x00-\x3f]" + _LEB,  # memarg: align (memory 0), offset
    rb"[\x02-\x04][\x40\x7c-\x7f]",  # block, loop, if: [] or a numeric type
    rb"\x11" + _LEB + rb"\x00",  # call_indirect type, table 0
    rb"[\x3f\x40]\x00",  # memory.size, memory.grow of memory 0
    rb"\x43[\x00-\xff]{4}",  # f32.const
    rb"\x44[\x00-\xff]{8}",  # f64.const
)
_SIMPLE_RUN = rb"(?:" + rb"|".join(_SIMPLE) + rb")*"
# A plain ``*`` makes re keep backtracking state for every repetition of the group (~280
# bytes each: 2.8 GB for a 40 MB body of local.get), so a match covers at most _WINDOW
# bytes; Python 3.11's possessive ``*+`` keeps none (and is ~20% faster).
_WINDOW = 4096
_TICK = 65536  # instructions decoded between looks at the clock
_RUNS: list = []


def _simple_run() -> Any:
    """The compiled pattern's ``match`` (compiled on first use, like the opcode tables)."""
    if not _RUNS:
        import re
        import sys

        possessive = b"+" if sys.version_info >= (3, 11) else b""
        _RUNS.append(re.compile(_SIMPLE_RUN + possessive).match)
    return _RUNS[0]


class CodeScanner:
    """Scans instruction streams for a facts._Parser, recording features on it."""

    def __init__(self, parser: Any) -> None:
        self.data = parser.data
        self.features = parser.features
        self.simd_ops = parser.simd_ops
        self.valtype = parser.valtype
        self.note_valtype = parser.note_valtype
        self.heaptype = parser.heaptype
        self.type_at = parser.type_at
        self.late = parser.late  # (the clock: wasm.source.bounded_reads)
        self.items = parser.items  # (range(n) with the clock looked at: facts._Parser)

    def scan(self, pos: int, end: int, const: bool, what: str) -> int:
        """Decodes instructions in ``data[pos:end]``, recording the features they use.

        For a constant expression, stops after its ``end`` and returns the position after it.
        For a function body, returns ``end`` (an unknown opcode stops the scan early).
        """
        data = self.data
        feats = self.features
        imm, featmap = _opcode_tables()
        skip = None if const else _simple_run()  # constant expressions are a few bytes
        op_at = pos
        late, budget = self.late, _TICK  # (the clock, every _TICK instructions)
        try:
            while pos < end:
                budget -= 1
                if not budget:  # (2,000,000 instructions in one constant expression
                    budget = _TICK  # read for 1.5 s past a 1 s timeout: round 149)
                    late()
                if skip is not None:
                    pos = skip(data, pos, min(end, pos + _WINDOW)).end()
                    if pos == end:
                        break
                op_at = pos
                op = data[pos]
                pos += 1
                f = featmap[op]
                if f is not None:
                    feats.update(f)
                k = imm[op]
                if k == _K_NONE:
                    if const:
                        if op == 0x0B:
                            return pos
                        if op in _EXT_CONST_OPS:
                            feats.add("extended-const")
                elif k == _K_LEB:
                    pos = _leb(data, pos)[1] if data[pos] & 0x80 else pos + 1
                elif k == _K_MEMARG:
                    pos = self._memarg(pos)
                elif k == _K_BLOCK:
                    pos = self._blocktype(pos, end)
                elif k == _K_CALL_INDIRECT:
                    pos = _leb(data, pos)[1] if data[pos] & 0x80 else pos + 1
                    table, pos = _leb(data, pos)
                    if table:
                        feats.add("reference-types")
                elif k == _K_MEMIDX:
                    mem, pos = _leb(data, pos)
                    if mem:
                        feats.add("multi-memory")
                elif k == _K_F32:
                    pos += 4
                elif k == _K_F64:
                    pos += 8
                elif k == _K_BR_TABLE:
                    n, pos = _leb(data, pos)
                    if n >= end - pos:  # n targets + default, at least a byte each
                        raise self._truncated(what, end)
                    left = n + 1  # (the clock every _TICK targets: 1,000,000 of them
                    while left:  # in one br_table are a tenth of a second to read)
                        step = min(left, _TICK)
                        for _ in range(step):
                            pos = _leb(data, pos)[1] if data[pos] & 0x80 else pos + 1
                        left -= step
                        if left:
                            late()
                elif k == _K_PREFIX_FD:
                    pos = self._simd(pos, op_at)
                elif k == _K_PREFIX_FC:
                    pos = self._misc(pos, op_at)
                elif k == _K_PREFIX_FE:
                    pos = self._atomic(pos, op_at)
                elif k == _K_PREFIX_FB:
                    pos = self._gc(pos, end, op_at)
                elif k == _K_HEAPTYPE:
                    pos = self._heaptype_at(pos, end)
                elif k == _K_SELECT_T:
                    r = _Reader(data, pos, end, what)
                    for _ in self.items(r.count("select type")):
                        self.note_valtype(self.valtype(r))
                    pos = r.pos
                elif k == _K_TRY_TABLE:
                    pos = self._try_table(pos, end, what)
                else:
                    raise _UnknownEncoding(
                        f"unknown opcode 0x{op:02x} at offset 0x{op_at:x}", op_at
                    )
        except IndexError:
            raise self._truncated(what, op_at) from None
        except _UnknownEncoding as exc:
            if const:
                raise FactsError(f"{exc} in {what}", exc.offset) from None
            feats.add("unknown")
            return end
        if pos > end or const:
            raise self._truncated(what, op_at)
        return pos

    @staticmethod
    def _truncated(what: str, offset: int) -> FactsError:
        return FactsError(f"truncated {what} at offset 0x{offset:x}", offset)

    def _memarg(self, pos: int) -> int:
        data = self.data
        align, pos = _leb(data, pos)
        if align & 0x40:  # explicit memory index (multi-memory)
            self.features.add("multi-memory")
            pos = _leb(data, pos)[1] if data[pos] & 0x80 else pos + 1
        return _leb(data, pos)[1] if data[pos] & 0x80 else pos + 1

    def _blocktype(self, pos: int, end: int) -> int:
        b = self.data[pos]
        if b == 0x40:
            return pos + 1
        if b in _VALTYPE_BYTES:
            r = _Reader(self.data, pos, end, "block type")
            self.note_valtype(self.valtype(r))
            return r.pos
        idx, new_pos = _sleb(self.data, pos)
        if idx < 0:
            raise _UnknownEncoding(f"unknown block type at offset 0x{pos:x}", pos)
        t = self.type_at(idx)
        if t is not None and (t.params or len(t.results) > 1):
            self.features.add("multi-value")
        return new_pos

    def _heaptype_at(self, pos: int, end: int) -> int:
        r = _Reader(self.data, pos, end, "heap type")
        self.heaptype(r)
        return r.pos

    def _try_table(self, pos: int, end: int, what: str) -> int:
        data = self.data
        pos = self._blocktype(pos, end)
        n, pos = _leb(data, pos)
        if n > end - pos:
            raise self._truncated(what, pos)
        for _ in self.items(n):
            kind = data[pos]
            pos += 1
            if kind > 3:
                raise _UnknownEncoding(f"unknown catch kind at offset 0x{pos - 1:x}", pos - 1)
            for _ in range(2 if kind < 2 else 1):  # [tag] label
                pos = _leb(data, pos)[1] if data[pos] & 0x80 else pos + 1
        return pos

    def _simd(self, pos: int, op_at: int) -> int:
        data = self.data
        sub, pos = _leb(data, pos)
        kind = _simd_kind(sub)
        if kind is None:
            raise _UnknownEncoding(f"unknown opcode 0xfd {sub} at offset 0x{op_at:x}", op_at)
        self.simd_ops.add(sub)
        if sub >= 0x100:  # relaxed SIMD: its own proposal, which not every backend has
            self.features.add("relaxed-simd")
        if kind == "m":
            return self._memarg(pos)
        if kind == "ml":
            return self._memarg(pos) + 1
        if kind == "l":
            return pos + 1
        if kind == "16":
            return pos + 16
        return pos

    def _misc(self, pos: int, op_at: int) -> int:
        data = self.data
        sub, pos = _leb(data, pos)
        spec = _MISC_OPS.get(sub)
        if spec is None:
            raise _UnknownEncoding(f"unknown opcode 0xfc {sub} at offset 0x{op_at:x}", op_at)
        nimm, feature = spec
        self.features.add(feature)
        for i in range(nimm):
            value, pos = _leb(data, pos)
            if value and sub in (8, 10, 11) and (sub != 8 or i == 1):
                self.features.add("multi-memory")
            elif value and sub in (12, 14, 15, 16, 17) and (sub != 12 or i == 1):
                self.features.add("reference-types")
        return pos

    def _atomic(self, pos: int, op_at: int) -> int:
        sub, pos = _leb(self.data, pos)
        kind = _atomic_kind(sub)
        if kind is None:
            raise _UnknownEncoding(f"unknown opcode 0xfe {sub} at offset 0x{op_at:x}", op_at)
        if kind == "m":
            return self._memarg(pos)
        return pos + 1

    def _gc(self, pos: int, end: int, op_at: int) -> int:
        data = self.data
        sub, pos = _leb(data, pos)
        spec = _GC_OPS.get(sub)
        if spec is None:
            raise _UnknownEncoding(f"unknown opcode 0xfb {sub} at offset 0x{op_at:x}", op_at)
        for c in spec:
            if c == "h":
                pos = self._heaptype_at(pos, end)
            elif c == "c":
                pos += 1  # cast flags
                _, pos = _leb(data, pos)  # label
                pos = self._heaptype_at(pos, end)
                pos = self._heaptype_at(pos, end)
            else:
                pos = _leb(data, pos)[1] if data[pos] & 0x80 else pos + 1
        return pos

    # ---- sections --------------------------------------------------------------------------
