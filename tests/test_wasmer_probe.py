"""Probing wasmer: child processes, the on-disk verdict cache, and exact reasons.

The LLVM wheel as published kills the process that imports it, so these tests plant
fake packages that do the same (os.abort(), or the ld.so assertion and exit 127) and
check that wasmsbx only reports it.
"""

from __future__ import annotations

import os
import sys

import pytest

from wasmsbx import backends
from wasmsbx.backends.base import Availability
from wasmsbx.backends.wasmer import backend as wasmer_backend

from .conftest import EXAMPLES

LD_SO = (
    "Inconsistency detected by ld.so: dl-version.c: 204: _dl_check_map_versions: "
    "Assertion `needed != NULL' failed!"
)
STUB_WASMER = "engine = Instance = Module = Store = None\n__version__ = '0.0-stub'\n"


def real_wasmer_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("wasmer") is not None


def plant(root, package: str, body: str) -> None:
    (root / package).mkdir(parents=True, exist_ok=True)
    (root / package / "__init__.py").write_text(body)


@pytest.fixture
def aborting(tmp_path):
    """A directory with a stub wasmer and a wasmer_compiler_llvm that aborts on import."""
    root = tmp_path / "fake"
    plant(root, "wasmer", STUB_WASMER)
    plant(root, "wasmer_compiler_llvm", "import os\nos.abort()\n")
    return root


def test_child_probe_survives_an_abort(aborting):
    ok, version, reason, fix = wasmer_backend.probe_in_child("llvm", [str(aborting), *sys.path])
    assert (ok, version) == (False, None)
    assert reason.startswith("importing wasmer_compiler_llvm kills the process (killed by SIGABRT")
    assert "pip install --force-reinstall wasmer-compiler-llvm==1.1.0" in fix


def test_child_probe_names_the_libtinfo_problem(tmp_path):
    root = tmp_path / "fake"
    plant(root, "wasmer", STUB_WASMER)
    body = f"import os\nos.write(2, {LD_SO!r}.encode() + b'\\n')\nos._exit(127)\n"
    plant(root, "wasmer_compiler_llvm", body)
    ok, _, reason, fix = wasmer_backend.probe_in_child("llvm", [str(root), *sys.path])
    assert not ok
    assert reason == f"importing wasmer_compiler_llvm kills the process (exit status 127): {LD_SO}"
    assert "patchelf --replace-needed libtinfo-91270aa7.so.5 libtinfo.so.5" in fix
    assert "wasmer:cranelift" in fix


def test_child_probe_reports_an_import_error(tmp_path):
    root = tmp_path / "fake"
    plant(root, "wasmer", STUB_WASMER)
    plant(root, "wasmer_compiler_singlepass", "raise ImportError('libfoo.so: cannot open')\n")
    ok, _, reason, _ = wasmer_backend.probe_in_child("singlepass", [str(root), *sys.path])
    assert not ok
    assert reason == (
        "importing wasmer_compiler_singlepass fails (exit status 1): "
        "ImportError: libfoo.so: cannot open"
    )


class FakeFound:
    """Stands in for wasmer_backend._Found: where the packages are, and the cache key."""

    key_text = "interp|wasmer=1.1.0|llvm.so:1:1"

    def __init__(self) -> None:
        self.dirs = {p: "/nowhere/" + p for p in ("wasmer", *wasmer_backend.PACKAGES.values())}
        self.versions = {"wasmer": "1.1.0"}

    def key(self) -> str:
        return self.key_text


@pytest.fixture
def fake_probes(monkeypatch):
    """Child probes replaced by a recorder: llvm 'aborts', the others work."""
    calls = []

    def probe(compiler, path=None, timeout=None):
        calls.append(compiler)
        if compiler == "llvm":
            return False, None, "importing wasmer_compiler_llvm kills the process", "patch it"
        return True, "1.1.0", None, None

    monkeypatch.setattr(wasmer_backend, "probe_in_child", probe)
    monkeypatch.setattr(wasmer_backend, "_Found", FakeFound)
    monkeypatch.setattr(wasmer_backend, "_unsupported_platform", lambda: None)
    return calls


def test_verdicts_are_cached_on_disk(fake_probes, tmp_path):
    backend = wasmer_backend.WasmerBackend()
    assert backend.probe() == Availability(True, "1.1.0")
    assert not backend.probe_compiler("llvm").available
    assert sorted(fake_probes) == ["cranelift", "llvm", "singlepass"]
    cached = list((tmp_path / "cache" / "probes").iterdir())
    assert len(cached) == 1 and cached[0].read_text().startswith("wasmsbx-wasmer-probe 1\n")

    fake_probes.clear()
    again = wasmer_backend.WasmerBackend()  # a later run: no child process at all
    assert again.probe_compiler("llvm") == backend.probe_compiler("llvm")
    assert again.probe_compiler("cranelift").available
    assert fake_probes == []


def test_a_changed_installation_is_probed_again(fake_probes, monkeypatch):
    wasmer_backend.WasmerBackend().probe()
    fake_probes.clear()
    monkeypatch.setattr(FakeFound, "key_text", "interp|wasmer=1.1.0|llvm.so:2:2")  # re-patched
    wasmer_backend.WasmerBackend().probe()
    assert sorted(fake_probes) == ["cranelift", "llvm", "singlepass"]


def test_unwritable_cache_only_costs_a_probe(fake_probes, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("WASMSBX_CACHE_DIR", str(blocker))
    assert wasmer_backend.WasmerBackend().probe().available


def _probe_file(tmp_path) -> os.PathLike:
    return tmp_path / "cache" / "probes" / wasmer_backend._cache_name(FakeFound.key_text)


@pytest.mark.parametrize("planted", ["fifo", "link to a file", "huge", "folder"])
def test_a_planted_verdicts_file_is_never_believed_nor_waited_on(fake_probes, tmp_path, planted):
    """Red team 103: the verdicts were read with open(): a FIFO there hung every run on
    Python 3.9 (wasmer probed on the way to choosing a backend), a link was followed."""
    where = _probe_file(tmp_path)
    where.parent.mkdir(parents=True)
    if planted == "fifo":
        os.mkfifo(where)
    elif planted == "link to a file":
        target = tmp_path / "lies.txt"
        target.write_text(f"wasmsbx-wasmer-probe 1\n{FakeFound.key_text}\n")
        os.symlink(target, where)
    elif planted == "huge":
        with open(where, "wb") as f:
            f.truncate(1 << 30)
    else:
        where.mkdir()
    assert wasmer_backend._read_cache(FakeFound.key_text) is None
    assert wasmer_backend.WasmerBackend().probe().available
    assert sorted(fake_probes) == ["cranelift", "llvm", "singlepass"]  # probed again


def test_verdicts_never_go_through_a_linked_probes_folder(fake_probes, tmp_path):
    """A ``probes`` link (planted in a cache folder someone else made first) had the
    verdicts written where it led."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "cache").mkdir()
    os.symlink(elsewhere, tmp_path / "cache" / "probes")
    assert wasmer_backend.WasmerBackend().probe().available
    assert list(elsewhere.iterdir()) == []
    assert wasmer_backend._read_cache(FakeFound.key_text) is None


@pytest.mark.skipif(os.getuid() != 0, reason="making a folder another user's needs root")
def test_verdicts_never_come_from_a_cache_folder_of_another_user(fake_probes, tmp_path):
    wasmer_backend.WasmerBackend().probe()  # verdicts written
    assert wasmer_backend._read_cache(FakeFound.key_text) is not None
    os.chown(tmp_path / "cache", 65534, 65534)
    assert wasmer_backend._read_cache(FakeFound.key_text) is None
    os.chown(tmp_path / "cache", 0, 0)
    os.chown(_probe_file(tmp_path), 65534, 65534)
    assert wasmer_backend._read_cache(FakeFound.key_text) is None


def test_a_probes_folder_others_may_write_is_made_private(fake_probes, tmp_path):
    wasmer_backend.WasmerBackend().probe()
    probes = tmp_path / "cache" / "probes"
    assert probes.stat().st_mode & 0o777 == 0o700
    assert _probe_file(tmp_path).stat().st_mode & 0o777 == 0o600
    probes.chmod(0o777)  # (an older wasmsbx, umask 002: 0775)
    assert wasmer_backend._read_cache(FakeFound.key_text) is not None
    assert probes.stat().st_mode & 0o777 == 0o700


def test_missing_compiler_package(fake_probes, monkeypatch):
    class WithoutSinglepass(FakeFound):
        def __init__(self) -> None:
            super().__init__()
            del self.dirs["wasmer_compiler_singlepass"]

    monkeypatch.setattr(wasmer_backend, "_Found", WithoutSinglepass)
    state = wasmer_backend.WasmerBackend().probe_compiler("singlepass")
    assert state == Availability(
        False,
        None,
        "wasmer-compiler-singlepass is not installed",
        "`pip install 'wasmsbx[wasmer]'`",
    )
    assert "singlepass" not in fake_probes


@pytest.mark.parametrize(
    "version, reason, fix",
    [
        (
            (3, 12, 1),
            "wasmer wheels exist only for CPython 3.7-3.10 on Linux x86_64; this is Python 3.12.1",
            "use Python 3.10 or older with `pip install 'wasmsbx[wasmer]'`",
        ),
        ((3, 9, 2), "the wasmer package is not installed", "`pip install 'wasmsbx[wasmer]'`"),
    ],
)
def test_not_installed_reason_and_fix(monkeypatch, version, reason, fix):
    class Nothing(FakeFound):
        def __init__(self) -> None:
            self.dirs, self.versions = {}, {}

    monkeypatch.setattr(wasmer_backend, "_Found", Nothing)
    monkeypatch.setattr(wasmer_backend, "_unsupported_platform", lambda: None)
    monkeypatch.setattr(sys, "version_info", version)
    monkeypatch.setattr(sys, "version", ".".join(map(str, version)) + " (fake)")
    state = wasmer_backend.WasmerBackend().probe()
    assert state == Availability(False, None, reason, fix)


def test_found_key_follows_the_installed_files(tmp_path, monkeypatch):
    """The cache key changes when an extension module or its bundled libraries change."""
    site = tmp_path / "site"
    plant(site, "wasmer", "")
    (site / "wasmer" / "wasmer.so").write_bytes(b"x")
    (site / "wasmer-1.1.0.dist-info").mkdir()
    monkeypatch.syspath_prepend(str(site))
    found = wasmer_backend._Found()
    if found.dirs.get("wasmer") != str(site / "wasmer"):
        pytest.skip("the real wasmer is already imported in this process")
    assert found.versions["wasmer"] == "1.1.0"
    key = found.key()
    (site / "wasmer.libs").mkdir()
    (site / "wasmer.libs" / "libtinfo.so.5").write_bytes(b"")
    assert wasmer_backend._Found().key() != key


def test_cli_survives_an_aborting_llvm(cli, aborting, tmp_path):
    """End to end, in a fresh interpreter: the real wasmer (where installed) plus an llvm
    compiler that aborts on import."""
    if real_wasmer_installed():
        (aborting / "wasmer" / "__init__.py").unlink()
        (aborting / "wasmer").rmdir()
    env = {"PYTHONPATH": str(aborting)}
    res = cli("backends", "--json", env=env)
    assert res.code == 0, res
    llvm = next(e for e in res.json()["backends"] if e["label"] == "wasmer:llvm")
    assert not llvm["availability"]["available"]
    assert (
        "wasmer_compiler_llvm kills the process (killed by SIGABRT"
        in llvm["availability"]["reason"]
    )
    assert list((tmp_path / "cache" / "probes").iterdir())  # the verdict was cached
    res = cli("run", EXAMPLES / "add.wat", "add", "1", "2", "--backend", "wasmer:llvm", env=env)
    assert res.code == 104 and "kills the process" in res.stderr, res
    if real_wasmer_installed():
        res = cli("run", EXAMPLES / "add.wat", "add", "1", "2", "--backend", "wasmer", env=env)
        assert (res.code, res.stdout) == (0, "3\n"), res


def test_wasmer_availability_here(cli):
    """Python >= 3.11 has no wasmer wheels: unavailable, with the reason and the fix."""
    entries = {e["label"]: e for e in cli("backends", "--json").json()["backends"]}
    assert entries["wasmtime:cranelift"]["availability"]["available"]
    wasmer = [entries[f"wasmer:{c}"]["availability"] for c in wasmer_backend.COMPILERS]
    if sys.version_info >= (3, 11):
        for state in wasmer:
            assert not state["available"]
            assert state["reason"].startswith("wasmer wheels exist only for CPython 3.7-3.10")
            assert state["fix"] == "use Python 3.10 or older with `pip install 'wasmsbx[wasmer]'`"


@pytest.mark.skipif(
    os.environ.get("WASMSBX_EXPECT_WASMER") != "1",
    reason="WASMSBX_EXPECT_WASMER is not set (scripts/test sets it on the Python 3.9 leg)",
)
def test_wasmer_is_really_here_with_all_three_compilers():
    adapter = backends.get("wasmer")
    for compiler in ("cranelift", "llvm", "singlepass"):
        state = adapter.probe_compiler(compiler)
        assert state.available, f"wasmer:{compiler}: {state.reason} (fix: {state.fix})"
        assert state.version == "1.1.0"


@pytest.mark.parametrize("xdg", [None, "/tmp/xdg-cache"])
def test_cache_dir_is_platformdirs_user_cache_dir(monkeypatch, xdg):
    import platformdirs

    monkeypatch.delenv("WASMSBX_CACHE_DIR")
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    assert wasmer_backend.cache_dir() == platformdirs.user_cache_dir("wasmsbx")
