"""The Python API's compile of a new module (bounded in a kept compile worker) against
wasmtime-py compiling it in the calling process (unbounded), side by side, as ratios.

    .venv/bin/python benchmarks/library_compile.py               # 200 small modules
    .venv/bin/python benchmarks/library_compile.py --count 50 --rounds 5
    .venv/bin/python benchmarks/library_compile.py --graphviz    # also graphviz.wasm

Each side runs in a fresh interpreter, the sides alternated over ``--rounds``:

- raw: ``wasmtime.Module(engine, wasm)`` on one Engine, a Store, an Instance and one
  call, for ``--count`` distinct small modules (each a new compile);
- wasmsbx: ``wasmsbx.Sandbox(wasm, use_cache=False)`` and one ``call`` for the same
  modules (every compile goes to the compile worker: backends/compiling.py).

Reported: the first compile in the process (wasmsbx starts its worker then: an
interpreter and the runtime's import), and the median of the rest, each as CPU of the
process, its ended children (``resource.getrusage``) and its live compile workers
(``/proc/PID/task/*/schedstat``, nanoseconds: a kept worker has not ended, so
RUSAGE_CHILDREN does not count it), and as wall time; then wasmsbx / raw.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SIDE = r"""
import json, resource, sys, time
side, count, big = sys.argv[1], int(sys.argv[2]), sys.argv[3]

import glob, os

def workers():  # the live compile workers' CPU: RUSAGE_CHILDREN counts only ended ones
    total = 0
    for pid in PIDS:
        for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
            try:
                total += int(open(path).read().split()[0])  # ns on a CPU
            except (OSError, ValueError, IndexError):
                pass
    return total / 1e9

PIDS = set()

def cpu():
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime + workers()

import wasmtime
mods = [bytes(wasmtime.wat2wasm(
    '(module (func (export "add") (param i32 i32) (result i32) '
    f'local.get 0 local.get 1 i32.add i32.const {i} i32.add))')) for i in range(count)]
if big:
    mods = [open(big, "rb").read()] + mods
if side == "raw":
    engine = wasmtime.Engine()
    def one(wasm, first):
        module = wasmtime.Module(engine, wasm)
        if not first or not big:
            store = wasmtime.Store(engine)
            wasmtime.Instance(store, module, []).exports(store)["add"](store, 1, 2)
else:
    import wasmsbx
    from wasmsbx.backends import compiling
    def one(wasm, first):
        box = wasmsbx.Sandbox(wasm, use_cache=False, kind="command" if first and big else None)
        if not first or not big:
            box.call("add", 1, 2)
        PIDS.update(w.proc.pid for w in compiling.WORKERS.live)
out = []
for i, wasm in enumerate(mods):
    c, w = cpu(), time.perf_counter()
    one(wasm, i == 0)
    out.append((cpu() - c, time.perf_counter() - w))
print(json.dumps(out))
"""


def run(side: str, count: int, big: str) -> list:
    proc = subprocess.run(
        [sys.executable, "-c", SIDE, side, str(count), big],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--graphviz", action="store_true", help="first, graphviz.wasm (0.9 MB)")
    args = parser.parse_args()
    big = ""
    if args.graphviz:
        sys.path.insert(0, str(HERE))
        from cached_load import fetch

        big = str(fetch("graphviz"))
    firsts: dict = {"raw": [], "wasmsbx": []}
    rests: dict = {"raw": [], "wasmsbx": []}
    for _ in range(args.rounds):
        for side in ("raw", "wasmsbx"):
            samples = run(side, args.count, big)
            firsts[side].append(samples[0])
            rests[side].extend(samples[1:])

    def med(rows: list, i: int) -> float:
        return statistics.median(r[i] for r in rows) * 1000

    what = "graphviz.wasm" if big else "a small module"
    print(f"{args.count} distinct small modules, {args.rounds} rounds, sides alternated")
    print(f"{'':34} {'raw wasmtime-py':>18} {'wasmsbx':>12} {'ratio':>7}")
    for label, rows in ((f"first compile ({what})", firsts), ("each further compile", rests)):
        for i, unit in ((0, "CPU ms"), (1, "wall ms")):
            raw, ours = med(rows["raw"], i), med(rows["wasmsbx"], i)
            print(f"{label + ', ' + unit:34} {raw:18.3f} {ours:12.3f} {ours / raw:6.2f}x")


if __name__ == "__main__":
    main()
