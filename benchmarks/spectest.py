"""Drive the WebAssembly spec testsuite through wasmsbx's PUBLIC Python API.

    python benchmarks/spectest.py PATH [--backend wasmtime] [--only NAME ...] [--json]

PATH is a checkout of the spec testsuite (a folder of .wast files, e.g.
github.com/WebAssembly/testsuite; it is not shipped with wasmsbx) or one .wast file.
Each file is converted with wabt's ``wast2json`` (scripts/install-toolchain installs
Debian's wabt), then every command runs through ``wasmsbx.Group`` (one per file, so
``register`` links modules), ``Sandbox.call``/``globals`` and the documented errors:

- module, register, action (invoke, get), assert_return (NaN canonical/arithmetic, v128
  lanes, references, ``either``), assert_trap, assert_exhaustion, assert_invalid,
  assert_malformed, assert_unlinkable, assert_uninstantiable.
- The ``spectest`` host module (print functions, globals, table, memory) is granted as
  host imports, as the spec's reference interpreter defines it.

Each command is counted as passed, failed, not expressible (the public API cannot state
it on this backend, e.g. host imports on wasmer) or unsupported (the backend lacks a
proposal the module uses, e.g. memory64 on wasmer); the reasons are counted too. After a
module or register that could not be stated, a later failure in the same file counts
as not expressible (the script's state is no longer the spec's). Files wast2json cannot
convert (newer proposals than the installed wabt knows) are listed apart and are not
commands.
Exit status: 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import wasmsbx
from wasmsbx import errors
from wasmsbx.values import F32, F64, V128, ExternRef, FuncRef, unsigned

SPECTEST_PRINT = {
    "print": [],
    "print_i32": ["i32"],
    "print_i64": ["i64"],
    "print_f32": ["f32"],
    "print_f64": ["f64"],
    "print_i32_f32": ["i32", "f32"],
    "print_f64_f64": ["f64", "f64"],
}


class NotExpressible(Exception):
    """The command cannot be stated through the public API on this backend."""


class Inherited(Exception):
    """A command on a module that could not be loaded: counted as that module was."""


class HostRef:
    """The spec's ``ref.extern N``: a host object identified by N."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostRef) and other.n == self.n

    def __hash__(self) -> int:
        return hash(self.n)


def spectest_imports() -> dict:
    """The spec harness's ``spectest`` module, as wasmsbx host imports."""
    funcs = {
        name: wasmsbx.func(lambda *a: None, params=params, results=[])
        for name, params in SPECTEST_PRINT.items()
    }
    return {
        "spectest": {
            **funcs,
            "global_i32": wasmsbx.Global("i32", 666),
            "global_i64": wasmsbx.Global("i64", 666),
            "global_f32": wasmsbx.Global("f32", F32.from_bits(0x4426A666)),  # 666.6
            "global_f64": wasmsbx.Global("f64", F64.from_bits(0x4084D4CCCCCCCCCD)),
            "table": wasmsbx.Table("funcref", 10, 20),
            "memory": wasmsbx.Memory(1, 2),
        }
    }


# ---------------------------------------------------------------------------- values


def arg_value(spec: dict) -> Any:
    kind, value = spec["type"], spec.get("value")
    if kind in ("i32", "i64"):
        return int(value)  # unsigned text; the API takes either range
    if kind == "f32":
        return F32.from_bits(int(value))
    if kind == "f64":
        return F64.from_bits(int(value))
    if kind == "v128":
        return v128_from_lanes(spec["lane_type"], value)
    if kind in ("externref", "funcref") or kind.endswith("ref"):
        if value == "null":
            return None
        if kind == "externref":
            return ExternRef(HostRef(int(value)))
        raise NotExpressible(f"{kind} argument {value}")
    raise NotExpressible(f"argument type {kind}")


def v128_from_lanes(lane_type: str, lanes: list) -> V128:
    width = {"i8": 8, "i16": 16, "i32": 32, "i64": 64, "f32": 32, "f64": 64}[lane_type]
    out = 0
    for i, lane in enumerate(lanes):
        out |= (int(lane) % 2**width) << (i * width)
    return V128(out)


def nan_ok(bits: int, width: int, want: str) -> bool:
    mantissa = 23 if width == 32 else 52
    exp = ((1 << (width - 1 - mantissa)) - 1) << mantissa
    quiet = 1 << (mantissa - 1)
    body = bits & ((1 << (width - 1)) - 1)
    if body & exp != exp or not body & ((1 << mantissa) - 1):
        return False
    if want == "nan:canonical":
        return body & ((1 << mantissa) - 1) == quiet
    return bool(body & quiet)  # nan:arithmetic


def float_ok(got: Any, width: int, want: str) -> bool:
    if not isinstance(got, (F32, F64)):
        return False
    if want.startswith("nan:"):
        return nan_ok(got.bits, width, want)
    return got.bits == int(want)


def matches(got: Any, spec: dict) -> bool:
    kind, want = spec["type"], spec.get("value")
    if kind == "either":
        return any(matches(got, alt) for alt in spec["values"])
    if kind in ("i32", "i64"):
        return isinstance(got, int) and unsigned(got, kind) == int(want)
    if kind in ("f32", "f64"):
        return float_ok(got, 32 if kind == "f32" else 64, want)
    if kind == "v128":
        if not isinstance(got, V128):
            return False
        lane = spec["lane_type"]
        width = int(lane[1:])
        for i, w in enumerate(want):
            bits = (int(got) >> (i * width)) % 2**width
            if lane.startswith("f"):
                ok = nan_ok(bits, width, w) if w.startswith("nan:") else bits == int(w)
            else:
                ok = bits == int(w) % 2**width
            if not ok:
                return False
        return True
    if kind == "externref":
        if want == "null":
            return got is None
        return got == HostRef(int(want))
    if kind == "funcref":
        if want == "null":
            return got is None
        return isinstance(got, FuncRef)
    if kind.endswith("ref"):
        raise NotExpressible(f"result type {kind}")
    raise NotExpressible(f"result type {kind}")


# ---------------------------------------------------------------------------- the driver


class Script:
    """One converted .wast file, run in one wasmsbx.Group."""

    def __init__(self, folder: Path, policy: Any, backend: Optional[str]) -> None:
        self.folder = folder
        self.policy = policy
        self.backend = backend
        self.group = wasmsbx.Group(policy, backend=backend)
        self.named: dict = {}
        self.current: Any = None
        self.imports = spectest_imports()
        # Set once a module or register could not be stated: the script's later state
        # (shared memories, tables, registered names) is then not the spec's.
        self.tainted: Optional[str] = None
        self.lost: dict = {}  # registered names whose module could not be loaded -> category

    def lost_import(self, outcome: str) -> str:
        """A module that fails to link only because it imports from a name whose module
        could not be loaded counts as that module did (unsupported, not expressible)."""
        if outcome.startswith("failed: LinkError"):
            for name, category in self.lost.items():
                if f" {name}." in outcome and category != "failed":
                    return f"{category}: imports from {name}, which could not be loaded"
        return outcome

    def renew(self) -> None:
        self.group.close()
        self.group = wasmsbx.Group(self.policy, backend=self.backend)
        self.named.clear()
        self.current = None

    def add(self, filename: str) -> Any:
        data = (self.folder / filename).read_bytes()
        return self.group.add(data, imports=self.imports)

    def target(self, action: dict) -> Any:
        name = action.get("module")
        box = self.named.get(name) if name else self.current
        if box is None:
            raise Inherited("action on a module that could not be loaded")
        return box

    def act(self, action: dict) -> list:
        box = self.target(action)
        if action["type"] == "get":
            return [box.globals[action["field"]]]
        args = [arg_value(a) for a in action.get("args", [])]
        # invoke(): the results as a list (call() gives None for "no result" and for
        # one null reference alike)
        return list(box.invoke(action["field"], args).values)

    def run(self, cmd: dict) -> str:
        kind = cmd["type"]
        if kind == "module":
            self.current = None
            self.current = self.add(cmd["filename"])
            if cmd.get("name"):
                self.named[cmd["name"]] = self.current
            return "passed"
        if kind == "register":
            box = self.named.get(cmd.get("name")) if cmd.get("name") else self.current
            if box is None:
                raise Inherited("register of a module that could not be loaded")
            self.group.register(cmd["as"], box)
            return "passed"
        if kind == "action":
            self.act(cmd["action"])
            return "passed"
        if kind == "assert_return":
            got = self.act(cmd["action"])
            if "either" in cmd:  # relaxed SIMD: any one of the results is right
                if len(got) == 1 and any(matches(got[0], alt) for alt in cmd["either"]):
                    return "passed"
                return f"failed: got {got!r}, want one of {cmd['either']!r}"
            want = cmd["expected"]
            if len(got) == len(want) and all(matches(g, w) for g, w in zip(got, want)):
                return "passed"
            return f"failed: got {got!r}, want {want!r}"
        if kind in ("assert_trap", "assert_exhaustion"):
            try:
                self.act(cmd["action"])
            except errors.TrapError:
                return "passed"
            return "failed: no trap"
        if kind in ("assert_invalid", "assert_malformed"):
            return self.refused(cmd, errors.ModuleError)
        if kind == "assert_unlinkable":
            return self.refused(cmd, errors.LinkError)
        if kind == "assert_uninstantiable":
            return self.refused(cmd, errors.TrapError)
        raise NotExpressible(f"command {kind}")

    def refused(self, cmd: dict, expected: type) -> str:
        if cmd.get("module_type") == "text" and cmd["type"] == "assert_malformed":
            pass  # the .wat text goes through wasmsbx's own text reader
        try:
            self.add(cmd["filename"])
        except expected:
            return "passed"
        except errors.BackendUnavailable:
            raise
        except errors.WasmsbxError as exc:
            return f"failed: {type(exc).__name__}: {exc}"
        return "failed: accepted"

    def close(self) -> None:
        self.group.close()


POLICY = """\
# One Group holds every module of a .wast file: many instances, the spec's own sizes.
[limits]
instances = 1000
memory = "64TiB"
table_elements = 4294967295
timeout = "60s"
"""


def spec_policy(folder: Path) -> Any:
    path = folder / "sandbox.toml"
    path.write_text(POLICY)
    return wasmsbx.load_policy(path)


def convert(wast: Path, out: Path) -> Optional[Path]:
    """wast2json into ``out``; None when wabt cannot read the file."""
    target = out / (wast.stem + ".json")
    for flags in ([], ["--enable-all"]):
        proc = subprocess.run(
            ["wast2json", *flags, str(wast), "-o", str(target)],
            capture_output=True,
            cwd=out,
        )
        if proc.returncode == 0:
            return target
    return None


def run_file(wast: Path, backend: Optional[str], counts: dict, reasons: dict, show: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="wasmsbx-spec-") as tmp:
        converted = convert(wast, Path(tmp))
        if converted is None:
            return False
        data = json.loads(converted.read_text())
        policy = spec_policy(Path(tmp))
        script = Script(Path(tmp), policy, backend)
        try:
            for cmd in data["commands"]:
                try:
                    outcome = script.run(cmd)
                except NotExpressible as exc:
                    outcome = f"not expressible: {exc}"
                except Inherited as exc:
                    # as its module: unsupported, not expressible, or failed
                    category = (script.tainted or "failed:").split(":", 1)[0]
                    outcome = f"{category}: {exc}"
                except errors.BackendUnavailable as exc:
                    # A proposal the runtime lacks is the backend's gap, not the API's.
                    lacks = "it uses" in str(exc) or "no backend can run" in str(exc)
                    outcome = f"{'unsupported' if lacks else 'not expressible'}: {exc}"
                except errors.WasmsbxError as exc:
                    outcome = f"failed: {type(exc).__name__}: {exc}"
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # noqa: BLE001 - a bug (or a runtime's panic)
                    outcome = f"failed: crash {type(exc).__name__}: {exc}"
                    script.renew()  # a runtime that panicked may be poisoned: a new group
                if cmd["type"] in ("module", "register") and not outcome.startswith("passed"):
                    outcome = script.lost_import(outcome)
                    script.tainted = outcome
                if cmd["type"] == "register" and not outcome.startswith("passed"):
                    script.lost[cmd["as"]] = outcome.split(":", 1)[0]
                if (
                    outcome.startswith("failed")
                    and (script.tainted or "").startswith(("not", "unsup"))
                    and cmd["type"] != "module"
                ):
                    category = (script.tainted or "").split(":", 1)[0]
                    outcome = f"{category}: depends on a module that could not be loaded"
                key = outcome.split(":", 1)[0]
                counts[key] += 1
                if key != "passed":
                    reason = outcome.split(":", 1)[1].strip()[:90] if ":" in outcome else ""
                    reasons[key][reason.split(" got ")[0][:60]] += 1
                    if key == "failed" and show > 0:
                        print(f"  {wast.name}:{cmd.get('line')}: {cmd['type']}: {outcome[:300]}")
        finally:
            script.close()
    return True


def run_isolated(files: list, args: Any, root: Path) -> tuple:
    """Each file in a child process: a runtime that panicked (wasmer poisons a global
    lock) or crashed then costs that file only, which is counted as failed."""
    from concurrent.futures import ThreadPoolExecutor

    counts: dict = collections.Counter()
    reasons: dict = collections.defaultdict(collections.Counter)
    unconverted = []

    def one(wast: Path) -> tuple:
        argv = [sys.executable, __file__, str(wast), "--worker"]
        argv += ["--backend", args.backend] if args.backend else []
        argv += ["--quiet"] if args.quiet else []
        proc = subprocess.run(argv, capture_output=True, text=True)
        return wast, proc

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for wast, proc in pool.map(one, files):
            lines = proc.stdout.strip().splitlines()
            for line in lines[:-1]:
                if line.startswith("  "):
                    print(line)
            try:
                data = json.loads(lines[-1])
            except (IndexError, ValueError):
                counts["failed"] += 1
                reasons["failed"][f"{wast.name}: the worker died (exit {proc.returncode})"] += 1
                continue
            if not data["converted"]:
                unconverted.append(wast.name)
            counts.update(data["counts"])
            for key, items in data["reasons"].items():
                reasons[key].update(items)
    return counts, reasons, unconverted


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="spec testsuite checkout (folder of .wast) or one .wast")
    parser.add_argument("--backend", default=None, help="wasmtime, wasmer[:compiler]")
    parser.add_argument("--only", nargs="*", default=None, help="file stems to run")
    parser.add_argument("--json", action="store_true", help="counts as JSON")
    parser.add_argument("--quiet", action="store_true", help="do not list failures")
    parser.add_argument("--jobs", type=int, default=2, help="files run at once (default 2)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if shutil.which("wast2json") is None:
        print("error: wast2json (wabt) is not installed; scripts/install-toolchain installs it")
        return 2
    root = Path(args.path).resolve()  # wast2json runs in a temporary folder
    files = [root] if root.is_file() else sorted(root.glob("*.wast"))
    if args.only:
        files = [f for f in files if f.stem in args.only]
    if args.worker:  # one file, in a process of its own (see run_isolated)
        counts: dict = collections.Counter()
        reasons: dict = collections.defaultdict(collections.Counter)
        converted = run_file(files[0], args.backend, counts, reasons, 0 if args.quiet else 1)
        print(json.dumps({"converted": converted, "counts": counts, "reasons": reasons}))
        return 0
    counts, reasons, unconverted = run_isolated(files, args, root)
    total = sum(counts.values())
    label = args.backend or "auto"
    report = {
        "backend": label,
        "python": sys.version.split()[0],
        "files": len(files),
        "unconverted_files": unconverted,
        "commands": total,
        "passed": counts["passed"],
        "failed": counts["failed"],
        "not_expressible": counts["not expressible"],
        "unsupported": counts["unsupported"],
        "not_expressible_reasons": dict(reasons["not expressible"].most_common(20)),
        "unsupported_reasons": dict(reasons["unsupported"].most_common(20)),
        "failed_reasons": dict(reasons["failed"].most_common(20)),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        share = 100.0 * counts["not expressible"] / total if total else 0.0
        print(f"backend {label} (Python {report['python']}): {len(files)} files, {total} commands")
        if unconverted:
            print(f"  not converted by wast2json ({len(unconverted)}): {' '.join(unconverted)}")
        for key in ("not_expressible", "unsupported"):
            for reason, n in report[f"{key}_reasons"].items():
                print(f"  {key.replace('_', ' ')} x{n}: {reason}")
        print(
            f"{counts['passed']} passed, {counts['failed']} failed, "
            f"{counts['not expressible']} not expressible ({share:.2f} %), "
            f"{counts['unsupported']} unsupported by the backend"
        )
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    os.environ.setdefault("WASMSBX_NO_CACHE", "1")
    sys.exit(main())
