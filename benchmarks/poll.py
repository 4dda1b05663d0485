"""What bounding WASI's ``poll_oneoff`` costs (backends/wasmtime/poll.py): CPU per call.

    .venv/bin/python benchmarks/poll.py                 # 7 alternated rounds
    .venv/bin/python benchmarks/poll.py --rounds 3 --calls 2000 --json

One guest, ``nap()``: a ``poll_oneoff`` of one relative clock of 0 ns (a ``sleep(0)``:
what the wait itself costs is nothing, so the call is all overhead). Contenders:

* raw: wasmtime-py with its own WASI (``linker.define_wasi()``), ``func(store)`` in a
  loop: wasmtime's ``poll_oneoff``, no limits;
* wasmsbx: ``box.call("nap")`` under the default policy (timeout and memory limits
  armed): wasmsbx's ``poll_oneoff``, which calls wasmtime's through its helper instance;
* wasmsbx (no poll): the same call of a function that does not poll, so the difference
  between the two wasmsbx rows is what the bounded ``poll_oneoff`` adds.

Also the first ``poll_oneoff`` of a store (its helper instance made then): new
sandboxes, one call each, against the same for a module that does not poll.

CPU time (getrusage) per call, medians over rounds that alternate which side goes first.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WAT = """
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "nap") (result i32)
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 0))
    (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
  (func (export "still") (result i32) (i32.const 0)))
"""


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_call(fn, calls: int) -> float:
    started = cpu()
    for _ in range(calls):
        fn()
    return (cpu() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--boxes", type=int, default=300, help="new sandboxes per round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import wasmtime

    import wasmsbx

    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    raw_nap = linker.instantiate(store, wasmtime.Module(engine, WAT)).exports(store)["nap"]
    box = wasmsbx.Sandbox(WAT.encode(), backend="wasmtime")
    box.call("nap")

    contenders = {
        "raw wasmtime-py, its own poll_oneoff": lambda: raw_nap(store),
        "wasmsbx box.call, bounded poll_oneoff": lambda: box.call("nap"),
        "wasmsbx box.call, no poll (the call alone)": lambda: box.call("still"),
    }
    first = {
        "wasmsbx first call that polls (helper made)": "nap",
        "wasmsbx first call that does not poll": "still",
    }
    times: dict = {label: [] for label in (*contenders, *first)}
    for round_ in range(args.rounds):
        order = list(contenders.items())
        if round_ % 2:
            order.reverse()
        for label, fn in order:
            times[label].append(per_call(fn, args.calls))
        labels = list(first.items())
        if round_ % 2:
            labels.reverse()
        for label, name in labels:
            boxes = [wasmsbx.Sandbox(WAT.encode(), backend="wasmtime") for _ in range(args.boxes)]
            started = cpu()
            for each in boxes:
                each.call(name)
            times[label].append((cpu() - started) / args.boxes)
            for each in boxes:
                each.close()

    medians = {label: statistics.median(values) for label, values in times.items()}
    raw = medians["raw wasmtime-py, its own poll_oneoff"]
    if args.json:
        print(json.dumps({label: value * 1e6 for label, value in medians.items()}))
        return
    print(f"poll_oneoff of 0 ns, CPU µs per call, medians of {args.rounds} alternated rounds")
    for label, value in medians.items():
        ratio = f"{value / raw:5.2f}x raw" if label in contenders else ""
        print(f"  {label:48} {value * 1e6:9.1f}  {ratio}")
    bounded = medians["wasmsbx box.call, bounded poll_oneoff"]
    alone = medians["wasmsbx box.call, no poll (the call alone)"]
    made = medians["wasmsbx first call that polls (helper made)"]
    plain = medians["wasmsbx first call that does not poll"]
    print(f"  the bounded poll_oneoff adds {1e6 * (bounded - alone - raw):.1f} µs to a call "
          f"beyond wasmtime's own; a store's first one {1e6 * (made - plain):.1f} µs")  # fmt: skip


if __name__ == "__main__":
    main()
