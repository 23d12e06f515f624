"""Request bodies: a size cap and a read deadline enforced as the bytes arrive, bounds on the JSON's
shape, then one JSON parse.

413 comes before any parsing, from content-length when there is one and from the running count
when there is not (chunked uploads). A body that trickles in gets 408 once `body_timeout_s` has
passed since the request began. A body past max_json_elements, max_json_containers or max_json_depth
gets 400 before it is parsed (see check_shape). The parsed body is kept for the limits and admission
middlewares, and the raw bytes are replayed to the app.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, InvalidRequest, PayloadTooLarge, RequestTimeout
from gateway.middleware.context import header, is_service_path, model_of, request_info, send_error
from gateway.state import AppState

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# A delete table for bytes.translate: everything but quotes and brackets.
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b'"[]{}')
# A string in what is left once escapes are gone, or an unterminated one up to the end (never a second try).
_STRING = re.compile(rb'"[^"]*+(?:"|\Z)')
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class ClientLeft(Exception):
    """The client disconnected while sending its body; nobody is left to answer."""


@dataclass(frozen=True)
class JsonBounds:
    """What a body's shape may cost; LimitSettings holds the values."""

    depth: int
    containers: int
    elements: int


def check_shape(raw: bytes, bounds: JsonBounds) -> None:
    """A 400 for a body whose shape would cost more than its bounds to parse, before it is parsed.

    Parsing and validation cost per value, not per byte: an 8 MiB body of two million `[]` would hold
    the event loop for seconds. Every pass here runs at C speed over the bytes (count, replace,
    translate); Python only walks the brackets outside strings, and only once their number is known
    to be within the bounds.
    """
    if raw.count(b",") >= bounds.elements:
        raise InvalidRequest(f"The request body has more than {bounds.elements} JSON elements.")
    if raw.count(b"[") + raw.count(b"{") <= min(bounds.depth, bounds.containers):
        return  # even counting the brackets inside strings, within both bounds
    brackets = _brackets_outside_strings(raw, bounds)
    if len(brackets) > 2 * bounds.containers:  # each opens and closes once: more is too many, or not JSON
        raise _too_many_containers(bounds)
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > bounds.depth:
        raise InvalidRequest(f"The request body nests deeper than {bounds.depth} levels.")


def _brackets_outside_strings(raw: bytes, bounds: JsonBounds) -> bytes:
    # Escapes gone (an escaped backslash first), each quote left opens or closes a string.
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in raw else raw
    # Quotes and brackets only; dropping each `""` (an empty string, or nothing between two strings) leaves
    # every other byte inside or outside a string as it was, so only strings holding brackets remain.
    text = text.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    # Those strings are kept apart by brackets outside them: more strings than that allows is too many containers,
    # known before the regex visits each of them.
    if text.count(b'"') > 4 * bounds.containers + 2:
        raise _too_many_containers(bounds)
    return _STRING.sub(b"", text)


def _too_many_containers(bounds: JsonBounds) -> InvalidRequest:
    return InvalidRequest(f"The request body has more than {bounds.containers} JSON arrays and objects.")


def parse_json(raw: bytes, bounds: JsonBounds) -> Any:
    """Standard JSON in strict UTF-8 within `bounds`, or a 400 now.

    Stricter than the app's own parser (Python's json) on purpose: NaN, Infinity, lone surrogates,
    other encodings and bodies past the bounds never reach the app or an engine's tokenizer.
    """
    check_shape(raw, bounds)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None


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
        limits = state.settings.limits
        self.bounds = JsonBounds(limits.max_json_depth, limits.max_json_containers, limits.max_json_elements)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_service_path(scope) or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            raw = await self._read(scope, receive)
            body = parse_json(raw, self.bounds) if raw else None
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
