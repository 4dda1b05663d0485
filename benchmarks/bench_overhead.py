"""Measurement overhead of ``wasmsbx bench``'s call phase against a raw wasmtime-py loop.

    .venv/bin/python benchmarks/bench_overhead.py [--rounds 15] [--json]

For each function, rounds alternate between:

- raw: a plain ``wasmtime.Engine()``/``Store``/``Instance`` and the loop
  ``for _ in range(n): func(store, *args)`` timed with perf_counter (median of samples);
- bench: ``wasmsbx.bench.run_case`` with only the ``call`` phase, default policy
  (median per call, as the report gives it);
- raw-sbx: the same raw loop over the Func and Store of the instance wasmsbx built (its
  engine config and store limits), which separates the sandbox's own cost (epoch
  interruption, limiter) from the cost of measuring.

Each round gives a ratio bench / raw; the table shows the median ratio over the rounds,
so a busy machine's drift affects both sides alike. Requirement: within 5 %.
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

from wasmsbx import bench  # noqa: E402
from wasmsbx.backends import get  # noqa: E402
from wasmsbx.backends.base import EngineOptions  # noqa: E402
from wasmsbx.policy import defaults  # noqa: E402
from wasmsbx.runner import limits_from  # noqa: E402

CASES = (
    ("examples/add.wat", "add", (5, 3)),
    ("examples/add.wat", "hypot", (3.0, 4.0)),
    ("examples/add.wat", "divmod", (17, 5)),
    ("examples/loop.wat", "count", (1000,)),
)
SAMPLES = 20


def raw_median(func, store, args: tuple, calls: int) -> float:
    """Median seconds per call of the plain loop, SAMPLES samples of ``calls`` calls."""
    values = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        for _ in range(calls):
            func(store, *args)
        values.append((time.perf_counter() - started) / calls)
    return statistics.median(values)


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


def bench_median(path: Path, name: str, args: tuple) -> tuple:
    settings = bench.Settings(iterations=SAMPLES, warmup=1, budget=30.0, phases=("call",))
    case = bench.Case(f"{path.name}:{name}", str(path), name, list(args), settings=settings)
    result = bench.run_case(case).results[0]
    if result.status != "ok":
        raise SystemExit(f"bench failed: {result.error}")
    stats = result.phases["call"].stats
    return stats.median, stats.ops_per_sample


def measure(module: str, name: str, args: tuple, rounds: int) -> dict:
    path = ROOT / module
    raw_func, raw_store = plain_instance(path, name)
    sbx_func, sbx_store, keep = sandbox_instance(path, name)
    ratios, sbx_ratios, raws, benches = [], [], [], []
    for _ in range(rounds):
        b, calls = bench_median(path, name, args)
        r = raw_median(raw_func, raw_store, args, calls)
        s = raw_median(sbx_func, sbx_store, args, calls)
        raws.append(r)
        benches.append(b)
        ratios.append(b / r)
        sbx_ratios.append(b / s)
    del keep
    return {
        "function": f"{module}:{name}{args}",
        "calls_per_sample": calls,
        "raw_median_s": statistics.median(raws),
        "bench_median_s": statistics.median(benches),
        "bench_over_raw": statistics.median(ratios),
        "bench_over_raw_sandbox_config": statistics.median(sbx_ratios),
        "rounds": rounds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    rows = [measure(m, f, a, opts.rounds) for m, f, a in CASES]
    if opts.json:
        print(json.dumps({"python": sys.version.split()[0], "rows": rows}, indent=2))
        return 0
    print(f"wasmtime-py {wasmtime.__version__ if hasattr(wasmtime, '__version__') else ''}")
    header = (
        f"{'function':42} {'raw/call':>10} {'bench/call':>11} {'bench/raw':>10} {'vs raw-sbx':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['function']:42} {row['raw_median_s'] * 1e6:8.2f}us "
            f"{row['bench_median_s'] * 1e6:9.2f}us {(row['bench_over_raw'] - 1) * 100:+9.1f}% "
            f"{(row['bench_over_raw_sandbox_config'] - 1) * 100:+10.1f}%"
        )
    print(f"(median over {opts.rounds} interleaved rounds; requirement: bench/raw within +5%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
