"""What authenticating native code costs a cached load: two source trees side by side.

    git archive a01e8bd | tar -x -C /tmp/before       # the tree before the trust boundary
    .venv/bin/python benchmarks/trust_overhead.py --before /tmp/before [--after .]

Two measures, each in fresh processes, the trees alternated run by run (so machine load
falls on both alike), in CPU time (``time.process_time`` in the process, and
``resource.getrusage(RUSAGE_CHILDREN)`` for whole runs), medians:

1. in process: ``cache.load_or_compile`` hits of benchmarks/cache.py's ~1 MB module
   (module digest, key, read, authenticate, deserialize), the store already open;
2. a whole ``wasmsbx run big.wasm f0 1`` with a warm cache (start-up included).

Each tree uses its own cache and (for trees that have one) its own key folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/benchmarks")
from cache import generate
from wasmsbx import cache, policy as policy_mod
from wasmsbx.backends import get
from wasmsbx.runner.sandbox import engine_options
wasm = generate(int(sys.argv[3]))
open(sys.argv[4], "wb").write(wasm)
policy = policy_mod.defaults()
policy_mod.override(policy, "runtime.cache_min_size", 0)
engine = get("wasmtime").engine(engine_options(policy, "cranelift"))
first = cache.load_or_compile(engine, wasm, policy, "big", cache_dir=sys.argv[2])
assert first.state in ("miss", "hit"), first
samples = []
for _ in range(int(sys.argv[5])):
    started = time.process_time()
    out = cache.load_or_compile(engine, wasm, policy, "big", cache_dir=sys.argv[2])
    samples.append(time.process_time() - started)
    assert out.state == "hit", out
print(json.dumps(samples))
"""


def in_process(tree: Path, work: Path, funcs: int, repeat: int) -> list:
    env = _env(tree, work)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(work / "cache"), str(funcs),
         str(work / "big.wasm"), str(repeat)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def whole_run(tree: Path, work: Path) -> float:
    """CPU seconds (user + system) of one `wasmsbx run` with a warm cache."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-m", "wasmsbx", "run", str(work / "big.wasm"), "f0", "1",
         "--cache-dir", str(work / "cache"), "--policy", str(work / "p.toml")],
        env=_env(tree, work), capture_output=True, check=True,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _env(tree: Path, work: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env["WASMSBX_TRUST_DIR"] = str(work / "trust")
    env.pop("WASMSBX_CACHE_DIR", None)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, type=Path)
    parser.add_argument("--after", default=HERE, type=Path)
    parser.add_argument("--funcs", type=int, default=900, help="module size (~1.15 KB each)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=30, help="hits per round, in process")
    parser.add_argument("--runs", type=int, default=20, help="whole runs per tree")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    loads: dict = {name: [] for name in trees}
    runs: dict = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        work = {name: Path(tmp) / name for name in trees}
        for folder in work.values():
            folder.mkdir()
            (folder / "p.toml").write_text("[runtime]\ncache_min_size = 0\n")
        for i in range(args.rounds):
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            for name in order:
                loads[name] += in_process(trees[name], work[name], args.funcs, args.repeat)
        for i in range(args.runs):
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            for name in order:
                runs[name].append(whole_run(trees[name], work[name]))
        size = (work["after"] / "big.wasm").stat().st_size
    print(f"module: {size / 1e6:.2f} MB; CPU time, medians; trees alternated")
    print(f"{'':28}{'before':>10}{'after':>10}{'after/before':>14}")
    for label, data, unit in (
        ("cached load (in process)", loads, 1e3),
        ("whole `wasmsbx run`", runs, 1e3),
    ):
        b, a = statistics.median(data["before"]), statistics.median(data["after"])
        print(f"{label:28}{b * unit:>8.2f}ms{a * unit:>8.2f}ms{a / b:>14.3f}")


if __name__ == "__main__":
    main()
