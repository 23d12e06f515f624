"""The one way a test waits for something to happen: poll a check until it holds, with a deadline, instead
of sleeping for a fixed time. `wait_until` for plain tests, `until` for async ones.

A check is a callable returning something truthy once the thing has happened; an httpx error while it runs
counts as "not yet" (a server still starting, an instance just killed). `until` runs a plain check in a
thread, so a check that makes blocking requests never stalls the test's own event loop; a check that reads
objects the loop itself changes (an index, an adapter's instances) runs on the loop (`in_thread=False`); an
async check is awaited. Both return the monotonic time at which the check held."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import httpx


def wait_until(
    check: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition", interval_s: float = 0.05
) -> float:
    """Poll `check` until it is true; return when that happened, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return time.monotonic()
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(interval_s)


async def until(
    check: Callable[[], Any],
    timeout_s: float = 10.0,
    what: str = "condition",
    interval_s: float = 0.05,
    *,
    in_thread: bool = True,
) -> float:
    """wait_until for async tests: a plain check runs in a thread (unless `in_thread` is false), an async
    one is awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            threaded = in_thread and not inspect.iscoroutinefunction(check)
            result = await asyncio.to_thread(check) if threaded else check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        await asyncio.sleep(interval_s)
