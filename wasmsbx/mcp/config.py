"""The server's own limits (those ``wasmtime serve`` lacks), and how a call tightens the policy.

The server's policy (``--policy``, else the secure defaults) is the ceiling: a call may ask
for a lower timeout, memory, fuel or output limit, never a higher one. Grants, environment
and backend always come from the server's policy; a call cannot add any.
"""

from __future__ import annotations

import time
from collections import deque, namedtuple
from typing import Any, Optional

from .. import errors
from ..units import format_duration, format_limit, format_size, parse_duration, parse_size, shown


class ServerConfig(
    namedtuple(
        "ServerConfig",
        [
            "policy",
            "max_request",
            "max_concurrent",
            "calls_per_minute",
            "max_output",
            "session_cpu",
            "session_memory",
            "session_idle",
            "max_sessions",
            "module_dirs",
            "grace",
            "audit_log",
            "request_timeout",
            "max_connections",
            "rate_window",
        ],
        defaults=(
            1024 * 1024,
            4,
            120,
            1024 * 1024,
            60.0,
            None,
            600.0,
            16,
            (),
            10.0,
            None,
            30.0,
            64,
            60.0,
        ),
    )
):
    """Everything the server enforces besides the policy (defaults in README, "MCP")."""

    policy: Any  # the ceiling (wasmsbx.policy.Policy)
    max_request: int  # bytes of tool arguments (code, module, stdin, args) per call
    max_concurrent: int  # calls running at once; more are refused, not queued
    calls_per_minute: int  # over a sliding rate_window (a minute), all clients together
    max_output: int  # stdout + stderr bytes per call (tightens limits.output)
    session_cpu: float  # CPU seconds one session may spend over its life
    session_memory: Optional[int]  # guest memory + scratch bytes of a session (None: policy)
    session_idle: float  # seconds without a call before a session expires
    max_sessions: int  # sessions open at once
    module_dirs: tuple  # directories modules may be read from by path
    grace: float  # seconds past limits.timeout before a worker is stopped
    audit_log: Optional[str]  # --audit-log FILE
    request_timeout: float  # HTTP: seconds to send a whole request (headers and body)
    max_connections: int  # HTTP: connections open at once; more are closed at accept
    rate_window: float  # seconds calls_per_minute is counted over (default 60)
    __slots__ = ()

    def describe(self) -> dict:
        """The limits as a model reads them (the ``limits`` tool and session info)."""
        v = self.policy.values
        return {
            "timeout": format_duration(v["limits.timeout"]),
            "memory": format_limit(v["limits.memory"]),
            "fuel": v["limits.fuel"],
            "output_per_call": format_limit(self.output_ceiling()),
            "request_size": format_limit(self.max_request),
            "concurrent_calls": self.max_concurrent,
            "calls_per_minute": self.calls_per_minute,
            "rate_window_seconds": self.rate_window,
            "session_cpu_seconds": self.session_cpu,
            "session_memory": format_size(self.session_budget()),
            "session_idle_expiry_seconds": self.session_idle,
            "max_sessions": self.max_sessions,
            "http_request_timeout_seconds": self.request_timeout,
            "http_max_connections": self.max_connections,
        }

    def output_ceiling(self) -> int:
        policy_output = self.policy.values["limits.output"]
        return min(self.max_output, policy_output) if policy_output else self.max_output

    def session_budget(self) -> int:
        return self.session_memory or self.policy.values["limits.memory"]


LIMIT_KEYS = {
    "timeout": ("limits.timeout", parse_duration, format_duration),
    "memory": ("limits.memory", parse_size, format_size),
    "fuel": ("limits.fuel", None, str),
    "output": ("limits.output", parse_size, format_size),
}


def call_policy(config: ServerConfig, limits: Optional[dict] = None) -> Any:
    """A copy of the server's policy with the call's limits applied, each at most the
    ceiling; stdio never inherits the server's (the worker's stdin is its request pipe)."""
    ceiling = config.policy
    policy = ceiling.copy()
    values = policy.values
    values["limits.output"] = config.output_ceiling()
    for key in ("stdio.stdin", "stdio.stdout", "stdio.stderr"):
        values[key] = "null"
    for name, raw in (limits or {}).items():
        if raw is None:
            continue
        if name not in LIMIT_KEYS:
            raise errors.UsageError(
                f"limits.{name}: unknown limit",
                hint=f"a call may tighten: {', '.join(LIMIT_KEYS)}",
            )
        dotted, parse, show = LIMIT_KEYS[name]
        value = _parse_limit(name, raw, parse)
        top = values[dotted]
        if top is not None and value > top:
            raise errors.PolicyError(
                f"limits.{name} = {show(value)} is above the server's ceiling of {show(top)}",
                hint=f"a call may only tighten the server's limits; ask for {show(top)} or less",
                key=dotted,
            )
        values[dotted] = value
    return policy


INTERPRETER_COMPILE_TIMEOUT = 600.0  # seconds (service.SPAWN_TIMEOUT allows for it)


def interpreter_policy(policy: Any) -> Any:
    """``policy`` with room to compile the interpreters (setup, a new worker's warm-up).

    They are pinned by digest, so compiling them is trusted work: a busy machine gets 10
    minutes, not the limits.compile_timeout meant for agents' modules (CPython's 20 MB can
    take over a minute on two busy cores). The engine settings, and so the cache key, are
    unchanged."""
    policy = policy.copy()
    values = policy.values
    values["limits.compile_timeout"] = max(
        values["limits.compile_timeout"] or 0, INTERPRETER_COMPILE_TIMEOUT
    )
    return policy


def _parse_limit(name: str, raw: Any, parse: Any) -> Any:
    try:
        if parse is None:
            if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
                raise ValueError("expected a whole number > 0")
            if raw >= 2**63:  # the runtime's fuel counter is a signed 64-bit number
                raise ValueError("expected a whole number below 2**63")
            return raw
        value = parse(raw)
    except (ValueError, TypeError) as exc:
        raise errors.UsageError(
            f"limits.{name}: {shown(raw)} is not valid: {exc}",
            hint='sizes like "16MiB", durations like "500ms" or "2s", fuel as a whole number',
        ) from None
    if not value:
        raise errors.UsageError(f"limits.{name} must be greater than zero")
    if name == "timeout" and value < MIN_TIMEOUT:
        # (1e-300 passed here and came back from the worker's policy as a policy error
        # about the server, "limits cannot be switched off": red team round 40)
        raise errors.UsageError(
            f"limits.timeout: {shown(raw)} is shorter than the least a call can be given "
            f"({format_duration(MIN_TIMEOUT)})",
            hint='durations like "500ms" or "2s"',
        )
    return value


MIN_TIMEOUT = 0.001  # seconds: the deadline keeper's resolution


def to_wire(policy: Any, extra_grants: tuple = ()) -> dict:
    """The policy as the worker rebuilds it (TOML-shaped data), with extra directory grants."""
    data = policy.to_toml_dict()
    rw = list(data.get("filesystem", {}).get("read_write", []))
    rw += [f"{g.host}:{g.guest}" for g in extra_grants]
    if rw:
        data.setdefault("filesystem", {})["read_write"] = rw
    return data


class RateLimiter:
    """At most ``limit`` calls over any sliding window of ``window`` seconds (a minute)."""

    def __init__(self, limit: int, clock: Any = time.monotonic, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.times: deque = deque()

    def admit(self) -> None:
        now = self.clock()
        while self.times and now - self.times[0] >= self.window:
            self.times.popleft()
        if len(self.times) >= self.limit:
            wait = self.window - (now - self.times[0])
            per = "minute" if self.window == 60 else f"{self.window:g} s"
            raise errors.LimitExceeded(
                f"rate limit: {self.limit} calls per {per} reached",
                hint=f"retry in {wait:.0f} s",
                limit_value=self.limit,
            )
        self.times.append(now)
