"""Measurement overhead of ``wasmsbx bench``'s call phase against a raw wasmtime-py loop.

    .venv/bin/python benchmarks/bench_overhead.py [--rounds 15] [--json]

For each function, rounds alternate between:

- raw: a plain ``wasmtime.Engine()``/``Store``/``Instance`` and the loop
  ``for _ in range(n): func(store, *args)`` timed with perf_counter (median of samples);
- bench: ``wasmsbx.bench.measure.run_case`` with only the ``call`` phase, default policy
  (median per call, as the report gives it);
- raw-sbx: the same raw loop over the Func and Store of the instance wasmsbx built (its
  engine config and store limits), which separates the sandbox's own cost (epoch
  interruption, limiter) from the cost of measuring.

Rounds alternate which side goes first. Each round gives bench / raw ratios of the
medians and of the fastest samples; the table shows the median of each over the rounds,
so a busy machine's drift affects both sides alike, and the fastest bench sample over the
fastest raw sample overall (the least disturbed estimate of each loop's real cost).
Requirement: within 5 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasmsbx.backends import get  # noqa: E402
from wasmsbx.backends.base import EngineOptions  # noqa: E402
from wasmsbx.bench import measure as bench  # noqa: E402
from wasmsbx.policy import defaults  # noqa: E402
from wasmsbx.runner.sandbox import limits_from  # noqa: E402

CASES = (
    ("examples/add.wat", "add", (5, 3)),
    ("examples/add.wat", "hypot", (3.0, 4.0)),
    ("examples/add.wat", "divmod", (17, 5)),
    ("examples/loop.wat", "count", (1000,)),
)
SAMPLES = 20


def raw_samples(func, store, args: tuple, calls: int) -> list:
    """SAMPLES samples of the plain loop, seconds per call."""
    values = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        for _ in range(calls):
            func(store, *args)
        values.append((time.perf_counter() - started) / calls)
    return values


def plain_instance(path: Path, name: str):
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module(engine, wasmtime.wat2wasm(path.read_text()))
    return wasmtime.Instance(store, module, []).exports(store)[name], store


def sandbox_instance(path: Path, name: str):
    engine = get("wasmtime").engine(EngineOptions())
    module = engine.compile(wasmtime.wat2wasm(path.read_text()))
    instance = engine.instantiate(module, limits_from(defaults()))
    return instance.func(name), instance.store, instance


def bench_samples(path: Path, name: str, args: tuple) -> tuple:
    settings = bench.Settings(iterations=SAMPLES, warmup=1, budget=30.0, phases=("call",))
    case = bench.Case(f"{path.name}:{name}", str(path), name, list(args), settings=settings)
    result = bench.run_case(case).results[0]
    if result.status != "ok":
        raise SystemExit(f"bench failed: {result.error}")
    stats = result.phases["call"].stats
    return stats.values, stats.ops_per_sample


def measure(module: str, name: str, args: tuple, rounds: int) -> dict:
    """Rounds alternate which side goes first; each gives median and min ratios."""
    path = ROOT / module
    raw_func, raw_store = plain_instance(path, name)
    sbx_func, sbx_store, keep = sandbox_instance(path, name)
    med, low, sbx, all_raw, all_bench = [], [], [], [], []
    calls = 1
    for i in range(rounds):
        if i % 2:
            r = raw_samples(raw_func, raw_store, args, calls)
            b, calls = bench_samples(path, name, args)
        else:
            b, calls = bench_samples(path, name, args)
            r = raw_samples(raw_func, raw_store, args, calls)
        s = raw_samples(sbx_func, sbx_store, args, calls)
        med.append(statistics.median(b) / statistics.median(r))
        low.append(min(b) / min(r))
        sbx.append(min(b) / min(s))
        all_raw += r
        all_bench += b
    del keep
    return {
        "function": f"{module}:{name}{args}",
        "calls_per_sample": calls,
        "raw_min_s": min(all_raw),
        "bench_min_s": min(all_bench),
        "raw_median_s": statistics.median(all_raw),
        "bench_median_s": statistics.median(all_bench),
        "ratio_of_medians": statistics.median(med),
        "ratio_of_mins": statistics.median(low),
        "ratio_of_mins_vs_sandbox_config": statistics.median(sbx),
        "overall_min_ratio": min(all_bench) / min(all_raw),
        "rounds": rounds,
    }


def pct(ratio: float, width: int = 8) -> str:
    return f"{(ratio - 1) * 100:+{width - 1}.1f}%"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    rows = [measure(m, f, a, opts.rounds) for m, f, a in CASES]
    if opts.json:
        print(json.dumps({"python": sys.version.split()[0], "rows": rows}, indent=2))
        return 0
    from importlib.metadata import version

    print(
        f"wasmtime-py {version('wasmtime')}, Python {sys.version.split()[0]}, {opts.rounds} rounds"
    )
    header = (
        f"{'function':34} {'raw min':>9} {'bench min':>10} {'min/min':>8} {'med/med':>8} "
        f"{'overall':>8} {'vs sbx':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['function']:34} {row['raw_min_s'] * 1e6:7.2f}us "
            f"{row['bench_min_s'] * 1e6:8.2f}us "
            f"{pct(row['ratio_of_mins'])} {pct(row['ratio_of_medians'])} "
            f"{pct(row['overall_min_ratio'])} {pct(row['ratio_of_mins_vs_sandbox_config'], 7)}"
        )
    print(
        "min/min, med/med: median over rounds of bench/raw per round; overall: fastest bench "
        "sample / fastest raw sample;\nvs sbx: bench against the raw loop on wasmsbx's own "
        "engine and store. Requirement: bench within +5% of raw."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
