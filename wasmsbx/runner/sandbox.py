"""The core sandbox: policy + module -> backend -> result, as plain data.

The public ``wasmsbx.Sandbox`` (wasmsbx.runner) extends ``Sandbox`` here with batch,
stream and audit; ``wasmsbx run`` is a thin renderer over it.
"""

from __future__ import annotations

import errno
import functools
import operator
import os
import stat
import threading
import time
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional, Union

from .. import compact as _compact
from .. import errors
from .. import policy as policy_mod
from ..backends import get as backend_get
from ..backends import names as backend_names
from ..backends import split as backend_split
from ..backends.base import (  # noqa: F401 - engine_options is re-exported
    EngineOptions,
    ExportInfo,
    Limits,
    Signature,
    WasiSetup,
    engine_options,
    take_turn,
)
from ..backends.compiling import check_size
from ..inputs import read_whole
from ..memory import Memory  # noqa: F401 - re-exported (wasmsbx.GuestMemory)

# ---------------------------------------------------------------------------- typed values
# (wasmsbx.values; re-exported here for the callers that imported them from the runner)
from ..values import format_value, json_value, parse_args  # noqa: E402
from ..wasm.source import (  # noqa: F401 - re-exported for the runner's callers
    ARTIFACT_FIRST_BYTE,
    WASM_MAGIC,
    _looks_like_wat,
    _size_cap,
    _text_start,
    bounded_reads,
    module_bytes,
    read_file,
    read_module,
    wat_to_wasm,
)
from . import shared
from .warm import _WARM_NEEDED, WARM_IMPORTS, warm_imports

# ---------------------------------------------------------------------------- results


class RunStats(
    namedtuple(
        "RunStats",
        [
            "backend",
            "compiler",
            "timings",
            "cache",
            "fuel_used",
            "memory_bytes",
            "warnings",
            "memory_layout",
        ],
        defaults=(
            None,
            None,
            None,
            (),
            None,
        ),
    )
):
    # backend: str
    # compiler: Optional[str]
    # timings: dict  phase -> seconds
    # cache: Optional[str]  hit | miss | off
    # fuel_used: Optional[int]
    # memory_bytes: Optional[int]
    # warnings: tuple
    # memory_layout: Optional[dict]  reserve.in_force: runtime.memory_layout and what
    #                                each linear memory reserves (wasmtime)
    __slots__ = ()

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "compiler": self.compiler,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "cache": self.cache,
            "fuel_used": self.fuel_used,
            "memory_bytes": self.memory_bytes,
            "warnings": list(self.warnings),
            "memory_layout": dict(self.memory_layout) if self.memory_layout else None,
        }


class CallResult(namedtuple("CallResult", "function values types stats")):
    # function: str
    # values: list
    # types: tuple
    # stats: RunStats
    __slots__ = ()

    def to_dict(self) -> dict:
        return {
            "function": self.function,
            "results": [
                {"type": t, "value": json_value(v, t)} for v, t in zip(self.values, self.types)
            ],
            "stats": self.stats.to_dict(),
        }


class CommandResult(
    namedtuple(
        "CommandResult",
        "exit_code stats stdout stderr guest_status",
        defaults=(
            None,
            None,
            None,
        ),
    )
):
    # exit_code: int  what wasmsbx exits with (errors.guest_exit_code of the status)
    # stats: RunStats
    # stdout: Optional[bytes]
    # stderr: Optional[bytes]
    # guest_status: Optional[int]  the status the guest gave proc_exit (a u32), or 0
    __slots__ = ()

    @classmethod
    def of_status(
        cls, status: int, stats: Any, stdout: Optional[bytes], stderr: Optional[bytes]
    ) -> CommandResult:
        """The result of a command whose guest gave ``status`` (a module's proc_exit, a
        component's wasi:cli/exit): folded into an exit code as README, Exit codes, says,
        the status kept whole for the warning and ``--json``. One place for both kinds:
        a component's status went through raw (``exit-with-code(130)`` was exit 130,
        posing as Ctrl-C, with no warning: red team round 76)."""
        status &= 0xFFFFFFFF
        return cls(errors.guest_exit_code(status), stats, stdout, stderr, status)

    def to_dict(self) -> dict:
        status = self.exit_code if self.guest_status is None else self.guest_status
        return {
            "exit_code": self.exit_code,
            "exit_source": "guest",  # errors say "wasmsbx" (see cli.report)
            "guest_status": status,
            "stats": self.stats.to_dict(),
        }


# ---------------------------------------------------------------------------- the sandbox


def find_signature(export_list: Sequence[Any], func: str, module_name: str) -> Signature:
    """The signature of exported function ``func``; a UsageError that suggests a name if not."""
    if not isinstance(func, str):  # (5, None: a TypeError from difflib, red team 148)
        raise errors.UsageError(
            f"a function is named by a string, not {type(func).__name__}",
            hint=exports_hint(export_list),
        )
    for export in export_list:
        if export.name == func:
            if export.kind != "func":
                raise errors.UsageError(
                    f"export {func!r} is a {export.kind}, not a function",
                    hint=exports_hint(export_list),
                )
            if export.signature is None:  # its type index resolves to nothing
                raise errors.ModuleError(
                    f"{module_name}: export {func!r} has no valid function type "
                    "(the module is invalid: a missing or short type section)",
                    hint="rebuild the module; wasm-validate says where",
                )
            return export.signature
    close = errors.closest(func, (e.name for e in export_list if e.kind == "func"))
    hint = f"did you mean '{errors.inert(close)}'? " if close else ""
    problem = errors.UsageError(
        f"{module_name} has no export named {errors.quoted(func)}",
        hint=hint + exports_hint(export_list),
        function=func,
    )
    # (whether the module exports _start: `wasmsbx run` then says the arguments go after
    # --, from what was read here within the run's limits, not from a second read)
    problem.exports_start = any(e.name == "_start" for e in export_list)
    raise problem


def exports_hint(export_list: Sequence[Any]) -> str:
    funcs = [_call_form(e.name, e.signature) for e in export_list if e.kind == "func"]
    if not funcs:
        return "the module exports no functions"
    return "exported functions: " + ", ".join(funcs[:12]) + (" ..." if len(funcs) > 12 else "")


def _call_form(name: str, sig: Optional[Signature]) -> str:
    """ "add(i32, i32) -> i32", "free(i32) -> ()": the parameters always in parentheses.
    The name is the module's: escaped and cut (errors.inert), as it goes into a hint."""
    name = errors.inert(name)
    if sig is None:
        return f"{name}(?)"
    results = sig.results[0] if len(sig.results) == 1 else f"({', '.join(sig.results)})"
    return f"{name}({', '.join(sig.params)}) -> {results}"


def check_interface(
    wasm: bytes,
    module_name: str,
    kind: str = "call",
    function: Optional[str] = None,
    args: Optional[Sequence[Any]] = None,
    provided: Any = frozenset(),
    interface: Any = None,
    imports_checked: bool = False,
) -> None:
    """Refuse, from the module's bytes and before anything is compiled, a run that cannot
    work: a command without ``_start``, a call to a missing export or with arguments its
    signature refuses, imports the sandbox does not provide (WASI preview1 functions of
    the right type are the only imports it has). Compiling a 99 MB module only to learn
    it has no ``_start`` took 199 s of CPU and wrote a 272 MB cache entry (issue #13).
    ``provided``: (module, name) pairs the caller grants as host imports, or ``all`` for
    a module of a linked group (the group's runtime checks its imports when it links).
    ``interface``: the module's, when the caller has it (runner.shared) already;
    ``imports_checked``: its imports passed this check before, with nothing provided."""
    if interface is None:
        from ..wasm.facts import FactsError, read_interface

        try:
            interface = read_interface(wasm)
        except FactsError:
            return  # the runtime gives the precise error when it compiles
    # The common cases read rows: a record's tuples (native.recorded.RecordedInterface,
    # not built into objects) or the model's namedtuples, whose fields are in the same
    # places (Import: module, name, kind, type, ...; Export: name, kind, ...).
    recorded = getattr(interface, "raw_imports", None) is not None
    if provided is not all and not imports_checked:
        if provided:
            imports = [i for i in interface.imports if (i.module, i.name) not in provided]
            _check_imports(imports)
        elif not _provided_wasi(interface.raw_imports if recorded else interface.imports):
            _check_imports(interface.imports)
    if kind != "command" and function is None:
        return  # nothing else to check (a sandbox per tenant stops here)
    if kind == "command" and any(
        e[0] == "_start" and e[1] == "func"
        for e in (interface.raw_exports if recorded else interface.exports)
    ):
        return  # (the common case: no export list built)
    exports = [
        ExportInfo(e.name, e.kind, Signature(e.type.params, e.type.results))
        if e.kind == "func" and e.type is not None
        else ExportInfo(e.name, e.kind)
        for e in interface.exports
    ]
    if kind == "command":
        start = next((e for e in exports if e.name == "_start"), None)
        if start is None or start.kind != "func":
            raise errors.UsageError(
                f"{module_name} has no _start export, so it cannot run as a command",
                hint=exports_hint(exports) + " (name one to call it)",
            )
    elif function is not None:
        sig = find_signature(exports, function, module_name)
        if args is not None:
            parse_args(function, sig, args)


def _provided_wasi(imports: Sequence[Any]) -> bool:
    """Whether every import is a WASI preview1 function of the type the sandbox provides:
    one set lookup each (the common case, on every sandbox). ``imports``: rows of
    (module, name, kind, type, ...): model Imports, or a record's tuples (native.recorded;
    a FuncType equals its (params, results) tuple). False when unsure (a type with
    lists): _check_imports's loop then decides."""
    wasi = _WASI or _import_wasi()
    provided, preview1 = wasi.PROVIDED, wasi.PREVIEW1
    try:
        for i in imports:
            if not (i[2] == "func" and i[0] == preview1 and (i[1], i[3]) in provided):
                return False
    except TypeError:  # (an unhashable type: the loop compares them as tuples)
        return False
    return True


def _check_imports(imports: Sequence[Any]) -> None:
    """LinkError naming each import the sandbox cannot provide, by its kind."""
    wasi = _WASI or _import_wasi()
    if _provided_wasi(imports):
        return
    missing: list = []
    names: list = []
    for imp in imports:
        known = wasi.BY_NAME.get(imp.name) if wasi.is_wasi_module(imp.module) else None
        same = imp.type is None or (
            known is not None
            and tuple(imp.type.params) == known.params
            and tuple(imp.type.results) == known.results
        )
        if imp.kind == "func" and known is not None and same:
            continue  # provided (the common case, on every sandbox: no label built)
        # Names are the module's bytes: control characters are shown escaped, so the
        # error stays one line (a flipped byte made "\nasi_snapshot_preview1").
        label = f"{errors.inert(imp.module)}.{errors.inert(imp.name)}"
        if imp.kind != "func":
            missing.append(f"{imp.kind} {label}")  # memory, table, global, tag
        elif known is None:
            missing.append(f"function {label}")
        else:
            missing.append(
                f"function {label} with type {imp.type} (WASI preview1 has {known.signature})"
            )
        names.append(f"{imp.module}.{imp.name}")
    if missing:
        what = ", ".join(sorted({m.split(" ", 1)[0] for m in missing}))
        raise errors.LinkError(
            f"module imports what the sandbox does not provide ({what}): "
            + ", ".join(missing[:8])
            + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""),
            hint="wasmsbx provides WASI preview1 functions only (wasi_snapshot_preview1); "
            "rebuild the module without these imports",
            imports=names,
        )


_WASI: Any = None  # wasm.wasi, imported when a module's imports are first checked


def _import_wasi() -> Any:
    global _WASI
    from ..wasm import wasi

    _WASI = wasi
    return wasi


def limits_from(policy: policy_mod.Policy) -> Limits:
    """The policy's limits. One object for equal values: Limits is a tuple, so
    sandboxes under the same limits share it (one object fewer per sandbox for the
    garbage collector to walk: 100,000 sandboxes, README "Density")."""
    v = policy.values
    key = (
        v["limits.memory"],
        v["limits.timeout"],
        v["limits.fuel"],
        v["limits.stack"],
        v["limits.table_elements"],
        v["limits.instances"],
        v["limits.output"],  # 0 is a limit too: the guest may write nothing
    )
    try:
        found = _LIMITS.get(key)
    except TypeError:  # (an unhashable value: the backend says what is wrong with it)
        return Limits(*key)
    if found is None:
        if len(_LIMITS) >= 64:
            _LIMITS.clear()
        found = _LIMITS[key] = Limits(*key)
    return found


_LIMITS: dict = {}  # limits_from's values -> their Limits


def check_stdio(policy: policy_mod.Policy, inputs: Sequence[Any]) -> policy_mod.Policy:
    """The policy's stdio paths, before any work: an output the guest cannot write, or
    must not (a directory, a block device, a link to nothing, the module or the policy
    itself: a discovered sandbox.toml must not turn the guest's output into a file
    clobberer), and a stdin that cannot be read are errors (exit 105), as for ``-o``.

    Returns the policy to use from now on: a relative stdio path is pinned to the folder
    it was checked in (a copy of ``policy`` if any is relative), so a ``chdir`` before the
    next instance opens it cannot move it past these checks."""
    v = policy.values
    special = SPECIAL_STDIO
    if (
        v["stdio.stdin"] in _STDIN_WORDS
        and v["stdio.stdout"] in special
        and v["stdio.stderr"] in special
    ):
        return policy  # no paths: nothing below applies (the usual case, for every sandbox made)
    policy_mod.recheck_confined(policy)  # (a found policy's: still where they were checked)
    for key in ("stdio.stdin", "stdio.stdout", "stdio.stderr"):
        target = v[key]
        words = _STDIN_WORDS if key == "stdio.stdin" else SPECIAL_STDIO
        if isinstance(target, str) and target not in words:
            _refuse_guest_writable(policy, key, target)
    # A module given as text ("m.wasm/", "m.wasm/.") is read through its Path, which drops
    # a trailing "/" or "/.": compared as that Path, so its text (which stat() refuses:
    # ENOTDIR) cannot hide the module from the check below (red team round 8)
    inputs = [Path(item) if isinstance(item, str) else item for item in inputs]
    for key in ("stdio.stdout", "stdio.stderr"):
        target = v[key]
        if isinstance(target, str) and target not in SPECIAL_STDIO:
            from ..outfile import check_output

            check_output(target, [*inputs, getattr(policy, "source", None)])
    target = v["stdio.stdin"]
    if isinstance(target, str) and target not in _STDIN_WORDS:
        try:
            info = os.stat(target)
        except OSError as exc:
            raise errors.InputError(
                f"{target or repr(target)}: cannot read the guest's stdin (stdio.stdin): "
                f"{exc.strerror}",
                path=target,
            ) from None
        if stat.S_ISDIR(info.st_mode):
            raise errors.InputError(
                f"{target}: is a directory, not a file for the guest's stdin (stdio.stdin)",
                path=target,
            )
    return _pin_stdio(policy)


def _pin_stdio(policy: policy_mod.Policy) -> policy_mod.Policy:
    """``policy``, or a copy whose relative stdio paths are joined to the working folder
    (joined, not normalised: ``a/../x`` must keep meaning what the kernel makes of it)."""
    v = policy.values
    relative = {
        key: v[key]
        for key in ("stdio.stdin", "stdio.stdout", "stdio.stderr")
        if isinstance(v[key], str)
        and v[key] not in (_STDIN_WORDS if key == "stdio.stdin" else SPECIAL_STDIO)
        and not os.path.isabs(v[key])
    }
    if not relative:
        return policy
    here = os.getcwd()
    pinned = policy.copy()  # (what it came from and is confined to, too)
    for key, text in relative.items():
        pinned.values[key] = os.path.join(here, text)
    return pinned


def _identity(path: str) -> Any:
    """(device, inode) of the folder at ``path``, or None."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


def _refuse_guest_writable(policy: policy_mod.Policy, key: str, target: str) -> None:
    """A stdio file must not lie in, or be reached through, a folder the guest can write:
    every new instance opens it again (a batch after a trap, ``--fresh``, a Sandbox from
    Python), and by then the guest may have replaced it, or a folder on its way, with a
    link to anywhere (``~/.bashrc`` for its stdout, a private key for its stdin). Every
    folder the open passes through counts, as the kernel walks it: ``a/../log.txt`` with
    ``a`` a link into a granted folder passes through that folder (on 0b0f967 a lexical
    ``..`` hid it, and the guest could swap a folder there for a link to anywhere)."""
    grant = writable_grant_on_way(policy, target)
    if grant is not None:
        raise errors.PolicyError(
            f"{key} {target} lies in a folder the guest can write "
            f"(filesystem.read_write {grant.host}): the guest could replace it with "
            "a link to any file of yours before the next instance opens it",
            hint="name a stdio file outside the folders granted read-write",
            key=key,
        )


def writable_grant_on_way(policy: policy_mod.Policy, target: str) -> Any:
    """The read-write grant of ``policy`` that ``target`` lies in or is reached through
    (every folder the kernel walks to open it: ``trustdir.walked``), or None. Also used for the
    files a run reads or keeps (cli/crossed.py refuse_in_grants)."""
    writable = [g for g in policy.grants if g.writable]
    if not writable:
        return None
    from ..native.trustdir import within

    # A granted folder seen at another path (a bind mount of it) is the same folder.
    granted = {_identity(g.host): g for g in writable}
    granted.pop(None, None)
    path = target if os.path.isabs(target) else os.path.join(os.getcwd(), target)
    from ..native.trustdir import walked

    for real in walked(path):
        for grant in writable:
            if within(real, grant.host) or granted.get(_identity(real)) is grant:
                return grant
    return None


SPECIAL_STDIO = policy_mod.OUTPUT_WORDS
_STDIN_WORDS = policy_mod.STDIN_WORDS
_BYTES_PATH = Path("<bytes>")  # the name of a module given as bytes (one object for all)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _read_known(path_text: str, digest: str) -> bytes:
    """The bytes of a module file the cache knew (native.located), read when something
    needs them: they must still be the module of ``digest``."""
    from ..native.artifact import digest as blake3_digest

    data = read_file(Path(path_text))
    if blake3_digest(data) != digest:
        raise errors.ModuleError(
            f"{path_text}: the module file changed while it was in use",
            hint="run it again (the new file is read then)",
            path=path_text,
        )
    return data


_CACHE: Any = None  # native.cache, imported when a sandbox first uses the cache


def _import_cache() -> Any:
    global _CACHE
    from ..native import cache

    _CACHE = cache
    return cache


def _absolute(path: Path) -> str:
    """``path`` made absolute the way the kernel resolves it: joined to the working
    folder, never normalized (os.path.abspath drops ``link/..`` as text, naming another
    file than the kernel opens when ``link`` is a symbolic link)."""
    text = os.fspath(path)
    return text if os.path.isabs(text) else os.path.join(os.getcwd(), text)


def _grants_storage(imports: Optional[dict]) -> bool:
    """Whether host imports grant memories or tables (see _member in the backends)."""
    if not imports:
        return False
    from ..host import Memory, Table

    return any(
        isinstance(item, (Memory, Table))
        for names in (imports or {}).values()
        for item in names.values()
    )


_NO_CALLERS: Mapping = MappingProxyType({})  # (Sandbox._callers until a caller is made)
_STDIO_KEYS = ("stdio.stdin", "stdio.stdout", "stdio.stderr")


class _Plan:
    """How a sandbox was made from bytes with nothing else given (``Sandbox(module,
    policy)``, one per tenant: issue #16), so that the next one of the same bytes
    object under equal policy values sets its attributes from here instead of going
    through every step again. The same goes for a module given by its path, when the
    file is small enough to be read whole before __init__ (runner.preread; not one the
    disk cache holds): the plan is the path's, followed while the file's content is the
    content the plan was made of (compared byte for byte: the file is read by every
    sandbox, as before). The steps depend only on the module's bytes (immutable),
    the policy's values (compared in full with a copy kept here) and what the process
    holds for ever (an engine per configuration is never dropped: backends/wasmtime
    ``engine_for``). Policy objects are not compared: a policy per tenant, each with
    the same values or one of a few, follows the plan its values have. Not for anything
    a step reads from outside: a policy with grants (the import-path guard looks at
    folders) or with a stdio path (checked on disk), nor for a backend whose engines are
    not shared.

    Kept in runner.shared (``keep_plan``): for each of the last ``PLANNED_MODULES``
    bytes objects or paths, its last ``PLANS_PER_MODULE`` plans (one per distinct set of
    values), the most recent first. A plan holds its bytes and compiled module alive, as
    the other shared tables do; ``shared.clear()`` drops them all."""

    __slots__ = (
        "data",
        "path",
        "name",
        "values",
        "source",
        "prepared",
        "selection",
        "backend_name",
        "compiler",
        "engine",
        "cache_state",
        "counted",
        "module",
        "export_list",
        "use_cache",
    )

    @classmethod
    def remember(
        cls, box: Sandbox, module: Any, data: bytes, policy: policy_mod.Policy, values: dict
    ) -> None:
        """A plan from ``box``, just made of ``module`` (bytes ``data``, or a path whose
        file's content was ``data``) under ``policy`` the whole way, if
        the next sandbox would take the same steps to the same objects: a module held in
        the process (compiled here, or given by the disk cache: "memory" from the second
        sandbox on), none of the reads from outside named above. ``values``: the policy's
        values as they were when ``box`` began (``policy_mod.copy_values``).

        Another thread may change the policy while the steps run, and change it back
        (red team rounds 88 and 89: a plan paired the values with the engine of others,
        and every tenant with those values followed it). So what the steps gave is
        checked against what ``values`` give: the engine, the backend, the module size
        limit, the cache; anything else makes no plan."""
        if values != policy.values:
            return
        state = box.cache_state
        if (
            state not in ("memory", "skip", "off")
            or box.artifact is not None
            or box._prepared is None
            or box.policy is not policy
            or values["filesystem.read_only"]
            or values["filesystem.read_write"]
            or values["stdio.stdin"] not in _STDIN_WORDS
            or any(values[key] not in SPECIAL_STDIO for key in _STDIO_KEYS)
            or box._warnings
            or not getattr(box.engine, "shared", False)
            or not _made_as(box, values)
        ):
            return
        plan = cls()
        plan.data = data
        plan.path = module if type(module) is str else None
        plan.name = box._name if plan.path is not None else None
        plan.values = values
        plan.source = (policy.source, policy.confined)
        plan.use_cache = box.use_cache
        plan.prepared = box._prepared
        plan.selection = box.selection
        plan.backend_name, plan.compiler = box.backend_name, box.compiler
        plan.engine = box.engine
        plan.cache_state = state
        plan.counted = state == "memory"
        plan.module = box.module
        plan.export_list = box.export_list
        shared.keep_plan(plan)


def _made_as(box: Sandbox, values: dict) -> bool:
    """Whether ``box``'s backend, engine, cache state and size check are what ``values``
    (a copy, which no other thread changes) give (see _Plan.remember)."""
    from ..backends import select

    limit = values["limits.module_size"]
    if limit is not None and box._size > limit:
        return False
    if not values["runtime.cache"]:
        state = "off"
    elif box._size < values["runtime.cache_min_size"]:
        state = "skip"
    else:
        state = "memory"
    if box.cache_state != state or box.use_cache != bool(values["runtime.cache"]):
        return False
    found, _ = select.choose(values, box._features, "call", None)
    if found != (box.backend_name, box.compiler):
        return False
    options = engine_options(policy_mod.Policy(values), box.compiler)
    return backend_get(box.backend_name).engine(options) is box.engine


# Policy values the steps of __init__ do not read once the module is held (an instance
# and its calls read them, from the sandbox's own policy): a plan made under one value
# is followed under another. tests/test_sandbox_plan.py checks __init__ reads none.
_RUN_ONLY = frozenset(
    {"limits.timeout", "limits.output", "limits.compile_timeout", "env.inherit", "env.set"}
)
# Values the steps read only as set or not (fuel metering compiled in, the capabilities
# the backend must have); the amounts are the instance's.
_SET_ONLY = frozenset({"limits.fuel", "limits.table_elements", "limits.instances"})


def _same_steps(held: dict, values: dict) -> bool:
    """Whether __init__'s steps under ``values`` are those taken under ``held`` (a plan's):
    equal but for values the steps do not read (_RUN_ONLY), amounts of limits they read
    as set or not (_SET_ONLY), and ``limits.memory`` under the default memory layout
    (the engine reserves the same for every limit there; "dense" sizes its reservation
    from it)."""
    if held.keys() != values.keys():
        return False
    if len(values) == len(_STEP_KEYS) + len(_OTHER_KEYS):  # the schema's keys: compared
        # in C (a policy per tenant follows its plan in 1 µs, not 2: issue #16)
        try:
            if _steps(held) != _steps(values):
                return False
            for key in _SET_ONLY:
                if (held[key] is None) != (values[key] is None):
                    return False
            if held["limits.memory"] == values["limits.memory"]:
                return True
            return values["runtime.memory_layout"] == "fast"
        except KeyError:  # (other keys than the schema's: compared one by one below)
            pass
    for key, value in values.items():
        was = held[key]
        if was == value or key in _RUN_ONLY:
            continue
        if key in _SET_ONLY and (was is None) == (value is None):
            continue
        if key == "limits.memory" and values["runtime.memory_layout"] == "fast":
            continue
        return False
    return True


_OTHER_KEYS = _RUN_ONLY | _SET_ONLY | {"limits.memory"}
_STEP_KEYS = tuple(key for key in policy_mod.KEYS if key not in _OTHER_KEYS)
_steps = operator.itemgetter(*_STEP_KEYS)  # a plan's values that must be equal


class _lazy:
    """``functools.cached_property`` without ``instance.__dict__``: the value is set as
    an ordinary attribute (which then hides this descriptor). Asking for ``__dict__``
    makes CPython 3.11+ give the instance a full dict instead of its compact inline
    values: every Sandbox carried one (0.6 KiB and one more object for the garbage
    collector per sandbox, issue #16), through ``_name`` or ``path``. No lock either
    (3.11's cached_property takes one lock for every instance)."""

    def __init__(self, func: Callable) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: Optional[type] = None) -> Any:
        if instance is None:
            return self
        value = self.func(instance)
        setattr(instance, self.name, value)
        return value


class Sandbox:
    """A module loaded under a policy, ready to call.

    >>> box = Sandbox("examples/add.wat")
    >>> box.call("add", 5, 3)
    8

    ``function`` (and its ``args``), when given, are checked against the module's
    interface before anything is compiled, like ``_start`` for ``kind="command"``.

    ``module``: a path, or bytes (a binary, WAT text or a precompiled artifact, which is
    verified before it loads). ``imports``: host imports the caller grants
    (``{module: {name: fn | wasmsbx.Global | Memory | Table}}``, see wasmsbx.host).
    ``group``/``name``: used by :class:`Group` (linking). The instance is created on
    first use; ``close()`` (or ``with``) releases it.

    This is the core class: ``batch``, ``stream`` and ``audit`` are added by the public
    ``wasmsbx.Sandbox`` (wasmsbx.runner), which also picks ``ComponentSandbox`` for a
    WebAssembly component; the core imports none of those features.
    """

    # Attributes most sandboxes leave at None are class defaults, set on an instance only
    # when they differ: CPython (3.11+) keeps an instance's attributes in a compact array
    # shared with its class while the class's instances use at most 29 names, and past
    # that gives every instance a full dict (1.3 KiB more per sandbox, and more work for
    # the garbage collector: tests/test_density.py counts them).
    worker_kind: Any = None  # what a batch worker rebuilds (see runner.batch._worker_box)
    _store: Any = None  # the cache store this sandbox's module facts came through
    _known: Any = None  # shared.Prepared of a module file the cache knows (not yet read)
    _wasm: Optional[bytes] = None
    _source: Optional[tuple] = None  # (path, stat, time) of the read, for its memo
    _given: Optional[bytes] = None  # the bytes a sandbox made from bytes was given
    _functions: Optional[dict] = None  # export name -> Function, made on first use
    _keeps_functions = True  # whether box["f"] keeps its Function (subclasses may not)
    _group: Optional[Group] = None
    link_name: Optional[str] = None
    deadline: Optional[float] = None
    progress: Any = None  # label -> context manager shown around long compiles
    cache_dir: Optional[str] = None
    artifact: Any = None
    recorded_exports: Optional[list] = None
    _instance: Any = None
    _warnings: Optional[list] = None
    selection: Any = None  # select.Selection, once scored
    _spec: Optional[str] = None  # the backend asked for, if any
    use_cache = True  # runtime.cache, or use_cache= (a cluster's workers follow it)
    # The attribute names entered for each subclass as it is made (wasmsbx.compact: each
    # class has a table of its own; the public wasmsbx.Sandbox and the user's own
    # subclasses of it); SANDBOX_NAMES, set below. None: a subclass that sets other names.
    _compact_names: Optional[tuple] = None
    # Whether __init__ may follow a policy's _Plan: this class's steps are the ones a plan
    # stands for. A subclass may override a step, so it does not unless it says so.
    _plannable = True
    # The instance close() let go of while a call of it ran on that thread (from a host
    # function of the call), until the next instance is made: see _refuse_mid_call.
    _closed_mid_call: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_plannable" not in cls.__dict__:
            cls._plannable = False
        if cls._compact_names:
            _compact.reserve(cls, cls._compact_names, strict=False)

    def __init__(
        self,
        module: Union[str, os.PathLike, bytes, bytearray, memoryview],
        policy: Optional[policy_mod.Policy] = None,
        *,
        imports: Optional[Mapping[str, Mapping[str, Any]]] = None,
        backend: Optional[str] = None,
        kind: str = "call",
        use_cache: Optional[bool] = None,
        artifact: Optional[str] = None,
        cache_dir: Optional[str] = None,
        progress: Any = None,
        function: Optional[str] = None,
        args: Optional[Sequence[Any]] = None,
        deadline: Optional[float] = None,
        group: Optional[Group] = None,
        name: Optional[str] = None,
    ) -> None:
        """``deadline``: a ``time.monotonic()`` instant the whole run, compiling included,
        must end by (``wasmsbx run`` passes start + limits.timeout when the timeout is set
        by a flag or the policy). Without it, compiling is bounded by
        limits.compile_timeout, and each call by limits.timeout."""
        # What the public Sandbox's __new__ read for this __init__ (first: nothing here
        # may leave it for another sandbox to take)
        read = _PREREAD_SLOT.__dict__.pop("read", None) if _PREREAD_SLOT.__dict__ else None
        # A sandbox per tenant: a module (bytes, or a small file's content) and policy
        # values a sandbox was made of before, with nothing else given (see _Plan).
        planned = (
            policy is not None
            and self._plannable
            and imports is None
            and backend is None
            and kind == "call"
            and use_cache is None
            and artifact is None
            and cache_dir is None
            and progress is None
            and function is None
            and args is None
            and deadline is None
            and group is None
            and name is None
        )
        content: Any = None
        if planned:
            if type(module) is bytes and read is None:
                content = module
            elif type(module) is str and read is not None:
                # (the file as the public Sandbox just read it, if __init__ would use those
                # bytes: _preread_of)
                owner, given, data = read
                if owner() is self and given is module:
                    v = policy.values
                    if not v["runtime.cache"] or len(data) < v["runtime.cache_min_size"]:
                        content = data
            if content is None:
                planned = False
            else:
                for plan in shared.plans(module):
                    if (plan.data is content or plan.data == content) and self._from_plan(
                        plan, policy
                    ):
                        return
                values = policy_mod.copy_values(policy.values)  # (what the steps follow)
        if group is not None:
            self._group = group
            policy = group.policy
        if name is not None:
            self.link_name = name
        from_bytes = isinstance(module, (bytes, bytearray, memoryview))
        if from_bytes:
            self.path = Path(name) if name else _BYTES_PATH
        elif type(module) is str:  # (its Path is made when asked for: see path)
            self._path_text = module
            self._name = _file_name(module)
        else:
            self.path = Path(module)  # type: ignore[arg-type]
        if deadline is not None:
            self.deadline = deadline
        self.policy = policy if policy is not None else policy_mod.discover()
        self.imports = _normalize_imports(imports)
        self.timings: dict = {}
        if progress is not None:
            self.progress = progress
        if cache_dir is not None:
            self.cache_dir = cache_dir
        self.policy = check_stdio(self.policy, [self._path_text or self.path, artifact])
        if self.policy.grants:  # a folder the guest may write on the import path?
            from .importpath import guard

            guard(self.policy.grants, getattr(self, "is_component", False))
        with bounded_reads(self.policy, getattr(self, "deadline", None), self._name):
            started = time.perf_counter()
            cache_wanted = self.policy.values["runtime.cache"] if use_cache is None else use_cache
            self._prepared: Any = None
            # A module file the cache knows (native.located) is not read nor hashed: its
            # digest, facts and native code come from the cache, all authenticated there.
            # Not with host memories or tables: they make the backend compile the module
            # again with per-memory caps (limits.Budget), from its bytes.
            fast = cache_wanted and not from_bytes and not artifact and group is None
            fast = fast and not _grants_storage(self.imports)
            given = self._preread_of(read, module, cache_wanted) if read is not None else None
            known = self._known_file() if fast and given is None else None
            if known is not None:
                data = None
                size = known.size
            elif given is not None:
                data = read_file(self._read_target(), given=given)
                size = len(data)
            else:
                data = bytes(module) if from_bytes else self._read(cache_wanted and not artifact)
                size = len(data)
            check_size(size, self.policy.values["limits.module_size"], self._name)
            self.wasm = None
            if data is not None and data[:1] == ARTIFACT_FIRST_BYTE and artifact is None:
                # (standalone artifacts: kept out of the hot path)
                from ..native import artifact as aot

                self.artifact = aot.open_for(self, data, str(self.path))
            if self.artifact is None:
                if known is not None:
                    self._prepared = known
                else:
                    # Translated and parsed once per process for the same bytes
                    # (runner.shared); a module the disk cache will hold is not parsed where
                    # its record is found.
                    learn = self._learn if cache_wanted else None
                    self._prepared = shared.prepared(data, self._module_bytes, learn)
                self._known = known  # (after self.wasm = None: the property reads through it)
                if known is None:
                    self.wasm = self._prepared.wasm
                if self._prepared.interface is not None:
                    # Before any compile or cache write: a run that cannot work fails now.
                    provided = (
                        all
                        if group is not None
                        else frozenset((m, n) for m, names in self.imports.items() for n in names)
                    )
                    alone = provided == frozenset()  # WASI only: the same answer every time
                    check_interface(
                        b"",  # (unread: the interface is given)
                        self._name,
                        kind,
                        function,
                        args,
                        provided,
                        interface=self._prepared.interface,
                        imports_checked=alone and self._prepared.imports_ok,
                    )
                    if alone:
                        self._prepared.imports_ok = True
            if from_bytes:  # (batch workers rebuild the sandbox from them: runner.batch)
                self._given = data if self._prepared is None else self._prepared.data
            if artifact is not None:
                from ..native import artifact as aot

                self.artifact = aot.open_for(self, None, artifact)
            self.timings["read"] = time.perf_counter() - started
            epochless = False
            if self.artifact is not None and self.artifact.fingerprint.get("epoch") is False:
                from ..native import artifact as aot

                epochless = aot.epochless(self, group)  # or refused (a warning, or the error)
            if group is not None and group.engine is not None:
                self.backend_name, self.compiler = group.backend_name, group.compiler
                self.engine = group.engine
            else:
                if (self.imports or group is not None) and backend is None:
                    backend = _linking_backend(self.policy)
                self.backend_name, self.compiler = self._choose(backend, kind)
                options = engine_options(self.policy, self.compiler)
                if epochless and self.artifact is not None:  # (_choose may have refused it)
                    options = options._replace(epoch=False)
                self.engine = backend_get(self.backend_name).engine(options)
                if group is not None:
                    group._adopt(self)
            if not cache_wanted:  # (a cluster's workers follow the same choice)
                self.use_cache = False
            self.cache_state = "off"
            self.module = None
            if self.artifact is not None:
                from ..native import artifact as aot

                self.module = aot.load_for(self)
            if self.module is None:
                if epochless:  # refused after all: the module compiles with epoch checks
                    self.engine = backend_get(self.backend_name).engine(
                        engine_options(self.policy, self.compiler)
                    )
                self.module = self._compile(cache_wanted)
            if self._source is not None:  # (for the source memo, written by now if ever)
                self._source = None
            if self._known is not None:  # (a file the cache knows: the facts are all it needs)
                self.engine.describe(self.module, None, self._known.facts)
            elif self.wasm is not None:  # native code from the cache: the totals need the layout
                self.engine.describe(self.module, self.wasm, getattr(self._prepared, "facts", None))
            self.export_list = self._interface()
            if planned:
                _Plan.remember(self, module, content, policy, values)

    def _from_plan(self, plan: _Plan, policy: policy_mod.Policy) -> bool:
        """This sandbox made as ``plan`` says, if the policy's values are still the ones
        it was made under (False: they changed; the whole way is taken, and makes a new
        plan). Sets what __init__ sets, in its order."""
        exact = plan.values == policy.values
        if not (exact or _same_steps(plan.values, policy.values)):
            return False
        if plan.source != (policy.source, policy.confined):
            return False
        started = time.perf_counter()
        module = plan.module
        if plan.counted:  # (a module the disk cache gave: its use is counted, see loaded)
            module = shared.loaded(plan.engine, plan.prepared)
            if module is not plan.module:  # (no longer held here: loaded again)
                return False
        prepared = plan.prepared
        if plan.path is None:
            self.path = _BYTES_PATH
        else:
            self._path_text, self._name = plan.path, plan.name
        self.policy = policy
        self.imports = {}
        self.timings = {}
        self._prepared = prepared
        self.wasm = prepared.wasm
        if plan.path is None:
            self._given = prepared.data
        if exact and plan.selection is not None:  # (its reasons name the policy's values)
            self.selection = plan.selection
        self.backend_name, self.compiler = plan.backend_name, plan.compiler
        self.engine = plan.engine
        if not plan.use_cache:
            self.use_cache = False
        self.cache_state = plan.cache_state
        self.module = module
        self.export_list = plan.export_list
        self.timings["read"] = time.perf_counter() - started
        if plan.cache_state != "memory":  # (compiled in this process: held, not compiled)
            self.timings["compile"] = 0.0
        return True

    _path_text: Optional[str] = None  # the module's path as given, if a str
    # call(): export name -> (instance, its caller), a dict of the sandbox's own once a
    # caller is made (at the second call); the name of the export called once before.
    _callers: Mapping = _NO_CALLERS
    _called_once: Optional[str] = None

    @property
    def warnings(self) -> list:
        """Cache and artifact problems worked around (the list is made when first asked
        for: most sandboxes have none)."""
        if self._warnings is None:
            self._warnings = []
        return self._warnings

    @warnings.setter
    def warnings(self, value: list) -> None:
        self._warnings = value

    def _module_bytes(self, data: bytes) -> bytes:
        """``data`` as a binary module (WAT translated, within limits.compile_timeout and
        the run's deadline), named by the module's path."""
        if data[:4] == b"\0asm":
            return data
        from ..wasm.source import text_bound

        bound = text_bound(self.policy, getattr(self, "deadline", None), self._name)
        return module_bytes(data, self.path, *bound)

    @_lazy
    def path(self) -> Path:
        """The module's path (for bytes: ``name``, or ``<bytes>``)."""
        return Path(self._path_text)  # (assigned in __init__ unless given as a str)

    @_lazy
    def _name(self) -> str:
        """The module's file name, for messages and cache records (``path.name``; set
        in ``__init__`` for a path given as text)."""
        text = self._path_text
        return self.path.name if text is None else _file_name(text)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def wasm(self) -> Optional[bytes]:
        """The module's binary (None for a standalone artifact). A module file the cache
        knows is read only when this is first asked for (and checked against its digest)."""
        if self._known is not None:
            return self._known.wasm
        return self._wasm

    @wasm.setter
    def wasm(self, value: Optional[bytes]) -> None:
        self._wasm, self._known = value, None

    @property
    def _size(self) -> int:
        return self._known.size if self._known is not None else len(self.wasm or b"")

    def _preread_of(self, read: tuple, module: Any, cache_wanted: bool) -> Optional[bytes]:
        """The bytes the public Sandbox read of ``module`` (runner.preread; ``read``: its
        slot's), if they are this sandbox's and serve: a module too small for the cache
        (one it may hold is read as the cache needs: with the file's identity around
        the read, or not at all if it knows the file)."""
        owner, given, data = read
        if owner() is not self or given is not module:
            return None
        if cache_wanted and len(data) >= self.policy.values["runtime.cache_min_size"]:
            return None
        return data

    def _known_file(self) -> Any:
        """A shared.Prepared for ``self.path`` without reading it, if the cache knows
        the file as it is now (native.located); else None."""
        try:
            text = _absolute(self._path_text or self.path)
            info = os.stat(text)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size < self.policy.values["runtime.cache_min_size"]:
            return None
        cache = _CACHE or _import_cache()
        ident = cache.located.identity(info)
        found = shared.by_file(text, ident)
        if found is not None:
            return found
        got = cache.known_file(self.policy, self.cache_dir, text, info)
        if got is None:
            return None
        digest, facts, self._store = got
        return shared.file_prepared(
            text, ident, digest, facts, functools.partial(_read_known, text, digest)
        )

    def _read(self, remember: bool) -> bytes:
        """The module file's bytes; with ``remember``, also what the file was around the
        read (for its source memo, native.located), if it did not change meanwhile."""
        limit = self.policy.values["limits.module_size"]  # (as it is read: red team 148)
        if not remember:
            return read_file(self._read_target(), limit=limit)
        started = time.time()  # (before the open: a change after it moves the ctime)
        try:
            text = _absolute(self._path_text or self.path)
        except (OSError, ValueError):
            return read_file(self.path, limit=limit)
        # The file the bytes came from, as opened and after the read: not what the path
        # names before and after (a folder on the way can be swapped for the read and
        # back, binding one file's identity to another's module).
        seen: list = []
        data = read_file(self._read_target(), seen=seen, limit=limit)
        # Only for a module the cache will hold (a small one's sandbox would carry a stat
        # result for nothing, and its run import what checks it).
        if len(seen) != 2 or len(data) < self.policy.values["runtime.cache_min_size"]:
            return data
        from ..native.located import identity

        before, after = seen
        same = identity(before) == identity(after) and after.st_size == len(data)
        if stat.S_ISREG(after.st_mode) and same:
            self._source = (text, after, started)
        return data

    def _read_target(self) -> Any:
        """What the module file is read by: the path as given, if text (no Path object
        made: a few µs of every Sandbox(path)), unless it ends in ``/`` or ``/.``, which
        the Path drops (``m.wasm/.`` names m.wasm, as it always has)."""
        text = self._path_text
        return text if text is not None and not text.endswith(("/", "/.")) else self.path

    # --------------------------------------------------------------- choosing
    def _choose(self, backend: Optional[str], kind: str) -> tuple:
        if self.artifact is not None:
            from ..native.artifact import backend_for

            chosen = backend_for(self, backend, kind)
            if chosen is not None:
                return chosen

        spec = backend or self.policy.values["runtime.backend"]
        if backend is not None:
            self._spec = backend
        name, compiler = backend_split(spec)
        if spec != "auto" and len(backend_names()) == 1 and name in backend_names():
            # One backend installed and named: nothing to score, keep start-up lean.
            return name, compiler or backend_get(name).default_compiler
        # The module's features are read only if they can change the choice (select.py);
        # a choice they played no part in is kept for every policy that needs the same
        # capabilities (its scoring table, with the reasons, is made again if asked for:
        # explain).
        from ..backends import select

        found, selection = select.choose(self.policy.values, self._features, kind, backend)
        if selection is not None:
            self.selection = selection
        return found

    def _features(self) -> frozenset:
        from ..wasm.facts import FactsError, read_features

        if self._known is None and self.wasm is None:  # a standalone artifact records them
            return frozenset(self.artifact.header["module"].get("features", ()))
        try:
            return read_features(self.wasm)
        except FactsError:
            return frozenset()  # the runtime will give the precise error

    def explain(self, kind: str = "call") -> Any:
        """The scoring table that chose the backend (computed if it was skipped)."""
        if self.selection is None or not self.selection.features_checked:
            from ..backends import select

            features = self._features()
            self.selection = select.select(self.policy, features, kind, self._spec)
        return self.selection

    # --------------------------------------------------------------- compiling
    def _learn(self, wasm: bytes) -> Optional[tuple]:
        """(digest, facts, recorded) of a module that goes through the disk cache (see
        native.cache.module_facts), else None (its interface is parsed)."""
        if len(wasm) < self.policy.values["runtime.cache_min_size"]:
            return None
        from ..native.cache import module_facts

        digest, facts, recorded, self._store = module_facts(self.policy, self.cache_dir, wasm)
        return digest, facts, recorded

    def _remember(self, prepared: Any) -> None:
        """Record what a run needs to know of the module in the cache, for the next
        process (native.recorded), unless it is recorded there already."""
        cache = _CACHE or _import_cache()
        recorded = cache.recorded
        if self._source is not None and prepared.digest and prepared.data is prepared.wasm:
            if prepared.wasm[:4] == b"\0asm":  # a binary module as the file holds it
                text, info, read_at = self._source
                cache.remember_source(
                    self.policy, self.cache_dir, text, info, prepared.digest, read_at
                )
            self._source = None
        if prepared.recorded:
            return
        if prepared.facts is None:
            from ..wasm.facts import FactsError

            try:
                prepared.facts = recorded.read(prepared.wasm)
            except FactsError:
                return
        digest = prepared.digest or cache.aot.digest(prepared.wasm)
        cache.remember_facts(self.policy, self.cache_dir, digest, prepared.facts)
        prepared.digest, prepared.recorded = digest, True

    def _compile(self, use_cache: bool) -> Any:
        """Compile, or load from the cache: only for modules of runtime.cache_min_size and
        up, since opening the cache costs more than compiling a small module."""
        if use_cache and self._size >= self.policy.values["runtime.cache_min_size"]:
            prepared = self._prepared if getattr(self.engine, "shared", False) else None
            if prepared is not None:
                module = shared.loaded(self.engine, prepared)
                if module is not None:  # loaded or compiled in this process already
                    self.cache_state = "memory"
                    return module
            cache = _CACHE or _import_cache()
            prepared_here = getattr(self, "_prepared", None)  # None for a component
            known = self._known
            outcome = cache.load_or_compile(
                self.engine,
                (lambda: known.wasm) if known is not None else self.wasm,
                self.policy,
                self._name,
                self._compile_now,
                self.cache_dir,
                getattr(prepared_here, "digest", None),
                self._store,
            )
            self.timings.update(outcome.timings)
            if outcome.warnings:
                self.warnings.extend(outcome.warnings)
            self.cache_state = outcome.state
            self.recorded_exports = outcome.exports
            if outcome.state in ("hit", "miss") and prepared_here is not None:
                self._remember(prepared_here)
            if prepared is not None:
                use = None
                if outcome.key is not None and outcome.store is not None:
                    use = (outcome.store, outcome.key, cache._identity(self.engine)[1])
                shared.keep(self.engine, prepared, outcome.module, use)
            return outcome.module
        self.cache_state = "skip" if use_cache else "off"
        started = time.perf_counter()
        # A module compiled in this process for the same engine is shared: a second
        # sandbox of it costs a store and an instance, not a compile (issue #16).
        prepared = getattr(self, "_prepared", None)  # None for a component (its own class)
        if prepared is None or not getattr(self.engine, "shared", False):
            module = self._compile_now(self.wasm)
        else:
            module, _ = shared.compiled(self.engine, prepared, lambda: self._compile_now(self.wasm))
        self.timings["compile"] = time.perf_counter() - started
        return module

    def _interface(self) -> list:
        """Exports with their signatures, read from the binary (see facts.read_interface)."""
        if self._known is None and self.wasm is None:  # a standalone artifact records them
            records = self.artifact.header["module"].get("exports")
            return self.engine.exports(self.module) if records is None else _exports(records)
        if self.recorded_exports is not None:  # a cache entry does too: no parse on a hit
            return _exports(self.recorded_exports)
        prepared = self._prepared
        if prepared is not None:
            if prepared.exports is not None:
                return prepared.exports  # read once per process (runner.shared); never mutated
            interface = prepared.interface
        else:
            from ..wasm.facts import FactsError, read_interface

            try:
                interface = read_interface(self.wasm)
            except FactsError:
                interface = None
        if interface is None:
            return self.engine.exports(self.module)  # the runtime accepted it: ask the runtime
        out = [
            ExportInfo(e.name, e.kind, Signature(e.type.params, e.type.results))
            if e.kind == "func" and e.type is not None
            else ExportInfo(e.name, e.kind)
            for e in interface.exports
        ]
        if prepared is not None:
            prepared.exports = out
        return out

    def _compile_now(self, wasm: bytes) -> Any:
        """Compile within limits.compile_timeout, the timeout and the run's deadline."""
        from ..backends.compiling import READY_BY, compile_bounded, out_of_time, too_slow

        v, name = self.policy.values, self._name
        limit, timeout = v["limits.compile_timeout"], v["limits.timeout"]
        left = limit if self.deadline is None else self.deadline - time.monotonic()
        if limit <= left:
            seconds, error = limit, lambda: too_slow(name, limit)  # exit 117
        else:  # the run's timeout covers compiling: exit 112
            seconds, error = max(0.001, left), lambda: out_of_time(name, timeout, left)
        token = None
        if self.deadline is not None:  # (the run's timeout covers a worker's start too)
            token = READY_BY.set((self.deadline, lambda: out_of_time(name, timeout, left)))
        try:
            if self.progress is None:
                return compile_bounded(self.engine, wasm, seconds, error)
            with self.progress(f"compiling {name}"):
                return compile_bounded(self.engine, wasm, seconds, error)
        finally:
            if token is not None:
                READY_BY.reset(token)

    # --------------------------------------------------------------- calling
    @property
    def exports(self) -> Exports:
        """The exports (a list of ExportInfo); exported functions are also attributes:
        ``box.exports.add(1, 2)``."""
        return Exports(self, self.export_list)

    def __getitem__(self, name: str) -> Function:
        """``box["add"](1, 2)``: an exported function as a callable."""
        functions = self._functions
        function = functions.get(name) if functions is not None else None
        if function is None:
            self.signature(name)  # UsageError (with a suggestion) when there is none
            function = Function(self, name)
            if self._keeps_functions:  # the export list never changes: nothing goes stale
                if functions is None:
                    self._functions = functions = {}
                functions[name] = function
        return function

    def _live(
        self, wasi: Optional[WasiSetup] = None, fresh: bool = False, seconds: Any = None
    ) -> Any:
        """The instance, created on first use (with ``wasi``, if given), once: calls from
        several threads that find none wait for the one that makes it (each made its
        own, and every call but those on the last one made was lost). ``fresh``: a new
        one in any case. ``seconds``: how long a wait for another thread's making may
        take (the call's own timeout; default the policy's)."""
        instance = None if fresh else self._instance
        if instance is None:
            if _WARM_NEEDED and threading.active_count() > 1:
                warm_imports(WARM_IMPORTS)  # (made before the threads came: see warm.py)
            began = time.monotonic()
            with _making(self, seconds or self.policy.timeout):
                instance = None if fresh else self._instance
                if instance is None:
                    seconds = _left(seconds, time.monotonic() - began)  # (after the wait)
                    instance = self._instance = self.instantiate(wasi, seconds)
                    self._forget_callers()  # (a fresh one's: they held the one replaced)
        return instance

    def _forget_callers(self) -> None:
        """Drop the callers ``call`` made (``_caller``): each holds the instance it was
        made for, and with it the store and its memories. Red team round 83: close() let
        its instance go but the callers kept it, 20 closed sandboxes of 32 MiB each held
        654 MB, and ``fresh=True`` kept the instance it replaced the same way."""
        if self._callers is not _NO_CALLERS:
            self._callers = _NO_CALLERS

    def memory(self, name: str = "memory") -> Memory:
        """The exported memory ``name``: read, write, size, grow (see Memory)."""
        try:
            if not any(e.name == name and e.kind == "memory" for e in self.export_list):
                raise KeyError(name)
            instance = self._live()
            access = instance.memory(name)
        except NotImplementedError:
            raise errors.BackendUnavailable(
                f"the {self.backend_name} backend cannot reach guest memory from Python"
            ) from None
        except (IndexError, KeyError):
            names = [errors.inert(e.name) for e in self.export_list if e.kind == "memory"]
            raise errors.UsageError(
                f"{self._name} exports no memory named {name!r}",
                hint=f"exported memories: {', '.join(names)}" if names else "it exports none",
            ) from None
        gone = (
            f"memory {name!r} of {self._name} belongs to an instance that was closed or "
            "replaced since (close(), a fresh call, its group closed)",
            "take it again with memory() when you need it",
        )
        return Memory(access, name, lambda: self._instance is instance, gone)

    @property
    def globals(self) -> Globals:
        """Exported globals by name: ``box.globals["g"]``, ``box.globals["g"] = 5``
        (mutable globals only)."""
        return Globals(self)

    def _global_types(self) -> dict:
        """Exported globals' (type, mutable), read from the module's bytes (the runtime's
        C API aborts on a v128 global type)."""
        if self.wasm is None:
            return {}
        from ..wasm.facts import FactsError, read_facts

        try:
            facts = read_facts(self.wasm, scan_code=False)
        except FactsError:
            return {}
        by_index = {g.index: (g.type, g.mutable) for g in facts.globals}
        return {
            e.name: by_index[e.index]
            for e in facts.exports
            if e.kind == "global" and e.index in by_index
        }

    def export(self, name: str) -> Any:
        """An export as a handle for another module of the same Group's imports."""
        if not any(e.name == name for e in self.export_list):
            raise errors.UsageError(f"{self._name} has no export named {errors.quoted(name)}")
        return self._live().export_handle(name)

    def signature(self, func: str) -> Signature:
        return find_signature(self.export_list, func, self._name)

    def _exports_hint(self) -> str:
        return exports_hint(self.export_list)

    def wasi_setup(
        self,
        argv: Sequence[str] = (),
        stdin: Any = None,
        capture: bool = False,
        program: Optional[str] = None,
    ) -> WasiSetup:
        """``program``: the guest's ``argv[0]`` (the module file's name if None)."""
        v = self.policy.values
        if isinstance(argv, (str, bytes)) or not all(isinstance(a, str) for a in argv):
            raise errors.UsageError(  # (bytes, 5: an AttributeError, red team 148;
                "argv is a list of strings",  # a str: one argument per character)
                hint="give the guest's arguments as a list: argv=['-v', 'in.txt']",
            )
        if program is not None and not isinstance(program, str):
            raise errors.UsageError("program (the guest's argv[0]) is a string")
        return WasiSetup(
            argv=[self.path.name if program is None else program, *argv],
            env=self.policy.env_for_guest(),
            grants=self.policy.grants,
            stdin=v["stdio.stdin"] if stdin is None else stdin,
            stdout="capture" if capture else v["stdio.stdout"],
            stderr="capture" if capture else v["stdio.stderr"],
        )

    def _needs_wasi(self) -> bool:
        """Whether the module imports WASI (unknown: assume it does). A sandbox of a
        module that imports nothing skips building the guest's WASI setup."""
        prepared = getattr(self, "_prepared", None)
        interface = prepared.interface if prepared is not None else None
        if interface is None or self.policy.grants:  # a backend refuses grants it cannot confine
            return True
        raw = getattr(interface, "raw_imports", None)  # (native.recorded: not built)
        rows = interface.imports if raw is None else raw  # (module first in both)
        return any(i[0].startswith("wasi") for i in rows)

    def _export_types(self) -> dict:
        """Exported functions' (params, results), built once per module and shared by
        its sandboxes' instances (types never change; an instance only adds to it the
        types of the same module's functions)."""
        prepared = getattr(self, "_prepared", None)
        types = prepared.types if prepared is not None else None
        if types is None:
            types = {
                e.name: (tuple(e.signature.params), tuple(e.signature.results))
                for e in self.export_list
                if e.kind == "func" and e.signature is not None
            }
            if prepared is not None:
                prepared.types = types
        return types

    def _refuse_mid_call(self) -> None:
        """No new instance from a host function of a call running on this sandbox (its
        instance's, or the one ``close()`` let go of during that call): each one made
        there nested in the running call, with a store, memory, fuel and deadline of its
        own, to a depth the guest chose (red team rounds 95 and 96: ``fresh=True``,
        ``close()`` then a call, ``batch()``, ``instantiate()``; 7.2-8.9 s under a 1 s
        timeout, 21 instances of 32 MiB under limits.instances = 1)."""
        for held in (self._instance, self._closed_mid_call):
            if held is not None and held.calling_here():
                raise errors.UsageError(
                    f"{self._name}: a new instance (fresh=, a batch, instantiate(), a call "
                    "after close()) cannot be made from a host function of a call running "
                    "on this sandbox",
                    hint="call it plainly (a nested call runs within the running call's "
                    "limits), or use another Sandbox",
                )
        self._closed_mid_call = None  # (its call is over)

    def instantiate(self, wasi: Optional[WasiSetup] = None, seconds: Any = None) -> Any:
        """A new instance (not kept: callers keep it). ``seconds``: the timeout of the
        call that makes it, if lower than the policy's, bounds its start function and its
        ``_initialize`` too, which share it."""
        if self._instance is not None or self._closed_mid_call is not None:
            self._refuse_mid_call()
        started = time.perf_counter()
        limits = limits_from(self.policy)
        if self.deadline is not None:
            limits = limits._replace(deadline=self.deadline)
        extra: dict = {}
        if self.imports:
            extra["imports"] = self.imports
        if self._group is not None:
            self._group._refuse_instance(self)
            extra["shared"] = self._group.first_instance
            extra["register"] = self.link_name
            extra["group"] = True  # wasmer keeps budget for the members still to come
        if wasi is None and self._needs_wasi():
            wasi = self.wasi_setup()
        if wasi is not None and wasi.grants:  # the grants this instance gets
            from .importpath import guard

            guard(wasi.grants)
        if seconds and limits.timeout is not None and seconds < limits.timeout:
            extra["timeout"] = seconds  # (its start function's)
        instance = self.engine.instantiate(self.module, limits, wasi, **extra)
        instance.know_types(self._export_types())
        if self._group is not None and self._group.first_instance is None:
            self._group.first_instance = instance
        self.timings["instantiate"] = time.perf_counter() - started
        if any(e.name == "_initialize" for e in self.export_list):
            seconds = _left(seconds, time.perf_counter() - started)  # (after the start)
            try:
                instance.call("_initialize", [], timeout=seconds)
            except BaseException:
                if self._group is None:  # (a member's store is its group's)
                    instance.discard()
                raise
        return instance

    def invoke(
        self,
        func: str,
        args: Sequence[Any] = (),
        fresh: bool = False,
        wasi: Optional[WasiSetup] = None,
        timeout: Optional[float] = None,
        fuel: Optional[int] = None,
    ) -> CallResult:
        """Call ``func`` with arguments parsed by its signature; results as a CallResult.

        ``wasi`` sets up a new instance's WASI (e.g. ``wasi_setup(capture=True)``);
        ``timeout`` (seconds) and ``fuel`` lower the policy's limits for this call."""
        sig = self.signature(func)
        typed = parse_args(func, sig, args)
        limits = self._call_limits(timeout, fuel)
        instance = self._live(wasi, fresh, limits.get("timeout"))
        started = time.perf_counter()
        try:
            values = instance.call(func, typed, types=(sig.params, sig.results), **limits)
        finally:
            self.timings["run"] = time.perf_counter() - started
        return CallResult(func, values, sig.results, self._stats(instance))

    def output(self) -> tuple:
        """(stdout, stderr) the current instance captured (None when not captured)."""
        if self._instance is None:
            return None, None
        usage = self._instance.usage()
        return usage.stdout, usage.stderr

    def call(
        self,
        func: str,
        *args: Any,
        timeout: Optional[float] = None,
        fuel: Optional[int] = None,
    ) -> Any:
        """Python-friendly call: one result as a value, several as a tuple, none as None.

        ``timeout`` (seconds) and ``fuel`` lower the policy's limits for this call only;
        asking for more than the policy allows is a UsageError.

        The hot path: the export's caller (``Instance.caller``: its type, converters and
        arrays, made once) is kept with the instance it belongs to, so a new instance
        (``close()``, a trap in a batch) gets a new one. Unlike ``invoke`` it records no
        timings and builds no RunStats."""
        try:
            entry = self._callers.get(func)
        except TypeError:  # (unhashable, a list: find_signature says what it wants)
            entry = None
        if entry is not None and entry[0] is self._instance:
            call = entry[1]
        elif self._called_once == func:  # the second call: the caller is made now
            # (its own timeout bounds a wait for another thread's instance too)
            seconds = None if timeout is None else self._call_limits(timeout, None)["timeout"]
            call = self._caller(func, args, seconds)[1]
        else:
            values = self._first_call(func, args, timeout, fuel)
            call = None
        if call is not None:
            if timeout is None and fuel is None:
                values = call(args)
            else:
                values = call(args, **self._call_limits(timeout, fuel))
        if len(values) == 1:
            return values[0]
        return tuple(values) if values else None

    def _first_call(
        self, func: str, args: Sequence[Any], timeout: Optional[float], fuel: Optional[int]
    ) -> list:
        """The first call of ``func`` on this instance, through the general path (the
        instance's ``call``: the same limits, errors and fuel accounting as the caller,
        which uses it for per-call limits). The caller is made at the second call: a
        sandbox called once (one per tenant, issue #16) never builds one, and keeps none
        of its objects alive (a caller is a closure over ~20 values, and every live
        object makes the garbage collector's passes longer)."""
        sig = self.signature(func)
        typed = parse_args(func, sig, args)  # before the instance is created, as invoke does
        limits = self._call_limits(timeout, fuel)
        instance = self._live(None, False, limits.get("timeout"))
        self._called_once = func
        return instance.call(func, typed, types=(sig.params, sig.results), **limits)

    def _caller(self, func: str, args: Sequence[Any], seconds: Any = None) -> tuple:
        """(instance, caller) for ``func``: the signature and the arguments are checked
        before the instance is created, as ``invoke`` does (``seconds``: see _live)."""
        sig = self.signature(func)
        parse = functools.partial(parse_args, func, sig)
        parse(args)
        instance = self._live(None, False, seconds)
        entry = (instance, instance.caller(func, (sig.params, sig.results), parse))
        if instance is self._instance:  # (else closed or replaced meanwhile: not held)
            if self._callers is _NO_CALLERS:
                self._callers = {}
            self._callers[func] = entry
        return entry

    def _call_limits(self, timeout: Optional[float], fuel: Optional[int]) -> dict:
        """Per-call limits, checked against the policy's (never above them)."""
        out: dict = {}
        v = self.policy.values
        if timeout is not None:
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, (int, float))
                or not timeout > 0  # (NaN too: it slipped through, and desynchronised
            ):  # wasmer's pipe; red team round 24)
                raise errors.UsageError(f"timeout={timeout!r}: a positive number of seconds")
            if timeout > v["limits.timeout"]:
                raise errors.UsageError(
                    f"timeout={_number(timeout, 's')} is above the policy's limits.timeout "
                    f"({v['limits.timeout']:g}s)",
                    hint="a call may only lower the policy's limits",
                )
            out["timeout"] = float(timeout)
        if fuel is not None:
            if isinstance(fuel, bool) or not isinstance(fuel, int) or fuel <= 0:
                raise errors.UsageError(f"fuel={fuel!r}: a positive integer")
            if v["limits.fuel"] is None:
                raise errors.UsageError(
                    "fuel= needs a policy with limits.fuel (fuel metering is compiled in)",
                    hint="set limits.fuel in the policy; fuel= can then lower it per call",
                )
            if fuel > v["limits.fuel"]:
                raise errors.UsageError(
                    f"fuel={_number(fuel)} is above the policy's limits.fuel ({v['limits.fuel']})",
                    hint="a call may only lower the policy's limits",
                )
            out["fuel"] = fuel
        return out

    def run_command(
        self,
        argv: Sequence[str] = (),
        stdin: Any = None,
        capture: bool = False,
        program: Optional[str] = None,
    ) -> CommandResult:
        """Run the module's ``_start`` as a WASI command; the guest's exit code is returned.
        ``argv``: the arguments after the program name, which is ``program`` (the module
        file's name if None)."""
        if not any(e.name == "_start" for e in self.export_list):
            raise errors.UsageError(
                f"{self._name} has no _start export, so it cannot run as a command",
                hint=self._exports_hint() + " (name one to call it)",
            )
        instance = self.instantiate(self.wasi_setup(argv, stdin, capture, program))
        started = time.perf_counter()
        try:
            status = instance.run_command()
        except errors.WasmsbxError as exc:
            keep_output(exc, instance)
            raise
        finally:
            self.timings["run"] = time.perf_counter() - started
        usage = instance.usage()
        return CommandResult.of_status(
            status, self._stats(instance, usage), usage.stdout, usage.stderr
        )

    def _stats(self, instance: Any, usage: Any = None) -> RunStats:
        usage = usage or instance.usage()
        return RunStats(
            backend=self.backend_name,
            compiler=self.compiler,
            timings=dict(self.timings),
            cache=self.cache_state,
            fuel_used=usage.fuel_used,
            memory_bytes=usage.memory_bytes,
            warnings=tuple(self.warnings) + tuple(usage.warnings),
            memory_layout=self.engine.memory_layout,
        )

    def __repr__(self) -> str:
        """``<Sandbox 'add.wat' wasmtime cache=memory>`` (it printed as an object at an
        address: round 155)."""
        name = getattr(self, "_name", None) or "?"
        backend = getattr(self, "backend_name", None) or "?"
        compiler = getattr(self, "compiler", None)
        if compiler and backend != "wasmtime":
            backend = f"{backend}:{compiler}"
        return (
            f"<{type(self).__name__} {name!r} {backend} cache={getattr(self, 'cache_state', '?')}>"
        )

    def close(self) -> None:
        """Release the instance (and its captured output and temporary files). A member
        of a group shares its group's store, released by ``Group.close``: once closed,
        it cannot be used again (a UsageError), while the members linked to its exports
        go on using them."""
        if self._instance is not None:
            if self._instance.calling_here():  # (see _refuse_mid_call)
                self._closed_mid_call = self._instance
            if self._group is None:
                self._instance.close()
            self._instance = None
        self._forget_callers()

    def __reduce_ex__(self, protocol: Any) -> Any:
        # (pickle, copy and deepcopy: its instance lives in the runtime, and a copy
        # shared it with the original, or raised ctypes' ValueError: red team round 94)
        raise errors.UsageError(
            f"{self._name}: a Sandbox cannot be pickled or copied (its instance lives in "
            "the runtime)",
            hint="pass the module and the policy, and make a Sandbox from them where needed",
        )


# A call's own timeout= is not lowered by a wait or a start shorter than this (seconds):
# its errors then say the timeout asked ("after 500 ms", not "after 499.9 ms").
UNNOTED = 0.01


def _left(seconds: Any, spent: float) -> Any:
    """What a call's own timeout (None: the policy's) leaves after ``spent`` seconds of
    making its instance (at least a millisecond: an expired one still ends the call)."""
    if seconds and spent > UNNOTED:
        return max(seconds - spent, 0.001)
    return seconds


# Held while a sandbox makes its instance (Sandbox._live): id(sandbox) -> [lock, users],
# only while some thread makes one (a lock kept on each sandbox would cost 100,000 of
# them an attribute each: tests/test_density.py). One per sandbox: shared ones made a
# call wait for an unrelated sandbox's slow start function (red team round 59).
# Re-entrant: a start function's host function may call its sandbox.
_MAKING: dict = {}
_MAKING_GUARD = threading.Lock()


class _making:
    """``with _making(box, seconds):`` hold ``box``'s making lock, waiting at most
    ``seconds`` (its timeout) for another thread that makes its instance:
    TimeoutExceeded then (a host function in that instance's start that waits for this
    thread cannot deadlock it). A class, not a generator: every sandbox's first call
    takes it (a generator's context manager cost 100,000 sandboxes 3 µs each)."""

    __slots__ = ("entry", "key", "seconds", "name")

    def __init__(self, box: Any, seconds: Optional[float] = None) -> None:
        self.key, self.seconds, self.name = id(box), seconds, box._name

    def __enter__(self) -> None:
        key = self.key
        me = threading.get_ident()
        with _MAKING_GUARD:
            entry = _MAKING.get(key)
            if entry is None:
                entry = _MAKING[key] = [threading.Lock(), 0, 0]
            elif entry[2] == me:
                # A host function of the instance's start function calling the sandbox:
                # the instance is not made yet, and making another for it nested one in
                # the other to Python's recursion limit, each with a store, memory, fuel
                # and deadline of its own (red team round 94: 58 instances under
                # limits.instances = 1, 25 s under a 1 s timeout).
                raise errors.UsageError(
                    f"{self.name}: a host function called this sandbox while its instance "
                    "was being made (from its start function)",
                    hint="a start function's host function reaches its instance's memory "
                    "through its Caller (a first parameter annotated wasmsbx.Caller); call "
                    "the sandbox once it is made",
                )
            entry[1] += 1
        self.entry = entry
        seconds = self.seconds
        if not entry[0].acquire(timeout=-1 if seconds is None else seconds):
            self._leave()
            from ..units import format_duration

            raise errors.TimeoutExceeded(
                f"timeout: waited {format_duration(seconds or 0)} for another thread "
                "making this sandbox's instance",
                hint="its start function is still running: give each thread its own sandbox",
                limit_value=seconds,
            )
        entry[2] = me

    def __exit__(self, *exc: Any) -> None:
        self.entry[2] = 0
        self.entry[0].release()
        self._leave()

    def _leave(self) -> None:
        entry = self.entry
        with _MAKING_GUARD:
            entry[1] -= 1
            if not entry[1] and _MAKING.get(self.key) is entry:
                del _MAKING[self.key]


def _forget_making() -> None:
    """In a forked child: the locks of the parent's threads, held at the fork, are held
    for ever here (a sandbox being made then was never callable in the child)."""
    global _MAKING_GUARD
    _MAKING.clear()
    _MAKING_GUARD = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_making)


def _normalize_imports(imports: Optional[Mapping[str, Mapping[str, Any]]]) -> dict:
    if not imports:
        return {}
    from ..host import normalize

    try:
        return normalize(imports)
    except TypeError as exc:
        raise errors.UsageError(f"imports: {exc}") from None


def _linking_backend(policy: policy_mod.Policy) -> Optional[str]:
    """Host imports and groups need a backend that links in-process (wasmtime): under
    ``runtime.backend = "auto"`` it is chosen; a named backend is kept (and refuses)."""
    spec = policy.values["runtime.backend"]
    return "wasmtime" if spec == "auto" else None


class Function:
    """An exported function as a callable: ``box["add"](1, 2)``, ``box.exports.add(1, 2)``."""

    def __init__(self, box: Sandbox, name: str) -> None:
        self.box = box
        self.name = name

    @property
    def signature(self) -> Signature:
        return self.box.signature(self.name)

    def __call__(
        self, *args: Any, timeout: Optional[float] = None, fuel: Optional[int] = None
    ) -> Any:
        if timeout is None and fuel is None:
            return self.box.call(self.name, *args)
        return self.box.call(self.name, *args, timeout=timeout, fuel=fuel)

    def __repr__(self) -> str:
        return f"<wasm function {self.name} {self.signature}>"


class Exports(list):
    """A sandbox's exports (ExportInfo records); functions are also attributes."""

    def __init__(self, box: Sandbox, items: Sequence[ExportInfo]) -> None:
        super().__init__(items)
        self._box = box

    def __getattr__(self, name: str) -> Function:
        if name.startswith("_"):
            raise AttributeError(name)
        known = self._box._functions
        if known and name in known:
            return known[name]
        for export in self:
            if export.name == name and export.kind == "func":
                return self._box[name]
        raise AttributeError(f"no exported function {name!r}")


class Globals:
    """Exported globals by name; assignment only to mutable ones."""

    def __init__(self, box: Sandbox) -> None:
        self._box = box

    def _info(self, name: str) -> tuple:
        if not any(e.name == name and e.kind == "global" for e in self._box.export_list):
            names = [e.name for e in self._box.export_list if e.kind == "global"]
            raise KeyError(f"no exported global {name!r} (exported: {', '.join(names) or 'none'})")
        known = self._box._global_types().get(name)
        if known is not None:
            return known
        try:
            return self._box._live().global_info(name)
        except NotImplementedError:
            raise errors.BackendUnavailable(
                f"the {self._box.backend_name} backend cannot reach globals from Python"
            ) from None

    def __getitem__(self, name: str) -> Any:
        wasm_type, _ = self._info(name)
        return self._box._live().global_get(name, wasm_type)

    def __setitem__(self, name: str, value: Any) -> None:
        wasm_type, mutable = self._info(name)
        if not mutable:
            raise errors.UsageError(f"global {name!r} is immutable")
        from ..values import coerce

        try:
            typed = coerce(value, wasm_type)
        except (ValueError, TypeError) as exc:
            raise errors.UsageError(f"global {name!r} is a {wasm_type}: {exc}") from None
        self._box._live().global_set(name, typed, wasm_type)

    def type(self, name: str) -> tuple:
        """(value type, mutable)."""
        return self._info(name)

    def __iter__(self) -> Iterator[str]:
        return iter([e.name for e in self._box.export_list if e.kind == "global"])

    def __contains__(self, name: object) -> bool:
        return any(e.name == name and e.kind == "global" for e in self._box.export_list)


# The names sandboxes set, most used first (see wasmsbx.compact): entered before any
# sandbox exists, so what a process made first never gives later sandboxes a dict each.
# Past the table's room: a member of a Group (``_group``, ``link_name``), ``deadline``
# (one sandbox per ``wasmsbx run``) and ``progress``.
SANDBOX_NAMES = (
    "_path_text", "_name", "path", "policy", "imports", "timings", "_prepared", "_known",
    "_wasm", "_given", "_spec", "selection", "backend_name", "compiler", "engine",
    "cache_state", "module", "export_list", "_instance", "_called_once", "_callers",
    "_functions", "_warnings", "_source", "_store", "recorded_exports", "use_cache",
    "cache_dir", "artifact",
)  # fmt: skip
_compact.reserve(Sandbox, SANDBOX_NAMES)
Sandbox._compact_names = SANDBOX_NAMES


class Group:
    """Several modules instantiated together in one store, under one policy and one set
    of limits (memory, tables and instances are counted over the whole group); each
    module added under a name satisfies the imports of the modules added after it, as
    the spec's ``register`` does::

        with wasmsbx.Group(policy) as group:
            group.add("lib.wat", name="lib")          # exports registered as "lib"
            app = group.add("app.wat", imports={"env": {"log": log}})
            app.call("main")
    """

    def __init__(
        self, policy: Optional[policy_mod.Policy] = None, *, backend: Optional[str] = None
    ) -> None:
        self.policy = policy if policy is not None else policy_mod.discover()
        self.backend = backend
        self.engine: Any = None
        self.backend_name: Optional[str] = None
        self.compiler: Optional[str] = None
        self.first_instance: Any = None
        # Held weakly: a member holds its group (its store is the group's), so a group
        # holding its members strongly made a cycle that kept a dropped group, with
        # every member's memory, until the cycle collector ran.
        self._members: weakref.WeakSet = weakref.WeakSet()
        self.closed = False
        # One add at a time: two threads adding the first members at once each made a
        # store of its own, and the later members could link to only one (round 46).
        self._adding = threading.RLock()
        self._adder = 0  # the thread adding a module now (its ident), else 0

    def _refuse_instance(self, box: Sandbox) -> None:
        """A member has one instance, made when it is added: instantiating one again
        (after ``close()``, a ``fresh`` call, a batch) put a second copy in the store,
        registered under the same name, which members added later linked to while the
        earlier ones kept the first (red team round 44). A closed group is closed."""
        self._refuse_closed(f"{box._name}: its group was closed")
        if box in self._members:
            closed = "was closed: a member" if box._instance is None else "is a member"
            raise errors.UsageError(
                f"{box._name} {closed} of a group, whose one instance Group.add made "
                "(it is never instantiated again: not after close(), nor for a fresh "
                "call or a batch)",
                hint="close the whole group when done; call its members without fresh=",
            )

    def _refuse_closed(self, message: str = "this group was closed") -> None:
        if self.closed:
            raise errors.UsageError(message, hint="make a new Group and add the modules again")

    def _adopt(self, box: Sandbox) -> None:
        self.engine, self.backend_name, self.compiler = box.engine, box.backend_name, box.compiler

    def add(
        self,
        module: Union[str, os.PathLike, bytes, bytearray, memoryview],
        name: Optional[str] = None,
        *,
        imports: Optional[Mapping[str, Mapping[str, Any]]] = None,
    ) -> Sandbox:
        """Compile and instantiate ``module`` in the group (its start function runs now);
        with ``name``, later modules can import its exports as ``name.export``."""
        self._refuse_closed()
        if _is_component_file(module):  # (the parser's "expected a module" said less)
            raise errors.UsageError(
                "a Group links core modules; this is a WebAssembly component",
                hint="a component links its own parts: run it with wasmsbx.Sandbox",
            )
        me = threading.get_ident()
        if self._adder == me:
            # A host function of the start function of a member being added: the group's
            # store is not made yet when that is the first member, and each add nested
            # in it made a store and budget of its own (red team round 94: 11 members of
            # 101 pages in a group of 16 MiB and 2 instances).
            raise errors.UsageError(
                "a module cannot be added to a group from a host function of a member "
                "being added (its start function)",
                hint="add every module to the group before calling into it",
            )
        self._take_adding()
        try:
            self._refuse_closed()  # (closed while this thread waited)
            self._adder = me
            try:
                box = Sandbox(
                    module,
                    self.policy,
                    imports=imports,
                    backend=self.backend,
                    group=self,
                    name=name,
                )
                box._live()
            finally:
                self._adder = 0
            self._members.add(box)
            return box
        finally:
            self._adding.release()

    def _take_adding(self) -> None:
        """Take the group's add lock, waiting at most the policy's timeout for another
        thread's add (whose start function may be waiting for this thread: red team
        round 95, a deadlock for good): TimeoutExceeded then, as a call's wait is."""
        take_turn(
            self._adding,
            self.policy.timeout,
            "another thread adding a module to this group",  # (an add, or close())
            "add the modules from one thread, before calling into the group",
        )

    def register(self, name: str, box: Sandbox) -> None:
        """Make an added module's exports importable under another name too."""
        self._refuse_closed("register: this group was closed")
        if box not in self._members:
            raise errors.UsageError("register: that sandbox is not a member of this group")
        box._live().register_as(name)

    def close(self) -> None:
        """Release the store and every member's instance; the members cannot be used
        again (each use is a UsageError). An add in progress in another thread ends
        first (round 47: it added a working member to a group closed meanwhile)."""
        if self._adder == threading.get_ident():
            # (a host function of the start function of a member being added: the add
            # went on and left a working member in the closed group, red team round 95)
            raise errors.UsageError(
                "a group cannot be closed from a host function of a member being added",
                hint="close it once the add has returned",
            )
        self._take_adding()  # (at most the timeout, as an add waits: red team round 96)
        try:
            self.closed = True
            for box in list(self._members):
                box._instance = None
                box._forget_callers()
            if self.first_instance is not None:
                self.first_instance.close()
                self.first_instance = None
            self._members = weakref.WeakSet()
        finally:
            self._adding.release()

    @property
    def members(self) -> list:
        """The members still in use (a member dropped by its caller is gone)."""
        return list(self._members)

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def keep_output(exc: errors.WasmsbxError, instance: Any) -> None:
    """Give ``exc`` what the guest wrote before it failed, if its output was captured
    (``stdout``, ``stderr``): a C program's assert message, or a script's progress
    before its timeout, went with the instance (round 155)."""
    if exc.stdout is not None or exc.stderr is not None:
        return  # (a nested call's, already given)
    try:
        usage = instance.usage()
    except Exception:  # noqa: BLE001 - the failure is what is reported, not this
        return
    exc.stdout, exc.stderr = usage.stdout, usage.stderr


def _number(value: Any, unit: str = "") -> str:
    """A per-call limit as an error quotes it (``unit`` after it): an int of thousands
    of digits as its size, "(an int of 1,329 bits)" (``f"{10**400:g}"`` raised
    OverflowError, str() of 10**5000 ValueError: red team round 78), a number as
    ``:g`` shows it."""
    import math

    from ..values import shown

    if isinstance(value, int):
        return f"({shown(value, str)})" if value.bit_length() > 256 else f"{value}{unit}"
    return f"{value:g}{unit}" if math.isfinite(value) else f"{value}"  # (inf: no unit)


def _file_name(text: str) -> str:
    """``_name_of(text)``, one object for each text: 100,000 sandboxes of one file share
    their name instead of holding a copy each (density from a path)."""
    found = _NAMES.get(text)
    if found is None:
        found = _name_of(text)
        if len(text) <= 4096:  # (PATH_MAX: no longer text is a path, nor kept)
            if len(_NAMES) >= 256:
                _NAMES.clear()
            _NAMES[text] = found
    return found


_NAMES: dict = {}  # module path text -> its file name (_file_name)


def _name_of(text: str) -> str:
    """``Path(text).name`` without making the Path (on every cold start): the last part
    that is neither empty nor ".", so "m.wasm/." and "m.wasm/" are named "m.wasm", as
    the file read."""
    name = text.rpartition(os.sep)[2]
    if name and name != ".":
        return name
    return next((p for p in reversed(text.split(os.sep)) if p and p != "."), "")


def preread(module: Any) -> Optional[bytes]:
    """The bytes of a module given as a path to a small regular file (under 64 KiB),
    read whole: the public Sandbox checks whether it is a component from them and hands
    them to __init__, which would otherwise open the file twice more and stat it (ten
    system calls of every Sandbox(path), four now: density from a path). None for
    anything else (a folder, a FIFO, a larger file, a file that changed size as it was
    read, an error): the regular path reads it and says what is wrong. Only for a path
    that reads the same each time it is asked (a str, a plain Path): a PathLike of the
    caller's, or a str subclass, may name one file to this open and another to
    __init__ (red team round 21)."""
    if type(module) is not str and type(module) is not _PLAIN_PATH:
        return None
    try:
        # (stat first: a FIFO opened and closed unread woke its writer, whose bytes
        # were then lost, or it died of EPIPE, before the read that counts)
        if not stat.S_ISREG(os.stat(module).st_mode):
            return None
        fd = os.open(module, os.O_RDONLY | _CLOEXEC | _NONBLOCK)
    except (OSError, TypeError, ValueError):
        return None
    read = read_whole(fd, 0, _PREREAD - 1)
    return read[0] if read is not None and len(read[0]) == read[1].st_size else None


_PREREAD = 1 << 16
_PLAIN_PATH = type(Path())  # PosixPath (WindowsPath there)
# What the public Sandbox's __new__ read for the __init__ that follows it in this thread
# ("read": (weak reference to the sandbox, module, bytes)): not on the sandbox, whose
# attributes every one of 100,000 sandboxes would carry (RSS).
_PREREAD_SLOT = threading.local()


def _is_component_file(module: Any, head: Optional[bytes] = None) -> bool:
    """The header check of ``components.is_component``, without importing the package
    for core modules (8 bytes read; any error is left for the regular path). ``head``:
    the file's first bytes, if read already (preread)."""
    if head is None and isinstance(module, (bytes, bytearray, memoryview)):
        head = bytes(module[:4096])
    elif head is None:
        # (os.open, not open(): a buffered file object is most of this check's cost,
        # paid by every cold start; never blocks on a FIFO)
        try:
            if not stat.S_ISREG(os.stat(module).st_mode):  # (a FIFO: not opened, see
                return False  # preread)
            fd = os.open(module, os.O_RDONLY | _CLOEXEC | _NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # (not "a core module": red
                raise  # team 142, a component then failed to parse as one)
            return False
        except (TypeError, ValueError):
            return False
        try:
            # Only a regular file: the bytes read from a pipe (`run <(cat m.wasm)`) are
            # gone for the read of the module that follows (an "empty file" then)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            head = os.read(fd, 4096)
            if len(head) == 4096 and head[:4] != WASM_MAGIC and not _wat_head(head):
                # (text whose first 4 KiB are all comment: a longer look, bounded)
                head += os.read(fd, HEAD_MORE)
        except OSError:
            return False
        finally:
            os.close(fd)
    if head[:4] == WASM_MAGIC:
        return head[6:8] == b"\x01\x00"
    if head[:1] == ARTIFACT_FIRST_BYTE:  # a component's precompiled artifact
        from ..native.artifact import claims_component

        return claims_component(module)
    return _wat_head(head).startswith(b"(component")  # a component in WAT text


HEAD_MORE = 1 << 20  # bytes more read of text whose first 4 KiB are comments (_is_component_file)


def _wat_head(text: bytes) -> bytes:
    """``text`` after a byte-order mark, leading whitespace and ``;;`` / ``(; ;)``
    comments (a component's text with a mark was taken for a core module: red team 127)."""
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    while True:
        text = text.lstrip()
        if text.startswith(b";;"):
            text = text.partition(b"\n")[2]
        elif text.startswith(b"(;"):
            text = text.partition(b";)")[2]
        else:
            return text


def _exports(records: list) -> list:
    """ExportInfo from the export records an artifact or cache entry carries (on every
    cold start: built with tuple.__new__, as native.recorded builds its records, since
    a namedtuple's own __new__ is Python code)."""
    new = tuple.__new__
    return [
        new(
            ExportInfo,
            (
                e["name"],
                e["kind"],
                new(Signature, (tuple(e["params"]), tuple(e["results"])))
                if e.get("params") is not None
                else None,
            ),
        )
        for e in records
    ]


__all__ = [
    "Sandbox",
    "Group",
    "Memory",
    "Function",
    "Exports",
    "Globals",
    "read_module",
    "parse_args",
    "format_value",
]
