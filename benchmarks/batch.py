"""Batch and streaming throughput: prints a table (or JSON with --json).

    .venv/bin/python benchmarks/batch.py                # 100,000 calls, 1 GB stream
    .venv/bin/python benchmarks/batch.py --calls 20000 --stream-mb 200 --json

Batch: the same 100,000 calls of examples/add.wat `add` made five ways —
  * `wasmsbx run add.wat add --batch in.jsonl -j 1` and `-j 2` (whole process: start-up,
    compile, reading JSONL, writing JSONL to /dev/null);
  * `Sandbox.batch` in this process (no start-up, no files);
  * a shell-style loop of `wasmsbx run add.wat add I 3` processes, timed over
    --process-runs runs and extrapolated to the full count;
  * a raw wasmtime-py loop (`func(store, i, 3)` on one instance: no parsing, no limits
    re-armed, no JSON): the floor set by wasmtime-py's per-call cost.
Each batch figure is the best of --repeat runs (the machine may be shared).

CPU-bound: --cpu-calls calls of examples/loop.wat `count 200000` (about 0.4 ms of guest
work each) with -j 1 and -j 2, where the workers' share dominates and -j scales.

Stream: --stream-mb MB (default 1000 = 1 GB) generated on the fly by a child process,
piped through `wasmsbx run examples/stream/upper.wasm --stream` into /dev/null; the
wasmsbx process's peak RSS comes from wait4(), and its own report gives the host buffer
high-water mark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADD = ROOT / "examples" / "add.wat"
LOOP = ROOT / "examples" / "loop.wat"
UPPER = ROOT / "examples" / "stream" / "upper.wasm"
WASMSBX = [sys.executable, "-m", "wasmsbx"]


def best(runs: int, func) -> float:
    return min(func() for _ in range(runs))


def timed_process(argv: list, stdin=None) -> float:
    started = time.perf_counter()
    subprocess.run(
        argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    return time.perf_counter() - started


def bench_cli_batch(path: Path, jobs: int, repeat: int, module=ADD, func="add") -> float:
    argv = [*WASMSBX, "run", str(module), func, "--batch", str(path), "-j", str(jobs)]
    return best(repeat, lambda: timed_process(argv))


def bench_api_batch(calls: int, repeat: int) -> float:
    sys.path.insert(0, str(ROOT))
    from wasmsbx.runner import Sandbox

    box = Sandbox(ADD)

    def once() -> float:
        started = time.perf_counter()
        for result in box.batch("add", ([i, 3] for i in range(calls))):
            assert result.ok
        return time.perf_counter() - started

    return best(repeat, once)


def bench_process_loop(runs: int) -> float:
    """Seconds per `wasmsbx run` process (mean over ``runs``)."""
    started = time.perf_counter()
    for i in range(runs):
        subprocess.run(
            [*WASMSBX, "run", str(ADD), "add", str(i), "3"],
            stdout=subprocess.DEVNULL,
            check=True,
        )
    return (time.perf_counter() - started) / runs


def bench_raw_wasmtime(calls: int, repeat: int) -> float:
    import wasmtime

    store = wasmtime.Store()
    module = wasmtime.Module(store.engine, wasmtime.wat2wasm(ADD.read_text()))
    func = wasmtime.Instance(store, module, []).exports(store)["add"]

    def once() -> float:
        started = time.perf_counter()
        for i in range(calls):
            func(store, i, 3)
        return time.perf_counter() - started

    return best(repeat, once)


def bench_stream(megabytes: int) -> dict:
    total = megabytes * 1000 * 1000
    generator = (
        "import sys\n"
        "block = bytes(range(256)) * 4096\n"
        f"left = {total}\n"
        "out = sys.stdout.buffer\n"
        "while left > 0:\n"
        "    n = min(left, len(block)); out.write(block[:n]); left -= n\n"
    )
    gen = subprocess.Popen([sys.executable, "-c", generator], stdout=subprocess.PIPE)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*WASMSBX, "run", str(UPPER), "--stream", "--json"],
        stdin=gen.stdout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    gen.stdout.close()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    gen.wait()
    if proc.returncode != 0:
        raise SystemExit(f"stream failed: {err.decode()}")
    report = json.loads(err)["stream"]
    return {
        "bytes": total,
        "seconds": round(seconds, 3),
        "mb_per_second": round(total / seconds / 1e6, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "host_buffer_peak_bytes": report["peak_buffer"],
        "chunk_size": report["chunk_size"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--process-runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stream-mb", type=int, default=1000)
    parser.add_argument("--cpu-calls", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calls.jsonl"
        path.write_text("".join(f"[{i}, 3]\n" for i in range(args.calls)))
        seconds = {
            "batch -j 1 (CLI)": bench_cli_batch(path, 1, args.repeat),
            "batch -j 2 (CLI)": bench_cli_batch(path, 2, args.repeat),
            "Sandbox.batch (API)": bench_api_batch(args.calls, args.repeat),
        }
        heavy = Path(tmp) / "count.jsonl"
        heavy.write_text("[200000]\n" * args.cpu_calls)
        cpu = {
            f"batch -j {jobs} (CLI)": bench_cli_batch(heavy, jobs, args.repeat, LOOP, "count")
            for jobs in (1, 2)
        }
    per_process = bench_process_loop(args.process_runs)
    seconds[f"loop of wasmsbx run (x{args.process_runs}, extrapolated)"] = per_process * args.calls
    seconds["raw wasmtime-py loop"] = bench_raw_wasmtime(args.calls, args.repeat)
    stream = bench_stream(args.stream_mb) if args.stream_mb else None

    rows = [
        {
            "method": name,
            "seconds": round(s, 3),
            "calls_per_second": round(args.calls / s),
            "us_per_call": round(s / args.calls * 1e6, 1),
        }
        for name, s in seconds.items()
    ]
    report = {
        "calls": args.calls,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
        "batch": rows,
        "cpu_bound": {
            "calls": args.cpu_calls,
            "rows": [
                {
                    "method": name,
                    "seconds": round(s, 3),
                    "calls_per_second": round(args.cpu_calls / s),
                }
                for name, s in cpu.items()
            ],
        },
        "stream": stream,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{args.calls:,} calls of add.wat `add` "
        f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    )
    print(f"{'method':<48} {'seconds':>9} {'calls/s':>10} {'us/call':>8}")
    for row in rows:
        print(
            f"{row['method']:<48} {row['seconds']:>9.2f} {row['calls_per_second']:>10,} "
            f"{row['us_per_call']:>8.1f}"
        )
    print(f"\n{args.cpu_calls:,} calls of loop.wat `count 200000` (CPU-bound)")
    for row in report["cpu_bound"]["rows"]:
        print(f"{row['method']:<48} {row['seconds']:>9.2f} {row['calls_per_second']:>10,}")
    if stream:
        print(
            f"\nstream {stream['bytes'] / 1e9:.2f} GB through upper.wasm: "
            f"{stream['seconds']:.1f} s, "
            f"{stream['mb_per_second']:.0f} MB/s, peak RSS {stream['peak_rss_mib']:.0f} MiB, "
            f"host buffer peak {stream['host_buffer_peak_bytes']:,} B "
            f"(chunk {stream['chunk_size']:,} B)"
        )


if __name__ == "__main__":
    main()
