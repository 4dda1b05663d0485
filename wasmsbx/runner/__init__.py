"""The runner: policy + module -> backend -> result, as plain data.

``sandbox`` is the core (one module instance under a policy, with no feature above it);
``batch`` and ``stream`` run many calls through it, ``checkpoint`` persists their
progress, ``services`` adds them (and the audit) as methods. The public ``Sandbox`` here
is the core one with those methods, and gives a component sandbox for a component.
"""

from __future__ import annotations

import errno
import os
import threading
import weakref
from typing import Any, Optional, Union, cast

from .. import policy as policy_mod
from . import sandbox as _core
from . import shared as _shared
from .sandbox import (
    CallResult,
    CommandResult,
    Exports,
    Function,
    Globals,
    Group,
    Memory,
    RunStats,
    _is_component_file,
    format_value,
    json_value,
    parse_args,
    preread,
    read_module,
)
from .services import Services

# Imported ahead (see warm.py): before 3.11 by the first sandbox of a threaded process,
# and wherever a guest may write a folder on sys.path (importpath.py).
from .warm import _WARM_NEEDED, WARM_COMPONENTS, WARM_IMPORTS, warm_imports

_COMPONENT_CLASS: list = []  # the public component sandbox, made on first use


def _warm_for(component: bool) -> None:
    if threading.active_count() > 1:  # (the deadline keeper's thread is not counted)
        warm_imports(WARM_IMPORTS)
        if component:
            warm_imports(WARM_COMPONENTS)


class Sandbox(_core.Sandbox, Services):
    """A module loaded under a policy, ready to call (see runner.sandbox.Sandbox), with
    ``batch``, ``stream`` and ``audit``.

    >>> box = Sandbox("examples/add.wat")
    >>> box.call("add", 5, 3)
    8

    A WebAssembly component gives a ``components.sandbox.ComponentSandbox`` (same
    methods, WIT-typed values), chosen by the file's header before anything else.
    """

    def __new__(cls, module: Any = None, *args: Any, **kwargs: Any) -> Sandbox:
        # Annotated Sandbox, not Any: with Any, mypy and pyright typed every
        # ``Sandbox(...)`` as Any and checked nothing (a component sandbox has the same
        # methods, with WIT-typed values).
        if _core._PREREAD_SLOT.__dict__:  # (one an __init__ never took: never another's)
            _core._PREREAD_SLOT.__dict__.clear()
        if cls is not Sandbox or module is None or _planned(module):
            if _WARM_NEEDED:
                _warm_for(False)
            return super().__new__(cls)
        try:
            read = preread(module)  # (a small file: read once, here, for both)
            component = _is_component_file(module, read[:4096] if read is not None else None)
        except OSError as exc:
            if exc.errno in (_EMFILE, _ENFILE):
                raise _no_descriptors(exc) from None
            raise
        if _WARM_NEEDED:  # (Python 3.9 and 3.10, see warm_imports)
            _warm_for(component)
        if component:
            # Not an instance of cls, so Python does not call __init__ again on it.
            try:
                return cast(Sandbox, component_class()(module, *args, **kwargs))
            except OSError as exc:
                if exc.errno in (_EMFILE, _ENFILE):  # (importing the components, say)
                    raise _no_descriptors(exc) from None
                raise
        box = super().__new__(cls)
        if read is not None:  # (for the __init__ that follows, in this thread)
            # (a weak reference: an id() comes again once its object is freed)
            _core._PREREAD_SLOT.read = (weakref.ref(box), module, read)
        return box

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except OSError as exc:
            if exc.errno in (_EMFILE, _ENFILE):
                raise _no_descriptors(exc) from None
            raise

    __init__.__wrapped__ = _core.Sandbox.__init__  # type: ignore[attr-defined]  # (signature)
    __init__.__doc__ = _core.Sandbox.__init__.__doc__

    def __enter__(self) -> Sandbox:  # this class, with batch/stream/audit, for checkers
        return self

    _plannable = True  # (adds no step to __init__: see runner.sandbox._Plan)


_EMFILE, _ENFILE = errno.EMFILE, errno.ENFILE


def _no_descriptors(exc: OSError) -> Exception:
    """A new sandbox with no descriptor left in the process: a resource of the host's,
    as README "Density" says, not an OSError out of whatever needed a file (red team
    104: importing a module wasmsbx reads on first use, reading a module's file)."""
    from ..errors import ResourceExhausted

    return ResourceExhausted(
        f"this process is out of file descriptors ({exc.strerror or exc}): another "
        "sandbox's guest may hold them open (a guest granted a folder can open files "
        "until the open-files limit)",
        hint="close() sandboxes you are done with, or raise the open-files limit (ulimit -n)",
    )


def _planned(module: Any) -> bool:
    """Whether ``module`` is a bytes object a plan was made for (runner.sandbox._Plan):
    a core module, found so when the plan was made (bytes never change)."""
    return type(module) is bytes and bool(_shared.plans(module))


def component_class() -> type:
    """ComponentSandbox with ``batch`` (Services): the components feature sits above the
    core sandbox and below nothing here, so the public class is assembled at this level."""
    if not _COMPONENT_CLASS:
        from ..components.sandbox import ComponentSandbox

        class PublicComponentSandbox(ComponentSandbox, Services):
            __doc__ = ComponentSandbox.__doc__

        PublicComponentSandbox.__name__ = PublicComponentSandbox.__qualname__ = "ComponentSandbox"
        _COMPONENT_CLASS.append(PublicComponentSandbox)
    return _COMPONENT_CLASS[0]


def run(
    module: Union[str, os.PathLike, bytes, bytearray, memoryview],
    func: str,
    *args: Any,
    policy: Optional[policy_mod.Policy] = None,
    backend: Optional[str] = None,
) -> Any:
    """``wasmsbx.run("add.wat", "add", 5, 3) -> 8``."""
    box = Sandbox(module, policy, backend=backend)
    try:
        return box.call(func, *args)
    finally:
        box.close()


__all__ = [
    "CallResult",
    "CommandResult",
    "Exports",
    "Function",
    "Globals",
    "Group",
    "Memory",
    "RunStats",
    "Sandbox",
    "format_value",
    "json_value",
    "parse_args",
    "read_module",
    "run",
]
