"""Density: N live sandboxes in one process, wasmsbx beside raw wasmtime-py (issue #16).

    python benchmarks/density.py                      # 10,000 of each, under a minute
    python benchmarks/density.py --count 100000       # the issue's target
    python benchmarks/density.py --guest memory       # a guest with a linear memory
    python benchmarks/density.py --from-path          # wasmsbx: Sandbox(path), not bytes
    python benchmarks/density.py --guest memory --layout dense --init copy --count 40000
                                                      # runtime.memory_layout = "dense",
                                                      # runtime.memory_init = "copy"
    python benchmarks/density.py --guest data --init copy --count 2000
                                                      # 1 MiB of data, copied in
    python benchmarks/density.py --guest memory --layout dense --address-space 64GiB
                                                      # under `ulimit -v` (RLIMIT_AS)
    python benchmarks/density.py --tenant-limits 4    # a policy object per sandbox, with
                                                      # one of 4 memory limits (0: each
                                                      # its own)

Each side runs in a fresh interpreter (so RSS, CPU and threads are its own), the sides
alternated over ``--rounds``:

- raw: wasmtime-py as a careful host program writes it: one Engine and one Module,
  then per sandbox a Store, an Instance and one call of ``add``;
- wasmsbx: ``wasmsbx.Sandbox(module, policy)`` per sandbox (the public API: its own
  store with the policy's memory/table/instance limiter, its own deadline per call) and
  one ``call("add", ...)``; one policy object for all, as a host serving tenants would.
  With ``--tenant-limits N``, a policy object per sandbox instead (``policy.from_dict``,
  counted in its CPU) whose ``limits.memory`` is one of N values (``--memory`` less
  0..N-1 pages; 0: every sandbox a value of its own), and raw caps each store the same.

``--layout`` and ``--init`` pick ``runtime.memory_layout`` and ``runtime.memory_init``
for wasmsbx and the same wasmtime configuration for raw (``fast``: wasmtime's 4 GiB
reservation per memory; ``dense``: ``--memory`` rounded up to a power of two; ``cow``:
data mapped copy-on-write, ``copy``: copied in; backends/reserve.py); ``--memory`` is the
policy's ``limits.memory`` (raw caps each store the same way).

Reported per sandbox: CPU (``resource.getrusage``, user + system) for creation + one
call, RSS growth (``/proc/self/statm``), address space (VmSize, ``/proc/self/status``)
and mappings (``/proc/self/maps``) it adds, the thread count before and after, and the cold
start of a module already loaded in the process (a second ``Sandbox`` of it, no call:
median wall time over 200). Every sandbox stays alive until the end. A side that cannot
reach N (the host's memory or address space, see README "Density") says where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PLAIN = b"""(module
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1))))"""

# A guest as a C program looks: one page of linear memory, data, a store and a load.
MEMORY = b"""(module
  (memory (export "memory") 1)
  (data (i32.const 0) "tenant")
  (func (export "add") (param i32 i32) (result i32)
    (i32.store (i32.const 16) (i32.add (local.get 0) (local.get 1)))
    (i32.load (i32.const 16))))"""

# 1 MiB of initialised data (a C program's tables), read once per call: under "fast"
# wasmtime maps its pages copy-on-write from one image, under "dense" each sandbox
# copies them in. (Byte 0 is 0, so ``add`` still adds.)
DATA = (
    b'(module (memory (export "memory") 17) (data (i32.const 0) "'
    + b"".join(b"\\%02x" % (i * 7 % 251) for i in range(1 << 20))
    + b'")\n  (func (export "add") (param i32 i32) (result i32)\n'
    + b"    (i32.add (i32.load8_u (i32.const 0)) (i32.add (local.get 0) (local.get 1)))))"
)

GUESTS = {"plain": PLAIN, "memory": MEMORY, "data": DATA}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def vmsize() -> int:
    """Address space of the process, bytes (what ``ulimit -v`` bounds)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def mappings() -> int:
    """Mappings of the process (what ``vm.max_map_count`` bounds)."""
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


# ----------------------------------------------------------------------------- one side


def raw_config(layout: str, memory: int, init: str):
    """The wasmtime configuration wasmsbx uses for ``layout`` and ``init``, without the
    epoch interruption wasmsbx adds for the timeout (the raw host has no timeout)."""
    from wasmsbx.backends.base import EngineOptions
    from wasmsbx.backends.reserve import reservation
    from wasmsbx.backends.wasmtime.backend import engine_config

    options = EngineOptions(reservation=reservation(layout, memory), copy_data=init == "copy")
    config = engine_config(options)
    config.epoch_interruption = False
    return config


def tenant_memory(memory: int, tiers: int, i: int) -> int:
    """The memory limit of sandbox ``i`` under ``--tenant-limits tiers``."""
    return memory - 65536 * (i % tiers if tiers else i % (memory // 65536 - 1))


def raw_side(wat: bytes, count: int, layout: str, memory: int, init: str, tiers: int = -1) -> dict:
    import wasmtime

    engine = wasmtime.Engine(raw_config(layout, memory, init))
    module = wasmtime.Module(engine, wat)
    made = [0]

    def make() -> tuple:
        store = wasmtime.Store(engine)
        made[0] += 1
        cap = memory if tiers < 0 else tenant_memory(memory, tiers, made[0])
        store.set_limits(memory_size=cap)
        instance = wasmtime.Instance(store, module, [])
        return store, instance

    def call(pair: tuple, i: int) -> int:
        store, instance = pair
        return instance.exports(store)["add"](store, i, 1)

    return measure(make, call, count)


def wasmsbx_side(
    wat: bytes,
    count: int,
    layout: str,
    memory: int,
    init: str,
    path: str = "",
    tiers: int = -1,
) -> dict:
    import wasmsbx
    from wasmsbx import policy as policy_mod

    policy = wasmsbx.default_policy()
    policy_mod.override(policy, "runtime.memory_layout", layout)
    policy_mod.override(policy, "runtime.memory_init", init)
    policy_mod.override(policy, "limits.memory", str(memory))
    made = [0]

    def make() -> object:
        if tiers < 0:
            return wasmsbx.Sandbox(path or wat, policy)
        made[0] += 1
        limits = {"memory": tenant_memory(memory, tiers, made[0])}
        runtime = {"memory_layout": layout, "memory_init": init}
        own = policy_mod.from_dict({"limits": limits, "runtime": runtime})
        return wasmsbx.Sandbox(path or wat, own)

    def call(box: object, i: int) -> int:
        return box.call("add", i, 1)

    return measure(make, call, count)


def measure(make, call, count: int) -> dict:
    """Warm up (the first sandbox compiles), then ``count`` sandboxes, each made and
    called once, all kept alive; then the cold start of one more."""
    first = make()
    assert call(first, 1) == 2
    live, stopped = [first], None
    vm_before, maps_before = vmsize(), mappings()
    threads_before, rss_before, cpu_before = threads(), rss(), cpu()
    for i in range(count):
        try:
            box = make()
            if call(box, i) != i + 1:
                raise AssertionError("wrong result")
        except Exception as exc:  # the host ran out: report where, as data
            stopped = {"at": i, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            break
        live.append(box)
    made = len(live) - 1
    cpu_used, rss_used = cpu() - cpu_before, rss() - rss_before
    if stopped is not None:
        # Out of mappings, even reading /proc fails: free some, measure what is left.
        del live[-64:]
    kept = len(live) - 1
    vm_used, maps_used = vmsize() - vm_before, mappings() - maps_before
    threads_after = threads()
    cold = []
    for _ in range(200 if stopped is None else 0):
        started = time.perf_counter()
        make()
        cold.append(time.perf_counter() - started)
    return {
        "count": made,
        "stopped": stopped,
        "cpu_ms_per_sandbox": cpu_used / max(made, 1) * 1e3,
        "rss_kib_per_sandbox": rss_used / max(made, 1) / 1024,
        "vmsize_mib_per_sandbox": vm_used / max(kept, 1) / 2**20,
        "maps_per_sandbox": maps_used / max(kept, 1),
        "threads_before": threads_before,
        "threads_after": threads_after,
        "cold_start_ms": statistics.median(cold) * 1e3 if cold else None,
    }


# ----------------------------------------------------------------------------- driver


def module_file(wat: bytes) -> str:
    """The guest as a binary module file (``--from-path``: each sandbox reads it)."""
    import tempfile

    import wasmtime

    folder = tempfile.mkdtemp(prefix="wasmsbx-density-")
    path = os.path.join(folder, "guest.wasm")
    with open(path, "wb") as out:
        out.write(bytes(wasmtime.wat2wasm(wat.decode())))
    return path


def run_side(side: str, args: argparse.Namespace) -> dict:
    def limit_address_space() -> None:
        if args.address_space:
            resource.setrlimit(resource.RLIMIT_AS, (args.address_space, args.address_space))

    proc = subprocess.run(
        [
            *(sys.executable, __file__, "--child", side, "--guest", args.guest),
            *("--count", str(args.count), "--layout", args.layout),
            *("--memory", str(args.memory), "--init", args.init),
            *(("--module-file", args.module_file) if args.module_file else ()),
            *("--tenant-limits", str(args.tenant_limits)),
        ],
        capture_output=True,
        text=True,
        preexec_fn=limit_address_space,
    )
    if proc.returncode != 0:
        return {"count": 0, "stopped": {"at": 0, "error": proc.stderr.strip()[-300:]}}
    return json.loads(proc.stdout)


def best(results: list) -> dict:
    """The round with the least CPU per sandbox (the least disturbed by other load)."""
    return min(results, key=lambda r: r.get("cpu_ms_per_sandbox", float("inf")))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def render(args: argparse.Namespace, sides: dict) -> str:
    box, raw = sides["wasmsbx"], sides["raw"]
    limit = f", RLIMIT_AS {args.address_space:,} B" if args.address_space else ""
    if args.tenant_limits >= 0:
        tiers = args.tenant_limits or "a value of its own"
        limit += f", a policy per sandbox (limits.memory: {tiers})"
    lines = [
        f"density: {args.count:,} live sandboxes, guest {args.guest!r}, layout "
        f"{args.layout!r}, init {args.init!r}, limits.memory {args.memory:,} B{limit}, "
        f"python {sys.version.split()[0]}, vm.max_map_count {max_map_count()}",
        f"{'':32}{'wasmsbx':>12}{'raw wasmtime-py':>18}{'ratio':>9}",
    ]

    def row(label: str, key: str, fmt: str) -> None:
        a, b = box.get(key), raw.get(key)
        cell = lambda v: format(v, fmt) if v is not None else "-"  # noqa: E731
        lines.append(f"{label:32}{cell(a):>12}{cell(b):>18}{ratio(a, b):>9}")

    row("sandboxes made", "count", ",")
    row("CPU per sandbox (ms)", "cpu_ms_per_sandbox", ".4f")
    row("RSS per sandbox (KiB)", "rss_kib_per_sandbox", ".2f")
    row("address space per sandbox (MiB)", "vmsize_mib_per_sandbox", ".2f")
    row("mappings per sandbox", "maps_per_sandbox", ".3f")
    row("threads before", "threads_before", "d")
    row("threads after", "threads_after", "d")
    row("cold start, module loaded (ms)", "cold_start_ms", ".4f")
    for name, side in sides.items():
        if side.get("stopped"):
            lines.append(f"{name} stopped at {side['stopped']['at']:,}: {side['stopped']['error']}")
    return "\n".join(lines)


def max_map_count() -> str:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return f"{int(f.read()):,}"
    except (OSError, ValueError):
        return "?"


def size(text: str) -> int:
    from wasmsbx.units import parse_size

    return parse_size(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="live sandboxes per side")
    parser.add_argument("--guest", choices=sorted(GUESTS), default="plain")
    parser.add_argument("--layout", choices=("fast", "dense"), default="fast")
    parser.add_argument("--init", choices=("cow", "copy"), default="cow", help="memory_init")
    parser.add_argument("--memory", type=size, default=256 << 20, help="limits.memory")
    parser.add_argument(
        "--address-space", type=size, default=0, metavar="SIZE", help="RLIMIT_AS per side"
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternated runs per side")
    parser.add_argument(
        "--from-path",
        action="store_true",
        help="wasmsbx makes each sandbox from a module file (Sandbox(path)), not bytes",
    )
    parser.add_argument(
        "--tenant-limits",
        type=int,
        default=-1,
        metavar="N",
        help="a policy object per sandbox, with one of N memory limits (0: each its own)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=("raw", "wasmsbx"), help=argparse.SUPPRESS)
    parser.add_argument("--module-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        guest = GUESTS[args.guest]
        if args.child == "raw":
            made = raw_side(
                guest, args.count, args.layout, args.memory, args.init, args.tenant_limits
            )
        else:
            made = wasmsbx_side(
                guest,
                args.count,
                args.layout,
                args.memory,
                args.init,
                args.module_file,
                args.tenant_limits,
            )
        print(json.dumps(made))
        return 0
    if args.from_path:
        args.module_file = module_file(GUESTS[args.guest])
    results: dict = {"raw": [], "wasmsbx": []}
    for _ in range(args.rounds):
        for side in ("raw", "wasmsbx"):
            results[side].append(run_side(side, args))
    sides = {name: best(runs) for name, runs in results.items()}
    sides = {"wasmsbx": sides["wasmsbx"], "raw": sides["raw"]}
    if args.json:
        about = {"count": args.count, "guest": args.guest, "layout": args.layout}
        about["init"] = args.init
        about.update(memory=args.memory, address_space=args.address_space or None)
        print(json.dumps({**about, "sides": sides}, indent=2))
    else:
        print(render(args, sides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
