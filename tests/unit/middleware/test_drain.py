"""The drain in-process: refusing new work, tracking running work, cutting off at the deadline."""

from __future__ import annotations

import asyncio
import time

import orjson

from gateway.lifecycle import Drain, begin_drain, drain
from tests.support.scripted_app import RecordingAdapter, chat, scripted_client, settings, sse_data, state_of
from tests.support.scripted_engine import Script


def test_time_left() -> None:
    now = [100.0]
    tracker = Drain(clock=lambda: now[0])
    assert tracker.time_left(default=30.0) == 30.0  # no drain: the whole deadline
    tracker.begin(10.0)
    now[0] = 104.0
    assert tracker.time_left(default=30.0) == 6.0
    tracker.begin(1.0)  # a second begin keeps the first deadline
    now[0] = 120.0
    assert tracker.time_left(default=30.0) == 0.0


async def test_draining_refuses_new_work_but_not_probes() -> None:
    async with scripted_client(settings()) as client:
        begin_drain(state_of(client), 30.0)
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
            response = await client.request(method, path, json=chat())
            assert response.status_code == 503
            assert response.headers["connection"] == "close" and response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "engine_unavailable"
        assert [(await client.get(p)).status_code for p in ("/health", "/ready", "/metrics")] == [200, 503, 200]


async def test_drain_waits_for_running_requests_then_returns() -> None:
    adapter = RecordingAdapter(script=Script(tokens=6, delay_s=0.05))
    async with scripted_client(settings(), adapter) as client:
        state = state_of(client)
        requests = [
            asyncio.create_task(client.post("/v1/chat/completions", json=chat(stream=i % 2 == 0))) for i in range(4)
        ]
        await asyncio.sleep(0.05)
        assert state.drain.in_flight == 4
        started = time.perf_counter()
        await drain(state, deadline_s=5.0)
        assert time.perf_counter() - started < 1.0 and state.drain.in_flight == 0
        responses = await asyncio.gather(*requests)
        assert [r.status_code for r in responses] == [200] * 4
        assert sse_data(responses[0].content)[-1] == b"[DONE]"
        assert adapter.abort_calls == []


async def test_past_the_deadline_streams_end_with_an_error_event_and_are_aborted() -> None:
    adapter = RecordingAdapter(script=Script(tokens=100, delay_s=0.05))  # five seconds each
    async with scripted_client(settings(), adapter) as client:
        state = state_of(client)
        stream = asyncio.create_task(client.post("/v1/chat/completions", json=chat(stream=True)))
        whole = asyncio.create_task(client.post("/v1/chat/completions", json=chat()))
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        await drain(state, deadline_s=0.3)
        assert 0.3 <= time.perf_counter() - started < 1.0
        streamed, waited = await stream, await whole
        events = sse_data(streamed.content)
        assert streamed.status_code == 200 and b"[DONE]" not in events
        assert orjson.loads(events[-1])["error"]["code"] == "engine_unavailable"
        assert len(events) >= 3  # the role event, some tokens, then the error
        assert waited.status_code == 503 and waited.json()["error"]["code"] == "engine_unavailable"
        await asyncio.sleep(0.05)
        assert sorted(adapter.abort_calls) == sorted(r.request_id for r in adapter.requests)
        assert adapter.running == set()


async def test_lifespan_closes_engines_with_what_is_left_of_the_deadline() -> None:
    closed: list[float] = []

    class Closing(RecordingAdapter):
        async def close(self, drain_deadline_s: float = 0.0) -> None:
            closed.append(drain_deadline_s)

    async with scripted_client(settings(drain_deadline_s=30.0), Closing()) as client:
        state_of(client).drain.begin(30.0)
        state_of(client).drain.deadline -= 25.0  # type: ignore[operator]  # as if the drain took 25 s
    assert len(closed) == 1 and 4.5 < closed[0] <= 5.0
