"""The gateway's own error handling, over the ASGI app with a scripted engine (no real engine needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from engine_adapters.base import EngineAdapter
from gateway.app import create_app
from gateway.errors import EngineUnavailable, InvalidRequest, error_payload
from gateway.settings import Settings
from tests.support.scripted_engine import Script, ScriptedAdapter

SECRET = "internal detail that must not leak"


async def _client(adapter: ScriptedAdapter) -> AsyncIterator[httpx.AsyncClient]:
    async def factory(settings: Settings) -> dict[str, EngineAdapter]:
        return {adapter.name: adapter}

    app = create_app(Settings(models=[]), adapter_factory=factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def _chat(stream: bool = False, **extra: object) -> dict[str, object]:
    return {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}


def _events(body: bytes) -> list[bytes]:
    return [line[len(b"data: ") :] for line in body.split(b"\n\n") if line.startswith(b"data: ")]


def test_error_payload_shapes() -> None:
    status, body = error_payload(InvalidRequest("bad", param="x"))
    assert status == 400
    assert body == {"error": {"message": "bad", "type": "invalid_request_error", "param": "x", "code": None}}
    status, body = error_payload(RuntimeError(SECRET))
    assert status == 500 and SECRET not in str(body) and body["error"]["type"] == "api_error"
    assert error_payload(EngineUnavailable("down"))[0] == 503


async def test_mid_stream_failure_becomes_an_error_event() -> None:
    adapter = ScriptedAdapter(script=Script(tokens=10, fail_after=3, fail_with=RuntimeError(SECRET)))
    async for client in _client(adapter):
        response = await client.post("/v1/chat/completions", json=_chat(stream=True))
        assert response.status_code == 200
        events = _events(response.content)
        assert b"[DONE]" not in events
        last = orjson.loads(events[-1])
        assert last["error"]["type"] == "api_error" and last["error"]["code"] is None
        assert SECRET not in response.text
        contents = [orjson.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
        assert contents == ["", "t0 ", "t1 ", "t2 "]


async def test_failure_before_first_chunk_is_a_plain_http_error() -> None:
    adapter = ScriptedAdapter(script=Script(fail_before=EngineUnavailable("engine is gone")))
    async for client in _client(adapter):
        for stream in (False, True):
            response = await client.post("/v1/chat/completions", json=_chat(stream=stream))
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/json"
            assert response.headers["retry-after"]
            assert response.json()["error"]["code"] == "engine_unavailable"


async def test_unexpected_error_is_a_generic_500() -> None:
    adapter = ScriptedAdapter(script=Script(fail_before=RuntimeError(SECRET)))
    async for client in _client(adapter):
        response = await client.post("/v1/completions", json={"model": "scripted", "prompt": "x"})
        assert response.status_code == 500
        body = response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert SECRET not in response.text and "Traceback" not in response.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
    ],
)
async def test_validation_errors_name_the_field(body: dict[str, object], param: str) -> None:
    async for client in _client(ScriptedAdapter()):
        response = await client.post("/v1/chat/completions", json={**_chat(), **body})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param


async def test_bad_json_and_unknown_routes() -> None:
    async for client in _client(ScriptedAdapter()):
        response = await client.post(
            "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
        response = await client.get("/v1/nothing-here")
        assert response.status_code == 404 and set(response.json()["error"]) == {"message", "type", "param", "code"}
        response = await client.post("/v1/chat/completions", json={**_chat(), "model": "nope"})
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
