"""Tool calling through the real engine, read by the strict openai SDK and as raw SSE."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import openai
import pytest

from tests.conftest import TEXT_MODEL
from tests.e2e.sse import post_stream

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "enum": ["UTC", "CET", "JST"]}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The current time in a timezone.",
            "parameters": TIME_PARAMETERS,
        },
    },
]
PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris right now?"}]
WEATHER_CHOICE = {"type": "function", "function": {"name": "get_weather"}}


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    args: dict[str, Any] = {
        "model": TEXT_MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "max_tokens": 80,
        "temperature": 0,
        **kwargs,
    }
    return client.chat.completions.create(**args)


def assert_valid_calls(calls: list[Any], names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
    assert len({call.id for call in calls}) == len(calls)


def test_named_function_is_called_with_valid_arguments(client: openai.OpenAI) -> None:
    reply = chat(client, tool_choice=WEATHER_CHOICE)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert [call.function.name for call in choice.message.tool_calls] == ["get_weather"]
    assert_valid_calls(choice.message.tool_calls, {"get_weather"})


def test_required_makes_one_valid_call(client: openai.OpenAI) -> None:
    reply = chat(client, tool_choice="required", parallel_tool_calls=False)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    assert_valid_calls(choice.message.tool_calls, set(PARAMETERS))


def test_required_with_parallel_calls_allowed(client: openai.OpenAI) -> None:
    choice = chat(client, tool_choice="required").choices[0]
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls, set(PARAMETERS))


def stream_calls(events: list[Any]) -> tuple[list[dict[str, Any]], str | None, str]:
    """Rebuild the calls from OpenAI-style deltas, checking the shape of each delta on the way."""
    calls: dict[int, dict[str, Any]] = {}
    content, reason = "", None
    for event in events[:-1]:
        for choice in event["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for part in delta.get("tool_calls") or ():
                index = part["index"]
                if index not in calls:  # the first delta of a call: id, type, name, and arguments ""
                    assert part["id"].startswith("call_") and part["type"] == "function"
                    assert part["function"]["name"] and part["function"]["arguments"] == ""
                    calls[index] = {"id": part["id"], "name": part["function"]["name"], "arguments": ""}
                else:
                    assert "id" not in part and "name" not in part["function"]
                    calls[index]["arguments"] += part["function"]["arguments"]
            reason = choice["finish_reason"] or reason
    assert sorted(calls) == list(range(len(calls)))
    return [calls[i] for i in sorted(calls)], reason, content


def test_streamed_named_call_has_openai_deltas(http: httpx.Client) -> None:
    events, _ = post_stream(
        http,
        "/v1/chat/completions",
        {
            "model": TEXT_MODEL,
            "messages": ASK,
            "tools": TOOLS,
            "tool_choice": WEATHER_CHOICE,
            "max_tokens": 80,
            "temperature": 0,
        },
    )
    assert events[-1] == "[DONE]"
    calls, reason, content = stream_calls(events)
    assert reason == "tool_calls" and content == ""
    assert [call["name"] for call in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER_PARAMETERS)
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}


def test_streamed_required_call_through_the_sdk(client: openai.OpenAI) -> None:
    calls: dict[int, dict[str, str]] = {}
    reasons = []
    for chunk in chat(client, tool_choice="required", stream=True):
        for choice in chunk.choices:
            for part in choice.delta.tool_calls or ():
                entry = calls.setdefault(part.index, {"name": "", "arguments": ""})
                entry["name"] += (part.function.name or "") if part.function else ""
                entry["arguments"] += (part.function.arguments or "") if part.function else ""
            reasons.append(choice.finish_reason)
    assert reasons[-1] == "tool_calls"
    assert calls
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), PARAMETERS[call["name"]])


def check_auto_choice(message: Any, reason: str) -> None:
    """auto: the model answers, or calls; either way the response is well formed."""
    if message.tool_calls:
        assert reason == "tool_calls"
        assert_valid_calls(message.tool_calls, set(PARAMETERS))
    else:
        assert reason in ("stop", "length")
        assert message.content


def test_auto_is_content_or_valid_calls(client: openai.OpenAI) -> None:
    choice = chat(client, tool_choice="auto").choices[0]
    check_auto_choice(choice.message, choice.finish_reason)
    # No tool_choice with tools means auto.
    again = chat(client).choices[0]
    assert (again.message.content, again.finish_reason) == (choice.message.content, choice.finish_reason)


def test_auto_streamed_matches_unstreamed(http: httpx.Client, client: openai.OpenAI) -> None:
    body = {"model": TEXT_MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 80, "temperature": 0}
    whole = client.chat.completions.create(**body).choices[0]  # type: ignore[call-overload]
    events, _ = post_stream(http, "/v1/chat/completions", body)
    calls, reason, content = stream_calls(events)
    assert reason == whole.finish_reason
    assert content == (whole.message.content or "")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls or ()
    ]


def test_tools_reach_the_prompt(client: openai.OpenAI) -> None:
    without = client.chat.completions.create(model=TEXT_MODEL, messages=ASK, max_tokens=1)
    with_tools = chat(client, max_tokens=1)
    assert without.usage is not None
    # Each definition's JSON is in the prompt, so it grows by at least its text's tokens.
    assert with_tools.usage.prompt_tokens > without.usage.prompt_tokens + 60


def test_tool_choice_none_gives_plain_content(client: openai.OpenAI) -> None:
    choice = chat(client, tool_choice="none", max_tokens=20).choices[0]
    assert choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.content


def test_two_turns_with_a_tool_result(client: openai.OpenAI) -> None:
    first = chat(client, tool_choice=WEATHER_CHOICE).choices[0].message
    call = first.tool_calls[0]

    def second_turn(result: str) -> Any:
        messages = [
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ]
        return chat(client, messages=messages, tool_choice="none", max_tokens=30)

    short = second_turn("18 C")
    assert short.choices[0].message.content and short.choices[0].message.tool_calls is None
    assert short.choices[0].finish_reason in ("stop", "length")
    # The result is in the prompt: a longer result makes a longer prompt.
    longer = second_turn("18 C, sunny, light wind from the west, humidity 40 percent")
    assert longer.usage.prompt_tokens > short.usage.prompt_tokens + 8


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch_rocket"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ],
)
def test_bad_tool_requests_are_400(http: httpx.Client, fields: dict[str, Any], param: str) -> None:
    response = http.post("/v1/chat/completions", json={"model": TEXT_MODEL, "messages": ASK, "max_tokens": 5, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


@pytest.mark.parametrize(
    "tool_choice", ["sometimes", {"type": "function"}, {"type": "other", "function": {"name": "x"}}]
)
def test_malformed_tool_choice_is_400(http: httpx.Client, tool_choice: Any) -> None:
    response = http.post(
        "/v1/chat/completions", json={"model": TEXT_MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": tool_choice}
    )
    assert response.status_code == 400, response.text


def test_tool_result_without_its_call_is_400(http: httpx.Client) -> None:
    messages = [*ASK, {"role": "tool", "tool_call_id": "call_unknown", "content": "18 C"}]
    response = http.post("/v1/chat/completions", json={"model": TEXT_MODEL, "messages": messages, "tools": TOOLS})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages"
