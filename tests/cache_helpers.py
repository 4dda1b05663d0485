"""Helpers of the cache tests (test_cache, test_cache_memo, test_cache_memory)."""

from __future__ import annotations

from wasmsbx import policy as policy_mod


def make_policy(**keys) -> policy_mod.Policy:
    """Defaults with every module cached (cache_min_size 0) and ``runtime__x=...`` overrides."""
    policy = policy_mod.defaults()
    policy_mod.override(policy, "runtime.cache_min_size", 0)
    for name, value in keys.items():
        policy_mod.override(policy, name.replace("__", "."), value)
    return policy


def new_run_sandbox(*args, **kwargs):
    """A sandbox as a new run (a new process) makes it: nothing loaded in this process."""
    from wasmsbx.runner import Sandbox, shared

    shared.forget_loaded()
    return Sandbox(*args, **kwargs)


class _Later:
    """time for native.entry, 10 s ahead: an entry looks old enough to be remembered
    (entry.MEMO_MARGIN)."""

    def __getattr__(self, name):
        import time

        return getattr(time, name)

    @staticmethod
    def time() -> float:
        import time

        return time.time() + 10.0


def remember_entries_now(monkeypatch) -> None:
    """Entries look old enough to be remembered (the ``later`` fixtures)."""
    from wasmsbx.native import entry

    monkeypatch.setattr(entry, "time", _Later())


def spy_full_hashes(monkeypatch) -> list:
    """The entries hashed in full from now on (entry._hash_mapped calls: the ``hashed``
    fixtures)."""
    from wasmsbx.native import entry

    calls: list = []
    real = entry._hash_mapped

    def spy(fd, stored, key):
        calls.append(stored)
        return real(fd, stored, key)

    monkeypatch.setattr(entry, "_hash_mapped", spy)
    return calls


def spy_known_files(patch) -> list:
    """What ``cache.known_file`` answers from now on ((digest, facts, store), or None for
    a file the cache does not know), on ``patch`` (a MonkeyPatch)."""
    from wasmsbx.native import cache

    seen: list = []
    real = cache.known_file

    def spy(*args):
        got = real(*args)
        seen.append(got)
        return got

    patch.setattr(cache, "known_file", spy)
    return seen


def hit_from_threads(store, key: str, threads: int, each: int) -> None:
    """``threads`` threads each counting ``each`` hits of ``key`` in ``store`` at once."""
    import threading

    def hits() -> None:
        for _ in range(each):
            store.hit(key, "wasmtime")

    running = [threading.Thread(target=hits) for _ in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()


def stored_entry(tmp_path, folder: str = "cache") -> tuple:
    """(entry, its verification memo's path) of the one entry in ``tmp_path/folder``."""
    from wasmsbx.native import cache

    (path,) = (tmp_path / folder).rglob("*" + cache.CODE_SUFFIX)
    return path, path.with_suffix(cache.MEMO_SUFFIX)


def alter_in_place(path) -> None:
    """Flip a byte a third of the way into the file at ``path`` (same inode, same size),
    then put its mtime back."""
    import os

    info = path.stat()
    with open(path, "r+b") as f:
        f.seek(info.st_size // 3)
        byte = f.read(1)
        f.seek(info.st_size // 3)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_ino == info.st_ino and path.stat().st_mtime_ns == info.st_mtime_ns


def swap_for_altered_copy(path) -> None:
    """Rename over ``path`` a copy of it with a byte flipped and its mtime."""
    import os

    info = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    other = path.with_name("swap.tmp")
    other.write_bytes(bytes(data))
    os.utime(other, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.replace(other, path)


def own_pins(monkeypatch):
    """Give a test its own table of pinned cache folders and its own shared stores
    (closed after): the process's table holds at most _PIN_MAX folders, and earlier
    tests of the same worker may have filled it, after which folders are used by name
    and a test that looks for a pin finds none. A generator for a fixture."""
    import os

    from wasmsbx.native import cache

    monkeypatch.setattr(cache, "_PINNED", {})
    monkeypatch.setattr(cache, "_SHARED", {})
    yield
    for fd, _ in cache._PINNED.values():
        try:
            os.close(fd)
        except OSError:
            pass
