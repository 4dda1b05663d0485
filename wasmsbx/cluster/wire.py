"""What travels between a ``--cluster`` client and its Dask workers, as JSON data.

Client -> worker: a *spec* (JSON text: the module's digest and name, the client's
effective policy values, backend, FUNC, ``fresh``, the wasmsbx version), the module bytes
(scattered once to every worker) and chunks of ``(line, payload)`` items.

Worker -> client: one JSON text per chunk, ``{"results": [[line, id, values, error,
seconds], ...], "seconds": s}`` or ``{"error": {"kind", "message", "hint",
"exit_code"}}``. The client parses and checks it (``read_results``) before anything
reaches the output: strict JSON (no NaN or Infinity), finite times, an exit code a
job-stopping failure can have. The client asks Dask for results as msgpack only
(client.connect), but this is no security boundary: Dask unpickles a failed task's
exception as it arrives (README "Across machines").

No Dask import here: both sides use this module, and the checks are plain Python.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from .. import errors
from ..policy import KEYS, Grant, Policy

# Keys that name places on the client's machine, not limits: a worker keeps its own.
WORKER_OWN = {"runtime.cache_dir": ""}


# ---------------------------------------------------------------------------- the policy


def policy_to_wire(policy: Policy, use_cache: Optional[bool] = None) -> dict:
    """The client's effective policy as JSON-ready values (flag overrides included).

    The guest's environment is resolved here, against the client's environment, into
    ``env.set``: a worker's own variables never leak in through ``env.inherit``. The
    cache switch is the client's effective one (``--no-cache`` included)."""
    values: dict = {}
    for dotted in KEYS:
        value = policy.values[dotted]
        if KEYS[dotted].kind == "grants":
            value = [[g.host, g.guest, g.writable] for g in value]
        values[dotted] = value
    values["env.set"] = policy.env_for_guest()
    values["env.inherit"] = []
    if use_cache is not None:
        values["runtime.cache"] = bool(use_cache)
    values.update(WORKER_OWN)
    return {
        "values": values,
        "explicit": sorted(policy.explicit),
        "source": policy.source,
    }


def policy_from_wire(data: dict, where: str) -> Policy:
    """Rebuild the client's policy on a worker; never reads a sandbox.toml of its own.

    The values were validated on the client (same wasmsbx version, checked by the spec),
    so they are taken as they are, except that every granted directory must exist here:
    a grant names a path on each worker, and a missing one fails the job, not each item."""
    values = dict(data["values"])
    missing = sorted(set(KEYS) - set(values))
    if missing:
        raise errors.ClusterError(f"the client's policy lacks {missing[0]} (a version mismatch?)")
    for dotted in ("filesystem.read_only", "filesystem.read_write"):
        values[dotted] = tuple(_grant_here(item, where) for item in values[dotted])
    for dotted, key in KEYS.items():  # (JSON's lists: a policy holds tuples, see Policy)
        if key.kind == "names" and type(values[dotted]) is list:
            values[dotted] = tuple(values[dotted])
    source = data.get("source") or "defaults"
    return Policy(values, f"{source} (from the cluster client)", set(data.get("explicit", ())))


def _grant_here(item: list, where: str) -> Grant:
    host, guest, writable = item
    if not Path(host).is_dir():
        flag = "--dir" if writable else "--dir-ro"
        raise errors.PolicyError(
            f"{where}: granted directory {host} (guest {guest}) does not exist on this worker",
            hint=f"a directory grant ({flag}, filesystem.*) names a path that must exist on "
            "every worker: use a shared filesystem or the same path on each machine",
            path=host,
        )
    return Grant(host=host, guest=guest, writable=bool(writable))


# ---------------------------------------------------------------------------- results


def results_to_wire(results: list, seconds: float) -> str:
    """A chunk's BatchResults as the JSON text a worker returns."""
    rows = [[r.line, r.id, r.values, r.error, r.seconds] for r in results]
    return json.dumps({"results": rows, "seconds": seconds}, separators=(",", ":"))


def error_to_wire(exc: BaseException) -> str:
    """A failure that stops the job (not an item's): JSON text naming its kind and code."""
    if isinstance(exc, errors.WasmsbxError):
        data = {"kind": exc.kind, "message": exc.message, "exit_code": int(exc.exit_code)}
        if exc.hint:
            data["hint"] = exc.hint
    else:
        data = {
            "kind": "internal",
            "message": f"{type(exc).__name__}: {exc}",
            "exit_code": int(errors.ExitCode.INTERNAL),
        }
    return json.dumps({"error": data})


class _Remote(errors.WasmsbxError):
    """A worker's job-stopping failure, re-raised on the client with the worker's code."""


def read_results(text: Any, lines: list) -> tuple:
    """``(BatchResults, seconds)`` from a worker's JSON text for a chunk of ``lines``:
    of its first items, at least one (a worker leaves the rest of a chunk whose results
    grew large to be submitted again, worker.run_chunk).

    Everything is checked: the text is JSON, one result per item it answers, in the same
    order, each of the documented shape. A failure the worker reported raises it here."""
    from ..runner.batch import BatchResult

    if not isinstance(text, str):
        raise _bad(f"a chunk's result is a {type(text).__name__}, not JSON text")
    try:  # (NaN, Infinity, 1e999: a time of NaN was an internal error, a result of
        # NaN was written as is, which is not JSON: red team 128)
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:  # nesting deeper than Python's stack
        raise _bad(f"a chunk's result is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _bad("a chunk's result is not a JSON object")
    if "error" in data:
        raise _remote_error(data["error"])
    rows, seconds = data.get("results"), data.get("seconds")
    if not isinstance(rows, list) or not _seconds(seconds):
        raise _bad("a chunk's result lacks 'results' or 'seconds'")
    if not 0 < len(rows) <= len(lines):
        raise _bad(f"a chunk of {len(lines)} items came back with {len(rows)} results")
    return [BatchResult(*_row(row, line)) for row, line in zip(rows, lines)], float(seconds)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _row(row: Any, line: int) -> tuple:
    if not (isinstance(row, list) and len(row) == 5 and row[0] == line):
        raise _bad(f"the result for line {line} is malformed or out of order")
    _, ident, values, error, seconds = row
    if not _seconds(seconds):
        raise _bad(f"the result for line {line} has no time")
    if error is None:
        if not isinstance(values, list):
            raise _bad(f"the result for line {line} has neither results nor an error")
    elif not (
        values is None
        and isinstance(error, dict)
        and isinstance(error.get("kind"), str)
        and error["kind"] in _kinds()
        and isinstance(error.get("message"), str)
        and isinstance(error.get("limit", "limit"), str)
        and error.get("limit", "limit") in _kinds(limits=True)
    ):
        # (a kind or limit no error of wasmsbx has: they reach the summary on stderr,
        # where a worker's terminal escapes and forged lines were printed as they came,
        # and a kind per item made one line of a megabyte: red team 151)
        raise _bad(f"the error for line {line} is malformed")
    if error is not None:  # (bounded as a job-stopping error's: see _remote_error)
        error = {
            **error,
            **{k: _cut(v) for k, v in error.items() if k in ("message", "hint") and type(v) is str},
        }
    return line, ident, values, error, float(seconds)


_KINDS: dict = {}


def _kinds(limits: bool = False) -> frozenset:
    """The ``kind`` of every error of wasmsbx (a batch item's "input" among them), or
    with ``limits`` the ``limit`` of every limit: what a worker's item error may say."""
    if not _KINDS:
        found, todo = set(), [errors.WasmsbxError]
        while todo:
            cls = todo.pop()
            found.add(cls)
            todo.extend(cls.__subclasses__())
        # (and those of errors defined beside the runner, imported here or not: a bad
        # item's, runner.batch.BadItem, and a pool worker's, runner.pool)
        _KINDS[False] = frozenset(c.kind for c in found) | {"input", "worker"}
        _KINDS[True] = frozenset(c.limit for c in found if issubclass(c, errors.LimitExceeded))
    return _KINDS[limits]


def _seconds(value: Any) -> bool:
    """A time a worker reports: a number from 0 to a year (a larger int made the
    chunk sizer's arithmetic overflow)."""
    return type(value) in (int, float) and 0 <= value <= 366 * 86400


def _bad(message: str) -> errors.ClusterError:
    return errors.ClusterError(
        f"cluster: {message}",
        hint="are the workers running the same wasmsbx version as this client?",
    )


REMOTE_TEXT_MAX = 4000  # characters of a worker's job-stopping message or hint kept


def _cut(text: str) -> str:
    if len(text) <= REMOTE_TEXT_MAX:
        return text
    return f"{text[:REMOTE_TEXT_MAX]}... ({len(text):,} characters)"


def _remote_error(data: Any) -> errors.WasmsbxError:
    # (a kind wasmsbx has, and a message and hint of bounded length: a worker's 20 MB
    # kind and message made 40 MB of --json and one 40 MB audit-log line, red team 154)
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return _bad("a worker reported a malformed error")
    hint = data.get("hint")
    exc = _Remote(_cut(data["message"]), hint=_cut(hint) if isinstance(hint, str) else None)
    code = data.get("exit_code")
    # Only a code a job-stopping failure can have: a worker that said 122 ("done, some
    # items failed") ended the run there with the rest unwritten (red team 128).
    exc.exit_code = code if type(code) is int and code in STOPPING else errors.ExitCode.CLUSTER
    kind = data.get("kind")
    exc.kind = kind if isinstance(kind, str) and kind in _kinds() else "cluster"
    return exc


# The exit codes of a failure that stops a job on a worker (error_to_wire): wasmsbx's own
# failures, limits and traps included (a start function, on a slower worker), but not
# success, usage, batch failures, a regression, findings, a guest's status or an interrupt.
_E = errors.ExitCode
STOPPING = frozenset(range(_E.INTERNAL, _E.RESOURCES + 1)) | {_E.CLUSTER}
