"""Red team 137: the environment a CI job, a container or a cron job gives the command
line (descriptor limits, a uid without a home, a working folder removed or closed to
you). Each is one error line with its exit code, or a run that works: never an internal
error or an abort."""

from __future__ import annotations

import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "wasi" / "hello.wasm"
ADD = ROOT / "examples" / "add.wat"
STRANGER = 54321  # a uid (and gid) with no entry in the password database


def _wasmsbx(*args, env=None, cwd=None, preexec=None, shell_prefix=""):
    argv = [sys.executable, "-m", "wasmsbx", *map(str, args)]
    if shell_prefix:  # (a step the child takes before it starts: cd, rmdir)
        argv = ["sh", "-c", shell_prefix + ' && exec "$@"', "sh", *argv]
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=cwd, preexec_fn=preexec, timeout=120
    )


def _wasmsbx_into(path, *args, env, cwd, mode="ab", streams=("stdout",), preexec=None):
    """``python -m wasmsbx ARGS`` with ``streams`` (stdout, stderr) opened on ``path``
    as a shell's redirect would (``mode``: "ab" for ``>>``); what it left in stderr is
    the result's (bytes), unless stderr went to ``path``."""
    with open(path, mode) as target:
        return subprocess.run(
            [sys.executable, "-m", "wasmsbx", *map(str, args)],
            stdout=target if "stdout" in streams else subprocess.PIPE,
            stderr=target if "stderr" in streams else subprocess.PIPE,
            env=env,
            cwd=cwd,
            preexec_fn=preexec,
            timeout=120,
        )


def _stranger():
    """Become a uid without a password entry (the real uid: the effective one stays, so
    the interpreter under /root can still be run, as `setpriv --reuid` does)."""
    os.setreuid(STRANGER, -1)


needs_root = pytest.mark.skipif(
    not hasattr(os, "getuid") or os.getuid() != 0, reason="becomes another uid (root only)"
)


@pytest.fixture
def home(tmp_path):
    env = dict(os.environ)
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        WASMSBX_TRUST_DIR=str(tmp_path / "trust"),
    )
    return env


@pytest.mark.parametrize("limit", [26, 40])
def test_a_low_open_files_limit_leaves_the_run_its_descriptors(home, tmp_path, limit):
    # (fdroom kept 32 descriptors aside whatever the limit: under `ulimit -n 20` every
    # command was an internal error, under 40 wasmtime-wasi aborted the process, 134)
    assert _wasmsbx("run", HELLO, env=home, cwd=tmp_path).returncode == 0  # cached

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    for args in (["run", HELLO], ["run", ADD, "add", "1", "2"], ["backends"]):
        result = _wasmsbx(*args, env=home, cwd=tmp_path, preexec=low)
        assert result.returncode == 0, (args, result.stderr)
    assert _wasmsbx("run", ADD, "add", "1", "2", env=home, cwd=tmp_path, preexec=low).stdout == (
        "3\n"
    )


def _files_limit(limit):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


@pytest.mark.parametrize("limit", [6, 8, 12, 15, 19, 20])
def test_an_open_files_limit_below_the_floor_is_refused_first(home, tmp_path, limit):
    # (under `ulimit -n 8` a WASI run aborted in wasmtime, exit 134; under 12 `--batch
    # -j 2` printed three chained tracebacks, exit 1)
    for args in (["run", HELLO], ["run", ADD, "add", "--batch", "-", "-j", "2"]):
        result = _wasmsbx(*args, env=home, cwd=tmp_path, preexec=_files_limit(limit))
        assert result.returncode == 118, (args, result.stderr)
        assert result.stderr.startswith("error: only "), result.stderr
        assert f"the open-files limit is {limit}," in result.stderr, result.stderr
        assert "ulimit -n" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("jobs", [16, 32])
def test_workers_beyond_the_open_files_limit_are_a_resource_error(home, tmp_path, jobs):
    # (the pipes made before the one that failed were left open, and importing what
    # reports the error failed in turn: exit 100 or tracebacks)
    (tmp_path / "in.jsonl").write_text("[1, 2]\n[3, 4]\n")
    args = ("run", ADD, "add", "--batch", tmp_path / "in.jsonl", "-j", jobs)
    result = _wasmsbx(*args, env=home, cwd=tmp_path, preexec=_files_limit(32))
    assert result.returncode == 118, result.stderr
    assert "out of file descriptors" in result.stderr and "(32)" in result.stderr
    assert "fewer --jobs" in result.stderr and "Traceback" not in result.stderr
    result = _wasmsbx(*args[:-1], 2, env=home, cwd=tmp_path, preexec=_files_limit(32))
    assert result.returncode == 0 and result.stdout.count('"ok":true') == 2, result.stderr


_HOLDING = """
import os, resource, sys
count, limit = int(sys.argv[1]), int(sys.argv[2])
for _ in range(count):
    os.set_inheritable(os.open(os.devnull, os.O_RDONLY), True)
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
os.execv(sys.executable, [sys.executable, "-m", "wasmsbx", *sys.argv[3:]])
"""


def _run_holding(home, tmp_path, count, limit):
    """``wasmsbx run hello.wasm`` under an open-files ``limit`` with ``count``
    descriptors open and inherited right past stdio (as a parent that left its own
    open), from a process that started with stdio alone."""
    return subprocess.run(
        [sys.executable, "-c", _HOLDING, str(count), str(limit), "run", str(HELLO)],
        capture_output=True,
        text=True,
        env=home,
        cwd=tmp_path,
        timeout=120,
    )


def test_descriptors_left_open_by_the_parent_count_against_the_floor(home, tmp_path):
    # (red team 142: the limit was compared, not what is free; a shell that left fds
    # 3..15 open under `ulimit -n 24` had a WASI run abort in wasmtime, exit 134)
    result = _run_holding(home, tmp_path, count=16, limit=32)
    assert result.returncode == 118, result.stderr
    assert "file descriptors are free" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("limit", [26, 32])
def test_a_component_runs_at_the_lowest_limit_allowed(home, tmp_path, limit):
    # (a WASI component aborted in wasmtime-wasi at 16-17 and failed its guest at 18)
    components = ROOT / "examples" / "components"
    args = ("run", components / "cat.wasm", "--dir-ro", f"{components}::/data", "--")
    result = _wasmsbx(
        *args, "/data/greeting.txt", env=home, cwd=tmp_path, preexec=_files_limit(limit)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (components / "greeting.txt").read_text()


def test_a_removed_working_folder_holds_no_policy(home, tmp_path):
    # (Path.cwd() raised FileNotFoundError: internal error, exit 100)
    (tmp_path / "gone").mkdir()
    result = _wasmsbx(
        "run", ADD, "add", "2", "3", env=home, cwd=tmp_path, shell_prefix="cd gone && rmdir ../gone"
    )
    assert (result.returncode, result.stdout) == (0, "5\n"), result.stderr


@pytest.fixture
def shared_folder():
    """A folder every uid may enter (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="wasmsbx-env-"))
    folder.chmod(0o755)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@needs_root
def test_a_uid_without_a_home_is_told_so(shared_folder):
    # (a uid without a password entry and no $HOME: KeyError from pwd.getpwuid, exit 100)
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME")}
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("WASMSBX_TRUST_DIR", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = _wasmsbx("run", HELLO, env=env, cwd=shared_folder, preexec=_stranger)
    if "libffi" in result.stderr:
        # (scripts/provision-py39's interpreter finds its libffi in a way the loader
        # ignores for a process whose real and effective uids differ)
        pytest.skip("this interpreter cannot start with another real uid")
    assert result.returncode == 0, result.stderr  # (no cache, with a warning that says why)
    assert "cannot find your home folder" in result.stderr
    result = _wasmsbx("trust", "show", env=env, cwd=shared_folder, preexec=_stranger)
    assert result.returncode == 105, result.stderr
    assert result.stderr.startswith("error: cannot find your home folder")
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_a_working_folder_you_cannot_search_is_a_policy_error(monkeypatch):
    # (`runuser -u app -- wasmsbx ...` left in /root: PermissionError from the look for
    # ./sandbox.toml, an internal error, exit 100)
    from wasmsbx import policy as policy_mod

    def closed(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "is_file", closed)
    with pytest.raises(policy_mod.PolicyError) as refused:
        policy_mod.discover(cwd=Path("/root"))
    assert refused.value.exit_code == 101
    assert "cannot look for a policy in the working folder: Permission denied" in str(refused.value)
    assert "--policy FILE" in refused.value.hint
    monkeypatch.undo()
    with pytest.raises(policy_mod.PolicyError, match="File name too long"):
        policy_mod.discover(cwd=Path("/" + "a" * 5000))  # (an error Path.is_file passes on)


WRITE_CHECK = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "hello\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 6))
    (call $exit (i32.add (i32.const 10)
      (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20))))))
"""


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_full_disk_under_stdout_is_exit_105_however_python_buffers(
    home, tmp_path, backend, unbuffered
):
    # (with PYTHONUNBUFFERED=1, common in CI and containers, the guest's write failed in
    # the output callback, not at the final flush: exit 0 and the output lost)
    env = dict(home, PYTHONUNBUFFERED=unbuffered)
    args = ["run", HELLO, "--backend", backend]
    result = _wasmsbx_into("/dev/full", *args, env=env, cwd=tmp_path, mode="wb")
    assert result.returncode == 105, result.stderr
    assert b"cannot write the results to stdout" in result.stderr


def test_the_guest_is_told_the_disk_is_full(home, tmp_path):
    source = tmp_path / "w.wat"
    source.write_text(WRITE_CHECK)
    env = dict(home, PYTHONUNBUFFERED="1")
    args = ["run", source, "--backend", "wasmtime"]
    result = _wasmsbx_into("/dev/full", *args, env=env, cwd=tmp_path, mode="wb")
    assert result.returncode == 10 + 51, result.stderr  # WASI's ENOSPC (was EPIPE, 64)


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed")
def test_another_users_cache_is_not_reported_absent(shared_folder):
    # (the cache commands read a cache folder they could not search as no cache at all:
    # "nothing has been cached", exit 0, and `cache clear` "succeeded" removing nothing)
    home = shared_folder / "home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "WASMSBX_"))}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    module = shared_folder / "hello.wasm"
    module.write_bytes(HELLO.read_bytes())
    module.chmod(0o644)
    assert _wasmsbx("run", module, env=env, cwd=shared_folder).returncode == 0  # root's cache
    entries = sorted((home / ".cache" / "wasmsbx").rglob("*"))
    assert entries
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*nobody, sys.executable, "-c", "import ctypes"], capture_output=True)
    if probe.returncode:  # (scripts/provision-py39's interpreter lives in root's folders)
        pytest.skip("this interpreter cannot start as another uid")
    for args in (["cache", "list"], ["cache", "clear"], ["cache", "verify"]):
        result = subprocess.run(
            [*nobody, sys.executable, "-m", "wasmsbx", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=shared_folder,
            timeout=120,
        )
        assert result.returncode == 105, (args, result.stdout, result.stderr)
        assert "cache unavailable" in result.stderr, result.stderr
        assert any(why in result.stderr for why in ("another user", "Permission denied"))
        assert "damaged" not in result.stderr, result.stderr
    assert sorted((home / ".cache" / "wasmsbx").rglob("*")) == entries


@pytest.mark.parametrize("mode", [0o755, 0o1777])
def test_a_shared_folder_named_as_the_trust_folder_is_left_as_it_is(home, tmp_path, mode):
    # ($WASMSBX_TRUST_DIR="~" or /tmp: `trust show` made the folder 0700 and put a secret
    # key at its top, locking its other users out)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "someone-elses.txt").write_text("x")
    shared.chmod(mode)
    env = dict(home, WASMSBX_TRUST_DIR=str(shared))
    result = _wasmsbx("trust", "show", env=env, cwd=tmp_path)
    assert "open to others" in result.stderr and "not used" in result.stderr, result.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == mode
    assert sorted(os.listdir(shared)) == ["someone-elses.txt"]
    result = _wasmsbx("compile", HELLO, "-o", tmp_path / "h.cwasm", env=env, cwd=tmp_path)
    assert result.returncode == 105 and "open to others" in result.stderr, result.stderr
    assert not (tmp_path / "h.cwasm").exists()


def test_a_loose_folder_of_keys_alone_is_still_made_private(home, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    keys.chmod(0o755)
    env = dict(home, WASMSBX_TRUST_DIR=str(keys))
    result = _wasmsbx("compile", HELLO, "-o", tmp_path / "h.cwasm", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert os.listdir(keys) == ["secret.key"]
    keys.chmod(0o755)  # (opened again later, holding its key: made private again)
    assert _wasmsbx("run", tmp_path / "h.cwasm", env=env, cwd=tmp_path).returncode == 0
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700


def test_folders_made_on_the_way_are_private_under_any_umask(tmp_path):
    # (umask 000: ~/.cache, ~/.config and ~/.config/wasmsbx were made 0777, so anyone
    # could move the trust folder away and have a new secret made)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "WASMSBX_"))}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()

    def open_umask():
        os.umask(0)

    for args in (["compile", HELLO], ["compile", HELLO, "-o", tmp_path / "h.cwasm"]):
        result = _wasmsbx(*args, env=env, cwd=tmp_path, preexec=open_umask)
        assert result.returncode == 0, result.stderr
    for folder in (
        ".cache",
        ".cache/wasmsbx",
        ".config",
        ".config/wasmsbx",
        ".config/wasmsbx/trust",
    ):
        assert stat.S_IMODE((tmp_path / "home" / folder).stat().st_mode) == 0o700, folder


def test_a_zero_file_size_limit_is_a_resource_error_not_a_module_error(home, tmp_path):
    # (`ulimit -f 0`: wasmtime's memory image could not be written, "cannot instantiate
    # module: File too large (os error 27)", exit 102 as if the module were at fault)
    def no_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

    args = ["run", "--no-cache", HELLO, "--backend", "wasmtime"]
    result = _wasmsbx(*args, env=home, cwd=tmp_path, preexec=no_files)
    assert result.returncode == 118, result.stderr
    assert "ulimit -f" in result.stderr and 'memory_init = "copy"' in result.stderr
    policy = tmp_path / "copy.toml"
    policy.write_text('[runtime]\nmemory_init = "copy"\n')
    result = _wasmsbx(*args, "--policy", policy, env=home, cwd=tmp_path, preexec=no_files)
    assert result.returncode == 0, result.stderr


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed")
def test_a_low_thread_limit_compiles_on_one_thread(shared_folder):
    # (`ulimit -u 3`: room for the main and deadline threads but not a compiler thread
    # per core; wasmtime's thread pool panicked and aborted the process, exit 134)
    uid = "54322"  # (its own uid: RLIMIT_NPROC counts every process of the user)
    user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    probe = subprocess.run([*user, sys.executable, "-c", "import ctypes"], capture_output=True)
    if probe.returncode:
        pytest.skip("this interpreter cannot start as another uid")
    module = shared_folder / "add.wat"
    module.write_text(ADD.read_text())
    module.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "WASMSBX_"))}
    env.update(HOME=str(shared_folder), PYTHONDONTWRITEBYTECODE="1")
    env["WASMSBX_TRUST_DIR"] = str(shared_folder / "trust")

    def three_tasks():
        resource.setrlimit(resource.RLIMIT_NPROC, (3, 3))

    os.chown(shared_folder, int(uid), int(uid))
    for args in (
        ["run", module, "add", "1", "2"],
        ["compile", module, "-o", shared_folder / "a.cwasm"],
        ["audit", module],
    ):
        result = subprocess.run(
            [*user, sys.executable, "-m", "wasmsbx", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=shared_folder,
            preexec_fn=three_tasks,
            timeout=120,
        )
        assert result.returncode == 0, (args, result.returncode, result.stderr[-2000:])


def test_threads_are_scarce_below_a_thread_per_core_and_some(monkeypatch):
    from wasmsbx.backends import cgroup
    from wasmsbx.backends.wasmtime import identity

    monkeypatch.setattr(cgroup, "task_room", lambda: None)
    monkeypatch.setattr(identity, "_user_tasks", lambda _enough: 0)
    need = (os.cpu_count() or 1) + identity.SPARE_TASKS
    for soft, scarce in (
        (3, True),
        (need - 1, True),
        (need, False),
        (resource.RLIM_INFINITY, False),
    ):
        monkeypatch.setattr(resource, "getrlimit", lambda _which, soft=soft: (soft, soft))
        assert identity.threads_scarce() is scarce, soft
        settings = dict(identity.config_settings(identity.EngineOptions()))
        assert ("parallel_compilation" in settings) is scarce
    monkeypatch.setattr(cgroup, "task_room", lambda: 2)
    assert identity.threads_scarce()


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_shell_redirect_into_the_trust_folder_is_refused(home, tmp_path, stream):
    # (`wasmsbx run guest >> ~/.config/wasmsbx/trust/trusted_keys`: -o there was refused,
    # the shell's redirect was not, and a guest's line made its author a trusted signer)
    assert _wasmsbx("trust", "show", env=home, cwd=tmp_path).returncode == 0
    made = _wasmsbx("compile", HELLO, "-o", tmp_path / "h.cwasm", env=home, cwd=tmp_path)
    assert made.returncode == 0, made.stderr  # (the trust folder, with its secret key)
    keys = Path(home["WASMSBX_TRUST_DIR"]) / "trusted_keys"
    keys.write_text("# mine\n")
    keys.chmod(0o600)
    result = _wasmsbx_into(keys, "run", HELLO, env=home, cwd=tmp_path, streams=(stream,))
    assert result.returncode == 105
    assert keys.read_text() == "# mine\n"
    if stream == "stdout":
        assert b"is in the trust folder" in result.stderr


@pytest.mark.parametrize("how", ["symlink", "hard link"])
def test_the_key_files_by_another_name_are_refused_as_stdout(home, tmp_path, how):
    # (red team 138: trusted_keys a link to ~/dotfiles/trusted_keys, as GNU stow makes
    # it, and `run guest >> ~/dotfiles/trusted_keys`; the check looked at the path only)
    _keys_made(home, tmp_path)
    keys = Path(home["WASMSBX_TRUST_DIR"]) / "trusted_keys"
    dotfile = tmp_path / "dotfiles" / "trusted_keys"
    dotfile.parent.mkdir()
    dotfile.write_text("# mine\n")
    dotfile.chmod(0o600)
    if how == "symlink":
        keys.symlink_to(dotfile)
    else:
        os.link(dotfile, keys)
    result = _wasmsbx_into(dotfile, "run", HELLO, env=home, cwd=tmp_path)
    assert result.returncode == 105, result.stderr
    assert b"trusted_keys by another name" in result.stderr
    assert dotfile.read_text() == "# mine\n"
    result = _wasmsbx_into(tmp_path / "out.txt", "run", HELLO, env=home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_bytes()


@needs_root
def test_without_a_home_a_redirect_to_a_file_is_no_refusal(shared_folder):
    # (red team 138: the redirect check looked for the trust folder, which needs a home:
    # `run add.wat add 1 2 > /tmp/out` was exit 105, and with `2> file` silent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "WASMSBX_"))}
    env.pop("HOME", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    out = shared_folder / "out.txt"
    args = ["run", ADD, "add", "1", "2"]
    streams = ("stdout", "stderr")
    result = _wasmsbx_into(
        out, *args, env=env, cwd=shared_folder, streams=streams, preexec=_stranger
    )
    if b"libffi" in out.read_bytes():
        pytest.skip("this interpreter cannot start with another real uid")
    assert (result.returncode, out.read_text()) == (0, "3\n")


def test_a_users_other_tasks_count_against_their_thread_limit(monkeypatch):
    from wasmsbx.backends import cgroup
    from wasmsbx.backends.wasmtime import identity

    need = (os.cpu_count() or 1) + identity.SPARE_TASKS
    monkeypatch.setattr(cgroup, "task_room", lambda: None)
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (need + 6, need + 6))
    monkeypatch.setattr(os, "getuid", lambda: 4242)
    monkeypatch.setattr(identity, "_user_tasks", lambda _enough: 9)
    assert identity.threads_scarce()
    monkeypatch.setattr(identity, "_user_tasks", lambda _enough: 2)
    assert not identity.threads_scarce()


def test_a_v1_pids_controller_is_read(monkeypatch, tmp_path):
    # (red team 138: a hybrid layout keeps pids on cgroup v1, which was never read)
    from wasmsbx.backends import cgroup

    group = tmp_path / "pids" / "job"
    group.mkdir(parents=True)
    (group / "pids.max").write_text("5\n")
    (group / "pids.current").write_text("3\n")
    (tmp_path / "cgroup").write_text("12:pids:/job\n11:memory:/job\n0::/\n")
    monkeypatch.setattr(cgroup, "ROOT", str(tmp_path))
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(
            tmp_path / "cgroup" if path == "/proc/self/cgroup" else path, *args, **kwargs
        )

    monkeypatch.setattr("builtins.open", fake_open)
    assert cgroup.task_room() == 2


def test_a_key_file_with_a_name_outside_the_trust_folder_is_not_used(home, tmp_path):
    # (red team 139: trusted_keys a link to ~/dotfiles/trusted_keys, or the secret hard-
    # linked into a backup: a guest granted that folder added a signer or read the key;
    # grants are checked by folder, and these names are outside it)
    _keys_made(home, tmp_path)
    folder = Path(home["WASMSBX_TRUST_DIR"])
    backup = tmp_path / "backup"
    backup.mkdir()
    os.link(folder / "secret.key", backup / "secret.key")
    result = _wasmsbx("run", tmp_path / "h.cwasm", env=home, cwd=tmp_path)
    assert result.returncode == 102, result.stderr  # (the artifact cannot be authenticated)
    assert "another name outside the trust folder" in result.stderr
    (backup / "secret.key").unlink()
    assert _wasmsbx("run", tmp_path / "h.cwasm", env=home, cwd=tmp_path).returncode == 0
    # its temporary name while it is made is in the folder itself: no refusal
    os.link(folder / "secret.key", folder / ".secret.key.123.abcd.tmp")
    assert _wasmsbx("run", tmp_path / "h.cwasm", env=home, cwd=tmp_path).returncode == 0
    (folder / ".secret.key.123.abcd.tmp").unlink()
    dotfile = tmp_path / "dotfiles" / "trusted_keys"
    dotfile.parent.mkdir()
    dotfile.write_text("# mine\n")
    dotfile.chmod(0o600)
    (folder / "trusted_keys").symlink_to(dotfile)
    result = _wasmsbx("trust", "list", env=home, cwd=tmp_path)
    assert "is a symbolic link" in result.stderr, result.stderr


def test_no_home_still_keeps_the_key_files_from_stdout(home, tmp_path, monkeypatch):
    # (red team 139: with no home folder, the cache roots raised first and the key files'
    # check by device and inode was skipped)
    from wasmsbx import errors, outfile
    from wasmsbx.native import trustdir

    _keys_made(home, tmp_path)
    keys = Path(home["WASMSBX_TRUST_DIR"]) / "secret.key"
    os.link(keys, tmp_path / "other-name")
    monkeypatch.setenv("WASMSBX_TRUST_DIR", home["WASMSBX_TRUST_DIR"])

    def no_home():
        raise trustdir._no_home()

    monkeypatch.setattr(trustdir, "_home", no_home)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    fd = os.open(tmp_path / "other-name", os.O_WRONLY | os.O_APPEND)
    try:
        with pytest.raises(errors.InputError, match="secret.key by another name"):
            outfile.refuse_opened_astray_file(fd, "stdout")
    finally:
        os.close(fd)


def test_a_name_ending_in_deleted_is_still_looked_at(home, tmp_path):
    # (red team 139: /proc shows a removed file as "NAME (deleted)", and a file really
    # named so in the trust folder was taken for a removed one and written)
    _keys_made(home, tmp_path)
    target = Path(home["WASMSBX_TRUST_DIR"]) / "notes (deleted)"
    result = _wasmsbx_into(target, "run", HELLO, env=home, cwd=tmp_path)
    assert result.returncode == 105, result.stderr
    assert target.read_bytes() == b""


MOUNTINFO = b"""22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 254:1 /home/u/.config/wasmsbx /proj/keys rw - ext4 /dev/vda1 rw
31 22 254:1 /home /mnt/home\\040x rw - ext4 /dev/vda1 rw
32 22 254:1 /var/lib/docker/hosts /etc/hosts rw - ext4 /dev/vda1 rw
33 22 0:5 / /dev rw - devtmpfs udev rw
34 22 254:1 /home/u/.config/wasmsbx/trust/secret.key /srv/s rw - ext4 /dev/vda1 rw
35 22 254:2 /home/u/.config/wasmsbx /other-disk rw - ext4 /dev/vdb1 rw
"""


def test_the_trust_folder_is_found_where_bind_mounts_show_it():
    # (red team 140: `mount --bind ~/.config/wasmsbx proj/keys` and a grant of proj
    # showed the guest the secret key: grants were compared by real path only)
    from wasmsbx.native.trust import mount_aliases

    assert mount_aliases(MOUNTINFO, "/home/u/.config/wasmsbx/trust", "254:1") == [
        "/proj/keys/trust",
        "/mnt/home x/u/.config/wasmsbx/trust",
        "/srv/s",
    ]
    assert mount_aliases(MOUNTINFO, "/tmp/elsewhere", "254:1") == []
    assert mount_aliases(b"", "/home/u/.config/wasmsbx/trust", "254:1") == []


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_a_grant_of_a_bind_mount_of_the_trust_folder_is_refused(home, tmp_path):
    _keys_made(home, tmp_path)
    (tmp_path / "proj" / "keys").mkdir(parents=True)
    script = (
        f"mount --bind {home['WASMSBX_TRUST_DIR']} {tmp_path}/proj/keys && "
        f'exec "$0" -m wasmsbx run {HELLO} --dir-ro {tmp_path}/proj::/p'
    )
    result = _in_mount_namespace(script, home, tmp_path)
    assert result.returncode == 101, result.stderr
    assert "wasmsbx keys" in result.stderr, result.stderr


def _keys_made(home, tmp_path):
    """The trust folder's secret key made (a compile signs with a key derived from it)."""
    made = _wasmsbx("compile", HELLO, "-o", tmp_path / "h.cwasm", env=home, cwd=tmp_path)
    assert made.returncode == 0, made.stderr


def _in_mount_namespace(script, env, cwd):
    """``script`` (sh, "$0" the interpreter) run in a private mount namespace; the test
    is skipped where there is none to be had."""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    if "unshare failed" in result.stderr or "mount:" in result.stderr:
        pytest.skip(f"no mount namespace here: {result.stderr.strip()[:200]}")
    return result


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
@pytest.mark.parametrize("name", ["trusted_keys", "secret.key", "new-file"])
def test_an_output_through_a_bind_mount_of_the_trust_folder_is_refused(home, tmp_path, name):
    # (`compile -o proj/keys/trusted_keys`, proj/keys a bind mount of the trust folder,
    # replaced the list of trusted keys: outputs were checked by real path only)
    _keys_made(home, tmp_path)
    trust = Path(home["WASMSBX_TRUST_DIR"])
    before = {p.name: p.read_bytes() for p in trust.iterdir()}
    (tmp_path / "proj" / "keys").mkdir(parents=True)
    script = (
        f"mount --bind {trust.parent} {tmp_path}/proj/keys && "
        f'exec "$0" -m wasmsbx compile {HELLO} -o {tmp_path}/proj/keys/{trust.name}/{name}'
    )
    result = _in_mount_namespace(script, home, tmp_path)
    assert result.returncode == 105, result.stderr
    assert "trust folder" in result.stderr and "bind mount" in result.stderr, result.stderr
    assert {p.name: p.read_bytes() for p in trust.iterdir()} == before


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_a_redirect_through_a_bind_mount_of_the_cache_is_refused(home, tmp_path):
    cache = Path(home["XDG_CACHE_HOME"]) / "wasmsbx"
    (cache / "code").mkdir(parents=True)
    (tmp_path / "view").mkdir()
    script = (
        f"mount --bind {cache} {tmp_path}/view && "
        f'exec "$0" -m wasmsbx run {HELLO} >> {tmp_path}/view/code/out'
    )
    result = _in_mount_namespace(script, home, tmp_path)
    assert result.returncode == 105, result.stderr
    assert "cache folder" in result.stderr and "bind mount" in result.stderr, result.stderr
    assert (cache / "code" / "out").read_bytes() == b""


def test_a_folder_in_the_trust_folder_is_known_by_what_it_is(home, tmp_path, monkeypatch):
    # (the check climbs from the folder as opened, by device and inode, not by path)
    from wasmsbx import errors, outfile

    for name in ("WASMSBX_TRUST_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.setenv(name, home[name])
    deep = Path(home["WASMSBX_TRUST_DIR"]) / "a" / "b"
    deep.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for folder, refused in ((deep, True), (elsewhere, False), (deep.parent.parent.parent, False)):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if refused:
                with pytest.raises(errors.InputError, match="trust folder"):
                    outfile.refuse_guarded("x", fd, "why")
            else:
                outfile.refuse_guarded("x", fd, "why")
        finally:
            os.close(fd)


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_an_audit_log_on_a_bind_mount_of_a_key_file_is_refused(home, tmp_path):
    # (a key file bound alone at another path has one name and a path outside the trust
    # folder: the audit log, appended to in place, was written into trusted_keys)
    _keys_made(home, tmp_path)
    key = Path(home["WASMSBX_TRUST_DIR"]) / "secret.key"
    before = key.read_bytes()
    (tmp_path / "log").write_bytes(b"")
    script = (
        f"mount --bind {key} {tmp_path}/log && "
        f'exec "$0" -m wasmsbx run {HELLO} --audit-log {tmp_path}/log'
    )
    result = _in_mount_namespace(script, home, tmp_path)
    assert result.returncode == 105, result.stderr
    assert "trust folder" in result.stderr and "bind mount" in result.stderr, result.stderr
    assert key.read_bytes() == before


def _an_entry(home, tmp_path):
    """A cache entry of the user's default cache (add.wat: cached, its policy's floor 0),
    ``home`` made to use that cache."""
    home.pop("WASMSBX_CACHE_DIR", None)
    cache = Path(home["XDG_CACHE_HOME"]) / "wasmsbx"
    (tmp_path / "min.toml").write_text("[runtime]\ncache_min_size = 0\n")
    made = _wasmsbx(
        "run", ADD, "add", "1", "2", "--policy", tmp_path / "min.toml", env=home, cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    entries = sorted((cache / "code").glob("*/*.entry"))
    assert entries, list(cache.rglob("*"))
    return entries[0]


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_outputs_through_a_bind_mount_of_a_cache_subfolder_are_refused(home, tmp_path):
    # (red team 141: a bind of ~/.cache/wasmsbx/code/NA climbs, by "..", out through its
    # mount point and never meets the cache folder; a policy's guest stdout named an
    # entry there, truncated the native code the run had mapped: Bus error, exit 135)
    entry = _an_entry(home, tmp_path)
    before = entry.read_bytes()
    proj = tmp_path / "proj"
    (proj / "view").mkdir(parents=True)
    (proj / "sandbox.toml").write_text(f'[stdio]\nstdout = "view/{entry.name}"\n')
    script = (
        f"mount --bind {entry.parent} {proj}/view && "
        f'"$0" -m wasmsbx run {HELLO}; echo "policy rc=$?" && cd {tmp_path} && '
        f'"$0" -m wasmsbx run {ADD} add 1 2 --audit-log {proj}/view/{entry.name}; '
        f'echo "audit rc=$?"; "$0" -m wasmsbx run {ADD} add 1 2 >> {proj}/view/{entry.name}; '
        'echo "stdout rc=$?"'
    )
    result = _in_mount_namespace(script, home, proj)
    for what in ("policy", "audit", "stdout"):
        assert f"{what} rc=105" in result.stdout, (what, result.stdout, result.stderr)
    assert result.stderr.count("wasmsbx cache") == 3, result.stderr
    assert entry.read_bytes() == before


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_an_entry_bound_alone_elsewhere_is_not_written(home, tmp_path):
    entry = _an_entry(home, tmp_path)
    before = entry.read_bytes()
    (tmp_path / "log").write_bytes(b"")
    script = (
        f"mount --bind {entry} {tmp_path}/log && "
        f'"$0" -m wasmsbx run {ADD} add 1 2 >> {tmp_path}/log; echo "stdout rc=$?"; '
        f'"$0" -m wasmsbx compile {ADD} -o {tmp_path}/log; echo "compile rc=$?"'
    )
    result = _in_mount_namespace(script, home, tmp_path)
    assert "stdout rc=105" in result.stdout and "compile rc=105" in result.stdout, result
    assert result.stderr.count("is a wasmsbx cache entry") == 2, result.stderr
    assert entry.read_bytes() == before


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_an_overlay_over_the_trust_folder_is_the_trust_folder(home, tmp_path):
    # (an overlay's folders have its own device: the trust folder as its upper layer
    # took `compile -o merged/trusted_keys`)
    _keys_made(home, tmp_path)
    trust = Path(home["WASMSBX_TRUST_DIR"])
    before = {p.name: p.read_bytes() for p in trust.iterdir()}
    ov = tmp_path / "ov"
    for name in ("lower", "work", "merged"):
        (ov / name).mkdir(parents=True)
    script = (
        f"mount -t overlay overlay -o lowerdir={ov}/lower,upperdir={trust},"
        f"workdir={ov}/work {ov}/merged && "
        f'exec "$0" -m wasmsbx compile {HELLO} -o {ov}/merged/trusted_keys'
    )
    result = _in_mount_namespace(script, home, tmp_path)
    assert result.returncode == 105, result.stderr
    assert "trust folder" in result.stderr, result.stderr
    assert {p.name: p.read_bytes() for p in trust.iterdir()} == before


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_a_checkpoint_through_a_bind_mount_is_refused_before_the_first_item(home, tmp_path):
    _keys_made(home, tmp_path)
    (tmp_path / "v1").mkdir()
    (tmp_path / "in.jsonl").write_text("[1, 2]\n")
    script = (
        f"mount --bind {home['WASMSBX_TRUST_DIR']} {tmp_path}/v1 && "
        f'exec "$0" -m wasmsbx run {ADD} add --batch {tmp_path}/in.jsonl '
        f"--checkpoint {tmp_path}/v1/ck.json"
    )
    result = _in_mount_namespace(script, home, tmp_path)
    assert result.returncode == 105, result.stderr
    assert result.stdout == "" and "trust folder" in result.stderr, result


def test_a_cache_folder_named_with_spaces_around_is_guarded_as_used(monkeypatch, tmp_path):
    # (cache_roots stripped $WASMSBX_CACHE_DIR, which the cache uses as given: the
    # cache at "/x/c " was not one of the folders outputs stay out of)
    from wasmsbx.native import cache, trustdir

    monkeypatch.setenv("WASMSBX_CACHE_DIR", f"{tmp_path}/c ")
    assert str(cache.resolve_dir()[0]) in trustdir.cache_roots()
    monkeypatch.setenv("WASMSBX_CACHE_DIR", "   ")
    assert len(trustdir.cache_roots()) == 1


def test_a_mount_point_holding_a_carriage_return_is_parsed_whole():
    # (red team 142: bytes.splitlines() cut mountinfo's line at a CR in a mount point,
    # and every mount check passed over that mount)
    from wasmsbx.native.trust import mount_aliases, proc_mount_points

    text = MOUNTINFO + b"40 22 254:1 /home/u/.config/wasmsbx /w/k\rx rw - ext4 /dev/vda1 rw\n"
    text += b"41 22 0:77 / /w/p\rx/proc rw - proc proc rw\n"
    assert "/w/k\rx/trust" in mount_aliases(text, "/home/u/.config/wasmsbx/trust", "254:1")
    assert "/w/p\rx/proc" in proc_mount_points(text)


def _mounted(script, home, tmp_path):
    result = _in_mount_namespace(script, home, tmp_path)
    return result.stdout + result.stderr


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_mount_points_with_a_carriage_return_are_seen(home, tmp_path):
    entry = _an_entry(home, tmp_path)
    before = entry.read_bytes()
    trust = home["WASMSBX_TRUST_DIR"]
    mp, gk = tmp_path / "mp\rx", tmp_path / "gk\rx"
    mp.mkdir()
    gk.mkdir()
    script = (
        f"mount --bind '{entry.parent}' '{mp}' && mount --bind '{trust}' '{gk}' && "
        f"\"$0\" -m wasmsbx run {ADD} add 1 2 --audit-log '{mp}/{entry.name}'; "
        'echo "audit rc=$?"; '
        f'"$0" -m wasmsbx run {HELLO} --dir-ro \'{gk}::/k\'; echo "grant rc=$?"'
    )
    out = _mounted(script, home, tmp_path)
    assert "audit rc=105" in out and "grant rc=101" in out, out
    assert entry.read_bytes() == before


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_a_grant_of_a_bind_mount_of_the_cache_is_refused(home, tmp_path):
    # (red team 142: only the trust folder's bind mounts were looked for; a guest given
    # a bind of ~/.cache/wasmsbx/code/NA wrote into an entry)
    entry = _an_entry(home, tmp_path)
    (tmp_path / "cb").mkdir()
    script = (
        f"mount --bind {entry.parent} {tmp_path}/cb && "
        f'exec "$0" -m wasmsbx run {HELLO} --dir {tmp_path}/cb::/c'
    )
    out = _mounted(script, home, tmp_path)
    assert "your wasmsbx cache" in out, out


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_an_output_on_a_mount_this_process_cannot_place_is_refused(home, tmp_path):
    # (red team 142: a bind detached with `umount -l` but held open was not in mountinfo
    # as it is used: no check)
    entry = _an_entry(home, tmp_path)
    before = entry.read_bytes()
    (tmp_path / "d").mkdir()
    script = (
        f"mount --bind {entry.parent} {tmp_path}/d && exec 7<{tmp_path}/d && "
        f"umount -l {tmp_path}/d && "
        f'"$0" -m wasmsbx run {ADD} add 1 2 --audit-log /proc/self/fd/7/{entry.name}; '
        'echo "detached rc=$?"'
    )
    out = _mounted(script, home, tmp_path)
    assert "detached rc=105" in out, out
    assert entry.read_bytes() == before


def test_stdout_on_a_removed_cache_entry_is_refused(home, tmp_path):
    # (red team 142: a removed entry, which a host may still map, was not checked)
    entry = _an_entry(home, tmp_path)
    fd = os.open(entry, os.O_RDWR)
    try:
        before = os.pread(fd, 64, 0)
        entry.unlink()
        result = subprocess.run(
            [sys.executable, "-m", "wasmsbx", "run", str(HELLO)],
            stdout=fd,
            stderr=subprocess.PIPE,
            text=True,
            env=home,
            cwd=tmp_path,
            timeout=120,
        )
        assert result.returncode == 105, result.stderr
        assert os.pread(fd, 64, 0) == before
    finally:
        os.close(fd)


_API_UNDER_A_LIMIT = """
import resource, sys
import wasmsbx
from wasmsbx import errors

def main():
    limit, what = int(sys.argv[1]), sys.argv[2]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    boxes = []
    try:
        if what == "batch":
            box = wasmsbx.Sandbox(sys.argv[3])
            list(box.batch("add", [[1, 2]] * 4, jobs=16))
        else:
            for _ in range(200):
                box = wasmsbx.Sandbox(sys.argv[3])
                boxes.append(box)
                box.run_command(["x"], stdin=b"abc", capture=True)
        print("no error")
    except errors.ResourceExhausted as exc:
        print("ResourceExhausted", exc)
    except BaseException as exc:
        print("other", type(exc).__name__, exc)

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize(
    "limit, what",
    [(40, "batch"), (57, "batch"), (20, "component"), (48, "component"), (80, "component")],
)
def test_the_library_out_of_descriptors_is_a_resource_error(home, tmp_path, limit, what):
    # (red team 142: Sandbox.batch raised a bare OSError from starting its workers; a
    # component's instantiation an OSError, a LinkError "cannot create a memfd", or a
    # ModuleError when its header could not be read)
    script = tmp_path / "api.py"
    script.write_text(_API_UNDER_A_LIMIT)
    module = ADD if what == "batch" else ROOT / "examples" / "components" / "cat.wasm"
    result = subprocess.run(
        [sys.executable, str(script), str(limit), what, str(module)],
        capture_output=True,
        text=True,
        env=home,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.stdout.startswith("ResourceExhausted"), (result.stdout, result.stderr[-2000:])
    # (nor a traceback of the fork server's, whose request was cut short: round 145)
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


def test_an_overlay_layer_is_an_alias_of_the_folder():
    # (red team 143: an overlay has a device of its own, so only bind mounts of the
    # folder's device were found; an overlay of the trust folder, granted, showed the
    # guest the secret key)
    from wasmsbx.native.trust import mount_aliases, overlay_layers

    text = (
        b"68 46 0:40 / /w/m1 rw - overlay overlay rw,lowerdir=/h/u/.config/wasmsbx:/x\\:y,"
        b"upperdir=/up,workdir=/wk\n"
        b"69 46 0:41 / /w/m2 rw - overlay overlay rw,lowerdir=/lo,upperdir=/h/u/.config/"
        b"wasmsbx/trust/sub,workdir=/wk\n"
        b"70 46 0:42 / / rw - overlay overlay rw,lowerdir=l/AB:l/CD,upperdir=id/diff,workdir=w\n"
    )
    assert ("/w/m1", "/x:y") in overlay_layers(text)
    # (relative layers, as Docker names them for images of many layers: passed over)
    assert mount_aliases(text, "/h/u/.config/wasmsbx/trust", "254:1") == ["/w/m1/trust", "/w/m2"]


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_grants_of_overlays_of_the_trust_folder_or_the_cache_are_refused(home, tmp_path):
    entry = _an_entry(home, tmp_path)
    trust = home["WASMSBX_TRUST_DIR"]
    ov = tmp_path / "ov"
    for name in ("lower", "w1", "w2", "m1", "m2"):
        (ov / name).mkdir(parents=True)
    script = (
        f"mount -t overlay overlay -o lowerdir={trust}:{ov}/lower {ov}/m1 && "
        f"mount -t overlay overlay -o lowerdir={ov}/lower,upperdir={entry.parent},"
        f"workdir={ov}/w2 {ov}/m2 && "
        f'"$0" -m wasmsbx run {HELLO} --dir-ro {ov}/m1::/k; echo "lower rc=$?"; '
        f'"$0" -m wasmsbx run {HELLO} --dir {ov}/m2::/c; echo "upper rc=$?"'
    )
    out = _mounted(script, home, tmp_path)
    assert "lower rc=101" in out and "upper rc=101" in out, out
    assert "your wasmsbx keys" in out and "your wasmsbx cache" in out, out


def test_stdout_on_a_hard_link_of_a_cache_entry_is_refused(home, tmp_path):
    # (red team 143: entries were told by their path; a second name of one took a
    # guest's output over native code)
    entry = _an_entry(home, tmp_path)
    before = entry.read_bytes()
    os.link(entry, tmp_path / "hl")
    result = _wasmsbx_into(tmp_path / "hl", "run", HELLO, env=home, cwd=tmp_path, mode="r+b")
    assert result.returncode == 105, result.stderr
    assert b"is a wasmsbx cache entry" in result.stderr
    assert entry.read_bytes() == before


def test_the_room_kept_aside_leaves_the_run_its_descriptors(home, tmp_path):
    # (red team 143: with a parent's descriptors open up to 36 below the limit, the 32
    # kept for reporting took the last free ones and the run aborted in wasmtime, 134)
    result = _run_holding(home, tmp_path, count=100 - 36 - 3, limit=100)
    assert result.returncode == 0, result.stderr
    assert "hello from wasm32-wasi" in result.stdout


def test_grants_beyond_the_descriptors_left_are_a_resource_error(home, tmp_path):
    # (red team 143: wasmtime's "failed to add preopen dir" read as a folder moved or
    # removed, exit 101)
    grants = []
    for i in range(16):
        (tmp_path / "g" / str(i)).mkdir(parents=True)
        grants += ["--dir-ro", f"{tmp_path}/g/{i}::/g{i}"]
    result = _wasmsbx("run", HELLO, *grants, env=home, cwd=tmp_path, preexec=_files_limit(26))
    assert result.returncode == 118, result.stderr
    assert "out of file descriptors" in result.stderr, result.stderr


def test_overlays_of_aliases_and_of_overlays_are_aliases_too():
    # (red team 144: a layer that is a bind mount of the trust folder, an overlay of an
    # overlay of it, a layer whose path holds ":" (mountinfo: "\134:"), and one named
    # through /proc/self/cwd were each granted)
    from wasmsbx.native.trust import mount_aliases

    trust = "/h/u/.config/wasmsbx/trust"
    text = MOUNTINFO.replace(b"/proj/keys", b"/b/alias").replace(b"/home/u", b"/h/u") + (
        b"80 22 0:50 / /a/m rw - overlay overlay rw,lowerdir=/b/alias/trust,upperdir=/u,"
        b"workdir=/w\n"
        b"81 22 0:51 / /c/m rw - overlay overlay rw,lowerdir=/a/m\n"
        b"82 22 0:52 / /d/m rw - overlay overlay rw,lowerdir=/lo/x\\134:y:/h/u/.config/wasmsbx\n"
        b"83 22 0:53 / /e/m rw - overlay overlay rw,lowerdir=/proc/self/cwd\n"
    )
    found = mount_aliases(text, trust, "254:1")
    for alias in ("/b/alias/trust", "/a/m", "/c/m", "/d/m/trust", "/e/m"):
        assert alias in found, (alias, found)
    # (round 145: a "," in a layer (mountinfo: "\134\054"), a layer through /dev/fd,
    # and an overlay of "/" mounted inside it, whose aliases grew without end)
    text += (
        b"84 22 0:54 / /f/m rw - overlay overlay rw,lowerdir=/k\\134\\0541:/lo\n"
        b"85 22 0:55 / /g/m rw - overlay overlay rw,lowerdir=/dev/fd/100/trust\n"
        b"86 22 0:56 / /h/u/v rw - overlay overlay rw,lowerdir=/\n"
    )
    from wasmsbx.native.trust import overlay_layers

    assert ("/f/m", "/k,1") in overlay_layers(text)
    found = mount_aliases(text, trust, "254:1")
    assert "/g/m" in found and "/h/u/v/h/u/.config/wasmsbx/trust" in found, found
    assert not any(alias.startswith("/h/u/v/h/u/v") for alias in found), found


def test_descriptors_are_counted_without_proc(monkeypatch):
    # (red team 144: with /proc hidden nothing was counted, and `ulimit -n 8` aborted a
    # run in wasmtime again; round 145: then stdio alone was assumed, and a parent's
    # descriptors let a run start that aborted)
    from wasmsbx import fdroom

    def unlistable(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fdroom.os, "listdir", unlistable)
    top = 4096
    before = fdroom._open_below(top, -1)
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(5)]
    try:
        assert all(fd < top for fd in held)
        assert fdroom._open_below(top, -1) == before + 5
        assert fdroom._open_below(top, held[0]) == before + 4
    finally:
        for fd in held:
            os.close(fd)


def test_descriptors_past_the_soft_limit_take_no_room(home, tmp_path):
    # (red team 144: a parent's descriptors 200-259 under a soft limit of 64 were
    # counted against it: "only 1 file descriptors are free")
    # Made in the child, above every descriptor it has: dup2 onto fixed numbers in this
    # process replaced whatever held them (the wasmer backend's lifeline pipe, and every
    # wasmer worker of the test process died at start after it: exit 70 on CI).
    def low():
        base = max(200, *(int(n) + 1 for n in os.listdir("/proc/self/fd")))
        null = os.open(os.devnull, os.O_RDONLY)
        for i in range(60):
            os.dup2(null, base + i)  # (inheritable)
        os.close(null)
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )

    result = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "run", str(HELLO)],
        capture_output=True,
        text=True,
        env=home,
        cwd=tmp_path,
        preexec_fn=low,
        close_fds=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


_FIRST_WASI_SHORT = """
import os, resource, sys
import wasmsbx
from wasmsbx import errors

box = wasmsbx.Sandbox(sys.argv[1])
soft = 256
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
for fd in held[-6:]:
    os.close(fd)
try:
    box.run_command(["x"], capture=True)
    print("ran")
except errors.ResourceExhausted as exc:
    print("ResourceExhausted", exc)
"""


def test_a_first_wasi_guest_short_of_descriptors_is_an_error_not_an_abort(tmp_path, home):
    # (red team 144: wasmtime-wasi's runtime, made for the first WASI guest of a process,
    # unwraps EMFILE: a host program with few descriptors left was killed, SIGABRT)
    script = tmp_path / "short.py"
    script.write_text(_FIRST_WASI_SHORT)
    result = subprocess.run(
        [sys.executable, str(script), str(HELLO)],
        capture_output=True,
        text=True,
        env=home,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ResourceExhausted"), result.stdout


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
@pytest.mark.parametrize("target", ["key", "entry"])
def test_a_link_to_a_guarded_file_bound_elsewhere_is_refused_before_the_work(
    home, tmp_path, target
):
    # (red team 146: `-o link`, the link to a key file bound alone at another path or to
    # a cache entry bound so, was refused only when written: after the compile, a batch
    # after its first item)
    if target == "key":
        _keys_made(home, tmp_path)
        guarded = Path(home["WASMSBX_TRUST_DIR"]) / "trusted_keys"
        guarded.touch()
        told = "trust folder"
    else:
        guarded = _an_entry(home, tmp_path)
        told = "is a wasmsbx cache entry"
    before = guarded.read_bytes()
    (tmp_path / "bound").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "bound")
    (tmp_path / "in.jsonl").write_text("[1, 2]\n")
    check = "from wasmsbx import outfile; outfile.check_output('link')"
    script = (
        f"mount --bind {guarded} {tmp_path}/bound && "
        f'"$0" -c "{check}" 2>&1 | tail -n1; '
        f'"$0" -m wasmsbx run {ADD} add --batch in.jsonl --checkpoint link; echo "batch rc=$?"'
    )
    result = _in_mount_namespace(script, home, tmp_path)
    first, _, rest = result.stdout.partition("\n")
    assert first.startswith("wasmsbx.errors.InputError") and told in first, result
    assert rest == "batch rc=105\n" and told in result.stderr, result
    assert guarded.read_bytes() == before


def test_a_checkpoint_linked_to_a_key_file_is_refused_unread(home, tmp_path):
    # (it was read as a checkpoint first: "is not a wasmsbx checkpoint", exit 2, for a
    # file never to be written)
    _keys_made(home, tmp_path)
    key = Path(home["WASMSBX_TRUST_DIR"]) / "secret.key"
    before = key.read_bytes()
    (tmp_path / "ck").symlink_to(key)
    (tmp_path / "in.jsonl").write_text("[1, 2]\n")
    result = _wasmsbx(
        "run", ADD, "add", "--batch", "in.jsonl", "--checkpoint", "ck", env=home, cwd=tmp_path
    )
    assert result.returncode == 105 and result.stdout == "", result
    assert "trust folder" in result.stderr, result.stderr
    assert key.read_bytes() == before


@pytest.mark.parametrize("name", ["CACHEDIR.TAG", "cache.db", "probes/wasmer-0.txt"])
def test_stdout_on_a_hard_link_of_a_cache_file_is_refused(home, tmp_path, name):
    # (only entries were told by what they hold: a second name of the cache's tag took
    # the output, and the cache was then "not a wasmsbx cache" until cleared; of a
    # wasmer probe's verdict, red team 147, the guest's text was then shown as a fix)
    entry = _an_entry(home, tmp_path)
    kept = entry.parent.parent.parent / name
    if name.startswith("probes"):
        kept.parent.mkdir(mode=0o700, exist_ok=True)
        kept.write_text("verdict\n")
        name = kept.name
    before = kept.read_bytes()
    os.link(kept, tmp_path / "hl")
    result = _wasmsbx_into(tmp_path / "hl", "run", HELLO, env=home, cwd=tmp_path)
    assert result.returncode == 105, result.stderr
    assert f"is the wasmsbx cache's {name} by another name".encode() in result.stderr
    assert kept.read_bytes() == before
    again = _wasmsbx("run", ADD, "add", "1", "2", "--policy", tmp_path / "min.toml", env=home)
    assert again.returncode == 0 and again.stdout == "3\n", again


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_a_policys_stdin_through_a_mount_of_the_trust_folder_is_refused(home, tmp_path):
    # (red team 147: stdin was checked by real path only, and a guest printed the secret
    # key read through a bind mount of the trust folder, of the key alone, an overlay)
    _keys_made(home, tmp_path)
    trust = home["WASMSBX_TRUST_DIR"]
    for name in ("bt", "bf", "ov", "u", "w"):
        (tmp_path / name).mkdir()
    (tmp_path / "bf" / "key").touch()
    cat = ROOT / "examples" / "components" / "cat.wasm"
    script = (
        f"mount --bind {trust} bt && mount --bind {trust}/secret.key bf/key && "
        f"mount -t overlay overlay -o lowerdir={trust},upperdir=u,workdir=w ov"
    )
    for i, path in enumerate(("bt/secret.key", "bf/key", "ov/secret.key")):
        (tmp_path / f"p{i}.toml").write_text(f'[stdio]\nstdin = "{tmp_path / path}"\n')
        script += f'; "$0" -m wasmsbx run {cat} --policy p{i}.toml; echo "{path} rc=$?"'
    result = _in_mount_namespace(script, home, tmp_path)
    for path in ("bt/secret.key", "bf/key", "ov/secret.key"):
        assert f"{path} rc=101" in result.stdout, result
    assert result.stderr.count("is in the trust folder") == 3, result.stderr


def test_a_policys_stdin_on_a_hard_link_of_a_key_is_refused(home, tmp_path):
    _keys_made(home, tmp_path)
    os.link(Path(home["WASMSBX_TRUST_DIR"]) / "secret.key", tmp_path / "notes.txt")
    (tmp_path / "p.toml").write_text(f'[stdio]\nstdin = "{tmp_path / "notes.txt"}"\n')
    cat = ROOT / "examples" / "components" / "cat.wasm"
    result = _wasmsbx("run", cat, "--policy", "p.toml", env=home, cwd=tmp_path)
    assert result.returncode == 101 and result.stdout == "", result
    assert "a hard link" in result.stderr, result.stderr


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_no_cache_is_made_in_the_trust_folder_by_another_path(home, tmp_path):
    # (red team 147: `--cache-dir k/bt/c2`, k/bt a bind mount of the trust folder, or a
    # policy's cache_dir there, made a cache in the trust folder: checked by real path)
    _keys_made(home, tmp_path)
    trust = Path(home["WASMSBX_TRUST_DIR"])
    before = sorted(p.name for p in trust.iterdir())
    for name in ("bt", "ov", "u", "w"):
        (tmp_path / name).mkdir()
    (tmp_path / "c.toml").write_text('[runtime]\ncache_min_size = 0\ncache_dir = "bt/c3"\n')
    (tmp_path / "o.toml").write_text("[runtime]\ncache_min_size = 0\n")
    script = (
        f"mount --bind {trust} bt && "
        f"mount -t overlay overlay -o lowerdir=u,upperdir={trust},workdir=w ov"
    )
    for how in (
        f"run {ADD} add 1 2 --policy o.toml --cache-dir bt/c2",
        f"run {ADD} add 1 2 --policy c.toml",
        f"run {ADD} add 1 2 --policy o.toml --cache-dir ov/c4",
        f"run {ADD} add 1 2 --policy o.toml --cache-dir bt",
    ):
        script += f'; "$0" -m wasmsbx {how}; echo "rc=$?"'
    result = _in_mount_namespace(script, home, tmp_path)
    assert result.stdout.split() == ["3", "rc=0"] * 4, result
    assert result.stderr.count("cache unavailable") == 4, result.stderr
    assert result.stderr.count("reached by another path") == 4, result.stderr
    assert sorted(p.name for p in trust.iterdir()) == before


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
@pytest.mark.parametrize("proc", ["proc", "no-proc"])
@pytest.mark.parametrize("at", ["code/tt", "code"])
def test_cache_clear_never_enters_a_mount_inside_the_cache(home, tmp_path, at, proc):
    # (red team 147: the trust folder bound at code/tt, or at code itself, lost every key
    # to `cache clear`: the removal crossed into the mount)
    _an_entry(home, tmp_path)
    trust = Path(home["WASMSBX_TRUST_DIR"])
    before = {p.name: p.read_bytes() for p in trust.iterdir()}
    cache = Path(home["XDG_CACHE_HOME"]) / "wasmsbx"
    (cache / at).mkdir(exist_ok=True)
    hide = "mount -t tmpfs none /proc && " if proc == "no-proc" else ""  # (round 149)
    script = f'mount --bind {trust} {cache / at} && {hide}"$0" -m wasmsbx cache clear; echo "rc=$?"'
    result = _in_mount_namespace(script, home, tmp_path)
    assert "rc=" in result.stdout, result
    assert {p.name: p.read_bytes() for p in trust.iterdir()} == before, result
    assert "Traceback" not in result.stderr, result.stderr


def test_a_tree_is_removed_whole_on_one_mount(tmp_path):
    from wasmsbx import fstree

    deep = tmp_path / "t" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    (tmp_path / "t" / "g").write_text("y")
    assert fstree.remove_tree(str(tmp_path / "t"))
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("what", ["secret.key", "entry", "CACHEDIR.TAG"])
def test_a_checkpoint_hard_linked_to_a_guarded_file_is_refused(home, tmp_path, what):
    # (red team 147: a second name of a key file, an entry or a cache's tag was read as
    # a checkpoint, "not a wasmsbx checkpoint", exit 2)
    entry = _an_entry(home, tmp_path)
    _keys_made(home, tmp_path)
    guarded = {
        "secret.key": Path(home["WASMSBX_TRUST_DIR"]) / "secret.key",
        "entry": entry,
        "CACHEDIR.TAG": entry.parent.parent.parent / "CACHEDIR.TAG",
    }[what]
    before = guarded.read_bytes()
    os.link(guarded, tmp_path / "ck")
    (tmp_path / "in.jsonl").write_text("[1, 2]\n")
    result = _wasmsbx(
        "run", ADD, "add", "--batch", "in.jsonl", "--checkpoint", "ck", env=home, cwd=tmp_path
    )
    assert result.returncode == 105 and result.stdout == "", result
    assert guarded.read_bytes() == before


@pytest.mark.parametrize("module", ["add.wat", "wasi/hello.wasm"])
def test_a_grant_of_the_trust_folder_is_refused_before_the_compile(home, tmp_path, module):
    # (red team 147: refused once the module was compiled, and cached)
    _keys_made(home, tmp_path)
    home.pop("WASMSBX_CACHE_DIR", None)
    cache = Path(home["XDG_CACHE_HOME"]) / "wasmsbx"
    shutil.rmtree(cache, ignore_errors=True)
    trust = home["WASMSBX_TRUST_DIR"]
    (tmp_path / "g.toml").write_text(
        f'[runtime]\ncache_min_size = 0\n[filesystem]\nread_only = ["{trust}"]\n'
    )
    args = ["add", "1", "2"] if module == "add.wat" else []
    result = _wasmsbx(
        "run", ROOT / "examples" / module, *args, "--policy", "g.toml", env=home, cwd=tmp_path
    )
    assert result.returncode == 101 and "your wasmsbx keys" in result.stderr, result
    assert not list(cache.glob("code/*/*.entry"))


# Red team 147: a cache entry with a second name (a hard link, as a `cp -al` or `rsync
# --link-dest` backup of the home folder leaves) in a folder a guest is granted
# read-write. The entry was mapped where it lies, and a mapping shows what is written to
# the file: the guest wrote int3 over its own native code as it ran (SIGTRAP, exit 133;
# with x86 code of its choosing, the host ran it). Such an entry is copied now.
_SCRIBBLE = """;; A WASI guest given a folder (as its first preopen, fd 3) that holds e.entry: it
;; writes int3 (0xCC) over 64 KiB of that file from offset 4096, then calls on.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_pwrite"
    (func $pwrite (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "e.entry")
  (func $work (param $n i32) (result i32)
    (local $acc i32)
    (loop $l
      (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 31)) (local.get $n)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $n) (i32.const 0))))
    (local.get $acc))
  (func (export "_start")
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 7) (i32.const 0)
                    (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 16))
      (then (call $exit (i32.const 3))))
    (memory.fill (i32.const 1024) (i32.const 0xCC) (i32.const 65536))
    (i32.store (i32.const 32) (i32.const 1024))
    (i32.store (i32.const 36) (i32.const 65536))
    (if (call $pwrite (i32.load (i32.const 16)) (i32.const 32) (i32.const 1) (i64.const 4096)
                      (i32.const 40))
      (then (call $exit (i32.const 4))))
    (drop (call $work (i32.const 1000)))
    (call $exit (i32.const 0))))
"""


def test_a_guest_cannot_write_its_entry_through_a_hard_link(home, tmp_path):
    home.pop("WASMSBX_CACHE_DIR", None)
    guest = tmp_path / "scribble.wat"
    guest.write_text(_SCRIBBLE)
    (tmp_path / "c0.toml").write_text("[runtime]\ncache_min_size = 0\n")
    backup = tmp_path / "backup"
    backup.mkdir()
    made = _wasmsbx("run", guest, "--policy", "c0.toml", env=home, cwd=tmp_path)
    assert made.returncode == 3, made.stderr  # (no folder granted: path_open failed)
    (entry,) = (Path(home["XDG_CACHE_HOME"]) / "wasmsbx" / "code").glob("*/*.entry")
    os.link(entry, backup / "e.entry")
    hit = _wasmsbx("run", guest, "--policy", "c0.toml", env=home, cwd=tmp_path)
    assert hit.returncode == 3, hit.stderr
    attack = _wasmsbx("run", guest, "--policy", "c0.toml", "--dir", backup, env=home, cwd=tmp_path)
    assert attack.returncode == 0, attack.stderr  # (133: it ran the int3 it wrote)
    # The entry it wrote is no longer authentic: the next run compiles the module again.
    again = _wasmsbx("run", guest, "--policy", "c0.toml", "--dir", backup, env=home, cwd=tmp_path)
    assert again.returncode == 0, again.stderr


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is needed")
def test_no_folder_is_left_in_a_trust_folder_made_through_a_bind_mount(home, tmp_path):
    # (red team 149: no trust folder yet, `--cache-dir b/trust/c` with b a bind mount of
    # its parent made trust/c, refused the cache, and left trust/c behind)
    parent = tmp_path / "cfg"
    parent.mkdir()
    home["WASMSBX_TRUST_DIR"] = str(parent / "trust")
    (tmp_path / "b").mkdir()
    (tmp_path / "c0.toml").write_text("[runtime]\ncache_min_size = 0\n")
    script = (
        f"mount --bind {parent} b && "
        f'"$0" -m wasmsbx run {ADD} add 1 2 --policy c0.toml --cache-dir b/trust/c; '
        'echo "rc=$?"'
    )
    result = _in_mount_namespace(script, home, tmp_path)
    assert result.stdout.split() == ["3", "rc=0"], result
    assert "not a cache" in result.stderr, result.stderr
    assert not (parent / "trust").exists(), list(parent.rglob("*"))


def test_a_folder_that_cannot_be_moved_is_taken_for_a_mount_point(tmp_path, monkeypatch):
    # (red team 150: with no mount id, only EBUSY counted; a file planted at the probe's
    # name made the rename fail with ENOTDIR, and the bind mount was entered)
    import errno

    from wasmsbx import fstree

    (tmp_path / "d").mkdir()

    def refused(*args, **kwargs):
        raise OSError(errno.ENOTDIR, "Not a directory")

    assert not fstree._pinned_by_a_mount(str(tmp_path / "d"))
    assert (tmp_path / "d").is_dir()
    monkeypatch.setattr(fstree.os, "rename", refused)
    assert fstree._pinned_by_a_mount(str(tmp_path / "d"))
