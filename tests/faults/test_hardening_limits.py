"""Issue 33, limits and budgets: caps on the values the engine will use, budgets charged what was really used and
reserved up front, one identity per key, and a Redis whose values were tampered with. Real router processes,
scripted instances (tests.support.scripted_upstream) and a real redis-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.faults.harness import MODEL, Engine, Fleet, Router
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401  (the fixture)
from tests.support.waiting import wait_until

CHAT, MESSAGES_PATH = "/v1/chat/completions", "/v1/messages"
SAY = [{"role": "user", "content": "say something"}]
TEAM_KEY = "sk-team-a-0123456789"
TEAM = {"authorization": f"Bearer {TEAM_KEY}"}
CAPS = {"max_n": 2, "max_tokens": 10, "max_stop": 1, "max_prompt_chars": 300}


def _error(answer: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = answer.json()
    return body["error"]


def test_caps_hold_for_numbers_as_strings_and_in_every_api_shape(fleet: Fleet) -> None:
    _, router = fleet.start(1, tokens=4, delay_ms=1, config={"limits": CAPS})
    refused = [
        (CHAT, {"messages": SAY, "n": "8"}, "n"),
        (CHAT, {"messages": SAY, "max_tokens": "1000"}, "max_tokens"),
        (CHAT, {"messages": SAY, "max_completion_tokens": " 11 "}, "max_completion_tokens"),
        (
            CHAT,
            {"messages": SAY, "tools": [{"type": "function", "function": {"name": "f", "description": "d" * 400}}]},
            "messages",
        ),
        (
            CHAT,
            {
                "messages": [
                    *SAY,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "x" * 400}}
                        ],
                    },
                ]
            },
            "messages",
        ),
        (MESSAGES_PATH, {"messages": SAY, "max_tokens": 4, "stop_sequences": ["a", "b"]}, "stop_sequences"),
        (MESSAGES_PATH, {"messages": SAY, "max_tokens": "64"}, "max_tokens"),
        (
            MESSAGES_PATH,
            {
                "messages": SAY,
                "max_tokens": 4,
                "tools": [{"name": "f", "input_schema": {"type": "object", "description": "d" * 400}}],
            },
            "messages",
        ),
        (
            MESSAGES_PATH,
            {
                "max_tokens": 4,
                "messages": [
                    *SAY,
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": "x" * 400}}],
                    },
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]},
                ],
            },
            "messages",
        ),
    ]
    for path, body, param in refused:
        answer = httpx.post(f"{router.url}{path}", json={"model": MODEL, **body}, timeout=10)
        assert answer.status_code == 400, (body, answer.text)
        if path == MESSAGES_PATH:  # Anthropic's error shape on its path
            assert answer.json()["type"] == "error" and _error(answer)["type"] == "invalid_request_error"
        else:
            assert _error(answer)["param"] == param, answer.text
    for path, body in [
        (CHAT, {"messages": SAY, "n": "2", "max_tokens": "3"}),
        (MESSAGES_PATH, {"messages": SAY, "max_tokens": 4, "stop_sequences": ["a"]}),
    ]:
        answer = httpx.post(f"{router.url}{path}", json={"model": MODEL, **body}, timeout=10)
        assert answer.status_code == 200, answer.text
    two = httpx.post(f"{router.url}{CHAT}", json={"model": MODEL, "messages": SAY, "n": "2", "max_tokens": "3"}).json()
    assert len(two["choices"]) == 2


def test_unnamed_static_and_file_keys_have_their_own_identity(fleet: Fleet) -> None:
    static, in_file = "sk-static-unnamed-0123456789", "sk-file-unnamed-9876543210"
    keys_file = fleet.workdir / "keys"
    keys_file.write_text(f"{in_file}\n")
    config = {
        "api_keys": [{"key": static}],
        "auth": {"api_keys_file": str(keys_file), "admin_key": "sk-admin-0123456789"},
        "limits": {"tokens_per_day": 1000},
    }
    _, router = fleet.start(1, tokens=4, delay_ms=1, config=config)

    def usage(key: str) -> dict[str, Any]:
        answer = httpx.get(f"{router.url}/v1/usage", headers={"authorization": f"Bearer {key}"}, timeout=5)
        found: dict[str, Any] = answer.json()
        return found

    spent = 0
    for _ in range(3):
        answer = httpx.post(
            f"{router.url}{CHAT}",
            json={"model": MODEL, "messages": SAY, "max_tokens": 4},
            headers={"authorization": f"Bearer {static}"},
            timeout=10,
        )
        spent += answer.json()["usage"]["total_tokens"]
    mine, theirs = usage(static), usage(in_file)
    assert mine["key"] != theirs["key"]
    assert mine["periods"]["day"]["tokens"] == spent and theirs["periods"]["day"]["tokens"] == 0
    listed = httpx.get(f"{router.url}/admin/usage", headers={"authorization": "Bearer sk-admin-0123456789"}).json()
    assert sorted(entry["key"] for entry in listed["data"]) == sorted([mine["key"], theirs["key"]])
    for key in (static, in_file):
        assert key not in router.log_path.read_text() and key[3:] not in mine["key"] + theirs["key"]


def test_two_keys_under_one_name_are_refused_at_load(fleet: Fleet) -> None:
    keys_file = fleet.workdir / "keys"
    keys_file.write_text("sk-first-0123456789 name=team\n")
    config = {"api_keys": [{"key": "sk-second-0123456789", "name": "team"}], "auth": {"api_keys_file": str(keys_file)}}
    router = Router(fleet.workdir, ["http://127.0.0.1:1"], config=config).start()
    fleet.routers.append(router)
    assert router.proc is not None and router.proc.wait(30) != 0
    log = router.log_path.read_text()
    assert "two keys are named 'team'" in log and "sk-first" not in log and "sk-second" not in log


def test_tampered_redis_values_count_as_missing_and_are_rewritten(fleet: Fleet, redis_server: RedisServer) -> None:  # noqa: F811
    keys_file = fleet.workdir / "keys"
    keys_file.write_text(f"{TEAM_KEY} name=team-a rpm=3\n")
    limits = {"backend": "redis", "redis_url": redis_server.url, "redis_failure": "open", "tokens_per_day": 100000}
    _, router = fleet.start(
        1, tokens=4, delay_ms=1, config={"auth": {"api_keys_file": str(keys_file)}, "limits": limits}
    )
    store = redis.Redis.from_url(redis_server.url)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    store.hset("tokenyard:{team-a}:requests", mapping={"level": "abc", "at": "x", "limit": "3"})
    store.hset(f"tokenyard:{{team-a}}:day:{day}", mapping={"tokens": "lots", "requests": "1.5"})
    usage = httpx.get(f"{router.url}/v1/usage", headers=TEAM, timeout=5)
    assert usage.status_code == 200 and usage.json()["periods"]["day"]["tokens"] == 0
    body = {"model": MODEL, "messages": SAY, "max_tokens": 4}
    codes = [httpx.post(f"{router.url}{CHAT}", json=body, headers=TEAM, timeout=10).status_code for _ in range(10)]
    assert codes == [200] * 3 + [429] * 7
    assert "limit store unreachable" not in router.log_path.read_text()
    day_usage = httpx.get(f"{router.url}/v1/usage", headers=TEAM, timeout=5).json()["periods"]["day"]
    assert day_usage["requests"] == 3 and day_usage["tokens"] > 0
    assert float(store.hget("tokenyard:{team-a}:requests", "level") or b"nan") < 3  # written afresh
    store.close()


def _budget_router(fleet: Fleet, limits: dict[str, Any], tokens: int, delay_ms: float) -> tuple[Engine, Router]:
    keys_file = fleet.workdir / "keys"
    keys_file.write_text(f"{TEAM_KEY} name=team-a\n")
    (engine,), router = fleet.start(
        1, tokens=tokens, delay_ms=delay_ms, config={"auth": {"api_keys_file": str(keys_file)}, "limits": limits}
    )
    return engine, router


def _day(router: Router) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{router.url}/v1/usage", headers=TEAM, timeout=5).json()["periods"]["day"]
    return found


def test_a_stream_without_include_usage_is_charged_its_real_usage(fleet_both: Fleet) -> None:
    _, router = _budget_router(fleet_both, {"tokens_per_day": 100_000}, tokens=16, delay_ms=1)
    body = {"model": MODEL, "messages": SAY, "stream": True}
    with_usage = httpx.post(
        f"{router.url}{CHAT}", json={**body, "stream_options": {"include_usage": True}}, headers=TEAM, timeout=10
    )
    real = next(
        orjson.loads(line[6:])["usage"]["total_tokens"]
        for line in with_usage.text.splitlines()
        if line.startswith("data: {") and '"usage":{' in line
    )
    for _ in range(3):
        plain = httpx.post(f"{router.url}{CHAT}", json=body, headers=TEAM, timeout=10)
        assert plain.status_code == 200 and '"usage"' not in plain.text  # not asked for: not shown
    assert _day(router)["tokens"] == 4 * real


def test_a_client_that_leaves_mid_stream_is_charged_what_came_until_then(fleet_both: Fleet) -> None:
    engine, router = _budget_router(fleet_both, {"tokens_per_day": 100_000}, tokens=400, delay_ms=40)
    body = {"model": MODEL, "messages": SAY, "stream": True}
    with httpx.stream("POST", f"{router.url}{CHAT}", json=body, headers=TEAM, timeout=10) as answer:
        events = 0
        for line in answer.iter_lines():
            events += line.startswith("data: {")
            if events == 6:
                break
    wait_until(lambda: engine.stats()["aborted"] == 1, 10, "the instance's abort")
    # Charged the prompt's estimate and the pieces that came: the answer's estimate (4 + 256) no longer.
    wait_until(lambda: _day(router)["tokens"] < 100, 10, "the settled charge")
    assert 4 + 5 <= _day(router)["tokens"]


@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.parametrize("max_tokens", [None, 100])
async def test_concurrent_requests_stay_within_the_budget(
    fleet: Fleet,
    redis_server: RedisServer,  # noqa: F811  (the fixture imported above)
    backend: str,
    max_tokens: int | None,
) -> None:
    limits = {"tokens_per_day": 1000, "backend": backend, "redis_url": redis_server.url}
    _, router = _budget_router(fleet, limits, tokens=300, delay_ms=3)
    body: dict[str, Any] = {"model": MODEL, "messages": SAY, "stream": True, "stream_options": {"include_usage": True}}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    async with httpx.AsyncClient(base_url=router.url, headers=TEAM, timeout=30) as client:
        answers = await asyncio.gather(*(client.post(CHAT, json=body) for _ in range(16)))
    codes = [answer.status_code for answer in answers]
    assert set(codes) == {200, 429} and 200 in codes
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert refused.json()["error"]["code"] == "insufficient_quota"
    used = sum(
        orjson.loads(line[6:])["usage"]["total_tokens"]
        for answer in answers
        for line in answer.text.splitlines()
        if line.startswith("data: {") and '"usage":{' in line
    )
    wait_until(lambda: _day(router)["tokens"] == used, 10, "every charge settled to its usage")
    assert used <= 1000, (used, codes)
    if max_tokens is not None:  # the reservations (4 + 100 each) fill the budget: nine run at once
        assert codes.count(200) == 9
