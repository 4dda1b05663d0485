#!/usr/bin/env python3
"""How long `wasmsbx audit` takes: the in-process audit per module, and the whole CLI.

For each module: median time of `audit_file` (read, decode, validate, check) in this
process, of the JSON and SARIF views, of the suggested policy, and the median wall time
of a whole `wasmsbx audit MODULE --json` process.

    python benchmarks/audit.py [--runs 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = [
    ROOT / "examples" / "add.wat",
    ROOT / "examples" / "wasi" / "hello.wasm",
    ROOT / "tests" / "guests" / "fsprobe.wasm",
]


def median_seconds(func, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(module: Path, runs: int) -> dict:
    from wasmsbx import policy
    from wasmsbx.audit.report import audit_file, suggest_policy

    defaults = policy.defaults()
    report = audit_file(module, defaults)  # warm: imports, the validating engine
    cli = [sys.executable, "-m", "wasmsbx", "audit", str(module), "--json"]
    return {
        "module": module.name,
        "bytes": report.facts.size,
        "audit_ms": 1000 * median_seconds(lambda: audit_file(module, defaults), runs),
        "json_ms": 1000 * median_seconds(lambda: json.dumps(report.to_dict()), runs),
        "sarif_ms": 1000 * median_seconds(lambda: json.dumps(report.to_sarif()), runs),
        "suggest_ms": 1000 * median_seconds(lambda: suggest_policy(report).to_toml(), runs),
        "cli_ms": 1000
        * median_seconds(lambda: subprocess.run(cli, capture_output=True, check=True), 5),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [measure(m, args.runs) for m in MODULES]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = ("module", "bytes", "audit_ms", "json_ms", "sarif_ms", "suggest_ms", "cli_ms")
    print(" ".join(f"{h:>12}" for h in head))
    for row in rows:
        cells = [row["module"], str(row["bytes"])] + [f"{row[h]:.2f}" for h in head[2:]]
        print(" ".join(f"{c:>12}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
