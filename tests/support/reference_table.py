"""The tables of docs/references.md "What you would type elsewhere": each row a command of the
reference tool (left) and what to write in credbridge instead (right)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "references.md"
CODE = re.compile(r"`([^`]+)`")


def table_rows(heading: str) -> list[tuple[str, str]]:
    """(left cell, right cell) of the table under ``### heading`` in the section."""
    text = DOC.read_text()
    section = text.split("## What you would type elsewhere", 1)[1]
    body = section.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in body.splitlines():
        if not line.startswith("| ") or line.startswith(("| reference tool", "|---")):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append((cells[0], cells[1]))
    return rows


def first_code_spans(heading: str) -> list[tuple[str, str]]:
    """(command, reference): the first code span of each cell of the table under ``heading``."""
    return [(CODE.findall(left)[0], CODE.findall(right)[0]) for left, right in table_rows(heading)]


def references(cell: str) -> list[str]:
    """The credbridge references among the code spans of ``cell``."""
    return [code for code in CODE.findall(cell) if ":" in code and " " not in code]
