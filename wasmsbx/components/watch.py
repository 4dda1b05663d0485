"""``wasmsbx watch`` for a component: a WIT-level compatibility report between versions.

Functions are compared by their WIT signatures (``func(name: string) -> string``):
removed or changed is breaking (callers must change), added is not. Imported interfaces
added are breaking when the sandbox will refuse them (``wasi:http``, custom
interfaces); otherwise they name the new capability the component asks for.
"""

from __future__ import annotations

import hashlib
from collections import namedtuple
from typing import Any

from ..watch import Change, CompatReport
from .audit import classify


class Interface(namedtuple("Interface", "sha256 exports imports")):
    """A component version's world: {function: WIT signature} and its import names."""

    sha256: str
    exports: dict
    imports: tuple
    __slots__ = ()


def interface_of(box: Any) -> Interface:
    """The interface of a ComponentSandbox."""
    return Interface(
        hashlib.sha256(box.wasm).hexdigest(),
        {e.name: str(e.sig) for e in box.component_exports},
        tuple(box.import_names),
    )


def compare(old: Interface, new: Interface) -> CompatReport:
    changes = []
    for name, sig in new.exports.items():
        if name not in old.exports:
            changes.append(Change("export", name, "added", None, sig, False))
    for name, sig in old.exports.items():
        if name not in new.exports:
            changes.append(Change("export", name, "removed", sig, None, True, "callers lose it"))
        elif new.exports[name] != sig:
            changes.append(
                Change(
                    "export", name, "signature", sig, new.exports[name], True, "callers must change"
                )
            )
    for name in new.imports:
        if name not in old.imports:
            use = classify(name)
            note = use.problem if not use.provided else f"now asks for {use.capability}"
            changes.append(
                Change("import", name, "added", None, "interface", not use.provided, note)
            )
    for name in old.imports:
        if name not in new.imports:
            changes.append(Change("import", name, "removed", "interface", None, False))
    return CompatReport(old.sha256, new.sha256, tuple(changes))
