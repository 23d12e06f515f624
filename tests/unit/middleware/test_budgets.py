"""Token budgets per key and period (429 insufficient_quota), the usage endpoints and the per-key metrics,
on the memory store."""

from __future__ import annotations

from datetime import UTC, datetime

import openai
import pytest

from gateway.limit_store import Charge, KeyLimits, MemoryStore, windows
from tests.support.scripted_app import MODEL, chat, scripted_client, settings, state_of

ALICE, BOB, ADMIN = "sk-alice-budget-1", "sk-bob-budget-2", "sk-admin-budget-3"
KEYS = [{"key": ALICE, "name": "alice", "tokens_per_day": 33}, {"key": BOB, "name": "bob"}]


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_a_spent_daily_budget_answers_insufficient_quota_naming_the_period() -> None:
    async with scripted_client(
        settings(api_keys=KEYS, limits={"tokens_per_month": 1000}), headers=_auth(ALICE)
    ) as client:
        # Each answer reports 11 tokens (3 prompt + 8 completion); the reservation (1 + 8) is corrected to it.
        codes = [(await client.post("/v1/chat/completions", json=chat(max_tokens=8))).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]  # 33 + 9 > 33 after the third
        refused = await client.post("/v1/chat/completions", json=chat())
        error = refused.json()["error"]
        assert refused.status_code == 429 and error["code"] == "insufficient_quota"
        assert error["type"] == "insufficient_quota"
        tomorrow = windows(datetime.now(UTC))[0].resets_at_text
        assert error["message"] == f"This key's daily token budget (33 tokens) is used up; it resets at {tomorrow}."
        assert 0 < int(refused.headers["retry-after"]) <= 86_400
        bob = await client.post("/v1/chat/completions", json=chat(), headers=_auth(BOB))
        assert bob.status_code == 200  # budgets are per key
        metrics = state_of(client).metrics
        assert metrics.key_rejected.labels("alice", "over_budget")._value.get() == 2
        assert metrics.key_requests.labels("alice", MODEL, "200")._value.get() == 3
        assert metrics.key_prompt_tokens.labels("alice", MODEL)._value.get() == 9
        assert metrics.key_completion_tokens.labels("alice", MODEL)._value.get() == 24
        text = metrics.render(include_engine=False).decode()
        assert ALICE not in text and 'tokenyard_key_requests_total{key="bob",model="scripted",status="200"} 1.0' in text


async def test_usage_endpoint_shows_the_own_key_and_refunds_failures() -> None:
    async with scripted_client(
        settings(api_keys=KEYS, limits={"tokens_per_month": 1000, "requests_per_minute": 50}), headers=_auth(ALICE)
    ) as client:
        assert (await client.post("/v1/chat/completions", json=chat(max_tokens=8))).status_code == 200
        failed = await client.post("/v1/chat/completions", json=chat(model="nope", max_tokens=8))
        assert failed.status_code == 404  # 9 reserved up front, all refunded
        usage = await client.get("/v1/usage")
        assert usage.status_code == 200 and "x-ratelimit-remaining-requests" not in usage.headers  # not charged
        body = usage.json()
        assert body["key"] == "alice" and body["requests_per_minute"] == 50
        day, month = body["periods"]["day"], body["periods"]["month"]
        assert (day["tokens"], day["requests"], day["budget_tokens"], day["remaining_tokens"]) == (11, 2, 33, 22)
        assert (month["tokens"], month["budget_tokens"], month["remaining_tokens"]) == (11, 1000, 989)
        assert month["resets_at"] == windows(datetime.now(UTC))[1].resets_at_text
        assert ALICE not in usage.text
        bob = (await client.get("/v1/usage", headers=_auth(BOB))).json()
        assert bob["periods"]["day"]["tokens"] == 0 and bob["periods"]["day"]["budget_tokens"] is None
        assert (await client.get("/v1/usage", headers=_auth("sk-wrong"))).status_code == 401


async def test_admin_view_lists_every_key_behind_the_admin_key() -> None:
    async with scripted_client(settings(api_keys=KEYS, auth={"admin_key": ADMIN})) as client:
        await client.post("/v1/chat/completions", json=chat(), headers=_auth(BOB))
        assert (await client.get("/admin/usage")).status_code == 401
        assert (await client.get("/admin/usage", headers=_auth(ALICE))).status_code == 403  # no admin group
        listing = await client.get("/admin/usage", headers=_auth(ADMIN))
        assert listing.status_code == 200
        data = {entry["key"]: entry["periods"]["day"] for entry in listing.json()["data"]}
        assert data["alice"]["budget_tokens"] == 33 and data["bob"]["tokens"] == 11
        assert (await client.get("/v1/models", headers=_auth(ADMIN))).status_code == 401  # not a client key
    async with scripted_client(settings(api_keys=KEYS)) as client:
        assert (await client.get("/admin/usage", headers=_auth(ADMIN))).status_code == 404  # off without one


async def test_usage_without_keys_is_not_found() -> None:
    async with scripted_client(settings()) as client:
        response = await client.get("/v1/usage")
        assert response.status_code == 404 and "no keys configured" in response.json()["error"]["message"]


async def test_the_sdk_raises_rate_limit_error_with_insufficient_quota() -> None:
    keys = [{"key": ALICE, "name": "alice", "tokens_per_day": 1}]
    async with scripted_client(settings(api_keys=keys)) as client:
        sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key=ALICE, http_client=client, max_retries=0)
        await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError) as err:
            await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert err.value.code == "insufficient_quota"


async def test_memory_store_starts_a_new_day_from_zero() -> None:
    store = MemoryStore(clock=lambda: 0.0)
    limits = KeyLimits(tokens_per_day=10)
    monday = windows(datetime(2026, 12, 7, 23, 59, tzinfo=UTC))
    assert (await store.admit(Charge("k", limits, 10, monday))).allowed
    assert (await store.admit(Charge("k", limits, 1, monday))).over_budget == monday[0]
    tuesday = windows(datetime(2026, 12, 8, 0, 0, tzinfo=UTC))
    assert tuesday[0].name == "2026-12-08" and tuesday[1].name == monday[1].name == "2026-12"
    assert (await store.admit(Charge("k", limits, 1, tuesday))).allowed
    assert windows(datetime(2026, 12, 31, tzinfo=UTC))[1].resets_at_text == "2027-01-01T00:00:00Z"


def test_redis_backend_needs_a_url() -> None:
    with pytest.raises(ValueError, match="limits backend redis needs redis_url"):
        settings(limits={"backend": "redis"})
    with pytest.raises(ValueError, match="redis_failure"):
        settings(limits={"backend": "redis", "redis_url": "redis://127.0.0.1:1/0", "redis_failure": "maybe"})


async def test_a_reservation_is_held_until_settled_and_one_without_max_tokens_holds_what_is_left() -> None:
    store = MemoryStore(clock=lambda: 0.0)
    limits, periods = KeyLimits(tokens_per_day=100), windows(datetime.now(UTC))
    known = Charge("k", limits, cost=30, periods=periods, reserve=60)  # max_tokens known: must fit
    assert (await store.admit(known)).reserved == 60
    refused = await store.admit(known)  # 60 + 60 > 100: refused, saying what is left
    assert not refused.allowed and refused.over_budget is not None and refused.budget_left == 40
    open_ended = Charge("k", limits, cost=30, periods=periods, reserve=4000, fill=True)  # no max_tokens
    taken = await store.admit(open_ended)
    assert taken.allowed and taken.reserved == 40  # all that is left, until it ends
    assert not (await store.admit(open_ended)).allowed
    await store.settle(known, known.cost - 25)  # used 25 of the 60 reserved
    await store.settle(Charge("k", limits, 30, periods, reserve=40, fill=True), 30 - 10)  # used 10 of 40
    assert (await store.usage("k", limits))[0].tokens == 35
