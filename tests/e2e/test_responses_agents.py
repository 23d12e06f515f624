"""/v1/responses as agents use it, through the real engine and the strict openai SDK: function tools (forced
with a named function or "required", since a 270M base model does not choose a tool), the call's stream of
events, function_call_output continuing a stored response, retrieval, input items, deletion, background
responses, their cancel and a resumed stream."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal

import jsonschema  # type: ignore[import-untyped]
import openai
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, RunConfig, Runner, function_tool
from pydantic import BaseModel

from tests.conftest import TEXT_MODEL, Server

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": WEATHER_PARAMETERS,
    "strict": True,
}
ASK = "What is the weather in Paris right now?"


def test_a_named_function_round_trip_on_a_stored_response(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=TEXT_MODEL,
        input=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60,
        temperature=0,
        metadata={"run": "agents-e2e"},
    )
    assert first.status == "completed" and first.store is True and first.metadata == {"run": "agents-e2e"}
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMETERS)
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")

    second = client.responses.create(
        model=TEXT_MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 21}'}],
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=12,
        temperature=0,
    )
    assert second.previous_response_id == first.id and second.output[0].type == "message"
    assert second.output_text.strip()
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the first turn and its call are in the prompt

    fetched = client.responses.retrieve(first.id)
    assert fetched.id == first.id and fetched.output[0].model_dump() == call.model_dump()
    items = client.responses.input_items.list(second.id)
    assert [item.type for item in items.data] == ["function_call_output"]
    assert items.data[0].model_dump()["call_id"] == call.call_id  # type: ignore[union-attr]
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)


def test_required_call_streamed_with_the_sdk_helper(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=TEXT_MODEL,
        input=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=60,
        temperature=0,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    done = events[4]
    assert done.type == "response.function_call_arguments.done"
    [call] = final.output
    assert call.type == "function_call" and call.arguments == done.arguments and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMETERS)
    stored = client.responses.retrieve(final.id).output[0]
    assert stored.model_dump() == call.model_dump(exclude={"parsed_arguments"})  # the helper's own addition


def test_text_format_json_schema(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=TEXT_MODEL,
        input="Which city is the Eiffel Tower in? Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        max_output_tokens=30,
        temperature=0,
        store=False,
    )
    jsonschema.validate(json.loads(response.output_text), schema)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def wait_status(client: openai.OpenAI, response_id: str, statuses: set[str]) -> Any:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = client.responses.retrieve(response_id)
        if found.status in statuses:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{response_id} never reached {statuses}")


def test_background_response_runs_on_and_is_cancelled(client: openai.OpenAI) -> None:
    done = client.responses.create(model=TEXT_MODEL, input=ASK, background=True, max_output_tokens=8, temperature=0)
    assert done.status == "queued" and done.background is True
    finished = wait_status(client, done.id, {"completed", "incomplete"})
    assert finished.output_text.strip() and finished.usage is not None

    long = client.responses.create(
        model=TEXT_MODEL, input="Write a very long story about a cat.", background=True, max_output_tokens=1500
    )
    wait_status(client, long.id, {"in_progress"})
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(long.id).status == "cancelled"


def test_background_stream_resumed_after_a_sequence_number(client: openai.OpenAI) -> None:
    seen: list[Any] = []
    with client.responses.stream(
        model=TEXT_MODEL, input=ASK, background=True, max_output_tokens=12, temperature=0
    ) as stream:
        for event in stream:
            seen.append(event)
            if event.sequence_number == 5:
                break  # the client leaves; the response runs on
    response_id = seen[0].response.id
    # The SDK's resume reads the stream again from the start and drops what came before starting_after.
    with client.responses.stream(response_id=response_id, starting_after=5) as resumed:
        rest = list(resumed)
    assert [event.sequence_number for event in rest] == list(range(6, 6 + len(rest)))
    last = rest[-1]
    assert last.type in ("response.completed", "response.incomplete")  # 12 tokens may cut the answer short
    final = last.response
    whole = wait_status(client, response_id, {"completed", "incomplete"})
    assert final.output_text == whole.output_text and whole.output_text.strip()


class WeatherReport(BaseModel):
    city: Literal["Paris", "London", "Tokyo"]
    sunny: bool


def test_agents_sdk_function_tool_round_trip(server: Server) -> None:
    """OpenAI's Agents SDK on its Responses model: the forced call runs the Python tool, its output goes back
    as a function_call_output item, and the agent's next turn answers its structured output type (a 270M base
    model left to write free text after a tool result imitates the call until max_tokens, which the SDK
    treats as a failed run; a typed output ends where the schema does)."""
    calls: list[str] = []

    @function_tool
    def get_weather(city: Literal["Paris", "London", "Tokyo"]) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"Sunny and 21 degrees in {city}."

    sdk_client = openai.AsyncOpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0, timeout=120)
    agent = Agent(
        name="weather",
        instructions="Answer in one short sentence.",
        model=OpenAIResponsesModel(model=TEXT_MODEL, openai_client=sdk_client),
        tools=[get_weather],
        output_type=WeatherReport,
        # A 270M base model does not choose a tool: the first turn is forced; the SDK then lets it answer.
        model_settings=ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=40),
    )
    result = asyncio.run(Runner.run(agent, ASK, max_turns=3, run_config=RunConfig(tracing_disabled=True)))
    assert len(calls) == 1 and calls[0] in ("Paris", "London", "Tokyo")
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    report = result.final_output
    assert isinstance(report, WeatherReport) and report.city in ("Paris", "London", "Tokyo")
