"""The interface diff's records: one ``Change`` each, gathered in a ``CompatReport``.

Apart from the package so that the component flavour of the diff
(wasmsbx.components.watch) builds the same records without importing the watcher, which
imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Change:
    """One difference between two versions of a module's interface."""

    kind: str  # export | import | memory
    name: str
    change: str  # added | removed | signature | kind | limits
    old: Optional[str]
    new: Optional[str]
    breaking: bool
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "change": self.change,
            "old": self.old,
            "new": self.new,
            "breaking": self.breaking,
            "note": self.note,
        }


@dataclass(frozen=True)
class CompatReport:
    """What changed between the last good module and the new one."""

    previous: str  # sha256 of the previous module
    current: str
    changes: tuple = ()

    @property
    def breaking(self) -> bool:
        return any(c.breaking for c in self.changes)

    def to_dict(self) -> dict:
        return {
            "previous_sha256": self.previous,
            "sha256": self.current,
            "breaking": self.breaking,
            "changes": [c.to_dict() for c in self.changes],
        }
