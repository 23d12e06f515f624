"""A model's queue shared fairly across keys, through a real router and a slow scripted instance, one request
in flight at a time (limits.max_in_flight: 1), so that the order the answers come back in is the order of
service: one key's flood of 64 does not hold back a key sending one request at a time, and weights 3:1 give
3:1 service while both keys keep the queue full. /ready names the longest-waiting key; /metrics counts each
key's requests admitted."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from tests.faults.harness import MODEL, Engine, Fleet, Router
from tests.support.waiting import until

FLOOD, STEADY = "sk-flood-0123456789", "sk-steady-0123456789"
LIMITS = {"max_in_flight": 1, "max_queue": 256, "queue_timeout_s": 120}


def _start(fleet: Fleet, flood_weight: int, steady_weight: int, delay_ms: int) -> tuple[Engine, Router]:
    keys = [
        {"key": FLOOD, "name": "flood", "weight": flood_weight},
        {"key": STEADY, "name": "steady", "weight": steady_weight},
    ]
    (engine,), router = fleet.start(1, tokens=2, delay_ms=delay_ms, config={"api_keys": keys, "limits": LIMITS})
    return engine, router


async def _send(client: httpx.AsyncClient, key: str, name: str, done: list[str]) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answer = await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    done.append(name)


def _queue(router: Router) -> dict[str, Any]:
    queues: dict[str, Any] = httpx.get(f"{router.url}/ready", timeout=5).json()["queues"]
    return queues.get(MODEL, {"waiting": 0})


def _admitted(router: Router, key: str) -> float:
    text = httpx.get(f"{router.url}/metrics", timeout=5).text
    match = re.search(rf'^tokenyard_key_admitted_total\{{key="{key}",model="{MODEL}"\}} (\S+)$', text, re.M)
    assert match, f"no admitted count for {key}"
    return float(match.group(1))


def test_a_steady_key_is_served_ahead_of_a_flood(fleet: Fleet) -> None:
    # A service time (2 tokens of 50 ms) well above what a loaded box adds to the router's own work and to the
    # answers' way back, so the count of flood answers between steady ones measures the queue's order.
    engine, router = _start(fleet, 1, 1, delay_ms=50)

    async def run() -> None:
        done: list[str] = []
        async with httpx.AsyncClient(base_url=router.url, timeout=120) as client:
            flood = [asyncio.create_task(_send(client, FLOOD, "flood", done)) for _ in range(64)]
            await until(lambda: _queue(router)["waiting"] >= 56, 30, "the flood queued")
            ready = _queue(router)
            assert ready["longest_waiting_key"] == "flood" and ready["longest_wait_s"] >= 0
            metrics = httpx.get(f"{router.url}/metrics", timeout=5).text
            assert f'tokenyard_queue_longest_wait_seconds{{key="flood",model="{MODEL}"}}' in metrics
            waits: list[int] = []
            for _ in range(5):  # one at a time: each waits for its answer before sending the next
                sent_at = len(done)
                await _send(client, STEADY, "steady", done)
                waits.append(done[sent_at:].count("flood"))
            # Each steady request waits for the flood's request in service, at most one more, and one answer that
            # may be on its way back to this client: about one service time, where FIFO would be ~60 of them.
            assert max(waits) <= 3 and sum(waits) <= 8, waits
            assert done.count("flood") <= 24  # most of the flood still waits behind the steady key's requests
            await asyncio.gather(*flood)
        assert done.count("flood") == 64

    asyncio.run(run())
    assert (_admitted(router, "flood"), _admitted(router, "steady")) == (64, 5)
    assert _queue(router)["waiting"] == 0


def test_weights_three_to_one_give_three_to_one_service(fleet: Fleet) -> None:
    engine, router = _start(fleet, 3, 1, delay_ms=10)

    async def run() -> list[str]:
        done: list[str] = []
        async with httpx.AsyncClient(base_url=router.url, timeout=120) as client:
            engine.control(delay_ms=1000)  # the first request holds the one slot while both keys fill the queue
            tasks = [asyncio.create_task(_send(client, FLOOD, "flood", done)) for _ in range(40)]
            await until(lambda: _queue(router)["waiting"] >= 39, 30, "the first key queued")
            tasks += [asyncio.create_task(_send(client, STEADY, "steady", done)) for _ in range(40)]
            await until(lambda: _queue(router)["waiting"] >= 79, 30, "both keys queued")
            engine.control(delay_ms=5)
            await asyncio.gather(*tasks)
        return done

    served = asyncio.run(run())[1:41]  # past the first (in service before the queue filled): both keys saturate
    heavy = served.count("flood")
    assert 27 <= heavy <= 33, served  # about 30 of 40
