"""Racing a handler against the client's disconnect, an SSE response that aborts on it, and the answer of a
generating route built from both."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engine_adapters.splice import client_socket
from gateway.api.common import app_state, json_response

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
    (engine_adapters.splice.ClientSocket.lost); elsewhere one watcher task waits for `receive`'s disconnect."""
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


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], on_disconnect: Callable[[], None] | None = None) -> None:
        super().__init__(headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        # The body is streamed, so no content-length (Response set one for its empty body).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.events = events
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            await until_disconnect(receive, self._relay(send), scope)
        except ClientDisconnected:
            if self.on_disconnect:
                self.on_disconnect()

    async def _relay(self, send: Send) -> None:
        # aclosing: a cancelled relay closes the generator, whose finally aborts the engine request.
        async with contextlib.aclosing(self.events) as events:  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
            try:
                async for data in events:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                if self.on_disconnect:
                    self.on_disconnect()


async def answer_unless_gone(request: Request, answer: Awaitable[Any], *, stream: bool, model: str) -> Response:
    """`answer` awaited while the client stays: an SSE body to stream when `stream`, else a body to send as
    JSON. A client that leaves first is counted in `model`'s disconnects and answered 499."""
    state = app_state(request)
    disconnects = state.metrics.child(state.metrics.client_disconnects, state.model_label(model))
    try:
        if stream:
            events = await until_disconnect(request.receive, answer, request.scope)
            return EventStreamResponse(events, on_disconnect=disconnects.inc)
        return json_response(await until_disconnect(request.receive, answer, request.scope))
    except ClientDisconnected:
        disconnects.inc()
        return Response(status_code=499)  # nobody reads it; logs show why the request ended
