"""The relay acts on a few of an instance's events (usage, [DONE], an error) and renames its model; it must
find them however an OpenAI-compatible instance spaces its JSON and SSE. `loose` is Python's json.dumps
spacing (vLLM's own error events are written so), `compact` orjson's: both must give the same answers."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.faults.harness import MODEL, Engine, Fleet, Router

ALIAS = "scripted-alias"
TOKENS = 4


@pytest.fixture(params=["compact", "loose"])
def served(request: pytest.FixtureRequest, fleet: Fleet) -> tuple[Engine, Router]:
    (engine,), router = fleet.start(1, tokens=TOKENS, delay_ms=1, aliases=(ALIAS,))
    engine.control(wire=request.param)
    return engine, router


def _body(path: str, model: str, **extra: Any) -> dict[str, Any]:
    if path == "/v1/chat/completions":
        return {"model": model, "messages": [{"role": "user", "content": "one two three"}], **extra}
    return {"model": model, "prompt": "one two three", **extra}


async def _events(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[bytes]:
    """Each `data:` payload of a streamed answer, as an SSE client reads it (one optional space is not data)."""
    response = await client.post(path, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    events = [event.removeprefix(b"data:") for event in response.content.split(b"\n\n") if event]
    return [event.removeprefix(b" ") for event in events]


PATHS = ["/v1/chat/completions", "/v1/completions"]
USAGE = {"prompt_tokens": 3, "completion_tokens": TOKENS, "total_tokens": 3 + TOKENS}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("model", [MODEL, ALIAS])
async def test_a_whole_answer_has_its_usage_and_the_public_model(
    served: tuple[Engine, Router], path: str, model: str
) -> None:
    _, router = served
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        answer = (await client.post(path, json=_body(path, model))).json()
    assert answer["usage"] == USAGE
    assert answer["model"] == model
    choice = answer["choices"][0]
    assert (choice["message"]["content"] if "message" in choice else choice["text"]) == "t0 t1 t2 t3 "


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("model", [MODEL, ALIAS])
async def test_a_stream_has_usage_only_when_asked_and_ends_with_done(
    served: tuple[Engine, Router], path: str, model: str
) -> None:
    _, router = served
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        plain = await _events(client, path, _body(path, model))
        asked = await _events(client, path, _body(path, model, stream_options={"include_usage": True}))
    for events in (plain, asked):
        assert events[-1] == b"[DONE]"
        assert {orjson.loads(e)["model"] for e in events[:-1]} == {model}
    assert not any(b'"usage"' in event for event in plain)
    usage = [orjson.loads(e)["usage"] for e in asked[:-1] if orjson.loads(e).get("usage")]
    assert usage == [USAGE]


@pytest.mark.parametrize("path", PATHS)
async def test_an_error_event_ends_a_stream_and_fails_a_whole_answer(served: tuple[Engine, Router], path: str) -> None:
    engine, router = served
    engine.control(fault="error")
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        events = await _events(client, path, _body(path, MODEL))
        whole = await client.post(path, json=_body(path, MODEL))
    assert b"[DONE]" not in events
    assert orjson.loads(events[-1])["error"]["message"] == "scripted error mid-stream"
    assert whole.status_code == 400 and whole.json()["error"]["message"] == "scripted error mid-stream"
