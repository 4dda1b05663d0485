"""A small fuzz harness: mutated modules and random policies through the real CLI.

Modules: the .wat/.wasm guests of tests/ and examples/, mutated by bit flips, byte
stores, truncations and section splices (a section of one guest put into another),
then given to ``run`` (as a command and as a call), ``audit``, ``compile`` and ``bench``
on every backend. Policies: random TOML documents over the real keys (valid and
invalid values) and random text. The properties: no traceback, no internal error, and
an exit code from the README table (0-126 and 130: wasmsbx's own codes, or a guest's
status, which a mutated command may choose).

Deterministic and bounded by example counts, not clocks: hypothesis derandomized (the
seed is fixed by the test's name), guests bounded by fuel or a timeout. The CLI runs
in-process through ``wasmsbx.cli.main`` (a crash that aborts the process fails the whole
run, loudly). Heavier sweeps are marked slow. Every crash this found is fixed at its
cause with its own regression test (see test_backend_crashes.py and the CHANGELOG).
"""

from __future__ import annotations

import functools

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmsbx.cli import main

from .conftest import EXAMPLES, GUESTS

ALLOWED = set(range(0, 127)) | {130}
FAST = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
SLOW = settings(FAST, max_examples=80)


@functools.cache
def seeds() -> tuple:
    """The binary form of every guest module in the repository."""
    from wasmsbx.runner.sandbox import read_module

    paths = sorted(GUESTS.glob("*.wat")) + sorted(EXAMPLES.glob("**/*.wat"))
    paths += [EXAMPLES / "wasi" / "hello.wasm", EXAMPLES / "stream" / "upper.wasm"]
    return tuple(read_module(p) for p in paths)


def _leb(data: bytes, pos: int) -> tuple:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def sections(wasm: bytes) -> list:
    """The raw sections (id, size, body) of a module, as far as they parse."""
    out, pos = [], 8
    while pos < len(wasm):
        try:
            size, body = _leb(wasm, pos + 1)
        except IndexError:
            break
        if body + size > len(wasm):
            break
        out.append(wasm[pos : body + size])
        pos = body + size
    return out


@st.composite
def mutated(draw) -> bytes:
    """One guest, changed in one to four ways."""
    pool = seeds()
    wasm = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "store", "truncate", "splice", "drop"]))
        if how == "flip" and wasm:
            at = draw(st.integers(0, len(wasm) - 1))
            wasm[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "store" and wasm:
            at = draw(st.integers(0, len(wasm) - 1))
            wasm[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x40, 0x70, 0x6F]))
        elif how == "truncate" and len(wasm) > 8:
            wasm = wasm[: draw(st.integers(8, len(wasm) - 1))]
        elif how in ("splice", "drop"):
            own = sections(bytes(wasm))
            if not own:
                continue
            at = draw(st.integers(0, len(own) - 1))
            if how == "drop":
                own.pop(at)
            else:
                donor = sections(draw(st.sampled_from(pool)))
                if donor:
                    own.insert(at, draw(st.sampled_from(donor)))
            wasm = bytearray(bytes(wasm[:8]) + b"".join(own))
    return bytes(wasm)


def first_export(wasm: bytes) -> str:
    from wasmsbx.wasm.facts import FactsError, read_interface

    try:
        funcs = [e.name for e in read_interface(wasm).exports if e.kind == "func"]
    except FactsError:
        return "f"
    return next((f for f in funcs if f != "_start"), "f") if funcs else "f"


def limits_for(backend: str) -> list:
    """Bound every guest: fuel where the backend meters it, and a timeout everywhere."""
    extra = ["--timeout", "2s", "--backend", backend, "--memory", "64MiB"]
    return extra if backend.startswith("wasmer") else extra + ["--fuel", "20_000_000"]


def check(capsys, argv: list) -> int:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, (argv, captured.err)
    assert "error: internal error" not in captured.err, (argv, captured.err)
    assert code in ALLOWED, (argv, code, captured.err)
    return code


def _module(tmp_path_factory, wasm: bytes):
    path = tmp_path_factory.mktemp("fuzz") / "m.wasm"
    path.write_bytes(wasm)
    return path


@FAST
@given(wasm=mutated())
def test_run_mutated_modules(capsys, tmp_path_factory, backend, wasm):
    path = _module(tmp_path_factory, wasm)
    check(capsys, ["run", path, "--no-cache", *limits_for(backend)])
    check(capsys, ["run", path, first_export(wasm), "--no-cache", *limits_for(backend)])


@FAST
@given(wasm=mutated())
def test_audit_and_compile_mutated_modules(capsys, tmp_path_factory, backend, wasm):
    path = _module(tmp_path_factory, wasm)
    check(capsys, ["audit", path, "--json"])
    check(capsys, ["compile", path, "--backend", backend])


@pytest.mark.slow
@SLOW
@given(wasm=mutated())
def test_run_mutated_modules_more(capsys, tmp_path_factory, backend, wasm):
    path = _module(tmp_path_factory, wasm)
    check(capsys, ["run", path, *limits_for(backend)])  # through the cache too
    check(capsys, ["run", path, first_export(wasm), "0", *limits_for(backend)])
    check(capsys, ["audit", path])


@pytest.mark.slow
@settings(FAST, max_examples=8)
@given(wasm=mutated())
def test_bench_mutated_modules(capsys, tmp_path_factory, backend, wasm):
    path = _module(tmp_path_factory, wasm)
    budget = ["-n", "1", "--warmup", "0", "--budget", "1s", "--sample-time", "1ms"]
    check(capsys, ["bench", path, *budget, *limits_for(backend), "--json"])
    check(capsys, ["bench", path, first_export(wasm), *budget, *limits_for(backend)])


# ---------------------------------------------------------------------------- policies


def _policy_values():
    scalars = st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.text(max_size=20),
        st.sampled_from(["64MiB", "1s", "0", "inherit", "null", "auto", "wasmer", "*", ""]),
    )
    return st.one_of(
        scalars,
        st.lists(scalars, max_size=3),
        st.dictionaries(st.text(max_size=5), scalars, max_size=2),
    )


@st.composite
def policies(draw) -> str:
    from wasmsbx.policy import SCHEMA, SECTIONS

    doc: dict = {}
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            key = draw(st.sampled_from(SCHEMA))
            section, name = key.section, key.name
        else:
            section = draw(st.sampled_from([*SECTIONS, "bogus"]))
            name = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
        doc.setdefault(section, {})[name] = draw(_policy_values())
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        text = ""
    if draw(st.integers(0, 9)) == 0:  # sometimes not TOML at all
        text = draw(st.text(max_size=60))
    return text


@settings(FAST, max_examples=60)
@given(text=policies())
def test_random_policies(capsys, tmp_path_factory, text):
    path = tmp_path_factory.mktemp("policy") / "p.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    code = check(capsys, ["run", EXAMPLES / "add.wat", "add", "1", "2", "--policy", path])
    assert code in {0, 101, 103, 104, 110, 111, 112, 113, 114, 115, 116}, code


def test_fuzz_seeds_are_all_valid():
    """The mutations start from real modules (a broken seed would test nothing)."""
    assert len(seeds()) >= 15 and all(s[:4] == b"\0asm" for s in seeds())
    assert all(sections(s) for s in seeds())
