"""A component's precompiled artifact run alone (`wasmsbx run FILE.cwasm`), as a hostile
party makes it: another user's, signed by an unknown key, altered after signing,
relabelled (core code as a component's and back), truncated, from an older wasmsbx."""

from __future__ import annotations

import json

import pytest

from wasmsbx.native import artifact as aot
from wasmsbx.native import trust

from .component_guests import HERE
from .trust_helpers import GOOD_WAT, attacker_key

TYPES = HERE / "types.wat"


def compile_to(cli, source, out, *extra, env=None) -> bytes:
    result = cli("compile", source, "-o", out, "--backend", "wasmtime", *extra, env=env)
    assert result.code == 0, result
    return out.read_bytes()


def retag(blob: bytes, key, edit, signature=None) -> bytes:
    """``blob`` with its header changed by ``edit`` and the tag remade with ``key``
    (``signature``: the original signature block, copied in as it is)."""
    parts = aot.layout(blob)
    header = json.loads(bytes(blob[aot.START : parts.header_end]))
    edit(header)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    size = aot.SIGNATURE_SIZE if signature else 0
    body = aot.MAGIC + aot.PREFIX.pack(len(text), size) + text
    body += bytes(blob[parts.header_end : parts.signed_end])
    if signature:
        body += signature[0] + signature[1]
    from blake3 import blake3

    return body + blake3(body, key=key).digest()


@pytest.fixture
def art(cli, isolated):
    out = isolated / "types.cwasm"
    compile_to(cli, TYPES, out)
    return out


def test_a_component_artifact_runs_alone(cli, art, isolated):
    res = cli("compile", TYPES, "-o", art)
    assert res.code == 0 and f"`wasmsbx run {art} ...`" in res.stdout, res
    res = cli("run", art, "add", "5", "3", "--stats")
    assert (res.code, res.stdout) == (0, "8\n"), res
    assert "precompiled artifact loaded" in res.stderr
    assert cli("run", art, "greet", "World").stdout == "Hello, World\n"
    renamed = isolated / "innocent.wasm"  # `run` goes by the magic, not the name
    renamed.write_bytes(art.read_bytes())
    assert cli("run", renamed, "--invoke", 'greet("x")').stdout == "Hello, x\n"
    # range-checked from the component's own WIT types, as without the artifact
    res = cli("run", art, "add", str(2**40), "1")
    assert res.code == 2 and "out of range" in res.stderr, res


def test_limits_hold_from_the_recorded_layout(cli, art):
    """The layout (memories, core instances) the limits need comes from the header."""
    header = aot.read_header(art.read_bytes())
    assert header["module"]["component"]["core_instances"] >= 1
    assert header["module"]["component"]["memories"]
    res = cli("run", art, "add", "1", "2", "--memory", "16KiB")
    assert res.code == 110 and "component needs 64 KiB" in res.stderr, res


def test_python_sandbox_takes_a_component_artifact(art):
    from wasmsbx import Sandbox

    with Sandbox(str(art)) as box:
        assert box.is_component and box.cache_state == "artifact"
        assert box.call("greet", "World") == "Hello, World"
    with Sandbox(art.read_bytes()) as box:
        assert box.call("add", 2, 3) == 5


def test_another_users_component_artifact_is_refused(cli, isolated, tmp_path):
    other = {"WASMSBX_TRUST_DIR": str(tmp_path / "someone-else")}
    theirs = isolated / "theirs.cwasm"
    compile_to(cli, TYPES, theirs, env=other)
    assert cli("run", theirs, "add", "1", "2", env=other).stdout == "3\n"
    res = cli("run", theirs, "add", "1", "2")
    assert (res.code, res.stdout) == (102, ""), res
    assert "carries no signature" in res.stderr and "hint: compile it yourself" in res.stderr


def test_signed_component_artifact_needs_a_trusted_key(cli, isolated, tmp_path):
    author = {"WASMSBX_TRUST_DIR": str(tmp_path / "author")}
    public = cli("trust", "keygen", env=author).stdout.strip()
    signed = isolated / "signed.cwasm"
    blob = compile_to(cli, TYPES, signed, "--sign", env=author)
    res = cli("run", signed, "add", "2", "3")
    assert res.code == 102 and "a key you do not trust" in res.stderr, res
    assert f"wasmsbx trust add {public} --name NAME" in res.stderr
    assert cli("trust", "add", public, "--name", "ci").code == 0
    assert cli("run", signed, "add", "2", "3").stdout == "5\n"
    # altered after signing: the recorded memories dropped (so no memory limit would
    # hold), the tag redone, the author's signature kept
    signature = aot.signature_of(blob, aot.layout(blob))

    def understate(header):
        header["module"]["component"]["memories"] = []

    altered = retag(blob, attacker_key(), understate, signature)
    (isolated / "altered.cwasm").write_bytes(altered)
    res = cli("run", isolated / "altered.cwasm", "add", "2", "3")
    assert res.code == 102 and "signature by 'ci' does not match" in res.stderr, res


def _set_kind(kind):
    def edit(header):
        if kind is None:
            header["fingerprint"].pop("kind", None)
            header["module"].pop("component", None)
        else:
            header["fingerprint"]["kind"] = kind
            header["module"]["component"] = {
                "core_modules": [],
                "core_instances": 1,
                "memories": [],
                "components": 0,
            }

    return edit


def test_relabelled_artifacts_are_refused(cli, art, isolated):
    """A core module's artifact labelled as a component's and the reverse: a forger's
    tag is refused; even the user's own key (a control no forger has) cannot make
    wasmtime load one kind of code as the other."""
    core = isolated / "add.wat"
    core.write_text(GOOD_WAT)
    core_blob = compile_to(cli, core, isolated / "add.cwasm")
    component_blob = art.read_bytes()
    cases = [
        (core_blob, _set_kind("component"), ("add", "1", "2")),
        (component_blob, _set_kind(None), ("add", "1", "2")),
    ]
    for blob, edit, call in cases:
        for key in (attacker_key(), trust.tag_key("artifact")):
            forged = isolated / "relabelled.cwasm"
            forged.write_bytes(retag(blob, key, edit))
            res = cli("run", forged, *call)
            assert (res.code, res.stdout) == (102, ""), res
            assert "Traceback" not in res.stderr
            if key != trust.tag_key("artifact"):
                assert "not authenticated" in res.stderr


def test_truncated_and_damaged_component_artifacts(cli, art, isolated):
    blob = art.read_bytes()
    cut = isolated / "cut.cwasm"
    for size in (8, aot.START, aot.START + 40, len(blob) // 2, len(blob) - 1):
        cut.write_bytes(blob[:size])
        res = cli("run", cut, "add", "1", "2")
        assert (res.code, res.stdout) == (102, ""), (size, res)
        assert "refused precompiled artifact" in res.stderr
    for where in (aot.START + 5, len(blob) // 2, len(blob) - 5):
        damaged = bytearray(blob)
        damaged[where] ^= 0x01
        cut.write_bytes(bytes(damaged))
        res = cli("run", cut, "add", "1", "2")
        assert (res.code, res.stdout) == (102, ""), (where, res)


def test_an_artifact_without_the_layout_is_refused(cli, art, isolated):
    """Made before artifacts recorded the layout: refused alone, as the limits need it,
    and still usable beside its component."""

    def edit(header):
        header["module"].pop("component")

    old = isolated / "old.cwasm"
    old.write_bytes(retag(art.read_bytes(), trust.tag_key("artifact"), edit))
    res = cli("run", old, "add", "1", "2")
    assert res.code == 102 and "does not record the component's layout" in res.stderr, res
    res = cli("run", TYPES, "--artifact", old, "add", "1", "2", "--stats")
    assert (res.code, res.stdout) == (0, "3\n") and "artifact loaded" in res.stderr, res


@pytest.mark.parametrize("key", ["tables", "gc_heap"])
def test_an_artifact_recorded_before_tables_were_counted_is_refused(cli, art, isolated, key):
    """Its layout without tables (or the GC heap) ran under the per-table cap with no
    bound on the tables' number, and without the GC heap's share of limits.memory: an
    authentic artifact of a hostile component held 1,000,000 table elements (red team
    round 70)."""

    def edit(header):
        header["module"]["component"].pop("tables")
        if key == "gc_heap":
            header["module"]["component"].pop("gc_heap")

    old = isolated / "old.cwasm"
    old.write_bytes(retag(art.read_bytes(), trust.tag_key("artifact"), edit))
    res = cli("run", old, "add", "1", "2")
    assert res.code == 102 and "does not record the component's layout" in res.stderr, res


def test_bad_layout_records_are_refused():
    from wasmsbx.components import binary

    good = binary.layout_record(binary.Layout((), 1, ((65536, None),), 0))
    assert binary.layout_from_record(good).memories == ((65536, None),)
    for bad in (None, {}, {**good, "core_instances": -1}, {**good, "memories": [[1]]},
                {**good, "memories": [["a", None]]}, {**good, "core_modules": [[1, 2]]},
                {**good, "components": True}, {**good, "tables": [[5, 1]]},
                {**good, "memories": [[65536 * 2, 65536]]},
                {**good, "tables": [[0, None]] * (binary.MAX_COUNT + 1)},
                {**good, "core_instances": binary.MAX_COUNT + 1}):  # fmt: skip
        with pytest.raises(binary.ComponentFormatError):
            binary.layout_from_record(bad)


@pytest.mark.parametrize("record", ["min-above-max", "too-many-tables"])
def test_an_authentic_artifact_whose_layout_a_scan_would_refuse_is_refused(
    cli, art, isolated, record
):
    """The header is the user's own (tagged with their key), but its layout held what a
    scan of any component refuses: 100,001 tables, a table's minimum above its maximum.
    Refused with the artifact's own hint, not `wasm-tools validate`."""
    from wasmsbx.components import binary

    def edit(header):
        layout = header["module"]["component"]
        if record == "min-above-max":
            layout["tables"] = [[5, 1]]
        else:
            layout["tables"] = [[0, 1]] * (binary.MAX_COUNT + 1)

    forged = isolated / "edited.cwasm"
    forged.write_bytes(retag(art.read_bytes(), trust.tag_key("artifact"), edit))
    res = cli("run", forged, "add", "1", "2")
    assert res.code == 102 and "refused precompiled artifact" in res.stderr, res
    assert "wasm-tools validate" not in res.stderr and "compile it again" in res.stderr


def test_batch_and_checkpoint_from_an_artifact_alone(cli, art, isolated):
    """A checkpoint names its module by SHA-256; an artifact alone has only the one its
    header records (this was an internal error for module artifacts too)."""
    core = isolated / "add.wat"
    core.write_text(GOOD_WAT)
    core_art = isolated / "add.cwasm"
    compile_to(cli, core, core_art, "--interruptible")  # (batch: epochs stop its items)
    for artifact in (art, core_art):
        checkpoint = isolated / "ck.json"
        res = cli("run", artifact, "add", "--batch", "-", "--checkpoint", checkpoint,
                  "-j", "2", input=b"[1, 2]\n[3, 4]\n")  # fmt: skip
        assert res.code == 0, res
        assert [line.count('"ok":true') for line in res.stdout.splitlines()] == [1, 1]
        assert not checkpoint.exists()  # removed when the run completes
