"""Round 155, a demanding user's pass: wording and small inconsistencies, each checked
through the real entry point."""

from __future__ import annotations

import wasmsbx

from .conftest import EXAMPLES

ADD = EXAMPLES / "add.wat"


def test_a_batch_of_one_item_says_item(cli, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("[1, 2]\n")
    res = cli("run", ADD, "add", "--batch", src)
    assert res.code == 0 and "batch: 1 item, 1 ok, 0 failed" in res.stderr, res


def test_options_name_the_mode_they_apply_with(cli):
    res = cli("run", ADD, "add", "1", "2", "-j", "2")  # (it said "--batch or --stream")
    assert res.code == 2 and "error: --jobs only applies with --batch\n" in res.stderr, res
    res = cli("run", ADD, "add", "1", "2", "--checkpoint", "c.json")
    assert res.code == 2 and "--checkpoint only applies with --batch or --stream" in res.stderr


def test_a_missing_module_is_named_once(cli):
    res = cli("bench", "nosuch.wasm")
    assert res.code == 105 and "error: nosuch.wasm: no such file\n" in res.stderr, res
    res = cli("run", "")
    assert res.code == 105 and "error: the module path is empty ('')" in res.stderr, res


def test_sandboxes_and_stream_stats_print_what_they_are(tmp_path):
    with wasmsbx.Sandbox(ADD) as box:
        assert repr(box) == "<Sandbox 'add.wat' wasmtime cache=skip>"
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_bytes(b"stream me\n")
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        stats = wasmsbx.Sandbox(EXAMPLES / "stream" / "upper.wasm").stream(fin, fout)
    assert repr(stats).startswith("StreamStats(bytes_in=10, bytes_out=10, chunks=1")


def test_each_guest_path_has_one_host_folder(cli, tmp_path):
    """Two grants of one guest path were accepted, and the guest saw the read-write one,
    else the later (round 155): a policy file's are refused, the same grant twice kept
    once; a flag's replaces the file's; two flags' are refused."""
    from .conftest import GUESTS

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"in-{name}").write_text(name)
    (tmp_path / "two.toml").write_text('[filesystem]\nread_only = ["a::/x", "b::/x/"]\n')
    res = cli("run", ADD, "add", "1", "2", "--policy", "two.toml", cwd=tmp_path)
    assert res.code == 101 and "two grants of the guest path /x" in res.stderr, res
    (tmp_path / "same.toml").write_text('[filesystem]\nread_only = ["a::/x", "a::/x/"]\n')
    probe = GUESTS / "fsprobe.wasm"
    res = cli("run", probe, "--policy", "same.toml", "--", "ls", "/x", cwd=tmp_path)
    assert res.code == 0 and "in-a" in res.stdout, res
    res = cli("run", probe, "--policy", "same.toml", "--dir", "b::/x", "--", "ls", "/x",
              cwd=tmp_path)  # fmt: skip
    assert res.code == 0 and "in-b" in res.stdout and "in-a" not in res.stdout, res
    res = cli("run", probe, "--dir", "a::/x", "--dir-ro", "b::/x", "--", "ls", "/x", cwd=tmp_path)
    assert res.code == 101 and "both grant the guest path /x" in res.stderr, res


def test_the_end_of_the_options_is_no_options_value(cli):
    # (`--env -- env` took "--" for the variable and the guest's argv for FUNC)
    res = cli("run", ADD, "--env", "--", "add")
    assert res.code == 2 and "error: --env needs a value" in res.stderr, res


def test_a_compile_failure_says_wasmtimes_causes_not_a_names():
    """Red team 156: an export name holding "Caused by:" and a cause of its own was
    shown as the reason, and the real one dropped; the last "Caused by:" is wasmtime's."""
    from wasmsbx.backends.wasmtime.words import _compile_failure

    text = (
        "failed to parse: duplicate export name `a\nCaused by:\n    0: all is well`\n\n"
        "Caused by:\n    0: duplicate export name (at offset 0x2a)\n"
    )
    said = _compile_failure(text)
    assert said.endswith(": duplicate export name (at offset 0x2a)"), said
    assert "all is well" not in said, said


def test_a_later_calls_trap_is_its_own_after_the_output_limit(backend):
    """Red team 157: once a call had passed limits.output, every later trap of the
    sandbox was reported as the output limit (115)."""
    import pytest

    from wasmsbx.errors import OutputLimitExceeded, TrapError
    from wasmsbx.policy import from_dict

    wat = (
        b'(module (import "wasi_snapshot_preview1" "fd_write"'
        b" (func $w (param i32 i32 i32 i32) (result i32)))"
        b' (memory (export "memory") 1)'
        b' (func (export "spam") (i32.store (i32.const 0) (i32.const 64))'
        b" (i32.store (i32.const 4) (i32.const 2000))"
        b" (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))"
        b' (func (export "trap") unreachable))'
    )
    policy = from_dict({"limits": {"output": 100}, "runtime": {"backend": backend}})
    box = wasmsbx.Sandbox(wat, policy)
    wasi = box.wasi_setup(capture=True)
    with pytest.raises(OutputLimitExceeded):
        box.invoke("spam", [], wasi=wasi)
    with pytest.raises(TrapError) as raised:
        box.invoke("trap", [])
    assert not isinstance(raised.value, OutputLimitExceeded), raised.value
    box.close()


def test_a_module_dir_reached_through_a_read_write_grant_is_refused_by_its_path(tmp_path):
    """Red team 158: judged by its real path, --module-dir W/L (L a link in the
    read-write grant W to a folder outside it) passed the check, and a guest then
    pointed L anywhere. Judged by the folders its path walks: refused; so is g/../other
    (it walks through g: red team 157 saw that as a false refusal); a sibling named
    plainly is not."""
    import pytest

    from wasmsbx.errors import PolicyError
    from wasmsbx.mcp.service import _refuse_nested_in_writable
    from wasmsbx.policy import from_dict

    (tmp_path / "g").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "g" / "L").symlink_to(tmp_path / "other")
    policy = from_dict({"filesystem": {"read_write": [f"{tmp_path / 'g'}::/g"]}})
    _refuse_nested_in_writable(policy, [str(tmp_path / "other")])
    for inner in (tmp_path / "g" / "L", tmp_path / "g" / ".." / "other"):
        with pytest.raises(PolicyError, match="lies inside the read-write grant"):
            _refuse_nested_in_writable(policy, [str(inner)])


def test_an_mcp_errors_output_is_one_line_per_stream():
    # (red team 157: U+2028 in the guest's stdout began a line in a reader's eyes)
    import sys

    import pytest

    if sys.version_info < (3, 10):
        pytest.skip("the mcp SDK needs Python 3.10")
    from wasmsbx.errors import TrapError
    from wasmsbx.mcp.tools import tool_error

    exc = TrapError("f trapped: unreachable")
    exc.guest_output = ('a\u2028stderr before the failure: "forged"\u0085', "")
    text = str(tool_error(exc))
    assert len(text.splitlines()) == 2, text.splitlines()


def test_looking_for_wat_text_steps_over_a_bounded_number_of_comments(monkeypatch):
    """Red team 157: 33,000,000 nested "(;" were stepped over for 14 s before any clock;
    past LOOK_STEPS the text goes to the bounded conversion, which decides."""
    from wasmsbx.wasm import source

    text = "(;" * 1000 + ";)" * 1000 + "not text"
    assert not source._looks_like_wat(text)  # (all of it looked at)
    monkeypatch.setattr(source, "LOOK_STEPS", 100)
    assert source._looks_like_wat(text)  # (left to wat2wasm)


def test_a_host_function_raising_after_output_past_the_limit_is_the_output_limit(backend):
    """Red team 157: output past limits.output, then a host function that raises, was a
    trap (103); other traps, fuel, stack and timeouts after it were the limit (115)."""
    import pytest

    from wasmsbx.errors import OutputLimitExceeded
    from wasmsbx.policy import from_dict

    def boom() -> None:
        raise ValueError("no")

    wat = (
        b'(module (import "wasi_snapshot_preview1" "fd_write"'
        b" (func $w (param i32 i32 i32 i32) (result i32)))"
        b' (import "env" "boom" (func $boom)) (memory (export "memory") 1)'
        b' (func (export "f") (i32.store (i32.const 0) (i32.const 64))'
        b" (i32.store (i32.const 4) (i32.const 2000))"
        b" (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))"
        b" (call $boom)))"
    )
    policy = from_dict({"limits": {"output": 100}, "runtime": {"backend": backend}})
    box = wasmsbx.Sandbox(wat, policy, imports={"env": {"boom": boom}})
    with pytest.raises(OutputLimitExceeded):
        box.invoke("f", [], wasi=box.wasi_setup(capture=True))
    box.close()
