"""Legacy completions through the real engine."""

from __future__ import annotations

import httpx
import openai

from tests.conftest import TEXT_MODEL
from tests.e2e.sse import post_stream

PROMPT = "The Eiffel Tower is located in the city of"


def complete(client: openai.OpenAI, **kwargs: object) -> openai.types.Completion:
    args: dict[str, object] = {"model": TEXT_MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **kwargs}
    return client.completions.create(**args)  # type: ignore[call-overload, no-any-return]


def test_greedy_completion_reads_well(client: openai.OpenAI) -> None:
    reply = complete(client)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert "Paris" in reply.choices[0].text
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage and reply.usage.prompt_tokens == 10  # BOS + 9 tokens


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
    assert lp and lp.tokens and lp.token_logprobs and lp.text_offset
    assert "".join(lp.tokens) == with_logprobs.text == PROMPT + plain
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_stream_framing(http: httpx.Client) -> None:
    events, raw = post_stream(
        http,
        "/v1/completions",
        {"model": TEXT_MODEL, "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "logprobs": 1},
    )
    assert events[-1] == "[DONE]" and raw.endswith("data: [DONE]\n\n")
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    offsets = [o for c in chunks for o in (c["choices"][0]["logprobs"] or {}).get("text_offset", [])]
    assert offsets == sorted(offsets) and len(offsets) >= 1


def test_stream_with_sdk(loose_client: openai.OpenAI, client: openai.OpenAI) -> None:
    whole = complete(client).choices[0].text
    stream = loose_client.completions.create(
        model=TEXT_MODEL,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens >= 1


def test_batched_prompts_and_n(client: openai.OpenAI) -> None:
    reply = complete(client, prompt=[PROMPT, "One, two, three,"], n=2, max_tokens=4, temperature=1.0, seed=7)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2, 3]
    assert all(c.text for c in reply.choices)
    single = complete(client, prompt="One, two, three,", max_tokens=1).usage
    assert single and reply.usage and reply.usage.prompt_tokens == 10 + single.prompt_tokens


def test_greedy_with_n_above_one_gives_identical_choices(client: openai.OpenAI) -> None:
    single = complete(client)
    reply = complete(client, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert {c.text for c in reply.choices} == {single.choices[0].text}
    assert reply.usage and single.usage and reply.usage.completion_tokens == 3 * single.usage.completion_tokens


def test_token_id_prompt(client: openai.OpenAI) -> None:
    from transformers import AutoTokenizer

    from gateway.model_store import prepare_gemma

    token_ids = AutoTokenizer.from_pretrained(prepare_gemma()).encode(PROMPT)
    by_text = complete(client)
    by_ids = complete(client, prompt=token_ids, echo=True)
    assert by_ids.usage and by_ids.usage.prompt_tokens == len(token_ids) == 10
    assert by_ids.choices[0].text == PROMPT + by_text.choices[0].text
