"""Constrained decoding through the real engine: response_format and vLLM's structured_outputs."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import openai
import pytest

from tests.conftest import TEXT_MODEL
from tests.e2e.sse import post_stream

# Small and bounded (enums, booleans), so even a 270M model finishes well inside max_tokens.
LANDMARK = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
        "is_capital": {"type": "boolean"},
    },
    "required": ["city", "is_capital"],
    "additionalProperties": False,
}
ASK: list[Any] = [{"role": "user", "content": "Where is the Eiffel Tower? Answer in JSON."}]


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "landmark", "schema": schema, "strict": True}}


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    fmt: Any = schema_format(LANDMARK)
    reply = client.chat.completions.create(
        model=TEXT_MODEL, messages=ASK, max_tokens=60, temperature=0, response_format=fmt
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content or ""), LANDMARK)


def test_json_schema_streamed_output_validates(http: httpx.Client) -> None:
    events, raw = post_stream(
        http,
        "/v1/chat/completions",
        {
            "model": TEXT_MODEL,
            "messages": ASK,
            "max_tokens": 60,
            "temperature": 0,
            "response_format": schema_format(LANDMARK),
        },
    )
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
    jsonschema.validate(json.loads(text), LANDMARK)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_json_object_is_a_json_object(client: openai.OpenAI) -> None:
    ask: list[Any] = [{"role": "user", "content": "Give a JSON object with the key answer set to yes."}]
    reply = client.chat.completions.create(
        model=TEXT_MODEL, temperature=0, max_tokens=80, messages=ask, response_format={"type": "json_object"}
    )
    if reply.choices[0].finish_reason == "stop":  # a free-form object may run past max_tokens
        assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    else:
        assert (reply.choices[0].message.content or "").lstrip().startswith("{")


def test_text_format_is_unconstrained(client: openai.OpenAI) -> None:
    prompt: list[Any] = [{"role": "user", "content": "The Eiffel Tower is located in the city of"}]
    plain = client.chat.completions.create(model=TEXT_MODEL, messages=prompt, max_tokens=8, temperature=0)
    text = client.chat.completions.create(
        model=TEXT_MODEL, messages=prompt, max_tokens=8, temperature=0, response_format={"type": "text"}
    )
    assert text.choices[0].message.content == plain.choices[0].message.content


def test_structured_outputs_choice_on_chat(client: openai.OpenAI) -> None:
    ask: list[Any] = [{"role": "user", "content": "Is Paris in France?"}]
    reply = client.chat.completions.create(
        model=TEXT_MODEL,
        temperature=0,
        max_tokens=5,
        messages=ask,
        extra_body={"structured_outputs": {"choice": ["definitely", "never"]}},
    )
    assert reply.choices[0].message.content in ("definitely", "never")


def test_structured_outputs_regex_on_completions(client: openai.OpenAI) -> None:
    pattern = r"[0-9]{3}-[A-Z]{2}"
    reply = client.completions.create(
        model=TEXT_MODEL,
        prompt="A product code:",
        max_tokens=10,
        temperature=0,
        extra_body={"structured_outputs": {"regex": pattern}},
    )
    assert re.fullmatch(pattern, reply.choices[0].text), reply.choices[0].text


def test_structured_outputs_grammar_on_completions(client: openai.OpenAI) -> None:
    grammar = 'root ::= "The answer is " ("yes" | "no") "."'
    reply = client.completions.create(
        model=TEXT_MODEL,
        prompt="Is the sky blue?",
        max_tokens=12,
        temperature=0,
        extra_body={"structured_outputs": {"grammar": grammar}},
    )
    assert reply.choices[0].text in ("The answer is yes.", "The answer is no.")


def test_response_format_on_completions(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=TEXT_MODEL,
        prompt="The Eiffel Tower as JSON:",
        max_tokens=60,
        temperature=0,
        extra_body={"response_format": schema_format(LANDMARK)},
    )
    jsonschema.validate(json.loads(reply.choices[0].text), LANDMARK)


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"structured_outputs": {"regex": "(unclosed"}}, None, "regex"),
        ({"structured_outputs": {"grammar": "this is not ::= a grammar ("}}, None, "grammar"),
        ({"response_format": schema_format({"type": "no-such-type"})}, None, "type"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "exactly one"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs", "empty"),
        ({"structured_outputs": {"json": "{not json"}}, "structured_outputs", "JSON"),
        ({"response_format": {"type": "xml"}}, None, "response_format"),
    ],
)
def test_unusable_constraints_are_400(http: httpx.Client, extra: dict[str, Any], param: str | None, words: str) -> None:
    for path, body in (("/v1/chat/completions", {"messages": ASK}), ("/v1/completions", {"prompt": "Hi"})):
        response = http.post(path, json={"model": TEXT_MODEL, "max_tokens": 5, **body, **extra})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert words.lower() in error["message"].lower()
        if param is not None:
            assert error["param"] == param


def test_unusable_constraint_in_a_stream_is_a_plain_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="regex"):
        client.chat.completions.create(
            model=TEXT_MODEL,
            messages=ASK,
            max_tokens=5,
            stream=True,
            extra_body={"structured_outputs": {"regex": "(unclosed"}},
        )
