"""The exit-code table is written once in the README and once in wasmsbx.errors: they agree."""

import re
from pathlib import Path

from wasmsbx.errors import EXIT_WORDS, ExitCode

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_codes() -> set:
    text = README.read_text()
    table = text[text.index("## Exit codes") :]
    table = table[: table.index("\n\n", table.index("| code"))]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)}


def test_readme_table_lists_every_code():
    codes = {v for k, v in vars(ExitCode).items() if k.isupper() and k != "GUEST_STATUS_MAX"}
    assert readme_codes() == codes == set(EXIT_WORDS)


def test_help_text_names_every_code():
    from wasmsbx.cli.app import HELP

    for code, words in EXIT_WORDS.items():
        assert f"{code} {words}" in HELP
