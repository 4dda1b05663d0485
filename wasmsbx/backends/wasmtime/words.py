"""What wasmtime's error texts say: their own lines (never the guest's names they
quote or the backtrace they carry), and the wasmsbx error a failed compile is. Never
imports wasmtime: ``bare.BareEngine``, which compiles without wasmtime-py, reports its
failures with these (red team 136: importing wasmtime-py to word an error took memory a
compile worker under a tight cap did not have).
"""

from __future__ import annotations

from typing import Any

from ... import errors
from ..base import EngineOptions
from ..reserve import exhausted_hint


def unquoted(text: str) -> str:
    """wasmtime's text without what it quotes between backticks: the names a module or
    component chose (imports, exports, functions), so no name reads as a limit or an
    exhaustion ("duplicate export name `out of memory`" was reported as the host out of
    memory). A name holding a backtick can end the quote early; the errors that quote
    names are told by how they begin first (``_link_refusal``, ``_parse_failure``)."""
    if "`" not in text:
        return text
    import re

    return re.sub(r"`[^`\n]*`", "``", text)


def _parse_failure(text: str) -> bool:
    """Whether wasmtime refused the module's bytes as invalid (its validator's words,
    which quote export names: never the host running out)."""
    return (
        text.lstrip()
        .lower()
        .startswith(("failed to parse webassembly module", "webassembly translation error"))
    )


def _own_words(exc: Any) -> str:
    """An error's text without the backtrace it may carry: its first line and the causes
    after it (_cause_lines). The backtrace prints the guest's function names raw, and a
    start function named "...\nCaused by:\nGC heap out of memory" made a refused WASI
    call a memory limit, or a host out of memory (red team round 71)."""
    text = str(exc).strip()
    if not text.startswith("error while executing"):
        return text
    return "\n".join(own_lines(text))


def own_lines(text: Any) -> list:
    """wasmtime's own lines of an error: its first line and the causes after its last
    "Caused by:" (_cause_lines), never the backtrace between them, whose frames print
    the guest's names raw. ``text``: an error, or its text."""
    text = str(text).strip()
    return [text.split("\n", 1)[0].strip(), *_cause_lines(text)]


def _cause_lines(exc: Any) -> list:
    """wasmtime's causes, after its last "Caused by:" ([] without one). The last: the
    backtrace before it prints the guest's function names raw, and a name holding
    "\nCaused by:\n..." forged a first one (red team round 71)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    if "Caused by:" not in lines:
        return []
    last = len(lines) - 1 - lines[::-1].index("Caused by:")
    causes = []
    for line in lines[last + 1 :]:
        if not line:
            continue
        head, _, rest = line.partition(": ")
        causes.append(rest if head.isdigit() and rest else line)
    return causes


def _causes(exc: Any) -> str:
    """wasmtime's chain of causes after "Caused by:", on one line ("failed to call
    `get-random-bytes`: requested len 2147483647 exceeds limit 67108864"; round 42: only
    the first, "0: failed to call ...", was kept). ``exc``: an error, or its text."""
    return ": ".join(_cause_lines(exc))[:500] or _first_line(exc)


def _first_line(exc: Any) -> str:
    """What an error says, on one line (``exc``: an error, or its text)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # wasmtime puts the cause last: "failed to parse ... Caused by: unexpected end-of-file".
    # After a backtrace, whose frames are the guest's names, after its last "Caused by:"
    # (_cause_lines); anywhere else after its first: what follows it may quote a name
    # ("duplicate export name `a\nCaused by:\nout of memory`", red team round 74).
    if "Caused by:" in lines[:-1]:
        if lines[0].startswith("error while executing"):  # a backtrace follows, not a reason
            return lines[len(lines) - 1 - lines[-2::-1].index("Caused by:")]
        return f"{lines[0]}: {lines[lines.index('Caused by:') + 1]}"
    return lines[0] if lines else "unknown error"


def _exhausted(doing: str, why: str, options: EngineOptions) -> errors.ResourceExhausted:
    return errors.ResourceExhausted(
        f"out of host memory or address space while {doing}: {why}",
        hint=exhausted_hint(options.reservation, options.copy_data),
    )


def _module_error(exc: Exception, options: EngineOptions) -> errors.WasmsbxError:
    text = str(exc)
    if not _parse_failure(text) and errors.is_exhaustion(unquoted(_own_words(text))):
        return _exhausted("compiling the module", _first_line(exc), options)
    return errors.ModuleError(
        f"invalid module: {_compile_failure(text)}",
        hint="check that the file is a WebAssembly module built for wasm32",
    )


def _compile_failure(text: str) -> str:
    """What a failed compile says, its whole chain of causes on one line: the first
    alone was "0: WebAssembly translation error", and the reason ("type mismatch:
    expected i32 but nothing on stack", at which offset) came only in the last (round
    155). Numbered causes after the last "Caused by:" only, at most 500 characters (the
    text may quote a module's names: it is shown escaped, never classified here). Not
    ``own_lines``, which keeps unnumbered lines too: a duplicate export's name is
    quoted after wasmtime's own "Caused by:", and one holding "out of memory" read as
    the host's words (round 74)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if "Caused by:" not in lines[:-1]:
        return _first_line(text)
    causes = []  # (after the last "Caused by:": a name holding one forged a cause that
    last = len(lines) - 1 - lines[::-1].index("Caused by:")  # hid the real, red team 156)
    for line in lines[last + 1 :]:
        head, _, rest = line.partition(": ")
        if head.isdigit() and rest:
            causes.append(rest)
    if not causes:
        return _first_line(text)
    said = ": ".join([lines[0], *causes])
    return said if len(said) <= 500 else said[:500] + "..."
