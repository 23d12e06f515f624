"""/tokenize, /detokenize (vLLM's) and /api/v1/token_check (FastChat's) through the real engine's tokenizer."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TEXT_MODEL

PROMPT = "The Eiffel Tower is located in the city of"
MESSAGES = [{"role": "user", "content": "Name a colour."}]


def post(http: httpx.Client, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    data: dict[str, Any] = response.json()
    return data


def tokenize(http: httpx.Client, **body: Any) -> dict[str, Any]:
    return post(http, "/tokenize", {"model": TEXT_MODEL, **body})


def detokenize(http: httpx.Client, tokens: list[int]) -> str:
    prompt: str = post(http, "/detokenize", {"model": TEXT_MODEL, "tokens": tokens})["prompt"]
    return prompt


def test_tokenize_prompt_matches_completion_usage(http: httpx.Client, client: openai.OpenAI) -> None:
    answer = tokenize(http, prompt=PROMPT)
    assert set(answer) == {"count", "max_model_len", "tokens", "token_strs"} and answer["token_strs"] is None
    assert answer["max_model_len"] == 2048 and answer["count"] == len(answer["tokens"]) > 5
    completion = client.completions.create(model=TEXT_MODEL, prompt=PROMPT, max_tokens=1, temperature=0)
    assert completion.usage and completion.usage.prompt_tokens == answer["count"]


def test_add_special_tokens_controls_bos(http: httpx.Client) -> None:
    with_bos = tokenize(http, prompt=PROMPT)["tokens"]
    without = tokenize(http, prompt=PROMPT, add_special_tokens=False)["tokens"]
    assert with_bos[1:] == without and detokenize(http, with_bos[:1]) == "<bos>"


def test_token_strs_and_detokenize_round_trip(http: httpx.Client) -> None:
    answer = tokenize(http, prompt=PROMPT, add_special_tokens=False, return_token_strs=True)
    strs = answer["token_strs"]
    assert len(strs) == answer["count"] and "".join(strs).replace("▁", " ") == PROMPT
    assert detokenize(http, answer["tokens"]) == PROMPT
    assert detokenize(http, answer["tokens"][:2]) + detokenize(http, answer["tokens"][2:]) == PROMPT


def test_tokenize_messages_matches_chat_usage(http: httpx.Client, client: openai.OpenAI) -> None:
    answer = tokenize(http, messages=MESSAGES)
    reply = client.chat.completions.create(
        model=TEXT_MODEL,
        messages=MESSAGES,
        max_tokens=1,  # type: ignore[arg-type]
        temperature=0,
    )
    assert reply.usage and reply.usage.prompt_tokens == answer["count"]
    rendered = detokenize(http, answer["tokens"])
    assert rendered.startswith("<bos><start_of_turn>user\nName a colour.") and rendered.endswith(
        "<start_of_turn>model\n"
    )
    assert rendered.count("<bos>") == 1  # the template writes BOS; no second one is added


def test_tokenize_messages_template_options(http: httpx.Client) -> None:
    plain = detokenize(http, tokenize(http, messages=MESSAGES, add_generation_prompt=False)["tokens"])
    assert plain.endswith("Name a colour.<end_of_turn>\n")
    prefill = [*MESSAGES, {"role": "assistant", "content": "My favourite colour is"}]
    open_turn = detokenize(
        http, tokenize(http, messages=prefill, add_generation_prompt=False, continue_final_message=True)["tokens"]
    )
    assert open_turn.endswith("<start_of_turn>model\nMy favourite colour is")
    # A template variable set by the caller reaches the template (here: the BOS text it writes first).
    without_bos = tokenize(http, messages=MESSAGES, chat_template_kwargs={"bos_token": ""})
    assert without_bos["tokens"] == tokenize(http, messages=MESSAGES)["tokens"][1:]


def test_token_check(http: httpx.Client) -> None:
    count = tokenize(http, prompt=PROMPT)["count"]
    answer = post(
        http,
        "/api/v1/token_check",
        {
            "prompts": [
                {"model": TEXT_MODEL, "prompt": PROMPT, "max_tokens": 2048 - count},
                {"model": TEXT_MODEL, "prompt": PROMPT, "max_tokens": 2048 - count + 1},
            ]
        },
    )
    assert answer == {
        "prompts": [
            {"fits": True, "tokenCount": count, "contextLength": 2048},
            {"fits": False, "tokenCount": count, "contextLength": 2048},
        ]
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tokenize", {"model": "no-such-model", "prompt": "x"}),
        ("/detokenize", {"model": "no-such-model", "tokens": [1]}),
        ("/api/v1/token_check", {"prompts": [{"model": "no-such-model", "prompt": "x", "max_tokens": 1}]}),
    ],
)
def test_unknown_model_is_404(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    error = post(http, path, body, 404)["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model" and "no-such-model" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/detokenize", {"tokens": [2, 10_000_000]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/detokenize", {"tokens": ["a"]}, "tokens[0]"),
        ("/tokenize", {"prompt": "x", "messages": MESSAGES}, None),
        ("/tokenize", {}, None),
        ("/tokenize", {"messages": MESSAGES, "continue_final_message": True}, None),
        ("/tokenize", {"messages": MESSAGES, "chat_template_kwargs": {"tokenize": True}}, None),
        ("/api/v1/token_check", {"prompts": [{"model": TEXT_MODEL, "prompt": "x"}]}, "prompts[0].max_tokens"),
    ],
)
def test_bad_requests_are_400(http: httpx.Client, path: str, body: dict[str, Any], param: str | None) -> None:
    error = post(http, path, {"model": TEXT_MODEL, **body}, 400)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_tokenize_messages_with_tools_matches_chat_usage(http: httpx.Client, client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    # The tools reach the template as a chat request's do: whatever the template makes of them, the counts agree.
    with_tools = tokenize(http, messages=MESSAGES, tools=tools)
    reply = client.chat.completions.create(
        model=TEXT_MODEL,
        messages=MESSAGES,  # type: ignore[call-overload]
        tools=tools,
        tool_choice="none",
        max_tokens=1,
        temperature=0,
    )
    assert reply.usage and reply.usage.prompt_tokens == with_tools["count"]
