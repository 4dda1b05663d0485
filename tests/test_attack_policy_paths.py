"""Path values in a policy that no file system accepts (red-team): a NUL byte, which TOML
lets through as "\\u0000", was an internal error (exit 100, "ValueError: embedded null
byte") in stdio paths; it is a policy error naming the key (exit 101)."""

from __future__ import annotations

import pytest

from .conftest import EXAMPLES

HELLO = EXAMPLES / "wasi" / "hello.wasm"


@pytest.mark.parametrize(
    "text, key",
    [
        ('[stdio]\nstdout = "out\\u0000.txt"\n', "stdio.stdout"),
        ('[stdio]\nstderr = "err\\u0000"\n', "stdio.stderr"),
        ('[stdio]\nstdin = "in\\u0000"\n', "stdio.stdin"),
        ('[runtime]\ncache_dir = "c\\u0000"\n', "runtime.cache_dir"),
    ],
)
@pytest.mark.parametrize("discovered", [False, True])
def test_a_nul_byte_in_a_path_is_a_policy_error(cli, isolated, text, key, discovered):
    (isolated / "sandbox.toml").write_text(text)
    flags = [] if discovered else ["--policy", "sandbox.toml"]
    result = cli("run", HELLO, *flags)
    assert result.code == 101, result
    assert key in result.stderr and "NUL" in result.stderr, result
