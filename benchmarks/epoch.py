"""What wasmtime engine options cost a CPU-bound guest: epoch interruption (the timeout,
Ctrl-C) and the linear-memory reservation (bounds checks), side by side as ratios.

    python benchmarks/epoch.py              # every kernel of benchmarks/guests/cpu.wasm
    python benchmarks/epoch.py --rounds 9   # more alternated rounds (a noisy host)

One engine per configuration, each with the same cpu.wasm instance; the kernels run
alternated across configurations, each kernel's best CPU time (``resource.getrusage``)
over the rounds is kept, and every configuration is printed as a ratio to the one
wasmsbx uses by default (``wasmsbx``: epoch interruption on, ``runtime.memory_layout =
"fast"``, wasmtime's 4 GiB reservation). The engines are made by wasmsbx's own
``engine_config``, so what is measured is what runs:

- ``no-epoch``: the same engine without epoch interruption (what a timeout costs);
- ``dense``: ``runtime.memory_layout = "dense"`` for a ``--memory`` limit (256 MiB:
  a 256 MiB reservation, 64 KiB guards, explicit bounds checks, data copied in);
- ``reserve-none``: no reservation and no guard (explicit bounds checks against the
  current size; every ``memory.grow`` moves the memory: see ``--grow``).

``--grow N`` also times N one-page ``memory.grow`` calls under each reservation.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import wasmtime

GUEST = Path(__file__).resolve().parent / "guests" / "cpu.wasm"
KERNELS = {  # kernel(which, n) of cpu.c, sized for some milliseconds each
    "mandelbrot (f64)": (0, 300),
    "sieve (memory)": (1, 1 << 20),
    "matmul (f64 memory)": (2, 120),
    "xorshift (i64)": (3, 1 << 24),
    "quicksort (memory)": (4, 1 << 17),
}
CONFIGS = ("wasmsbx", "no-epoch", "dense", "reserve-none")
MEMORY = [256 << 20]  # limits.memory for "dense" (--memory)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def config(name: str) -> wasmtime.Config:
    from wasmsbx.backends.base import EngineOptions
    from wasmsbx.backends.reserve import reservation
    from wasmsbx.backends.wasmtime.backend import engine_config

    layout = "dense" if name == "dense" else "fast"
    cfg = engine_config(EngineOptions(reservation=reservation(layout, MEMORY[0])))
    cfg.epoch_interruption = name != "no-epoch"
    if name == "reserve-none":
        cfg.memory_reservation = 0
        cfg.memory_guard_size = 0
        cfg.memory_reservation_for_growth = 0
        cfg.memory_may_move = True
    return cfg


def kernel_of(name: str) -> tuple:
    engine = wasmtime.Engine(config(name))
    store = wasmtime.Store(engine)
    if name != "no-epoch":
        store.set_epoch_deadline(1 << 40)  # never reached: the check itself is measured
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store.set_wasi(wasmtime.WasiConfig())
    instance = linker.instantiate(store, wasmtime.Module.from_file(engine, str(GUEST)))
    exports = instance.exports(store)
    exports["_initialize"](store)
    return store, exports["kernel"]


def grow_time(name: str, pages: int) -> float:
    wat = """(module (memory 1)
      (func (export "grow") (param $n i32) (local $i i32)
        (loop $l
          (drop (memory.grow (i32.const 1)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (local.get $n))))))"""
    engine = wasmtime.Engine(config(name))
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1 << 40)
    grow = wasmtime.Instance(store, wasmtime.Module(engine, wat), []).exports(store)["grow"]
    started = cpu()
    grow(store, pages)
    return cpu() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grow", type=int, default=0, metavar="PAGES")
    parser.add_argument("--memory", default="256MiB", help='limits.memory for "dense"')
    args = parser.parse_args()
    from wasmsbx.units import parse_size

    MEMORY[0] = parse_size(args.memory)
    boxes = {name: kernel_of(name) for name in CONFIGS}
    best: dict = {}
    for _ in range(args.rounds):
        for label, (which, n) in KERNELS.items():
            for name in CONFIGS:  # alternated: a noisy moment hits every configuration
                store, kernel = boxes[name]
                started = cpu()
                kernel(store, which, n)
                spent = cpu() - started
                best[label, name] = min(spent, best.get((label, name), spent))
    from importlib.metadata import version

    print(f"wasmtime-py {version('wasmtime')}, CPU time, best of {args.rounds} alternated rounds")
    print(f"{'kernel':24}" + "".join(f"{n:>15}" for n in CONFIGS))
    for label in KERNELS:
        base = best[label, "wasmsbx"]
        cells = [f"{base * 1e3:9.1f} ms"] + [f"{best[label, n] / base:14.2f}x" for n in CONFIGS[1:]]
        print(f"{label:24}" + "".join(f"{c:>15}" for c in cells))
    if args.grow:
        print(f"\n{args.grow} one-page memory.grow calls:")
        for name in ("wasmsbx", "dense", "reserve-none"):
            print(f"  {name:15} {grow_time(name, args.grow) * 1e3:10.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
