"""Every shell example in README.md runs as written, so the README cannot rot.

The rules the README's ```sh blocks follow (README, "Development"):

- one command per line (a trailing backslash continues it); it runs with bash, ``set -o
  pipefail``, in a fresh copy of the repository, with this test run's ``wasmsbx`` on PATH
  and stdin empty; the lines of one block run in order in the same copy;
- it must exit 0, or the code its comment names as ``exit N``;
- a comment containing ``illustrative`` marks a line that is not run: placeholder file
  names, commands that never end (``watch``), the installer and the test suite itself;
- a comment containing ``needs clang`` marks a line that runs only where clang can build
  wasm32-wasi (scripts/install-toolchain installs it).

The ```python blocks are tested elsewhere (the library's README test).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

README = ROOT / "README.md"
EXIT = re.compile(r"\bexit (\d+)\b")
# What a copy of the repository leaves out: virtual environments, git, caches.
IGNORE = shutil.ignore_patterns(".venv*", ".git", "__pycache__", ".pytest_cache", "*.egg-info")


class Line:
    """One command of a block: its text, its comment, the exit code it must give."""

    def __init__(self, number: int, command: str, comment: str) -> None:
        self.number = number
        self.command = command
        self.comment = comment
        found = EXIT.search(comment)
        self.expect = int(found.group(1)) if found else 0
        self.illustrative = "illustrative" in comment
        self.needs_clang = "needs clang" in comment

    def __repr__(self) -> str:
        return f"README.md:{self.number}: {self.command}"


def split_comment(text: str) -> tuple:
    """(command, comment): the first `` #`` that is outside quotes starts the comment."""
    for match in re.finditer(r"\s#", text):
        head = text[: match.start()]
        try:
            shlex.split(head)
        except ValueError:  # inside a quoted string
            continue
        return head.rstrip(), text[match.end() :].strip()
    return text.rstrip(), ""


def sh_blocks(text: str) -> list:
    """[(heading, first line number, [Line, ...])] for every ```sh block."""
    blocks, heading, current, start, pending = [], "top", None, 0, ""
    for number, raw in enumerate(text.splitlines(), 1):
        if current is None:
            if raw.startswith("#"):
                heading = raw.lstrip("#").strip()
            elif raw.strip() == "```sh":
                current, start = [], number + 1
            continue
        if raw.strip() == "```":
            blocks.append((heading, start, current))
            current = None
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line and not line.startswith("#"):
            current.append(Line(number, *split_comment(line)))
    return blocks


BLOCKS = sh_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_shell_examples():
    lines = [line for _, _, block in BLOCKS for line in block]
    assert len(lines) > 30 and sum(not line.illustrative for line in lines) > 20


def test_comment_split_respects_quotes():
    assert split_comment("printf '# x' | wc -c   # exit 0") == ("printf '# x' | wc -c", "exit 0")
    assert split_comment("wasmsbx run a.wat f") == ("wasmsbx run a.wat f", "")


@functools.cache
def clang_builds_wasm() -> bool:
    """What scripts/install-toolchain checks: clang builds a wasm32-wasi program."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-toolchain"), "--list"],
        capture_output=True,
        text=True,
    )
    return "clang" not in proc.stdout.split()


def test_bench_suite_example_is_the_file():
    text = README.read_text(encoding="utf-8")
    start = text.index("```toml\n[bench]") + len("```toml\n")
    assert text[start : text.index("```", start)] == (ROOT / "examples" / "bench.toml").read_text()


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT, copy, ignore=IGNORE, symlinks=True)
    return copy


@pytest.mark.slow
@pytest.mark.parametrize(
    "block", BLOCKS, ids=[f"{heading}:{start}" for heading, start, _ in BLOCKS]
)
def test_readme_shell_block_runs(block, repo_copy):
    _, _, lines = block
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for line in lines:
        if line.illustrative or (line.needs_clang and not clang_builds_wasm()):
            continue
        proc = subprocess.run(
            ["bash", "-c", f"set -o pipefail\n{line.command}"],
            cwd=repo_copy,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=600,
        )
        assert proc.returncode == line.expect, (
            f"{line!r}\nexit {proc.returncode}, README says {line.expect}\n"
            f"stdout: {proc.stdout.decode(errors='replace')[-2000:]}\n"
            f"stderr: {proc.stderr.decode(errors='replace')[-2000:]}"
        )
