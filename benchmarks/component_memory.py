"""What the memory figure of a component costs per call (the hidden probe, #15).

    .venv/bin/python benchmarks/component_memory.py [--rounds 7] [--calls 2000]

CPU time (resource.getrusage) per ``box.invoke("add", [5, 3])`` on the WAT guest, with
the memory figure in its stats (``memory=True``, what ``run``/``--json``/MCP use: one
call of the probe) and without it (``memory=False``, what ``box.call`` uses). Rounds
alternate which side goes first; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasmsbx import Sandbox  # noqa: E402

GUEST = ROOT / "tests" / "guests" / "components" / "types.wat"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_call(box, calls: int, memory: bool) -> float:
    started = cpu()
    for _ in range(calls):
        box.invoke("add", [5, 3], memory=memory)
    return (cpu() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    opts = parser.parse_args()
    box = Sandbox(GUEST)
    assert box.invoke("add", [5, 3]).stats.memory_bytes == 65536
    with_memory, without = [], []
    for r in range(opts.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for memory in order:
            (with_memory if memory else without).append(per_call(box, opts.calls, memory))
    a, b = statistics.median(with_memory), statistics.median(without)
    print(f"invoke with memory figure    {a * 1e6:8.1f} us CPU")
    print(f"invoke without (box.call)    {b * 1e6:8.1f} us CPU")
    print(f"probe cost                   {(a - b) * 1e6:8.1f} us  (x{a / b:.2f})")


if __name__ == "__main__":
    main()
