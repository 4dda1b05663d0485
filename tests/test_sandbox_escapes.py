"""Escape attempts that must fail: files outside grants, read-only grants, env vars.

Driven by tests/guests/fsprobe.wasm (a WASI C program; see tests/guests/README.md).
Backends that cannot confine grants are not eligible for a policy with grants at all;
that refusal is tested here too.
"""

from __future__ import annotations

import os

import pytest

from .conftest import GUESTS, capabilities_of

FSPROBE = GUESTS / "fsprobe.wasm"


@pytest.fixture
def tree(tmp_path):
    """ro/ (read-only grant), rw/ (read-write grant), and a secret next to them."""
    root = tmp_path / "tree"
    (root / "ro" / "sub").mkdir(parents=True)
    (root / "rw").mkdir()
    (root / "ro" / "x").write_text("readonly data")
    (root / "rw" / "f").write_text("writable data")
    (root / "secret").write_text("TOP SECRET")
    os.symlink(root / "secret", root / "ro" / "hostabs")
    os.symlink("../secret", root / "ro" / "hostrel")
    os.symlink(root, root / "rw" / "dirlink")
    return root


def probe(cli, tree, backend, *argv, env=()):
    args = [
        "run",
        FSPROBE,
        "--backend",
        backend,
        "--dir-ro",
        f"{tree / 'ro'}:ro",
        "--dir",
        f"{tree / 'rw'}:rw",
    ]
    for item in env:
        args += ["--env", item]
    return cli(*args, "--", *argv)


def confined(backend) -> bool:
    return capabilities_of(backend).has("fs-confined")


def snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    content = f.read()
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_nlink, content)
    return out


def test_backend_without_confinement_is_refused_for_grants(cli, tree, backend):
    if confined(backend):
        pytest.skip(f"{backend} confines grants")
    res = probe(cli, tree, backend, "read", "ro/x")
    assert res.code == 104 and "fs-confined" in res.stderr, res


def test_reads_inside_grants_work(cli, tree, backend):
    if not confined(backend):
        pytest.skip(f"{backend} cannot confine grants")
    res = probe(cli, tree, backend, "read", "ro/x")
    assert (res.code, res.stdout) == (0, "readonly data"), res
    res = probe(cli, tree, backend, "read", "ro/sub/../x")
    assert res.code == 0 and res.stdout == "readonly data"
    res = probe(cli, tree, backend, "write", "rw/new", "hello")
    assert res.code == 0 and (tree / "rw" / "new").read_text() == "hello"


@pytest.mark.parametrize(
    "argv",
    [
        ["write", "ro/x", "pwned"],
        ["write", "ro/new", "pwned"],
        ["append", "ro/x", "pwned"],
        ["truncate", "ro/x"],
        ["truncate", "ro/x", "0"],
        ["unlink", "ro/x"],
        ["mkdir", "ro/d"],
        ["rmdir", "ro/sub"],
        ["rename", "ro/x", "ro/y"],
        ["rename", "ro/x", "rw/stolen"],
        ["rename", "rw/f", "ro/planted"],
        ["link", "ro/x", "rw/hardlink"],
        ["link", "ro/x", "ro/hardlink"],
        ["symlink", "x", "ro/l"],
        ["fill", "ro/big", "1000"],
    ],
)
def test_read_only_grant_cannot_be_changed(cli, tree, backend, argv):
    if not confined(backend):
        pytest.skip(f"{backend} cannot confine grants")
    before = snapshot(tree)
    res = probe(cli, tree, backend, *argv)
    assert res.code == 1, res
    assert res.stderr.startswith("err "), res
    assert snapshot(tree) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["read", "ro/../secret"],
        ["read", "rw/../secret"],
        ["read", "../secret"],
        ["read", "/etc/passwd"],
        ["read", str(GUESTS / "README.md")],
        ["read", "ro/hostabs"],
        ["read", "ro/hostrel"],
        ["read", "rw/dirlink/secret"],
        ["ls", "rw/dirlink"],
        ["write", "rw/../escaped", "x"],
        ["mkdir", "rw/../newdir"],
        ["rename", "rw/f", "rw/../moved"],
        ["link", "rw/f", "rw/../linked"],
        ["symlink", "/etc/passwd", "rw/abs"],
    ],
)
def test_paths_outside_grants_fail(cli, tree, backend, argv):
    if not confined(backend):
        pytest.skip(f"{backend} cannot confine grants")
    before = snapshot(tree)
    res = probe(cli, tree, backend, *argv)
    assert res.code == 1, res
    assert "TOP SECRET" not in res.stdout and "root:" not in res.stdout
    assert snapshot(tree) == before
    assert not (tree / "escaped").exists() and not (tree / "newdir").exists()


def test_symlink_created_inside_grant_cannot_be_followed_out(cli, tree, backend):
    if not confined(backend):
        pytest.skip(f"{backend} cannot confine grants")
    probe(cli, tree, backend, "symlink", "../secret", "rw/rel")
    res = probe(cli, tree, backend, "read", "rw/rel")
    assert res.code == 1 and "TOP SECRET" not in res.stdout


def test_no_grants_no_files(cli, backend):
    res = cli("run", FSPROBE, "--backend", backend, "--", "read", "/etc/passwd")
    assert res.code == 1 and "root:" not in res.stdout, res
    res = cli("run", FSPROBE, "--backend", backend, "--", "ls", "/")
    # wasmtime refuses; wasmer's WASI lists an empty virtual root. Either way: nothing.
    assert res.code in (0, 1) and res.stdout == "", res


def test_env_not_leaked(cli, backend):
    secret_env = {"WASMSBX_TEST_SECRET": "hunter2"}
    res = cli("run", FSPROBE, "--backend", backend, "--", "env", env=secret_env)
    assert res.code == 0 and res.stdout == "", res
    res = cli(
        "run", FSPROBE, "--backend", backend, "--", "getenv", "WASMSBX_TEST_SECRET", env=secret_env
    )
    assert res.code == 3 and "hunter2" not in res.stdout
    res = cli("run", FSPROBE, "--backend", backend, "--", "getenv", "PATH")
    assert res.code == 3


def test_env_only_as_allowed(cli, backend, isolated):
    (isolated / "sandbox.toml").write_text(
        '[env]\ninherit = ["ALLOWED_*"]\nset = { MODE = "fast" }\n'
    )
    env = {"ALLOWED_ONE": "1", "DENIED": "no"}
    # --policy: a discovered policy may inherit only locale and terminal variables
    policy = isolated / "sandbox.toml"
    res = cli("run", FSPROBE, "--backend", backend, "--policy", policy, "--", "env", env=env)
    assert res.code == 0, res
    assert res.stdout.splitlines() == ["ALLOWED_ONE=1", "MODE=fast"]
    res = cli(
        "run", FSPROBE, "--backend", backend, "--policy", policy,
        "--env", "EXTRA=2", "--", "getenv", "EXTRA",
    )  # fmt: skip
    assert res.stdout == "2\n"


def test_network_cannot_be_enabled(cli, isolated):
    (isolated / "sandbox.toml").write_text("[network]\nenabled = true\n")
    res = cli("run", FSPROBE, "--", "args")
    assert res.code == 101 and "network access is not supported" in res.stderr
