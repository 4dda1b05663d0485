"""``wasmsbx policy show``: the policy in force, and where each value came from."""

from __future__ import annotations

from typing import Any, Optional

import typer

from .. import output
from ..app import run_opt
from ..boundary import boundary


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Show the policy in force (sandbox.toml, defaults and flags).",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    group.command("show")(boundary(show))
    app.add_typer(group, name="policy")


def show(
    policy: Optional[str] = run_opt("policy"),
    backend: Optional[str] = run_opt("backend"),
    memory: Optional[str] = run_opt("memory"),
    fuel: Optional[int] = run_opt("fuel"),
    timeout: Optional[str] = run_opt("timeout"),
    stack: Optional[str] = run_opt("stack"),
    dir: Optional[list[str]] = run_opt("dir"),
    dir_ro: Optional[list[str]] = run_opt("dir_ro"),
    env: Optional[list[str]] = run_opt("env"),
    json_output: bool = typer.Option(
        False, "--json", help="Print {file, policy, sources} as JSON instead of TOML."
    ),
) -> int:
    """Print the policy a `wasmsbx run` with the same flags would enforce, as TOML with
    the source of each value (default, the policy file, or a flag), or as JSON."""
    from ... import policy as policy_mod
    from .run import apply_flags

    options = {"policy": policy, "backend": backend, "memory": memory, "fuel": fuel}
    options.update(timeout=timeout, stack=stack, dir=dir or [], dir_ro=dir_ro or [], env=env or [])
    found = policy_mod.discover(policy)
    sources = value_sources(found, options)
    apply_flags(found, options)
    if json_output:
        output.emit_json({"file": found.source, "policy": found.to_dict(), "sources": sources})
    else:
        output.out(render_toml(found, sources))
    return 0


def value_sources(policy: Any, options: dict) -> dict:
    """{dotted key: "default" | the policy file | "--flag" | "FILE + --flag"}, for the
    policy as discovered, before the flags in ``options`` are applied to it."""
    from ... import policy as policy_mod
    from .run import flag_keys

    flags = flag_keys(options)
    merged = {"filesystem.read_write", "filesystem.read_only", "env.set", "env.inherit"}
    sources = {}
    for dotted in policy_mod.KEYS:
        origin = policy.source if dotted in policy.explicit else None
        flag = flags.get(dotted)
        if flag and origin and dotted in merged:  # a flag adds to the file's list
            sources[dotted] = f"{origin} + {flag}"
        elif dotted in policy.capped and not flag and dotted in policy_mod.OWN_CACHE_KEYS:
            sources[dotted] = (
                f"default ({origin} sets it for a cache_dir of its own only; "
                "a discovered policy does not manage your cache)"
            )
        elif dotted in policy.capped and not flag:
            sources[dotted] = (
                f"default ({origin} asks more; a discovered policy cannot raise limits)"
            )
        else:
            sources[dotted] = flag or origin or "default"
    return sources


def render_toml(policy: Any, sources: dict) -> str:
    """sandbox.toml text for the policy in force, each key commented with its source."""
    from ... import policy as policy_mod

    values = policy.to_toml_dict()
    where = policy.source or "no policy file (defaults)"
    lines = [f"# the policy in force: {where}; each value's source follows it"]
    section = None
    for dotted, key in policy_mod.KEYS.items():
        if key.section != section:
            section = key.section
            lines += ["", f"[{section}]"]
        if key.name in values.get(section, {}):
            text = f"{key.name} = {toml_value(values[section][key.name])}"
        else:
            text = f"# {key.name} = (unset)"
        lines.append(f"{text:<40} # {sources[dotted]}")
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    """One TOML value on one line (inline arrays and tables)."""
    import json
    import re

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):

        def key(k: str) -> str:
            return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

        return "{" + ", ".join(f"{key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML spelling for {type(value).__name__}")
