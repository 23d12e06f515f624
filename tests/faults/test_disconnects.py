"""Clients that leave: each one's upstream request is closed, and the scripted engines count it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import pytest

from tests.faults.client import completion
from tests.faults.harness import Fleet
from tests.support.waiting import until


@pytest.fixture
def fleet(fleet_both: Fleet) -> Fleet:
    """Every test here runs with the router's splice on and off (tests/faults/conftest.py)."""
    return fleet_both


CLIENTS = 32


async def open_and_leave(client: httpx.AsyncClient, started: asyncio.Event) -> None:
    async with client.stream(
        "POST", "/v1/completions", json={**completion(max_tokens=2000), "stream": True}
    ) as response:
        assert response.status_code == 200
        # Held in a name: a line iterator dropped mid-body is finalised at once, and that closes the connection.
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data: "):
                break
        await started.wait()  # everyone has a chunk; now all hang up, leaving the block closes the connection
        await lines.aclose()  # type: ignore[attr-defined]


async def wait_and_leave(client: httpx.AsyncClient, started: asyncio.Event) -> None:
    request = asyncio.create_task(client.post("/v1/completions", json=completion(max_tokens=2000)))
    await started.wait()
    request.cancel()  # a cancelled httpx request closes its connection
    with contextlib.suppress(asyncio.CancelledError):
        await request


@pytest.mark.parametrize("leave", [open_and_leave, wait_and_leave], ids=["streamed", "whole"])
async def test_client_disconnects_abort_upstream_requests(fleet: Fleet, leave: Any) -> None:
    engines, router = fleet.start(2, tokens=2000, delay_ms=20)
    everyone_in = asyncio.Event()
    async with httpx.AsyncClient(base_url=router.url, timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        leaving = [asyncio.create_task(leave(client, everyone_in)) for _ in range(CLIENTS)]
        await until(lambda: sum(e.stats()["in_flight"] for e in engines) == CLIENTS, 15, "all requests running")
        everyone_in.set()
        await asyncio.gather(*leaving)
        left_at = time.monotonic()
        aborted_at = await until(
            lambda: sum(e.stats()["aborted"] for e in engines) == CLIENTS, 5, "32 aborts", interval_s=0.01
        )
    print(f"{CLIENTS} upstream aborts within {aborted_at - left_at:.3f}s of the last client leaving")
    assert aborted_at - left_at < 1.0
    assert sum(e.stats()["in_flight"] for e in engines) == 0
    assert sum(e.stats()["completed"] for e in engines) == 0
    # Counted when the router's handler unwinds, which may be just after the upstream saw the abort.
    counted = f'tokenyard_client_disconnects_total{{model="scripted"}} {CLIENTS}.0'
    await until(lambda: counted in httpx.get(f"{router.url}/metrics", timeout=2).text, 5, "32 disconnects counted")
