"""A model's queue shared fairly across keys, through a real router and a slow scripted instance, one request
in flight at a time (limits.max_in_flight: 1), so that the order the answers come back in is the order of
service: one key's flood of 64 does not hold back a key sending one request at a time, and weights 3:1 give
3:1 service while both keys keep the queue full. /ready names the longest-waiting key; /metrics counts each
key's requests admitted. Requests held for a route with no instance up yet (scale from zero) reach the
instance, once it comes up, in the same order: the most urgent first, then the keys in turn."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import orjson

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


def test_held_requests_reach_the_instance_in_the_admission_order(fleet_both: Fleet) -> None:
    fleet = fleet_both
    engine = Engine(fleet.workdir, tokens=2, delay_ms=10)  # not started yet: the route's one instance is down
    fleet.engines.append(engine)
    keys = [{"key": FLOOD, "name": "flood", "weight": 1}, {"key": STEADY, "name": "steady", "weight": 1}]
    config = {"api_keys": keys, "limits": {"max_in_flight": 64, "max_queue": 64, "queue_timeout_s": 120}}
    router = Router(fleet.workdir, [engine.url], config=config, route={"hold_timeout_s": 120}, splice=fleet.splice)
    fleet.routers.append(router.start())
    router.wait_ready()

    def held() -> int:
        found: int = httpx.get(f"{router.url}/ready", timeout=5).json()["models"][MODEL]["waiting_requests"]
        return found

    async def send(client: httpx.AsyncClient, key: str, name: str, priority: int = 0) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": name}], "max_tokens": 2}
        headers = {"authorization": f"Bearer {key}", "x-priority": str(priority)}
        answer = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert answer.status_code == 200, answer.text

    async def run() -> None:
        async with httpx.AsyncClient(base_url=router.url, timeout=120) as client:
            tasks = [asyncio.create_task(send(client, FLOOD, f"flood-{i}")) for i in range(12)]
            await until(lambda: held() == 12, 30, "the flood held")
            tasks += [asyncio.create_task(send(client, STEADY, f"steady-{i}")) for i in range(2)]
            await until(lambda: held() == 14, 30, "the steady key's two held behind the flood")
            tasks.append(asyncio.create_task(send(client, FLOOD, "urgent", priority=-1)))
            await until(lambda: held() == 15, 30, "the urgent one held last")
            engine.start()  # the instance comes up; the router's health check finds it and releases the held
            await asyncio.gather(*tasks)

    asyncio.run(run())
    arrived = [orjson.loads(seen["body"])["messages"][0]["content"] for seen in engine.requests()]
    assert sorted(arrived) == sorted(["urgent", "steady-0", "steady-1", *(f"flood-{i}" for i in range(12))])
    assert arrived[0] == "urgent", " ".join(arrived)  # held last, but the most urgent
    # Then the keys in turn (flood, steady, flood, steady, ...), where arrival order would put both after all 12.
    steady = [place for place, name in enumerate(arrived) if name.startswith("steady")]
    assert steady[-1] <= 6, arrived
    assert held() == 0
