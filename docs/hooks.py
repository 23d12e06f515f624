"""MkDocs hooks: the benchmark plots live in bench/results/, outside docs/.

Pages link them as `../bench/results/NAME.png`, which is right when the Markdown is read on GitHub. The
site gets each plot as a file at `bench/results/NAME.png` and the links are rewritten to match, so
`mkdocs build --strict` checks them like any other link.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "bench/results"


def on_files(files: Files, config: Any) -> Files:
    for plot in sorted((ROOT / RESULTS).glob("*.png")):
        files.append(File.generated(config, f"{RESULTS}/{plot.name}", abs_src_path=str(plot)))
    return files


def on_page_markdown(markdown: str, **_: Any) -> str:
    return markdown.replace(f"](../{RESULTS}/", f"]({RESULTS}/")
