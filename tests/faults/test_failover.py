"""Instances that die under load, are dead from the start, or come back: what clients and the router see."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.faults.client import Outcome, completion, stream, whole
from tests.faults.harness import Fleet
from tests.support.waiting import until

DELAY_MS = 100
BROKEN = "The connection to the upstream instance failed."
STREAM_TOKENS, WHOLE_TOKENS = 40, 10  # four-second streams; one-second whole answers, asked for again and again


async def test_killing_one_of_three_under_load(fleet: Fleet) -> None:
    engines, router = fleet.start(3, tokens=STREAM_TOKENS, delay_ms=DELAY_MS)
    async with httpx.AsyncClient(base_url=router.url, timeout=30, limits=httpx.Limits(max_connections=256)) as client:
        flowing: list[None] = []
        streams = [
            asyncio.create_task(stream(client, completion(max_tokens=STREAM_TOKENS), lambda: flowing.append(None)))
            for _ in range(64)
        ]
        answered: list[Outcome] = []

        async def keep_asking() -> None:  # 64 clients wanting whole answers, for as long as the streams run
            while not all(task.done() for task in streams):
                answered.append(await whole(client, completion(max_tokens=WHOLE_TOKENS)))

        askers = [asyncio.create_task(keep_asking()) for _ in range(64)]
        try:
            await until(lambda: len(flowing) == 64, 15, "all 64 streams flowing")
            await asyncio.sleep(0.3)  # a few chunks into every stream
            engines[0].kill()
            killed_at = time.monotonic()
            async with asyncio.timeout(15):
                streamed: list[Outcome] = await asyncio.gather(*streams)
                await asyncio.gather(*askers)
        finally:
            for task in streams + askers:
                task.cancel()
    failed_whole = [o for o in answered if o.status != 200]
    errors = [o for o in streamed if o.ending == "error"]
    caught = [o for o in streamed + answered if o.started < killed_at < o.ended]  # in flight at the kill
    report = (
        f"{len(answered)} whole answers, {len(failed_whole)} failed; errored streams {len(errors)}, the last "
        f"{max(o.ended for o in errors) - killed_at:.2f}s after the kill; every request in flight then done "
        f"{max(o.ended for o in caught) - killed_at:.2f}s after it"
    )
    print(report)
    assert not failed_whole, failed_whole[:3]
    assert all(o.body["choices"][0]["text"].count("t") == WHOLE_TOKENS for o in answered)  # whole, never a fragment
    assert {o.ending for o in streamed} <= {"done", "error"}, "every stream ends with [DONE] or an error event"
    assert len(errors) >= 5, report  # a share of the 64 streams (a third, give or take) was on the killed instance
    assert {o.body["error"]["message"] for o in errors} == {BROKEN}, report  # the kill, not a timeout
    assert all(o.ended - killed_at < 2.0 for o in errors), report
    assert all(o.ended - killed_at < 5.0 for o in caught), report  # none hangs
    assert all(o.ended - o.started < STREAM_TOKENS * DELAY_MS / 1000 + 5.0 for o in streamed + answered)
    assert all(o.body["error"]["code"] == "engine_unavailable" for o in errors)


async def test_an_instance_dead_from_the_start_opens_its_breaker_quickly(fleet: Fleet) -> None:
    # Health checks far apart: only the passive signals (refused connections) can find the dead one.
    engines, router = fleet.start(3, tokens=3, delay_ms=5, health_interval_s=600, breaker_cooldown_s=600)
    dead = engines[2]
    dead.kill()
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:

        async def worker() -> list[Outcome]:
            return [await whole(client, completion()) for _ in range(10)]

        results = [o for batch in await asyncio.gather(*(worker() for _ in range(4))) for o in batch]
    failed_attempts = router.metric("tokenyard_upstream_retries_total", dead.url)
    print(f"failed attempts on the dead instance: {failed_attempts:.0f}")
    assert all(o.status == 200 for o in results)
    assert router.metric("tokenyard_breaker_state", dead.url) == 2  # open
    assert 1 <= failed_attempts <= 5
    assert router.metric("tokenyard_upstream_healthy", dead.url) == 0


async def test_traffic_returns_when_the_instance_comes_back(fleet: Fleet) -> None:
    engines, router = fleet.start(3, tokens=3, delay_ms=5, policy="round-robin")
    engines[0].kill()
    await until(lambda: router.metric("tokenyard_upstream_healthy", engines[0].url) == 0, 10, "seen as down")
    engines[0].start()
    back_at = time.monotonic()
    engines[0].wait_ready()
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        async with asyncio.timeout(30):
            while engines[0].stats()["completed"] == 0:
                assert (await whole(client, completion())).status == 200
                await asyncio.sleep(0.05)
    returned_s = time.monotonic() - back_at
    print(f"traffic returned {returned_s:.2f}s after the instance came back")
    assert returned_s < 30


async def test_one_clients_poison_requests_leave_the_breaker_closed_for_everyone(fleet: Fleet) -> None:
    (engine,), router = fleet.start(1, tokens=4, delay_ms=1)  # the breaker opens after 3 failures
    engine.control(poison="boom")  # the engine answers 500 to any prompt holding it, and only to those
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        poisoned = [await whole(client, completion(max_tokens=4, prompt="boom")) for _ in range(5)]
        poisoned.append(await stream(client, completion(max_tokens=4, prompt="boom")))
        served = await asyncio.gather(*[whole(client, completion(max_tokens=4)) for _ in range(4)])
    assert {outcome.status for outcome in poisoned} == {500}
    assert [outcome.status for outcome in served] == [200] * 4
    assert router.metric("tokenyard_breaker_state", engine.url) == 0
