#!/usr/bin/env python3
"""Whole-process time of `wasmsbx run examples/add.wat add 5 3` vs a bare wasmtime-py script.

Target (issue #2): wasmsbx <= 1.15x the bare script. Both run on this interpreter, with
bytecode compiled (as `pip install` leaves it), interleaved so machine noise hits both
alike; medians are compared.

    python benchmarks/startup.py [--runs 60] [--json] [--instructions]

--instructions also counts CPU instructions with valgrind's callgrind (if installed):
unlike wall time, the count does not move with the machine's load.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "examples" / "add.wat"

BARE = """\
import sys
import wasmtime
engine = wasmtime.Engine()
store = wasmtime.Store(engine)
module = wasmtime.Module.from_file(engine, sys.argv[1])
instance = wasmtime.Instance(store, module, [])
print(instance.exports(store)["add"](store, 5, 3))
"""
# What the `wasmsbx` console script does.
LAUNCHER = "from wasmsbx.cli import entry\nentry()\n"


def once(cmd: list, env: dict) -> tuple:
    """(wall seconds, CPU seconds user+sys) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or proc.stdout.strip() != b"8":
        raise SystemExit(f"{cmd} failed: {proc.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def instructions(cmd: list, env: dict) -> int:
    """Instructions executed by the whole process, counted by callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", *cmd],
            env={**env, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
        )
    for line in proc.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise SystemExit(f"callgrind failed: {proc.stderr[-500:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--instructions", action="store_true")
    args = parser.parse_args()
    compileall.compile_dir(str(ROOT / "wasmsbx"), quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        bare_py = Path(tmp) / "bare.py"
        bare_py.write_text(BARE)
        launcher = Path(tmp) / "wasmsbx_launcher.py"
        launcher.write_text(LAUNCHER)
        cmds = {
            "bare wasmtime-py": [sys.executable, str(bare_py), str(MODULE)],
            "wasmsbx run": [sys.executable, str(launcher), "run", str(MODULE), "add", "5", "3"],
        }
        counts = {}
        if args.instructions:
            for name, cmd in cmds.items():
                counts[name] = statistics.median(instructions(cmd, env) for _ in range(3))
        samples: dict = {name: [] for name in cmds}
        for _ in range(5):  # warm the page cache
            for cmd in cmds.values():
                once(cmd, env)
        for _ in range(args.runs):
            for name, cmd in cmds.items():
                samples[name].append(once(cmd, env))
    wall = {name: [w for w, _ in s] for name, s in samples.items()}
    cpu = {name: [c for _, c in s] for name, s in samples.items()}
    med = {name: statistics.median(s) for name, s in wall.items()}
    med_cpu = {name: statistics.median(s) for name, s in cpu.items()}
    ratio = med["wasmsbx run"] / med["bare wasmtime-py"]
    ratio_cpu = med_cpu["wasmsbx run"] / med_cpu["bare wasmtime-py"]
    report = {
        "runs": args.runs,
        "python": sys.version.split()[0],
        "median_ms": {k: round(v * 1000, 2) for k, v in med.items()},
        "mean_ms": {k: round(statistics.mean(s) * 1000, 2) for k, s in wall.items()},
        "stdev_ms": {k: round(statistics.stdev(s) * 1000, 2) for k, s in wall.items()},
        "cpu_median_ms": {k: round(v * 1000, 2) for k, v in med_cpu.items()},
        "ratio_of_medians": round(ratio, 3),
        "cpu_ratio_of_medians": round(ratio_cpu, 3),
        "instructions": counts,
        "instruction_ratio": (
            round(counts["wasmsbx run"] / counts["bare wasmtime-py"], 3) if counts else None
        ),
        "target": 1.15,
        "meets_target": ratio <= 1.15,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'command':<20} {'median ms':>10} {'mean ms':>9} {'stdev ms':>9} {'CPU ms':>8}")
    for name in cmds:
        print(
            f"{name:<20} {report['median_ms'][name]:>10.2f} {report['mean_ms'][name]:>9.2f} "
            f"{report['stdev_ms'][name]:>9.2f} {report['cpu_median_ms'][name]:>8.2f}"
        )
    if counts:
        print(
            f"instructions (callgrind): bare {counts['bare wasmtime-py']:,.0f}, wasmsbx "
            f"{counts['wasmsbx run']:,.0f}, ratio {report['instruction_ratio']:.3f}x"
        )
    print(
        f"ratio (wall medians): {ratio:.3f}x  (CPU-time medians: {ratio_cpu:.3f}x)  "
        f"target <= 1.15x: {'met' if report['meets_target'] else 'NOT met'}  "
        f"({args.runs} runs each)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
