"""``wasmsbx compile SOURCE``: source to wasm, wasm to native code (cache or -o FILE).

A plain command line is parsed here (``lean_args``), without the typer app (see
``lean_main``); help, completion and anything unusual go through typer."""

from __future__ import annotations

import errno
import os
import stat
from collections import namedtuple
from pathlib import Path
from typing import Any, Optional

from .. import output
from ..boundary import boundary
from ..progress import progress_factory


def register(app: Any) -> None:
    import typer

    @app.command(
        "compile",
        help="Precompile SOURCE to native code, into the cache or (-o FILE) a standalone "
        "artifact; C, Rust and .wat sources are built to WebAssembly first.",
    )
    @boundary
    def compile_(
        source: str = typer.Argument(
            ...,
            metavar="SOURCE",
            help="A .wasm or .wat module, a .c or .rs file, or a Cargo project directory.",
        ),
        out: Optional[str] = typer.Option(
            None,
            "--output",
            "-o",
            metavar="FILE",
            help="FILE.wasm: write the WebAssembly module only. Any other name: write a "
            "standalone native artifact for `wasmsbx run` instead of using the cache.",
        ),
        backend: Optional[str] = typer.Option(
            None, "--backend", "-b", metavar="NAME", help="Compile for this backend."
        ),
        all_backends: bool = typer.Option(
            False, "--all-backends", help="Compile for every available backend and compiler."
        ),
        exports: Optional[list[str]] = typer.Option(
            None,
            "--export",
            metavar="NAME",
            help="C/Rust: export this function (repeatable); builds a library, not a command.",
        ),
        policy: Optional[str] = typer.Option(
            None,
            "--policy",
            "-p",
            metavar="PATH",
            help="Policy whose optimize/fuel/stack/memory settings the code is built for.",
        ),
        cache_dir: Optional[str] = typer.Option(
            None, "--cache-dir", metavar="PATH", help="Cache directory."
        ),
        force: bool = typer.Option(False, "--force", help="Recompile even if cached."),
        sign: bool = typer.Option(
            False,
            "--sign",
            help="With -o FILE: also sign the artifact with your signing key (`wasmsbx trust "
            "keygen`), so machines that trust your key (`wasmsbx trust add`) run it.",
        ),
        interruptible: bool = typer.Option(
            False,
            "--interruptible",
            help="With -o FILE: keep wasmtime's epoch checks in the code, so that Python, "
            "batch, bench and servers can load the artifact too. Without it the artifact "
            "is for `wasmsbx run` alone, which stops the process at the timeout: it "
            "compiles and runs faster.",
        ),
        json_output: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> int:
        return run_compile(
            source,
            out,
            backend,
            all_backends,
            exports or [],
            policy,
            cache_dir,
            force,
            json_output,
            sign,
            interruptible,
        )


# `wasmsbx compile` parsed without typer (see lean_main): option -> (keyword, takes a value)
_LEAN = {
    "-o": ("out", True),
    "--output": ("out", True),
    "-b": ("backend", True),
    "--backend": ("backend", True),
    "--all-backends": ("all_backends", False),
    "--export": ("exports", True),
    "-p": ("policy_path", True),
    "--policy": ("policy_path", True),
    "--cache-dir": ("cache_dir", True),
    "--force": ("force", False),
    "--sign": ("sign", False),
    "--interruptible": ("interruptible", False),
    "--json": ("json_output", False),
}


def lean_args(argv: list) -> Optional[dict]:
    """The keywords of ``run_compile`` for a plain ``compile`` command line (one SOURCE,
    the options above, each value-taking one once, ``--opt value`` or ``--opt=value``);
    None for anything else (help, an unknown or repeated option, a missing value), which
    the full command-line parser then handles and reports."""
    found: dict = {"exports": []}
    sources: list = []
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            sources.extend(rest)
            break
        if not arg.startswith("-") or arg == "-":
            sources.append(arg)
            continue
        name, eq, value = arg.partition("=")
        spec = _LEAN.get(name if name.startswith("--") else arg)
        if spec is None:
            return None
        key, takes = spec
        if not takes:
            if eq or key in found:
                return None
            found[key] = True
            continue
        if not eq:
            if not rest or (rest[0].startswith("-") and rest[0] != "-"):
                return None
            value = rest.pop(0)
        if key == "exports":
            found["exports"].append(value)
        elif key in found:
            return None
        else:
            found[key] = value
    if len(sources) != 1:
        return None
    return {
        "source": sources[0],
        "out": found.get("out"),
        "backend": found.get("backend"),
        "all_backends": bool(found.get("all_backends")),
        "exports": found["exports"],
        "policy_path": found.get("policy_path"),
        "cache_dir": found.get("cache_dir"),
        "force": bool(found.get("force")),
        "json_output": bool(found.get("json_output")),
        "sign": bool(found.get("sign")),
        "interruptible": bool(found.get("interruptible")),
    }


def lean_main(args: dict) -> int:
    """``wasmsbx compile`` without building the typer app: typer imports pydantic for
    its parameter adapters, about 0.2 s of CPU, a tenth of compiling a 1 MB module."""
    from ..boundary import report

    try:
        return run_compile(**args)
    except (Exception, KeyboardInterrupt) as exc:
        return report(exc, json_mode=args["json_output"])


def run_compile(
    source,
    out,
    backend,
    all_backends,
    exports,
    policy_path,
    cache_dir,
    force,
    json_output,
    sign=False,
    interruptible=False,
) -> int:
    from ... import policy as policy_mod
    from ...errors import UsageError, WasmsbxError

    if backend and all_backends:
        raise UsageError("--backend and --all-backends exclude each other")
    emit_wasm = out is not None and out.lower().endswith(".wasm")
    if all_backends and out is not None and not emit_wasm:
        raise UsageError(
            "-o FILE holds native code for one backend", hint="use --backend NAME with -o"
        )
    if sign and (out is None or emit_wasm):
        raise UsageError(
            "--sign applies to a standalone artifact", hint="add -o FILE (not ending in .wasm)"
        )
    if interruptible and (out is None or emit_wasm):
        raise UsageError(
            "--interruptible applies to a standalone artifact (the cache's code always has "
            "epoch checks)",
            hint="add -o FILE (not ending in .wasm)",
        )
    policy = policy_mod.discover(policy_path)
    signer = _signer() if sign else None
    if out is not None:  # refused now, not after a long compile
        from ...outfile import check_output

        check_output(out, [source, policy.source])
    if backend:
        policy_mod.override(policy, "runtime.backend", backend, flag="--backend")
    built, wasm_path = _build(source, exports, out if emit_wasm else None, policy)
    report: dict = {
        "source": source,
        "build": built.to_dict(),
        "wasm": {"path": wasm_path, "size": len(built.wasm)},
        "targets": [],
        "artifact": None,
    }
    if not json_output:
        _say_built(source, built, wasm_path)
    if emit_wasm:
        return _finish(report, json_output)
    name = Path(wasm_path).name if wasm_path else Path(source).name
    from ...backends.compiling import check_size

    # limits.module_size, as run applies it (exit 117): compile and compile -o took a
    # 3.2 MiB module under a 1 MiB limit (red team round 77)
    check_size(len(built.wasm), policy.values["limits.module_size"], name)
    inputs = [source, wasm_path, policy.source]  # what -o must not overwrite
    failures = []
    # Parsed once: selection, the artifact's header and where it compiles use it.
    facts, weight = _facts(built.wasm, policy, name)
    job = _Job(
        built.wasm,
        name,
        policy,
        out,
        cache_dir,
        force,
        signer,
        inputs,
        facts,
        interruptible=interruptible,
        weight=weight,
    )
    for adapter, compiler in _targets(policy, built.wasm, all_backends, facts):
        try:
            target = _native(adapter, compiler, job)
        except WasmsbxError as exc:
            if not all_backends:
                raise
            # --all-backends: every backend that can; one lacking a feature is skipped.
            label = f"{adapter.name}:{compiler}" if len(adapter.compilers) > 1 else adapter.name
            output.warning(f"skipped {label}: {exc.message}")
            failures.append(exc)
            target = {"backend": label, "state": "failed", "error": exc.to_dict()}
        report["targets"].append(target)
        if not json_output and target["state"] != "failed":
            _say_native(target, policy, len(built.wasm))
    if failures and len(failures) == len(report["targets"]):
        raise failures[0]
    if out is not None:
        report["artifact"] = out
    return _finish(report, json_output)


def _build(source: str, exports: list, wasm_out: Optional[str], policy: Any) -> tuple:
    """The module's bytes, and the .wasm file written (C and Rust write one by default);
    text converted within ``policy``'s limits.compile_timeout."""
    from ...native import build

    kind = build.source_kind(source) if Path(source).exists() else None
    check = None
    if wasm_out is None and kind in ("c", "rust", "cargo"):
        # Like cc: the output goes to the current directory, named after the source.
        path = Path(source).resolve()
        stem = path.stem if kind != "cargo" else (path if path.is_dir() else path.parent).name
        wasm_out = f"{stem}.wasm"
        _keep_other_file(wasm_out)
        check = _keep_other_file  # (again after the build: a link made meanwhile was
        # written through, red team 157)
    if exports and kind not in ("c", "rust", "cargo"):
        from ...errors import UsageError

        raise UsageError("--export applies to C and Rust sources only")
    try:
        with _spinner(f"building {Path(source).name}"):
            inputs = [source, policy.source]
            result = build.build(
                source, exports, wasm_out, inputs=inputs, policy=policy, check=check
            )
    except build.BuildFailed as exc:
        if exc.output:
            output.err(exc.output.rstrip("\n"))  # the compiler's messages, as printed
        raise
    return result, wasm_out


_HEADERS = (b"\0asm\x01\x00\x00\x00", b"\0asm\x0d\x00\x01\x00")  # a module, a component


def _keep_other_file(name: str) -> None:
    """The name a build writes when no -o is given (``NAME.wasm`` here, as cc writes
    a.out) is replaced only if it holds a WebAssembly module already, a build's earlier
    output: a file of another kind there was overwritten without a word (notes kept as
    lib.wasm, round 155), and so was the file a link there led to (red team 156). A
    special file or one that cannot be read is outfile's to refuse (check_output)."""
    from ...errors import InputError

    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # (check_output follows a link to a file: the file
            raise InputError(  # it led to became the module, red team 156)
                f"{name}: is a symbolic link; not replaced",
                hint="give -o FILE.wasm to write the built module elsewhere",
                path=name,
            ) from None
        return  # (missing: written; anything unreadable: check_output says)
    try:
        # (a module's or a component's header, magic and version: red team 156 kept
        # data of its own behind the four bytes "\0asm")
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.pread(fd, 8, 0) in _HEADERS:
            return
    finally:
        os.close(fd)

    raise InputError(
        f"{name}: exists and is not a WebAssembly module; not replaced",
        hint=f"give -o FILE.wasm to write the built module elsewhere, or move ./{name} away",
        path=name,
    )


def _facts(wasm: bytes, policy: Any, name: str) -> tuple:
    """The module's facts and compile weight (one parse of the whole module, within
    limits.compile_timeout), or (None, None) if it is not a core module wasmsbx can
    read (the compiler then gives the precise error)."""
    from ...wasm.facts import FactsError, read_facts_weighed
    from ...wasm.source import bounded_reads

    try:
        with bounded_reads(policy, None, name):
            return read_facts_weighed(wasm)
    except FactsError:
        return None, None


def _targets(policy: Any, wasm: bytes, all_backends: bool, facts: Any) -> list:
    """(adapter, compiler) pairs: every available one, or the one the policy selects."""
    from ...backends import get, select

    if all_backends:
        pairs = [(a, c) for a, c in select.candidates_for("auto") if a.probe().available]
        return pairs
    from ...components import is_component

    if facts is not None:
        features, kind = facts.features, "command" if facts.export("_start") else "call"
    else:
        features, kind = frozenset(), "call"
    if is_component(wasm):  # only a backend with the component model can compile it
        features = frozenset({"component-model"})
    chosen = select.select(policy, features, kind)
    return [(get(chosen.backend), chosen.compiler)]


class _Job(
    namedtuple(
        "_Job",
        "wasm name policy out cache_dir force signer inputs facts interruptible weight",
        defaults=(None,),
    )
):
    """What one compile command asks of every backend it compiles for."""

    __slots__ = ()


def _native(adapter: Any, compiler: Optional[str], job: _Job) -> dict:
    wasm, name, policy, out, cache_dir, force, signer, inputs, facts, interruptible, weight = job
    from ...backends.base import engine_options
    from ...backends.compiling import CHILD_MIN, too_slow
    from ...components import is_component

    options = engine_options(policy, compiler)
    if (
        out is not None
        and not interruptible
        and adapter.name == "wasmtime"
        and not is_component(wasm)
    ):
        # An artifact for `wasmsbx run`: no epoch checks (they cost a quarter more compile
        # time and up to a third more run time on loops); run ends the process at the
        # deadline instead. Components keep them (their calls are stopped in process).
        options = options._replace(epoch=False)
    seconds = policy.values["limits.compile_timeout"]
    label = f"compiling {name} for {adapter.name}"

    def error() -> Any:
        return too_slow(name, seconds)

    from ...backends.compiling import hard_stopped, heavy

    core = out is not None and not is_component(wasm)
    weighty = core and heavy(wasm, weight)  # (its compile goes to a worker: memory bounded)
    if core and not weighty and hard_stopped(adapter.name):
        # The command line's hard stop bounds an in-process compile (compiling.py), so
        # no worker: one interpreter start and one import of the runtime, not two
        # (~40 ms of CPU, 4% of compiling a 1 MB module), and not even that one: the
        # engine compiles through a dozen C functions declared alone (wasmtime/bare.py, ~35 ms).
        engine = adapter.compile_engine(options)

        def in_process(data: bytes) -> tuple:
            from ...backends.compiling import compile_bounded

            with _spinner(label):  # (compile_bounded checks the deadline once more)
                module = compile_bounded(engine, data, seconds, error, here=True)
                return engine.serialize(module), engine.fingerprint()

        return _artifact(wasm, name, in_process, out, signer, inputs, facts, False, policy)
    if core and (len(wasm) >= CHILD_MIN or weighty):
        # A compile worker's (what compiling.native_bounded would do), asked directly:
        # the worker builds the engine and says what it built for, so this process,
        # which only waits, never imports the runtime (~50 ms of CPU for wasmtime).
        def worker_fn(data: bytes) -> tuple:
            from ...backends.compiling import worker_code

            with _spinner(label):
                return worker_code(adapter.name, options, data, seconds, error)

        return _artifact(wasm, name, worker_fn, out, signer, inputs, facts, False, policy)

    engine = _for_components(adapter.engine(options), wasm, out)

    def compile_fn(data: bytes) -> Any:
        from ...backends.compiling import compile_bounded

        with _spinner(label):
            return compile_bounded(engine, data, seconds, error)

    def native_fn(data: bytes) -> tuple:
        from ...backends.compiling import native_bounded

        with _spinner(label):
            return native_bounded(engine, data, seconds, error), engine.fingerprint()

    if out is None:
        from ...native import cache

        result = cache.store_compiled(engine, wasm, policy, name, compile_fn, cache_dir, force)
        result["cache_dir"] = str(cache.resolve_dir(policy, cache_dir)[0])
        return result
    component = getattr(engine, "is_component", False)
    return _artifact(wasm, name, native_fn, out, signer, inputs, facts, component, policy)


def _for_components(engine: Any, wasm: bytes, out: Optional[str]) -> Any:
    """A component compiles through ``components.runtime.ComponentEngine``: into the
    cache, or into an artifact (its fingerprint says ``kind: component``)."""
    from ...components import is_component

    if not is_component(wasm):
        return engine
    if engine.backend != "wasmtime":
        from ...errors import BackendUnavailable

        raise BackendUnavailable(f"{engine.backend} cannot compile components (no component model)")
    from ...components.runtime import ComponentEngine

    return ComponentEngine(engine)


def _signer() -> Any:
    """The user's signing key, or a UsageError saying how to make one."""
    from ...errors import UsageError
    from ...native import trust

    mine = trust.signer()
    if mine is None:
        raise UsageError(
            "--sign needs your signing key, and you have none yet",
            hint="create it with `wasmsbx trust keygen`, then give its public key to those "
            "who will run your artifacts",
        )
    return mine


def _artifact(
    wasm: bytes,
    name: str,
    native_fn: Any,
    out: str,
    signer: Any,
    inputs: list,
    facts: Any,
    is_component: bool,
    policy: Any = None,
) -> dict:
    """Compile (``native_fn(wasm)``: native code and the fingerprint of the engine that
    made it) and write a standalone artifact, tagged with the user's key (and signed).
    The native code goes from the compiler to the file: it is not loaded here."""
    import time

    from ...native import artifact as aot
    from ...native import trust
    from ...outfile import write_output

    started = time.perf_counter()
    native, fingerprint = native_fn(wasm)
    seconds = time.perf_counter() - started
    features = tuple(facts.features) if facts is not None else ()
    exports = aot.records_of(facts.exports) if facts is not None else None
    component = None
    if is_component:  # its limits need the layout when alone
        from ...components import probe
        from ...components.binary import ComponentFormatError, layout_record, scan
        from ...components.runtime import with_probe
        from ...errors import ModuleError
        from ...wasm.source import bounded_reads

        try:
            with bounded_reads(policy, None, name):  # (as the compile itself was)
                layout = scan(wasm)
                if probe.instrument(wasm) is not None:  # what engine.compile built
                    layout = with_probe(layout)
            component = layout_record(layout)
        except ComponentFormatError as exc:
            raise ModuleError(f"{name}: {exc}", hint=exc.hint) from None
    blob = aot.pack(
        "artifact",
        fingerprint,
        native,
        facts.sha256 if facts is not None else aot.sha256(wasm),
        len(wasm),
        name,
        features,
        exports,
        key=trust.tag_key("artifact", create=True),
        signer=signer,
        component=component,
    )
    write_output(out, blob, inputs=inputs)
    from ...native.cache import fingerprint_label

    return {
        "backend": fingerprint_label(aot.normalise(fingerprint)),
        "version": fingerprint.get("version"),
        "state": "written",
        "path": out,
        "signed": None if signer is None else trust.encode_public(signer.public),
        "size": len(blob),
        "timings": {"compile": round(seconds, 6)},
        "warnings": [],
    }


def _spinner(label: str) -> Any:
    factory = progress_factory()
    if factory is None:
        import contextlib

        return contextlib.nullcontext()
    return factory(label)


def _say_built(source: str, built: Any, wasm_path: Optional[str]) -> None:
    from ...units import format_duration, format_size

    if built.output.strip():
        output.err(built.output.rstrip("\n"))  # compiler warnings, as printed
    if built.kind == "wasm":
        return
    where = f"wrote {output.line(wasm_path)}" if wasm_path else "built"
    output.out(
        f"{where} from {output.line(source)} ({format_size(len(built.wasm))}, {built.kind}, "
        f"{format_duration(built.seconds)})"
    )


def _say_native(target: dict, policy: Any, module_size: int) -> None:
    from ...units import format_duration, format_size

    for warning in target.get("warnings", []):
        output.warning(warning)
    took = target["timings"].get("compile")
    took = f" in {format_duration(took)}" if took is not None else ""
    label = f"{target['backend']} {target.get('version') or ''}".strip()
    if target["state"] == "written":
        path = output.line(target["path"])
        # (no "run it" for what cannot be run again: /dev/null, a pipe; red team 121)
        run = f"; run it with `wasmsbx run {path} ...`" if os.path.isfile(target["path"]) else ""
        output.out(
            f"wrote {path}: native code for {label} ({format_size(target['size'])}){took}{run}"
        )
        return
    if target["state"] == "cached":
        output.out(output.line(f"already cached for {label} (verified) in {target['cache_dir']}"))
    else:
        output.out(
            output.line(f"compiled for {label}{took}; stored in the cache at {target['cache_dir']}")
        )
    threshold = policy.values["runtime.cache_min_size"]
    if module_size < threshold:
        output.err(
            f"note: `wasmsbx run` compiles modules under {format_size(threshold)} directly "
            "(runtime.cache_min_size), so it uses this entry only for larger modules"
        )


def _finish(report: dict, json_output: bool) -> int:
    if json_output:
        output.emit_json(report)
    return 0
