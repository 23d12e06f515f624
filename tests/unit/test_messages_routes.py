"""/v1/messages over the scripted engine: the mapping onto the chat path, Anthropic's error shape from every
layer, keys from x-api-key, and a stream that fails half way.

The real engine's answers: tests/e2e/test_messages.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine_adapters.base import Chunk
from gateway.errors import EngineUnavailable, InvalidRequest, RateLimited, error_payload
from tests.support.scripted_app import MODEL, RecordingAdapter, chat, scripted_client, settings
from tests.support.scripted_engine import Script

KEY = "sk-messages-0123456789"
ASK = [{"role": "user", "content": "hi"}]


def message(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 5, "messages": ASK, **extra}


def frames(body: bytes) -> list[dict[str, Any]]:
    """Each SSE frame's data, checked to be named by its `event:` line as Anthropic frames them."""
    events = []
    for frame in body.decode().strip().split("\n\n"):
        name, data = frame.split("\n")
        event = orjson.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    return events


def test_anthropic_paths_get_anthropics_error_body() -> None:
    for exc, kind in [
        (InvalidRequest("bad", param="x"), "invalid_request_error"),
        (RateLimited("slow down"), "rate_limit_error"),
        (EngineUnavailable("later"), "overloaded_error"),
        (RuntimeError("secret"), "api_error"),
    ]:
        status, body = error_payload(exc, "/v1/messages")
        assert status == error_payload(exc)[0]
        assert body == {"type": "error", "error": {"type": kind, "message": error_payload(exc)[1]["error"]["message"]}}
    assert error_payload(InvalidRequest("bad"), "/v1/messages/count_tokens")[1]["type"] == "error"
    assert "error" in error_payload(InvalidRequest("bad"), "/v1/messagesx")[1]  # OpenAI's body elsewhere
    assert "type" not in error_payload(InvalidRequest("bad"), "/v1/messagesx")[1]


async def test_request_becomes_a_chat_request() -> None:
    engine = RecordingAdapter()
    history = [
        {"role": "user", "content": [{"type": "text", "text": "weather in "}, {"type": "text", "text": "Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18 C"}]},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    tools = [{"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}]
    async with scripted_client(settings(), engine) as client:
        answer = await client.post(
            "/v1/messages",
            json=message(
                system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
                messages=history,
                tools=tools,
                tool_choice={"type": "none"},
                stop_sequences=["END"],
                temperature=0.5,
                top_p=0.9,
                top_k=7,
                metadata={"user_id": "u-1"},
            ),
        )
    assert answer.status_code == 200, answer.text
    request = engine.requests[0]
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "18 C", "tool_call_id": "toolu_1", "name": "get_weather"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert request.tools == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather.", "parameters": {"type": "object"}},
        }
    ]
    sampling = request.sampling
    assert (sampling.max_tokens, sampling.stop, sampling.temperature, sampling.top_p, sampling.top_k) == (
        5,
        ("END",),
        0.5,
        0.9,
        7,
    )
    assert request.routing_key == "u-1"
    body = answer.json()
    assert body["content"] == [{"type": "text", "text": "t0 t1 t2 t3 t4 "}]
    assert body["stop_reason"] == "max_tokens" and body["usage"] == {"input_tokens": 3, "output_tokens": 5}


class OneChunk(RecordingAdapter):
    """Answers every request with one given chunk."""

    def __init__(self, chunk: Chunk) -> None:
        super().__init__()
        self.chunk = chunk

    async def generate(self, request: Any) -> Any:  # type: ignore[override]
        self.requests.append(request)
        yield self.chunk


async def test_a_stop_string_is_a_stop_sequence_streamed_or_not() -> None:
    engine = OneChunk(
        Chunk(index=0, text="a", finish_reason="stop", stop_sequence="END", prompt_tokens=3, completion_tokens=1)
    )
    async with scripted_client(settings(), engine) as client:
        whole = (await client.post("/v1/messages", json=message(stop_sequences=["END"]))).json()
        streamed = frames(
            (await client.post("/v1/messages", json=message(stop_sequences=["END"], stream=True))).content
        )
    assert (whole["stop_reason"], whole["stop_sequence"]) == ("stop_sequence", "END")
    assert streamed[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


async def test_named_tool_choice_answers_a_tool_use_block() -> None:
    # A forced call's output is its arguments, as constrained decoding makes it.
    caller = OneChunk(
        Chunk(index=0, text='{"city": "Paris"}', finish_reason="stop", prompt_tokens=3, completion_tokens=4)
    )

    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    async with scripted_client(settings(), caller) as client:
        body = message(tools=tools, tool_choice={"type": "tool", "name": "get_weather"})
        whole = (await client.post("/v1/messages", json=body)).json()
        streamed = frames((await client.post("/v1/messages", json={**body, "stream": True})).content)
    assert whole["stop_reason"] == "tool_use"
    [call] = whole["content"]
    assert call["type"] == "tool_use" and call["name"] == "get_weather" and call["input"] == {"city": "Paris"}
    assert call["id"].startswith("toolu_")
    kinds = [e["type"] for e in streamed]
    assert kinds == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert streamed[2]["content_block"]["type"] == "tool_use" and streamed[2]["content_block"]["input"] == {}
    assert orjson.loads(streamed[3]["delta"]["partial_json"]) == {"city": "Paris"}
    assert streamed[5]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "'document'"),
        ({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]}, "assistant"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]},
            "tool_call_id",
        ),
        ({"tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "tool"}}, "name"),
        ({"max_tokens": None}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
    ],
)
async def test_bad_requests_are_400_in_anthropics_shape(fields: dict[str, Any], fragment: str) -> None:
    async with scripted_client(settings()) as client:
        answer = await client.post("/v1/messages", json={k: v for k, v in message(**fields).items() if v is not None})
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert fragment in body["error"]["message"]


async def test_front_door_errors_are_anthropics_on_its_paths_only() -> None:
    async with scripted_client(settings(api_keys=KEY, limits={"max_tokens": 10})) as client:
        denied = await client.post("/v1/messages", json=message())
        assert denied.status_code == 401
        assert denied.json() == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "You didn't provide an API key."},
        }
        capped = await client.post("/v1/messages/count_tokens", json=message(max_tokens=50), headers={"x-api-key": KEY})
        assert capped.status_code == 400 and capped.json()["error"]["type"] == "invalid_request_error"
        not_json = await client.post(
            "/v1/messages", content=b"{", headers={"x-api-key": KEY, "content-type": "application/json"}
        )
        assert not_json.status_code == 400 and not_json.json()["type"] == "error"
        openai_path = await client.post("/v1/chat/completions", json=chat())
        assert openai_path.status_code == 401 and openai_path.json()["error"]["code"] == "invalid_api_key"


async def test_keys_are_accepted_from_x_api_key_on_every_path() -> None:
    async with scripted_client(settings(api_keys=KEY)) as client:
        for path, body in [("/v1/messages", message()), ("/v1/chat/completions", chat(max_tokens=2))]:
            assert (
                await client.post(path, json=body, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
            ).status_code == 200
            assert (await client.post(path, json=body, headers={"x-api-key": "sk-wrong"})).status_code == 401


async def test_stream_failure_ends_with_anthropics_error_event() -> None:
    engine = RecordingAdapter(script=Script(tokens=6, fail_after=2))
    async with scripted_client(settings(), engine) as client:
        answer = await client.post("/v1/messages", json=message(stream=True))
    events = frames(answer.content)
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "error",
    ]
    assert events[-1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "The server had an error while processing your request."},
    }


async def test_stream_ends_with_stop_reason_and_usage() -> None:
    async with scripted_client(settings()) as client:
        answer = await client.post("/v1/messages", json=message(max_tokens=3, stream=True))
    events = frames(answer.content)
    start = events[0]["message"]
    assert start["role"] == "assistant" and start["content"] == [] and start["usage"]["input_tokens"] == 3
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == "t0 t1 t2 "
    assert events[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"input_tokens": 3, "output_tokens": 3},
    }
    assert events[-1] == {"type": "message_stop"}


async def test_the_system_prompt_counts_against_the_prompt_cap() -> None:
    async with scripted_client(settings(limits={"max_prompt_chars": 20})) as client:
        short = await client.post("/v1/messages", json=message(system="Be brief."))
        long = await client.post("/v1/messages", json=message(system=[{"type": "text", "text": "x" * 30}]))
    assert short.status_code == 200
    assert long.status_code == 400 and long.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_tokens_charged_are_corrected_from_anthropics_usage(stream: bool) -> None:
    async with scripted_client(settings(limits={"tokens_per_minute": 100})) as client:
        # "hi" ~ 1 token + max_tokens 60 charged up front; the scripted engine really uses 3 + 8 = 11.
        answer = await client.post("/v1/messages", json=message(max_tokens=60, stream=stream))
        assert answer.status_code == 200
        after = await client.get("/v1/models")  # costs no tokens: shows the corrected level
        assert after.headers["x-ratelimit-remaining-tokens"] == "89"
