"""The package layout: every import points down, and no import cycle ties modules together.

The graph counts every ``import`` statement in wasmsbx/, function-level (lazy) ones too,
because a lazy import is still a dependency; only ``if TYPE_CHECKING:`` blocks are left
out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "wasmsbx"

# The core: policy, errors, units, capabilities, values and host imports, wasm facts,
# backends, native code and its cache, the bounded tables of both (lru), folders of any
# depth (fstree), the process's file descriptors (fdroom: a leaf, which the backends
# ask how many are free). It imports nothing above it.
CORE = (
    "wasmsbx._version",
    "wasmsbx.capabilities",
    "wasmsbx.compact",
    "wasmsbx.errors",
    "wasmsbx.fdroom",
    "wasmsbx.fstree",
    "wasmsbx.host",
    "wasmsbx.inputs",
    "wasmsbx.lru",
    "wasmsbx.memory",
    "wasmsbx.outfile",
    "wasmsbx.policy",
    "wasmsbx.units",
    "wasmsbx.values",
    "wasmsbx.wasm",
    "wasmsbx.backends",
    "wasmsbx.native",
)
# The runner sits on the core; the features sit on the runner (and on each other).
RUNNER = ("wasmsbx.runner",)
FEATURES = (
    "wasmsbx.audit",
    "wasmsbx.bench",
    "wasmsbx.watch",
    "wasmsbx.cluster",
    "wasmsbx.mcp",
    "wasmsbx.components",
    "wasmsbx.cli",
)

# Cycles tolerated for now, named so that a new one fails and a fixed one must be removed
# here. None: the audit's shared records live in audit/findings.py, below both the module
# audit and its component flavour.
KNOWN_CYCLES: set = set()


def _modules() -> dict:
    """{module name: (path, is_package)} for every module of wasmsbx."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        if is_init:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_init)
    return out


def _type_checking_nodes(tree: ast.AST) -> set:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _targets(node: ast.AST, package: str, modules: dict) -> list:
    """The wasmsbx modules one import statement imports."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        absolute = ".".join(base + ([node.module] if node.module else []))
    else:
        absolute = node.module or ""
    # `from . import x` imports module x when there is one, else a name of the package
    return [
        f"{absolute}.{a.name}" if f"{absolute}.{a.name}" in modules else absolute
        for a in node.names
    ]


def import_graph() -> dict:
    """{module: set of wasmsbx modules it imports}."""
    modules = _modules()
    graph: dict = {name: set() for name in modules}
    for name, (path, is_init) in modules.items():
        package = name if is_init else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            for target in _targets(node, package, modules):
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), as sets."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    on_stack: set = set()
    found: list = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _in(name: str, prefixes: tuple) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_graph_sees_lazy_imports():
    """The checker itself: a function-level import is an edge (here runner -> batch)."""
    graph = import_graph()
    assert "wasmsbx.runner.batch" in graph["wasmsbx.runner.services"]
    assert "wasmsbx.cluster" in graph["wasmsbx.runner.services"]


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]


def test_no_new_import_cycle():
    found = set(cycles(import_graph()))
    new = found - KNOWN_CYCLES
    assert not new, f"import cycles: {[sorted(c) for c in new]}"
    fixed = KNOWN_CYCLES - found
    assert not fixed, f"no longer cycles, remove them from KNOWN_CYCLES: {fixed}"


def test_the_runner_is_free_of_cycles():
    """runner <-> batch <-> stream is broken: nothing in the runner is in a cycle."""
    for component in cycles(import_graph()):
        assert not any(_in(m, RUNNER) for m in component), sorted(component)


def test_the_core_imports_nothing_above_it():
    graph = import_graph()
    bad = sorted(
        (module, target)
        for module, targets in graph.items()
        if _in(module, CORE)
        for target in targets
        if not _in(target, CORE)
    )
    assert bad == []


def test_the_core_sandbox_imports_no_feature():
    """runner.sandbox (the core Sandbox) leaves batch, stream, audit and components to the
    public Sandbox in wasmsbx.runner."""
    graph = import_graph()
    for module in ("wasmsbx.runner.sandbox", "wasmsbx.runner.batch", "wasmsbx.runner.stream"):
        above = sorted(t for t in graph[module] if _in(t, FEATURES))
        assert above == [], module
    assert not graph["wasmsbx.runner.sandbox"] & {
        "wasmsbx.runner",
        "wasmsbx.runner.batch",
        "wasmsbx.runner.stream",
        "wasmsbx.runner.services",
    }


def test_the_public_sandbox_keeps_its_names():
    import wasmsbx
    import wasmsbx.runner
    from wasmsbx.runner import sandbox

    assert wasmsbx.Sandbox is wasmsbx.runner.Sandbox
    assert issubclass(wasmsbx.Sandbox, sandbox.Sandbox)
    for method in ("batch", "stream", "audit", "call", "run_command"):
        assert callable(getattr(wasmsbx.Sandbox, method))
    assert not hasattr(sandbox.Sandbox, "batch")
