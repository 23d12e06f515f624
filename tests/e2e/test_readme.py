"""The examples of the README and the quick start page, run as written against the real server (only the
address changes). The router's example, in docs/router.md, runs against a router in test_router.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, Server

PAGES = ("README.md", "docs/quickstart.md")


def code_blocks(page: str) -> list[tuple[str, str]]:
    """(language, code) of each python and bash block of a Markdown file under the repository root."""
    return re.findall(r"```(python|bash)\n(.*?)```", (ROOT / page).read_text(), re.S)


BLOCKS = {page: code_blocks(page) for page in PAGES}
PYTHON = [code for blocks in BLOCKS.values() for lang, code in blocks if lang == "python"]
CURLS = [code for blocks in BLOCKS.values() for lang, code in blocks if lang == "bash" and code.startswith("curl ")]


def _local(code: str, server: Server) -> str:
    return code.replace("http://localhost:8000", server.url)


def test_pages_have_examples() -> None:
    counts = {
        page: [lang for lang, code in blocks if lang == "python" or code.startswith("curl ")]
        for page, blocks in BLOCKS.items()
    }
    assert counts == {"README.md": ["python"] + ["bash"] * 4, "docs/quickstart.md": ["bash", "bash", "python"]}


@pytest.mark.parametrize("code", PYTHON)
def test_python_example(server: Server, code: str) -> None:
    result = subprocess.run([sys.executable, "-c", _local(code, server)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "gemma-3-270m" in lines[0] and lines[-1] == "384"
    assert "Paris" in lines[1]


@pytest.mark.parametrize("code", CURLS)
def test_curl_example(server: Server, code: str) -> None:
    command = _local(code, server).replace("curl ", "curl --silent --fail-with-body ", 1)
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    body = json.loads(result.stdout)
    assert body["object"] in ("list", "chat.completion", "text_completion")
    if body["object"] != "list":
        assert body["choices"][0]
