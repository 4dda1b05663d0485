"""The wasmer adapter (PyPI ``wasmer`` 1.1.0, engine 2.1.1): availability and capabilities.

This module never imports wasmer. Its wheels exist only for CPython 3.7-3.10 on Linux
x86_64, and the ``wasmer-compiler-llvm`` 1.1.0 wheel as published kills the process on
import (an ld.so assertion over its renamed ``libtinfo``). So each compiler is first
tried in a child process (``sys.executable -I``, ``compiling.worker_path()``), and the
verdict is cached on disk, keyed by the interpreter and by the version, size and mtime
of every wasmer extension module, so a later run pays one ``stat`` per package. Only
after a compiler's probe passed does ``engine()`` import it (wasmer_engine.py).

What wasmer cannot do in-process (no fuel, no memory or table limits, no interruption,
the GIL held while wasm runs, stdio fixed to the real fds 0/1/2) the engine does from
outside: the guest runs in a forked child that is killed at the deadline, with the
policy's caps compiled into the module and its stdio piped through the parent.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Optional

from ..base import Availability, Backend, Capabilities, EngineOptions
from .features import features_for

COMPILERS = ("cranelift", "llvm", "singlepass")
PACKAGES = {
    "cranelift": "wasmer_compiler_cranelift",
    "llvm": "wasmer_compiler_llvm",
    "singlepass": "wasmer_compiler_singlepass",
}
DIST = {name: name.replace("_", "-") for name in ("wasmer", *PACKAGES.values())}
INSTALL = "pip install 'wasmsbx[wasmer]'"
WHEELS = "wasmer wheels exist only for CPython 3.7-3.10 on Linux x86_64"
PROBE_TIMEOUT = 120.0
CACHE_FORMAT = "wasmsbx-wasmer-probe 1"

# The probe compiles a two-function module (so a compiler's thread pool really runs),
# instantiates it and calls it: f(x) = g(x) + 1, g(x) = x.
_PROBE_WASM = (
    "0061736d0100000001060160017f017f0303020000070501016600000a100209002000100141016a0b040020000b"
)
_PROBE_SCRIPT = f"""
WASM = {_PROBE_WASM!r}
import sys
compiler, sys.path[:] = sys.argv[1], sys.argv[2:]
import wasmer
from wasmer import engine, Instance, Module, Store
package = __import__(compiler)
store = Store(engine.Universal(package.Compiler))
instance = Instance(Module(store, bytes.fromhex(WASM)))
assert instance.exports.f(41) == 42, "wrong result"
print("ok", wasmer.__version__)
"""


# Enforced from outside the runtime (see the module docstring); absent on purpose:
# fuel, interrupt (in-process), stack-limit, wasi-readonly, fs-confined (preopens are
# always read-write and absolute paths and symlinks escape them: CVE-2024-38358 class).
SECURITY = frozenset(
    {"timeout", "memory-limit", "table-limit", "instance-limit", "wasi", "stdio-redirect"}
)

# Measured by benchmarks/backends.py: a CPU-bound C guest (benchmarks/guests/cpu.c, clang
# -O2, 21 KB) on 2 shared vCPUs, medians of 3 runs. Scores are 0..1 on a log scale, the
# fastest backend:compiler = 1.0 (see speed_score there). Compile / run bench(4):
# cranelift 41 ms / 76 ms, llvm 739 ms / 70 ms, singlepass 4.3 ms / 267 ms
# (wasmtime: 56 ms / 98 ms). README "Backends" has the table.
SPEED = {
    "cranelift": (0.65, 0.9),  # (compile_speed, run_speed)
    "llvm": (0.25, 1.0),
    "singlepass": (1.0, 0.45),
}
NOTES = {
    "cranelift": "the default compiler: quick to compile, good code; SIMD without the "
    "operators finished last (popcnt, extmul, ...: refused up front)",
    "llvm": "slowest to compile (~18x cranelift), fastest code",
    "singlepass": "fastest to compile (~10x cranelift), ~3.5x slower code; no SIMD, "
    "no multi-value, one-frame backtraces",
}
# wasmer-python 1.1.0's Store takes an engine only: its Tunables (how much a memory
# reserves) are wasmer's defaults, 4 GiB + a 2 GiB guard per memory (measured: 6 GiB of
# VmSize per instance of a one-page memory declaring a 16-page maximum), and cannot be set.
DENSE_NOTE = (
    'no dense-memory: runtime.memory_layout = "dense" excludes wasmer, since '
    "wasmer-python 1.1.0 cannot size a memory's reservation (each reserves 6 GiB, in "
    "the instance's own child process)"
)
COMMON_NOTES = (
    "runs each instance in a forked child process: limits enforced from outside "
    "(kill at the deadline, caps compiled into the module); costs a fork per instance "
    "and ~40 us per call",
    "no fuel, no stack limit; directory grants are refused (not confinable: CVE-2024-38358)",
    "no component model: wasmer-python 1.1.0 runs core modules only, so WebAssembly "
    "components (WASI 0.2) go to wasmtime",
    DENSE_NOTE,
)


def cache_dir() -> str:
    """$WASMSBX_CACHE_DIR, else the user cache dir. Probing happens only on Linux, where
    that is platformdirs' rule ($XDG_CACHE_HOME or ~/.cache, plus "wasmsbx"), written out
    here because importing platformdirs would cost every ``wasmsbx run`` several ms."""
    explicit = os.environ.get("WASMSBX_CACHE_DIR")
    if explicit and not explicit.isspace():  # (blank: unset, as native.cache reads it)
        return explicit
    from ...native.trustdir import user_cache_text

    return user_cache_text()


class _Found:
    """Where each wasmer package is, as seen by this process's sys.path (no imports)."""

    def __init__(self) -> None:
        from importlib.machinery import PathFinder  # no import of the packages themselves

        self.dirs: dict = {}  # package -> directory
        for package in ("wasmer", *PACKAGES.values()):
            try:
                spec = PathFinder.find_spec(package)
            except (ImportError, ValueError):
                spec = None
            if spec is not None and spec.origin:
                self.dirs[package] = os.path.dirname(spec.origin)
        self.versions: dict = {}
        listings: dict = {}
        for package, directory in self.dirs.items():
            site = os.path.dirname(directory)
            if site not in listings:
                try:
                    listings[site] = os.listdir(site)
                except OSError:
                    listings[site] = []
            prefix = package + "-"
            for entry in listings[site]:
                if entry.startswith(prefix) and entry.endswith(".dist-info"):
                    self.versions[package] = entry[len(prefix) : -len(".dist-info")]

    def key(self) -> str:
        """Interpreter + every package's version and extension modules (size, mtime)."""
        parts = [sys.executable, sys.version.replace("\n", " ")]
        for package, directory in sorted(self.dirs.items()):
            parts.append(f"{package}={self.versions.get(package, '?')}")
            try:
                entries = sorted(os.listdir(directory))
            except OSError:
                entries = []
            for entry in entries:
                if entry.endswith(".so"):
                    st = os.stat(os.path.join(directory, entry))
                    parts.append(f"{directory}/{entry}:{st.st_size}:{st.st_mtime_ns}")
            try:  # the bundled libraries (a libtinfo symlink added later changes the verdict)
                parts.append(",".join(sorted(os.listdir(directory + ".libs"))))
            except OSError:
                pass
        return "|".join(parts)


def _unsupported_platform() -> Optional[str]:
    """What this interpreter is, when it is not one wasmer has wheels for (else None)."""
    machine = os.uname().machine if hasattr(os, "uname") else "unknown"
    if sys.implementation.name == "cpython" and sys.platform.startswith("linux"):
        if machine == "x86_64":
            return None
    version = ".".join(map(str, sys.version_info[:3]))
    return f"{sys.implementation.name} {version} on {sys.platform} {machine}"


def probe_in_child(compiler: str, path: Optional[list] = None, timeout: float = PROBE_TIMEOUT):
    """Import, compile, instantiate and call with one compiler in a child process.

    Returns ``(ok, version, reason, fix)``. A child that aborts or is killed is a verdict
    ("importing it kills the process ..."), never a crash of this process.
    """
    import subprocess

    package = PACKAGES[compiler]
    if path is None:  # (never '' or the working folder: compiling.worker_path)
        from ..compiling import WORKERS

        path = WORKERS.path()
    argv = [sys.executable, "-I", "-S", "-c", _PROBE_SCRIPT, package, *path]
    try:
        proc = subprocess.run(
            argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd="/"
        )
    except subprocess.TimeoutExpired:
        return False, None, f"probing {package} timed out after {timeout:g}s", None
    except OSError as exc:
        return False, None, f"cannot start {sys.executable} to probe {package}: {exc}", None
    out = proc.stdout.decode("utf-8", "replace").split()
    if proc.returncode == 0 and out[:1] == ["ok"]:
        return True, (out[1] if len(out) > 1 else None), None, None
    return (False, None, *_failure(package, proc.returncode, proc.stderr))


def _failure(package: str, code: int, stderr: bytes) -> tuple:
    """The reason and fix for a probe child that failed with ``code``."""
    import signal

    lines = [x.strip() for x in stderr.decode("utf-8", "replace").splitlines() if x.strip()]
    detail = lines[-1] if lines else ""
    for line in lines:
        if "ld.so" in line or "libtinfo" in line:
            detail = line
            break
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exit status {code}"
    dies = code < 0 or code >= 126 or "Inconsistency detected by ld.so" in detail
    verb = "kills the process" if dies else "fails"
    reason = f"importing {package} {verb} ({how})" + (f": {detail[:200]}" if detail else "")
    if package == "wasmer_compiler_llvm" and ("libtinfo" in detail or "ld.so" in detail):
        fix = (
            "the published wasmer-compiler-llvm 1.1.0 wheel names libtinfo-91270aa7.so.5 but "
            "versions symbols against libtinfo.so.5: run `patchelf --replace-needed "
            "libtinfo-91270aa7.so.5 libtinfo.so.5` on its .so and symlink libtinfo.so.5 in "
            "wasmer_compiler_llvm.libs (scripts/provision-py39 does both), or use "
            "wasmer:cranelift / wasmer:singlepass"
        )
    else:
        fix = f"reinstall it: pip install --force-reinstall {DIST.get(package, package)}==1.1.0"
    return reason, fix


class _Verdicts:
    """Per-compiler Availability, from the disk cache or from child probes."""

    def __init__(self) -> None:
        self.by_compiler: dict = {}
        self.version: Optional[str] = None
        self.probed = False  # True when this process ran the child probes

    def fill(self) -> None:
        here = _unsupported_platform()
        if here is not None:
            self._all(f"{WHEELS} (this is {here})", "run wasmsbx on Linux x86_64 with CPython")
            return
        found = _Found()
        self.version = found.versions.get("wasmer")
        if "wasmer" not in found.dirs:
            if sys.version_info >= (3, 11):
                self._all(
                    f"{WHEELS}; this is Python {sys.version.split()[0]}",
                    f"use Python 3.10 or older with `{INSTALL}`",
                )
            else:
                self._all("the wasmer package is not installed", f"`{INSTALL}`")
            return
        key = found.key()
        cached = _read_cache(key)
        if cached is not None:
            self.by_compiler = cached
            return
        self._probe(found)
        _write_cache(key, self.by_compiler)

    def _all(self, reason: str, fix: str) -> None:
        for compiler in COMPILERS:
            self.by_compiler[compiler] = Availability(False, None, reason, fix)

    def _probe(self, found: _Found) -> None:
        from concurrent.futures import ThreadPoolExecutor

        wanted = [c for c in COMPILERS if PACKAGES[c] in found.dirs]
        for compiler in COMPILERS:
            if compiler not in wanted:
                dist = DIST[PACKAGES[compiler]]
                self.by_compiler[compiler] = Availability(
                    False, None, f"{dist} is not installed", f"`{INSTALL}`"
                )
        from ..compiling import WORKERS  # (here: 3.9's imports are not safe in threads)

        path = WORKERS.path()
        with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as pool:
            results = list(pool.map(lambda c: probe_in_child(c, path), wanted))
        for compiler, (ok, version, reason, fix) in zip(wanted, results):
            self.by_compiler[compiler] = Availability(ok, version, reason, fix)
        self.probed = True


def _cache_name(key: str) -> str:
    import zlib  # the file holds the whole key, so a collision only costs a probe

    data = key.encode("utf-8", "surrogateescape")
    return f"wasmer-{zlib.crc32(data):08x}{zlib.adler32(data):08x}.txt"


def _clean(text: Optional[str]) -> str:
    return (text or "").replace("\t", " ").replace("\n", " ")


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_FOLDER = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
PROBE_MAX = 64 << 10  # a verdicts file is a few hundred bytes


def _private(fd: int) -> bool:
    """Whether the folder or file open as ``fd`` is this user's, and no one else's to
    change: a folder of this user's that others may write (made by an older wasmsbx
    under umask 002) is made private (0700), as the cache's own folder is."""
    info = os.fstat(fd)
    if info.st_uid != os.getuid():
        return False
    if not info.st_mode & 0o022:
        return True
    if not stat.S_ISDIR(info.st_mode):
        return False
    try:
        os.chmod(f"/proc/self/fd/{fd}", 0o700)
    except OSError:
        return False
    return True


def _probes_folder(make: bool) -> Optional[int]:
    """The cache folder's ``probes`` (a descriptor), if both are this user's own and no
    one else can write them; made (0700) with ``make``. None otherwise: the verdicts are
    probed again, never read from or written to a folder someone else controls (red
    team 103: another user's /tmp/wsx held a FIFO that hung every run on Python 3.9, or
    a link that had the verdicts written into a folder of theirs choosing)."""
    try:
        root = os.open(cache_dir(), _FOLDER)  # (the folder you named: a link of yours too)
    except (OSError, ValueError):
        if not make:
            return None
        try:
            from ...native.trustdir import make_private

            make_private(cache_dir())  # (0700 on the way too, whatever the umask: round 137)
            root = os.open(cache_dir(), _FOLDER)
        except (OSError, ValueError):
            return None
    try:
        if not _private(root):
            return None
        if make:
            try:
                os.mkdir("probes", 0o700, dir_fd=root)
            except FileExistsError:
                pass
        folder = os.open("probes", _FOLDER | _NOFOLLOW, dir_fd=root)
    except OSError:
        return None
    finally:
        os.close(root)
    try:
        if _private(folder):
            return folder
    except OSError:
        pass
    os.close(folder)
    return None


def _read_cache(key: str) -> Optional[dict]:
    """The cached verdicts for ``key``, or None (missing, stale or unreadable; not a
    regular file of this user's, in a folder of this user's: see _probes_folder)."""
    if not hasattr(os, "getuid"):  # pragma: no cover - probing runs on Linux only
        return None
    folder = _probes_folder(make=False)
    if folder is None:
        return None
    try:
        fd = os.open(
            _cache_name(key), os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=folder
        )
    except OSError:
        return None
    finally:
        os.close(folder)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > PROBE_MAX or not _private(fd):
            return None
        data = os.read(fd, PROBE_MAX + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if lines[:2] != [CACHE_FORMAT, key]:
        return None
    verdicts = {}
    for line in lines[2:]:
        fields = line.split("\t")
        if len(fields) == 5 and fields[0] in COMPILERS:
            compiler, ok, version, reason, fix = fields
            verdicts[compiler] = Availability(
                ok == "1", version or None, reason or None, fix or None
            )
    return verdicts if set(verdicts) == set(COMPILERS) else None


def _write_cache(key: str, verdicts: dict) -> None:
    """Best effort and atomic (a new file renamed into place in the probes folder as
    opened, never through a link): an unwritable cache dir only means probing again
    next time."""
    if not hasattr(os, "getuid"):  # pragma: no cover - probing runs on Linux only
        return
    lines = [CACHE_FORMAT, key]
    for compiler in COMPILERS:
        a = verdicts[compiler]
        fields = ("1" if a.available else "0", a.version, a.reason, a.fix)
        lines.append("\t".join([compiler, *(_clean(x) for x in fields)]))
    folder = _probes_folder(make=True)
    if folder is None:
        return
    tmp = f".probe-{os.getpid()}.{os.urandom(4).hex()}"
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600, dir_fd=folder
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(tmp, _cache_name(key), src_dir_fd=folder, dst_dir_fd=folder)
        except OSError:
            try:
                os.unlink(tmp, dir_fd=folder)
            except OSError:
                pass
    except OSError:
        pass
    finally:
        os.close(folder)


class WasmerBackend(Backend):
    name = "wasmer"
    compilers = COMPILERS
    default_compiler = "cranelift"

    def __init__(self) -> None:
        self._verdicts: Optional[_Verdicts] = None

    def verdicts(self) -> _Verdicts:
        if self._verdicts is None:
            verdicts = _Verdicts()
            verdicts.fill()
            self._verdicts = verdicts
        return self._verdicts

    def probe(self) -> Availability:
        """Available when at least one compiler works; the reason of the first otherwise."""
        verdicts = self.verdicts()
        states = [verdicts.by_compiler[c] for c in COMPILERS]
        for state in states:
            if state.available:
                return Availability(True, verdicts.version or state.version)
        return states[0]

    def probe_compiler(self, compiler: Optional[str]) -> Availability:
        verdicts = self.verdicts()
        state = verdicts.by_compiler[compiler or self.default_compiler]
        if state.available and not state.version:
            state = state._replace(version=verdicts.version)
        return state

    def version(self) -> Optional[str]:
        return self.verdicts().version

    def capabilities(self, compiler: Optional[str] = None) -> Capabilities:
        compiler = compiler or self.default_compiler
        compile_speed, run_speed = SPEED[compiler]
        return Capabilities(
            features=features_for(compiler),
            security=SECURITY,
            performance=frozenset({"aot"}),
            # singlepass reports only the innermost frame of a trap: no backtrace
            debugging=frozenset() if compiler == "singlepass" else frozenset({"backtrace"}),
            compilers=self.compilers,
            compile_speed=compile_speed,
            run_speed=run_speed,
            notes=(NOTES[compiler], *COMMON_NOTES),
        )

    def engine(self, options: EngineOptions):
        from ...errors import BackendUnavailable

        compiler = options.compiler or self.default_compiler
        if options.reservation is not None:  # selection excludes it first (dense-memory)
            raise BackendUnavailable(
                'wasmer cannot run under runtime.memory_layout = "dense": wasmer-python '
                "1.1.0 cannot size a linear memory's reservation",
                hint='use the wasmtime backend, or runtime.memory_layout = "fast"',
            )
        if compiler not in COMPILERS:
            raise BackendUnavailable(
                f"wasmer has no compiler {compiler!r}",
                hint=f"one of: {', '.join(f'wasmer:{c}' for c in COMPILERS)}",
            )
        state = self.probe_compiler(compiler)
        if not state.available:
            raise BackendUnavailable(
                f"wasmer:{compiler} is unavailable: {state.reason}", hint=state.fix
            )
        from .engine import WasmerEngine

        return WasmerEngine(options._replace(compiler=compiler), self.verdicts().version)
