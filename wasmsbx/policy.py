"""The sandbox policy: declared once, loaded from TOML, validated, overridden by flags.

Every key is declared once in :data:`SCHEMA` (section, name, kind, default, doc). The
loader, the validation messages, ``sandbox.toml.example`` and ``--json`` views are all
derived from that table, and a test checks that the example file is fresh.

Secure by default: no files, no environment variables, no network; memory, time,
tables and output are bounded.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections import namedtuple
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Optional, Union

from . import capabilities, units
from .errors import PolicyError
from .native.trustdir import VCS_NAMES  # (version-control names: the cache checks them too)

POLICY_FILENAME = "sandbox.toml"
# The stdio values that are words, not paths: an output's, and stdin's ("capture" is an
# output's word; stdin opens it as a file, red team round 101).
OUTPUT_WORDS = ("inherit", "null", "capture")
STDIN_WORDS = ("inherit", "null")
OPTIMIZE_LEVELS = ("none", "speed", "size", "aggressive")
STDIO_SPECIAL = ("inherit", "null")
MEMORY_LAYOUTS = ("fast", "dense")  # backends/reserve.py says what each reserves
MEMORY_INITS = ("cow", "copy")  # data segments: mapped copy-on-write, or copied

# Ranges of the numeric keys. Every number is checked against one, so no value can wrap
# in a runtime's integer field or abort it (issue #13).
MAX_FUEL = 2**63 - 1  # wasmtime keeps fuel in an i64; 2^64 wrapped to "exhausted"
# wasmtime-py's engine panics (abort, exit 134) when max_wasm_stack exceeds its async
# stack size, 2 MiB, which the Python API cannot raise.
MAX_STACK = 2 * 1024 * 1024
MAX_TABLE_ELEMENTS = 2**32 - 1  # a 32-bit table's maximum is a u32
MAX_INSTANCES = 1_000_000
# No host maps more than the x86-64 user address space (128 TiB) for a memory.
MAX_MEMORY = 2**47
KIND_BOUNDS = {
    "size": (0, units.MAX_SIZE),
    "duration": (0.0, units.MAX_DURATION),
    "count": (0, units.MAX_SIZE),
}


class Key(
    namedtuple(
        "Key",
        ["section", "name", "kind", "default", "doc", "choices", "optional", "bounds"],
        defaults=(
            (),
            False,
            (),
        ),
    )
):
    """One policy key: how it is written, checked, defaulted and documented."""

    # section: str
    # name: str
    # kind: str  size | duration | count | bool | str | choice | names | grants | table | stdio
    # default: Any
    # doc: str
    # choices: tuple
    # optional: bool  absent means "not set" (no limit / runtime default)
    # bounds: tuple  (least, most) for sizes, durations and counts; () = the kind's range
    __slots__ = ()

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


SECTIONS = {
    "runtime": "Which runtime runs the module and how it compiles it.",
    "limits": "Resource limits, enforced in-process. Each hit stops the guest with its own "
    "exit code.",
    "filesystem": 'Directory grants, as "HOST", "HOST::GUEST" or "HOST:GUEST" (use "::" when '
    'HOST contains ":"; relative HOST paths are relative to this file). Nothing is granted by '
    "default.",
    "env": "Environment variables the guest sees. None by default.",
    "network": "Network access. WASI preview1 guests get no sockets; only false is accepted.",
    "stdio": 'Guest stdin/stdout/stderr: "inherit", "null", or a file path.',
}

SCHEMA: tuple = (
    Key(
        "runtime",
        "backend",
        "str",
        "auto",
        'Backend: "auto" (scored choice), "wasmtime", "wasmer", or "wasmer:cranelift", '
        '"wasmer:llvm", "wasmer:singlepass".',
    ),
    Key(
        "runtime",
        "optimize",
        "choice",
        "speed",
        "Optimisation goal: none, speed, size or aggressive. Adjusts compiler settings and "
        "the selector's weights.",
        choices=OPTIMIZE_LEVELS,
    ),
    Key(
        "runtime",
        "require",
        "names",
        [],
        'Capabilities the backend must have, e.g. ["fuel", "simd"]. A backend lacking one '
        "is excluded.",
    ),
    Key(
        "runtime",
        "prefer",
        "names",
        [],
        "Capabilities or backend names that raise a backend's score.",
    ),
    Key(
        "runtime",
        "cache",
        "bool",
        True,
        "Keep compiled native code in the cache so later runs skip compilation.",
    ),
    Key(
        "runtime",
        "cache_dir",
        "str",
        "",
        "Cache directory. Empty: $WASMSBX_CACHE_DIR, else the platform's user cache dir.",
    ),
    Key(
        "runtime",
        "cache_size",
        "size",
        "1GiB",
        "Most disk space the cache may use; the least recently used entries are evicted.",
    ),
    Key(
        "runtime",
        "cache_min_size",
        "size",
        "16KiB",
        "Modules smaller than this are compiled on every run, not cached: compiling them "
        "is about as fast as loading them from the cache. 0 caches every module.",
    ),
    Key(
        "runtime",
        "cache_compress",
        "bool",
        False,
        "Store native code of 8 MiB and more zstd-compressed: 55-65% less disk, but every "
        "load decompresses it into private memory (python.wasm: about 100 ms of CPU a run) "
        "instead of mapping the file shared.",
    ),
    Key(
        "runtime",
        "memory_layout",
        "choice",
        "fast",
        "Address space each linear memory reserves. fast: wasmtime's 4 GiB + guards, no "
        "bounds checks. dense: limits.memory rounded up to a power of two (64KiB..4GiB) + "
        "64 KiB guards: 18x the live memories under a 64 GiB ulimit -v, memory-bound code "
        "up to 1.7x slower (wasmtime only).",
        choices=MEMORY_LAYOUTS,
    ),
    Key(
        "runtime",
        "memory_init",
        "choice",
        "cow",
        "How data segments reach a memory. cow: mapped copy-on-write from one image per "
        "module. copy: copied in at instantiation: one mapping fewer per memory (1.5x the "
        "live memories under the default vm.max_map_count), but each sandbox holds its "
        "data's pages, and the copy spends limits.fuel (1 per byte).",
        choices=MEMORY_INITS,
    ),
    Key(
        "limits",
        "memory",
        "size",
        "256MiB",
        "Linear memory cap per instance: a total over all its memories (each gets a "
        "share). memory.grow beyond it fails.",
        bounds=(0, MAX_MEMORY),  # 0 gets its own message in check_value
    ),
    Key(
        "limits",
        "fuel",
        "count",
        None,
        "Fuel units the guest may spend (roughly one per wasm instruction). Unset: no metering.",
        optional=True,
        bounds=(1, MAX_FUEL),
    ),
    Key(
        "limits",
        "timeout",
        "duration",
        "10s",
        "Wall-clock limit per call or command; the guest is interrupted when it passes.",
    ),
    Key(
        "limits",
        "stack",
        "size",
        None,
        "Maximum wasm stack size, at most 2MiB. Unset: the runtime's default (wasmtime: 512KiB).",
        optional=True,
        bounds=(1, MAX_STACK),
    ),
    Key(
        "limits",
        "table_elements",
        "count",
        10000,
        "Maximum table elements per instance, a total over all its tables (table.grow "
        "beyond it fails).",
        bounds=(0, MAX_TABLE_ELEMENTS),
    ),
    Key(
        "limits",
        "instances",
        "count",
        1,
        "Maximum module instances per store.",
        bounds=(1, MAX_INSTANCES),
    ),
    Key(
        "limits",
        "compile_timeout",
        "duration",
        "60s",
        "Wall-clock limit for compiling the module (a run's timeout covers compiling too). "
        "Large modules compile in a child process that is killed when it passes.",
    ),
    Key(
        "limits",
        "module_size",
        "size",
        "128MiB",
        "Largest module (or text module) accepted; larger ones are refused before compiling "
        "or parsing (run, compile, bench, audit).",
    ),
    Key(
        "limits",
        "output",
        "size",
        "64MiB",
        "Maximum bytes a WASI guest may write to stdout and stderr together (and the "
        "size a component call's result may have once printed).",
    ),
    Key(
        "filesystem",
        "read_only",
        "grants",
        [],
        'Directories the guest may read but not change, e.g. ["data:/data"].',
    ),
    Key(
        "filesystem",
        "read_write",
        "grants",
        [],
        'Directories the guest may read and change, e.g. ["out:/out"].',
    ),
    Key(
        "env",
        "inherit",
        "names",
        [],
        'Host variables passed through by name or glob, e.g. ["LANG", "APP_*"].',
    ),
    Key("env", "set", "table", {}, 'Variables set explicitly, e.g. { MODE = "fast" }.'),
    Key("network", "enabled", "bool", False, "Network access. Only false is supported."),
    Key("stdio", "stdin", "stdio", "inherit", "Guest stdin."),
    Key("stdio", "stdout", "stdio", "inherit", "Guest stdout."),
    Key("stdio", "stderr", "stdio", "inherit", "Guest stderr."),
)

KEYS = {key.dotted: key for key in SCHEMA}


class Grant(namedtuple("Grant", "host guest writable")):
    """A directory the guest can open: host path, guest path, and whether it can write.

    ``host`` is kept as its real path when the grant is made (no link in it, absolute):
    what the guest is given must still be that directory when an instance is made
    (``native.trust.open_grants``)."""

    # host: str
    # guest: str
    # writable: bool
    __slots__ = ()

    def __new__(cls, host: str, guest: str, writable: bool) -> Grant:
        from .native.trustdir import resolved

        # (a link replaced as it is read: the path as given, refused when opened)
        return super().__new__(cls, resolved(host), guest, writable)

    def to_dict(self) -> dict:
        return self._asdict()


class Policy:
    """A validated policy. ``values`` maps dotted keys to checked, normalised values;
    ``source`` is the file it came from (None for defaults); ``explicit`` holds the
    dotted keys a file or a flag set.

    A list in a policy file (grants, names, patterns) is held as a tuple: it cannot be
    changed in place, so a policy's lists are shared with the defaults and with copies,
    never changed under another policy (red team round 88). Change one by setting the
    key again (``override``, ``add_grant``, ``add_env``). Tuples of strings and an
    empty ``env.set`` also leave a policy's values dict out of the garbage collector's
    walks once it has looked at it (issue #16: a policy per tenant).
    """

    # {dotted: value asked}: limits a discovered policy raised above their defaults,
    # held to the defaults (see cap_limits); a flag setting one removes it. Set on a
    # policy as a new dict when there is one (most policies have none).
    capped: Mapping = MappingProxyType({})
    # The real folder of a sandbox.toml found in the working folder (confine): what it
    # names must stay in it ("": not a found file's).
    confined = ""
    # {dotted: path}: the stdio files and cache folder confine pinned to the paths it
    # resolved, checked again before use while the value is still that (recheck_confined).
    pinned: Mapping = MappingProxyType({})
    # What a found policy's messages call it (found_name: a bench suite's is not a
    # sandbox.toml found in the working folder).
    found_as = "a sandbox.toml found in the working folder"

    def __init__(
        self, values: dict, source: Optional[str] = None, explicit: Iterable[str] = ()
    ) -> None:
        self.values = values
        self.source = source
        # The keys set, a tuple (a set took 216 bytes a policy: a policy per tenant,
        # issue #16); ``mark_explicit`` adds one.
        self.explicit: tuple = tuple(sorted(set(explicit), key=str)) if explicit else ()

    def __repr__(self) -> str:
        return f"Policy(source={self.source!r}, explicit={sorted(self.explicit)})"

    def copy(self) -> Policy:
        """This policy with values of its own (its one table copied: lists are tuples),
        and everything else it carries: where it came from, the keys set, the limits
        held to their defaults and the folder it is confined to."""
        new = Policy(copy_values(self.values), self.source, self.explicit)
        if self.capped:
            new.capped = dict(self.capped)
        if self.confined:
            new.confined = self.confined
        if self.pinned:
            new.pinned = dict(self.pinned)
        if "found_as" in self.__dict__:
            new.found_as = self.found_as
        return new

    def __getitem__(self, dotted: str) -> Any:
        return self.values[dotted]

    # Convenience views used across the code base.
    @property
    def memory(self) -> int:
        return self.values["limits.memory"]

    @property
    def fuel(self) -> Optional[int]:
        return self.values["limits.fuel"]

    @property
    def timeout(self) -> float:
        return self.values["limits.timeout"]

    @property
    def grants(self) -> list:
        return list(self.values["filesystem.read_only"]) + list(
            self.values["filesystem.read_write"]
        )

    def env_for_guest(self, environ: Optional[dict] = None) -> dict:
        """The exact environment the guest sees: allow-listed host vars, then explicit ones."""
        patterns = self.values["env.inherit"]
        if not patterns:
            return dict(sorted(self.values["env.set"].items()))
        environ = os.environ if environ is None else environ
        chosen = {
            name: value
            for name, value in environ.items()
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
        }
        chosen.update(self.values["env.set"])
        return dict(sorted(chosen.items()))

    def is_set(self, dotted: str) -> bool:
        return self.values.get(dotted) not in (None, (), [], {}, "")

    def to_dict(self) -> dict:
        out: dict = {}
        for key in SCHEMA:
            value = self.values[key.dotted]
            if key.kind == "grants":
                value = [g.to_dict() for g in value]
            out.setdefault(key.section, {})[key.name] = value
        return out

    def to_toml_dict(self) -> dict:
        """Values as they would be written in sandbox.toml (units as text, unset omitted)."""
        out: dict = {}
        for key in SCHEMA:
            value = self.values[key.dotted]
            if value is None:
                continue
            if key.kind == "size":
                value = _size_text(value)
            elif key.kind == "duration":
                value = _duration_text(value)
            elif key.kind == "grants":
                value = [_grant_text(g) for g in value]
            out.setdefault(key.section, {})[key.name] = value
        return out


def _grant_text(grant: Grant) -> str:
    """A grant as written in a policy; ``::`` when a name holds ``:`` (parse_grant's rule)."""
    if grant.host == grant.guest and ":" not in grant.host:
        return grant.host
    sep = "::" if ":" in grant.host or ":" in grant.guest else ":"
    return f"{grant.host}{sep}{grant.guest}"


def _size_text(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n % factor == 0 and n:
            return f"{n // factor}{unit}"
    return str(n)


def _duration_text(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


# ---------------------------------------------------------------------------- checking


def _fail(origin: str, dotted: str, message: str, hint: Optional[str] = None) -> PolicyError:
    return PolicyError(f"{origin}: {dotted}: {message}", hint=hint, key=dotted, file=origin)


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _check_names(value: Any) -> tuple:
    """A list of strings (a tuple from Python, too), held as a tuple: a policy's lists
    are immutable (see Policy)."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of strings, found {_type_name(value)}")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected a list of strings, found one holding {_type_name(item)}")
    return tuple(value)


def _check_capabilities(value: Any, allow_backends: bool) -> tuple:
    names = _check_names(value)
    known = set(capabilities.ALL) | ({"wasmtime", "wasmer"} if allow_backends else set())
    for name in names:
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, sorted(known), n=1)
            suggestion = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown capability {name!r}{suggestion}")
    return names


def _check_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, found {_type_name(value)}")
    if value < 0:
        raise ValueError(f"expected a whole number >= 0, found {value}")
    return value


def bounds(key: Key) -> tuple:
    """(least, most) a numeric key accepts."""
    return key.bounds or KIND_BOUNDS[key.kind]


def _check_number(key: Key, value: Any) -> Any:
    """A size, duration or count, parsed and held to the key's range."""
    least, most = bounds(key)
    if key.kind == "size":
        number = units.parse_size(value, most)
    elif key.kind == "duration":
        number = units.parse_duration(value, most)
    else:
        number = _check_count(value)
        if number > most:
            raise ValueError(f"{value} is too large (at most {most:,})")
    if number < least:
        shown = units.format_size(least) if key.kind == "size" else f"{least:,}"
        raise ValueError(f"must be at least {shown}, found {value!r}")
    return number


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, found {_type_name(value)}")
    return value


def _check_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, found {_type_name(value)}")
    return value


def _check_stdio_path(value: Any) -> str:
    """A stdio file's path, ``~`` expanded as for grants and the cache folder. Kept as
    written, ``~/x`` was opened as the folder ``~`` in the working folder, while a found
    policy's check (confine) had expanded it: a project shipping a folder ``~`` with a
    link ``proj -> ../..`` wrote the guest's stdout into ``$HOME/.bashrc`` through
    ``stdout = "~/proj/.bashrc"`` (red team round 98)."""
    text = _check_path_text(value)
    return os.path.expanduser(text) if text.startswith("~") else text


def _check_path_text(value: Any) -> str:
    """A string that names a file: no NUL byte, which no file system accepts (the open
    would fail with a ValueError, not an OSError)."""
    text = _check_str(value)
    if "\0" in text:
        raise ValueError(f"{text!r} holds a NUL byte, which no path can contain")
    return text


def _check_table(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f'expected a table of NAME = "value", found {_type_name(value)}')
    for name, item in value.items():
        if not isinstance(item, str):
            raise ValueError(f"{name}: expected a string value, found {_type_name(item)}")
        _check_env_name(name)
        _check_env_value(name, item)
    return dict(value)


def _check_env_name(name: str) -> str:
    """A variable's name (or an ``env.inherit`` pattern): not empty, no ``=``, and no
    control character. ``"A\0B"`` reached the guest as ``A`` (the environment is C
    strings) and ``"A\nB"`` as a name no program can look up (red team, round 52)."""
    if not name or "=" in name:
        raise ValueError(f"invalid variable name {_quoted(name)}")
    if not name.isprintable():
        raise ValueError(
            f"invalid variable name {_quoted(name)}: it holds a NUL, newline or other "
            "control character"
        )
    return name


def _check_env_value(name: str, value: str) -> str:
    """A variable's value: anything but NUL, which would end it early (``"a\0b"`` is
    ``a`` to the guest); newlines are a value's own business."""
    if "\0" in value:
        raise ValueError(
            f"{_quoted(name)}: the value holds a NUL byte, which an environment variable "
            "cannot carry"
        )
    return value


def _check_env_names(value: Any) -> tuple:
    return tuple(_check_env_name(name) for name in _check_names(value))


def _quoted(text: str) -> str:
    from .errors import inert

    return f"'{inert(text)}'"


def parse_grant(text: str, writable: bool, base: Optional[Path] = None) -> Grant:
    """``HOST``, ``HOST::GUEST`` (the wasmtime CLI's spelling) or ``HOST:GUEST``.

    With ``::`` the split is at the first ``::``, so ``HOST::GUEST`` grants a host folder
    whose name contains ``:`` (``a:b::/data``, or ``a:b::a:b`` for the same name).
    HOST must be an existing directory.
    """
    if not isinstance(text, str) or not text:
        raise ValueError('expected "HOST", "HOST::GUEST" or "HOST:GUEST"')
    host, sep, guest = text.partition("::") if "::" in text else text.partition(":")
    if not sep:
        guest = host
    if not host or not guest:
        raise ValueError(f'expected "HOST", "HOST::GUEST" or "HOST:GUEST", found {text!r}')
    try:
        host_path = Path(host).expanduser()
    except RuntimeError:  # "~someone" for a user that does not exist
        raise ValueError(f"cannot expand {host!r}: no such user") from None
    if base is not None and not host_path.is_absolute():
        host_path = base / host_path
    try:
        if not host_path.is_dir():
            raise ValueError(f"{host!r} is not an existing directory")
        real = host_path.resolve()  # (non-strict, and still raises if a link changes as
    except OSError as exc:  # it is read: red team round 82 swapped one, exit 100)
        raise ValueError(f"{host!r} changed while it was read: {exc.strerror}") from None
    return Grant(host=str(real), guest=guest, writable=writable)


def _checker(key: Key, base: Optional[Path]) -> Callable[[Any], Any]:
    if key.kind in KIND_BOUNDS:
        return lambda value: _check_number(key, value)
    if key.kind == "bool":
        return _check_bool
    if key.kind == "table":
        return _check_table
    if key.kind == "names":
        if key.dotted == "runtime.require":
            return lambda v: _check_capabilities(v, allow_backends=False)
        if key.dotted == "runtime.prefer":
            return lambda v: _check_capabilities(v, allow_backends=True)
        if key.dotted == "env.inherit":
            return _check_env_names
        return _check_names
    if key.kind == "grants":
        writable = key.name == "read_write"

        def grants(value: Any) -> tuple:
            return tuple(parse_grant(item, writable, base) for item in _check_names(value))

        return grants
    if key.kind == "stdio":
        return _check_stdio_path
    if key.dotted == "runtime.cache_dir":
        return _check_path_text
    if key.kind == "choice":

        def choice(value: Any) -> str:
            if value not in key.choices:
                raise ValueError(f"expected one of {', '.join(key.choices)}, found {value!r}")
            return value

        return choice
    return _check_str


def check_value(key: Key, value: Any, origin: str, base: Optional[Path] = None) -> Any:
    """Validate one value for ``key``; raise PolicyError naming the file and key."""
    dotted = key.dotted
    checker = _CHECKERS.get(dotted)
    if checker is None:
        checker = _checker(key, base)
        if key.kind != "grants":  # (a grant's checker depends on ``base``)
            _CHECKERS[dotted] = checker
    try:
        checked = checker(value)
    except ValueError as exc:
        raise _fail(origin, dotted, str(exc), hint=f"see sandbox.toml.example: {key.doc}") from None
    if dotted == "network.enabled" and checked:
        raise _fail(
            origin,
            dotted,
            "network access is not supported",
            hint="WASI preview1 guests have no sockets; remove the key or set false",
        )
    if dotted == "runtime.backend":
        _check_backend_name(checked, origin)
    if dotted in ZERO_IS_IMPOSSIBLE and not checked:
        raise _fail(
            origin,
            dotted,
            "must be greater than zero",
            hint="limits cannot be switched off; use a large value instead",
        )
    return checked


# dotted key -> its checker (_checker), made once: every key's but a grant's is the same
# whatever the folder (a policy per tenant checks its values with them: issue #16).
_CHECKERS: dict = {}


ZERO_IS_IMPOSSIBLE = (
    "limits.memory",
    "limits.timeout",
    "limits.compile_timeout",
    "limits.module_size",
)

BACKEND_NAMES = (
    "auto",
    "wasmtime",
    "wasmer",
    "wasmer:cranelift",
    "wasmer:llvm",
    "wasmer:singlepass",
    "wasmtime:cranelift",
)


def _check_backend_name(name: str, origin: str) -> None:
    if name not in BACKEND_NAMES:
        import difflib

        close = difflib.get_close_matches(name, BACKEND_NAMES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"one of: {', '.join(BACKEND_NAMES)}"
        raise _fail(origin, "runtime.backend", f"unknown backend {name!r}", hint=hint)


def _suggest(name: str, candidates: list) -> Optional[str]:
    import difflib

    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


# (the defaults checked, the keys among them whose values are lists or dicts), made
# once by the first defaults() and published whole: a thread that came in while another
# filled the table in place got a policy without its later keys (KeyError: 'stdio.stdin',
# seen under CI with sandboxes made at once from threads).
_DEFAULTS: Optional[tuple] = None


def defaults() -> Policy:
    """The secure defaults (validated once per process, copied per policy)."""
    base = _DEFAULTS or _make_defaults()
    # The dict (env.set) copied: a policy's values may be changed in place, and a shared
    # one changed every default policy of the process (red team round 88: one tenant's
    # env.set and grants reached every other tenant's guest). Lists are tuples, shared.
    values = dict(base[0])
    for key in base[1]:
        values[key] = _copied(values[key])
    return Policy(values=values)


def _make_defaults() -> tuple:
    global _DEFAULTS
    checked = {}
    for key in SCHEMA:
        default = key.default
        checked[key.dotted] = None if default is None else check_value(key, default, "defaults")
    nested = tuple(k for k, v in checked.items() if type(v) in (list, dict))
    _DEFAULTS = (checked, nested)
    return _DEFAULTS


def _copied(value: Any) -> Any:
    """A list or dict of policy values copied (one level: they hold strings, numbers
    and immutable grants only)."""
    return list(value) if type(value) is list else dict(value)


def copy_values(values: dict) -> dict:
    """``values`` with each list and dict among them copied (one level: they hold
    strings, numbers and immutable grants only)."""
    return {
        key: _copied(value) if type(value) in (list, dict) else value
        for key, value in values.items()
    }


def from_dict(data: dict, origin: str = "<policy>", base: Optional[Path] = None) -> Policy:
    """Validate a parsed TOML document (sections of keys) into a Policy."""
    policy = defaults()
    policy.source = origin
    explicit: list = []
    for section, body in data.items():
        if section not in SECTIONS:
            hint = _suggest(section, list(SECTIONS)) or f"sections: {', '.join(SECTIONS)}"
            raise PolicyError(f"{origin}: unknown section [{section}]", hint=hint, file=origin)
        if not isinstance(body, dict):
            raise _fail(origin, section, f"expected a [{section}] table, found {_type_name(body)}")
        for name, value in body.items():
            dotted = f"{section}.{name}"
            if dotted not in KEYS:
                names = [k.name for k in SCHEMA if k.section == section]
                hint = _suggest(name, names) or f"keys in [{section}]: {', '.join(names)}"
                raise _fail(origin, dotted, "unknown key", hint=hint)
            policy.values[dotted] = check_value(KEYS[dotted], value, origin, base)
            explicit.append(dotted)
    if explicit:
        policy.explicit = tuple(sorted(set(explicit)))
    if "filesystem.read_only" in explicit or "filesystem.read_write" in explicit:
        _one_folder_per_guest_path(policy, origin)
    return policy


def _guest_key(guest: str) -> str:
    """A guest path as the guest reaches it (``/x``, ``/x/`` and ``//x`` are one)."""
    import posixpath

    return posixpath.normpath(guest) if guest else guest


def _one_folder_per_guest_path(policy: Policy, origin: str) -> None:
    """A policy's grants give each guest path one host folder: two were accepted without
    a word, and which one the guest saw depended on the mode and the order (read-write
    won, else the later: round 155). The same grant twice is kept once."""
    seen: dict = {}
    kept: dict = {"filesystem.read_only": [], "filesystem.read_write": []}
    for dotted in kept:
        for grant in policy.values[dotted]:
            where = _guest_key(grant.guest)
            other = seen.get(where)
            if other is None:
                seen[where] = grant
                kept[dotted].append(grant)
            elif (other.host, other.writable) != (grant.host, grant.writable):
                raise _fail(
                    origin,
                    "filesystem",
                    f"two grants of the guest path {where}: {other.host} "
                    f"({'read-write' if other.writable else 'read-only'}) and {grant.host} "
                    f"({'read-write' if grant.writable else 'read-only'})",
                    hint="give each guest path one host folder",
                )
    for dotted, grants in kept.items():
        if len(grants) != len(policy.values[dotted]):
            policy.values[dotted] = tuple(grants)


def _toml_module():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on the Python 3.9 leg
        import tomli as tomllib
    return tomllib


def load(path, found: Union[bool, str] = False) -> Policy:
    """Load and validate a policy file (``found``: a ``sandbox.toml`` found in the working
    folder, or what found_name calls a policy a project brought: see
    _count_found_grants)."""
    if isinstance(path, str) and not path:  # (--policy '' fell back to ./sandbox.toml)
        from .errors import UsageError

        raise UsageError(
            "--policy '': an empty path",
            hint="give a policy file, or leave --policy out for ./sandbox.toml or the defaults",
        )
    path = Path(path)
    origin = str(path)
    from .inputs import POLICY_MAX_BYTES, TooLarge, read_capped

    try:
        raw = read_capped(path, POLICY_MAX_BYTES)
    except TooLarge as exc:
        raise PolicyError(f"{origin}: not a policy file: {exc.strerror}", file=origin) from None
    except FileNotFoundError:
        raise PolicyError(
            f"{origin}: policy file not found", hint="check the path given to --policy", file=origin
        ) from None
    except OSError as exc:
        raise PolicyError(f"{origin}: cannot read policy: {exc.strerror}", file=origin) from None
    except ValueError:  # (a NUL byte, which no path can hold: red team round 101)
        raise PolicyError(
            f"{origin!r}: cannot read policy: a path holds no NUL byte", file=origin
        ) from None
    tomllib = _toml_module()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyError(f"{origin}: not a UTF-8 text file", file=origin) from None
    except tomllib.TOMLDecodeError as exc:
        if raw.startswith(b"\xef\xbb\xbf"):  # (tomllib's "Invalid statement" at 1:1)
            raise PolicyError(
                f"{origin}: invalid TOML: it starts with a UTF-8 byte-order mark",
                hint="save it as UTF-8 without a BOM (TOML files have none)",
                file=origin,
            ) from None
        raise PolicyError(
            f"{origin}: invalid TOML: {exc}",
            hint="see sandbox.toml.example for the syntax",
            file=origin,
        ) from None
    except RecursionError:  # a = [[[[... : 1 KB nests deeper than tomllib's recursion can go
        raise PolicyError(
            f"{origin}: invalid TOML: arrays or tables nested too deeply",
            hint="see sandbox.toml.example for the syntax",
            file=origin,
        ) from None
    if found:
        _count_found_grants(data, origin, found if isinstance(found, str) else FOUND_WHERE)
    return from_dict(data, origin, base=path.resolve().parent)


# Directory grants a discovered policy may hold (a project names a few folders).
FOUND_GRANTS_LIMIT = 1_000


def _count_found_grants(data: dict, origin: str, where: str) -> None:
    """A discovered policy holds at most FOUND_GRANTS_LIMIT grants, counted before any is
    resolved. Red team 77: its 1 MiB allows 250,000 (`"d",` each), and resolving them
    took 4.5 s before any command ran; the metadata walk is bounded for the whole policy
    (_metadata_below), this bounds the rest."""
    body = data.get("filesystem")
    if not isinstance(body, dict):
        return
    lists = [body.get(name) for name in ("read_only", "read_write")]
    count = sum(len(value) for value in lists if isinstance(value, list))
    if count > FOUND_GRANTS_LIMIT:
        raise _fail(
            origin,
            "filesystem",
            f"{count:,} grants; {found_name(where)} may hold at most {FOUND_GRANTS_LIMIT:,}",
            hint=f"grant fewer folders; if you trust it as it is, pass it explicitly: "
            f"--policy {origin}",
        )


FOUND_WHERE = "found in the working folder"


def found_name(where: str) -> str:
    """What messages call a policy a project brought, ``where`` saying how it came:
    "a sandbox.toml found in the working folder", "a policy named by the bench suite"."""
    return f"a sandbox.toml {where}" if where == FOUND_WHERE else f"a policy {where}"


def load_found(path: Union[str, Path], where: str = FOUND_WHERE) -> Policy:
    """A policy file that came with a project rather than from you (``./sandbox.toml``
    found in the working folder, or one a bench suite names): it reaches only its own
    folder (confine) and its limits are held to the defaults (cap_limits)."""
    path = Path(path)
    try:
        odd = not path.is_file() and os.path.lexists(path)
    except (OSError, ValueError) as exc:  # (a name too long, a NUL byte: red team round 101)
        raise PolicyError(
            f"{path}: cannot read policy: {getattr(exc, 'strerror', None) or exc}",
            file=str(path),
        ) from None
    if odd:
        _refuse_odd(path, where)  # (a FIFO or /dev/tty would wait; /dev/null: the defaults)
    policy = load(path, found=where)
    if where != FOUND_WHERE:
        policy.found_as = found_name(where)
    confine(policy, path)
    cap_limits(policy)
    return policy


def discover(explicit: Optional[str] = None, cwd: Optional[Path] = None) -> Policy:
    """``--policy PATH``, else ``./sandbox.toml``, else the secure defaults."""
    if explicit is not None:
        return load(explicit)
    try:
        here = cwd or Path.cwd()
    except FileNotFoundError:  # (the working folder was removed: none can be in it)
        return defaults()
    candidate = here / POLICY_FILENAME
    try:
        found = candidate.is_file()
    except OSError as exc:  # (a folder you cannot search: red team 137, internal error)
        raise PolicyError(
            f"{candidate}: cannot look for a policy in the working folder: {exc.strerror or exc}",
            hint="run in a folder you can read, or name a policy with --policy FILE",
            file=str(candidate),
        ) from None
    if found:
        return load_found(candidate)
    if os.path.lexists(candidate):
        _refuse_odd(candidate)
    return defaults()


def _refuse_odd(candidate: Path, where: str = FOUND_WHERE) -> None:
    """A ``./sandbox.toml`` that is there but is no regular file (a folder, a FIFO, a link
    to /dev/zero or to nothing) is an error, not the defaults: they were taken silently,
    so a project's lower limits or its stdio files gave way to the defaults without a
    word (red team, round 52). Not read: the open of a FIFO would wait for a writer."""
    try:
        mode = candidate.stat().st_mode
    except OSError:
        what = "a symbolic link to nothing"
    else:
        from .outfile import kind_of

        what = kind_of(mode)
    raise PolicyError(
        f"{candidate}: {where}, but it is {what}, not a policy file",
        hint="remove or rename it, or name a policy with --policy FILE",
        file=str(candidate),
    )


# Limits a discovered policy may lower but not raise: each bounds what the guest may take
# from the host (memory, time, disk through its output, compile time). limits.fuel has no
# default (unmetered), so any value lowers it; limits.stack is bounded by its range.
CAPPED_LIMITS = (
    "limits.memory",
    "limits.timeout",
    "limits.table_elements",
    "limits.instances",
    "limits.output",
    "limits.compile_timeout",
    "limits.module_size",
)
# The flags that raise a capped limit again (the others: --policy FILE).
LIMIT_FLAGS = {"limits.memory": "--memory", "limits.timeout": "--timeout"}
# How a cache is kept: a discovered policy decides them only for a cache folder it names
# itself (runtime.cache_dir, inside the project); your own cache keeps the defaults (a
# cloned project's cache_size of a few bytes evicted every entry of your cache). They
# are held in ``capped`` like limits; native.cache.settings gives the asked values to
# the policy's own folder only (not to a --cache-dir given with it, say).
OWN_CACHE_KEYS = ("runtime.cache_size", "runtime.cache_compress")


def cap_limits(policy: Policy) -> None:
    """Hold a discovered policy's limits to the defaults: a sandbox.toml that came with a
    project may lower them, but one asking for 128 TiB of memory or a 366-day timeout is
    run with 256 MiB and 10 s (``policy.capped`` says what it asked; the command line
    warns). Raise a limit yourself with its flag (``--memory``, ``--timeout``), which
    replaces the value, or trust the file with ``--policy``."""
    base = defaults().values
    for dotted in CAPPED_LIMITS:
        asked, default = policy.values[dotted], base[dotted]
        if asked is not None and default is not None and asked > default:
            policy.capped = {**policy.capped, dotted: asked}
            policy.values[dotted] = default
    for dotted in OWN_CACHE_KEYS:
        asked, default = policy.values[dotted], base[dotted]
        if asked != default:
            policy.capped = {**policy.capped, dotted: asked}
            policy.values[dotted] = default


def capped_warnings(policy: Policy) -> list:
    """(message, hint) per limit :func:`cap_limits` held to its default and no flag set."""
    out = []
    for dotted, asked in getattr(policy, "capped", {}).items():
        kind = KEYS[dotted].kind
        show = _size_text if kind == "size" else _duration_text if kind == "duration" else str
        if kind == "bool":
            show = lambda value: "true" if value else "false"  # noqa: E731 - as in TOML
        if dotted in OWN_CACHE_KEYS:
            if policy.values["runtime.cache_dir"]:
                continue  # (its own folder gets it: native.cache.settings)
            out.append(
                (
                    f"{policy.source}: {dotted} = {show(asked)} applies only to a cache "
                    "folder the policy names (runtime.cache_dir); your cache keeps "
                    f"{show(policy.values[dotted])} ({policy.found_as} does not manage "
                    "your cache)",
                    f"to apply it to your cache: --policy {policy.source}",
                )
            )
            continue
        flag = LIMIT_FLAGS.get(dotted)
        how = f"{flag} {show(asked)}, or " if flag else ""
        out.append(
            (
                f"{policy.source}: {dotted} = {show(asked)} is above the default; held to "
                f"{show(policy.values[dotted])} ({policy.found_as} may lower limits, not "
                "raise them)",
                f"to allow it: {how}--policy {policy.source}",
            )
        )
    return out


# Folders walked to look for metadata inside a discovered policy's grants.
VCS_WALK_LIMIT = 20_000


def confine(policy: Policy, path: Path) -> None:
    """A ``sandbox.toml`` found in the working folder came with the project, not from the
    user: it may grant folders, name stdio files and a cache folder only inside its own
    folder. Anything outside (``read_write = ["~"]``, ``stdout = "~/.bashrc"``,
    ``cache_dir = "~/.ssh"``) is a policy error; ``--policy FILE`` trusts a file as it is.
    Inside, version-control metadata stays out of reach (``stdout = ".git/config"`` let a
    guest make git run a command on the host), and nothing is granted read-write: a guest
    can create a ``.git`` in any folder it can write (a subfolder too: ``cd out`` and the
    shell prompt's ``git status`` ran its ``core.fsmonitor``). It may pass
    through only locale and terminal variables (``inherit = ["*"]`` handed the guest
    every token in the environment)."""
    import os

    try:
        root = os.path.realpath(path.parent)
    except OSError as exc:  # a link swapped for a folder as realpath read it (EINVAL)
        raise PolicyError(
            f"{path}: its folder could not be resolved ({exc.strerror})",
            hint="it changed while it was read; run the command again",
            path=str(path),
        ) from None
    hint = (
        f"{policy.found_as} may only name paths inside its own folder, away from "
        f"version-control metadata; if you trust it as it is, pass it explicitly: "
        f"--policy {path}"
    )
    walked: set = set()  # the folders the grants' metadata walk saw, for all grants
    pinned: dict = {}
    for dotted, target, writable in _named_paths(policy):
        grant = dotted.startswith("filesystem")
        named = os.path.join(root, os.path.expanduser(str(target)))
        real, why = _outside_or_metadata(root, named, grant, writable, walked)
        if why:
            raise PolicyError(
                f"{path}: {dotted} names {target}, {why}",
                hint=hint,
                path=str(path),
                key=dotted,
            )
        if not grant:
            # The stdio files and the cache folder are opened where they were checked:
            # the path resolved here, not the text (a grant's host is resolved already).
            # - A relative path was opened in the folder the program had moved to (a
            #   chdir after discovery: `stdout = ".bashrc"` in your home), and a cache
            #   folder relative to where a linked sandbox.toml's target lies (`x/hooks`
            #   with `sub/x -> ../.git` next to it: red team round 99).
            # - A link through /proc/self/cwd (or /dev/fd) resolved here into this
            #   folder, and for whoever opened it later into their own working folder
            #   (a cluster worker's home: its ~/.bashrc written, its ~/.ssh/id_rsa read,
            #   red team round 99).
            if os.path.islink(named) and not os.path.exists(named):
                # Pinned, it would create what it names; kept, it is followed again
                # where it is opened (through /proc/self/cwd: red team round 100)
                raise PolicyError(
                    f"{path}: {dotted} names {target}, a symbolic link to nothing",
                    hint="name the file itself, or create what the link names",
                    path=str(path),
                    key=dotted,
                )
            # (a trailing "/" kept: "x/" names a folder, refused as an output)
            pin = real + os.sep if str(target).endswith(os.sep) else real
            policy.values[dotted] = pinned[dotted] = pin
    _confine_env(policy, path)
    policy.confined = root  # (the cache folder is checked to be in it again when opened)
    if pinned:
        policy.pinned = pinned


def recheck_confined(policy: Policy) -> None:
    """The stdio files and cache folder a found policy was pinned to (confine) still
    resolve to themselves, inside its folder and away from version-control metadata.
    A folder on the way swapped for a link since the check (a ``git pull`` during
    ``wasmsbx watch``, red team round 100) moved them: PolicyError (exit 101). Each
    sandbox made under such a policy, and each run of a watch, checks again. A value
    set since (``override``: yours, not the file's) is not the pinned one: left alone."""
    root = policy.confined
    if not root or not policy.pinned:
        return
    for dotted, target in policy.pinned.items():
        if policy.values.get(dotted) != target:
            continue
        text = str(target).rstrip(os.sep) or os.sep
        real, why = _outside_or_metadata(root, text, False, False, set())  # (confine's test)
        if why or real != text:
            raise PolicyError(
                f"{policy.source}: {dotted} names {target}, which now leads to {real}"
                + (f", {why}" if why else ""),
                hint="a folder on its way was replaced by a link after the policy was "
                "checked; look at the project's folder, then run again",
                path=str(policy.source),
                key=dotted,
            )


# What a discovered policy may pass through from your environment: locale and terminal
# settings. Everything else may be a secret (tokens, keys), which a guest can print into
# a log or a file that others read; `--env NAME` passes it when you choose to.
SAFE_INHERIT = ("LANG", "LANGUAGE", "LC_*", "TERM", "TZ", "COLUMNS", "LINES", "NO_COLOR")


def _confine_env(policy: Policy, path: Path) -> None:
    """A discovered policy's ``env.inherit`` may name only SAFE_INHERIT (or one LC_ name)."""
    for pattern in policy.values["env.inherit"]:
        locale = pattern.startswith("LC_") and pattern[3:].isalpha() and pattern.isupper()
        if pattern in SAFE_INHERIT or locale:
            continue
        raise PolicyError(
            f"{path}: env.inherit names {pattern!r}; {policy.found_as} may pass through "
            f"only {', '.join(SAFE_INHERIT)} (your environment may hold secrets the guest "
            "could print)",
            hint=f"pass a variable yourself with --env NAME, or trust the file: --policy {path}",
            path=str(path),
            key="env.inherit",
        )


def _named_paths(policy: Policy) -> list:
    """(dotted key, path, writable) for every path a policy names."""
    named = [
        (f"filesystem.{'read_write' if g.writable else 'read_only'}", g.host, g.writable)
        for g in policy.grants
    ]
    for stream in ("stdin", "stdout", "stderr"):
        value = policy.values.get(f"stdio.{stream}")
        # ("": no path, which opening says. "capture" is a path here: a policy file's
        # values are "inherit", "null" or a path, and stdin opened it as one, red team
        # round 101)
        if isinstance(value, str) and value not in ("inherit", "null", ""):
            named.append((f"stdio.{stream}", value, stream != "stdin"))
    cache_dir = policy.values.get("runtime.cache_dir")
    if cache_dir and not cache_dir.isspace():  # (blank: unset, as resolve_dir reads it)
        named.append(("runtime.cache_dir", cache_dir, True))
    return named


def _outside_or_metadata(root: str, target: str, grant: bool, writable: bool, walked: set) -> tuple:
    """(``target``, an absolute path, resolved; why a discovered policy may not name it:
    None if it may). ``walked``: see _metadata_below."""
    from .native.trustdir import in_metadata, within

    try:
        real = os.path.realpath(target)
    except OSError as exc:  # a link swapped for a folder as realpath read it (EINVAL)
        why = f"which could not be resolved ({exc.strerror}: it changed as it was checked)"
        return target, why
    if not within(real, root):
        return real, "outside the folder of this sandbox.toml"
    if in_metadata(real, root):
        return real, "inside version-control metadata (git would run commands written there)"
    if grant and writable:
        return real, (
            "writable: a guest that can write a folder can plant a .git there, whose "
            "config git runs as soon as a shell prompt or an editor runs git in it (WASI "
            "lets the guest create any name in its folder); grant it yourself with "
            "--dir if you accept that"
        )
    if grant:
        return real, _metadata_below(real, walked)
    return real, None


def _metadata_below(folder: str, walked: set) -> Optional[str]:
    """Why a granted folder is refused for what it holds (None: nothing found).

    ``walked`` holds every folder the policy's earlier grants walked (real paths: the
    walk starts at one and follows no link). Each was checked with all it holds (a walk
    that stops refuses the whole policy), so a grant of one of them, or a subfolder
    reaching one, is not walked again, and VCS_WALK_LIMIT bounds the folders walked for
    the whole policy, however its grants are written. Red team 77: the limit was per
    grant and nothing was shared, so 1,000 grants of one folder of 2,000 walked two
    million folders, 26 s before any command ran (hours within the 1 MiB policy cap).
    """
    if folder in walked:
        return None
    try:
        fd = os.open(folder, _WALK_DIR)
    except OSError as exc:
        return _unwalkable(exc, folder)
    # By descriptors, one per level (no recursion: os.walk recursed once per level on
    # Python 3.9-3.11, and a cloned project granting a folder 1,000 deep was an internal
    # error, RecursionError, in every command; nor whole paths, which past PATH_MAX
    # could not be opened: red team 130). An entry: [descriptor, real path, path shown
    # (relative to ``folder``), its subfolders still to visit].
    stack: list = []
    try:
        top, shown = folder, ""
        while True:
            if fd is not None:  # a folder reached: its names checked, it counts
                try:
                    files, folders = _names(fd)
                except OSError as exc:
                    problem = _unwalkable(exc, top)
                    if problem is not None:
                        os.close(fd)
                        return problem
                    files, folders = [], []  # (unreadable: to the guest too)
                found = [n for n in (*folders, *files) if n.lower() in VCS_NAMES]
                if found:
                    where = found[0] if not shown else f"{shown}/{found[0]}"
                    os.close(fd)
                    return (
                        f"which holds version-control metadata ({where}); grant a folder without it"
                    )
                walked.add(top)
                stack.append(
                    [fd, top, shown, [n for n in folders if os.path.join(top, n) not in walked]]
                )
                if len(walked) > VCS_WALK_LIMIT:
                    return (
                        f"which brings the folders this policy grants past "
                        f"{VCS_WALK_LIMIT:,} (each is checked for version-control "
                        "metadata); grant smaller folders"
                    )
            if not stack:
                return None
            parent, above, shown_above, pending = stack[-1]
            if not pending:
                os.close(parent)
                stack.pop()
                fd = None
                continue
            name = pending.pop()
            if len(stack) >= VCS_WALK_DEPTH:
                return (
                    f"which goes deeper than {VCS_WALK_DEPTH:,} folders (each is checked "
                    "for version-control metadata); grant a shallower folder"
                )
            try:
                fd = os.open(name, _WALK_DIR, dir_fd=parent)
            except OSError as exc:
                fd = None
                problem = _unwalkable(exc, os.path.join(above, name))
                if problem is not None:
                    return problem
                continue
            top = os.path.join(above, name)
            shown = name if not shown_above else f"{shown_above}/{name}"
    finally:
        for entry in stack:
            os.close(entry[0])


def _names(fd: int) -> tuple:
    """(names of what is not a folder, names of folders) in the folder open as ``fd``;
    links are not folders here (never followed). OSError as listing it raises (a folder
    that cannot be read: ``_unwalkable`` says whether that hides anything)."""
    files, folders = [], []
    with os.scandir(fd) as listing:
        for entry in listing:
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_folder = False
            (folders if is_folder else files).append(entry.name)
    return files, folders


def _unwalkable(exc: OSError, where: str) -> Optional[str]:
    """None where a folder that cannot be opened or listed hides nothing from the guest
    either: gone since it was listed, no longer a folder, a link now (never followed),
    or not readable by this user (the guest runs as this user). Anything else (out of
    descriptors, out of memory, an I/O error) is why the grant is refused: skipping it
    let a `.git` 100 folders down through under `ulimit -n 100` (red team 131)."""
    import errno

    if exc.errno in (errno.EACCES, errno.EPERM):
        # Not listable, but maybe searchable (x without r): a guest that knows names can
        # still open what lies below, at any depth and in any case, and no lookup by
        # name can cover every name (red team 132: `locked/sub/.git`, `_MTN`). Only a
        # folder this user cannot enter at all hides nothing from the guest.
        if os.access(where, os.X_OK):
            return (
                f"which holds a folder this user can enter but not list ({where}): it may "
                "hold version-control metadata at any depth; grant a folder without it"
            )
        return None
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return None
    return (
        f"which could not be searched for version-control metadata "
        f"({exc.strerror or exc} at {where}); grant a smaller folder, or raise `ulimit -n`"
    )


_WALK_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_WALK_DIR |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
VCS_WALK_DEPTH = 256  # folders deep, one descriptor each (a deeper grant is refused)


def override(
    policy: Policy,
    dotted: str,
    value: Any,
    origin: str = "command line",
    flag: Optional[str] = None,
) -> None:
    """Set one key from a command-line flag (validated like a file value).

    With ``flag`` (the option's name) a bad value is a usage error (exit 2) that names
    the flag, as for any other bad option; without it, a policy error (exit 101)."""
    key = KEYS[dotted]
    try:
        policy.values[dotted] = check_value(key, value, origin, base=Path.cwd())
    except PolicyError as exc:
        if flag is None:
            raise
        from .errors import UsageError

        message = exc.message.replace(f"{origin}: ", f"{flag}: ", 1)
        raise UsageError(message, hint=exc.hint, key=dotted, flag=flag) from None
    mark_explicit(policy, dotted)
    if dotted in policy.capped:  # the command line's value, not the capped file's
        policy.capped = {key: value for key, value in policy.capped.items() if key != dotted}


def mark_explicit(policy: Policy, dotted: str) -> None:
    """Record that a file or a flag set ``dotted`` (``policy.explicit``)."""
    if dotted not in policy.explicit:
        policy.explicit = tuple(sorted((*policy.explicit, dotted)))


def add_grant(policy: Policy, spec: str, writable: bool) -> Grant:
    """``--dir HOST[::GUEST]`` / ``--dir-ro``: add one directory grant."""
    dotted = "filesystem.read_write" if writable else "filesystem.read_only"
    try:
        grant = parse_grant(spec, writable, Path.cwd())
    except ValueError as exc:
        flag = "--dir" if writable else "--dir-ro"
        hint = "give an existing host directory"
        if ":" in spec and "::" not in spec:
            hint += '; for a host folder whose name contains ":", write HOST::GUEST'
        raise PolicyError(f"{flag} {spec}: {exc}", hint=hint, key=dotted) from None
    # A flag's grant replaces a grant of the same guest path (the policy file's, or an
    # earlier flag's): two were kept, and which one the guest saw was a matter of mode
    # and order (round 155).
    where = _guest_key(grant.guest)
    for key in ("filesystem.read_only", "filesystem.read_write"):
        held = policy.values[key]
        others = tuple(g for g in held if _guest_key(g.guest) != where)
        if len(others) != len(held):
            policy.values[key] = others
            mark_explicit(policy, key)
    policy.values[dotted] = (*policy.values[dotted], grant)
    mark_explicit(policy, dotted)
    return grant


def add_env(policy: Policy, spec: str) -> None:
    """``--env NAME=VALUE`` sets a variable; ``--env NAME`` passes the host's through."""
    name, sep, value = spec.partition("=")
    if not name:
        raise PolicyError(
            f"--env {spec!r}: expected NAME=VALUE or NAME",
            hint="for example --env MODE=fast or --env LANG",
        )
    for text in (name, value):  # (as the backends refuse such a variable: exit 2)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            from .errors import UsageError, as_bytes, inert

            raise UsageError(
                f"--env {inert(as_bytes(spec), 80)} is not UTF-8 text: the runtimes pass "
                "variables as UTF-8",
                hint="pass UTF-8 only",
            ) from None
    try:  # (as env.set and env.inherit check them in a policy)
        _check_env_name(name)
        _check_env_value(name, value)
    except ValueError as exc:
        raise PolicyError(
            f"--env {_quoted(spec)}: {exc}", hint="for example --env MODE=fast or --env LANG"
        ) from None
    if sep:
        policy.values["env.set"] = {**policy.values["env.set"], name: value}
        mark_explicit(policy, "env.set")
    else:
        policy.values["env.inherit"] = (*policy.values["env.inherit"], name)
        mark_explicit(policy, "env.inherit")


# ---------------------------------------------------------------------------- the example


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def render_example() -> str:
    """The text of sandbox.toml.example, derived from SCHEMA (a test keeps the file fresh)."""
    lines = [
        "# sandbox.toml — the policy wasmsbx runs a module under.",
        "#",
        "# Every key is listed with its default. wasmsbx reads --policy PATH, else",
        "# ./sandbox.toml, else these defaults. Command-line flags override single keys.",
        '# Sizes: "64MB" (10^6), "64MiB" (2^20), "512KiB", or bytes. Durations: "500ms",',
        '# "2s", "1m", or seconds. Unknown keys and wrong types are errors.',
    ]
    for section, doc in SECTIONS.items():
        lines += ["", f"# {doc}", f"[{section}]"]
        for key in SCHEMA:
            if key.section != section:
                continue
            lines.append(f"# {key.doc}")
            if key.default is None:
                lines.append(f"# {key.name} =   (unset)")
            else:
                lines.append(f"{key.name} = {_toml_literal(key.default)}")
    return "\n".join(lines) + "\n"
