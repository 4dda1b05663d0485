"""``Sandbox.call`` against a raw wasmtime-py loop: CPU time and instructions per call.

    .venv/bin/python benchmarks/calls.py                 # CPU time, 7 alternated rounds
    .venv/bin/python benchmarks/calls.py --callgrind     # + instructions per call (valgrind)
    .venv/bin/python benchmarks/calls.py --rounds 3 --calls 5000 --json

Four functions of one module: ``add`` (i32, i32) -> i32, ``hypot`` (f64, f64) -> f64,
``nop`` () -> () and ``poke`` (i32, i32) -> i32, which stores to linear memory and loads
it back. wasmsbx runs them under a policy with every limit armed on every call: fuel
(limits.fuel = 10,000,000, re-armed and accounted per call), the timeout (an epoch
deadline from the process's deadline keeper) and the memory/table limiter. Its forms:

* ``box.call("add", 5, 3)``;
* ``box.exports.add(5, 3)`` and ``box["add"](5, 3)``, the export looked up on each call;
* ``f(5, 3)`` with ``f = box["add"]`` bound once.

Peers, on the same module:

* raw: ``func(store, 5, 3)`` on a plain ``wasmtime.Store``: no limits at all;
* raw+limits: the same loop with the limits armed by hand as wasmsbx arms them (an
  engine with fuel and epochs, a limiter; ``set_fuel``, ``set_epoch_deadline`` and
  ``get_fuel`` around each call).

CPU time: getrusage(RUSAGE_SELF) around N calls, per call; rounds alternate which side
goes first, and the table shows the median of each over the rounds and the ratio to raw.
Instructions: the script reruns itself under ``valgrind --tool=callgrind`` (apt install
valgrind) and dumps the counters (``callgrind_control --dump``) around two loops of N1
and N2 calls per form; (cost(N2) - cost(N1)) / (N2 - N1) is the cost of one call, with
start-up, compiling and the dump itself cancelled out. The keeper thread's epoch ticks
during the loops are counted too (they are part of what a call costs wasmsbx).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WAT = """
(module
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "hypot") (param f64 f64) (result f64)
    (f64.sqrt (f64.add (f64.mul (local.get 0) (local.get 0))
                       (f64.mul (local.get 1) (local.get 1)))))
  (func (export "nop"))
  (func (export "poke") (param i32 i32) (result i32)
    (i32.store (local.get 0) (local.get 1)) (i32.load (local.get 0)))
)
"""
CASES = (
    ("i32 add", "add", "5, 3"),
    ("f64", "hypot", "3.0, 4.0"),
    ("void", "nop", ""),
    ("memory", "poke", "64, 7"),
)
FUEL = 10_000_000
FORMS = {
    "box.call": 'box.call("{f}"{sep}{a})',
    "box.exports.f": "box.exports.{f}({a})",
    'box["f"]': 'box["{f}"]({a})',
    "f = box['f']": "bound({a})",
    "raw": "func(store{sep}{a})",
    "raw+limits": (
        "armed.set_fuel(FUEL); armed.set_epoch_deadline(1000); "
        "armed_func(armed{sep}{a}); armed.get_fuel()"
    ),
}
PEERS = ("raw", "raw+limits")


def setup(export: str) -> dict:
    """The objects each form's loop uses."""
    import wasmtime

    from wasmsbx import policy
    from wasmsbx.runner import Sandbox

    box = Sandbox(WAT.encode(), policy.from_dict({"limits": {"fuel": FUEL}}))
    store = wasmtime.Store()
    module = wasmtime.Module(store.engine, WAT)
    func = wasmtime.Instance(store, module, []).exports(store)[export]
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    armed = wasmtime.Store(engine)
    armed.set_limits(memory_size=256 << 20, table_elements=10000, instances=1)
    armed.set_fuel(FUEL)
    armed.set_epoch_deadline(1000)
    armed_func = wasmtime.Instance(armed, wasmtime.Module(engine, WAT), []).exports(armed)[export]
    return {
        "box": box,
        "bound": box[export],
        "store": store,
        "func": func,
        "armed": armed,
        "armed_func": armed_func,
        "FUEL": FUEL,
    }


def make_loop(form: str, export: str, args: str, env: dict):
    stmt = FORMS[form].format(f=export, a=args, sep=", " if args else "")
    namespace = dict(env)
    exec(f"def loop(n):\n    for _ in range(n):\n        {stmt}\n", namespace)  # noqa: S102
    loop = namespace["loop"]
    loop(50)  # warm: instance, caller, first-call paths
    return loop


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_cpu(rounds: int, calls: int) -> dict:
    """Median CPU microseconds per call, per case and form; sides alternate each round."""
    out: dict = {}
    for label, export, args in CASES:
        env = setup(export)
        loops = {form: make_loop(form, export, args, env) for form in FORMS}
        samples: dict = {form: [] for form in FORMS}
        order = list(FORMS)
        for r in range(rounds):
            for form in order if r % 2 == 0 else reversed(order):
                started = cpu()
                loops[form](calls)
                samples[form].append((cpu() - started) / calls * 1e6)
        out[label] = {form: statistics.median(v) for form, v in samples.items()}
        env["box"].close()
    return out


# ---------------------------------------------------------------------------- callgrind


def dump(label: str) -> None:
    subprocess.run(
        ["callgrind_control", f"--dump={label}", str(os.getpid())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )


def callgrind_child(n1: int, n2: int) -> None:
    """Run under callgrind: two loops per case and form, a dump after each."""
    for i, (_, export, args) in enumerate(CASES):
        env = setup(export)
        for j, form in enumerate(FORMS):
            loop = make_loop(form, export, args, env)
            dump(f"skip-{i}-{j}")  # labels without spaces or quotes (callgrind_control)
            loop(n1)
            dump(f"n1-{i}-{j}")
            loop(n2)
            dump(f"n2-{i}-{j}")
        env["box"].close()


def measure_instructions(n1: int, n2: int) -> dict:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--callgrind-child",
                f"{n1},{n2}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        costs: dict = {}
        for path in glob.glob(out + ".*"):
            trigger, total = None, None
            with open(path) as f:
                for line in f:
                    if line.startswith("desc: Trigger: dump "):
                        trigger = line[len("desc: Trigger: dump ") :].strip()
                    elif line.startswith("totals:") or line.startswith("summary:"):
                        total = int(line.split()[1])
            if trigger and total is not None:
                costs[trigger] = total
    result: dict = {}
    for i, (label, _, _) in enumerate(CASES):
        result[label] = {
            form: (costs[f"n2-{i}-{j}"] - costs[f"n1-{i}-{j}"]) / (n2 - n1)
            for j, form in enumerate(FORMS)
        }
    return result


# ---------------------------------------------------------------------------- report


def table(title: str, data: dict, unit: str, digits: int) -> list:
    lines = [title, f"{'function':<10} {'form':<16} {unit:>12} {'/ raw':>7} {'/ raw+limits':>13}"]
    for label, forms in data.items():
        for form, value in forms.items():
            raw, armed = forms["raw"], forms["raw+limits"]
            lines.append(
                f"{label:<10} {form:<16} {value:>12,.{digits}f} {value / raw:>6.2f}x "
                f"{value / armed:>12.2f}x"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--callgrind", action="store_true", help="also count instructions")
    parser.add_argument("--n1", type=int, default=100)
    parser.add_argument("--n2", type=int, default=600)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--callgrind-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.callgrind_child:
        n1, n2 = (int(x) for x in args.callgrind_child.split(","))
        callgrind_child(n1, n2)
        return
    import wasmtime

    report: dict = {
        "python": sys.version.split()[0],
        "wasmtime_py": getattr(wasmtime, "__version__", None) or _version(),
        "load_average": os.getloadavg(),
        "cpu_us_per_call": measure_cpu(args.rounds, args.calls),
    }
    if args.callgrind:
        report["instructions_per_call"] = measure_instructions(args.n1, args.n2)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"Python {report['python']}, wasmtime-py {report['wasmtime_py']}, "
        f"load {report['load_average'][0]:.1f}; {args.calls:,} calls x {args.rounds} rounds"
    )
    print(
        "\n".join(table("CPU time per call (median of rounds)", report["cpu_us_per_call"], "us", 2))
    )
    if args.callgrind:
        print()
        print(
            "\n".join(
                table(
                    f"instructions per call (callgrind, ({args.n2} - {args.n1}) calls)",
                    report["instructions_per_call"],
                    "instr",
                    0,
                )
            )
        )


def _version() -> str:
    from wasmsbx.backends.wasmtime.backend import _version as installed

    return installed()


if __name__ == "__main__":
    main()
