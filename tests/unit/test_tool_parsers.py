"""The tool-call parsers for tool_choice "auto", and the per-choice assembly that streams around them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.errors import InvalidRequest
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.tool_parser_names import TOOL_PARSER_NAMES
from gateway.services.tool_calls import ChoiceCalls, plan, template_messages
from gateway.services.tool_parsers import (
    PARSERS,
    ParsedCall,
    parse_hermes,
    parse_json,
    parse_llama3_json,
    parse_pythonic,
    parser_for,
)
from gateway.settings import ModelSettings


def call(name: str, **arguments: object) -> ParsedCall:
    return ParsedCall(name, json.dumps(arguments))


# -- json (the default) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '  {"name": "get_weather", "arguments": {"city": "Paris"}}\n',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '```\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '```tool_code\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '```tool_code\nget_weather(city="Paris")\n```',
        '```tool_code\nprint(get_weather(city="Paris"))\n```',
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
        '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}',
    ],
)
def test_json_reads_one_call_in_any_accepted_form(text: str) -> None:
    result = parse_json(text)
    assert result.calls == (call("get_weather", city="Paris"),)
    assert result.content is None


def test_json_reads_a_list_and_consecutive_objects() -> None:
    listed = parse_json('[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]')
    assert listed.calls == (call("a", x=1), call("b"))
    consecutive = parse_json('{"name": "a", "arguments": {"x": 1}}\n{"name": "b", "arguments": {}}')
    assert consecutive.calls == listed.calls


def test_json_missing_arguments_is_an_empty_object() -> None:
    assert parse_json('{"name": "now"}').calls == (call("now"),)


@pytest.mark.parametrize(
    "text",
    [
        "Paris is the capital of France.",
        '{"city": "Paris"}',  # JSON, but no name
        '{"name": "get_weather", "arguments": {"city": "Par',  # cut short
        '{"name": "get_weather", "arguments": {"city": "Paris"}} and then some prose',
        '{"name": "get_weather", "arguments": [1, 2]}',  # arguments must be an object
        '{"name": "", "arguments": {}}',
        '[{"name": "a", "arguments": {}}, 3]',  # one item is not a call
        "[]",
        '```python\nprint("hello")\n```',
        '```json\n{"a": 1}\n```',
    ],
)
def test_json_anything_else_is_content_kept_whole(text: str) -> None:
    result = parse_json(text)
    assert result.calls == ()
    assert result.content == text


def test_json_keeps_non_ascii_arguments_readable() -> None:
    result = parse_json('{"name": "f", "arguments": {"city": "Zürich"}}')
    assert result.calls[0].arguments == '{"city": "Zürich"}'


# -- hermes -----------------------------------------------------------------------------------


def test_hermes_reads_calls_and_keeps_the_text_before() -> None:
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    )
    result = parse_hermes(text)
    assert result.calls == (call("get_weather", city="Paris"), call("get_time"))
    assert result.content == "Let me check."


def test_hermes_accepts_an_unclosed_last_call() -> None:
    result = parse_hermes('<tool_call>{"name": "f", "arguments": {"a": 1}}')
    assert result.calls == (call("f", a=1),)
    assert result.content is None


@pytest.mark.parametrize(
    "text",
    [
        "No tools needed.",
        "<tool_call>not json</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',
    ],
)
def test_hermes_without_a_well_formed_call_is_content(text: str) -> None:
    assert parse_hermes(text).calls == ()
    assert parse_hermes(text).content == text


# -- llama3_json ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    ],
)
def test_llama3_json_reads_one_call(text: str) -> None:
    assert parse_llama3_json(text).calls == (call("get_weather", city="Paris"),)


def test_llama3_json_reads_calls_separated_by_semicolons() -> None:
    result = parse_llama3_json('{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}')
    assert result.calls == (call("a", x=1), call("b"))


@pytest.mark.parametrize("text", ["Hello there", '{"name": "a"} trailing words', '{"foo": 1}'])
def test_llama3_json_otherwise_content(text: str) -> None:
    assert parse_llama3_json(text).calls == ()
    assert parse_llama3_json(text).content == text


# -- pythonic ---------------------------------------------------------------------------------


def test_pythonic_reads_a_list_of_calls_with_literal_arguments() -> None:
    text = '[get_weather(city="Paris", days=3, metric=True), get_time(), tools.lookup(q=[1, {"k": None}])]'
    result = parse_pythonic(text)
    assert result.calls == (
        call("get_weather", city="Paris", days=3, metric=True),
        call("get_time"),
        call("tools.lookup", q=[1, {"k": None}]),
    )
    assert result.content is None


def test_pythonic_accepts_llama4_markers() -> None:
    assert parse_pythonic('<|python_start|>[f(a="x")]<|python_end|>').calls == (call("f", a="x"),)


@pytest.mark.parametrize(
    "text",
    [
        "Sure, here you go.",
        'get_weather(city="Paris")',  # not a list
        '[get_weather("Paris")]',  # positional arguments have no names
        "[get_weather(city=some_variable)]",  # not a literal
        "[get_weather(city={1, 2})]",  # a set is not JSON
        "[1, 2]",
        "[f(**kw)]",
        "[f(a=1",
    ],
)
def test_pythonic_otherwise_content(text: str) -> None:
    assert parse_pythonic(text).calls == ()
    assert parse_pythonic(text).content == text


# -- choosing a parser ---------------------------------------------------------------------------


def test_parser_by_name_and_default() -> None:
    assert parser_for(None).name == "json"
    assert {name: parser_for(name).name for name in PARSERS} == {name: name for name in PARSERS}
    assert tuple(PARSERS) == TOOL_PARSER_NAMES  # the names the settings check are the parsers held


def test_unknown_parser_is_a_settings_error() -> None:
    assert ModelSettings(name="m", model="x", tool_parser="hermes").tool_parser == "hermes"
    with pytest.raises(ValidationError, match="unknown tool_parser 'nope'"):
        ModelSettings(name="m", model="x", tool_parser="nope")


# -- planning and per-choice assembly --------------------------------------------------------------

WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_plan_modes() -> None:
    assert plan(request(), None) is None
    assert plan(request(tools=[WEATHER], tool_choice="none"), None) is None
    auto = plan(request(tools=[WEATHER, TIME]), "hermes")
    assert auto is not None and auto.mode == "auto" and auto.parser.name == "hermes" and auto.structured is None
    named = plan(
        request(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}}), None
    )
    assert named is not None and named.structured is not None
    assert named.structured.spec == WEATHER_PARAMETERS
    required = plan(request(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False), None)
    assert required is not None and required.structured is not None
    one_call = required.structured.spec  # no parallel calls: exactly one call object
    assert [s["properties"]["name"]["const"] for s in one_call["anyOf"]] == ["get_weather", "get_time"]
    assert one_call["anyOf"][0]["properties"]["arguments"] == WEATHER_PARAMETERS
    assert one_call["anyOf"][1]["properties"]["arguments"] == {"type": "object", "properties": {}}
    parallel = plan(request(tools=[WEATHER], tool_choice="required"), None)
    assert parallel is not None and parallel.structured is not None
    single, several = parallel.structured.spec["anyOf"]
    assert single["properties"]["name"] == {"const": "get_weather"}
    assert several == {"type": "array", "items": single, "minItems": 1}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ],
)
def test_plan_rejects(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        plan(request(**fields), None)
    assert caught.value.param == param


def feed_all(calls: ChoiceCalls, pieces: list[str]) -> tuple[str, list[dict[str, Any]]]:
    sent = "".join(calls.feed(piece) for piece in pieces)
    rest, found = calls.finish()
    return sent + rest, found


def test_auto_streams_plain_content_as_soon_as_it_cannot_be_a_call() -> None:
    tool_plan = plan(request(tools=[WEATHER]), None)
    assert tool_plan is not None
    calls = ChoiceCalls(tool_plan)
    assert calls.feed("  ") == ""  # whitespace alone: too early to tell
    assert calls.feed("Hel") == "  Hel"
    assert calls.feed("lo") == "lo"
    assert calls.finish() == ("", [])


def test_auto_holds_a_call_and_reads_it_at_the_end() -> None:
    tool_plan = plan(request(tools=[WEATHER]), None)
    assert tool_plan is not None
    content, found = feed_all(ChoiceCalls(tool_plan), ['{"name": "get_', 'weather", "arguments": {"city": "Paris"}}'])
    assert content == ""
    assert len(found) == 1 and found[0]["type"] == "function" and str(found[0]["id"]).startswith("call_")
    assert found[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_auto_call_to_an_unknown_function_stays_content() -> None:
    tool_plan = plan(request(tools=[WEATHER]), None)
    assert tool_plan is not None
    text = '{"name": "launch", "arguments": {}}'
    assert feed_all(ChoiceCalls(tool_plan), [text]) == (text, [])


def test_auto_hermes_sends_text_before_the_marker_and_holds_a_partial_marker() -> None:
    tool_plan = plan(request(tools=[WEATHER]), "hermes")
    assert tool_plan is not None
    calls = ChoiceCalls(tool_plan)
    assert calls.feed("Checking <tool") == "Checking "
    assert calls.feed('_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>') == ""
    rest, found = calls.finish()
    assert rest == "" and found[0]["function"]["name"] == "get_weather"  # "Checking " went out already


def test_forced_calls_read_the_constrained_json() -> None:
    named = plan(request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}), None)
    required = plan(request(tools=[WEATHER], tool_choice="required"), None)
    assert named is not None and required is not None
    _, found = feed_all(ChoiceCalls(named), ['{"city":', ' "Rome"}'])
    assert found[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    _, found = feed_all(ChoiceCalls(required), ['{"name": "get_weather", "arguments": {"city": "Rome"}}'])
    assert found[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    _, found = feed_all(
        ChoiceCalls(required),
        [
            '[{"name": "get_weather", "arguments": {"city": "Rome"}}, ',
            '{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
        ],
    )
    assert [c["function"]["arguments"] for c in found] == ['{"city": "Rome"}', '{"city": "Oslo"}']
    assert len({c["id"] for c in found}) == 2
    # Cut short by max_tokens: no call, the text is content.
    assert feed_all(ChoiceCalls(named), ['{"city": "Ro']) == ('{"city": "Ro', [])


def test_template_messages_name_tool_results_after_their_call() -> None:
    req = request(
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "3C"},
        ]
    )
    turns = template_messages(req.messages)
    assert turns[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'
    assert turns[2] == {"role": "tool", "content": "3C", "tool_call_id": "call_1", "name": "get_weather"}


# -- the Gemma template and the json parser agree ------------------------------------------------


def render_gemma(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    from gateway.model_store import GEMMA3_CHAT_TEMPLATE

    rendered, _ = render_jinja_template(
        conversations=[messages],
        tools=tools,
        add_generation_prompt=True,
        chat_template=GEMMA3_CHAT_TEMPLATE.read_text(),
        bos_token="<bos>",
    )
    return str(rendered[0])


def test_gemma_template_shows_tools_and_renders_calls_the_json_parser_reads() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": {}}},
    ]
    prompt = render_gemma(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather and time?"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "3C"},
            {"role": "tool", "tool_call_id": "call_2", "name": "get_time", "content": "noon"},
        ],
        tools=[WEATHER, TIME],
    )
    turns = prompt.split("<start_of_turn>")
    assert turns[0] == "<bos>" and len(turns) == 5 and turns[-1] == "model\n"
    system_and_user = turns[1]
    assert system_and_user.startswith("user\nBe brief.\n\nYou can call these functions:\n")
    assert json.dumps(WEATHER["function"]) in system_and_user and json.dumps(TIME["function"]) in system_and_user
    assert system_and_user.endswith("Weather and time?<end_of_turn>\n")
    model_turn = turns[2].removeprefix("model\n").removesuffix("<end_of_turn>\n")
    assert parse_json(model_turn).calls == (call("get_weather", city="Oslo"), call("get_time"))
    # Consecutive results share one user turn.
    assert turns[3] == "user\nResult of get_weather:\n3C\n\nResult of get_time:\nnoon<end_of_turn>\n"


def test_gemma_template_without_tools_is_unchanged() -> None:
    assert (
        render_gemma([{"role": "user", "content": "Hi"}]) == "<bos><start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "tool", "content": "x"}],
        [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_9", "content": "x"}],
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "call_2", "content": "x"},
        ],
    ],
)
def test_tool_message_must_answer_an_earlier_call(messages: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        template_messages(request(messages=messages).messages)
    assert caught.value.param == "messages"
