"""``wasmsbx completions show|install [bash|zsh|fish]``: static shell completion scripts.

The scripts are generated from the command tree (commands, options, which options take a
file, a folder or one of a few words), so a Tab runs no Python: it answers in the time the
shell takes to run a function (~1 ms), where the dynamic completion of click/typer starts
wasmsbx on every Tab (~0.3 s). ``scripts/gen-completions`` writes the same text to
``completions/``, and a test keeps those files equal to ``render``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Optional

import typer

from .. import output
from ..boundary import boundary

SHELLS = ("bash", "zsh", "fish")
FILE_METAVARS = {"PATH", "FILE", "MODULE", "SOURCE", "INPUT"}
DIR_METAVARS = {"HOST[::GUEST]"}


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Shell completions: static scripts for bash, zsh and fish.",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    group.command("show")(boundary(show))
    group.command("install")(boundary(install))
    app.add_typer(group, name="completions")


SHELL_ARG = typer.Argument(
    None, metavar="[bash|zsh|fish]", help="The shell (default: the one in $SHELL)."
)


def show(shell: Optional[str] = SHELL_ARG) -> int:
    """Print the completion script for SHELL (to package it, or to read it)."""
    output.out(render(_shell(shell)).rstrip("\n"))
    return 0


def install(shell: Optional[str] = SHELL_ARG) -> int:
    """Install the completion script for SHELL where the shell loads it, and say where."""
    from ...outfile import write_output

    name = _shell(shell)
    target, note = _target(name)
    _make_folder(target.parent)
    _refuse_special(target)
    # As every output: written whole beside it and renamed into place (no temporary file
    # left behind when that fails), a link written through, never into the trust folder
    write_output(target, render(name))
    output.out(f"installed {name} completions: {target}")
    if note:
        output.out(note)
    return 0


def _shell(shell: Optional[str]) -> str:
    from ...errors import UsageError

    name = shell or Path(os.environ.get("SHELL", "")).name
    if name not in SHELLS:
        raise UsageError(
            f"unknown shell {name!r}" if name else "no shell given and $SHELL is not set",
            hint="wasmsbx completions install bash|zsh|fish",
        )
    return name


def _make_folder(folder: Path) -> None:
    """The shell's completion folder, made if missing (install's one output folder that
    may be created: it is where the shell looks)."""
    from ...errors import InputError

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # $XDG_DATA_HOME=/dev/null, a file in the way, no permission
        raise InputError(
            f"{folder}: cannot create the folder: {exc.strerror or exc}",
            hint="check $XDG_DATA_HOME and $XDG_CONFIG_HOME (or $HOME), "
            "or print the script with `wasmsbx completions show`",
            path=str(folder),
        ) from None


def _refuse_special(target: Path) -> None:
    """Only a regular file (or nothing) may be there: every new shell reads the script,
    so a FIFO or device would take it once and install nothing (and no output ever
    replaces one with a file); a directory is not a script either."""
    from ...errors import InputError

    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return  # nothing, or a link to nothing (which the writer refuses)
    except OSError as exc:
        raise InputError(f"{target}: cannot write: {exc.strerror}", path=str(target)) from None
    if not stat.S_ISREG(mode):
        from ...outfile import kind_of

        raise InputError(
            f"{target}: is {kind_of(mode)}, "
            "not a file a shell can load completions from; nothing was written",
            hint="remove it, or print the script with `wasmsbx completions show`",
            path=str(target),
        )


def _xdg(name: str, default: Path) -> Path:
    """$NAME if it is an absolute path, else ``default``: the XDG rules ignore a relative
    value (it wrote the script under the working folder, red team round 77), as the
    cache and trust folders do."""
    value = os.environ.get(name) or ""
    return Path(value) if os.path.isabs(value) else default


def _target(shell: str) -> tuple:
    """(file, what the user still has to do) for each shell's usual user location."""
    home = Path.home()
    data = _xdg("XDG_DATA_HOME", home / ".local" / "share")
    if shell == "bash":  # bash-completion loads it on the first Tab after `wasmsbx `
        target = data / "bash-completion" / "completions" / "wasmsbx"
        return target, (
            "new bash shells load it through the bash-completion package; without that "
            f"package, add to ~/.bashrc: source {target}"
        )
    if shell == "fish":  # fish autoloads this folder
        config = _xdg("XDG_CONFIG_HOME", home / ".config")
        return config / "fish" / "completions" / "wasmsbx.fish", None
    target = data / "wasmsbx" / "completions" / "wasmsbx.zsh"
    return target, f"add to ~/.zshrc (after compinit): source {target}"


# ---------------------------------------------------------------------------- the model


def command_tree() -> dict:
    """{"": top, "run": ..., "cache list": ...} -> {"help", "subcommands", "options",
    "positional"}; options as (names, kind, choices, help) with kind in flag, value,
    file, dir, choice."""
    from ..app import _plain_help, build_app

    root = typer.main.get_command(build_app())
    _plain_help(root)
    tree: dict = {}
    _walk(root, "", tree)
    return tree


def _walk(command: Any, path: str, tree: dict) -> None:
    subs = getattr(command, "commands", {})
    options, positional = [], None
    for param in command.params:
        if param.param_type_name == "argument":
            positional = positional or _kind(param.metavar)
            continue
        options.append((tuple(param.opts), *_option_kind(param), _first_line(param.help)))
    options.append((("--help", "-h"), "flag", (), "Show the help and exit."))
    tree[path] = {
        "help": _first_line(command.help or ""),
        "subcommands": sorted(subs),
        "options": options,
        "positional": positional,
    }
    for name, sub in sorted(subs.items()):
        _walk(sub, f"{path} {name}".strip(), tree)


def _option_kind(param: Any) -> tuple:
    if param.is_flag or getattr(param, "count", False):
        return "flag", ()
    descriptor = getattr(param, "type_descriptor", None)  # typer >= 0.2x
    choices = getattr(getattr(param, "type", None), "choices", None) or getattr(
        descriptor, "choices", None
    )
    if choices:
        return "choice", tuple(str(getattr(c, "value", c)) for c in choices)
    return _kind(param.metavar), ()


def _kind(metavar: Optional[str]) -> str:
    if metavar in FILE_METAVARS:
        return "file"
    if metavar in DIR_METAVARS:
        return "dir"
    return "value"


def _first_line(text: Optional[str]) -> str:
    line = (text or "").strip().split("\n")[0]
    return line.split(". ")[0].rstrip(".")


# ---------------------------------------------------------------------------- the scripts

HEADER = "# wasmsbx completion for {shell}: static, generated from the CLI by {how}. Do not edit.\n"


def render(shell: str) -> str:
    tree = command_tree()
    body = {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](tree)
    how = "scripts/gen-completions (wasmsbx completions show)"
    return HEADER.format(shell=shell, how=how) + body


def _bash(tree: dict) -> str:
    cases, values = [], []
    for path, node in tree.items():
        opts = " ".join(w for names, *_ in node["options"] for w in names)
        files = 1 if node["positional"] == "file" else 0
        subs = " ".join(node["subcommands"])
        cases.append(f'        "{path}") opts=({opts}); subs=({subs}); files={files} ;;')
        for names, kind, choices, _ in node["options"]:
            if kind == "flag":
                continue
            action = {"file": "files=1", "dir": "dirs=1", "choice": f"subs=({' '.join(choices)})"}
            pattern = "|".join(f'"{path}:{n}"' for n in names)
            values.append(f"    {pattern}) {action.get(kind, ':')} ;;")
    groups = "|".join(f'"{p}"' for p, n in tree.items() if n["subcommands"])
    return BASH.format(groups=groups, cases="\n".join(cases), values="\n".join(values))


# Plain bash that zsh also runs (through bashcompinit, with ksharrays): no compgen, whose
# zsh emulation differs (words are filtered and files globbed here), and no variable named
# like a zsh special one (path, words).
BASH = r"""
_wasmsbx() {{
  [ -n "${{ZSH_VERSION-}}" ] && setopt localoptions ksharrays nullglob
  local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
  local cmd="" i w files=0 dirs=0
  local -a opts=() subs=()
  COMPREPLY=()
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=${{COMP_WORDS[i]}}
    if [ "$w" = "--" ]; then cmd="--"; break; fi
    case "$cmd" in
      {groups}) case "$w" in -*) ;; *) cmd="${{cmd:+$cmd }}$w" ;; esac ;;
    esac
  done
  case "$cmd:$prev" in  # the value of an option
    --:*) files=1 ;;
{values}
    *)
      case "$cmd" in
{cases}
        *) files=1 ;;
      esac
      if [[ $cur == -* ]]; then subs=("${{opts[@]}}"); files=0; fi ;;
  esac
  for w in "${{subs[@]}}"; do [[ $w == "$cur"* ]] && COMPREPLY+=("$w"); done
  if [ "$files" = 1 ] || [ "$dirs" = 1 ]; then
    for w in "$cur"*; do
      if [ -d "$w" ] || {{ [ "$files" = 1 ] && [ -e "$w" ]; }}; then COMPREPLY+=("$w"); fi
    done
  fi
  return 0
}}
complete -o filenames -o bashdefault -F _wasmsbx wasmsbx
"""


def _zsh(tree: dict) -> str:
    # zsh runs the bash function through bashcompinit: one generated logic, two shells.
    return (
        "autoload -U +X compinit && { (( $+functions[compdef] )) || compinit; }\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + _bash(tree)
    )


def _fish(tree: dict) -> str:
    lines = ["complete -c wasmsbx -f"]
    for path, node in tree.items():
        depth = len(path.split()) if path else 0
        cond = _fish_condition(path, tree)
        for sub in node["subcommands"]:
            sub_help = tree[f"{path} {sub}".strip()]["help"]
            lines.append(
                f"complete -c wasmsbx -n {_q(cond)} -a {sub} -d {_q(sub_help)}"
                if depth == 0
                else f"complete -c wasmsbx -n {_q(cond)} -a {sub} -d {_q(sub_help)}"
            )
        if node["positional"] == "file":
            lines.append(f"complete -c wasmsbx -n {_q(cond)} -F")
        for names, kind, choices, help_ in node["options"]:
            spec = " ".join(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}" for n in names)
            extra = {"flag": "", "file": " -r -F", "dir": " -r -a '(__fish_complete_directories)'"}
            more = extra.get(kind, " -r")
            if kind == "choice":
                more = f" -r -a {_q(' '.join(choices))}"
            lines.append(f"complete -c wasmsbx -n {_q(cond)} {spec}{more} -d {_q(help_)}")
    return "\n".join(lines) + "\n"


def _fish_condition(path: str, tree: dict) -> str:
    """True while the command line is at exactly ``path`` (no deeper subcommand yet)."""
    top = tree[""]["subcommands"]
    if not path:
        return f"not __fish_seen_subcommand_from {' '.join(top)}"
    parts = path.split()
    cond = " && ".join(f"__fish_seen_subcommand_from {p}" for p in parts)
    subs = tree[path]["subcommands"]
    if subs:
        cond += f" && not __fish_seen_subcommand_from {' '.join(subs)}"
    return cond


def _q(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
