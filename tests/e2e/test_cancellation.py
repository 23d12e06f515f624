"""A client that leaves gets its engine request aborted within a second (vLLM's own running count)."""

from __future__ import annotations

import re
import threading
import time

import httpx

from tests.conftest import TEXT_MODEL
from tests.support.waiting import wait_until

LONG = {"model": TEXT_MODEL, "prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True}


def running(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    values = re.findall(r'^vllm:num_requests_running\{[^}]*model_name="gemma-3-270m"[^}]*\} (\S+)$', text, re.M)
    assert values, "vLLM's running gauge is missing"
    return sum(float(v) for v in values)


def wait_for(http: httpx.Client, want: float, timeout_s: float) -> float:
    """When the engine's running-requests gauge reads `want`."""
    return wait_until(lambda: running(http) == want, timeout_s, f"running requests == {want}")


def test_stream_disconnect_aborts(http: httpx.Client) -> None:
    wait_for(http, 0, 30)
    with httpx.Client(base_url=str(http.base_url), timeout=60) as own:
        with own.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            wait_for(http, 1, 10)
        left = time.monotonic()
    assert wait_for(http, 0, 5) - left < 1.0


def test_non_stream_disconnect_aborts(http: httpx.Client) -> None:
    wait_for(http, 0, 30)
    done = threading.Event()

    def request() -> None:
        try:
            httpx.post(http.base_url.join("/v1/completions"), json=LONG, timeout=3)
        except httpx.TimeoutException:
            pass
        done.set()

    threading.Thread(target=request, daemon=True).start()
    wait_for(http, 1, 10)
    assert done.wait(10)
    left = time.monotonic()
    assert wait_for(http, 0, 5) - left < 1.0
