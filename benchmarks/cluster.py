"""Batch throughput on one machine and on a Dask cluster: prints a table (or JSON).

    .venv/bin/python benchmarks/cluster.py                      # 3,000 items, best of 3
    .venv/bin/python benchmarks/cluster.py --items 1000 --repeat 1 --json

Throughput: --items calls of examples/loop.wat `count --iterations` (CPU-bound guest
work, about a millisecond each by default), each run a whole `wasmsbx run --batch`
process writing JSONL to /dev/null, made three ways, alternated run by run:
  * `-j 1` (one process), `-j 2` (two worker processes);
  * `--cluster ADDRESS` on a two-worker cluster (a `dask scheduler` and a
    `dask worker --nworkers 2 --nthreads 1` started by this script on this machine, as a
    user would start them by hand).
Each figure is the best of --repeat runs (the machine may be shared); the ratios are to
`-j 1`. On a machine with fewer than 3 free cores the client, the scheduler and two
workers compete, so `-j 2` and the cluster can only approach 2x.

Overhead per chunk: --overhead-items calls of examples/add.wat `add` (a few microseconds
of work each) through `Sandbox.batch(cluster=...)` in this process, once with one item
per chunk (a Dask task per item) and once with the automatic chunk size; the first,
divided by the number of items, is what a chunk costs (submit, schedule, run, return the
JSON, check it), and the second shows what chunking recovers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADD = ROOT / "examples" / "add.wat"
LOOP = ROOT / "examples" / "loop.wat"
WASMSBX = [sys.executable, "-m", "wasmsbx"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HandStartedCluster:
    """`dask scheduler` and `dask worker ADDRESS --nworkers 2 --nthreads 1`, as processes."""

    def __init__(self, workers: int) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        port = self.address.rsplit(":", 1)[1]
        bindir = Path(sys.executable).parent
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.scheduler = subprocess.Popen(
            [bindir / "dask", "scheduler", "--port", port, "--no-dashboard"], **quiet
        )
        self.workers = subprocess.Popen(
            [bindir / "dask", "worker", self.address, "--nworkers", str(workers)]
            + ["--nthreads", "1", "--no-dashboard"],
            **quiet,
        )
        from distributed import Client

        with Client(self.address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=120)

    def close(self) -> None:
        for proc in (self.workers, self.scheduler):
            proc.send_signal(signal.SIGINT)
        for proc in (self.workers, self.scheduler):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def timed(argv: list) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed:\n{proc.stderr.decode()}")
    return seconds


def throughput(args: argparse.Namespace, address: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        src.write_text("".join(f"[{args.iterations + i}]\n" for i in range(args.items)))
        base = [*WASMSBX, "run", str(LOOP), "count", "--batch", str(src)]
        ways = {
            "-j 1": [*base, "-j", "1"],
            "-j 2": [*base, "-j", "2"],
            "cluster (2 workers)": [*base, "--cluster", address],
        }
        best = {name: float("inf") for name in ways}
        for _ in range(args.repeat):  # alternated: a burst of load hits every way alike
            for name, argv in ways.items():
                best[name] = min(best[name], timed(argv))
    return {name: args.items / seconds for name, seconds in best.items()}


def chunk_overhead(args: argparse.Namespace, address: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from distributed import Client

    from wasmsbx.cluster import Cluster
    from wasmsbx.runner import Sandbox

    box = Sandbox(ADD)
    items = [[i, 3] for i in range(args.overhead_items)]
    out = {}
    with Client(address, set_as_default=False) as client:
        list(box.batch("add", items[:10], cluster=client))  # the workers compile once
        for name, size in (("one item per chunk", 1), ("automatic chunks", None)):
            started = time.perf_counter()
            for result in box.batch("add", items, cluster=Cluster(client, chunk_items=size)):
                assert result.ok
            out[name] = time.perf_counter() - started
    local_started = time.perf_counter()
    for result in box.batch("add", items):
        assert result.ok
    out["local, one process"] = time.perf_counter() - local_started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--iterations", type=int, default=500_000)
    parser.add_argument("--overhead-items", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cluster = HandStartedCluster(2)
    try:
        rates = throughput(args, cluster.address)
        overhead = chunk_overhead(args, cluster.address)
    finally:
        cluster.close()
    per_chunk_ms = overhead["one item per chunk"] / args.overhead_items * 1000
    report = {
        "cpus": os.cpu_count(),
        "items": args.items,
        "iterations": args.iterations,
        "items_per_second": {k: round(v, 1) for k, v in rates.items()},
        "ratio_to_j1": {k: round(v / rates["-j 1"], 2) for k, v in rates.items()},
        "overhead_items": args.overhead_items,
        "overhead_seconds": {k: round(v, 3) for k, v in overhead.items()},
        "ms_per_chunk": round(per_chunk_ms, 2),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.items} items of loop.wat count({args.iterations}+i), {os.cpu_count()} CPUs")
    print(f"{'way':<22}{'items/s':>10}{'vs -j 1':>10}")
    for name, rate in rates.items():
        print(f"{name:<22}{rate:>10.1f}{rate / rates['-j 1']:>9.2f}x")
    print(f"\n{args.overhead_items} items of add.wat add through Sandbox.batch:")
    for name, seconds in overhead.items():
        print(f"  {name:<22}{seconds:>8.3f} s")
    print(f"  overhead per chunk    {per_chunk_ms:>8.2f} ms")


if __name__ == "__main__":
    main()
