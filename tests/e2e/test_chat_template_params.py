"""vLLM's chat-template extras on /v1/chat/completions: add_generation_prompt, continue_final_message,
chat_template_kwargs and echo, through the real engine and the strict openai SDK."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TEXT_MODEL
from tests.e2e.sse import post_stream

QUESTION = [{"role": "user", "content": "Where is the Eiffel Tower?"}]
PREFILL = "The Eiffel Tower is located in the city of"
CONTINUE = [*QUESTION, {"role": "assistant", "content": PREFILL}]


def chat(client: openai.OpenAI, messages: list[dict[str, Any]], **extra: Any) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=TEXT_MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
        extra_body=extra,
    )


def completion_text(client: openai.OpenAI, prompt: str) -> str:
    # The same prompt text as the template renders, sent raw: what the chat answer must equal.
    reply = client.completions.create(model=TEXT_MODEL, prompt=prompt, max_tokens=4, temperature=0)
    return reply.choices[0].text


def prompt_tokens(reply: openai.types.chat.ChatCompletion) -> int:
    assert reply.usage is not None
    return reply.usage.prompt_tokens


def test_add_generation_prompt(client: openai.OpenAI) -> None:
    opened = chat(client, QUESTION)
    closed = chat(client, QUESTION, add_generation_prompt=False)
    # "<start_of_turn>model\n" is three tokens that only the opened turn has.
    assert prompt_tokens(opened) == prompt_tokens(closed) + 3
    assert opened.choices[0].message.content == completion_text(
        client, "<start_of_turn>user\nWhere is the Eiffel Tower?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_continue_final_message(client: openai.OpenAI) -> None:
    reply = chat(client, CONTINUE, add_generation_prompt=False, continue_final_message=True)
    text = reply.choices[0].message.content or ""
    assert "Paris" in text and "<start_of_turn>" not in text
    assert text == completion_text(
        client, f"<start_of_turn>user\nWhere is the Eiffel Tower?<end_of_turn>\n<start_of_turn>model\n{PREFILL}"
    )
    # Without it the assistant turn is closed and a new one opened: a different prompt.
    assert prompt_tokens(chat(client, CONTINUE)) > prompt_tokens(reply)


def test_continue_final_message_with_generation_prompt_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        chat(client, CONTINUE, continue_final_message=True)
    assert "continue_final_message" in refused.value.message


def test_chat_template_kwargs_reach_the_template(client: openai.OpenAI) -> None:
    # The template reads bos_token; a caller's variable of that name replaces the tokenizer's.
    plain = chat(client, QUESTION)
    without_bos = chat(client, QUESTION, chat_template_kwargs={"bos_token": ""})
    assert prompt_tokens(without_bos) == prompt_tokens(plain) - 1


@pytest.mark.parametrize("kwargs", [{"add_generation_prompt": True}, {"tokenize": True}, "not a dict"])
def test_bad_chat_template_kwargs_are_400(client: openai.OpenAI, kwargs: Any) -> None:
    with pytest.raises(openai.BadRequestError):
        chat(client, QUESTION, chat_template_kwargs=kwargs)


def test_echo_prefixes_the_continued_message(client: openai.OpenAI) -> None:
    plain = chat(client, CONTINUE, add_generation_prompt=False, continue_final_message=True)
    echoed = chat(client, CONTINUE, add_generation_prompt=False, continue_final_message=True, echo=True)
    assert echoed.choices[0].message.content == PREFILL + (plain.choices[0].message.content or "")
    assert echoed.usage == plain.usage


def test_echo_of_a_user_message_only_without_new_turn(client: openai.OpenAI) -> None:
    # As vLLM: the last message is echoed when it is the one being answered; a new assistant turn is not.
    opened = chat(client, QUESTION, echo=True)
    assert opened.choices[0].message.content == chat(client, QUESTION).choices[0].message.content
    closed = chat(client, QUESTION, add_generation_prompt=False, echo=True)
    assert (closed.choices[0].message.content or "").startswith(QUESTION[0]["content"])


def test_echo_streams_the_prefix_first(http: httpx.Client, client: openai.OpenAI) -> None:
    body = {
        "model": TEXT_MODEL,
        "messages": CONTINUE,
        "max_tokens": 4,
        "temperature": 0,
        "add_generation_prompt": False,
        "continue_final_message": True,
        "echo": True,
    }
    events, _ = post_stream(http, "/v1/chat/completions", body)
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""} and deltas[1] == {"content": PREFILL}
    whole = "".join(d.get("content", "") for d in deltas)
    assert (
        whole
        == chat(client, CONTINUE, add_generation_prompt=False, continue_final_message=True, echo=True)
        .choices[0]
        .message.content
    )
