"""Router mode's fast lane: chat, completions and the tokenizer routes for routed models, in plain ASGI
(and the other paths a route passes through as bytes: gateway.api.raw).

A routed model's request needs no engine work here. Its body is checked against the same wire models as
in engine mode, so bad input gets the same 400, and then it is passed through to an instance as bytes
(gateway.services.relay); /tokenize and /detokenize get the instance's JSON answer. Skipping FastAPI's
routing, dependency solving and response classes, and the chain of generators around each chunk, keeps the
router's CPU per request small; bench/router_overhead.py measures it. Every other request goes on to the
FastAPI app. The middlewares around both are the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from engine_adapters.base import Relay, RouteRequest
from engine_adapters.openai_wire import DONE
from engine_adapters.splice import client_socket
from gateway.api import raw
from gateway.api.streaming import ClientDisconnected, until_disconnect
from gateway.errors import GatewayError, error_payload, invalid_fields, sse_error
from gateway.middleware.context import header, request_info, send_error
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.completions import CompletionRequest
from gateway.protocol.tokenize import DetokenizeRequest, TokenizeRequest
from gateway.services.relay import CHAT, COMPLETIONS, RelayCall, fold
from gateway.services.unknown_fields import log_unknown_fields
from gateway.services.wire import new_id
from gateway.state import AppState

WIRE: dict[str, type[BaseModel]] = {
    CHAT: ChatCompletionRequest,
    COMPLETIONS: CompletionRequest,
    "/tokenize": TokenizeRequest,
    "/detokenize": DetokenizeRequest,
}
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_END = {"type": "http.response.body", "body": b"", "more_body": False}


class PassThrough:
    """The innermost middleware: routed chat, completions and tokenizer requests end here; the rest goes on."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app, self.state = app, state
        self.session_header = state.settings.router.session_header.lower().encode()
        self.splice = state.settings.router.splice

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        wire = WIRE.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if (
            wire is None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and await self._other_path(scope, receive, send)
        ):
            return
        body = request_info(scope).body if wire else None
        model = body.get("model") if isinstance(body, dict) else None
        if model is None and isinstance(body, dict) and wire in (TokenizeRequest, DetokenizeRequest):
            model = self.state.only_model()  # like vLLM: the one model served when none is named
            body = {**body, "model": model}
        if (
            wire is None
            or not isinstance(body, dict)
            or not isinstance(model, str)
            or not isinstance(self.state.adapters.get(model), Relay)
        ):
            await self.app(scope, receive, send)
            return
        try:
            work = self._work(scope, wire, body, send)
        except GatewayError as exc:
            await send_error(send, exc)
            return
        try:
            await until_disconnect(receive, work, scope)
        except ClientDisconnected:
            metrics = self.state.metrics
            metrics.child(metrics.client_disconnects, self.state.model_label(model)).inc()

    async def _other_path(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """A request to a path that a routed model's route passes through as bytes (gateway.api.raw): True
        when it was answered here."""
        try:
            route = raw.target(self.state, scope)
        except GatewayError as exc:
            await raw.refuse(send, exc, request_info(scope).upload)
            return True
        if route is None:
            return False
        await raw.serve(self.state, route, scope, receive, send)
        return True

    def _work(self, scope: Scope, wire: type[BaseModel], body: dict[str, Any], send: Send) -> Awaitable[None]:
        """What answers the request, once its body has passed the same checks as in engine mode."""
        try:
            req = wire.model_validate(body)
        except ValidationError as exc:
            raise invalid_fields(exc.errors()) from None
        model, path = str(body["model"]), scope["path"]
        forwarded = request_info(scope).forwarded  # the request id and trace context, for the instance
        generates = isinstance(req, ChatCompletionRequest | CompletionRequest)
        # Served and ready; generation only from a generative route (an embedding route is a 404, as before).
        kind = "generate" if generates else self.state.model_info(model).kind
        adapter = cast(Relay, self.state.adapter_for(model, kind))
        if not generates:
            prompt = body.get("prompt")
            request = RouteRequest(
                new_id("forward"), model, prompt if isinstance(prompt, str) else None, forwarded=forwarded
            )
            return _forward(adapter.forward(request, path, body), send)
        assert isinstance(req, ChatCompletionRequest | CompletionRequest)
        log_unknown_fields(self.state, req)
        session = header(scope, self.session_header)
        # On uvicorn, with the splice on: the client's socket, for the events between the first and the last.
        to_client = client_socket(scope) if self.splice else None
        return _answer(
            RelayCall(
                self.state,
                adapter,
                req,
                body,
                session.decode("latin-1") if session else None,
                path,
                to_client,
                forwarded,
            ),
            send,
        )


async def _answer(call: RelayCall, send: Send) -> None:
    """The instance's answer, passed on: a failure before its first bytes is a plain HTTP error, one after
    them an SSE error event; a whole answer (stream false) is folded from the events."""
    async with contextlib.aclosing(call.source) as source:  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
        try:
            first = await anext(source)
            if not call.req.stream:
                await _whole(call, [first, *[piece async for piece in source]], send)
                return
        except Exception as exc:
            call.record(error_payload(exc)[0])
            if not isinstance(exc, GatewayError):
                raise  # a fault of ours: the request log middleware answers 500 with the request id
            await send_error(send, exc)
            return
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        await _stream(call, first, source, send)


async def _stream(call: RelayCall, first: bytes, source: AsyncIterator[bytes], send: Send) -> None:
    """The events as they come; the one holding [DONE] also ends the body (one write less per request)
    and is counted then, while the instance's own end is still read so its connection goes back to the pool."""
    ended = False
    try:
        piece: bytes | None = first
        while piece is not None:
            if (data := call.pass_on(piece)) and not ended:
                if ended := data.endswith(DONE):
                    call.record(200)
                await send({"type": "http.response.body", "body": data, "more_body": not ended})
            piece = await anext(source, None)
    except Exception as exc:
        if ended:
            return  # the answer was whole; only the instance's end of it went wrong
        call.record(500)
        await send({"type": "http.response.body", "body": sse_error(exc), "more_body": True})
        await send(_END)
        return
    if not ended:
        call.record(200)
        await send(_END)


async def _whole(call: RelayCall, pieces: list[bytes], send: Send) -> None:
    if call.whole:  # the instance's own whole answer, passed on as it is
        raw = b"".join(pieces)
        call.usage = _usage(raw)
    else:
        events = b"".join([call.pass_on(piece) for piece in pieces])
        raw = orjson.dumps(fold(events, chat=call.path == CHAT, model=call.req.model, usage=call.usage))
    call.record(200)
    await _send_json(send, raw)


def _usage(raw: bytes) -> dict[str, Any]:
    try:
        usage = orjson.loads(raw).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return usage if isinstance(usage, dict) else {}


async def _forward(answer: Awaitable[bytes], send: Send) -> None:
    try:
        raw = await answer
    except GatewayError as exc:
        await send_error(send, exc)
        return
    await _send_json(send, raw)


async def _send_json(send: Send, raw: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": raw, "more_body": False})
