"""Suite files for ``wasmsbx bench --suite FILE``: several cases in one TOML file.

    [bench]                        # defaults for every case (all optional)
    policy = "sandbox.toml"        # relative to this file
    backend = "all"                # "auto", "all", "wasmtime", or a list of them
    iterations = 30
    warmup = 3
    budget = "10s"                 # per phase and backend
    sample_time = "5ms"
    phases = ["compile", "call"]

    [[bench.case]]
    name = "add"                   # default: MODULE:FUNC (or the module name)
    module = "examples/add.wat"    # relative to this file
    function = "add"               # omit for a WASI command ...
    args = [5, 3]
    iterations = 100               # any [bench] key may be overridden per case

    [[bench.case]]
    module = "tool.wasm"
    argv = ["--flag", "input"]     # ... whose argv this is

A malformed file is one error naming the file and the key (exit 2); a case that fails
when it runs (missing module, unknown function, trap) is reported in that case only.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Optional

from .. import errors, units
from .measure import PHASES, Case, Settings

SETTING_KEYS = ("policy", "backend", "iterations", "warmup", "budget", "sample_time", "phases")
CASE_KEYS = ("name", "module", "function", "args", "argv", *SETTING_KEYS)


class SuiteError(errors.UsageError):
    kind = "suite"


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else "a table"
    )


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.resolve().parent

    def fail(self, where: str, message: str, hint: Optional[str] = None) -> SuiteError:
        return SuiteError(
            f"{self.path}: {where}: {message}",
            hint=hint or "see `wasmsbx bench --help` and README, section bench",
            file=str(self.path),
            key=where,
        )

    def check_keys(self, table: dict, allowed: tuple, where: str) -> None:
        for key in table:
            if key not in allowed and not (where == "bench" and key == "case"):
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean `{close[0]}`?" if close else f"keys: {', '.join(allowed)}"
                raise self.fail(f"{where}.{key}", "unknown key", hint)

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"expected a non-empty string, found {_type_name(value)}")
        return value

    def strings(self, value: Any, where: str) -> list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(where, f"expected a list of strings, found {_type_name(value)}")
        return list(value)

    def count(self, value: Any, where: str, least: int) -> int:
        from .measure import MAX_SAMPLES

        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not least <= value <= MAX_SAMPLES
        ):
            raise self.fail(
                where, f"expected a whole number {least} .. {MAX_SAMPLES:,}, found {value!r}"
            )
        return value

    def duration(self, value: Any, where: str) -> float:
        try:
            seconds = units.parse_duration(value)
        except ValueError as exc:
            raise self.fail(where, str(exc)) from None
        if seconds <= 0:
            raise self.fail(where, "must be greater than zero")
        return seconds

    def args(self, value: Any, where: str) -> list:
        if not isinstance(value, list) or not all(
            isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value
        ):
            raise self.fail(where, f"expected a list of numbers or strings, found {value!r:.60}")
        return list(value)

    def settings(self, table: dict, where: str) -> dict:
        """The setting keys present in ``table``, checked and converted."""
        out: dict = {}
        for key in SETTING_KEYS:
            if key not in table:
                continue
            value, at = table[key], f"{where}.{key}"
            if key == "policy":
                out[key] = str(self.base / self.string(value, at))
            elif key == "backend":
                out[key] = tuple([value] if isinstance(value, str) else self.strings(value, at))
                if not out[key]:
                    raise self.fail(at, "expected at least one backend")
            elif key in ("iterations", "warmup"):
                out[key] = self.count(value, at, 1 if key == "iterations" else 0)
            elif key in ("budget", "sample_time"):
                out[key] = self.duration(value, at)
            else:
                out[key] = tuple(self.strings(value, at))
                for phase in out[key]:
                    if phase not in PHASES:
                        raise self.fail(
                            at, f"unknown phase {phase!r}", f"phases: {', '.join(PHASES)}"
                        )
        return out

    def case(self, table: Any, index: int, defaults: dict) -> dict:
        where = f"bench.case[{index}]"
        if not isinstance(table, dict):
            raise self.fail(where, f"expected a table, found {_type_name(table)}")
        self.check_keys(table, CASE_KEYS, where)
        if "module" not in table:
            raise self.fail(f"{where}.module", "missing", "every case names its module")
        module = self.string(table["module"], f"{where}.module")
        function = table.get("function")
        if function is not None:
            function = self.string(function, f"{where}.function")
        if function is not None and "argv" in table:
            raise self.fail(where, "has both function and argv", "argv is for WASI commands only")
        if function is None and "args" in table:
            raise self.fail(where, "has args but no function", "args are the function's")
        path = Path(module)
        spec = {
            "module": str(path if path.is_absolute() else self.base / path),
            "function": function,
            "args": self.args(table.get("args", []), f"{where}.args"),
            "argv": self.strings(table.get("argv", []), f"{where}.argv"),
            **defaults,
            **self.settings(table, where),
        }
        default_name = f"{Path(module).name}:{function}" if function else Path(module).name
        spec["name"] = self.string(table.get("name", default_name), f"{where}.name")
        return spec


def read_suite(path: str) -> list:
    """The case specs of a suite file (dicts: module, function, args, argv, settings keys)."""
    from ..policy import _toml_module

    file = Path(path)
    from ..inputs import POLICY_MAX_BYTES, read_capped

    try:
        raw = read_capped(file, POLICY_MAX_BYTES)
    except FileNotFoundError:
        raise errors.InputError(f"{path}: suite file not found", path=path) from None
    except OSError as exc:
        raise errors.InputError(f"{path}: cannot read suite file: {exc.strerror}") from None
    reader = _Reader(file)
    tomllib = _toml_module()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SuiteError(f"{path}: invalid TOML: {exc}", hint="check the file's syntax") from None
    except RecursionError:  # a = [[[[... : 1 KB nests deeper than tomllib's recursion can go
        raise SuiteError(
            f"{path}: invalid TOML: arrays or tables nested too deeply",
            hint="check the file's syntax",
        ) from None
    extra = [k for k in data if k != "bench"]
    if extra:
        raise reader.fail(extra[0], "unknown table", "a suite file has one [bench] table")
    bench = data.get("bench")
    if not isinstance(bench, dict):
        raise reader.fail("bench", "missing [bench] table", "add [[bench.case]] entries")
    reader.check_keys(bench, SETTING_KEYS, "bench")
    defaults = reader.settings(bench, "bench")
    cases = bench.get("case")
    if not isinstance(cases, list) or not cases:
        raise reader.fail("bench.case", "no cases", "add at least one [[bench.case]] table")
    specs = [reader.case(table, i, defaults) for i, table in enumerate(cases)]
    seen: dict = {}
    for i, spec in enumerate(specs):
        if spec["name"] in seen:
            raise reader.fail(
                f"bench.case[{i}].name",
                f"duplicate case name {spec['name']!r} (also case {seen[spec['name']]})",
                "give each case a unique name = ...",
            )
        seen[spec["name"]] = i
    return specs


def build_cases(specs: list, overrides: dict, make_policy: Callable[[Optional[str]], Any]) -> list:
    """Cases from suite specs; ``overrides`` (command-line settings) win over the file.

    ``make_policy(path)`` loads a policy (None: the default) with the command line's
    overrides applied; each distinct policy file is loaded once.
    """
    policies: dict = {}
    cases = []
    for spec in specs:
        merged = {**spec, **{k: v for k, v in overrides.items() if v is not None}}
        policy_path = merged.get("policy")
        if policy_path not in policies:
            policies[policy_path] = make_policy(policy_path)
        settings = Settings(
            iterations=merged.get("iterations", Settings.iterations),
            warmup=merged.get("warmup", Settings.warmup),
            budget=merged.get("budget", Settings.budget),
            sample_time=merged.get("sample_time", Settings.sample_time),
            phases=tuple(merged.get("phases", ())),
        ).check(spec["name"])
        cases.append(
            Case(
                name=spec["name"],
                module=spec["module"],
                function=spec["function"],
                args=spec["args"],
                argv=spec["argv"],
                backends=tuple(merged.get("backend", ("auto",))),
                settings=settings,
                policy=policies[policy_path],
            )
        )
    return cases
