"""The drain at the front door: new requests get 503 while draining, running ones are tracked, and
whatever still runs at the drain deadline is cut off (see gateway.lifecycle for the whole checklist).

A request cut off before its answer began gets 503; a stream gets a last SSE error event and ends;
its engine request is aborted, since cancelling the app's task closes the engine stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import EngineUnavailable, sse_error
from gateway.middleware.context import header, is_service_path, send_error
from gateway.state import AppState


class _Running:
    """One request in flight: its task, and how far its answer has got."""

    def __init__(self, send: Send, draining: Callable[[], bool]) -> None:
        self._send, self._draining = send, draining
        self.task: asyncio.Task[None] | None = None
        self.started = self.finished = self.streaming = self.cut = False

    async def send(self, message: Message) -> None:
        if self.cut:
            return  # the answer is ours to finish now; what the cancelled app still sends goes nowhere
        if message["type"] == "http.response.start":
            self.started = True
            self.streaming = (_content_type(message) or b"").startswith(b"text/event-stream")
            if self._draining():  # tell keep-alive clients to reconnect elsewhere
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    def cut_off(self) -> None:
        self.cut = True
        if self.task is not None:
            self.task.cancel()

    async def finish_cut(self) -> None:
        exc = EngineUnavailable("The server shut down before this request finished.")
        if not self.started:
            await send_error(self._send, exc, close=True)
        elif not self.finished:
            if self.streaming:
                await self._send({"type": "http.response.body", "body": sse_error(exc), "more_body": True})
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})


def _content_type(message: Message) -> bytes | None:
    return header({"headers": message.get("headers", ())}, b"content-type")


class DrainMiddleware:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_service_path(scope):
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            await send_error(
                send, EngineUnavailable("The server is shutting down; retry on another instance."), close=True
            )
            return
        running = _Running(send, lambda: self.state.draining)
        # The drain cancels this task to cut the app off; what the cut answer still needs is sent here.
        running.task = task = asyncio.current_task()
        self.state.drain.add(running)
        try:
            await self.app(scope, receive, running.send)
        except (Exception, asyncio.CancelledError):
            if not running.cut:
                raise  # the app's own error, or our caller giving up (uvicorn's forced shutdown)
        finally:
            self.state.drain.discard(running)
        if running.cut:
            if task is not None:
                task.uncancel()  # the cancel is handled
            await running.finish_cut()
