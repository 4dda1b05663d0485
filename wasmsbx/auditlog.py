"""``wasmsbx run --audit-log FILE``: one JSON line per security-relevant event.

Only imported (and the file only opened) when the option is given. Lines are appended with
one ``write`` each to a file opened in append mode, so several runs can share one log; the
``run`` field (random per run) ties a run's lines together. Every run writes ``start`` first
and ``exit`` last. Event names and fields are documented in the README ("Audit log").

Environment variable *values* are never written (they may be secrets): only names.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Optional

from . import errors

LOG_VERSION = 1


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class AuditLog:
    """Appends events for one run of ``wasmsbx run``."""

    def __init__(self, path: str) -> None:
        self.path = path
        from .outfile import open_in_place, refuse_policy_name, refuse_trust_folder

        refuse_trust_folder(path)  # appended lines must not land among your keys
        refuse_policy_name(path)  # nor become the policy the next run discovers
        try:
            # O_NONBLOCK for the open only: a FIFO nobody reads is refused at once
            # (ENXIO) instead of blocking the run before its deadline is even armed.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0)
            # (in its folder as checked; under any of its names, and where it leads:
            # checked before anything is appended)
            fd = open_in_place(path, flags, "the audit log")
            os.set_blocking(fd, True)
            self.fh = open(fd, "a", encoding="utf-8")  # noqa: SIM115 - closed by exit()
        except OSError as exc:
            import errno

            if exc.errno == errno.ENXIO:
                raise errors.InputError(
                    f"--audit-log {path}: a named pipe that no process is reading",
                    hint="start its reader first, or give a file",
                    path=path,
                ) from None
            raise errors.InputError(
                f"--audit-log {path}: cannot open for appending: {exc.strerror or exc}",
                hint="give a writable file path (its directory must exist)",
                path=path,
            ) from None
        self.run_id = os.urandom(8).hex()
        self.started = time.monotonic()
        self.kind: Optional[str] = None
        self.outcome = "ok"
        self.stats: Any = None
        self.wasm: Optional[bytes] = None

    def event(self, name: str, **fields: Any) -> None:
        record = {"v": LOG_VERSION, "time": _now(), "run": self.run_id, "event": name}
        record.update(fields)
        try:
            line = json.dumps(record, separators=(",", ":"), default=str, allow_nan=False)
        except ValueError:  # (NaN, Infinity: not JSON, which strict readers refuse; an
            # MCP client's call_export args of [NaN, 1e400] were logged so: red team 151)
            line = json.dumps(_finite(record), separators=(",", ":"), default=str)
        line += "\n"
        try:
            self.fh.write(line)
            self.fh.flush()
        except OSError as exc:
            raise errors.InputError(
                f"--audit-log {self.path}: write failed: {exc.strerror or exc}", path=self.path
            ) from None

    # ------------------------------------------------------------------ the run
    def start(self, module: Optional[str], func: Optional[str], args: list) -> None:
        self.kind = "call" if func else "command"
        self.event(
            "start",
            pid=os.getpid(),
            module=os.path.abspath(module) if module else None,
            kind=self.kind,
            function=func,
            args=list(args),
        )

    def sandbox(self, box: Any) -> None:
        """The module is compiled and the policy is final: what the guest will get."""
        import hashlib

        v = box.policy.values
        self.wasm = box.wasm
        if box.wasm is not None:
            sha256, size = hashlib.sha256(box.wasm).hexdigest(), len(box.wasm)
        else:  # a precompiled artifact alone: the module it was built from, as it records
            module = box.artifact.header["module"]
            sha256, size = module.get("sha256"), module.get("size")
        self.event(
            "sandbox",
            sha256=sha256,
            size=size,
            backend=box.backend_name,
            compiler=box.compiler,
            policy=box.policy.source,
            limits={
                key: v[f"limits.{key}"]
                for key in ("memory", "fuel", "timeout", "stack", "table_elements", "output")
            },
            grants=[g.to_dict() for g in box.policy.grants],
            env=sorted(box.policy.env_for_guest()),
        )

    def usage(self, stats: Any) -> None:
        """Limits hit without stopping the guest (e.g. a refused memory.grow)."""
        self.stats = stats
        for warning in stats.warnings:
            if warning.startswith("memory limit"):
                self.event("limit", limit="memory", fatal=False, message=warning)
            else:
                self.event("warning", message=warning)

    def failure(self, exc: BaseException) -> None:
        name, fields = _failure_event(exc)
        if name == "error" and isinstance(exc, errors.LinkError):
            refused = self._refused_imports()
            if refused:
                name, fields = "import_refused", {**fields, "imports": refused}
        self.outcome = name
        self.event(name, **fields)

    def last_words(self, exc: BaseException) -> None:
        """From the deadline keeper's thread, just before a hard stop leaves the process: the
        failure and the exit events, unless the run already wrote its exit."""
        if self.fh.closed:
            return
        self.failure(exc)
        self.exit(int(getattr(exc, "exit_code", 100)))

    def _refused_imports(self) -> list:
        """The module's imports the sandbox does not link, read from the module itself (so
        the event does not depend on how a backend words its link error)."""
        if self.wasm is None:
            return []
        from .audit.report import classify_import
        from .wasm.facts import FactsError, read_facts

        try:
            imports = read_facts(self.wasm).imports
        except FactsError:
            return []
        return [f"{i.module}.{i.name}" for i in imports if not classify_import(i).provided]

    def exit(self, code: int) -> None:
        fields: dict = {"exit_code": int(code), "outcome": self.outcome}
        if self.kind == "command" and self.outcome == "ok":
            fields["guest_exit_code"] = int(code)
            fields["outcome"] = "ok" if code == 0 else "guest_exit"
        if self.stats is not None:
            fields["fuel_used"] = self.stats.fuel_used
            fields["memory_bytes"] = self.stats.memory_bytes
        fields["seconds"] = round(time.monotonic() - self.started, 6)
        self.event("exit", **fields)
        self.fh.close()


def _failure_event(exc: BaseException) -> tuple:
    """The event name and fields for an exception that ended the run."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", {}
    if not isinstance(exc, errors.WasmsbxError):
        return "internal_error", {"message": f"{type(exc).__name__}: {exc}"}
    base = {"kind": exc.kind, "message": exc.message, "exit_code": int(exc.exit_code)}
    ctx = exc.context
    if isinstance(exc, errors.LimitExceeded):
        return "limit", {
            "limit": exc.limit,
            "fatal": True,
            "limit_value": ctx.get("limit_value"),
            **base,
        }
    if isinstance(exc, errors.TrapError):
        fields = {**base, "backtrace": exc.backtrace[:8]}
        if ctx.get("exit_code_guest") is not None:
            fields["guest_exit_code"] = ctx["exit_code_guest"]
        return "trap", fields
    if isinstance(exc, errors.LinkError) and ctx.get("imports"):
        return "import_refused", {**base, "imports": list(ctx["imports"])}
    if isinstance(exc, errors.PolicyError):
        key = ctx.get("key") or ""
        if key.startswith("filesystem.") or exc.message.startswith("--dir"):
            return "grant_denied", {**base, "key": key or None}
        return "policy_error", {**base, "key": key or None}
    return "error", base


def _finite(value: Any) -> Any:
    """``value`` with each float that JSON cannot hold (NaN, infinities) as a string in
    the command line's spellings ("nan", "inf", "-inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
