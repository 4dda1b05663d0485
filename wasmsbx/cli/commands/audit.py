"""``wasmsbx audit MODULE``: static security audit of a module against a policy."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Optional

import typer

from ... import errors
from .. import output
from ..app import run_opt
from ..boundary import boundary


class Severity(str, Enum):
    info = "info"
    low = "low"
    medium = "medium"
    high = "high"


def register(app: typer.Typer) -> None:
    @app.command("audit")
    @boundary
    def audit(
        module: str = typer.Argument(
            ..., metavar="MODULE", help="A .wasm or .wat module (read, never run)."
        ),
        policy: Optional[str] = run_opt("policy"),
        memory: Optional[str] = run_opt("memory"),
        fuel: Optional[int] = run_opt("fuel"),
        timeout: Optional[str] = run_opt("timeout"),
        stack: Optional[str] = run_opt("stack"),
        dir: Optional[list[str]] = run_opt("dir"),
        dir_ro: Optional[list[str]] = run_opt("dir_ro"),
        env: Optional[list[str]] = run_opt("env"),
        json_output: bool = typer.Option(
            False, "--json", help="Print the JSON report (schema wasmsbx.audit/1, see README)."
        ),
        sarif: bool = typer.Option(False, "--sarif", help="Print the findings as SARIF 2.1.0."),
        suggest: bool = typer.Option(
            False, "--suggest-policy", help="Print a least-privilege sandbox.toml for MODULE."
        ),
        output_file: Optional[str] = typer.Option(
            None,
            "--output",
            "-o",
            metavar="FILE",
            help="Write the --suggest-policy, --json or --sarif output to FILE.",
        ),
        fail_on: Optional[Severity] = typer.Option(
            None,
            "--fail-on",
            help="Exit 121 when a finding at or above this severity exists.",
        ),
        host_import: Optional[list[str]] = typer.Option(
            None,
            "--host-import",
            metavar="MODULE.NAME",
            help="An import the embedding host provides (Python imports=); MODULE.* for all "
            "of a module. Repeatable.",
        ),
    ) -> int:
        """Audit MODULE against the policy without running it.

        Imports by capability, exports, memory and table limits, findings with rule ids
        and fixes, and a risk score. The policy is the one `wasmsbx run` would use with
        the same flags (--policy, --dir, --dir-ro, --env, limits)."""
        mode = _mode(json_output, sarif, suggest, output_file)
        flags = {"policy": policy, "memory": memory, "fuel": fuel, "timeout": timeout}
        flags.update(stack=stack, dir=dir or [], dir_ro=dir_ro or [], env=env or [])
        inputs, target = [module], None  # (target: --output, once accepted)
        try:  # (the imports too: a Ctrl-C while they run still gets its SARIF log)
            from ...audit.report import audit_file
            from .run import build_policy

            loaded = build_policy(flags)
            inputs.append(loaded.source)
            if output_file:  # refused before the work, not after
                from ...outfile import check_output

                check_output(output_file, inputs, policy=mode == "suggest")
                target = output_file
            report = audit_file(module, loaded, host_imports=_host_imports(host_import or []))
        except (errors.WasmsbxError, KeyboardInterrupt) as exc:
            if mode == "sarif":  # (--json's error object is the boundary's)
                _sarif_failure(exc, target, inputs)
            raise
        if mode == "report":
            render(report)
        else:
            try:
                _emit(_machine_text(report, mode), output_file, inputs, mode == "suggest")
            except errors.WasmsbxError as exc:  # --output not writable after all (full)
                if mode == "sarif":
                    _sarif_failure(exc, None, inputs)
                raise
        return _exit_code(report, fail_on)


def _host_imports(given: list) -> set:
    """MODULE.NAME or MODULE.*: anything else ('', 'noDot', '.') matched no import and
    was accepted without a word."""
    for item in given:
        if not re.fullmatch(r".+\..+", item, re.DOTALL):
            raise errors.UsageError(
                f"--host-import {item!r}: not MODULE.NAME",
                hint="e.g. --host-import env.log, or env.* for every import of env",
            )
    return set(given)


def _sarif_failure(exc: BaseException, target: Optional[str], inputs: list) -> None:
    """The SARIF log of a failed audit (audit.formats.sarif_failure), where the log
    would have gone (stdout if --output was not accepted, or cannot be written); the
    boundary then prints the error line and exits with its code."""
    import json

    from ...audit.formats import sarif_failure_of

    text = json.dumps(sarif_failure_of(exc), indent=2) + "\n"
    try:
        _emit(text, target, [i for i in inputs if i])
    except (errors.WasmsbxError, OSError):  # (--output not writable after all: stdout)
        if target is not None:
            _sarif_failure(exc, None, inputs)


def _mode(json_output: bool, sarif: bool, suggest: bool, output_file: Optional[str]) -> str:
    chosen = [
        name for name, on in (("json", json_output), ("sarif", sarif), ("suggest", suggest)) if on
    ]
    if len(chosen) > 1:
        flags = {"json": "--json", "sarif": "--sarif", "suggest": "--suggest-policy"}
        raise errors.UsageError(
            f"{' and '.join(flags[c] for c in chosen)} cannot be combined",
            hint="choose one output format",
        )
    if output_file and not chosen:
        raise errors.UsageError(
            "--output needs --json, --sarif or --suggest-policy",
            hint="the rich report is for the terminal; write a machine format to a file",
        )
    return chosen[0] if chosen else "report"


def _machine_text(report: Any, mode: str) -> str:
    if mode == "suggest":
        from ...audit.report import suggest_policy

        return suggest_policy(report).to_toml()
    import json

    data = report.to_dict() if mode == "json" else report.to_sarif()
    return json.dumps(data, indent=2) + "\n"


def _emit(text: str, output_file: Optional[str], inputs: list, policy: bool = False) -> None:
    """``policy``: ``text`` is --suggest-policy's, which may be written to a sandbox.toml
    (no other output may: the next command in its folder would read it as its policy)."""
    if not output_file:
        output.write_stdout(text)
        return
    from ...outfile import write_output

    write_output(output_file, text, inputs=inputs, policy=policy)
    output.err(f"wrote {output.line(output_file)}")


def _exit_code(report: Any, fail_on: Optional[Severity]) -> int:
    if fail_on is None or not report.fails(fail_on.value):
        return 0
    from ...audit.report import severity_rank

    floor = severity_rank(fail_on.value)
    n = sum(1 for f in report.findings if severity_rank(f.severity) >= floor)
    output.err(
        f"audit: {n} finding{'s' if n != 1 else ''} at or above {fail_on.value} "
        f"(--fail-on {fail_on.value})"
    )
    return int(errors.ExitCode.AUDIT_FINDINGS)


# ---------------------------------------------------------------------------- the rich report

SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}
STATUS_STYLE = {"granted": "green", "denied": "yellow", "always": "dim", "never": "red"}


# Module-controlled text, made inert (output.markup): names inside a module are the
# attacker's; printed raw, an export named "\x1b]52;..." could drive the terminal.
safe = output.markup


def safe_name(text: Any) -> str:
    """A name from the module (an export, an import): ``safe`` and cut, so a name of a
    megabyte is not a megabyte of table."""
    return output.markup(text, errors.NAME_SHOWN)


def shown(items: Any) -> Any:
    """The first audit.findings.LISTED of ``items``: a table row each for 1,000,000
    globals took minutes and hundreds of MB (red team round 77); ``more`` says the rest."""
    from ...audit.findings import LISTED

    return items[:LISTED]


def more(table: Any, items: Any, what: str) -> None:
    """A last row "... N more WHAT not shown" when ``shown`` cut ``items``."""
    from ...audit.findings import LISTED

    if len(items) > LISTED:
        cells = [""] * (len(table.columns) - 1)
        table.add_row(f"[dim]... {len(items) - LISTED:,} more {what} not shown[/]", *cells)


def render(report: Any) -> None:
    console = output.console()
    if getattr(report, "is_component", False):
        render_component(console, report)
        return
    _header(console, report)
    _capabilities(console, report)
    _exports(console, report)
    _layout(console, report)
    _findings(console, report)
    _risk(console, report)


def _header(console: Any, report: Any) -> None:
    from rich.table import Table

    facts = report.facts
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", overflow="fold")
    grid.add_column(overflow="fold")
    rows = [
        ("module", safe(report.path)),
        ("size", f"{facts.size:,} bytes"),
        ("sha256", facts.sha256),
        ("policy", safe(report.policy.source or "defaults (no sandbox.toml)")),
        ("toolchain", _toolchain(facts)),
        ("functions", f"{facts.functions} defined, {len(facts.imports)} imports"),
        ("features", ", ".join(sorted(facts.features)) or "MVP only"),
        ("sections", _sections(facts)),
    ]
    for key, value in rows:
        grid.add_row(key, value)
    console.print("[bold]wasmsbx audit[/]")
    console.print(grid)


def _toolchain(facts: Any) -> str:
    if not facts.producers:
        return "not recorded (no producers section)"
    from ...audit.findings import LISTED
    from ...audit.report import _names

    fields = list(facts.producers.items())
    parts = [f"{_names(values, LISTED)} ({field})" for field, values in shown(fields)]
    parts += [f"{len(fields) - len(parts):,} more fields"] if len(fields) > len(parts) else []
    return safe("; ".join(parts))


def _sections(facts: Any) -> str:
    debug = sum(c.size for c in facts.custom_sections if c.name.startswith(".debug"))
    parts = [
        f"name section: {'yes' if facts.has_name_section else 'no'}",
        f"debug info: {f'yes ({debug:,} bytes)' if facts.has_debug_info else 'no'}",
    ]
    others = [c for c in facts.custom_sections if not c.name.startswith(".debug")]
    if others:
        # (each name cut, as names are in listings: one of 1.6 million characters was
        # printed whole, red team 125)
        named = (f"{errors.inert(c.name, errors.NAME_SHOWN)} ({c.size:,} B)" for c in others[:8])
        parts.append("custom: " + ", ".join(named))
    return safe("; ".join(parts))


def _capabilities(console: Any, report: Any) -> None:
    from rich.table import Table

    if not report.imports:
        console.print("\n[bold]imports[/]: none (the module needs nothing from the host)")
        return
    table = Table(title="imports by capability", title_justify="left", show_lines=False)
    for column in ("capability", "under this policy", "import", "what it lets the module do"):
        table.add_column(column, overflow="fold")
    by_group: dict = {}
    for imp in report.imports:
        by_group.setdefault(imp.capability, []).append(imp)
    for cap in report.capabilities:
        style = STATUS_STYLE[cap.status]
        status = f"[{style}]{cap.status}[/]: {safe(cap.detail)}"
        for i, imp in enumerate(shown(by_group[cap.name])):
            name = imp.name if imp.capability != "custom" else f"{imp.module}.{imp.name}"
            what = safe(imp.explanation)
            if imp.problem:
                what += f" [red]({safe(imp.problem)})[/]"
            first = i == 0
            table.add_row(
                cap.title if first else "", status if first else "", safe_name(name), what
            )
        more(table, by_group[cap.name], "imports")
    console.print()
    console.print(table)


def _exports(console: Any, report: Any) -> None:
    from rich.table import Table

    exports = report.facts.exports
    if not exports:
        console.print("\n[bold]exports[/]: none")
        return
    table = Table(title="exports", title_justify="left")
    for column in ("name", "kind", "signature"):
        table.add_column(column, overflow="fold")
    from ...wasm.model import signature_text

    for exp in shown(exports):
        sig = signature_text(exp.type) if exp.type is not None else f"{exp.kind} {exp.index}"
        table.add_row(safe_name(exp.name), exp.kind, sig)
    more(table, exports, "exports")
    console.print()
    console.print(table)


def _layout(console: Any, report: Any) -> None:
    from rich.table import Table

    from ...audit.report import start_export
    from ...units import format_size

    facts = report.facts
    table = Table(title="memories, tables, globals, start, data", title_justify="left")
    for column in ("item", "declared", "notes"):
        table.add_column(column, overflow="fold")
    reserves = _reserves(report.policy)
    for mem in shown(facts.memories):
        lim = mem.limits
        top = "no maximum" if lim.max is None else format_size(lim.max * 65536)
        notes = [n for n, on in (("imported", mem.imported), ("shared", lim.shared)) if on]
        notes += ["memory64"] if lim.memory64 else []
        notes += [] if mem.imported else [reserves]
        declared = f"{format_size(lim.min * 65536)} initial, {top}"
        table.add_row(f"memory {mem.index}", declared, ", ".join(notes))
    more(table, facts.memories, "memories")
    for t in shown(facts.tables):
        top = "no maximum" if t.limits.max is None else f"max {t.limits.max:,}"
        declared = f"{t.elem}, {t.limits.min:,} initial, {top}"
        table.add_row(f"table {t.index}", declared, "imported" if t.imported else "")
    more(table, facts.tables, "tables")
    for g in shown(facts.globals):
        kind = ("mutable " if g.mutable else "") + g.type
        table.add_row(f"global {g.index}", kind, "imported" if g.imported else "")
    more(table, facts.globals, "globals")
    if facts.start is not None:
        name = start_export(facts)
        note = f"exported as {safe_name(name)}" if name else "runs at instantiation"
        table.add_row("start", f"function {facts.start}", note)
    sizes = facts.data_segments
    if sizes:
        declared = f"{len(sizes)} segments, {format_size(sum(sizes))}"
        copied = report.policy.values["runtime.memory_init"] == "copy"
        how = (
            "copied into each instance (memory_init = copy: 1 fuel per byte)"
            if copied
            else "mapped copy-on-write"
        )
        table.add_row("data", declared, f"largest {format_size(max(sizes))}; {how}")
    if table.row_count:
        console.print()
        console.print(table)


def _reserves(policy: Any) -> str:
    """What each instance of a memory reserves on wasmtime under the policy's layout."""
    from ...backends.reserve import GUARD, reservation
    from ...units import format_size

    layout = policy.values["runtime.memory_layout"]
    reserved = reservation(layout, policy.values["limits.memory"])
    if reserved is None:
        return "reserves 4 GiB + 64 MiB of address space per instance (fast)"
    return (
        f"reserves {format_size(reserved)} + {format_size(2 * GUARD)} of address space "
        "per instance (dense)"
    )


def _findings(console: Any, report: Any) -> None:
    from rich.table import Table

    if not report.findings:
        console.print("\n[bold]findings[/]: none")
        return
    counts = ", ".join(f"{n} {sev}" for sev, n in reversed(report.counts.items()) if n)
    table = Table(title=f"findings ({counts})", title_justify="left", show_lines=True)
    for column in ("severity", "rule", "finding", "fix"):
        table.add_column(column, overflow="fold")
    for f in report.findings:
        sev = f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/]"
        text = f"[bold]{f.title}[/]\n{safe(f.message)}"
        table.add_row(sev, f.rule, text, safe(f.fix))
    console.print()
    console.print(table)


def _risk(console: Any, report: Any) -> None:
    risk = report.risk
    console.print()
    console.print(f"[bold]risk score {risk.score}/100[/] ({risk.level})")
    for rule, subject, points in risk.items:
        console.print(f"  +{points:<3} {rule}  {safe(subject)}")
    console.print(f"  = {risk.formula}")
    console.print(
        "  [dim]each finding adds its rule's points (what the module could reach); "
        "findings that only predict a failure add none[/]"
    )


# ---------------------------------------------------------------------------- components


def render_component(console: Any, report: Any) -> None:
    """A component's report: its WIT world's imports as capabilities, its exports and
    the core modules inside, then the same findings and risk as for a module."""
    from rich.table import Table

    facts = report.facts
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    built = "wasm32-wasi module + WASI preview1 adapter" if facts.adapted else "native component"
    rows = [
        ("component", safe(report.path)),
        ("size", f"{facts.size:,} bytes"),
        ("sha256", facts.sha256),
        ("policy", safe(report.policy.source or "defaults (no sandbox.toml)")),
        ("built as", built),
        ("inside", _counted(len(report.core_modules), "core module") + ", "
                   + _counted(facts.layout.core_instances, "core instance")),
    ]  # fmt: skip
    for key, value in rows:
        grid.add_row(key, value)
    console.print("[bold]wasmsbx audit[/]")
    console.print(grid)
    table = Table(title="imports by capability", title_justify="left")
    table.add_column("capability")
    table.add_column("under this policy")
    table.add_column("interfaces", overflow="fold")
    for cap in report.capabilities:
        status = f"[{STATUS_STYLE[cap.status]}]{cap.status}[/]: {safe(cap.detail)}"
        uses = [i for i in report.imports if i.capability == cap.name]
        names = "\n".join(safe_name(i.name) for i in uses)
        what = uses[0].explanation + (f" [red]({uses[0].problem})[/]" if uses[0].problem else "")
        table.add_row(f"{cap.title}\n[dim]{what}[/]", status, names)
    console.print()
    console.print(table if report.imports else "[bold]imports[/]: none")
    exports = Table(title="exports (WIT)", title_justify="left")
    exports.add_column("function")
    exports.add_column("signature")
    for exp in report.exports:
        exports.add_row(safe_name(exp.name), safe(str(exp.sig)))
    console.print()
    console.print(exports if report.exports else "[bold]exports[/]: no functions")
    _findings(console, report)
    _risk(console, report)


def _counted(n: int, noun: str) -> str:
    """``1 core module``, ``2 core modules``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
