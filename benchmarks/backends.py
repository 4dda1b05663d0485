"""Compile and run speed of each backend:compiler, and what wasmer's child process costs.

    .venv39/bin/python benchmarks/backends.py            # a table (wasmtime + wasmer)
    .venv39/bin/python benchmarks/backends.py --json     # the same as JSON
    .venv/bin/python benchmarks/backends.py --quick      # fewer repetitions

Measured with a CPU-bound C guest (benchmarks/guests/cpu.c, clang -O2, 21 KB):

* compile: wasmsbx's ``engine.compile`` of cpu.wasm (median of N, fresh each time);
* run: ``bench(ITER)`` on one instance (best of N): mandelbrot, a sieve, a matrix
  multiply, an xorshift mix and a quicksort;
* instantiate: ``engine.instantiate`` (for wasmer: fork + instantiate in the child);
* call: a call that does nothing (``kernel(99, 0)``), mean over many: the per-call
  overhead; for wasmer also the same call on an in-process ``wasmer.Instance``, so the
  difference is what the child process costs per call (raw inst: the same for
  instantiation; bare fork: fork + exit + waitpid of this process, the floor of it).

The compile_speed/run_speed scores printed at the end (0..1 on a log scale, fastest =
1.0, see speed_score) are what wasmsbx/backends/*_backend.py declare in their
Capabilities (rounded, over several runs: the host is 2 noisy shared vCPUs).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasmsbx import backends  # noqa: E402
from wasmsbx.backends.base import EngineOptions, Limits  # noqa: E402

GUEST = ROOT / "benchmarks" / "guests" / "cpu.wasm"
LIMITS = Limits(memory=256 << 20, timeout=120.0, table_elements=10000, instances=1)


def labels() -> list:
    out = []
    for name in backends.names():
        adapter = backends.get(name)
        for compiler in adapter.compilers:
            if adapter.probe_compiler(compiler).available:
                out.append((name, compiler))
    return out


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(name: str, compiler: str, wasm: bytes, reps: int, iterations: int, calls: int):
    adapter = backends.get(name)
    options = EngineOptions(compiler=compiler, memory_cap=LIMITS.memory, table_cap=10000)
    compile_times = []
    for _ in range(reps):
        engine = adapter.engine(options)  # a fresh engine: no in-memory reuse
        compile_times.append(timed(lambda e=engine: e.compile(wasm)))
    engine = adapter.engine(options)
    module = engine.compile(wasm)
    inst_times, instances = [], []
    for _ in range(reps):
        started = time.perf_counter()
        instances.append(engine.instantiate(module, LIMITS))
        inst_times.append(time.perf_counter() - started)
    instance = instances[-1]
    for other in instances[:-1]:
        other.close()
    instance.call("_initialize", [])
    checksum = instance.call("bench", [iterations])[0]
    run_times = [timed(lambda: instance.call("bench", [iterations])) for _ in range(reps)]
    instance.call("kernel", [99, 0])
    started = time.perf_counter()
    for _ in range(calls):
        instance.call("kernel", [99, 0])
    call_us = (time.perf_counter() - started) / calls * 1e6
    instance.close()
    row = {
        "backend": f"{name}:{compiler}",
        "compile_ms": statistics.median(compile_times) * 1e3,
        "run_ms": min(run_times) * 1e3,
        "instantiate_ms": statistics.median(inst_times) * 1e3,
        "call_us": call_us,
        "checksum": checksum,
    }
    if name == "wasmer":
        row.update(raw_wasmer(compiler, wasm, calls, reps))
    return row


def raw_wasmer(compiler: str, wasm: bytes, calls: int, reps: int) -> dict:
    """The same calls on an in-process wasmer Instance: no child, no limits."""
    import importlib

    import wasmer
    from wasmer import engine, wasi

    package = importlib.import_module(f"wasmer_compiler_{compiler}")
    store = wasmer.Store(engine.Universal(package.Compiler))
    module = wasmer.Module(store, wasm)
    version = wasi.get_version(module, strict=False)
    env = wasi.StateBuilder("cpu").finalize()
    inst_times = []
    for _ in range(reps):
        started = time.perf_counter()
        instance = wasmer.Instance(module, env.generate_import_object(store, version))
        inst_times.append(time.perf_counter() - started)
    instance.exports._initialize()
    kernel = instance.exports.kernel
    kernel(99, 0)
    started = time.perf_counter()
    for _ in range(calls):
        kernel(99, 0)
    return {
        "raw_call_us": (time.perf_counter() - started) / calls * 1e6,
        "raw_instantiate_ms": statistics.median(inst_times) * 1e3,
    }


# Speeds become 0..1 scores on a log scale: the fastest is 1.0, and a backend
# DECADES[kind] orders of magnitude slower is 0. Compile times differ by 100x and more
# (singlepass vs llvm), run times by a few x, hence different spans.
DECADES = {"compile": 3.0, "run": 1.0}


def speed_score(value: float, fastest: float, kind: str) -> float:
    return round(max(0.0, 1.0 - math.log10(value / fastest) / DECADES[kind]), 2)


def bare_fork_ms(reps: int) -> float:
    """fork + _exit + waitpid of this very process: the floor of a wasmer instantiate."""
    import os

    times = []
    for _ in range(reps):
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def scores(rows: list) -> dict:
    fastest_compile = min(r["compile_ms"] for r in rows)
    fastest_run = min(r["run_ms"] for r in rows)
    return {
        r["backend"]: {
            "compile_speed": speed_score(r["compile_ms"], fastest_compile, "compile"),
            "run_speed": speed_score(r["run_ms"], fastest_run, "run"),
        }
        for r in rows
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--iterations", type=int, default=4, help="bench(N) per run")
    args = parser.parse_args()
    reps, calls = (3, 500) if args.quick else (9, 5000)
    wasm = GUEST.read_bytes()
    rows = [measure(n, c, wasm, reps, args.iterations, calls) for n, c in labels()]
    sums = {r["checksum"] for r in rows}
    report = {
        "bare_fork_ms": bare_fork_ms(reps),
        "python": sys.version.split()[0],
        "guest": f"{GUEST.relative_to(ROOT)} ({len(wasm)} bytes)",
        "iterations": args.iterations,
        "rows": rows,
        "checksums_agree": len(sums) == 1,
        "scores": scores(rows),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"Python {report['python']}, guest {report['guest']}, bench({args.iterations})")
    head = ("backend", "compile ms", "run ms", "inst ms", "call µs", "raw call µs", "raw inst ms")
    print("{:<20}{:>12}{:>10}{:>10}{:>10}{:>13}{:>13}".format(*head))
    for r in rows:
        print(
            "{:<20}{:>12.1f}{:>10.1f}{:>10.3f}{:>10.1f}{:>13}{:>13}".format(
                r["backend"],
                r["compile_ms"],
                r["run_ms"],
                r["instantiate_ms"],
                r["call_us"],
                f"{r['raw_call_us']:.2f}" if "raw_call_us" in r else "-",
                f"{r['raw_instantiate_ms']:.3f}" if "raw_instantiate_ms" in r else "-",
            )
        )
    print(f"bare fork+exit+waitpid of this process: {report['bare_fork_ms']:.3f} ms")
    print("checksums agree" if report["checksums_agree"] else f"CHECKSUMS DIFFER: {sums}")
    print("scores (fastest = 1.0):")
    for label, s in report["scores"].items():
        print(
            f"  {label:<20} compile_speed {s['compile_speed']:.2f}  run_speed {s['run_speed']:.2f}"
        )
    return 0 if report["checksums_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
