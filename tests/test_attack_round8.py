"""Red team round 8: verification memos of format 2 (the header kept in the memo, read
before the entry's trailer), env memo keys from os.environ's own dict, a known cache
folder not looked for again, a sandbox's Path made lazily from the text given, and the
WASI imports' set-lookup fast path.

One attack broke (a module named "m.wasm/" hid it from the stdio clobber check); the
others held and stay as regression tests."""

from __future__ import annotations

import marshal
import os
import shutil
import time
from pathlib import Path

import pytest

from wasmsbx import errors
from wasmsbx import policy as policy_mod
from wasmsbx.native import cache, entry, trust, trustdir
from wasmsbx.runner import Sandbox as _Sandbox
from wasmsbx.runner import sandbox as sandbox_mod
from wasmsbx.wasm import wasi
from wasmsbx.wasm.model import FuncType, Import
from wasmsbx.wasm.source import read_module

from .cache_helpers import make_policy, new_run_sandbox

# Two modules whose entries have the same size (same shape, another operator).
ADD = '(module (func (export "f") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
SUB = '(module (func (export "f") (param i32 i32) (result i32) local.get 0 local.get 1 i32.sub))'


Sandbox = new_run_sandbox


def _entries(tmp_path) -> dict:
    return {p.name: p for p in (tmp_path / "cache").rglob("*.entry")}


def _remember(path: Path, policy) -> Path:
    """Store ``path``'s module and have a load write its memo; its entry."""
    assert Sandbox(path, policy).cache_state == "miss"
    assert Sandbox(path, policy).cache_state == "hit"
    return path


def two_remembered(tmp_path) -> tuple:
    """ADD and SUB stored and remembered: (policy, (wat, entry, memo) of each)."""
    policy = make_policy()
    add, sub = tmp_path / "add.wat", tmp_path / "sub.wat"
    add.write_text(ADD)
    sub.write_text(SUB)
    _remember(add, policy)
    first = set(_entries(tmp_path))
    _remember(sub, policy)
    entries = _entries(tmp_path)
    (a,) = [entries[n] for n in first]
    (b,) = [entries[n] for n in set(entries) - first]
    memo = lambda p: p.with_suffix(cache.MEMO_SUFFIX)  # noqa: E731
    assert memo(a).is_file() and memo(b).is_file()
    time.sleep(0.05)  # past the file system's timestamp tick
    return policy, (add, a, memo(a)), (sub, b, memo(b))


# ------------------------------------------------------------------ memos (held)


def test_memo_swapped_between_two_entries_of_the_same_size(tmp_path, later, hashed):
    """SUB's memo put beside ADD's entry (same size, other inode): vouches for nothing."""
    policy, (add, a, memo_a), (sub, b, memo_b) = two_remembered(tmp_path)
    # (the sizes are equal or a byte apart: the header's "created" float varies; the
    # memo binds the inode, so the size is not what refuses it)
    assert abs(a.stat().st_size - b.stat().st_size) <= 8
    shutil.copyfile(memo_b, memo_a)
    hashed.clear()
    box = Sandbox(add, policy)
    assert box.cache_state == "hit" and box.call("f", 5, 3) == 8
    assert hashed, "the entry was hashed in full"


@pytest.mark.parametrize("how", ["link", "rename"])
def test_entry_moved_into_another_key_with_its_memo(tmp_path, later, hashed, how):
    """SUB's entry (and its memo) put in ADD's place, as a hard link or a rename: the
    move changes the inode's ctime, so the memo no longer matches; and the header the
    full check reads names another module: refused, ADD compiled, never SUB's code."""
    policy, (add, a, memo_a), (sub, b, memo_b) = two_remembered(tmp_path)
    os.unlink(a)
    if how == "link":
        os.link(b, a)
    else:
        os.replace(b, a)
    shutil.copyfile(memo_b, memo_a)
    box = Sandbox(add, policy)
    assert box.call("f", 5, 3) == 8, "ADD's code, not SUB's"
    assert box.cache_state == "miss"
    assert "belongs to another module" in box.warnings[0]


def test_memo_of_the_same_inode_at_another_key_still_checks_the_module(tmp_path, later, hashed):
    """SUB's entry hard-linked at ADD's key: an entry of two names is copied, never
    mapped where it lies, so no memo is written for it (red team 147: a name in a folder
    a guest was granted let it rewrite mapped code); and its header, SUB's, is refused
    for ADD: one module's code never runs for another."""
    policy, (add, a, memo_a), (sub, b, memo_b) = two_remembered(tmp_path)
    os.unlink(a)
    os.link(b, a)  # (ctime now; "later" makes it old enough for a memo)
    os.unlink(memo_b)
    assert Sandbox(sub, policy).cache_state == "hit"
    assert not memo_b.exists(), "an entry of two names was remembered"
    box = Sandbox(add, policy)
    assert box.call("f", 5, 3) == 8
    assert box.cache_state == "miss" and "belongs to another module" in box.warnings[0]


def _forge(memo: Path, entry_path: Path, header) -> None:
    """A memo MACed with the user's own memo key (what only the user's processes can
    write) holding ``header``: the loader must still bound what it maps."""
    from blake3 import blake3

    old = memo.read_bytes()
    tag = old[entry.TAG_SIZE : 2 * entry.TAG_SIZE]
    body = marshal.dumps(header, 4)
    text = entry.Memo(str(memo), lambda: None)._text(os.stat(entry_path), tag)
    key = trust.tag_key("cache-memo")
    mac = blake3(entry._MEMO_DOMAIN + text + b"\0" + body, key=key).digest()
    memo.write_bytes(mac + tag + body)


def _header_of(memo: Path) -> dict:
    return marshal.loads(memo.read_bytes()[2 * entry.TAG_SIZE :])


@pytest.mark.parametrize(
    "change",
    [
        "past_the_end",
        "into_the_trailer",
        "negative",
        "a_bool",
        "a_float",
        "size_differs",
        "zstd",
        "no_payload",
        "not_a_dict",
        "another_format",
    ],
)
def test_authentic_memo_with_an_odd_header_never_maps_beyond_the_file(
    tmp_path, later, hashed, change
):
    """payload.stored past the file, into the trailer, negative, not an int; a header
    that is not one: refused as damaged (discarded, recompiled), or hashed in full, and
    never a traceback."""
    policy, (add, a, memo_a), _ = two_remembered(tmp_path)
    header = _header_of(memo_a)
    size = a.stat().st_size
    payload = header["payload"]
    if change == "past_the_end":
        payload["stored"] = payload["size"] = size + 4096
    elif change == "into_the_trailer":
        payload["stored"] = payload["size"] = size - entry.TRAILER + 1
    elif change == "negative":
        payload["stored"] = payload["size"] = -1
    elif change == "a_bool":
        payload["stored"] = payload["size"] = True
    elif change == "a_float":
        payload["stored"] = payload["size"] = float(payload["stored"])
    elif change == "size_differs":
        payload["size"] += 1
    elif change == "zstd":
        payload["encoding"] = "zstd"
    elif change == "no_payload":
        del header["payload"]
    elif change == "not_a_dict":
        header = [header]
    elif change == "another_format":
        header["format"] = entry.FORMAT - 1
    _forge(memo_a, a, header)
    box = Sandbox(add, policy)
    assert box.call("f", 5, 3) == 8
    if change == "zstd":  # (a memo for a compressed entry: the entry is checked in full)
        assert box.cache_state == "hit" and hashed
    else:  # (a bool is not an int here: True is refused as 1 would not be mapped)
        assert box.cache_state == "miss" and "discarded and recompiled" in box.warnings[0]


def test_memo_from_before_a_key_rotation_vouches_for_nothing(tmp_path, later, hashed):
    """A new secret (the old key file removed, a new one made by the next load): the
    memo's key changes with it, the entry is hashed with the new key and refused (it
    was tagged with the old one)."""
    policy, (add, a, memo_a), _ = two_remembered(tmp_path)
    secret = Path(os.environ["WASMSBX_TRUST_DIR"]) / trust.SECRET_FILE
    old = secret.read_bytes()
    secret.unlink()
    time.sleep(0.02)
    hashed.clear()
    box = Sandbox(add, policy)
    assert secret.read_bytes() != old
    assert box.call("f", 5, 3) == 8
    assert box.cache_state == "miss" and "not tagged with your key" in box.warnings[0]
    assert hashed, "the entry was hashed in full"


# ------------------------------------------------------------------ paths


def _policy_writing_to(target: str):
    policy = policy_mod.defaults()
    policy_mod.override(policy, "stdio.stdout", target)
    return policy


@pytest.mark.parametrize("given", ["m.wat", "./m.wat", "m.wat/", "m.wat/.", ".//m.wat//"])
def test_stdout_onto_the_module_is_refused_however_the_module_is_named(isolated, given):
    """BROKE (round 8): a module given as the text "m.wat/" is read as m.wat (its Path
    drops the slash), but stat("m.wat/") fails (ENOTDIR), so the check that the guest's
    stdout is not the module file (a discovered sandbox.toml must not clobber it)
    compared nothing and passed."""
    (isolated / "m.wat").write_text(ADD)
    with pytest.raises(errors.InputError, match="same file as the input"):
        _Sandbox(given, _policy_writing_to("m.wat"))
    with pytest.raises(errors.InputError, match="same file as the input"):
        _Sandbox(Path(given), _policy_writing_to(str(isolated / "m.wat")))
    assert (isolated / "m.wat").read_text() == ADD


@pytest.mark.parametrize("given", ["m.wat", "./m.wat", "m.wat/.", "sub/../m.wat", "sub//..//m.wat"])
def test_the_name_of_a_module_given_as_text_is_its_paths_name(isolated, given):
    (isolated / "sub").mkdir()
    (isolated / "m.wat").write_text(ADD)
    box = Sandbox(given, make_policy())
    assert box._name == Path(given).name == box.path.name
    assert box.call("f", 2, 2) == 4


def _binary(where: Path, wat: str) -> None:
    text = where.with_suffix(".wat")
    text.write_text(wat)
    data = read_module(text)
    tmp = where.with_name(where.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, where)


@pytest.mark.parametrize(
    "names", [("m.wasm", "./m.wasm"), ("./m.wasm", "d//../m.wasm"), ("m.wasm", "ABS")]
)
def test_source_memos_under_other_spellings_never_give_another_module(isolated, monkeypatch, names):
    """A module file run under one spelling of its path (relative, "./", "//", "..",
    absolute, str or Path), then replaced by another module: every spelling runs the
    new module (a source memo binds the file's identity, not its name)."""
    from wasmsbx.native import located

    monkeypatch.setattr(located, "MARGIN", 0.0)
    (isolated / "d").mkdir()
    path = isolated / "m.wasm"
    _binary(path, ADD)
    policy = make_policy()
    spell = [str(path) if n == "ABS" else n for n in names]
    for name in spell:
        for given in (name, Path(name)):
            assert Sandbox(given, policy).call("f", 5, 3) == 8
    time.sleep(0.05)
    _binary(path, SUB)
    for name in spell:
        for given in (name, Path(name)):
            assert Sandbox(given, policy).call("f", 5, 3) == 2, (name, type(given))


def test_module_as_path_and_as_text_share_the_cache(isolated):
    (isolated / "m.wat").write_text(ADD)
    policy = make_policy()
    assert Sandbox("m.wat", policy).cache_state == "miss"
    assert Sandbox(Path("m.wat"), policy).cache_state == "hit"
    assert Sandbox(str(isolated / "m.wat"), policy).cache_state == "hit"


def test_a_module_text_naming_a_folder_or_nothing_is_an_error(isolated):
    (isolated / "d").mkdir()
    for given in ("d", "d/", "missing.wasm", "missing.wasm/"):
        with pytest.raises(errors.WasmsbxError):
            Sandbox(given, make_policy())


# ------------------------------------------------------------------ environment


def test_env_memo_keys_follow_os_environ_replaced(isolated, monkeypatch, tmp_path):
    """os.environ replaced by a plain dict (and then restored): the trust and cache
    folders follow what the current os.environ says, never a stale memo."""
    first = trustdir.trust_dir_text()
    assert first == os.environ["WASMSBX_TRUST_DIR"]
    other = dict(os.environ, WASMSBX_TRUST_DIR=str(tmp_path / "elsewhere"))
    monkeypatch.setattr(os, "environ", other)
    assert trustdir.trust_dir_text() == str(tmp_path / "elsewhere")
    monkeypatch.undo()
    monkeypatch.setenv("WASMSBX_TRUST_DIR", first)
    assert trustdir.trust_dir_text() == first


def test_env_memo_keys_follow_setenv_and_unsetenv(isolated, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert trustdir.user_cache_text() == str(tmp_path / "xdg" / "wasmsbx")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg2"))
    assert trustdir.user_cache_text() == str(tmp_path / "xdg2" / "wasmsbx")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert trustdir.user_cache_text() == str(tmp_path / "home" / ".cache" / "wasmsbx")
    # os.putenv alone does not change os.environ (nor, so, wasmsbx's view: as before)
    os.putenv("HOME", "/nonexistent")
    try:
        assert trustdir.user_cache_text() == str(tmp_path / "home" / ".cache" / "wasmsbx")
    finally:
        os.putenv("HOME", os.environ["HOME"])


def test_env_values_that_are_not_utf8(isolated, monkeypatch, tmp_path):
    """A variable whose bytes are not UTF-8 (surrogateescape in os.environ): no crash,
    and the folder is the one those bytes name."""
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff")
    monkeypatch.setenv("XDG_CACHE_HOME", odd)
    assert trustdir.user_cache_text() == os.path.join(odd, "wasmsbx")


# ------------------------------------------------------------------ the cache folder


@pytest.mark.parametrize("recreate", ["empty", "as_file", "link_to_elsewhere", "nothing"])
def test_cache_folder_removed_between_two_sandboxes(isolated, tmp_path, recreate):
    """The cache folder deleted (and made again, or replaced) between two sandboxes of
    one process: the stale store is not used (no traceback, the module compiled, never
    a stale entry)."""
    (isolated / "m.wat").write_text(ADD)
    policy = make_policy()
    assert Sandbox("m.wat", policy).cache_state == "miss"
    assert Sandbox("m.wat", policy).cache_state == "hit"
    root = tmp_path / "cache"
    shutil.rmtree(root)
    if recreate == "empty":
        root.mkdir(mode=0o700)
    elif recreate == "as_file":
        root.write_text("not a folder")
    elif recreate == "link_to_elsewhere":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        root.symlink_to(tmp_path / "elsewhere")
    (isolated / "m.wat").write_text(SUB)  # (another module: a stale entry would show)
    box = Sandbox("m.wat", policy)
    assert box.call("f", 5, 3) == 2
    assert box.cache_state in ("miss", "error")
    again = Sandbox("m.wat", policy)
    assert again.call("f", 5, 3) == 2


def test_existing_store_not_reused_when_the_code_folder_went(isolated, tmp_path):
    """module_facts/known_file's shortcut (a known store, folder unchanged): removing the
    code folder changes the cache folder's mtime, so the store is looked for again."""
    (isolated / "m.wat").write_text(ADD)
    policy = make_policy()
    Sandbox("m.wat", policy)
    root = tmp_path / "cache"
    store = cache._existing_store(cache.resolve_dir(policy), policy)
    assert store is not None
    time.sleep(0.02)
    shutil.rmtree(root / cache.CODE_DIR)
    (root / "cache.db").unlink()
    for name in os.listdir(root):
        if name.startswith("cache.db"):
            os.unlink(root / name)
    assert cache._existing_store(cache.resolve_dir(policy), policy) is None


# ------------------------------------------------------------------ WASI imports


def _imp(name, kind="func", params=("i32", "i32", "i32", "i32"), results=("i32",), module=None):
    ftype = None if params is None else FuncType(params, results)
    return Import(module or wasi.PREVIEW1, name, kind, ftype)


def test_wasi_fast_path_accepts_only_what_the_slow_path_accepts():
    check = sandbox_mod._check_imports
    check([_imp("fd_write")])  # provided
    check([_imp("fd_write", params=["i32", "i32", "i32", "i32"], results=["i32"])])  # lists
    bad = [
        _imp("fd_write", kind="global"),  # not a function, named like one
        _imp("fd_write", kind="memory", params=None),
        _imp("fd_write", kind="table"),
        _imp("fd_write", params=("i32", "i32", "i32")),  # wrong type
        _imp("fd_write", params=("i64", "i32", "i32", "i32")),
        _imp("fd_write", results=()),
        _imp("fd_write", params=["i32", "i32", "i32"], results=["i32"]),  # wrong, lists
        _imp("fd_writ"),
        _imp("fd_write", module="wasi_unstable"),
        _imp("fd_write", module=wasi.PREVIEW1 + "\0"),
    ]
    for imp in bad:
        with pytest.raises(errors.LinkError):
            check([imp])
        # one import with lists (the fast path's TypeError) does not let a bad one by
        with pytest.raises(errors.LinkError):
            check([_imp("fd_write", params=["i32"] * 4, results=["i32"]), imp])
        with pytest.raises(errors.LinkError):
            check([imp, _imp("fd_write", params=["i32"] * 4, results=["i32"])])


def test_wasi_fast_path_names_every_missing_import():
    with pytest.raises(errors.LinkError) as info:
        sandbox_mod._check_imports(
            [_imp("fd_write"), _imp("fd_write", kind="global"), _imp("nope", module="env")]
        )
    assert "global wasi_snapshot_preview1.fd_write" in str(info.value)
    assert "function env.nope" in str(info.value)


def test_a_module_importing_a_wasi_name_as_a_global_is_refused(isolated):
    wat = (
        '(module (import "wasi_snapshot_preview1" "fd_write" (global i32))'
        ' (func (export "f") (result i32) i32.const 1))'
    )
    (isolated / "g.wat").write_text(wat)
    for _ in range(2):  # compiled, then from the cache (facts records)
        with pytest.raises(errors.LinkError, match="global wasi_snapshot_preview1.fd_write"):
            Sandbox("g.wat", make_policy())
