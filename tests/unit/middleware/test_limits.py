"""Caps (400) and per-key token buckets (429, x-ratelimit-* headers), with the figures checked."""

from __future__ import annotations

import httpx
import openai
import pytest

from gateway.limit_store import Decision, KeyLimits, MemoryStore, TokenBucket, _per_minute
from gateway.middleware.limits import (
    Ask,
    duration,
    estimate_tokens,
    measure,
    rate_headers,
)
from tests.support.scripted_app import MODEL, RecordingAdapter, chat, scripted_client, settings, state_of

KEY = {"authorization": "Bearer sk-limits-test-key"}
CAPS = {"max_tokens": 100, "max_n": 4, "max_stop": 2, "max_prompt_chars": 50}


@pytest.mark.parametrize(
    ("path", "body", "param", "message"),
    [
        ("/v1/chat/completions", chat(max_tokens=101), "max_tokens", "max_tokens must be at most 100 on this server."),
        (
            "/v1/chat/completions",
            chat(max_completion_tokens=10**23),
            "max_completion_tokens",
            "max_completion_tokens must be at most 100 on this server.",
        ),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "x", "max_tokens": 1e9},
            "max_tokens",
            "max_tokens must be at most 100 on this server.",
        ),
        ("/v1/chat/completions", chat(n=5), "n", "n must be at most 4 on this server."),
        ("/v1/chat/completions", chat(stop=["a", "b", "c"]), "stop", "At most 2 stop sequences are allowed."),
        (
            "/v1/chat/completions",
            chat(messages=[{"role": "user", "content": [{"type": "text", "text": "y" * 51}]}]),
            "messages",
            "The messages must be at most 50 characters.",
        ),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": ["y" * 30, "z" * 21]},
            "prompt",
            "The prompt must be at most 50 characters.",
        ),
        ("/v1/embeddings", {"model": MODEL, "input": "y" * 51}, "input", "The input must be at most 50 characters."),
    ],
    ids=[
        "max_tokens",
        "max_completion_tokens-huge",
        "max_tokens-float",
        "n",
        "stop",
        "chat-prompt",
        "prompt-list",
        "embedding-input",
    ],
)
async def test_caps_answer_400_naming_the_field(path: str, body: dict[str, object], param: str, message: str) -> None:
    adapter = RecordingAdapter()
    async with scripted_client(settings(limits=CAPS), adapter) as client:
        response = await client.post(path, json=body)
        assert response.status_code == 400
        assert response.json()["error"] == {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
        assert adapter.requests == []


async def test_requests_at_the_caps_pass() -> None:
    async with scripted_client(settings(limits=CAPS)) as client:
        body = chat(max_tokens=100, n=4, stop=["a", "b"], messages=[{"role": "user", "content": "y" * 50}])
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200 and len(response.json()["choices"]) == 4


def test_measure_and_estimate() -> None:
    ask = measure(
        chat(
            max_tokens=10,
            n=2,
            messages=[
                {"role": "user", "content": "abcdefgh"},
                {"role": "user", "content": [{"type": "text", "text": "abcd"}]},
            ],
        )
    )
    assert ask == Ask("messages", 12, 0, 1, 2, 0, ("max_tokens", 10))
    assert estimate_tokens(ask, embedding=False) == 3 + 10 * 2
    prompts = measure({"prompt": ["abcd", "ab"], "max_tokens": 5})
    assert (prompts.prompts, estimate_tokens(prompts, embedding=False)) == (2, 2 + 5 * 2)
    ids = measure({"prompt": [[1, 2, 3], [4, 5]]})
    assert (ids.prompt_ids, estimate_tokens(ids, embedding=False)) == (5, 5 + 256 * 2)
    embedding = measure({"input": ["abcdefgh", "abcd"]})
    assert estimate_tokens(embedding, embedding=True) == 3


def test_media_parts_leave_the_estimate_as_the_text_makes_it() -> None:
    """An image's tokens are charged from the answer's usage; before it, no part type (known or not) makes
    the estimate smaller or larger than the text does."""
    text = [{"type": "text", "text": "abcdefgh"}]
    media = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 4000, "detail": "high"}},
        {"type": "input_audio", "input_audio": {"data": "B" * 4000, "format": "wav"}},
        {"type": "hologram", "hologram": {"text": "x" * 4000}},
        {"type": "image_embeds", "image_embeds": "C" * 4000},
    ]
    plain = measure(chat(max_tokens=5, messages=[{"role": "user", "content": text}]))
    mixed = measure(chat(max_tokens=5, messages=[{"role": "user", "content": [*media[:2], *text, *media[2:]]}]))
    assert mixed == plain
    assert estimate_tokens(mixed, embedding=False) == estimate_tokens(plain, embedding=False)


def test_token_bucket_figures() -> None:
    bucket = TokenBucket(60, now=0.0)  # one per second
    assert bucket.wait_s(60, 0.0) == 0
    bucket.take(60, 0.0)
    assert bucket.wait_s(1, 0.0) == pytest.approx(1.0)
    assert bucket.wait_s(10, 4.0) == pytest.approx(6.0)  # 4 refilled by then
    assert bucket.wait_s(600, 4.0) == pytest.approx(56.0)  # more than the bucket: waits for a full one only
    bucket.take(100, 60.0)
    assert bucket.level == pytest.approx(-40.0)  # a big request makes its key wait afterwards
    bucket.refund(30, 60.0)
    decision = Decision(True, tokens_left=bucket.level)
    assert dict(rate_headers(KeyLimits(tokens_per_minute=60), decision)) == {
        b"x-ratelimit-limit-tokens": b"60",
        b"x-ratelimit-remaining-tokens": b"0",
        b"x-ratelimit-reset-tokens": b"1m10s",
    }


def test_duration_format() -> None:
    assert [duration(s) for s in (0.0, 0.0201, 1.5, 59.9994, 360.0, 61.25)] == [
        "0ms",
        "21ms",
        "1.5s",
        "59.999s",
        "6m0s",
        "1m1.25s",
    ]


def test_store_keeps_buckets_per_identity_and_follows_changed_limits() -> None:
    store, ten = MemoryStore(clock=lambda: 0.0), KeyLimits(requests_per_minute=10)
    alice = store.buckets("alice", ten)
    assert alice.tokens is None and _per_minute(alice.requests) == 10
    assert store.buckets("alice", ten) is alice
    assert store.buckets("bob", ten) is not alice
    faster = store.buckets("alice", KeyLimits(20, 1000))
    assert faster is not alice
    assert (_per_minute(faster.requests), _per_minute(faster.tokens)) == (20, 1000)


def _rate_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith(("x-ratelimit", "retry-after"))}


async def test_requests_per_minute_with_headers_on_every_answer() -> None:
    async with scripted_client(
        settings(api_keys=KEY["authorization"][7:], limits={"requests_per_minute": 3}), headers=KEY
    ) as client:
        answers = [
            await client.get("/v1/models"),
            await client.post("/v1/chat/completions", json=chat(model="nope")),
            await client.get("/v1/models"),
        ]
        assert [r.status_code for r in answers] == [200, 404, 200]
        assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0"]
        assert all(r.headers["x-ratelimit-limit-requests"] == "3" for r in answers)
        refused = await client.get("/v1/models")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        headers = _rate_headers(refused)
        assert headers["retry-after"] == "20"  # one request refills in 60 / 3 s
        assert 19_900 <= int(headers["retry-after-ms"]) <= 20_000
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert 59.8 <= float(headers["x-ratelimit-reset-requests"].rstrip("s")) <= 60
        assert "x-ratelimit-limit-tokens" not in headers  # no token limit configured
        assert state_of(client).metrics.rejected.labels("rate_limited")._value.get() == 1


async def test_tokens_are_estimated_then_corrected_from_usage() -> None:
    async with scripted_client(settings(limits={"tokens_per_minute": 100})) as client:
        # prompt "hi" ~ 1 token + max_tokens 60 = 61 charged up front; the scripted engine really uses 3 + 8 = 11.
        first = await client.post("/v1/chat/completions", json=chat(max_tokens=60))
        assert first.status_code == 200 and first.json()["usage"]["total_tokens"] == 11
        assert first.headers["x-ratelimit-remaining-tokens"] == "39"
        after = await client.get("/v1/models")  # costs no tokens: shows the corrected level
        assert after.headers["x-ratelimit-remaining-tokens"] == "89"
        refused = await client.post("/v1/chat/completions", json=chat(max_tokens=95))
        assert refused.status_code == 429
        # 96 wanted, 89 left, 100 a minute: (96 - 89) * 0.6 s = 4.2 s
        assert 4_100 <= int(refused.headers["retry-after-ms"]) <= 4_200 and refused.headers["retry-after"] == "5"
        failed = await client.post("/v1/chat/completions", json=chat(model="nope", max_tokens=50))
        assert failed.status_code == 404  # refunded: an error uses no tokens
        assert (await client.get("/v1/models")).headers["x-ratelimit-remaining-tokens"] == "89"


async def test_per_key_limits_and_client_address_without_keys() -> None:
    keys = [{"key": "sk-alice-1234", "name": "alice", "requests_per_minute": 1}, {"key": "sk-bob-5678", "name": "bob"}]
    async with scripted_client(settings(api_keys=keys, limits={"requests_per_minute": 2})) as client:
        codes = {}
        for name, key in (("alice", "sk-alice-1234"), ("bob", "sk-bob-5678")):
            auth = {"authorization": f"Bearer {key}"}
            codes[name] = [(await client.get("/v1/models", headers=auth)).status_code for _ in range(3)]
        assert codes == {"alice": [200, 429, 429], "bob": [200, 200, 429]}
    async with scripted_client(settings(limits={"requests_per_minute": 1})) as client:
        assert [(await client.get("/v1/models")).status_code for _ in range(2)] == [200, 429]


async def test_the_sdk_raises_rate_limit_error() -> None:
    async with scripted_client(settings(limits={"requests_per_minute": 1})) as client:
        async with httpx.AsyncClient(transport=client._transport) as http:
            sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0)
            await sdk.models.list()
            with pytest.raises(openai.RateLimitError) as err:
                await sdk.models.list()
            assert err.value.code == "rate_limit_exceeded"
