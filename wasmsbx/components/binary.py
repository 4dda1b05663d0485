"""A static scan of a component binary: its core modules, core instances and memories.

Nothing here instantiates or validates (wasmtime does that when compiling); the scan
only counts what instantiating the component creates, so the runner can set the
store's limits from the policy:

- ``core_instances``: core instances made by ``instantiate`` (the inline-export form
  makes none). wasmtime's instance limit counts exactly these: 4 for a C command built
  with the preview1 adapter (main, adapter, shim, fixup). Nested components are counted
  once per entry of their parent's instance section, an upper bound.
- ``memories``: ``(min_bytes, max_bytes or None)`` of every linear memory a core module
  defines, once per instantiation. Imported memories are the same memory again.

Hand-written rather than a library: the only Python component parser would be a
wasm-tools binding, and the runner needs just these counts on every run.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Optional

from ..wasm.facts import FactsError, _leb, read_facts

PAGE = 65536
MAX_DEPTH = 64  # nested components; wasmtime's own limit is lower
MAX_COUNT = 100_000  # core instances or memories: far beyond any real component
_CORE_MODULE, _CORE_INSTANCE, _COMPONENT, _INSTANCE = 1, 2, 4, 5


class CoreModule(namedtuple("CoreModule", "index offset size")):
    """One core module embedded in the component (``offset`` into the whole binary)."""

    index: int
    offset: int
    size: int
    __slots__ = ()


class Layout(
    namedtuple(
        "Layout", "core_modules core_instances memories components probed", defaults=(False,)
    )
):
    """What instantiating the component creates (see the module docstring)."""

    core_modules: tuple
    core_instances: int
    memories: tuple
    components: int  # nested component definitions, at every depth
    probed: bool  # with wasmsbx's memory probe (components.probe): counted in core_instances
    __slots__ = ()


class ComponentFormatError(ValueError):
    """The component binary is truncated or malformed where the scan reads it."""


def scan(data: bytes) -> Layout:
    """The layout of the component ``data`` (ComponentFormatError if it cannot be read)."""
    try:
        return _scan(memoryview(data), 0, len(data), 0)
    except (IndexError, FactsError, ComponentFormatError) as exc:
        reason = str(exc) if not isinstance(exc, IndexError) else "unexpected end of the binary"
        raise ComponentFormatError(f"malformed component: {reason}") from None


def _scan(data: memoryview, start: int, end: int, depth: int) -> Layout:
    if depth > MAX_DEPTH:
        raise ComponentFormatError(f"components nested more than {MAX_DEPTH} deep")
    pos = start + 8
    modules: list = []
    memories: list = []
    instances = 0
    nested: list = []
    instantiations = 0
    while pos < end:
        section = data[pos]
        size, pos = _leb(data, pos + 1)
        body_end = pos + size
        if body_end > end:
            raise ComponentFormatError(f"section {section} runs past the end at 0x{pos:x}")
        if section == _CORE_MODULE:
            modules.append(CoreModule(len(modules), pos, size))
        elif section == _CORE_INSTANCE:
            made, used = _core_instances(data, pos)
            instances += made
            for index in used:
                memories.extend(_module_memories(data, modules, index))
        elif section == _COMPONENT:
            nested.append(_scan(data, pos, body_end, depth + 1))
        elif section == _INSTANCE:
            # An entry takes at least 3 bytes: a count beyond that is a lie.
            instantiations += min(_leb(data, pos)[0], size // 3)
        pos = body_end
        if instances > MAX_COUNT or len(memories) > MAX_COUNT:
            raise ComponentFormatError(f"more than {MAX_COUNT:,} core instances or memories")
    if nested and instantiations:
        # Which nested component each instantiation names is not tracked: count the most
        # demanding one for every instantiation (an upper bound, for instances and
        # memories alike: an undercount would only make instantiation fail).
        most = max(n.core_instances for n in nested)
        widest = max(nested, key=lambda n: len(n.memories)).memories
        if max(most, len(widest)) * instantiations > MAX_COUNT:
            raise ComponentFormatError(f"more than {MAX_COUNT:,} core instances or memories")
        instances += most * instantiations
        memories.extend(widest * instantiations)
    return Layout(
        tuple(modules + [m for n in nested for m in n.core_modules]),
        instances,
        tuple(memories),
        len(nested) + sum(n.components for n in nested),
    )


def _core_instances(data: memoryview, pos: int) -> tuple:
    """(instances made by ``instantiate``, the module index of each) in one section."""
    count, pos = _leb(data, pos)
    used = []
    for _ in range(count):
        form = data[pos]
        pos += 1
        if form == 0x00:  # instantiate moduleidx (name, 0x12 instanceidx)*
            module, pos = _leb(data, pos)
            used.append(module)
            args, pos = _leb(data, pos)
            for _ in range(args):
                pos = _skip_name(data, pos)
                pos = _leb(data, pos + 1)[1]  # 0x12 instanceidx
        elif form == 0x01:  # inline exports (name, sort idx)*
            exports, pos = _leb(data, pos)
            for _ in range(exports):
                pos = _skip_name(data, pos)
                pos = _leb(data, pos + 1)[1]  # sort byte, index
        else:
            raise ComponentFormatError(f"unknown core instance form 0x{form:02x}")
    return len(used), used


def _skip_name(data: memoryview, pos: int) -> int:
    length, pos = _leb(data, pos)
    return pos + length


def _module_memories(data: memoryview, modules: list, index: int) -> list:
    """The memories module ``index`` defines; one unbounded memory when the index names a
    module this scan did not see defined (imported or aliased: assume the worst)."""
    if index >= len(modules):
        return [(0, None)]
    module = modules[index]
    facts = read_facts(bytes(data[module.offset : module.offset + module.size]), False)
    return [
        (m.limits.min * PAGE, None if m.limits.max is None else m.limits.max * PAGE)
        for m in facts.memories
        if not m.imported
    ]


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
        if type(probed) is not bool:
            raise ValueError(f"{probed!r} is not a flag")
        return Layout(
            modules,
            _count(record["core_instances"]),
            memories,
            _count(record["components"]),
            probed,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ComponentFormatError(f"unreadable component layout ({exc})") from None


def _count(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value
