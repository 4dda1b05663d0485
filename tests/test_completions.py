"""Shell completions: static scripts generated from the CLI, current, answering without
starting Python, and installed by `wasmsbx completions install`."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from wasmsbx.cli.commands.completion import SHELLS, render

from .conftest import ROOT

SCRIPT = ROOT / "completions" / "wasmsbx.bash"


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_scripts_are_current(shell):
    path = ROOT / "completions" / f"wasmsbx.{shell}"
    assert path.read_text() == render(shell), "stale: run scripts/gen-completions"
    assert "python" not in path.read_text() and "_WASMSBX_COMPLETE" not in path.read_text()


def bash_complete(*words: str, cwd=None) -> list:
    """COMPREPLY for the command line ``words`` (the last one is being completed)."""
    line = " ".join(f"'{w}'" for w in words)
    script = (
        f"source {SCRIPT}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _wasmsbx; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.split("\n") if w]


def test_bash_offers_commands_options_choices_files_and_folders(isolated):
    (isolated / "data").mkdir()
    (isolated / "mod.wasm").write_bytes(b"")
    assert {"run", "policy", "completions", "cache"} <= set(bash_complete("wasmsbx", ""))
    assert bash_complete("wasmsbx", "run", "--ti") == ["--timeout"]
    assert set(bash_complete("wasmsbx", "cache", "")) == {
        "list", "stats", "clear", "prune", "verify", "path",
    }  # fmt: skip
    assert bash_complete("wasmsbx", "audit", "m", "--fail-on", "") == [
        "info", "low", "medium", "high",
    ]  # fmt: skip
    assert bash_complete("wasmsbx", "run", "--dir-ro", "", cwd=isolated) == ["data"]
    assert set(bash_complete("wasmsbx", "run", "", cwd=isolated)) == {"data", "mod.wasm"}
    assert "mod.wasm" in bash_complete("wasmsbx", "run", "x", "--", "", cwd=isolated)
    assert "--memory" in bash_complete("wasmsbx", "policy", "show", "--m")
    assert "-e" in bash_complete("wasmsbx", "bench", "m.wat", "-")


def test_a_tab_costs_about_a_millisecond_of_cpu():
    """The budget is 50 ms per Tab; CPU time (bash's `times`), so load cannot sway it."""
    script = (
        f"source {SCRIPT}; for i in $(seq 50); do COMP_WORDS=(wasmsbx run --ti); "
        "COMP_CWORD=2; _wasmsbx; COMP_WORDS=(wasmsbx cache ''); COMP_CWORD=2; _wasmsbx; done; times"
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    seconds = 0.0
    for field in proc.stdout.split():  # "0m0.074s" x 4: shell and children, user and system
        minutes, _, rest = field.partition("m")
        seconds += int(minutes) * 60 + float(rest.rstrip("s"))
    assert seconds / 100 < 0.050, proc.stdout


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed")
def test_zsh_script_completes(isolated):
    script = (
        f"source {ROOT / 'completions' / 'wasmsbx.zsh'}; COMP_WORDS=(wasmsbx run --ti); "
        "COMP_CWORD=2; _wasmsbx; print -l -- $COMPREPLY"
    )
    proc = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True)
    assert proc.stdout.split() == ["--timeout"], proc


@pytest.mark.skipif(not shutil.which("fish"), reason="fish is not installed")
def test_fish_script_completes(isolated):
    fish = ROOT / "completions" / "wasmsbx.fish"

    def complete(line: str) -> list:
        code = f"source {fish}; complete -C '{line}'"
        proc = subprocess.run(["fish", "-c", code], capture_output=True, text=True)
        return [row.split("\t")[0] for row in proc.stdout.splitlines()]

    assert "--timeout" in complete("wasmsbx run --ti")
    assert {"list", "stats"} <= set(complete("wasmsbx cache "))
    assert "medium" in complete("wasmsbx audit m --fail-on ")


@pytest.mark.parametrize("shell", SHELLS)
def test_install_writes_where_the_shell_loads_it(cli_inproc, isolated, shell):
    env = {"XDG_DATA_HOME": str(isolated / "data"), "XDG_CONFIG_HOME": str(isolated / "cfg")}
    result = cli_inproc("completions", "install", shell, env=env)
    assert result.code == 0, result
    expected = {
        "bash": isolated / "data" / "bash-completion" / "completions" / "wasmsbx",
        "zsh": isolated / "data" / "wasmsbx" / "completions" / "wasmsbx.zsh",
        "fish": isolated / "cfg" / "fish" / "completions" / "wasmsbx.fish",
    }[shell]
    assert expected.read_text() == render(shell)
    assert str(expected) in result.stdout
    assert cli_inproc("completions", "show", shell).stdout == render(shell)


def test_install_takes_the_shell_from_SHELL_or_says_what_is_wrong(cli_inproc, isolated):
    result = cli_inproc("completions", "install", "tcsh")
    assert result.code == 2 and "unknown shell 'tcsh'" in result.stderr
    env = {"SHELL": "/usr/bin/bash", "XDG_DATA_HOME": str(isolated)}
    result = cli_inproc("completions", "install", env=env)
    assert result.code == 0 and (isolated / "bash-completion" / "completions" / "wasmsbx").is_file()


@pytest.mark.parametrize("shell", SHELLS)
def test_install_ignores_relative_xdg_folders(cli_inproc, isolated, shell, tmp_path):
    """Red team round 77: a relative $XDG_DATA_HOME or $XDG_CONFIG_HOME wrote the script
    under the working folder; the XDG rules ignore one, as the cache and trust do."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_DATA_HOME": "rel-data", "XDG_CONFIG_HOME": "rel-cfg"}
    result = cli_inproc("completions", "install", shell, env=env, cwd=isolated)
    assert result.code == 0, result
    assert not (isolated / "rel-data").exists() and not (isolated / "rel-cfg").exists()
    expected = {
        "bash": home / ".local" / "share" / "bash-completion" / "completions" / "wasmsbx",
        "zsh": home / ".local" / "share" / "wasmsbx" / "completions" / "wasmsbx.zsh",
        "fish": home / ".config" / "fish" / "completions" / "wasmsbx.fish",
    }[shell]
    assert expected.read_text() == render(shell)
