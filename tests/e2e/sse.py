"""Reading raw SSE bodies, to check the framing byte for byte."""

from __future__ import annotations

from typing import Any

import httpx
import orjson


def post_stream(http: httpx.Client, path: str, body: dict[str, Any]) -> tuple[list[Any], str]:
    """Return the parsed data events (with the literal "[DONE]" kept) and the raw text."""
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events: list[Any] = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else orjson.loads(data))
    assert raw.endswith("\n\n")
    return events, raw
