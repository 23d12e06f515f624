"""Router mode imports nothing from vLLM (or torch), so the slim router image (Dockerfile.router), which has
neither, runs it: a real router process, with Python's import-time log on, serves a request."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.faults.client import completion
from tests.faults.harness import Fleet

ENGINE_PACKAGES = ("vllm", "torch", "transformers")


def test_a_serving_router_never_imports_an_engine_package(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # each import logged to stderr: the router's log
    _, router = fleet.start(1, tokens=2, delay_ms=1)
    assert httpx.post(f"{router.url}/v1/completions", json=completion(max_tokens=2), timeout=10).status_code == 200
    assert httpx.get(f"{router.url}/metrics", timeout=10).status_code == 200
    router.stop()
    log = router.log_path.read_text()
    imported = set(re.findall(r"^import time:.*\|\s+(\S+)$", log, re.MULTILINE))
    assert "gateway.routing.adapter" in imported  # the log is there and covers the router's own modules
    assert sorted(m for m in imported if m.split(".")[0] in ENGINE_PACKAGES) == []
    assert sorted(m for m in imported if m.startswith("opentelemetry")) == []  # tracing off: not even imported
