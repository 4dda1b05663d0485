"""wasmtime-py's component value conversion, made linear in the value.

wasmtime-py 51 reads a type's parts through the C API each time it is asked (``cases``,
``fields``, ``element``, ``payload``, ``ok``, ``err`` build new objects on every read),
and a variant-like type (variant, option, result) decides how a value is passed by
``_tagged``, which asks each case for its Python classes, which for a variant-like case
asks ``_tagged`` again and then each of its cases again. So:

- a ``list`` of a 5,000-case variant re-read all 5,000 cases for every element, and
  compared the tag with each: 500 elements took 66 s (red team round 35);
- an ``option`` nested 34 deep around a ``u8`` took 13 s for one value, twice as long
  for every two levels more, from a component of 458 bytes.

That work runs in Python after the guest has returned, where no epoch reaches it: from
Python (a library caller has no hard stop) a call ran for as long as the guest's types
made it. ``install`` caches each type object's parts and answers on the object itself
(wasmtime-py makes the objects for one call, from the function's type, so the cache
lives as long as that call), and finds a case by its name in a dict: a value then costs
its own size, whatever its type's. The semantics are wasmtime-py's: the same cases are
chosen, the same values made, the same errors raised. Installed only if the classes
have the members this was written against; otherwise wasmtime-py's code stays.
"""

from __future__ import annotations

from typing import Any, Callable

_INSTALLED: list = []

# type class -> the properties whose value is read once per object
_PARTS = {
    "ListType": ("element",),
    "RecordType": ("fields",),
    "TupleType": ("elements",),
    "VariantType": ("cases",),
    "OptionType": ("payload",),
    "ResultType": ("ok", "err"),
    "EnumType": ("names",),
    "FlagsType": ("names",),
}
_VARIANTS = ("VariantType", "OptionType", "ResultType")


def _once(name: str, read: Callable) -> Callable:
    """``read(self)`` kept on the object under ``name``."""
    key = "_wasmsbx_" + name

    def get(self: Any) -> Any:
        kept = self.__dict__
        try:
            return kept[key]
        except KeyError:
            value = kept[key] = read(self)
            return value

    return get


def _cases_by_name(self: Any) -> dict:
    """name -> payload type (None without one); the first case of a name, as
    wasmtime-py's loops take it."""
    out: dict = {}
    for name, ty in self._cases():
        out.setdefault(name, ty)
    return out


def _classes(self: Any, add_classes: Callable) -> frozenset:
    found: set = set()
    add_classes(self, found)
    return frozenset(found)


def install() -> bool:
    """Put the cached conversion in place (once); False if wasmtime-py's stays."""
    if _INSTALLED:
        return _INSTALLED[0]
    try:
        import ctypes

        from wasmtime import _ffi as ffi
        from wasmtime.component import _types
    except ImportError:
        _INSTALLED.append(False)
        return False
    like = getattr(_types, "VariantLikeType", None)
    variant_class = getattr(_types, "Variant", None)
    wanted = all(
        isinstance(getattr(getattr(_types, cls, None), prop, None), property)
        for cls, props in _PARTS.items()
        for prop in props
    )
    wanted = wanted and like is not None and variant_class is not None
    wanted = wanted and all(
        callable(getattr(like, m, None)) for m in ("_tagged", "_lift", "_lower", "add_classes")
    )
    wanted = wanted and all(callable(getattr(_types, c)._cases) for c in _VARIANTS)
    wanted = wanted and all(
        hasattr(ffi, name)
        for name in ("wasmtime_component_vallist_delete", "WASMTIME_COMPONENT_LIST")
    )
    if not wanted:
        _INSTALLED.append(False)
        return False

    for cls_name, props in _PARTS.items():
        cls = getattr(_types, cls_name)
        for prop in props:
            original = getattr(cls, prop)
            setattr(cls, prop, property(_once(prop, original.fget), doc=original.__doc__))
    for cls_name in _VARIANTS:
        cls = getattr(_types, cls_name)
        cls._cases = _once("cases_list", cls._cases)

    slow_add_classes = like.add_classes
    like._tagged = _once("tagged", like._tagged)
    classes = _once("classes", lambda self: _classes(self, slow_add_classes))
    by_name = _once("by_name", _cases_by_name)
    Variant = variant_class

    def add_classes(self: Any, s: set) -> None:
        s |= classes(self)

    def _lift(self: Any, tag: str, ptr: Any) -> Any:
        cases = by_name(self)
        if tag not in cases:
            raise ValueError(f"tag {tag} not found in variant cases")
        ty, tagged = cases[tag], self._tagged()
        if ty is None:
            return Variant(tag) if tagged else None
        payload = ty.convert_from_c(ptr.contents)
        # freed as wasmtime-py frees it: marked a bool first, so the free does not free
        # again what the conversion took over
        ptr.contents.kind = ffi.WASMTIME_COMPONENT_BOOL
        ptr.contents.of.boolean = False
        ffi.wasmtime_component_val_delete(ptr)
        return Variant(tag, payload) if tagged else payload

    slow_lower = like._lower

    def _lower(self: Any, store: Any, val: Any) -> Any:
        if self._tagged() and isinstance(val, Variant):
            # wasmtime-py's loop takes the first case named val.tag; so does the dict.
            cases = by_name(self)
            if val.tag not in cases:
                raise ValueError("value not valid for this variant")
            ty = cases[val.tag]
            if ty is None:
                return (val.tag, None)
            raw = ffi.wasmtime_component_val_t()
            ty.convert_to_c(store, val.payload, ctypes.pointer(raw))
            return (val.tag, ffi.wasmtime_component_val_new(ctypes.byref(raw)))
        # untagged: one case per Python class, so a few cases at most: its own loop
        # (fast now that each case's classes are kept)
        return slow_lower(self, store, val)

    like.add_classes = add_classes
    like._lift = _lift
    like._lower = _lower
    weight = _weigher(_types, like)
    _types.ListType.convert_from_c = _paced_lists(_types.ListType.convert_from_c, ffi, weight)
    _CALL.append(_typed_call(ffi))
    _INSTALLED.append(True)
    return True


_CALL: list = []  # the call with the function's types kept (_typed_call), once installed


def call(func: Any, store: Any, params: list) -> Any:
    """``func(store, *params)``, wasmtime-py's component call, with the function's types
    read once per function object rather than on every call (see _typed_call)."""
    if _CALL:
        return _CALL[0](func, store, params)
    return func(store, *params)


def _typed_call(ffi: Any) -> Callable:
    """wasmtime-py 51's ``component.Func.__call__``, but its function type, parameter
    types and result type are read once per ``Func`` (an instance's function: its type
    never changes) and kept on it, where wasmtime-py reads them through the C API and
    builds new type objects on every call (about a third of a small call's time). Kept,
    the type objects also keep what this module caches on them, from call to call. The
    conversion, the call, the errors and the frees are wasmtime-py's own, in its order.
    wasmtime-py's own ``__call__`` if it lacks what this uses."""
    import ctypes

    try:
        from wasmtime.component import Func
        from wasmtime.component._enter import enter_wasm
    except ImportError:
        return lambda func, store, params: func(store, *params)
    needed = ("wasmtime_component_val_t", "wasmtime_component_func_call")
    if not (callable(getattr(Func, "type", None)) and all(hasattr(ffi, n) for n in needed)):
        return lambda func, store, params: func(store, *params)
    val_t, func_call = ffi.wasmtime_component_val_t, ffi.wasmtime_component_func_call
    val_delete = ffi.wasmtime_component_val_delete
    byref, pointer = ctypes.byref, ctypes.pointer

    def typed(func: Any, store: Any, params: list) -> Any:
        kept = func.__dict__
        types = kept.get("_wasmsbx_types")
        if types is None:
            fty = func.type(store)
            types = kept["_wasmsbx_types"] = (fty, fty.params, fty.result)
        _, param_tys, result_ty = types
        if len(params) != len(param_tys):
            raise TypeError(
                f"wrong number of parameters provided: given {len(params)}, "
                f"expected {len(param_tys)}"
            )
        param_capi = (val_t * len(params))()
        n = 0
        try:
            for (_name, ty), val in zip(param_tys, params):
                ty.convert_to_c(store, val, pointer(param_capi[n]))
                n += 1
            result_space = result_capi = None
            result_len = 0
            if result_ty is not None:
                result_space = val_t()
                result_capi = byref(result_space)
                result_len = 1

            def run() -> Any:
                return func_call(
                    byref(func._func), store._context(), param_capi, n, result_capi, result_len
                )

            enter_wasm(run)
            if result_space is None:
                return None
            return result_ty.convert_from_c(result_space)
        finally:
            for i in range(n):
                val_delete(byref(param_capi[i]))

    return typed


def _weigher(_types: Any, like: Any) -> Callable:
    """``weight(ty)`` for wasmtime-py's types, as ``values.weight`` for wasmsbx's:
    about how many values one value converts, lists aside; kept on the type object."""
    from .values import PACE

    record, tuple_type = _types.RecordType, _types.TupleType

    def weight(ty: Any) -> int:
        if ty is None:
            return 1
        kept = getattr(ty, "__dict__", None)
        if kept is not None and "_wasmsbx_weight" in kept:
            return kept["_wasmsbx_weight"]
        if isinstance(ty, record):
            total = 1 + sum(weight(t) for _, t in ty.fields)
        elif isinstance(ty, tuple_type):
            total = 1 + sum(weight(t) for t in ty.elements)
        elif isinstance(ty, like):
            total = 1 + max((weight(t) for _, t in ty._cases()), default=0)
        else:
            total = 1
        total = min(total, PACE)
        if kept is not None:
            kept["_wasmsbx_weight"] = total
        return total

    return weight


def _paced_lists(slow: Callable, ffi: Any, weight: Callable) -> Callable:
    """A list's conversion that counts against the running call's clock
    (``values.paced``: every PACE units of conversion, across the call's lists). A long
    list is converted here, as wasmtime-py converts it, each element marked a bool once
    taken over and the list freed at the end (the C API empties a freed list, so the
    caller's own free of it does nothing), so stopping between two elements frees
    nothing twice; a short one is charged whole, then converted by wasmtime-py."""
    import ctypes

    from .values import CLOCK, PACE, Overdue, charge, paced

    kind_list, kind_bool = ffi.WASMTIME_COMPONENT_LIST.value, ffi.WASMTIME_COMPONENT_BOOL

    def convert_from_c(self: Any, c: Any) -> Any:
        if CLOCK.until is None or c.kind != kind_list:
            return slow(self, c)
        n, units = c.of.list.size, weight(self.element)
        step = max(1, PACE // units)
        if n <= step:
            try:
                charge(n * units)
            except Overdue:
                ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))
                raise
            return slow(self, c)
        try:
            out = []
            element, data = self.element, c.of.list.data
            for i in paced(range(n), units):  # (a look at the clock every step elements)
                raw = data[i]
                out.append(element.convert_from_c(raw))
                raw.kind = kind_bool
                raw.of.boolean = False
            return bytes(out) if self._is_bytes() else out
        finally:
            ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))

    return convert_from_c
