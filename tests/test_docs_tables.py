"""Every Markdown table in README.md and docs/ renders as one table: a header, its separator row, and rows
with as many cells as the header (a paragraph inside a table turns its last rows into plain text)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SEPARATOR = re.compile(r"\|( *:?-+:? *\|)+")


def cells(line: str) -> int:
    return len(re.split(r"(?<!\\)\|", line.strip())) - 2  # escaped \| is text, not a border


def tables(text: str):
    """(line number, rows) of each run of table lines outside code blocks."""
    lines, fenced, i = text.split("\n"), False, 0
    while i < len(lines):
        if lines[i].strip().startswith("```"):
            fenced = not fenced
        elif not fenced and lines[i].startswith("|"):
            start = i
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            yield start + 1, lines[start:i]
            continue
        i += 1


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_table_is_whole(document):
    found = list(tables(document.read_text()))
    for line, rows in found:
        assert len(rows) >= 2 and SEPARATOR.fullmatch(rows[1].replace(" ", "")), \
            f"{document.name}:{line}: table lines without a header and separator (a table cut by a paragraph?)"
        widths = {cells(row) for row in rows}
        assert len(widths) == 1, f"{document.name}:{line}: rows of {sorted(widths)} cells"
