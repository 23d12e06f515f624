"""Chat completions through the real engine, checked with the strict openai SDK and raw SSE."""

from __future__ import annotations

import httpx
import openai

from tests.conftest import TEXT_MODEL
from tests.e2e.sse import post_stream

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Name another colour."},
]


def chat(client: openai.OpenAI, **kwargs: object) -> openai.types.chat.ChatCompletion:
    args: dict[str, object] = {"model": TEXT_MODEL, "messages": MESSAGES, "max_tokens": 16, **kwargs}
    return client.chat.completions.create(**args)  # type: ignore[call-overload, no-any-return]


def test_multi_turn_chat(client: openai.OpenAI) -> None:
    reply = chat(client, temperature=0)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert "<start_of_turn>" not in choice.message.content and "<end_of_turn>" not in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage and usage.prompt_tokens > 10 and usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_end_of_turn_stops_generation(client: openai.OpenAI) -> None:
    # Force <end_of_turn> (id 106) as the first token: the turn must end there, unprinted.
    reply = chat(client, temperature=0, max_tokens=50, logit_bias={"106": 100})
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content == ""
    assert reply.usage and reply.usage.completion_tokens == 1


def test_stream_framing(http: httpx.Client) -> None:
    events, raw = post_stream(
        http, "/v1/chat/completions", {"model": TEXT_MODEL, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    )
    assert events[-1] == "[DONE]" and raw.endswith("data: [DONE]\n\n")
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == TEXT_MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    middle = chunks[1:-1]
    assert middle and all(
        "content" in c["choices"][0]["delta"] and c["choices"][0]["finish_reason"] is None for c in middle
    )
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_stream_with_sdk_matches_non_stream(client: openai.OpenAI) -> None:
    whole = chat(client, temperature=0).choices[0].message.content
    parts = [c.choices[0].delta.content or "" for c in chat(client, temperature=0, stream=True) if c.choices]
    assert "".join(parts) == whole


def test_stream_include_usage(client: openai.OpenAI) -> None:
    chunks = list(chat(client, stream=True, max_tokens=5, stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage and last.usage.completion_tokens == 5


def test_logprobs(client: openai.OpenAI) -> None:
    reply = chat(client, logprobs=True, top_logprobs=3, max_tokens=6, temperature=0)
    choice = reply.choices[0]
    assert choice.logprobs and choice.logprobs.content
    assert reply.usage and len(choice.logprobs.content) == reply.usage.completion_tokens
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    for token in choice.logprobs.content:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        # greedy: the chosen token is the most likely one
        assert abs(token.top_logprobs[0].logprob - token.logprob) < 1e-3


def test_n_choices(client: openai.OpenAI) -> None:
    reply = chat(client, n=3, temperature=1.0, max_tokens=8)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert all(c.message.content for c in reply.choices)
    assert reply.usage and 3 <= reply.usage.completion_tokens <= 3 * 8


def test_n_choices_stream(client: openai.OpenAI) -> None:
    indices = {c.choices[0].index for c in chat(client, n=2, stream=True, max_tokens=4) if c.choices}
    assert indices == {0, 1}


def test_greedy_and_seed_are_repeatable(client: openai.OpenAI) -> None:
    greedy = [chat(client, temperature=0, max_tokens=12).choices[0].message.content for _ in range(2)]
    assert greedy[0] == greedy[1]
    seeded = [chat(client, temperature=1.0, seed=1234, max_tokens=12).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]
    others = {chat(client, temperature=1.0, seed=s, max_tokens=12).choices[0].message.content for s in range(5)}
    assert len(others) > 1, "different seeds should not all give the same sample"


def test_stop_string_and_list(client: openai.OpenAI) -> None:
    text = chat(client, temperature=0, max_tokens=30).choices[0].message.content or ""
    word = text.strip().split()[-1] if len(text.split()) > 1 else text.strip()[-1]
    for stop in (word, [word, "zzzz-never"]):
        reply = chat(client, temperature=0, max_tokens=30, stop=stop)
        assert reply.choices[0].finish_reason == "stop"
        assert reply.choices[0].message.content == text[: text.index(word)]


def test_max_tokens_and_max_completion_tokens(client: openai.OpenAI) -> None:
    for kwargs in ({"max_tokens": 3}, {"max_completion_tokens": 3, "max_tokens": None}):
        args = {k: v for k, v in kwargs.items() if v is not None}
        reply = client.chat.completions.create(
            model=TEXT_MODEL, messages=MESSAGES, temperature=0, extra_body={"ignore_eos": True}, **args
        )  # type: ignore[call-overload]
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_sampling_knobs_and_vllm_extras_are_accepted(client: openai.OpenAI) -> None:
    reply = chat(
        client,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        max_tokens=6,
        extra_body={
            "top_k": 20,
            "min_p": 0.05,
            "repetition_penalty": 1.1,
            "min_tokens": 6,
            "ignore_eos": True,
            "stop_token_ids": [106],
            "skip_special_tokens": True,
        },
    )
    assert reply.usage and reply.usage.completion_tokens == 6


def test_logit_bias_forces_a_token(client: openai.OpenAI) -> None:
    first = chat(client, temperature=0, max_tokens=1, logprobs=True).choices[0]
    assert first.logprobs and first.logprobs.content
    token = first.logprobs.content[0].token
    plain = chat(client, temperature=0, max_tokens=4, extra_body={"ignore_eos": True})
    forced = chat(
        client, temperature=0, max_tokens=4, logit_bias={"4521": 100}, extra_body={"ignore_eos": True}, logprobs=True
    )
    assert forced.choices[0].logprobs and forced.choices[0].logprobs.content
    forced_tokens = [t.token for t in forced.choices[0].logprobs.content]
    assert len(set(forced_tokens)) == 1 and forced_tokens[0] != token
    assert forced.choices[0].message.content != plain.choices[0].message.content
