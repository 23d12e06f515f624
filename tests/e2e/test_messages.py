"""Anthropic's Messages API through the real engine, read by the real `anthropic` SDK.

One server with keys for the whole module: a key without limits, and one allowed a single request a minute.
Gemma 3 270M is a base model: the tests assert shape and mechanics, not the quality of its text.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.conftest import TEXT_MODEL, free_port, start_server, stop_server, wait_ready

pytestmark = pytest.mark.engine

KEY = "sk-messages-main-0123456789"
TIGHT_KEY = "sk-messages-tight-0123456789"
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris right now?"}]
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"name": "get_weather", "description": "The current weather in a city.", "input_schema": WEATHER_SCHEMA}
]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    where = tmp_path_factory.mktemp("messages")
    keys = where / "keys"
    keys.write_text(f"{KEY} name=main\n{TIGHT_KEY} name=tight rpm=1\n")
    port = free_port()
    log_path = where / "server.log"
    proc: subprocess.Popen[bytes] = start_server(
        [
            "--port",
            str(port),
            "--model",
            "builtin:gemma3-270m",
            "--served-model-name",
            TEXT_MODEL,
            "--dtype",
            "bfloat16",
            "--max-model-len",
            "1024",
            "--api-keys-file",
            str(keys),
        ],
        log_path,
    )
    address = f"http://127.0.0.1:{port}"
    try:
        wait_ready(address, proc, log_path, 900)
        yield address
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def sdk(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, timeout=120)


GREEDY = {"temperature": 0}  # sampling fields this SDK version no longer names go in its extra_body


def create(sdk: anthropic.Anthropic, **fields: Any) -> Any:
    return sdk.messages.create(
        **{"model": TEXT_MODEL, "max_tokens": 12, "extra_body": GREEDY, "messages": ASK, **fields}
    )


def test_create(sdk: anthropic.Anthropic) -> None:
    reply = create(
        sdk,
        system=[{"type": "text", "text": "You answer briefly."}],
        metadata={"user_id": "user-1"},
        extra_body={"temperature": 0, "top_p": 0.9, "top_k": 5},
    )
    assert reply.type == "message" and reply.role == "assistant" and reply.model == TEXT_MODEL
    assert reply.id.startswith("msg_")
    assert [block.type for block in reply.content] == ["text"] and reply.content[0].text
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert reply.usage.input_tokens > 5 and 0 < reply.usage.output_tokens <= 12


def test_max_tokens_and_stop_sequences_give_their_stop_reasons(sdk: anthropic.Anthropic) -> None:
    cut = create(sdk, max_tokens=2)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    stopped = create(sdk, max_tokens=40, stop_sequences=[" ", "\n"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence in (" ", "\n")
    assert stopped.usage.output_tokens < 40


def test_the_system_prompt_reaches_the_model(sdk: anthropic.Anthropic) -> None:
    plain = create(sdk, max_tokens=1)
    with_system = create(sdk, max_tokens=1, system="You are a weather service. Answer in one short sentence.")
    assert with_system.usage.input_tokens > plain.usage.input_tokens + 5


def test_stream_with_the_sdk_helper_matches_create(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model=TEXT_MODEL, max_tokens=12, extra_body=GREEDY, messages=ASK) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds
    whole = create(sdk)
    assert final.content[0].type == "text" and final.content[0].text == text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_raw_stream_has_anthropics_event_sequence(url: str) -> None:
    body = {"model": TEXT_MODEL, "max_tokens": 6, "temperature": 0, "messages": ASK, "stream": True}
    with httpx.stream(
        "POST",
        f"{url}/v1/messages",
        json=body,
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        timeout=120,
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = []
    for frame in raw.strip().split("\n\n"):
        name_line, data_line = frame.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {data['type']}"
        events.append(data)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    assert all(e["delta"]["type"] == "text_delta" for e in events[3:-3])
    delta = events[-2]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 6


def test_tool_use_round_trip(sdk: anthropic.Anthropic) -> None:
    first = create(sdk, max_tokens=60, tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather"})
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.id.startswith("toolu_")
    jsonschema.validate(call.input, WEATHER_SCHEMA)

    def answer(result: str) -> Any:
        history = [
            *ASK,
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}]},
        ]
        return create(sdk, max_tokens=20, tools=TOOLS, tool_choice={"type": "none"}, messages=history)

    short = answer("18 C")
    assert [block.type for block in short.content] == ["text"] and short.stop_reason in ("end_turn", "max_tokens")
    # The result is in the prompt: a longer result makes a longer prompt.
    longer = answer("18 C, sunny, light wind from the west, humidity 40 percent")
    assert longer.usage.input_tokens > short.usage.input_tokens + 8


def test_streamed_tool_use_arrives_as_input_json(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(
        model=TEXT_MODEL, max_tokens=60, extra_body=GREEDY, messages=ASK, tools=TOOLS, tool_choice={"type": "any"}
    ) as stream:
        deltas = [event.delta.type for event in stream if event.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather"
    jsonschema.validate(call.input, WEATHER_SCHEMA)


def test_count_tokens_matches_the_prompt_create_uses(sdk: anthropic.Anthropic) -> None:
    system = "You answer briefly."
    counted = sdk.messages.count_tokens(model=TEXT_MODEL, messages=ASK, system=system)
    assert counted.input_tokens == create(sdk, max_tokens=1, system=system).usage.input_tokens
    with_tools = sdk.messages.count_tokens(model=TEXT_MODEL, messages=ASK, system=system, tools=TOOLS)
    assert with_tools.input_tokens > counted.input_tokens


def test_sdk_exceptions(url: str, sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        create(sdk, max_tokens=0)
    assert bad.value.status_code == 400 and bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        create(
            sdk,
            messages=[
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "18 C"}]}
            ],
        )
    with pytest.raises(anthropic.NotFoundError) as missing:
        create(sdk, model="no-such-model")
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model `no-such-model` does not exist."},
    }
    stranger = anthropic.Anthropic(base_url=url, api_key="wrong-key-0123456789", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        create(stranger)
    assert denied.value.body["error"]["type"] == "authentication_error"
    tight = anthropic.Anthropic(base_url=url, api_key=TIGHT_KEY, max_retries=0, timeout=120)
    create(tight, max_tokens=1)
    with pytest.raises(anthropic.RateLimitError) as limited:
        create(tight, max_tokens=1)
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert limited.value.response.headers["retry-after"]
