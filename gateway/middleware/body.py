"""Request bodies: a size cap and a read deadline enforced as the bytes arrive, then one JSON parse.

413 comes before any parsing, from content-length when there is one and from the running count
when there is not (chunked uploads). A body that trickles in gets 408 once `body_timeout_s` has
passed since the request began. The parsed body is kept for the limits and admission middlewares,
and the raw bytes are replayed to the app.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, InvalidRequest, PayloadTooLarge, RequestTimeout
from gateway.middleware.context import header, is_service_path, model_of, request_info, send_error
from gateway.state import AppState

# Our wire models nest a few levels at most; deeper JSON is an attack on the parser, not a request.
MAX_JSON_DEPTH = 64
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ClientLeft(Exception):
    """The client disconnected while sending its body; nobody is left to answer."""


def parse_json(raw: bytes) -> Any:
    """Standard JSON in strict UTF-8, or a 400 now.

    Stricter than the app's own parser (Python's json) on purpose: NaN, Infinity, lone surrogates,
    other encodings and nesting past 1024 levels never reach the app or an engine's tokenizer.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    # Counting brackets runs at C speed; only a body with many of them needs the walk.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise InvalidRequest(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


async def read_body(receive: Receive, max_bytes: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout_at(deadline):  # in this task: no task per read, as wait_for makes
                message = await receive()
        except TimeoutError:
            raise RequestTimeout("The request body was not received in time.") from None
        if message["type"] == "http.disconnect":
            raise ClientLeft()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"The request body is larger than {max_bytes} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replaying(raw: bytes, receive: Receive) -> Receive:
    """The body once, then the real channel (so the app still hears a disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


class BodyMiddleware:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.metrics = state.metrics
        self.max_bytes = state.settings.limits.max_body_bytes
        self.timeout_s = state.settings.limits.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_service_path(scope) or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            raw = await self._read(scope, receive)
            body = parse_json(raw) if raw else None
        except ClientLeft:
            return
        except GatewayError as exc:
            reason = {413: "body_size", 408: "body_timeout"}.get(exc.status)
            if reason:
                self.metrics.rejected.labels(reason).inc()
            await send_error(send, exc, close=reason is not None)
            return
        info = request_info(scope)
        info.body, info.model = body, model_of(scope, body)
        await self.app(scope, replaying(raw, receive), send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise PayloadTooLarge(f"The request body is larger than {self.max_bytes} bytes.")
        return await read_body(receive, self.max_bytes, asyncio.get_running_loop().time() + self.timeout_s)
