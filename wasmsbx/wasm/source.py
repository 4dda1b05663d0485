"""Reading a module's bytes: a .wasm binary as is, WebAssembly text converted, files capped.

Below the runner (the sandbox, the audit, the builders and the backend survey all read
modules through it); it needs no runtime except wasmtime's ``wat2wasm`` for text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from .. import errors, inputs
from ..inputs import _READS, TooLarge, read_capped  # (light; every module read goes through it)

WASM_MAGIC = b"\0asm"
ARTIFACT_FIRST_BYTE = b"\x89"  # of aot.MAGIC: checked before importing aot


# ---------------------------------------------------------------------------- module files


def read_module(path: Union[str, os.PathLike], policy: Any = None) -> bytes:
    """The module's binary: .wasm as is, .wat (or any text module) converted (within
    ``policy``'s limits.compile_timeout: ``text_bound``), the file read no further than
    its limits.module_size (text too, before it is converted: red team 149)."""
    path = Path(path)
    limit = None if policy is None else policy.values["limits.module_size"]
    return module_bytes(read_file(path, limit=limit), path, *text_bound(policy))


def text_bound(
    policy: Any = None,
    deadline: Optional[float] = None,
    name: str = "",
    doing: str = "converting its text",
) -> tuple:
    """(seconds, error) a conversion of text may take under ``policy`` (its
    limits.compile_timeout; WAT_SECONDS without one) and a run's ``deadline``
    (time.monotonic(); when it comes first, passing it is the run's timeout, 112)."""
    seconds = WAT_SECONDS if policy is None else policy.values["limits.compile_timeout"]
    if deadline is None:
        return seconds, None
    import time

    left = max(0.001, deadline - time.monotonic())
    if left >= seconds:
        return seconds, None
    timeout = None if policy is None else policy.values["limits.timeout"]

    def out_of_time() -> errors.WasmsbxError:
        from ..backends.compiling import out_of_time as run_out

        return run_out(f"{name or 'the module'} ({doing})", timeout, left)

    return left, out_of_time


class bounded_reads:
    """``with bounded_reads(policy, deadline, name):`` reads of a module's sections in
    this thread (wasm.facts) end as a conversion of its text does: by the run's
    ``deadline`` (the run's timeout, 112) or within limits.compile_timeout counted from
    here (117). Without it, a module of 1,000,000 exports took 12 s to read before its
    compile began, an element segment of 100,000,000 items 65 s (red team 148). The
    policy is read only if a read happens (a sandbox of a module held in the process
    reads no run-only value: runner.sandbox's plans)."""

    def __init__(self, policy: Any, deadline: Optional[float], name: str) -> None:
        self.policy, self.deadline, self.name = policy, deadline, name

    def __enter__(self) -> None:
        import time

        self.old = getattr(_READS, "by", None)
        started, known = time.monotonic(), []

        def resolve() -> Optional[tuple]:
            if not known:
                known.append(self._bound(started))
                older = self.old() if callable(self.old) else self.old
                if older is not None and (known[0] is None or older[0] < known[0][0]):
                    known[0] = older  # (the nearer instant holds)
            return known[0]

        _READS.by = resolve

    def _bound(self, started: float) -> Optional[tuple]:
        policy, deadline, name = self.policy, self.deadline, self.name or "the module"
        seconds = WAT_SECONDS if policy is None else policy.values["limits.compile_timeout"]
        if deadline is not None and (seconds is None or deadline < started + seconds):
            timeout = None if policy is None else policy.values["limits.timeout"]
            left = deadline - started

            def late() -> errors.WasmsbxError:
                from ..backends.compiling import out_of_time

                return out_of_time(f"{name} ({_READING})", timeout, left)

            return deadline, late
        if seconds is None:
            return None

        def slow() -> errors.WasmsbxError:
            from ..backends.compiling import too_slow

            return too_slow(f"{name} ({_READING})", seconds)

        return started + seconds, slow

    def __exit__(self, *exc: Any) -> None:
        _READS.by = self.old


_READING = "reading its sections"


def read_file(
    path: Path,
    seen: Optional[list] = None,
    given: Optional[bytes] = None,
    limit: Optional[int] = None,
) -> bytes:
    """A module or artifact file, read with a cap (a device that never ends is refused);
    ``seen``: see inputs.read_capped. ``given``: the file's bytes, read already (see
    runner.sandbox.preread): judged as a read would judge them, with the same errors.
    ``limit``: limits.module_size, applied as the file is read, not after it (a 200 MB
    module under a 1 MiB limit was read whole first: red team 148): exit 117."""
    if given is not None and given[:4] == WASM_MAGIC and len(given) <= inputs.MODULE_MAX_BYTES:
        return given  # (a binary module within its cap: what _size_cap says, sooner)

    def cap(head: bytes) -> int:
        kind = _size_cap(head)
        return kind if limit is None or limit >= kind else limit

    try:
        if given is not None:
            if len(given) > _size_cap(given[:16]):
                raise TooLarge(len(given), _size_cap(given[:16]))
            return given
        data = read_capped(path, cap, seen)
    except errors.ModuleError as exc:  # from _size_cap: the path belongs in the message
        raise errors.ModuleError(f"{path}: {exc.message}", hint=exc.hint, path=str(path)) from None
    except TooLarge as exc:
        if limit is not None and exc.limit == limit:
            from ..backends.compiling import check_size

            check_size(max(exc.size, limit + 1), limit, os.path.basename(str(path)))
        what = "precompiled artifact" if exc.limit == _size_cap(ARTIFACT_FIRST_BYTE) else "module"
        raise errors.ModuleError(
            f"{path}: {what} too large: {exc.strerror}",
            hint="is this the right file? (a device or a pipe that never ends is refused)",
            path=str(path),
        ) from None
    except FileNotFoundError:
        if not str(path):  # (`run ''` read "error: : no such file": round 155)
            raise errors.InputError(
                "the module path is empty ('')", hint="name a module file"
            ) from None
        raise errors.InputError(
            f"{path}: no such file", hint="check the module path", path=str(path)
        ) from None
    except IsADirectoryError:
        raise errors.InputError(
            f"{path}: is a directory, not a module file", path=str(path)
        ) from None
    except OSError as exc:
        raise errors.InputError(f"{path}: cannot read: {exc.strerror}", path=str(path)) from None
    return data


def _size_cap(head: bytes) -> int:
    """The cap of a file starting with ``head``: artifacts are larger than modules.

    Judged from the first bytes, so /dev/zero or /dev/urandom is refused at once: a
    module starts with \0asm (or is text, which has no NUL), an artifact with \x89."""
    if head[:1] == ARTIFACT_FIRST_BYTE:
        return inputs.ARTIFACT_MAX_BYTES
    if head[:4] != WASM_MAGIC[: len(head)] and not _text_start(head):
        raise errors.ModuleError(
            "not a WebAssembly module (no \\0asm header, and not text)",
            hint="give a .wasm binary or a .wat text module",
        )
    return inputs.MODULE_MAX_BYTES


def _text_start(head: bytes) -> bool:
    """Could a text module start so? UTF-8 (an unfinished last character allowed), no NUL."""
    import codecs

    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


# WebAssembly text converted in this process up to this size; larger text converts in a
# compile worker (backends.compiling), killed at its deadline and bounded in memory: the
# converter resolves labels in time quadratic in their nesting (1.5 MB of text took
# 12.9 s of CPU, outside every time limit, red team 125) and takes about 80 times the
# text's size in memory (aborting the process under an address-space limit).
WAT_HERE = 64 * 1024
WAT_SECONDS = 60.0  # the default limits.compile_timeout: a conversion's bound when none is given


def module_bytes(data: bytes, path, seconds: Optional[float] = None, error: Any = None) -> bytes:
    if not data:
        raise errors.ModuleError(f"{path}: empty file, not a WebAssembly module", path=str(path))
    if data[:4] == WASM_MAGIC:
        return data
    if data[:1] == ARTIFACT_FIRST_BYTE:
        from ..native import artifact as aot

        if aot.is_artifact(data):
            raise errors.ModuleError(
                f"{path}: is precompiled native code (wasmsbx compile -o), not a module",
                hint="run it with `wasmsbx run`; other commands need the original module",
                path=str(path),
            )
    return wat_to_wasm(data, path, seconds, error)


LOOK_STEPS = 100_000  # comments _looks_like_wat steps over before leaving it to wat2wasm


def _looks_like_wat(text: str) -> bool:
    """Whether ``text`` starts, after blanks and comments, with ``(`` as every WAT module
    does: a README or a shell script is refused by name, not parsed into a riddle. In
    time linear in the text, by ``find`` (a character at a time, 120 MB of a leading
    comment took 27 s of CPU, outside every limit: red team 127)."""
    import re

    blanks = re.compile(r"\s*")
    pos, depth, size = 0, 0, len(text)
    opening = closing = -1  # the next "(;" and ";)" at or after pos, once looked for
    steps = 0
    while pos < size:
        steps += 1
        if steps > LOOK_STEPS:  # (a step per comment: 33,000,000 nested "(;" took 14 s
            return True  # off every clock, red team 157; the bounded conversion decides)
        if depth:  # block comments nest
            if opening < pos:  # (none left: past the end, never looked for again)
                opening = text.find("(;", pos) % (size + 1)
            if closing < pos:
                closing = text.find(";)", pos)
            if closing < 0:
                return False
            if opening < closing:
                depth, pos = depth + 1, opening + 2
            else:
                depth, pos = depth - 1, closing + 2
            continue
        pos = blanks.match(text, pos).end()
        if text.startswith("(;", pos):
            depth, pos = 1, pos + 2
        elif text.startswith(";;", pos):
            end = text.find("\n", pos)
            pos = size if end < 0 else end + 1
        else:
            return pos < size and text[pos] == "("
    return False


def wat_to_wasm(data: bytes, path, seconds: Optional[float] = None, error: Any = None) -> bytes:
    """The binary of WebAssembly text ``data`` (of the file ``path``); beyond WAT_HERE
    bytes converted in a compile worker within ``seconds`` (WAT_SECONDS if None), else
    ``error()`` (CompileLimitExceeded, 117, if None)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.ModuleError(
            f"{path}: not a WebAssembly module (no \\0asm header, and not UTF-8 text)",
            hint="give a .wasm binary or a .wat text module",
            path=str(path),
        ) from None
    if text[:1] == "\ufeff":  # (a byte-order mark, as some editors save text: skipped)
        text, data = text[1:], data[3:]
    if not _looks_like_wat(text):
        raise errors.ModuleError(
            f"{path}: not a WebAssembly module (no \\0asm header, and the text does not "
            "start with `(`, as WebAssembly text does)",
            hint="give a .wasm binary or a .wat text module",
            path=str(path),
        )
    if len(data) > WAT_HERE:
        from ..backends import compiling

        if not compiling.compiles_here():
            return _in_worker(data, path, WAT_SECONDS if seconds is None else seconds, error)
    return _converted(text, path)


def _converted(text: str, path) -> bytes:
    import wasmtime

    try:
        return bytes(wasmtime.wat2wasm(text))
    except Exception as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = lines[0] if lines else "invalid text"
        detail = next((line for line in lines[1:] if line.startswith("-->")), "")
        # wasmtime names the text "<anon>": name the file instead (file:line:column).
        detail = detail.lstrip("-> ").replace("<anon>", str(path), 1)
        where = f" ({detail})" if detail else ""
        raise errors.ModuleError(
            f"{path}: invalid WebAssembly text: {reason}{where}",
            hint="fix the .wat file",
            path=str(path),
        ) from None


def _in_worker(data: bytes, path, seconds: float, error: Any = None) -> bytes:
    """wat_to_wasm in a compile worker (WatEngine), within ``seconds``."""
    from ..backends.compiling import slower_than, worker_task
    from ..errors import CompileLimitExceeded
    from ..units import format_duration

    too_slow = slower_than(
        f"{path}: converting it from WebAssembly text took longer than {format_duration(seconds)}",
        "give the module as a .wasm binary (wat2wasm), or raise limits.compile_timeout",
        seconds,
    )
    try:
        return worker_task(data, seconds, error or too_slow, f"{__name__}:WatEngine")
    except CompileLimitExceeded as exc:  # (its memory: a conversion, not a compile)
        if "ran out of memory" not in exc.message:
            raise
        raise CompileLimitExceeded(
            f"{path}: converting it from WebAssembly text ran out of memory"
            f"{exc.message.split('ran out of memory', 1)[1]}",
            hint="give the module as a .wasm binary (wat2wasm)",
            **exc.context,
        ) from None
    except errors.ModuleError as exc:  # (the worker names no file: this one's)
        if not exc.message.startswith(TEXT_NAME):
            raise
        body, at, place = exc.message[len(TEXT_NAME) :].rpartition(f"({TEXT_NAME}:")
        message = f"{path}{body}({path}:{place}" if at else f"{path}{place}"
        raise errors.ModuleError(message, hint=exc.hint, path=str(path)) from None


TEXT_NAME = "<text>"  # (what WatEngine names the text it converts)


if not TYPE_CHECKING:  # (type checkers see every other name as it is)

    def __getattr__(name: str) -> Any:
        """WatEngine, made when a compile worker asks for it (worker_task's ``wrap``): its
        "code" is the binary of the text it is given."""
        if name == "WatEngine":
            from ..backends.compiling import task_engine

            return task_engine(lambda data: _converted(data.decode("utf-8"), TEXT_NAME))
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
