"""Each way an instance can fail, against a router over [faulty, healthy] with round-robin, so that every
request tries the faulty instance first. Before the first chunk the router retries on the healthy one;
after it a stream ends with an error event, while a whole answer is still retried."""

from __future__ import annotations

import httpx
import pytest

from tests.faults.client import completion, stream, whole
from tests.faults.harness import Engine, Fleet, Router
from tests.support.waiting import until


@pytest.fixture
def fleet(fleet_both: Fleet) -> Fleet:
    """Every test here runs with the router's splice on and off (tests/faults/conftest.py)."""
    return fleet_both


FIRST_TOKEN_S, IDLE_S = 1.5, 1.0


@pytest.fixture
def pair(fleet: Fleet) -> tuple[Engine, Router]:
    # No breaker: every request must meet the fault. Health checks are slow, for the same reason.
    engines, router = fleet.start(
        2,
        tokens=8,
        delay_ms=20,
        policy="round-robin",
        breaker_failures=1000,
        health_interval_s=600,
        first_token_timeout_s=FIRST_TOKEN_S,
        idle_timeout_s=IDLE_S,
    )
    return engines[0], router


@pytest.mark.parametrize("fault", ["503", "429", "hang", "refuse"])
async def test_failures_before_the_first_chunk_are_retried(pair: tuple[Engine, Router], fault: str) -> None:
    faulty, router = pair
    if fault == "refuse":
        faulty.stop()
    else:
        faulty.control(fault=fault)
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        streamed = await stream(client, completion())
        answered = await whole(client, completion())
    assert (streamed.status, streamed.ending, streamed.chunks) == (200, "done", 8)
    assert answered.status == 200 and answered.body["choices"][0]["text"].count("t") == 8
    took = max(streamed.ended - streamed.started, answered.ended - answered.started)
    if fault == "hang":  # cut off at the first-token timeout, then served by the other instance
        assert FIRST_TOKEN_S <= took < FIRST_TOKEN_S + 2.5
        assert faulty.stats()["aborted"] == 2  # the router closed both hung requests
    else:
        assert took < 1.5
    assert router.metric("tokenyard_upstream_retries_total", faulty.url) == 2


@pytest.mark.parametrize("fault", ["stall", "reset"])
async def test_failures_mid_stream_end_the_stream_with_an_error(pair: tuple[Engine, Router], fault: str) -> None:
    faulty, router = pair
    faulty.control(fault=fault)
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        streamed = await stream(client, completion())
        answered = await whole(client, completion())  # nothing sent yet: retried whole elsewhere
    assert (streamed.status, streamed.ending, streamed.chunks) == (200, "error", 3)
    assert streamed.body["error"]["code"] == "engine_unavailable"
    took = streamed.ended - streamed.started
    if fault == "stall":  # cut off after the idle timeout, and the upstream told so
        assert IDLE_S <= took < IDLE_S + 2.0
        await until(lambda: faulty.stats()["aborted"] >= 1, 5, "the upstream told of the abort")
    else:
        assert took < 1.0
    assert answered.status == 200 and answered.body["choices"][0]["text"].count("t") == 8


async def test_no_healthy_instance_and_no_hold_is_a_fast_503(fleet: Fleet) -> None:
    engines, router = fleet.start(2, health_interval_s=0.2, hold_timeout_s=0)
    for engine in engines:
        engine.kill()
    healthy = [lambda e=engine: router.metric("tokenyard_upstream_healthy", e.url) for engine in engines]
    await until(lambda: not any(check() for check in healthy), 10, "both instances seen down")
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        response = await client.post("/v1/completions", json=completion())
    # Answered rather than held (hold_timeout_s 0); how soon is for bench/, not a timing assertion here.
    assert response.status_code == 503 and response.headers["retry-after"]
    assert response.json()["error"]["code"] == "engine_unavailable"
