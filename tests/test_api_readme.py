"""Every ```python block of README.md runs, and passes ``mypy --strict`` and pyright."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from .conftest import EXAMPLES, ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path):
    """Each block in a fresh interpreter, in a temp dir holding the repo's examples/."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    script = tmp_path / f"block{index}.py"
    script.write_text(
        f'if __name__ == "__main__":\n    exec(compile({BLOCKS[index]!r}, "README", "exec"))\n'
    )
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"README block {index}:\n{BLOCKS[index]}\n{proc.stderr}"


@pytest.mark.slow
def test_readme_examples_pass_mypy_strict(tmp_path):
    """The public API is typed (py.typed): mypy --strict accepts the README's code."""
    pytest.importorskip("mypy")
    if sys.version_info < (3, 10):
        # mypy running on 3.9 reads the "# type: ..." field comments of facts.py's records
        # as PEP 484 type comments and stops; the check runs on the 3.11 leg.
        pytest.skip("mypy on Python 3.9 misreads facts.py's field comments")
    for index, block in enumerate(BLOCKS):
        (tmp_path / f"readme_{index}.py").write_text(block)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent"]
        + [str(p) for p in sorted(tmp_path.glob("readme_*.py"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Misuses a type checker must flag: if the public API decays to Any (as it did when
# Sandbox.__new__ was annotated Any), the README blocks still pass, so this must fail.
MISUSE = """import wasmsbx

with wasmsbx.Sandbox("examples/add.wat") as box:
    box.call(1)
    box.memory().read("0", 4)
    box.audit(1)
"""


def _misuse_flagged(output: str) -> bool:
    return all(f"misuse.py:{line}" in output for line in (4, 5, 6))


@pytest.mark.slow
def test_type_checkers_see_the_api(tmp_path):
    """mypy flags misuses of the public API: it sees types, not Any."""
    pytest.importorskip("mypy")
    if sys.version_info < (3, 10):
        pytest.skip("mypy on Python 3.9 misreads facts.py's field comments")
    (tmp_path / "misuse.py").write_text(MISUSE)
    argv = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent"]
    argv += ["--show-traceback", "--cache-dir", str(tmp_path / "mypy-cache")]
    for _ in range(2):
        proc = subprocess.run(
            [*argv, str(tmp_path / "misuse.py")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        # mypy 2.4.1 once crashed ("INTERNAL ERROR") in a full parallel run on the same
        # code that passed before and after: a crash of the checker is tried once more
        # (its traceback is printed if it happens again); a verdict is never retried.
        if "INTERNAL ERROR" not in proc.stdout + proc.stderr:
            break
    assert proc.returncode == 1 and _misuse_flagged(proc.stdout), proc.stdout + proc.stderr


@pytest.mark.slow
def test_readme_examples_pass_pyright(tmp_path):
    """pyright (PyPI; it runs on Node.js) accepts the README's code and flags misuses."""
    pytest.importorskip("pyright")
    if shutil.which("node") is None:
        pytest.skip("pyright needs Node.js (apt install nodejs)")
    for index, block in enumerate(BLOCKS):
        (tmp_path / f"readme_{index}.py").write_text(block)
    argv = [sys.executable, "-m", "pyright", "--pythonpath", sys.executable]
    files = [str(p) for p in sorted(tmp_path.glob("readme_*.py"))]
    proc = subprocess.run(argv + files, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "misuse.py").write_text(MISUSE)
    proc = subprocess.run(
        argv + [str(tmp_path / "misuse.py")], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 1 and _misuse_flagged(proc.stdout), proc.stdout + proc.stderr
