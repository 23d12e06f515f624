"""The client's disconnect, raced against the work that answers it: the one place a request learns that
nobody is left to read its answer (engine mode's handlers and router mode's relay alike)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive, Scope

from engine_adapters.client_socket import client_socket

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client left before the answer was ready; nobody is there to read a response."""


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Awaitable[T], scope: Scope | None = None) -> T:
    """Await `work`, cancelling it (and so aborting the engine request) if the client leaves first.

    `work` runs in the caller's task, which is cancelled if the client leaves while `work` is still
    running; this turns that into ClientDisconnected. On uvicorn the connection says so itself
    (engine_adapters.client_socket.ClientSocket.lost); elsewhere one watcher task waits for `receive`'s disconnect."""
    connection = client_socket(scope) if scope is not None else None
    task = asyncio.current_task(
        connection.loop if connection is not None else None
    )  # the loop given: no running-loop lookup
    assert task is not None
    running, left = True, False

    def leave() -> None:
        nonlocal left
        if running:
            left = True
            task.cancel()

    async def watch() -> None:
        await _wait_for_disconnect(receive)
        leave()

    if connection is not None and connection.cycle.disconnected:  # gone already, while the request was being read
        if asyncio.iscoroutine(work):
            work.close()
        raise ClientDisconnected()
    watcher = asyncio.ensure_future(watch()) if connection is None else None
    if connection is not None:
        connection.lost = leave
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise
        task.uncancel()  # the cancel is handled: taken back, so later timeouts in this task still work
        raise ClientDisconnected() from None
    finally:
        running = False
        if watcher is not None:
            watcher.cancel()
        elif connection is not None:
            connection.lost = None
