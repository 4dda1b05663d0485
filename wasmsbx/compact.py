"""Attribute names entered in a class's shared table before any instance exists.

CPython 3.11+ keeps an instance's attributes in a compact array whose names are shared
by every instance of the class (one table per class, at most 29 names). The table takes
a new name only while it has room, and each new instance takes one place of that room
(the array is sized when the instance is made). So a name first set after many
instances exist finds no room, and every instance that sets it from then on gets a full
dict of its own: one more object for the garbage collector and ~1 KiB each. What a
process did first then decided what later sandboxes cost: after 200 sandboxes of
another kind, or one whose start function ran out of time in a thread, every later
sandbox carried one or two such dicts (15.9 tracked objects per sandbox instead of 13.9,
found 2026-12-05, tests/test_density.py).

``reserve`` enters a class's names up front, in order, most used first, so the
instances of any process keep them compact whatever came before. Names past the table's
room (rare paths) still work: only an instance that sets one gets a dict. Elsewhere, and
before 3.11, this does nothing that lasts. A leaf: imports nothing of wasmsbx."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

ROOM = 29  # names a class's shared table holds (CPython's SHARED_KEYS_MAX_SIZE - 1)


def reserve(cls: type, names: Iterable[str], strict: bool = True) -> None:
    """Enter ``names`` into ``cls``'s table of shared attribute names (see the module
    docstring), through an instance made without ``__init__`` and dropped at once. The
    names must be plain attributes: never a property or another data descriptor of the
    class (a setter would run on the blank instance). ``strict=False`` (a subclass
    someone else wrote): such names are left out, and a class with ``__del__`` is left
    alone (it would run on the blank instance)."""
    if not strict and getattr(cls, "__del__", None) is not None:
        return
    plain = []
    for name in names:
        if hasattr(type(getattr(cls, name, None)), "__set__"):
            if strict:
                raise TypeError(f"{cls.__name__}.{name} is a data descriptor, not a plain name")
            continue
        plain.append(name)
    blank: Any = object.__new__(cls)
    for name in plain:
        object.__setattr__(blank, name, None)
