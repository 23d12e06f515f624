"""/v1/responses (text in, text out) through the real engine, with the strict openai SDK and raw SSE."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import TEXT_MODEL

PROMPT = "The Eiffel Tower is located in the city of"
CHAT = [{"role": "user", "content": PROMPT}]
STREAM_ORDER = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
STREAM_TAIL = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def chat_text(client: openai.OpenAI, messages: list[dict[str, Any]], max_tokens: int) -> str:
    reply = client.chat.completions.create(
        model=TEXT_MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


def test_string_input_is_a_user_turn(client: openai.OpenAI) -> None:
    response = client.responses.create(model=TEXT_MODEL, input=PROMPT, max_output_tokens=8, temperature=0)
    assert response.object == "response" and response.id.startswith("resp_") and response.model == TEXT_MODEL
    assert response.output_text == chat_text(client, CHAT, 8) and response.output_text.strip()
    message = response.output[0]
    assert message.type == "message" and message.id.startswith("msg_") and message.role == "assistant"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    usage = response.usage
    assert usage and usage.input_tokens > 5 and usage.output_tokens >= 1
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0
    assert response.max_output_tokens == 8 and response.temperature == 0 and response.tools == []


def test_message_items_and_instructions(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=TEXT_MODEL,
        instructions="You are a terse assistant.",
        max_output_tokens=6,
        temperature=0,
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Name another colour."},
        ],
    )
    expected = chat_text(
        client,
        [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Name another colour."},
        ],
        6,
    )
    assert response.output_text == expected and response.instructions == "You are a terse assistant."
    listed = client.responses.input_items.list(response.id, order="asc")  # the SDK's strict item types
    assert [item.model_dump()["role"] for item in listed.data] == ["user", "assistant", "user"]
    assert not listed.has_more and listed.first_id == listed.data[0].id


def test_length_limit_is_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=TEXT_MODEL, input="Write a long story about a cat.", max_output_tokens=3, temperature=0
    )
    message = response.output[0]
    assert response.status == "incomplete" and message.type == "message" and message.status == "incomplete"
    assert response.incomplete_details and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage and response.usage.output_tokens == 3


def test_stream_with_sdk(client: openai.OpenAI) -> None:
    whole = client.responses.create(model=TEXT_MODEL, input=PROMPT, max_output_tokens=8, temperature=0)
    events = list(
        client.responses.create(model=TEXT_MODEL, input=PROMPT, max_output_tokens=8, temperature=0, stream=True)
    )
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds == STREAM_ORDER + ["response.output_text.delta"] * len(deltas) + STREAM_TAIL + [kinds[-1]]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in deltas) == whole.output_text
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    assert final.response.output_text == whole.output_text and final.response.usage == whole.usage
    assert events[0].type == "response.created" and events[0].response.status == "in_progress"
    assert final.response.id == events[0].response.id


def test_stream_framing(http: httpx.Client) -> None:
    body = {"model": TEXT_MODEL, "input": PROMPT, "max_output_tokens": 4, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    blocks = [b for b in raw.split("\n\n") if b]
    assert raw.endswith("\n\n") and "[DONE]" not in raw  # the Responses stream ends with its last event
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        assert orjson.loads(data_line[len("data: ") :])["type"] == event_line[len("event: ") :]
    assert blocks[-1].startswith("event: response.incomplete")  # 4 tokens do not end the sentence


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools"),
        ({"background": True, "store": False}, "background"),
        ({"input": []}, "input"),
        # a tool result must answer a call made before it
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"truncation": "disabled", "input": "word " * 3000}, None),
    ],
)
def test_unsupported_is_400(http: httpx.Client, body: dict[str, Any], param: str | None) -> None:
    response = http.post("/v1/responses", json={"model": TEXT_MODEL, "input": "Hi", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


def test_unknown_model_and_retrieval_are_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model="no-such-model", input="Hi")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve("resp_123")
    assert missing.value.code == "not_found" and "resp_123" in missing.value.message
