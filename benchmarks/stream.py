"""``wasmsbx run M --stream`` against a raw wasmtime-py loop over the same guest ABI.

    .venv/bin/python benchmarks/stream.py                       # 256 MB, 64 KiB and 1 MiB
    .venv/bin/python benchmarks/stream.py --mb 64 --rounds 3 --chunks 65536

The guest is examples/stream/upper.wasm (clang -O2: upper-cases its input) speaking the
streaming ABI (README "Batch and streaming"): ``alloc(chunk)`` once, then per chunk
``process(ptr, len)`` and the output read back from guest memory. Both sides read the
same file (on stdin, so no generator shares the CPU) and write to /dev/null:

* wasmsbx: ``wasmsbx run upper.wasm --stream --chunk-size N`` (default policy: the
  timeout and the memory limit armed on every call);
* raw: a hand-written wasmtime-py program (written out below as RAW): one Store and
  Instance, ``readinto`` a bytearray, ``memory.write``, ``process``, ``memory.read``,
  ``stdout.write`` (no limits, no checks, no stats).

Each run is a whole process (start-up, compiling included); its CPU time (user + system,
from wait4) is what is compared. Both run with Python's bytecode cache on (in a
temporary PYTHONPYCACHEPREFIX, warmed by one untimed run of each): with
PYTHONDONTWRITEBYTECODE set, as on some CI machines, every run would compile wasmsbx's
sources again, which is not what a user's runs cost. Rounds alternate which side goes
first; the table shows the median over the rounds and the ratio wasmsbx / raw, and both
processes' outputs are checked to be the same bytes (sha256) in the first round.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPPER = ROOT / "examples" / "stream" / "upper.wasm"

RAW = """
import sys
import wasmtime

path, chunk = sys.argv[1], int(sys.argv[2])
store = wasmtime.Store()
module = wasmtime.Module.from_file(store.engine, path)
exports = wasmtime.Instance(store, module, []).exports(store)
memory, process = exports["memory"], exports["process"]
ptr = exports["alloc"](store, chunk) & 0xFFFFFFFF
stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
buffer = bytearray(chunk)
view = memoryview(buffer)
while True:
    n = stdin.readinto(buffer)
    if not n:
        break
    memory.write(store, buffer if n == chunk else bytearray(view[:n]), ptr)
    result = process(store, ptr, n)
    if isinstance(result, int):
        out_ptr, out_len = (result >> 32) & 0xFFFFFFFF, result & 0xFFFFFFFF
    else:
        out_ptr, out_len = result[0] & 0xFFFFFFFF, result[1] & 0xFFFFFFFF
    if out_len:
        stdout.write(memory.read(store, out_ptr, out_ptr + out_len))
stdout.flush()
"""


def child_env(tmp: str) -> dict:
    """This environment with the bytecode cache on, in a folder of ``tmp``."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
    return env


def run(argv: list, source: Path, sink: str, env: dict) -> float:
    """CPU seconds (user + system) of one process reading ``source`` on stdin."""
    with open(source, "rb") as stdin, open(sink, "wb") as stdout:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:4]} failed: {err.decode(errors='replace')}")
    return usage.ru_utime + usage.ru_stime


def digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="input size in MB (10^6)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--chunks", default="65536,1048576", help="chunk sizes in bytes (default: 64 KiB, 1 MiB)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "input.bin"
        block = bytes(range(256)) * 4096
        with open(source, "wb") as f:
            left = args.mb * 1000 * 1000
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
        raw_script = Path(tmp) / "raw.py"
        raw_script.write_text(RAW)
        out_a, out_b = str(Path(tmp) / "a.out"), str(Path(tmp) / "b.out")
        for chunk in chunks:
            sides = {
                "wasmsbx": [
                    sys.executable,
                    "-m",
                    "wasmsbx",
                    "run",
                    str(UPPER),
                    "--stream",
                    "--chunk-size",
                    str(chunk),
                ],
                "raw": [sys.executable, str(raw_script), str(UPPER), str(chunk)],
            }
            env = child_env(tmp)
            for argv in sides.values():  # warm: the bytecode cache
                run(argv, source, os.devnull, env)
            samples: dict = {name: [] for name in sides}
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for name in order:
                    sink = (
                        out_a if r == 0 and name == "wasmsbx" else out_b if r == 0 else os.devnull
                    )
                    samples[name].append(run(sides[name], source, sink, env))
                if r == 0 and digest(out_a) != digest(out_b):
                    raise SystemExit(f"chunk {chunk}: wasmsbx and raw wrote different bytes")
            sbx, raw = (statistics.median(samples[n]) for n in ("wasmsbx", "raw"))
            rows.append(
                {
                    "chunk_size": chunk,
                    "wasmsbx_cpu_s": round(sbx, 3),
                    "raw_cpu_s": round(raw, 3),
                    "ratio": round(sbx / raw, 3),
                    "samples": {n: [round(v, 3) for v in s] for n, s in samples.items()},
                }
            )
    report = {
        "input_mb": args.mb,
        "rounds": args.rounds,
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{args.mb} MB through upper.wasm, CPU seconds per whole process (median of "
        f"{args.rounds} alternated rounds; load {report['load_average'][0]:.1f})"
    )
    print(f"{'chunk':>10} {'wasmsbx':>9} {'raw':>9} {'wasmsbx/raw':>12}")
    for row in rows:
        print(
            f"{row['chunk_size']:>10,} {row['wasmsbx_cpu_s']:>9.3f} {row['raw_cpu_s']:>9.3f} "
            f"{row['ratio']:>11.2f}x"
        )


if __name__ == "__main__":
    main()
