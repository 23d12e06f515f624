"""The rest of OpenAI's and vLLM's request parameters, through the real engine and the openai SDK."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from tests.conftest import TEXT_MODEL, Server

PROMPT = "The Eiffel Tower is located in the city of"
OTHER = "The capital of Germany is the city of"


def bad_request(call: object, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        call()  # type: ignore[operator]
    assert err.value.status_code == 400 and err.value.param == param, err.value.body


def test_best_of_equal_to_n_is_served_else_400(client: openai.OpenAI) -> None:
    out = client.completions.create(model=TEXT_MODEL, prompt=PROMPT, max_tokens=3, temperature=0, n=2, best_of=2)
    assert [c.index for c in out.choices] == [0, 1]
    bad_request(
        lambda: client.completions.create(model=TEXT_MODEL, prompt=PROMPT, max_tokens=3, n=1, best_of=3), "best_of"
    )


def test_suffix_is_400(client: openai.OpenAI) -> None:
    bad_request(
        lambda: client.completions.create(model=TEXT_MODEL, prompt=PROMPT, suffix=" end.", max_tokens=3), "suffix"
    )


def test_beam_search(client: openai.OpenAI, loose_client: openai.OpenAI) -> None:
    beam = {"use_beam_search": True, "length_penalty": 1.0}
    out = client.completions.create(model=TEXT_MODEL, prompt=PROMPT, n=3, max_tokens=5, temperature=0, extra_body=beam)
    texts = [c.text for c in out.choices]
    assert [c.index for c in out.choices] == [0, 1, 2] and len(set(texts)) == 3  # three different beams
    assert "Paris" in texts[0] and out.usage and out.usage.completion_tokens > 0
    events = list(
        loose_client.completions.create(
            model=TEXT_MODEL, prompt=PROMPT, n=3, max_tokens=5, temperature=0, stream=True, extra_body=beam
        )
    )
    streamed = {c.index: c.text for e in events for c in e.choices}
    assert [streamed[i] for i in range(3)] == texts
    chat = client.chat.completions.create(
        model=TEXT_MODEL,
        n=2,
        max_tokens=4,
        temperature=0,
        extra_body=beam,
        messages=[{"role": "user", "content": "Name a colour."}],
    )
    assert len(chat.choices) == 2 and all(c.message.content for c in chat.choices)
    bad_request(
        lambda: client.completions.create(
            model=TEXT_MODEL, prompt=PROMPT, n=2, max_tokens=3, stop=["."], extra_body=beam
        ),
        "stop",
    )


def test_user_service_tier_metadata_are_accepted(client: openai.OpenAI, server: Server) -> None:
    user = f"person-{uuid.uuid4().hex}@example.com"
    out = client.completions.create(
        model=TEXT_MODEL,
        prompt=PROMPT,
        max_tokens=2,
        temperature=0,
        user=user,
        extra_body={"service_tier": "flex", "metadata": {"team": "a"}},
    )
    assert out.choices[0].text
    chat = client.chat.completions.create(
        model=TEXT_MODEL,
        max_tokens=2,
        user=user,
        service_tier="auto",
        metadata={"team": "a"},
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert chat.choices[0].message.content is not None
    if server.log_path is None:
        pytest.skip("the server's log is not ours to read (TOKENYARD_TEST_URL)")
    log = server.log_text()
    assert user not in log  # the access log names the user by a digest only
    assert '"user":"u-' in log


def test_unknown_fields_are_accepted_and_named_once(client: openai.OpenAI, server: Server) -> None:
    name, secret = f"vendor_flag_{uuid.uuid4().hex[:8]}", f"secret-{uuid.uuid4().hex}"
    for _ in range(2):
        out = client.completions.create(model=TEXT_MODEL, prompt=PROMPT, max_tokens=2, extra_body={name: secret})
        assert out.choices[0].text
    if server.log_path is None:
        pytest.skip("the server's log is not ours to read (TOKENYARD_TEST_URL)")
    log = server.log_text()
    assert log.count(f'"field":"{name}"') == 1 and secret not in log


def test_continuous_usage_stats(loose_client: openai.OpenAI) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    # continuous_usage_stats is vLLM's: the SDK's stream_options type lacks it, so it goes in extra_body.
    events = list(
        loose_client.completions.create(
            model=TEXT_MODEL,
            prompt=PROMPT,
            max_tokens=6,
            temperature=0,
            stream=True,
            extra_body={"stream_options": options},
        )
    )
    assert len(events) > 2 and all(e.usage is not None for e in events)
    counts = [e.usage.completion_tokens for e in events if e.usage]
    assert counts == sorted(counts) and counts[-1] == 6
    assert all(e.usage and e.usage.total_tokens == e.usage.prompt_tokens + e.usage.completion_tokens for e in events)
    plain = list(
        loose_client.completions.create(
            model=TEXT_MODEL, prompt=PROMPT, max_tokens=3, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(e.usage is None for e in plain[:-1]) and plain[-1].usage is not None


def test_continuous_usage_stats_chat(client: openai.OpenAI) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    events = list(
        client.chat.completions.create(
            model=TEXT_MODEL,
            max_tokens=5,
            temperature=0,
            stream=True,
            extra_body={"stream_options": options},
            messages=[{"role": "user", "content": "Count to ten."}],
        )
    )
    assert all(e.usage is not None and e.usage.prompt_tokens > 0 for e in events)
    assert events[-1].usage and events[-1].usage.completion_tokens == 5


def test_prompt_logprobs_as_vllm_returns_them(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=TEXT_MODEL, prompt=PROMPT, max_tokens=1, temperature=0, extra_body={"prompt_logprobs": 0}
    )
    positions = (out.choices[0].model_extra or {})["prompt_logprobs"]
    assert out.usage and len(positions) == out.usage.prompt_tokens and positions[0] is None  # BOS has no logprob
    ids = [int(next(iter(p))) for p in positions[1:]]
    assert all(len(p) == 1 for p in positions[1:])  # 0: the prompt token itself only
    assert "".join(next(iter(p.values()))["decoded_token"] for p in positions[1:]) == PROMPT
    assert all(v["logprob"] <= 0 and v["rank"] >= 1 for p in positions[1:] for v in p.values())
    # The same prompt as token ids scores the same.
    again = client.completions.create(
        model=TEXT_MODEL, prompt=[2, *ids], max_tokens=1, temperature=0, extra_body={"prompt_logprobs": 2}
    )
    wider = (again.choices[0].model_extra or {})["prompt_logprobs"]
    for mine, theirs in zip(positions[1:], wider[1:]):
        token = next(iter(mine))
        assert token in theirs and 1 <= len(theirs) <= 3  # the token itself and the top 2
        assert abs(theirs[token]["logprob"] - mine[token]["logprob"]) < 1e-3
    plain = client.completions.create(model=TEXT_MODEL, prompt=PROMPT, max_tokens=1)
    assert (plain.choices[0].model_extra or {}).get("prompt_logprobs") is None


def test_prompt_logprobs_chat_and_stream(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=TEXT_MODEL, max_tokens=1, extra_body={"prompt_logprobs": 1}, messages=[{"role": "user", "content": "Hi"}]
    )
    positions = (chat.model_extra or {})["prompt_logprobs"]
    assert chat.usage and len(positions) == chat.usage.prompt_tokens and positions[0] is None and all(positions[1:])
    bad_request(
        lambda: client.completions.create(
            model=TEXT_MODEL, prompt=PROMPT, max_tokens=1, stream=True, extra_body={"prompt_logprobs": 1}
        ),
        "prompt_logprobs",
    )


def test_return_tokens_as_token_ids(client: openai.OpenAI) -> None:
    as_text = client.completions.create(model=TEXT_MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    as_ids = client.completions.create(
        model=TEXT_MODEL,
        prompt=PROMPT,
        max_tokens=4,
        temperature=0,
        logprobs=2,
        extra_body={"return_tokens_as_token_ids": True},
    )
    text_lp, ids_lp = as_text.choices[0].logprobs, as_ids.choices[0].logprobs
    assert text_lp and ids_lp and text_lp.tokens and ids_lp.tokens and ids_lp.top_logprobs
    assert all(t.startswith("token_id:") and t[len("token_id:") :].isdigit() for t in ids_lp.tokens)
    assert all(k.startswith("token_id:") for top in ids_lp.top_logprobs if top for k in top)
    assert ids_lp.token_logprobs == pytest.approx(text_lp.token_logprobs, abs=1e-3)
    assert as_ids.choices[0].text == as_text.choices[0].text  # the text itself is unchanged
    chat = client.chat.completions.create(
        model=TEXT_MODEL,
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=1,
        extra_body={"return_tokens_as_token_ids": True},
        messages=[{"role": "user", "content": "Hi"}],
    )
    content = chat.choices[0].logprobs and chat.choices[0].logprobs.content
    assert content and all(e.token.startswith("token_id:") for e in content)


def test_prompt_lists_make_batched_choices(client: openai.OpenAI, http: httpx.Client) -> None:
    single = client.completions.create(model=TEXT_MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    other = client.completions.create(model=TEXT_MODEL, prompt=OTHER, max_tokens=4, temperature=0)
    batch = client.completions.create(model=TEXT_MODEL, prompt=[PROMPT, OTHER], max_tokens=4, temperature=0, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]  # prompt by prompt, n choices each
    texts = [c.text for c in batch.choices]
    assert texts == [single.choices[0].text] * 2 + [other.choices[0].text] * 2
    assert batch.usage and single.usage and other.usage
    assert batch.usage.prompt_tokens == single.usage.prompt_tokens + other.usage.prompt_tokens
    ids = http.post(
        "/v1/completions", json={"model": TEXT_MODEL, "prompt": PROMPT, "max_tokens": 1, "prompt_logprobs": 0}
    ).json()
    prompt_ids = [2, *(int(next(iter(p))) for p in ids["choices"][0]["prompt_logprobs"][1:])]
    by_ids = client.completions.create(model=TEXT_MODEL, prompt=prompt_ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == single.choices[0].text
    lists = client.completions.create(
        model=TEXT_MODEL, prompt=[prompt_ids, prompt_ids[:-2]], max_tokens=4, temperature=0
    )
    assert len(lists.choices) == 2 and lists.choices[0].text == single.choices[0].text
    bad_request(lambda: client.completions.create(model=TEXT_MODEL, prompt=[], max_tokens=1), "prompt")
