"""The README's examples, run as written against the real server (only the address changes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, Server

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README, re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
# The router's example runs against a router, in test_router.py; the rest against engine mode here.
ENGINE_PYTHON = [code for code in PYTHON if 'model="gemma"' not in code]
CURLS = [code for lang, code in BLOCKS if lang == "bash" and code.startswith("curl ")]


def _local(code: str, server: Server) -> str:
    return code.replace("http://localhost:8000", server.url)


def test_readme_has_examples() -> None:
    assert len(ENGINE_PYTHON) == 1 and len(PYTHON) == 2 and len(CURLS) == 4


@pytest.mark.parametrize("code", ENGINE_PYTHON)
def test_python_example(server: Server, code: str) -> None:
    result = subprocess.run([sys.executable, "-c", _local(code, server)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "gemma-3-270m" in lines[0] and lines[-1] == "384"
    assert "Paris" in lines[1]


@pytest.mark.parametrize("code", CURLS)
def test_curl_example(server: Server, code: str) -> None:
    command = _local(code, server).replace("curl ", "curl --silent --fail-with-body ", 1)
    result = subprocess.run(["bash", "-c", command],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    body = json.loads(result.stdout)
    assert body["object"] in ("list", "chat.completion", "text_completion")
    if body["object"] != "list":
        assert body["choices"][0]
