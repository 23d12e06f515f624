"""What a client sees: a streamed request's events and their times, or a whole answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tests.faults.harness import MODEL


@dataclass
class Outcome:
    status: int = 0
    ending: str = "none"  # "done" ([DONE]), "error" (an error event), "cut" (the body just ended), "json"
    chunks: int = 0  # events that carried text
    started: float = 0.0
    ended: float = 0.0
    body: dict[str, Any] = field(default_factory=dict)


def completion(max_tokens: int | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "prompt": "hello", **extra}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


async def stream(
    client: httpx.AsyncClient, body: dict[str, Any], on_first: Callable[[], None] = lambda: None
) -> Outcome:
    outcome = Outcome(started=time.monotonic())
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        outcome.status = response.status_code
        if response.status_code != 200:
            outcome.body = orjson.loads(await response.aread())
        else:
            outcome.ending = "cut"
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    outcome.ending = "done"
                    break
                event = orjson.loads(line[6:])
                if "error" in event:
                    outcome.ending, outcome.body = "error", event
                elif any(choice.get("text") for choice in event["choices"]):
                    outcome.chunks += 1
                    if outcome.chunks == 1:
                        on_first()
    outcome.ended = time.monotonic()
    return outcome


async def whole(client: httpx.AsyncClient, body: dict[str, Any]) -> Outcome:
    outcome = Outcome(started=time.monotonic(), ending="json")
    response = await client.post("/v1/completions", json=body)
    outcome.ended = time.monotonic()
    outcome.status, outcome.body = response.status_code, response.json()
    return outcome
