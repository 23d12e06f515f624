"""Admission control: the in-flight cap, the bounded priority queue, shedding, 429 vs 503, priority passed on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.middleware.admission import Admission, Refused
from tests.support.scripted_app import RecordingAdapter, chat, scripted_client, settings, state_of
from tests.support.scripted_engine import Script


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_cap_queue_order_and_shedding() -> None:
    depths: list[int] = []
    admission = Admission(max_in_flight=2, max_queue=2, timeout_s=5, on_depth=depths.append)
    await admission.acquire()
    await admission.acquire()
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        try:
            await admission.acquire(priority)
            order.append(name)
        except Refused as exc:
            order.append(f"{name} refused: {exc}")

    low = asyncio.create_task(wait("low", 5))
    mid = asyncio.create_task(wait("mid", 1))
    await _settle()
    assert (admission.running, len(admission.waiting)) == (2, 2)
    urgent = asyncio.create_task(wait("urgent", -3))  # queue full: the least urgent waiter makes room
    await _settle()
    assert order == ["low refused: a more urgent request took its place in the queue"]
    with pytest.raises(Refused, match="the wait queue is full"):
        await admission.acquire(7)  # no waiter is less urgent than this one
    admission.release()
    admission.release()
    await asyncio.gather(low, mid, urgent)
    assert order[1:] == ["urgent", "mid"]  # most urgent first
    assert (admission.running, len(admission.waiting)) == (2, 0)
    assert depths[-1] == 0 and max(depths) == 2


async def test_queue_timeout_and_a_waiter_that_leaves() -> None:
    admission = Admission(max_in_flight=1, max_queue=4, timeout_s=0.2)
    await admission.acquire()
    started = time.perf_counter()
    with pytest.raises(Refused, match=r"no slot within 0.2s"):
        await admission.acquire()
    assert 0.19 <= time.perf_counter() - started < 2.0  # at the timeout, not at the slot (never freed)
    leaving = asyncio.create_task(admission.acquire())
    await _settle()
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert admission.waiting == []
    admission.release()
    assert admission.running == 0  # no slot leaked to the waiter that left
    await admission.acquire()
    assert admission.running == 1


async def test_no_queue_means_refuse_at_once() -> None:
    admission = Admission(max_in_flight=1, max_queue=0, timeout_s=5)
    await admission.acquire()
    with pytest.raises(Refused, match="full"):
        await admission.acquire()


SLOW = Script(tokens=10, delay_s=0.05)  # half a second a request


async def _post(client: httpx.AsyncClient, **extra: Any) -> httpx.Response:
    headers = {"x-priority": str(extra.pop("header"))} if "header" in extra else {}
    return await client.post("/v1/chat/completions", json=chat(**extra), headers=headers)


async def test_over_the_cap_and_queue_is_429_with_retry_after() -> None:
    limits = {"max_in_flight": 1, "max_queue": 1, "queue_timeout_s": 5}
    async with scripted_client(settings(limits=limits), RecordingAdapter(script=SLOW)) as client:
        depth = state_of(client).metrics.queue_depth.labels("scripted")
        first = asyncio.create_task(_post(client))
        second = asyncio.create_task(_post(client))
        await asyncio.sleep(0.1)
        assert depth._value.get() == 1
        third = await _post(client)
        assert third.status_code == 429 and third.headers["retry-after"] == "1"
        assert third.json()["error"]["code"] == "server_overloaded"
        assert "the wait queue is full" in third.json()["error"]["message"]
        assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]
        assert depth._value.get() == 0
        assert state_of(client).metrics.rejected.labels("admission")._value.get() == 1


async def test_queue_timeout_over_http() -> None:
    limits = {"max_in_flight": 1, "max_queue": 4, "queue_timeout_s": 0.2}
    async with scripted_client(settings(limits=limits), RecordingAdapter(script=SLOW)) as client:
        first = asyncio.create_task(_post(client))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        waited = await _post(client)
        assert waited.status_code == 429 and 0.19 <= time.perf_counter() - started < 2.0  # 429: gave up first
        assert (await first).status_code == 200


async def test_engine_down_is_503() -> None:
    limits = {"max_in_flight": 1, "max_queue": 0}
    adapter = RecordingAdapter(script=SLOW)
    async with scripted_client(settings(limits=limits), adapter) as client:
        first = asyncio.create_task(_post(client))
        await asyncio.sleep(0.05)
        adapter.healthy = False
        refused = await _post(client)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_unavailable"
        assert refused.headers["retry-after"] == "1"
        await first


async def test_low_priority_is_shed_first_over_http() -> None:
    limits = {"max_in_flight": 1, "max_queue": 1, "queue_timeout_s": 5}
    adapter = RecordingAdapter(script=SLOW)
    async with scripted_client(settings(limits=limits), adapter) as client:
        running = asyncio.create_task(_post(client))
        await asyncio.sleep(0.05)
        background = asyncio.create_task(_post(client, header=10))
        await asyncio.sleep(0.05)
        urgent = asyncio.create_task(_post(client, priority=-1))
        shed = await background
        assert shed.status_code == 429 and "more urgent" in shed.json()["error"]["message"]
        assert [(await running).status_code, (await urgent).status_code] == [200, 200]
        assert [r.priority for r in adapter.requests] == [0, -1]


async def test_priority_reaches_the_engine_request() -> None:
    adapter = RecordingAdapter()
    async with scripted_client(settings(), adapter) as client:
        assert (await _post(client, header=-5)).status_code == 200
        assert (await _post(client, priority=7)).status_code == 200
        assert (await _post(client, priority=7, header=2)).status_code == 200  # the header wins
        stream = await _post(client, priority=3, stream=True)
        assert stream.status_code == 200
        assert [r.priority for r in adapter.requests] == [-5, 7, 2, 3]
        for extra, param in [
            ({"header": "high"}, "x-priority"),
            ({"priority": "high"}, "priority"),
            ({"priority": True}, "priority"),
            ({"priority": 2**63}, "priority"),
        ]:
            response = await _post(client, **extra)
            assert response.status_code == 400 and response.json()["error"]["param"] == param
        assert len(adapter.requests) == 4


class _FakeEngine:
    """Stands in for vLLM's AsyncLLM: records the keyword arguments generate() gets, yields nothing."""

    def __init__(self) -> None:
        self.kwargs: list[dict[str, Any]] = []

    async def generate(self, prompt: Any, params: Any, request_id: str, **kwargs: Any) -> AsyncIterator[Any]:
        self.kwargs.append(kwargs)
        return
        yield


class _FakeTokenizer:
    def encode(self, text: str) -> list[int]:
        return [1, 2, 3]


@pytest.mark.parametrize(
    ("engine_args", "passed"),
    [({}, {}), ({"scheduling_policy": "fcfs"}, {}), ({"scheduling_policy": "priority"}, {"priority": -4})],
)
async def test_vllm_gets_priority_only_under_its_priority_policy(
    monkeypatch: pytest.MonkeyPatch, engine_args: dict[str, str], passed: dict[str, int]
) -> None:
    from engine_adapters import vllm_local
    from engine_adapters.base import Forwarded, GenerateRequest, SamplingOptions

    monkeypatch.setattr(vllm_local, "_sampling_params", lambda options, max_tokens: None)  # no vLLM import
    adapter = vllm_local.VllmLocalAdapter(
        vllm_local.LocalModelSpec("m", "/m", max_model_len=64, engine_args=engine_args)
    )
    engine = _FakeEngine()
    adapter._engine, adapter._tokenizer = engine, _FakeTokenizer()
    # As the admission middleware hands it on with the request it serves.
    forwarded = Forwarded("r1", priority=-4)
    request = GenerateRequest("r1", "m", SamplingOptions(max_tokens=4), prompt="hi", forwarded=forwarded)
    assert request.priority == -4
    assert [chunk async for chunk in adapter.generate(request)] == []
    assert engine.kwargs == [passed]


async def _served_order(admission: Admission, waiters: list[tuple[str, int]], releases: int) -> list[str]:
    """Queue `waiters` (key, weight) behind one running request, in this order; release `releases` slots one by
    one, and answer the keys in the order they were given a slot."""
    await admission.acquire(key="first")
    order: list[str] = []

    async def wait(key: str, weight: int) -> None:
        await admission.acquire(0, key, weight)
        order.append(key)

    tasks = [asyncio.create_task(wait(key, weight)) for key, weight in waiters]
    await _settle()
    for _ in range(releases):
        admission.release()
        await _settle()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return order


async def test_a_flood_waits_behind_its_own_requests() -> None:
    events: list[tuple[str, str]] = []
    admission = Admission(
        max_in_flight=1, max_queue=100, timeout_s=5, on_key=lambda event, key: events.append((event, key))
    )
    order = await _served_order(admission, [("flood", 1)] * 20 + [("one", 1)], releases=3)
    assert order == ["flood", "one", "flood"]  # the late key's request is second, not 21st
    assert ("served", "one") in events and events.count(("waiting", "flood")) == 20
    assert events.count(("left", "flood")) == 20  # cancelled: each left the queue, none counted as shed
    assert not any(event == "shed" for event, _ in events)


async def test_weights_share_the_slots() -> None:
    admission = Admission(max_in_flight=1, max_queue=100, timeout_s=5)
    order = await _served_order(admission, [("heavy", 3)] * 40 + [("light", 1)] * 40, releases=40)
    assert (order.count("heavy"), order.count("light")) == (30, 10)


async def test_priority_still_comes_first_and_a_full_queue_sheds_the_flood() -> None:
    admission = Admission(max_in_flight=1, max_queue=3, timeout_s=5)
    await admission.acquire(key="first")
    results: dict[str, str] = {}

    async def wait(name: str, key: str, priority: int = 0) -> None:
        try:
            await admission.acquire(priority, key)
            results[name] = "served"
        except Refused as exc:
            results[name] = str(exc)

    tasks = [asyncio.create_task(wait(f"flood{i}", "flood")) for i in range(3)]
    await _settle()
    tasks.append(asyncio.create_task(wait("other", "other")))  # full: the flood's last waiter gives way
    await _settle()
    assert results == {"flood2": "a request of a key with less of the queue took its place in the queue"}
    tasks.append(asyncio.create_task(wait("urgent", "flood", priority=-1)))
    await _settle()
    assert results["flood1"] == "a more urgent request took its place in the queue"
    for _ in range(3):
        admission.release()
        await _settle()
    await asyncio.gather(*tasks)
    assert list(results)[-3:] == ["urgent", "flood0", "other"]
