"""The front door's side door (gateway.relay): a routed model's request to a path its route passes through
(vLLM's /v1/messages, /v1/rerank, /v1/score, /pooling, /classify, /v1/audio/..., and the route's
passthrough_paths) goes to one of its instances as bytes, and the instance's answer comes back as it is,
status and all.

The stages, in order:
1. target: the route named by the body's `model` (JSON, or a multipart form's `model` field, which
   gateway.middleware.body has read ahead while the rest of the upload waits). A local model's request
   goes on to the FastAPI app (engine mode serves /v1/messages, /v1/score ...); a path that only routes
   serve with no such route is a 400 (no model) or 404 (unknown model), in the shape its client reads.
2. body: the JSON body as it came, or the multipart head and then the rest of the upload as it streams in.
3. relay: the route chooses an instance and retries elsewhere until the answer's head (base.RawRelay).
4. answer: the head and then the bytes, as they come; a failure after the head ends an SSE answer with an
   error event (Anthropic's on its paths), and any other answer with a broken connection.
5. record: metrics by model and path, with the tokens of the answer's `usage` where it has one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import orjson
from starlette.types import Receive, Scope, Send

from engine_adapters.base import RawBody, RawHead, RawRelay, RouteRequest
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    anthropic_path,
    error_payload,
)
from gateway.middleware.body import ClientLeft, Upload
from gateway.middleware.context import header, request_info, send_error
from gateway.protocol.paths import paths
from gateway.protocol.usage import TAIL_BYTES, usage_in
from gateway.relay.read import prompt_messages
from gateway.services.disconnect import ClientDisconnected, until_disconnect
from gateway.services.metering import MeteredStream
from gateway.services.wire import new_id
from gateway.state import AppState

log = logging.getLogger(__name__)

# Of the paths that routes pass through, those that engine mode also serves (its FastAPI handlers answer a
# local model's request, and a missing or unknown model, themselves).
APP_PATHS = paths("bytes", engine=True)
_END = {"type": "http.response.body", "body": b"", "more_body": False}


def target(state: AppState, scope: Scope) -> RawRelay | None:
    """The route that passes this request through; None when the app answers it. Raises for a request to a
    path that only routes serve which names no served model."""
    path, body = scope["path"], request_info(scope).body
    model = body.get("model") if isinstance(body, dict) else None
    adapter = state.adapters.get(model) if isinstance(model, str) else None
    if isinstance(adapter, RawRelay) and adapter.passes_path(path):
        return adapter
    if adapter is not None or path in APP_PATHS or not any(route.passes_path(path) for route in state.routes()):
        return None
    if not isinstance(model, str) or not model:
        raise InvalidRequest("The request must name a `model`.", param="model")
    raise ModelNotFound(model)


async def serve(state: AppState, route: RawRelay, scope: Scope, receive: Receive, send: Send) -> None:
    info = request_info(scope)
    body = info.upload.raw_body() if info.upload is not None else await _json_body(info.body, receive)
    assert isinstance(info.body, dict)
    model, path = str(info.body["model"]), scope["path"]
    session = header(scope, state.settings.router.session_header.lower().encode())
    request = RouteRequest(
        new_id("raw"),
        model,
        messages=prompt_messages(info.body),
        routing_key=session.decode("latin-1") if session else None,
        forwarded=info.forwarded,  # the request id the log shows, and the client's trace context
    )
    metered = MeteredStream(state, route, request, path)  # type: ignore[arg-type]  # a RoutedAdapter is an EngineAdapter by shape (structural)
    source = metered.pieces(route.relay_raw(request, path, body))
    try:
        await until_disconnect(receive, _answer(metered, source, info.upload, path, send), scope)
    except (ClientDisconnected, ClientLeft):
        state.metrics.child(state.metrics.client_disconnects, state.model_label(model)).inc()


async def _json_body(parsed: object, receive: Receive) -> RawBody:
    raw = (await receive()).get("body", b"")  # the body middleware's replay: the bytes as they came
    json = parsed if isinstance(parsed, dict) else None
    return RawBody(b"application/json", raw, json=json, streams=bool(json and json.get("stream") is True))


async def _answer(
    metered: MeteredStream, source: AsyncIterator[RawHead | bytes], upload: Upload | None, path: str, send: Send
) -> None:
    async with contextlib.aclosing(source):  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
        try:
            head = await anext(source)
        except GatewayError as exc:
            metered.record(exc.status, 0, 0)
            await refuse(send, exc, upload)
            return
        assert isinstance(head, RawHead)
        await send(
            {"type": "http.response.start", "status": head.status, "headers": [(b"content-type", head.content_type)]}
        )
        tail = b""
        try:
            async for piece in source:
                assert isinstance(piece, bytes)
                tail = (tail + piece)[-TAIL_BYTES:]
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except GatewayError as exc:  # the instance's side broke; a fault of ours propagates (request log)
            metered.record(500, 0, 0)
            if head.content_type.startswith(b"text/event-stream"):
                await send({"type": "http.response.body", "body": error_event(exc, path), "more_body": True})
                await send(_END)
            else:
                log.warning("the answer on %s broke off after it began: %s", path, exc)
            return  # an answer left unended: uvicorn closes the connection, so the client sees it broken
        usage = usage_in(tail) if head.status == 200 else None
        metered.record(head.status, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
        await send(_END)


async def refuse(send: Send, exc: GatewayError, upload: Upload | None) -> None:
    """The error answer; an upload still coming in is read to its end first (BodyStream.discard), and its
    connection closed after the answer, so that nothing left of it is read as a next request."""
    if upload is not None:
        await upload.stream.discard()
    await send_error(send, exc, close=upload is not None)


def error_event(exc: GatewayError, path: str) -> bytes:
    """The SSE event that ends a broken stream: Anthropic's `event: error` on its paths, OpenAI's otherwise."""
    data = orjson.dumps(error_payload(exc, path)[1])
    return (b"event: error\ndata: " if anthropic_path(path) else b"data: ") + data + b"\n\n"
