"""The parts of a module's facts a run reads (types, imports, exports, its interface),
apart from the reader (:mod:`wasmsbx.wasm.facts`, which re-exports them): a run whose
facts come from the cache (``native.recorded``) needs these classes, not the reader,
which costs 2 ms to import.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any


class FuncType(namedtuple("FuncType", "params results")):
    # params: tuple[str, ...]
    # results: tuple[str, ...]
    __slots__ = ()

    def __str__(self) -> str:
        params = "(" + ", ".join(self.params) + ")"
        results = "(" + ", ".join(self.results) + ")"
        if len(self.results) == 1:
            results = self.results[0]
        return f"{params} -> {results}"

    def to_dict(self) -> dict[str, Any]:
        return {"params": list(self.params), "results": list(self.results)}


# Value types a signature shows on each side, at most (the rest counted): one type of
# 40,000 parameters exported 1,000 times made 200 MB of audit (red team 125)
SIGNATURE_TYPES = 32


def signature_text(ty: FuncType) -> str:
    """``str(ty)``, each side cut after SIGNATURE_TYPES types (the count said)."""
    if len(ty.params) <= SIGNATURE_TYPES and len(ty.results) <= SIGNATURE_TYPES:
        return str(ty)

    def listed(types: tuple) -> str:
        if len(types) <= SIGNATURE_TYPES:
            return ", ".join(types)
        return ", ".join(types[:SIGNATURE_TYPES]) + f", ... ({len(types):,} in all)"

    results = f"({listed(ty.results)})" if len(ty.results) != 1 else ty.results[0]
    return f"({listed(ty.params)}) -> {results}"


class Limits(
    namedtuple(
        "Limits",
        "min max shared memory64",
        defaults=(
            False,
            False,
        ),
    )
):
    # min: int
    # max: Optional[int]
    # shared: bool
    # memory64: bool
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class Import(
    namedtuple(
        "Import",
        ["module", "name", "kind", "type", "limits", "elem", "global_type", "mutable"],
        defaults=(
            None,
            None,
            None,
            None,
            False,
        ),
    )
):
    # module: str
    # name: str
    # kind: str  "func" | "table" | "memory" | "global" | "tag"
    # type: Optional[FuncType]  func and tag imports
    # limits: Optional[Limits]  memory and table imports
    # elem: Optional[str]  table imports
    # global_type: Optional[str]  global imports
    # mutable: bool  global imports
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "name": self.name,
            "kind": self.kind,
            "type": self.type.to_dict() if self.type is not None else None,
            "limits": self.limits.to_dict() if self.limits is not None else None,
            "elem": self.elem,
            "global_type": self.global_type,
            "mutable": self.mutable,
        }


class Export(namedtuple("Export", "name kind index type", defaults=(None,))):
    # name: str
    # kind: str  "func" | "table" | "memory" | "global" | "tag"
    # index: int
    # type: Optional[FuncType]  funcs and tags, when the index resolves
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "index": self.index,
            "type": self.type.to_dict() if self.type is not None else None,
        }


class Interface(namedtuple("Interface", "imports exports")):
    # imports: tuple  of Import
    # exports: tuple  of Export
    __slots__ = ()
