#!/usr/bin/env python3
"""Save-to-result latency of `wasmsbx watch`: from writing the module to its run event.

Starts `wasmsbx watch add.wat add 5 3 --json` in a temporary directory, then saves a
changed module N times (waiting for each run event) and reports the latency from the
write to the run event's arrival, for native notifications and for --poll. The debounce
(quiet time that ends a burst of changes) is part of the latency by design.

    python benchmarks/watch_latency.py [--saves 20] [--debounce 100ms] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULE = """(module
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (i32.add (local.get 0) (local.get 1)) (i32.const {n}))))"""


def events(proc: subprocess.Popen, kind: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"watch ended: {proc.stderr.read().decode()}")
        event = json.loads(line)
        if event["event"] == kind:
            return event
    raise SystemExit(f"no {kind} event within {timeout}s")


def measure(saves: int, debounce: str, poll: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        mod = Path(tmp) / "add.wat"
        mod.write_text(MODULE.format(n=0))
        cmd = [sys.executable, "-m", "wasmsbx", "watch", "--json", "--debounce", debounce]
        cmd += ["--poll"] if poll else []
        cmd += ["add.wat", "add", "5", "3"]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            first = events(proc, "run")
            startup = time.perf_counter() - started
            latencies, runs = [], []
            for n in range(1, saves + 1):
                if poll:  # polling sees mtimes in whole seconds: date each save apart
                    time.sleep(max(0.0, 1.05 - (time.time() % 1)))
                written = time.perf_counter()
                mod.write_text(MODULE.format(n=n))
                run = events(proc, "run")
                latencies.append(time.perf_counter() - written)
                runs.append(run["duration_ms"])
                assert run["results"][0]["value"] == 8 + n, run
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    ms = [x * 1e3 for x in latencies]
    return {
        "mode": "poll" if poll else "notify",
        "debounce": debounce,
        "saves": saves,
        "startup_to_first_run_ms": round(startup * 1e3, 1),
        "first_run_ms": first["duration_ms"],
        "save_to_result_ms": {
            "median": round(statistics.median(ms), 1),
            "p90": round(sorted(ms)[int(0.9 * (len(ms) - 1))], 1),
            "min": round(min(ms), 1),
            "max": round(max(ms), 1),
        },
        "run_ms_median": round(statistics.median(runs), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=20)
    parser.add_argument("--debounce", default="100ms")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("NO_COLOR", "1")
    results = [
        measure(args.saves, args.debounce, poll=False),
        measure(max(3, args.saves // 4), args.debounce, poll=True),
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'mode':8} {'saves':>5} {'start->run':>11} {'median':>8} {'p90':>8} {'max':>8}  run")
    for r in results:
        lat = r["save_to_result_ms"]
        print(
            f"{r['mode']:8} {r['saves']:>5} {r['startup_to_first_run_ms']:>9.0f}ms "
            f"{lat['median']:>6.0f}ms {lat['p90']:>6.0f}ms {lat['max']:>6.0f}ms  "
            f"{r['run_ms_median']:.1f}ms"
        )
    print(f"(debounce {args.debounce}; latency = write -> run event, debounce included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
