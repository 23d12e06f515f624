"""Legacy completions through the real engine."""

from __future__ import annotations

import httpx
import openai

from tests.conftest import TEXT_MODEL
from tests.e2e.sse import post_stream

PROMPT = "The capital of France is"


def complete(client: openai.OpenAI, **kwargs: object) -> openai.types.Completion:
    args: dict[str, object] = {"model": TEXT_MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **kwargs}
    return client.completions.create(**args)  # type: ignore[call-overload, no-any-return]


def test_greedy_completion_reads_well(client: openai.OpenAI) -> None:
    reply = complete(client)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert "Paris" in reply.choices[0].text
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage and reply.usage.prompt_tokens == 6  # BOS + 5 words


def test_logprobs(client: openai.OpenAI) -> None:
    reply = complete(client, logprobs=2, max_tokens=6, extra_body={"ignore_eos": True})
    choice = reply.choices[0]
    lp = choice.logprobs
    assert lp and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    assert all(len(top) <= 2 and tok in top for tok, top in zip(lp.tokens, lp.top_logprobs))


def test_echo(client: openai.OpenAI) -> None:
    plain = complete(client).choices[0].text
    echoed = complete(client, echo=True).choices[0].text
    assert echoed == PROMPT + plain
    with_logprobs = complete(client, echo=True, logprobs=1).choices[0]
    lp = with_logprobs.logprobs
    assert lp and lp.token_logprobs and lp.token_logprobs[0] is None
    assert all(v is not None for v in lp.token_logprobs[1:])
    assert with_logprobs.text == PROMPT + plain


def test_stream_framing(http: httpx.Client) -> None:
    events, raw = post_stream(http, "/v1/completions", {"model": TEXT_MODEL, "prompt": PROMPT, "max_tokens": 5,
                                                        "temperature": 0, "logprobs": 1})
    assert events[-1] == "[DONE]" and raw.endswith("data: [DONE]\n\n")
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    offsets = [o for c in chunks for o in (c["choices"][0]["logprobs"] or {}).get("text_offset", [])]
    assert offsets == sorted(offsets) and len(offsets) >= 1


def test_stream_with_sdk(loose_client: openai.OpenAI, client: openai.OpenAI) -> None:
    whole = complete(client).choices[0].text
    stream = loose_client.completions.create(model=TEXT_MODEL, prompt=PROMPT, max_tokens=8, temperature=0,
                                             stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens >= 1


def test_batched_prompts_and_n(client: openai.OpenAI) -> None:
    reply = complete(client, prompt=[PROMPT, "One, two, three,"], n=2, max_tokens=4)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2, 3]
    assert reply.choices[0].text == reply.choices[1].text  # greedy: both samples of prompt 0 agree
    assert reply.choices[0].text != reply.choices[2].text


def test_token_id_prompt(client: openai.OpenAI) -> None:
    by_text = complete(client, logprobs=0)
    ids = complete(client, prompt=[2, 651, 6333, 529, 7001, 563], echo=True)
    assert ids.usage and ids.usage.prompt_tokens == 6
    assert ids.choices[0].text.endswith(by_text.choices[0].text)
