"""The compatibility matrix (docs/compatibility.md): every row has a status and names tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATUSES = ("supported", "ignored", "rejected")
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def matrix_rows() -> list[list[str]]:
    text = (ROOT / "docs" / "compatibility.md").read_text()
    section = text.split("\n## Compatibility matrix\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| name")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows if not set(row) <= set("|- ")]


def test_every_row_has_a_status_and_a_test_that_exists() -> None:
    rows = matrix_rows()
    assert len(rows) > 30
    for name, status, _notes, tests in rows:
        assert status.startswith(STATUSES), f"{name}: status {status!r}"
        refs = TEST_REF.findall(tests)
        assert refs, f"{name}: no test named"
        for path, function in refs:
            source = (ROOT / path).read_text()
            assert re.search(rf"^(async )?def {function}\(", source, re.M), f"{name}: {path}::{function} is missing"
