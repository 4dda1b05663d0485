#!/usr/bin/env python3
"""A warm Python ``print`` through ``wasmsbx mcp``, against its peers, side by side.

Three ways to run ``print('hi')`` in CPython-on-WASI, rounds alternated:

* ``wasmsbx mcp``: the server over stdio, driven by the mcp SDK's client; one warm-up call,
  then N timed calls (each a fresh instance in a warm worker process).
* ``wasmsbx run`` per call: a new process per call (``wasmsbx run python.wasm -- -c ...``),
  the compiled module loaded from the cache. This is also the cost of a "child process per
  call" design.
* PyPI ``llm-wasm-sandbox`` 0.4.4 (the peer, its Python API: no MCP framing, in process),
  installed in its own venv (it pins wasmtime < 39, so never beside wasmsbx):
  ``--peer-venv`` (default /tmp/wasmsbx-bench-llm-wasm-sandbox, created on first use).

    python benchmarks/mcp.py [--calls 30] [--rounds 3] [--peer-calls 2] [--no-peer] [--json]

Needs ``wasmsbx[mcp]`` and ``wasmsbx mcp setup``. Prints latency (median, p90), calls per
second and CPU seconds per call (resource.getrusage of the processes involved), and each
peer's ratio to ``wasmsbx mcp``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# This file is named mcp.py: keep its folder off sys.path so `import mcp` finds the SDK.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

CODE = "print('hi')"
PEER_VERSION = "0.4.4"
PEER_DRIVER = r"""
import json, resource, sys, time, logging
logging.disable(logging.CRITICAL)
import structlog
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
from sandbox import create_sandbox, RuntimeType
calls = int(sys.argv[1])
sandbox = create_sandbox(runtime=RuntimeType.PYTHON)
out = []
for _ in range(calls):
    t = time.perf_counter()
    r = sandbox.execute("print('hi')")
    out.append(time.perf_counter() - t)
    assert r.stdout == "hi\n", r
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"latencies": out, "cpu": u.ru_utime + u.ru_stime}))
"""


def children_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


async def mcp_round(calls: int) -> dict:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "wasmsbx", "mcp"])
    cpu_before = children_cpu()
    latencies, worker_cpu = [], []
    with open(os.devnull, "w") as errlog:
        started = time.perf_counter()
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=600) as c:
            first = await c.call_tool("run_python", {"code": CODE})  # warm-up (worker start)
            assert not first.is_error, first
            first_call = time.perf_counter() - started
            for _ in range(calls):
                t = time.perf_counter()
                r = await c.call_tool("run_python", {"code": CODE})
                latencies.append(time.perf_counter() - t)
                data = r.structured_content
                assert data["stdout"] == "hi\n", r
                assert data["stats"]["module_load"] == "reused", data
                worker_cpu.append(data["stats"]["cpu_seconds"])
    # The server and its workers have exited and been reaped: their CPU is ours now.
    total_cpu = children_cpu() - cpu_before
    return {
        "latencies": latencies,
        "first_call": first_call,
        "cpu_per_call": statistics.median(worker_cpu),
        "cpu_note": f"worker CPU per call; whole server incl. start-up {total_cpu:.2f} s",
    }


def run_round(calls: int, python_wasm: str) -> dict:
    cmd = [sys.executable, "-m", "wasmsbx", "run", python_wasm, "--", "-c", CODE]
    latencies, cpus = [], []
    for _ in range(calls):
        before = children_cpu()
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True)
        latencies.append(time.perf_counter() - t)
        cpus.append(children_cpu() - before)
        if proc.returncode != 0 or proc.stdout != b"hi\n":
            raise SystemExit(f"wasmsbx run failed: {proc.stderr.decode()[-500:]}")
    return {"latencies": latencies, "cpu_per_call": statistics.median(cpus)}


def peer_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with llm-wasm-sandbox=={PEER_VERSION}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"llm-wasm-sandbox=={PEER_VERSION}"],
            check=True,
        )
    return python


def peer_round(calls: int, python: Path) -> dict:
    import tempfile

    before = children_cpu()
    with tempfile.TemporaryDirectory(prefix="wasmsbx-bench-peer-") as work:  # it writes ./workspace
        proc = subprocess.run(
            [str(python), "-c", PEER_DRIVER, str(calls)], capture_output=True, text=True, cwd=work
        )
    if proc.returncode != 0:
        raise SystemExit(f"llm-wasm-sandbox failed: {proc.stderr[-800:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = children_cpu() - before
    return {"latencies": data["latencies"], "cpu_per_call": cpu / calls}


def summary(rounds: list) -> dict:
    lat = sorted(x for r in rounds for x in r["latencies"])
    p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))]
    med = statistics.median(lat)
    return {
        "calls": len(lat),
        "median_s": round(med, 4),
        "p90_s": round(p90, 4),
        "calls_per_s": round(len(lat) / sum(lat), 2),
        "cpu_per_call_s": round(statistics.median(r["cpu_per_call"] for r in rounds), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peer-calls", type=int, default=2, help="the peer compiles every call")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--peer-venv", default="/tmp/wasmsbx-bench-llm-wasm-sandbox")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from wasmsbx.mcp import interpreters

    python_wasm = str(interpreters.path_of("python"))
    peer = None if args.no_peer else peer_python(Path(args.peer_venv))
    results: dict = {"wasmsbx mcp": [], "wasmsbx run per call": [], "llm-wasm-sandbox": []}
    for i in range(args.rounds):  # alternated, so machine noise hits all alike
        print(f"round {i + 1}/{args.rounds}", file=sys.stderr)
        results["wasmsbx mcp"].append(asyncio.run(mcp_round(args.calls)))
        results["wasmsbx run per call"].append(run_round(max(3, args.calls // 3), python_wasm))
        if peer is not None:
            results["llm-wasm-sandbox"].append(peer_round(args.peer_calls, peer))
    table = {name: summary(rounds) for name, rounds in results.items() if rounds}
    starts = [r["first_call"] for r in results["wasmsbx mcp"]]
    table["wasmsbx mcp"]["server_start_to_first_result_s"] = round(statistics.median(starts), 3)
    base = table["wasmsbx mcp"]["median_s"]
    for row in table.values():
        row["latency_vs_mcp"] = round(row["median_s"] / base, 2)
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(f"warm Python print('hi'), {args.rounds} rounds alternated")
    print(
        f"{'':24} {'calls':>5} {'median':>9} {'p90':>9} {'calls/s':>8} {'CPU/call':>9} {'x mcp':>7}"
    )
    for name, row in table.items():
        print(
            f"{name:24} {row['calls']:>5} {row['median_s']:>8.3f}s {row['p90_s']:>8.3f}s "
            f"{row['calls_per_s']:>8.2f} {row['cpu_per_call_s']:>8.3f}s "
            f"{row['latency_vs_mcp']:>6.1f}x"
        )
    first = table["wasmsbx mcp"]["server_start_to_first_result_s"]
    print(f"wasmsbx mcp: server start to first result (worker start, cache load) {first:.3f}s")
    print("CPU/call: wasmsbx mcp = the worker's CPU per call; the others = whole processes")


if __name__ == "__main__":
    main()
