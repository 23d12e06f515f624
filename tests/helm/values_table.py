"""The chart README's values table, generated from the `# --` comments of values.yaml.

    python -m tests.helm.values_table          # rewrite the table in helm/tokenyard/README.md

A `# -- text` comment (continued by the `#` lines after it) documents the key on the next line; keys inside
list items are not listed (the comment on the list documents them). tests/helm/test_values_table.py fails
when the README's table is not what this writes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.helm.rendering import CHART_DIR

README = CHART_DIR / "README.md"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(\s|$)")
_SHOWN_CHARS = 60  # longer defaults are left to values.yaml


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) in file order."""
    rows: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    description: list[str] | None = None
    list_item_indent: int | None = None
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("# --"):
            description = [stripped.removeprefix("# --").strip()]
        elif stripped.startswith("#"):
            if description is not None:
                description.append(stripped.lstrip("#").strip())
        elif not stripped:
            description = None
        elif stripped.startswith("- "):
            list_item_indent = indent if list_item_indent is None else min(list_item_indent, indent)
            description = None
        elif match := _KEY.match(line):
            if list_item_indent is not None and indent > list_item_indent:
                continue
            list_item_indent = None
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            if description is not None:
                rows.append((".".join(key for _, key in stack), " ".join(description)))
            description = None
    return rows


def _default(values: dict[str, Any], key: str) -> str:
    node: Any = values
    for part in key.split("."):
        node = node[part]
    shown = json.dumps(node)
    return f"`{shown}`" if len(shown) <= _SHOWN_CHARS else "see values.yaml"


def table() -> str:
    text = (CHART_DIR / "values.yaml").read_text()
    values = yaml.safe_load(text)
    lines = ["| key | default | description |", "|---|---|---|"]
    for key, description in documented_keys(text):
        cells = [f"`{key}`", _default(values, key), description]
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("<", "&lt;") for cell in cells) + " |")
    return "\n".join(lines)


def readme_with_table(readme: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    README.write_text(readme_with_table(README.read_text()))
