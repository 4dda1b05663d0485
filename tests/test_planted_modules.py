"""A module planted in the working folder (by a guest granted it, or in a folder someone
runs wasmsbx in) is never imported as wasmsbx's own: ``python -m wasmsbx`` puts that
folder first on ``sys.path``, and commands import modules lazily, after the guest ran
(red team round 33 found the same through the compile worker's path)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import EXAMPLES

NAMES = ("json", "rich", "typer", "click", "tomllib", "subprocess", "select")


def _python(*argv: str, cwd) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS...`` in ``cwd``: ``''`` first on its sys.path, as in a REPL."""
    return subprocess.run(
        [sys.executable, "-c", *argv], cwd=cwd, capture_output=True, text=True, timeout=180
    )


def _plant(*names: str) -> str:
    """Lines of a script's main block (indented 4) that plant a module of each name in
    the working folder, each appending its name to the file ``sys.argv[1]`` if it is
    ever imported."""
    return (
        f"    for name in {names!r}:\n"
        "        open(name + '.py', 'w').write(\n"
        "            f'open({sys.argv[1]!r}, \"a\").write({name!r})')\n"
    )


def test_python_m_wasmsbx_imports_nothing_from_the_working_folder(tmp_path):
    mark = tmp_path / "MARK"
    for name in NAMES:
        (tmp_path / f"{name}.py").write_text(f"open({str(mark)!r}, 'a').write({name!r})\n")
    for argv in (
        ["run", EXAMPLES / "add.wat", "add", "1", "2", "--json"],
        ["backends", "--json"],
        ["audit", EXAMPLES / "add.wat", "--json"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "wasmsbx", *map(str, argv)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc
        assert not mark.exists(), (argv, mark.read_text())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH is Python 3.11's")
def test_batch_workers_import_nothing_from_the_working_folder(tmp_path):
    # red team round 34: Sandbox.batch(jobs=2) from `python -c` (a REPL, Jupyter: '' on
    # sys.path) started multiprocessing's fork server and resource tracker in the working
    # folder, where modules planted after the host's own imports ran in them
    mark = tmp_path / "MARK"
    code = (
        "import subprocess, selectors, multiprocessing, multiprocessing.connection, sys\n"
        "import wasmsbx\n"
        "if __name__ == '__main__':\n"
        f"    box = wasmsbx.Sandbox({str(EXAMPLES / 'add.wat')!r})\n"
        + _plant("selectors", "signal", "warnings", "struct", "threading", "socket", "pickle")
        + "    print([r.values for r in box.batch('add', [[1, 2], [3, 4]], jobs=2)])\n"
    )
    proc = _python(code, str(mark), cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "[[3], [7]]\n"), proc
    assert not mark.exists(), mark.read_text()


_GUARDED = """
import sys, warnings
import wasmsbx
from wasmsbx import policy as policy_mod
if __name__ == '__main__':
    policy = policy_mod.defaults()
    if sys.argv[1] == 'grant':
        policy_mod.add_grant(policy, '.', True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        box = wasmsbx.Sandbox(sys.argv[2], policy)
    print(len(caught), caught[0].message if caught else '')
    before = set(sys.modules)
    assert box.call('add', 1, 2) == 3
    for bad in (('add', 'x'), ('ad', 1, 2)):  # (a name it lacks: "did you mean")
        try:
            box.call(*bad)
        except wasmsbx.errors.WasmsbxError as exc:
            exc.to_dict()
    print([r.values for r in box.batch('add', [[1, 2], [3, 4]], jobs=2)])
    print([r.values for r in box.batch('add', [[5, 6]])])
    box.audit()
    builtin = set(sys.builtin_module_names) | {'__mp_main__'}
    print(sorted(set(sys.modules) - before - builtin))
"""


@pytest.mark.parametrize("grant", ["grant", "none"])
def test_a_guest_granted_a_folder_on_the_import_path_finds_wasmsbx_imported(tmp_path, grant):
    # red team round 35: with '' on sys.path (python -c, a REPL, Jupyter) and the working
    # folder granted read-write, wasmsbx's own later imports (blake3 on a cache miss,
    # multiprocessing for batch(jobs=2), the audit's modules) would load what the guest
    # wrote there. Now a sandbox with such a grant imports them before any guest runs,
    # and warns; nothing is imported through the file system after it is made. (A
    # folder of its own: tmp_path holds the trust folder, which no grant may show.)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    proc = _python(_GUARDED, grant, str(EXAMPLES / "add.wat"), cwd=work)
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    if grant == "grant":
        assert lines[0].startswith("1 filesystem.read_write"), lines
        assert "(the working folder), which is on this process's import path" in lines[0]
        assert "python -P" in lines[0]
        assert lines[-1] == "[]", lines[-1]
    else:
        assert lines[0] == "0 ", lines
    assert lines[1:3] == ["[[3], [7]]", "[[11]]"], lines


def _lazy_imports() -> set:
    """Every module wasmsbx's library code imports inside a function (absolute, not
    wasmsbx's own): the command line and the MCP server aside, which run without the
    working folder on their path."""
    import ast
    from pathlib import Path

    import wasmsbx

    root = Path(wasmsbx.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("cli/", "mcp/")) or rel == "__main__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if id(node) in top:
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return {name for name in found if not name.startswith("wasmsbx")}


_LAZY_CHECK = """
import importlib.util, json, sys, warnings
import wasmsbx
from wasmsbx import policy as policy_mod
policy = policy_mod.defaults()
policy_mod.add_grant(policy, '.', True)
warnings.simplefilter('ignore')
wasmsbx.Sandbox(sys.argv[1], policy)
left = []
for name in json.loads(sys.argv[2]):
    if name in sys.modules or name in sys.builtin_module_names:
        continue
    if name.partition('.')[0] in sys.modules:
        continue  # (a package's submodules come from its own folder, not sys.path)
    try:
        if importlib.util.find_spec(name) is None:
            continue  # (not installed: nothing to import)
    except ImportError:
        continue
    left.append(name)
print(json.dumps(sorted(left)))
"""


def test_the_guard_imports_every_lazy_import_of_the_library(tmp_path):
    # red team round 36 found two the list missed (difflib, cryptography): every module
    # imported inside a function of the library is imported once a sandbox with a
    # read-write grant on the import path is made (importpath.LATER and the warm lists)
    import json

    names = sorted(_lazy_imports())
    assert "difflib" in names and "blake3" in names  # (the scan sees them)
    proc = _python(_LAZY_CHECK, str(EXAMPLES / "add.wat"), json.dumps(names), cwd=tmp_path)
    assert proc.returncode == 0, proc
    assert json.loads(proc.stdout) == [], "add these to importpath.LATER: " + proc.stdout


_LATE = """
import sys, warnings
import wasmsbx
from wasmsbx import policy as policy_mod
warnings.simplefilter('always')
import os
os.mkdir('scratch')  # (writable, but not on sys.path)
policy = policy_mod.defaults()
policy_mod.add_grant(policy, '.', False)
policy_mod.add_grant(policy, 'scratch', True)
with warnings.catch_warnings(record=True) as caught:
    box = wasmsbx.Sandbox(sys.argv[1], policy)
print(len(caught), 'difflib' in sys.modules)
with warnings.catch_warnings(record=True) as caught:
    if sys.argv[2] == 'mutate':  # the same policy, changed before the first instance
        policy_mod.add_grant(policy, '.', True)
        other = box
    else:  # another sandbox: the same folder, now writable (round 37: the same cache key)
        writable = policy_mod.defaults()
        policy_mod.add_grant(writable, '.', True)
        policy_mod.add_grant(writable, 'scratch', True)
        other = wasmsbx.Sandbox(sys.argv[1], writable)
    assert other.call('f') == 7
print(len(caught), 'difflib' in sys.modules)
"""

_WASI_MODULE = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
  (memory (export "memory") 1)
  (func (export "f") (result i32) i32.const 7))
"""


@pytest.mark.parametrize("how", ["mutate", "another"])
def test_the_guard_sees_the_grants_each_instance_gets(tmp_path, how):
    # red team round 37: the guard ran only as a sandbox was made, and remembered grants
    # by folder only: a grant made writable before the first instance, or another
    # sandbox granting the same folder writable, went unchecked (a guest's difflib.py
    # then ran in the host)
    work = tmp_path / "granted"  # (tmp_path holds the suite's trust folder: never granted)
    work.mkdir()
    module = work / "wasi.wat"
    module.write_text(_WASI_MODULE)
    proc = _python(_LATE, str(module), how, cwd=work)
    assert proc.returncode == 0, proc
    assert proc.stdout == "0 False\n1 True\n", proc


def test_a_component_sandbox_is_guarded_too(tmp_path):
    # red team round 37 (HIGH): a component sandbox never ran the guard
    from .component_guests import wat_component

    component = wat_component("echo.wat", tmp_path)
    work = tmp_path / "granted"  # (tmp_path holds the suite's trust folder: never granted)
    work.mkdir()
    code = (
        "import sys, warnings\n"
        "import wasmsbx\n"
        "from wasmsbx import policy as policy_mod\n"
        "policy = policy_mod.defaults()\n"
        "policy_mod.add_grant(policy, '.', True)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    box = wasmsbx.Sandbox(sys.argv[1], policy)\n"
        "print(len(caught), 'difflib' in sys.modules, 'wasmtime.component' in sys.modules)\n"
    )
    proc = _python(code, str(component), cwd=work)
    assert proc.returncode == 0, proc
    assert proc.stdout == "1 True True\n", proc


# A script that makes a sandbox of add.wat with the working folder granted read-write
# (as `python -c` runs it: '' first on sys.path), then goes on as the test says.
_GRANTED = (
    "import sys, warnings\n"
    "import wasmsbx\n"
    "from wasmsbx import policy as policy_mod\n"
    "if __name__ == '__main__':\n"
    "    warnings.simplefilter('ignore')\n"
    "    policy = policy_mod.defaults()\n"
    "    policy_mod.add_grant(policy, '.', True)\n"
    f"    box = wasmsbx.Sandbox({str(EXAMPLES / 'add.wat')!r}, policy)\n"
)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH is Python 3.11's")
def test_batch_workers_of_a_guarded_sandbox_import_nothing_planted(tmp_path):
    # red team round 38: multiprocessing gives each worker its parent's sys.path, ''
    # included, and the workers imported queue, dataclasses, difflib... as they rebuilt
    # the sandbox: a guest's difflib.py (written by an earlier call) ran in both workers
    work = tmp_path / "granted"  # (tmp_path holds the suite's trust folder: never granted)
    work.mkdir()
    mark = tmp_path / "MARK"
    code = _GRANTED + (
        _plant("queue", "dataclasses", "difflib", "decimal", "secrets", "csv")
        + "    print([r.values for r in box.batch('add', [[1, 2], [3, 4]], jobs=2)])\n"
        "    print([r.values for r in box.batch('add', [[5, 6]], jobs=2, fresh=True)])\n"
    )
    proc = _python(code, str(mark), cwd=work)
    assert (proc.returncode, proc.stdout) == (0, "[[3], [7]]\n[[11]]\n"), proc
    assert not mark.exists(), mark.read_text()


_APP = """
import sys
import helper  # next to this script: its folder is the working folder
import wasmsbx
if __name__ == '__main__':
    box = wasmsbx.Sandbox(sys.argv[1])
    print([r.values for r in box.batch('add', [[1, 2], [3, helper.FOUR]], jobs=2)])
"""


@pytest.mark.parametrize("how", ["script", "module"])
def test_a_script_run_from_its_folder_still_batches(tmp_path, how):
    # red team round 39: workers that always lost the working folder could not import
    # the main script's own helper module (BatchWorkerDied), nor a `python -m` main
    # module at all; the folder stays when no guest may write it
    (tmp_path / "app.py").write_text(_APP)
    (tmp_path / "helper.py").write_text("FOUR = 4\n")
    argv = ["app.py"] if how == "script" else ["-m", "app"]
    proc = subprocess.run(
        [sys.executable, *argv, str(EXAMPLES / "add.wat")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert (proc.returncode, proc.stdout) == (0, "[[3], [7]]\n"), proc


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH is Python 3.11's")
def test_a_granted_folder_on_pythonpath_is_off_the_fork_servers(tmp_path):
    # red team round 39: with the working folder on PYTHONPATH (and granted read-write),
    # a sitecustomize.py planted after the sandbox was made ran in the batch fork server
    # and its resource tracker, which read PYTHONPATH as they started
    import os

    work = tmp_path / "granted"  # (tmp_path holds the suite's trust folder: never granted)
    work.mkdir()
    mark = tmp_path / "MARK"
    code = _GRANTED + (
        "    open('sitecustomize.py', 'w').write(f'open({sys.argv[1]!r}, \"a\").write(\"x\")')\n"
        "    print([r.values for r in box.batch('add', [[1, 2], [3, 4]], jobs=2)])\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(work)]))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(mark)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert (proc.returncode, proc.stdout) == (0, "[[3], [7]]\n"), proc
    assert not mark.exists(), mark.read_text()


def test_the_command_line_prints_the_import_path_warning_as_one_line(tmp_path):
    """Red team 106: the command line printed Python's own warning format (the file and
    line of wasmsbx's code, the category, and the source line under it)."""
    import os
    import subprocess

    folder = tmp_path / "g"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *sys.path[:1]])}
    proc = subprocess.run(
        [sys.executable, "-m", "wasmsbx", "run", str(EXAMPLES / "add.wat"), "add", "1", "2",
         "--dir", str(folder)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "3\n", proc
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith("warning: filesystem.read_write"), proc.stderr
    assert "RuntimeWarning" not in proc.stderr and len(lines) == 1, proc.stderr
