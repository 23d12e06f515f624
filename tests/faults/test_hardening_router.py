"""Issue 33, the router's side: what a client sends must not crash a route, slip past it, or pin memory in it.
Real router processes in front of scripted instances (tests.support.scripted_upstream)."""

from __future__ import annotations

import httpx
import pytest

from tests.faults.harness import MODEL, Fleet

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "say something"}]


@pytest.mark.parametrize("best_of", ["abc", [2], {"n": 2}])
def test_a_resumable_stream_with_a_bad_count_is_a_400(fleet: Fleet, best_of: object) -> None:
    engines, router = fleet.start(1, tokens=4, delay_ms=1, route={"resume_streams": True}, log_level="info")
    for field in ("best_of", "n", "max_tokens"):
        body = {"model": MODEL, "messages": MESSAGES, "stream": True, field: best_of}
        answer = httpx.post(f"{router.url}{CHAT}", json=body, timeout=10)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == field
    assert "Traceback" not in router.log_path.read_text()
    ok = httpx.post(f"{router.url}{CHAT}", json={"model": MODEL, "messages": MESSAGES, "stream": True, "n": "1"})
    assert ok.status_code == 200 and ok.text.rstrip().endswith("data: [DONE]")
