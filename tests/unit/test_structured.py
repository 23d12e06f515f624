"""response_format / structured_outputs -> StructuredOutput, and how router mode forwards it."""

from __future__ import annotations

from typing import Any

import pytest

from engine_adapters.base import GenerateRequest, SamplingOptions, StructuredOutput
from engine_adapters.openai_wire import request_payload
from gateway.errors import InvalidRequest
from gateway.protocol.completions import CompletionRequest
from gateway.services.structured import requested

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"response_format": {"type": "text"}}, None),
        ({"response_format": {"type": "json_object"}}, StructuredOutput("json_object")),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": SCHEMA, "strict": True},
                }
            },
            StructuredOutput("json", SCHEMA),
        ),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, StructuredOutput("json", {})),
        ({"structured_outputs": {"json": SCHEMA}}, StructuredOutput("json", SCHEMA)),
        ({"structured_outputs": {"json": '{"type": "object"}'}}, StructuredOutput("json", {"type": "object"})),
        ({"structured_outputs": {"json_object": True}}, StructuredOutput("json_object")),
        ({"structured_outputs": {"regex": "[a-z]+"}}, StructuredOutput("regex", "[a-z]+")),
        ({"structured_outputs": {"choice": ["yes", "no"]}}, StructuredOutput("choice", ("yes", "no"))),
        ({"structured_outputs": {"grammar": 'root ::= "a"'}}, StructuredOutput("grammar", 'root ::= "a"')),
        # A text response_format beside structured_outputs asks for nothing more.
        ({"response_format": {"type": "text"}, "structured_outputs": {"regex": "a"}}, StructuredOutput("regex", "a")),
    ],
)
def test_requested(fields: dict[str, Any], expected: StructuredOutput | None) -> None:
    assert requested(completion(**fields)) == expected


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
        ({"structured_outputs": {}}, "structured_outputs"),
        ({"structured_outputs": {"regex": "a", "grammar": "b"}}, "structured_outputs"),
        ({"structured_outputs": {"json_object": False}}, "structured_outputs"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs"),
        ({"structured_outputs": {"grammar": "  "}}, "structured_outputs"),
        ({"structured_outputs": {"json": "[1, 2]"}}, "structured_outputs"),
        ({"structured_outputs": {"json": "{oops"}}, "structured_outputs"),
    ],
)
def test_rejected(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        requested(completion(**fields))
    assert caught.value.param == param


def test_router_mode_forwards_the_constraint_and_the_tools() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    chat = GenerateRequest(
        "id",
        "m",
        SamplingOptions(structured=StructuredOutput("choice", ("a", "b"))),
        messages=[{"role": "user", "content": "hi"}],
        tools=tools,
    )
    path, body = request_payload(chat, "upstream")
    assert path == "/v1/chat/completions"
    assert body["structured_outputs"] == {"choice": ["a", "b"]}
    # The upstream renders the tools; the gateway reads the calls, so the upstream must not.
    assert body["tools"] == tools and body["tool_choice"] == "none"
    text = GenerateRequest("id", "m", SamplingOptions(structured=StructuredOutput("json_object")), prompt="hi")
    assert request_payload(text, "upstream")[1]["structured_outputs"] == {"json_object": True}
    plain = GenerateRequest("id", "m", SamplingOptions(), messages=[{"role": "user", "content": "hi"}])
    assert "structured_outputs" not in request_payload(plain, "upstream")[1]
    assert "tools" not in request_payload(plain, "upstream")[1]
