"""Shared fixtures: the real CLI entry point, isolated dirs, and every available backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GUESTS = ROOT / "tests" / "guests"


def available_backends() -> list:
    """Labels such as "wasmtime", "wasmer:llvm" for every backend and compiler usable here."""
    from wasmsbx import backends

    labels = []
    for name in backends.names():
        adapter = backends.get(name)
        for compiler in adapter.compilers or (None,):
            if adapter.probe_compiler(compiler).available:
                labels.append(
                    f"{name}:{compiler}" if compiler and len(adapter.compilers) > 1 else name
                )
    return labels


BACKENDS = available_backends()


def _restore_sigint() -> None:
    """A shell starts a background job (``scripts/test &``, nohup, some CI runners) with
    SIGINT ignored, and every process it starts inherits that: a CLI child would then
    never see the Ctrl-C its test sends (Python installs its handler only where SIGINT is
    not ignored at start). Give this process, and so its children, the default back."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_restore_sigint()


def _hypothesis_ignores_the_clock() -> None:
    """Hypothesis fails a test whose examples take over 200 ms each (``deadline``) or whose
    inputs are slow to generate (the ``too_slow`` health check): wall-clock verdicts that
    a busy machine turns red (seen on the 3.9 leg beside five other test runs: "Input
    generation is slow: only generated 1 valid inputs after 1.46 seconds"). The tests
    bound their work by example counts instead."""
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "wasmsbx-tests", deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile("wasmsbx-tests")


_hypothesis_ignores_the_clock()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Parametrizes a behaviour test over every available backend and compiler."""
    return request.param


def one_compiler_each(labels: list) -> list:
    """Of ``labels``, one per backend: its default compiler (wasmtime, wasmer:cranelift)."""
    from wasmsbx import backends

    chosen = []
    for label in labels:
        name, compiler = backends.split(label)
        default = getattr(backends.get(name), "default_compiler", None)
        if compiler is None or compiler == default:
            chosen.append(label)
    return chosen


@pytest.hookimpl(tryfirst=True)  # a parametrize mark, set before pytest reads the marks
def pytest_generate_tests(metafunc) -> None:
    """A test marked ``any_compiler`` gets ``backend`` over one compiler per backend.

    For tests whose subject is the host side of a backend (WASI and stdio plumbing, grants,
    exit codes, a guest blocked in a host call, wasmer's child process), which wasmer's
    three compilers share: running them under each compiler re-tests the same code at
    three compile costs (LLVM's is the largest in the suite). Code generation (traps,
    fuel, stack, features, values) stays tested on every compiler."""
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "any_compiler"
    ):
        metafunc.definition.add_marker(
            pytest.mark.parametrize("backend", one_compiler_each(BACKENDS))
        )


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks we add
def pytest_collection_modifyitems(config, items) -> None:
    """Keep a module whose tests share a module- or session-scoped fixture (a dask cluster,
    real bench reports, built components) on one xdist worker (``--dist loadgroup``, as
    scripts/test runs it): each worker would otherwise build that fixture again.

    xdist's worker registers its pytest_collection_modifyitems (which turns each
    ``xdist_group`` mark into a ``@group`` suffix of the node id) after this conftest, so
    it ran first and never saw these marks: without ``tryfirst`` no group was formed.
    With pytest 9.2 xdist 3.8 forms no group at all (it renames ``item._nodeid``, which
    pytest 9.2 no longer reads: pytest-dev/pytest-xdist#1386), so this holds on the 3.9
    leg (pytest 8.4) only, until xdist follows."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or item.get_closest_marker("xdist_group"):
            continue
        if getattr(item.module, "XDIST_SPREAD", False):  # its shared fixture is cheap to redo
            continue
        for name in item.fixturenames:
            defs = info.name2fixturedefs.get(name)
            if defs and defs[-1].scope in ("module", "session") and defs[-1].baseid:
                item.add_marker(pytest.mark.xdist_group(item.module.__name__))
                break


def capabilities_of(label: str):
    from wasmsbx import backends

    name, compiler = backends.split(label)
    return backends.get(name).capabilities(compiler)


def require_capability(label: str, *names: str) -> None:
    """Skip by declared capability, never by backend name."""
    caps = capabilities_of(label)
    missing = [n for n in names if not caps.has(n)]
    if missing:
        pytest.skip(f"{label} does not declare {', '.join(missing)}")


def require_module(label: str, *paths) -> None:
    """Skip when a module uses a wasm feature the label does not declare (e.g. add.wat's
    multi-value divmod on wasmer:singlepass): a skip by declared capability."""
    from wasmsbx.runner.sandbox import read_module
    from wasmsbx.wasm.facts import read_facts

    for path in paths:
        used = read_facts(read_module(path)).features - {"unknown"}
        require_capability(label, *sorted(used))


_probe_verdicts = None  # [(name, bytes)]: wasmer's probe verdicts, probed once per process


def wasmer_probe_verdicts() -> list:
    """The files in which wasmsbx caches which of wasmer's compilers work here (empty
    where wasmer is not installed), probed once per process in a folder of their own."""
    global _probe_verdicts
    if _probe_verdicts is None:
        import shutil
        import tempfile

        from wasmsbx.backends.wasmer.backend import WasmerBackend

        root = tempfile.mkdtemp(prefix="wasmsbx-probes-")
        saved = os.environ.get("WASMSBX_CACHE_DIR")
        os.environ["WASMSBX_CACHE_DIR"] = root
        try:
            WasmerBackend().probe()
            probes = Path(root, "probes")
            files = sorted(probes.glob("wasmer-*.txt")) if probes.is_dir() else []
            _probe_verdicts = [(f.name, f.read_bytes()) for f in files]
        finally:
            if saved is None:
                del os.environ["WASMSBX_CACHE_DIR"]
            else:
                os.environ["WASMSBX_CACHE_DIR"] = saved
            shutil.rmtree(root, ignore_errors=True)
    return _probe_verdicts


# Modules whose CLI children start with wasmer's probe verdicts in their cache dir (see
# ``isolated``): their subject is neither the cache folder nor probing.
WARM_WASMER_PROBES = frozenset(
    f"tests.{name}"
    for name in [
        "test_api_readme",
        "test_api_spectest",
        "test_attack_discovered_env",
        "test_attack_discovered_vcs",
        "test_attack_outputs",
        "test_attack_policy_paths",
        "test_attack_stdio",
        "test_attack_stdio_links",
        "test_attack_trust_outputs",
        "test_audit_c",
        "test_audit_log",
        "test_backend_behaviour",
        "test_backend_crashes",
        "test_batch",
        "test_bench_suite",
        "test_closed_output",
        "test_deadlines",
        "test_discovered_policy",
        "test_guest_exit",
        "test_input_caps",
        "test_limit_totals",
        "test_resource_bombs",
        "test_run",
        "test_sandbox_escapes",
        "test_select",
        "test_stream",
        "test_trust_outputs",
        "test_watch",
    ]
)


# A module of one export, add(i32, i32) -> i32.
ADD_WAT = (
    '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
)


@pytest.fixture
def add(isolated):
    """add.wat (``ADD_WAT``) in the test's own folder."""
    path = isolated / "add.wat"
    path.write_text(ADD_WAT)
    return path


@pytest.fixture
def deep_tmp(tmp_path):
    """``tmp_path`` for a test that makes folders nested past Python's recursion limit:
    removed afterwards, pass or fail, by fstree (pytest removes old test folders with
    shutil.rmtree, which fails on them, RecursionError, for every later run)."""
    yield tmp_path
    from wasmsbx import fstree

    for child in list(tmp_path.iterdir()):
        fstree.remove_tree(str(child))


@pytest.fixture(scope="session", autouse=True)
def session_dirs(tmp_path_factory):
    """A cache and a trust folder for the whole session, under pytest's own: a module- or
    session-scoped fixture (a Sandbox its module's tests share) is made before any test's
    ``isolated``, and those used the user's real cache and trust folders (CI found an
    18 MB component compiled into ~/.cache/wasmsbx, hit by every later run)."""
    root = tmp_path_factory.mktemp("session-dirs")
    names = {"WASMSBX_CACHE_DIR": root / "cache", "WASMSBX_TRUST_DIR": root / "trust"}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(path) for name, path in names.items()})
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own cache dir, trust folder (keys) and a cwd without a
    sandbox.toml; no module an earlier test loaded from its cache is held in memory."""
    from wasmsbx.runner import shared

    shared.forget_loaded()
    cache = tmp_path / "cache"
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(cache))
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(tmp_path / "trust"))  # keys: never ~/.config
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
    # Cache hits the test kept in memory are written to its own cache's journal now
    # (native.cache.flush_hits), not when a later test reads its records
    from wasmsbx.native import flush_hits

    flush_hits()


@pytest.fixture(autouse=True)
def warm_wasmer_probes(request, isolated) -> None:
    """In the modules of ``WARM_WASMER_PROBES`` the test's cache dir starts with wasmer's
    probe verdicts, as after any earlier run: each CLI child there would otherwise probe
    the three compilers in children of its own (0.09 s of CPU of the 0.19 s a small
    `wasmsbx run` costs on the 3.9 leg). Probing itself: tests/test_wasmer_probe.py, and
    every CLI child of the other modules."""
    if request.module.__name__ not in WARM_WASMER_PROBES:
        return
    cache = isolated.parent / "cache"
    for name, data in wasmer_probe_verdicts():
        os.makedirs(cache / "probes", exist_ok=True)  # as wasmsbx's own probe leaves them
        (cache / "probes" / name).write_bytes(data)


class Result:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout.decode("utf-8", "replace")
        self.stderr = proc.stderr.decode("utf-8", "replace")
        self.stdout_bytes = proc.stdout

    def __repr__(self) -> str:
        return f"Result(code={self.code}, stdout={self.stdout!r}, stderr={self.stderr!r})"

    def json(self):
        import json

        return json.loads(self.stdout)


def run_cli(
    *args, input: bytes = b"", env: dict | None = None, cwd=None, timeout: float = 120
) -> Result:
    """Run the real entry point (python -m wasmsbx) in a child process."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "wasmsbx", *[str(a) for a in args]],
        input=input,
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )
    return Result(proc)


@pytest.fixture
def cli(request):
    """The CLI: a child process (the real entry point), or, in a module marked
    ``pytest.mark.inprocess``, ``run_main`` in this process (~15x less CPU per call);
    a test marked ``pytest.mark.entry_point`` there still gets a child process."""
    node = request.node
    inprocess = node.get_closest_marker("inprocess") and not node.get_closest_marker("entry_point")
    return run_main if inprocess else run_cli


def run_main(
    *args, input: bytes = b"", env: dict | None = None, cwd=None, timeout: float = 120
) -> Result:
    """Call ``wasmsbx.cli.main(argv)`` in this process, like ``run_cli`` but without the
    ~0.3 s start of a new interpreter: file descriptors 0, 1 and 2 are redirected for
    the call, so a WASI guest's own output is captured too. Not for what needs the real
    entry point: ``os._exit`` (watch), signals, broken pipes, start-up time."""
    import io
    import tempfile

    from wasmsbx.cli import main
    from wasmsbx.runner import shared

    shared.forget_loaded()  # a new process holds no module an earlier run loaded
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_streams, saved_fds = (sys.stdin, sys.stdout, sys.stderr), {}
    files = [tempfile.TemporaryFile() for _ in range(3)]  # noqa: SIM115 (closed below)
    files[0].write(input)
    files[0].seek(0)
    try:
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        if cwd is not None:
            os.chdir(cwd)
        for stream in saved_streams[1:]:
            stream.flush()
        for fd, f in enumerate(files):
            saved_fds[fd] = os.dup(fd)
            os.dup2(f.fileno(), fd)
        sys.stdin = io.TextIOWrapper(io.BytesIO(input), encoding="utf-8")
        sys.stdout, sys.stderr = (
            io.TextIOWrapper(os.fdopen(os.dup(fd), "wb"), encoding="utf-8", errors="replace")
            for fd in (1, 2)
        )
        code = main([str(a) for a in args])
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream not in saved_streams:
                stream.close()
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        for fd, saved in saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    out, err = (f.seek(0) or f.read() for f in files[1:])
    for f in files:
        f.close()
    return Result(subprocess.CompletedProcess(list(args), code, out, err))


@pytest.fixture
def cli_inproc():
    """The CLI called in this process (see ``run_main``): for tests of parsing and output."""
    return run_main


# Where Debian's rustc (scripts/install-toolchain installs it with its wasm32-wasi std)
# lives, for machines whose rustup toolchain on PATH lacks a WebAssembly target.
DEBIAN_RUST = ("/usr/bin/rustc", "/usr/bin/cargo")


@pytest.fixture
def rust_env(monkeypatch) -> dict:
    """RUSTC and CARGO (set here, and returned for subprocesses) of a Rust toolchain with a
    WebAssembly WASI target: the one on PATH, else Debian's. Skips, with the reason
    printed, where there is none."""
    import shutil

    from wasmsbx.native import build

    for rustc, cargo in ((shutil.which("rustc"), shutil.which("cargo")), DEBIAN_RUST):
        if not (rustc and cargo and os.access(rustc, os.X_OK) and os.access(cargo, os.X_OK)):
            continue
        monkeypatch.setenv("RUSTC", rustc)
        monkeypatch.setenv("CARGO", cargo)
        try:
            build.rust_toolchain(need_cargo=True)
        except build.ToolchainMissing:
            continue
        return {"RUSTC": rustc, "CARGO": cargo}
    reason = "no Rust toolchain with a wasm32 WASI target (scripts/install-toolchain installs one)"
    print(f"SKIP: {reason}")
    pytest.skip(reason)


@pytest.fixture
def later(monkeypatch):
    """Cache entries look old enough to be remembered (native.entry's MEMO_MARGIN)."""
    from .cache_helpers import remember_entries_now

    remember_entries_now(monkeypatch)


@pytest.fixture
def hashed(monkeypatch) -> list:
    """The cache entries hashed in full from now on (entry._hash_mapped calls)."""
    from .cache_helpers import spy_full_hashes

    return spy_full_hashes(monkeypatch)


@pytest.fixture
def reads(monkeypatch) -> list:
    """The module files sandboxes read (runner.sandbox.read_file), as given."""
    from wasmsbx.runner import sandbox as sandbox_mod

    calls: list = []
    real = sandbox_mod.read_file

    def spy(path, *args, **kw):
        calls.append(str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(sandbox_mod, "read_file", spy)
    return calls
