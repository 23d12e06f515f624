"""A config change reaches a running router: new instances take traffic, a stream in flight is not dropped."""

from __future__ import annotations

import asyncio

import httpx

from tests.faults.client import completion, stream, whole
from tests.faults.harness import Fleet
from tests.support.waiting import until


async def test_config_change_moves_traffic_without_dropping_a_stream(fleet: Fleet) -> None:
    engines, router = fleet.start(2, tokens=100, delay_ms=20)  # a 2 s stream
    old, new = engines
    router.write_config([old.url])  # the router starts on both; pin it to the old instance first
    await until(
        lambda: (
            router.metric("tokenyard_upstream_healthy", old.url) == 1
            and 'upstream="' + new.url not in httpx.get(f"{router.url}/metrics").text
        ),
        10,
        "pinned to one instance",
    )
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        in_flight = asyncio.create_task(stream(client, completion(max_tokens=100)))
        await until(lambda: old.stats()["in_flight"] == 1, 5, "the stream is running")
        router.write_config([new.url])
        await until(lambda: 'upstream="' + old.url not in httpx.get(f"{router.url}/metrics").text, 5, "reloaded")
        answered = await whole(client, completion(max_tokens=2))
        streamed = await in_flight
    assert answered.status == 200 and new.stats()["completed"] == 1  # new requests: the new instance
    assert (streamed.ending, streamed.chunks) == ("done", 100)  # the old one finished its stream
    assert old.stats()["completed"] == 1 and old.stats()["aborted"] == 0
