"""README's `submit` table against the command itself: every option has a row, and a literal default
there (a value in backticks) is the one `--help` shows."""
from __future__ import annotations

import re
from pathlib import Path

from novarch_batch.pipeline.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_rows() -> dict[str, str]:
    """Each flag of the submit table's first column, with its row's default cell."""
    text = README.read_text()
    table = text[text.index("`submit` flags"):].split("\n\n")[1]  # the paragraph after its heading line
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `--"):
            flags, default = [cell.strip() for cell in line.split(" | ")[:2]]
            for flag in re.findall(r"--[a-z][a-z-]*", flags):
                rows[flag] = default
    return rows


def help_defaults() -> dict[str, str | None]:
    found = {}
    for param in cli.commands["submit"].params:
        shown = re.search(r"\[default: ([^\]]*)\]\s*$", param.help or "")
        found[param.opts[0]] = shown.group(1) if shown else None
    return found


def test_every_submit_option_has_a_row_and_no_row_names_another():
    assert sorted(readme_rows()) == sorted(help_defaults())


def test_a_literal_default_in_the_readme_is_the_one_help_shows():
    defaults = help_defaults()
    literal = {flag: cell.strip("`") for flag, cell in readme_rows().items() if re.fullmatch(r"`[^`]+`", cell)}
    assert literal, "the table has no literal default left to check"
    assert {flag: defaults[flag] for flag in literal} == literal
