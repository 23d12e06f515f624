"""docs/development.md's table of stops for a streamed chat request names code that exists: every
`file.py:name` in it is a module of the project that defines `name` (a class's method as `Class.method`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "development.md"
SOURCES = [*ROOT.joinpath("gateway").rglob("*.py"), *ROOT.joinpath("engine_adapters").rglob("*.py")]


def stops() -> list[tuple[str, str]]:
    page = PAGE.read_text()
    table = page[page.index("| stage | engine mode | router mode |") :]
    table = table[: table.index("\n\n")]
    return re.findall(r"`([\w/]+\.py):([\w.]+)`", table)


def defined(path: Path) -> set[str]:
    """The module's classes and functions, and each class's methods as Class.method."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {
                f"{node.name}.{item.name}"
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
    return names


def test_every_stop_in_the_table_exists() -> None:
    found = stops()
    assert len(found) > 20  # the table is read
    missing = []
    for file, name in found:
        candidates = [path for path in SOURCES if path.as_posix().endswith("/" + file)]
        if len(candidates) != 1 or name not in defined(candidates[0]):
            missing.append(f"{file}:{name}")
    assert missing == []
