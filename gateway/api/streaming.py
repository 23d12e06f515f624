"""An SSE response that aborts when its client leaves, and the answer of a generating route built on it:
serve, which chat, completions and messages call (the race itself: gateway.services.disconnect)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.common import app_state, json_response
from gateway.middleware.context import request_info
from gateway.protocol.common import SamplingFields
from gateway.protocol.messages import MessagesRequest
from gateway.services.disconnect import ClientDisconnected, until_disconnect
from gateway.services.unknown_fields import log_unknown_fields


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


async def serve(
    request: Request,
    body: SamplingFields | MessagesRequest,
    complete: Callable[..., Awaitable[Any]],
    stream: Callable[..., Awaitable[AsyncIterator[bytes]]],
) -> Response:
    """Answer a generating request whole or as a stream, aborting the engine request if the client leaves.
    `complete` and `stream` are called (state, body, session_id, forwarded=...)."""
    state = app_state(request)
    log_unknown_fields(state, body)
    session_id = request.headers.get(state.settings.router.session_header)  # router mode's affinity key
    # Routed models never get here: gateway.relay.door.FrontDoor answers them before FastAPI does.
    forwarded = request_info(request.scope).forwarded  # the request id and trace context, for the engine
    answer: Awaitable[Any] = (stream if body.stream else complete)(state, body, session_id, forwarded=forwarded)
    return await answer_unless_gone(request, answer, stream=body.stream, model=body.model)
