"""The cache as a hostile party attacks it: entries planted through a project's policy,
flipped header bits, swapped, replayed, truncated and extended entries, and the key
file itself (symlinked, world-readable, someone else's, raced). Every backend that
loads native code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wasmsbx import errors
from wasmsbx import policy as policy_mod
from wasmsbx.backends import get, split
from wasmsbx.native import artifact as aot
from wasmsbx.native import cache, entry, trust
from wasmsbx.runner import Sandbox as _Sandbox
from wasmsbx.runner import read_module, shared
from wasmsbx.runner.sandbox import engine_options

from .conftest import capabilities_of
from .trust_helpers import GOOD_WAT, attacker_key, write_modules


def Sandbox(*args, **kwargs):  # noqa: N802 - stands for the class
    """A sandbox as a new run makes it: each one here stands for a process of its own, so
    the modules earlier ones loaded are not held in memory (runner.shared keeps them
    within a process; tests/test_cache_memory.py tests that layer)."""
    shared.forget_loaded()
    return _Sandbox(*args, **kwargs)


@pytest.fixture
def native(backend):
    if not capabilities_of(backend).has("aot"):
        pytest.skip(f"{backend} does not load native code")
    return backend


def cached_policy(**more) -> policy_mod.Policy:
    policy = policy_mod.defaults()
    policy_mod.override(policy, "runtime.cache_min_size", 0)
    for key, value in more.items():
        policy_mod.override(policy, key, value)
    return policy


def crafted_entry(backend: str, module, donor, key) -> tuple:
    """(cache key, entry bytes) a forger plants for ``module``: the native code of
    ``donor``, a header claiming ``module``, tagged with ``key`` (None: unkeyed)."""
    from blake3 import blake3

    name, compiler = split(backend)
    engine = get(name).engine(engine_options(cached_policy(), compiler))
    wasm = read_module(module)
    fingerprint = aot.normalise(engine.fingerprint())
    digest = aot.digest(wasm)
    payload = engine.serialize(engine.compile(read_module(donor)))
    blob = entry.pack(
        fingerprint,
        payload,
        aot.sha256(wasm),
        len(wasm),
        "tool.wat",
        exports=aot.export_records(wasm),
        module_digest=digest,
        key=key or bytes(32),
    )
    if key is None:  # what an unkeyed digest would let anyone write
        body = blob[: -entry.TAG_SIZE]
        blob = body + blake3(body).digest()
    return cache.entry_key(digest, fingerprint), blob


def plant(root, key: str, blob: bytes, tagged: bool = True) -> None:
    folder = root / "code" / key[:2]
    folder.mkdir(parents=True)
    (folder / f"{key}.entry").write_bytes(blob)
    if tagged:
        (root / "CACHEDIR.TAG").write_text(cache.TAG_TEXT)


def project(folder, backend: str):
    """A cloned repository: sandbox.toml with a cache in the project, and tool.wat."""
    folder.mkdir()
    (folder / "sandbox.toml").write_text(
        f'[runtime]\nbackend = "{backend}"\ncache_min_size = 0\ncache_dir = ".wc"\n'
    )
    (folder / "tool.wat").write_text(GOOD_WAT)
    write_modules(folder)  # evil.wat: the code the forger plants
    return folder


def test_planted_cache_through_a_discovered_policy(cli, tmp_path, native):
    """Issue 12, attack 2. The control: the same entry tagged with the victim's key runs
    the planted code (77), so only the key stops it."""
    control = project(tmp_path / "control", native)
    key, blob = crafted_entry(native, control / "tool.wat", control / "evil.wat", None)
    _, real = crafted_entry(
        native, control / "tool.wat", control / "evil.wat", trust.tag_key("cache-entry", True)
    )
    plant(control / ".wc", key, real)
    assert cli("run", "tool.wat", "add", "5", "3", cwd=control).stdout == "77\n"

    for tag_key in (None, attacker_key()):
        repo = project(tmp_path / f"repo-{tag_key is None}", native)
        key, blob = crafted_entry(native, repo / "tool.wat", repo / "evil.wat", tag_key)
        plant(repo / ".wc", key, blob)
        verify = cli("cache", "verify", "--keep", "--json", cwd=repo).json()
        assert verify["bad"] and "not tagged with your key" in verify["bad"][0]["reason"]
        result = cli("run", "tool.wat", "add", "5", "3", cwd=repo)
        assert (result.code, result.stdout) == (0, "8\n")
        assert "failed its integrity check (not tagged with your key" in result.stderr
        assert "discarded and recompiled" in result.stderr
        again = cli("run", "tool.wat", "add", "5", "3", "--stats", cwd=repo)
        assert again.stdout == "8\n" and "cache             hit" in again.stderr


def _entry(tmp_path, backend, module=None):
    """(policy, store, key, blob) of one real entry."""
    module = module or write_modules(tmp_path)[0]
    policy = cached_policy()
    box = Sandbox(module, policy, backend=backend)
    assert box.cache_state == "miss"
    store = cache.open_store(policy)
    (key,) = [k for k, _ in store.code_keys() if k == box_key(box)]
    return policy, store, key, bytes(store.blob(key))


def box_key(box) -> str:
    return cache.entry_key(aot.digest(box.wasm), aot.normalise(box.engine.fingerprint()))


def _lookup(store, backend, module) -> cache.Lookup:
    name, compiler = split(backend)
    engine = get(name).engine(engine_options(cached_policy(), compiler))
    return cache.Lookup(store, engine, read_module(module), "add.wat")


def test_every_header_byte_is_covered(tmp_path, native):
    """Issue 12, attack 3: flip one bit of any byte of the header or footer (the
    exports list among them): discarded and reported, never loaded, and `verify`
    finds it."""
    good = write_modules(tmp_path)[0]
    policy, store, key, blob = _entry(tmp_path, native, good)
    try:
        start, end = entry.spans(blob)
        assert b'"exports"' in blob[start:end]
        for where in range(start, len(blob) - entry.TAG_SIZE):
            damaged = bytearray(blob)
            damaged[where] ^= 1 << (where % 8)
            store.write_blob(key, bytes(damaged))
            lookup = _lookup(store, native, good)
            assert lookup.load() is None, f"byte {where} is not covered"
            assert "discarded and recompiled" in lookup.warnings[0]
            store.write_blob(key, bytes(damaged))
            report = cache.verify(store, remove=False)
            assert report["bad"], f"verify missed byte {where}"
    finally:
        store.close()


def test_flipped_exports_bit_through_the_cli(cli, isolated, tmp_path):
    (isolated / "sandbox.toml").write_text("[runtime]\ncache_min_size = 0\n")
    good = write_modules(isolated)[0]
    assert cli("run", good, "add", "1", "2").stdout == "3\n"
    (path,) = (tmp_path / "cache").rglob("*.entry")
    data = bytearray(path.read_bytes())
    at = data.index(b'"name":"add"') + len('"name":"')
    data[at] ^= 0x20  # "add" -> "Add": the header lies about the exports
    path.write_bytes(bytes(data))
    verify = cli("cache", "verify", "--keep")
    assert "bad: add.wat: not tagged with your key" in verify.stdout
    result = cli("run", good, "add", "1", "2")
    assert (result.code, result.stdout) == (0, "3\n")
    assert "warning: cache entry for add.wat" in result.stderr
    assert cli("run", good, "add", "1", "2").stderr == ""  # recompiled, stored, good again


def test_truncated_extended_and_swapped_entries(tmp_path, native):
    good, evil = write_modules(tmp_path)
    policy, store, key, blob = _entry(tmp_path, native, good)
    _, _, other_key, other = _entry(tmp_path, native, evil)
    try:
        a, b = entry.spans(blob)[0], entry.spans(other)[0]
        swapped = other[:b] + blob[a:]  # their code, our header
        bad_ones = (blob[:-1], blob + b"\0", blob + blob[-32:], b"\0" + blob, swapped, blob[a:])
        for bad in bad_ones:
            store.write_blob(key, bad)
            lookup = _lookup(store, native, good)
            assert lookup.load() is None and "discarded" in lookup.warnings[0]
        # Replayed: the other module's authentic entry, under this module's key.
        store.write_blob(key, other)
        lookup = _lookup(store, native, good)
        assert lookup.load() is None and "belongs to another module" in lookup.warnings[0]
    finally:
        store.close()


def test_an_entry_from_another_users_cache_is_refused(tmp_path, native, monkeypatch):
    good = write_modules(tmp_path)[0]
    policy, store, key, blob = _entry(tmp_path, native, good)
    store.close()
    monkeypatch.setenv("WASMSBX_TRUST_DIR", str(tmp_path / "other-user"))
    box = Sandbox(good, policy, backend=native)
    assert box.cache_state == "miss" and "not tagged with your key" in box.warnings[0]
    assert box.call("add", 2, 2) == 4


# ---------------------------------------------------------------------------- the key file


def key_path(tmp_path):
    return tmp_path / "trust" / trust.SECRET_FILE


def _run_twice(cli, module):
    cli("run", module, "add", "1", "2")
    return cli("run", module, "add", "1", "2")


def test_key_file_is_private_and_created_once(cli, isolated, tmp_path):
    (isolated / "sandbox.toml").write_text("[runtime]\ncache_min_size = 0\n")
    good = write_modules(isolated)[0]
    assert _run_twice(cli, good).stderr == ""
    path = key_path(tmp_path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert len(path.read_bytes()) == 32


@pytest.mark.parametrize("attack", ["symlink", "world-readable", "wrong-size", "directory", "fifo"])
def test_a_doubtful_key_file_is_not_used(cli, isolated, tmp_path, attack):
    """The key is refused, not repaired: the cache is skipped with a warning (runs still
    work) and artifacts are refused, each saying how to fix it."""
    (isolated / "sandbox.toml").write_text("[runtime]\ncache_min_size = 0\n")
    good = write_modules(isolated)[0]
    assert cli("compile", good, "-o", isolated / "a.cwasm").code == 0
    path = key_path(tmp_path)
    if attack == "symlink":
        known = tmp_path / "known"
        known.write_bytes(bytes(32))
        known.chmod(0o600)
        path.unlink()
        path.symlink_to(known)
    elif attack == "world-readable":
        path.chmod(0o644)
    elif attack == "wrong-size":
        path.write_bytes(b"short")
    elif attack == "fifo":  # reading it would block forever
        path.unlink()
        os.mkfifo(path, 0o600)
    else:
        path.unlink()
        path.mkdir()
    result = _run_twice(cli, good)
    assert (result.code, result.stdout) == (0, "3\n")
    assert "cache (your wasmsbx secret key" in result.stderr and "; not used)" in result.stderr
    refused = cli("run", isolated / "a.cwasm", "add", "1", "2")
    assert refused.code == 102 and "cannot be authenticated" in refused.stderr
    assert "wasmsbx trust rotate" in refused.stderr
    assert cli("trust", "show", "--json").json()["secret_key"] == "unusable"
    assert cli("trust", "rotate").code == 0
    assert _run_twice(cli, good).stderr == ""


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_key_file_of_another_user_is_refused(tmp_path, monkeypatch):
    trust.secret(create=True)
    os.chown(key_path(tmp_path), 65534, 65534)
    with pytest.raises(trust.KeyProblem, match="belongs to another user"):
        trust.secret()
    os.chown(key_path(tmp_path), 0, 0)
    os.chown(key_path(tmp_path).parent, 65534, 65534)
    with pytest.raises(trust.KeyProblem, match="trust folder .* belongs to another user"):
        trust.secret()


def test_concurrent_processes_agree_on_one_key(tmp_path):
    """Eight processes creating the key at once all end up with the same one."""
    code = (
        "import sys, time; from wasmsbx.native import trust\n"
        "while time.time() < float(sys.argv[1]): pass\n"
        "print(trust.secret(create=True).hex())"
    )
    import time

    start = str(time.time() + 1.0)
    procs = [
        subprocess.Popen([sys.executable, "-c", code, start], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and len(keys.pop()) == 64
    leftovers = [p.name for p in key_path(tmp_path).parent.iterdir()]
    assert leftovers == [trust.SECRET_FILE]


def test_losing_the_creation_race_keeps_the_winners_key(tmp_path, monkeypatch):
    """Deterministic: the key appears between our check and our link."""
    winner = os.urandom(32)
    real_link = os.link

    def link(src, dst):
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, winner)
        os.close(fd)
        return real_link(src, dst)

    trust.private_dir(create=True)
    monkeypatch.setattr(os, "link", link)
    assert trust.secret(create=True) == winner


def test_trusted_keys_writable_by_others_are_refused(cli, tmp_path):
    public = cli("trust", "keygen", env={"WASMSBX_TRUST_DIR": str(tmp_path / "a")}).stdout
    assert cli("trust", "add", public.strip()).code == 0
    (tmp_path / "trust" / trust.TRUSTED_FILE).chmod(0o666)
    result = cli("trust", "list")
    assert result.code == 105 and "only you can write" in result.stderr


def test_the_trust_folder_is_never_a_cache(cli, isolated, tmp_path):
    """A policy naming the trust folder (or a folder around it) as its cache: refused,
    and `cache clear` cannot delete the keys."""
    trust.secret(create=True)
    for target in (tmp_path / "trust", tmp_path):
        policy = isolated / "p.toml"
        policy.write_text(f'[runtime]\ncache_min_size = 0\ncache_dir = "{target}"\n')
        good = write_modules(isolated)[0]
        result = cli("run", good, "add", "1", "2", "--policy", policy)
        assert (result.code, result.stdout) == (0, "3\n")
        assert "cache unavailable" in result.stderr
        assert not (target / "CACHEDIR.TAG").exists()
        cli("cache", "clear", "--policy", policy)
    assert key_path(tmp_path).exists()


def test_a_folder_of_other_files_is_not_made_a_cache(cli, isolated, tmp_path):
    """cache_dir = "~/Documents": not tagged (backup tools skip tagged folders), not
    chmodded, no database written into it."""
    docs = tmp_path / "docs"
    docs.mkdir(mode=0o755)
    (docs / "thesis.txt").write_text("years of work")
    policy = isolated / "p.toml"
    policy.write_text(f'[runtime]\ncache_min_size = 0\ncache_dir = "{docs}"\n')
    good = write_modules(isolated)[0]
    result = cli("run", good, "add", "1", "2", "--policy", policy)
    assert result.stdout == "3\n" and "is not a wasmsbx cache" in result.stderr
    assert sorted(p.name for p in docs.iterdir()) == ["thesis.txt"]
    assert oct(docs.stat().st_mode & 0o777) == "0o755"


def test_wipe_removes_only_what_wasmsbx_keeps(tmp_path):
    root = tmp_path / "c"
    where = cache.prepare_dir(root)
    (root / "cache.db").write_bytes(b"garbage")
    (root / "code").mkdir()
    (root / "project-file.c").write_text("int main;")
    cache.wipe(root, where)
    assert [p.name for p in root.iterdir()] == ["project-file.c"]


def test_wipe_reads_only_the_start_of_a_tag(tmp_path, monkeypatch):
    """Red team round 19: `cache clear` of a damaged cache read CACHEDIR.TAG whole, so a
    tag made sparse and 8 GB large was read into memory. Now at most 4 KiB are read, and
    only from a regular file that is not a link."""
    import os

    root = tmp_path / "c"
    where = cache.prepare_dir(root)
    tag = root / "CACHEDIR.TAG"
    with open(tag, "r+b") as handle:
        handle.truncate(8 << 30)  # (sparse: no disk used)
    asked: list = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: asked.append(n) or real_read(fd, n))
    cache.wipe(root, where)
    assert asked and max(asked) <= 4096
    assert not root.exists()
    other = tmp_path / "d"
    elsewhere = cache.prepare_dir(other)
    (other / "cache.db").write_bytes(b"garbage")
    real = other / "real-tag"
    os.replace(other / "CACHEDIR.TAG", real)
    (other / "CACHEDIR.TAG").symlink_to(real)
    with pytest.raises(cache.CacheUnavailable, match="no wasmsbx CACHEDIR.TAG"):
        cache.wipe(other, elsewhere)


def test_a_policy_cannot_show_the_guest_the_keys(cli, isolated, tmp_path):
    """A project's sandbox.toml granting the folder that holds the trust folder (the
    home, ~/.config) would let a WASI guest read the secret key and forge native code."""
    from .conftest import EXAMPLES

    trust.secret(create=True)
    hello = EXAMPLES / "wasi" / "hello.wasm"
    for granted in (tmp_path, tmp_path / "trust"):
        (isolated / "sandbox.toml").write_text(f'[filesystem]\nread_only = ["{granted}"]\n')
        # --policy: trusted as it is (a discovered one may not even name paths outside
        # its folder); the key check must hold for a policy the user gives too.
        result = cli("run", hello, "--policy", isolated / "sandbox.toml")
        assert result.code == 101 and "would give the guest your wasmsbx keys" in result.stderr
        # (nor for a module without WASI, given no folder: such a grant was passed over)
        add = EXAMPLES / "add.wat"
        result = cli("run", add, "add", "1", "2", "--policy", isolated / "sandbox.toml")
        assert result.code == 101 and "would give the guest your wasmsbx keys" in result.stderr
    (isolated / "sandbox.toml").write_text(f'[filesystem]\nread_only = ["{isolated}"]\n')
    assert cli("run", hello).code == 0


@pytest.mark.parametrize("kind", ["module", "component"])
@pytest.mark.parametrize("granted", ["/proc", "/proc/self", "/proc/self/fd"])
def test_a_grant_of_proc_is_refused(cli, tmp_path, kind, granted):
    """Red team round 52: WASI opens the guest's files in the process that runs it, so a
    guest granted /proc wrote the host's own memory through /proc/self/mem (an int3 over
    libc: SIGTRAP), and read-only it read the host's memory and environment. Refused
    (exit 101) for a policy the user gives and for --dir, whatever the access."""
    from .conftest import EXAMPLES

    guest = EXAMPLES / "wasi" / "hello.wasm"
    if kind == "component":
        guest = EXAMPLES / "components" / "cat.wasm"
    policy = tmp_path / "p.toml"
    for access in ("read_only", "read_write"):
        policy.write_text(f'[filesystem]\n{access} = ["{granted}"]\n')
        res = cli("run", guest, "--policy", policy)
        assert res.code == 101 and "process file system" in res.stderr, res
    res = cli("run", guest, "--dir-ro", f"{granted}::/p")
    assert res.code == 101 and "/proc/self there is the process" in res.stderr, res
    assert "Traceback" not in res.stderr


def test_a_grant_holding_or_inside_a_proc_mount_is_refused(tmp_path):
    """Wherever procfs is mounted (a container's root folder holds one): the grant of the
    mount, of a folder in it or of one around it is refused; a sibling is not."""
    mount = tmp_path / "rootfs" / "proc"
    (mount / "self").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    procs = [str(mount)]
    for host in (mount, mount / "self", tmp_path / "rootfs", tmp_path):
        with pytest.raises(errors.PolicyError, match="process file system"):
            trust.refuse_proc_grant(str(host), str(host), procs)
    trust.refuse_proc_grant(str(tmp_path / "data"), str(tmp_path / "data"), procs)
    info = (
        b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        b"45 27 0:40 / /srv/a\\040b/proc rw,relatime - proc proc rw\n"
        b"46 27 0:41 / /srv/sys rw - sysfs sysfs rw\n"
        b"47 27 0:42 / /srv/odd\\134name rw shared:1 - proc none rw\n"
    )
    assert trust.proc_mount_points(info) == ["/proc", "/proc", "/srv/a b/proc", "/srv/odd\\name"]
    assert "/proc" in trust.proc_mounts()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a procfs at /proc")
def test_a_procfs_is_refused_where_mountinfo_says_nothing():
    """Round 53: with /proc/self/mountinfo unreadable (a /proc hidden under a tmpfs) a
    procfs mounted elsewhere passed. The grant's own file system is asked too (statfs):
    here no mount point is known at all, and a procfs folder is still refused."""
    for host in ("/proc", "/proc/self", "/proc/self/fd"):
        with pytest.raises(errors.PolicyError, match="process file system"):
            trust.refuse_proc_grant(host, host, [])
    trust.refuse_proc_grant("/tmp", "/tmp", [])


def test_backends_refuse_raw_bytes(backend):
    """The structural guarantee: a backend's deserialize takes only what passed a check."""
    name, compiler = split(backend)
    engine = get(name).engine(engine_options(cached_policy(), compiler))
    if not capabilities_of(backend).has("aot"):
        pytest.skip(f"{backend} does not load native code")
    code = engine.serialize(engine.compile(read_module_text(GOOD_WAT)))
    for raw in (code, bytearray(code), memoryview(code)):
        with pytest.raises(TypeError, match="must be authenticated"):
            engine.deserialize(raw)
    assert engine.deserialize(trust.Authenticated(code, "this test")) is not None


def read_module_text(text: str) -> bytes:
    import wasmtime

    return bytes(wasmtime.wat2wasm(text))


class _Payload:
    """Unpickling it creates ``marker``: proof that a planted pickle ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_planted_cache_database_runs_nothing_and_deletes_nothing(cli, tmp_path):
    """A repository's .wc/cache.db written by someone else: pickled keys and values
    (diskcache would unpickle them: code execution) and rows naming files elsewhere
    (diskcache would read and delete them). wasmsbx treats them as absent."""
    import sqlite3

    import diskcache

    repo = project(tmp_path / "repo", "wasmtime")
    marker = tmp_path / "pwned"
    victim = tmp_path / "thesis.txt"
    victim.write_text("years of work")
    name, compiler = split("wasmtime")
    engine = get(name).engine(engine_options(cached_policy(), compiler))
    key = cache.entry_key(
        aot.digest(read_module(repo / "tool.wat")), aot.normalise(engine.fingerprint())
    )
    db = diskcache.Cache(str(repo / ".wc"))
    db.set("m:" + key, _Payload(str(marker)))
    db.set(_Payload(str(marker)), 1)
    db.set("m:" + "ab" * 32, "x" * 100_000)  # stored in a file by diskcache
    db.close()
    with sqlite3.connect(repo / ".wc" / "cache.db") as con:
        con.execute("UPDATE Cache SET filename = ? WHERE filename IS NOT NULL", (str(victim),))
    (repo / ".wc" / "hits.log").write_text(f"{key} wasmtime 1.0\n" * 5000)
    (repo / ".wc" / "CACHEDIR.TAG").write_text(cache.TAG_TEXT)
    for argv in (
        ("run", "tool.wat", "add", "1", "2"),
        ("cache", "list"),
        ("cache", "stats"),
        ("cache", "verify"),
        ("cache", "prune", "--max-size", "0"),
        ("cache", "clear"),
    ):
        result = cli(*argv, cwd=repo)
        assert "Traceback" not in result.stderr, (argv, result)
        assert not marker.exists(), f"{argv}: a planted pickle ran"
        assert victim.read_text() == "years of work", f"{argv}: a planted row deleted a file"
    assert cli("run", "tool.wat", "add", "1", "2", cwd=repo).stdout == "3\n"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("kind", ["module", "component"])
@pytest.mark.parametrize("target", ["proc", "trust", "elsewhere"])
def test_a_grant_swapped_for_a_link_after_the_policy_is_read_is_refused(tmp_path, kind, target):
    """Red team round 82: a grant was checked by its name and wasmtime opened the name
    again; a guest with write access to the grant's parent swapped the folder for a link
    to /proc (and wrote the host's libc through /proc/self/mem) or to the trust folder
    (and read the secret key) between the two. Here the swap is made between the policy
    and the instance: refused (101), the guest never runs, nothing of the target shown."""
    from .conftest import EXAMPLES, GUESTS

    trust.secret(create=True)
    data = tmp_path / "proj" / "data"
    data.mkdir(parents=True)
    (data / "f.txt").write_text("mine")
    policy = policy_mod.from_dict({"filesystem": {"read_only": [str(data)]}})
    aside = tmp_path / "aside"
    aside.mkdir()
    (aside / "f.txt").write_text("not granted")
    links = {"proc": "/proc", "trust": os.environ["WASMSBX_TRUST_DIR"], "elsewhere": str(aside)}
    os.rename(data, tmp_path / "proj" / "was")
    data.symlink_to(links[target])
    guest = GUESTS / "fsprobe.wasm" if kind == "module" else EXAMPLES / "components" / "cat.wasm"
    box = _Sandbox(str(guest), policy, kind="command")
    with pytest.raises(errors.PolicyError, match="was moved, replaced or removed") as caught:
        box.run_command(["read", "/p/f.txt"], capture=True)
    assert caught.value.exit_code == 101 and caught.value.hint
    os.unlink(data)  # removed: the same refusal, not an internal error
    box = _Sandbox(str(guest), policy, kind="command")
    with pytest.raises(errors.PolicyError, match="was moved, replaced or removed"):
        box.run_command(["ls", "/"], capture=True)
    os.rename(tmp_path / "proj" / "was", data)  # back in place: runs
    result = _Sandbox(str(GUESTS / "fsprobe.wasm"), policy, kind="command").run_command(
        ["ls", str(data)], capture=True
    )
    assert result.exit_code == 0 and b"f.txt" in result.stdout, result
