"""Request bodies: a size cap and a read deadline enforced as the bytes arrive, bounds on the JSON's
shape, then one JSON parse.

413 comes before any parsing, from content-length when there is one and from the running count
when there is not (chunked uploads). A body that trickles in gets 408 once `body_timeout_s` has
passed since the request began. A body past max_json_elements, max_json_containers or max_json_depth
gets 400 before it is parsed (see check_shape). The parsed body is kept for the limits and admission
middlewares, and the raw bytes are replayed to the app.

A multipart/form-data body to the audio paths or to a path that a route passes through is not read whole:
only as far as its `model` field (gateway.middleware.multipart), and the rest streams on to the instance,
counted against the same cap and deadline as it comes (Upload, BodyStream). Where no instance takes it
(engine mode), the app answers from the model field (a 404), never "not valid JSON".

An upload to /v1/files is not read here at all: it streams on to the app, which writes it to the store as it
comes, counted against batch.max_file_bytes and batch.upload_timeout_s instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine_adapters.base import RawBody
from gateway.errors import GatewayError, InvalidRequest, PayloadTooLarge, RequestTimeout
from gateway.held import held_as
from gateway.middleware.context import FILES_PATH, header, is_service_path, model_of, request_info, send_error
from gateway.middleware.multipart import FormStart, boundary_of, read_form_start
from gateway.protocol.pooling import AUDIO_PATHS
from gateway.state import AppState

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# A delete table for bytes.translate: everything but quotes and brackets.
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b'"[]{}')
# A string in what is left once escapes are gone, or an unterminated one up to the end (never a second try).
_STRING = re.compile(rb'"[^"]*+(?:"|\Z)')
_FORM_OVERHEAD = 64 * 1024  # a file upload's form fields and boundaries, beside the file's bytes
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
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if isinstance(body, dict) and len(_MODEL_KEY.findall(raw)) > 1 and _top_level_models(raw) > 1:
        raise InvalidRequest("The request body names `model` more than once.", param="model")
    return body


# A key that decodes to "model", however its letters are escaped: where two are in a body, one may be a second
# top-level `model`, which a parser that keeps the last would serve while the first was routed and admitted.
_MODEL_KEY = re.compile(rb'"(?:m|\\u006[dD])(?:o|\\u006[fF])(?:d|\\u0064)(?:e|\\u0065)(?:l|\\u006[cC])"\s*:')


def _top_level_models(raw: bytes) -> int:
    """How many `model` keys the body's outermost object has (the last object a parser closes)."""
    outermost: list[tuple[str, Any]] = []

    def pairs(found: list[tuple[str, Any]]) -> dict[str, Any]:
        outermost[:] = found
        return {}  # nothing of the inner objects is kept: only the outermost's keys are counted

    json.loads(raw, object_pairs_hook=pairs)
    return sum(key == "model" for key, _ in outermost)


class BodyStream:
    """The client's body as it arrives, counted against `max_bytes` and a deadline (loop time)."""

    def __init__(self, receive: Receive, max_bytes: int, deadline: float) -> None:
        self.receive, self.max_bytes, self.deadline = receive, max_bytes, deadline
        self.size = 0
        self.more = True
        self.finished = asyncio.Event()  # the whole body has been read
        self.taken = False  # a relay reads the rest (take), not the app through `replaying`
        self.watch: Callable[[bytes], None] = lambda chunk: None  # sees each chunk; may raise GatewayError

    async def next(self) -> bytes:
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self.receive()
        except TimeoutError:
            raise RequestTimeout("The request body was not received in time.") from None
        if message["type"] == "http.disconnect":
            raise ClientLeft()
        chunk: bytes = message.get("body", b"")
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"The request body is larger than {self.max_bytes} bytes.")
        self.more = bool(message.get("more_body", False))
        if not self.more:
            self.finished.set()
        self.watch(chunk)
        return chunk

    async def discard(self) -> None:
        """Read what the client still sends and drop it, within the deadline and twice the cap, before an error
        answer: a connection closed on unread bytes sends a reset, which can lose the answer on its way."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(self.deadline):
                while self.more and self.size <= 2 * self.max_bytes:
                    message = await self.receive()
                    if message["type"] == "http.disconnect":
                        return
                    self.size += len(message.get("body", b""))
                    self.more = bool(message.get("more_body", False))

    def take(self) -> AsyncIterator[bytes] | None:
        """The rest of the body, for a relay to read; from now on `replaying` only waits for a disconnect."""
        self.taken = True
        return self._rest() if self.more else None

    async def _rest(self) -> AsyncIterator[bytes]:
        while self.more:
            yield await self.next()

    def replaying(self, head: bytes) -> Receive:
        """A receive for an app: `head`, then the rest as it comes."""
        pending = True

        async def receive() -> Message:
            nonlocal pending
            if pending:
                pending = False
                return {"type": "http.request", "body": head, "more_body": self.more}
            if self.taken or not self.more:
                await self.finished.wait()
                return await self.receive()  # only a disconnect is left to hear
            return {"type": "http.request", "body": await self.next(), "more_body": self.more}

        return receive


@dataclass
class Upload:
    """A multipart body read as far as its model field (gateway.middleware.multipart); the rest is still coming."""

    stream: BodyStream
    form: FormStart
    head: bytes
    content_type: bytes
    length: int | None

    def raw_body(self) -> RawBody:
        """The body for a relay, which then reads the rest of it as it comes."""
        return RawBody(
            self.content_type,
            self.head,
            self.stream.take(),
            self.length,
            model_span=self.form.model_span,
            streams=self.form.fields.get("stream", "").strip().lower() == "true",
        )


async def read_body(receive: Receive, max_bytes: int, deadline: float) -> bytes:
    stream = BodyStream(receive, max_bytes, deadline)
    chunks: list[bytes] = []
    while stream.more:
        chunks.append(await stream.next())
    return b"".join(chunks)


def replaying(raw: bytes, receive: Receive) -> Receive:
    """The body once, then the real channel (so the app still hears a disconnect). The bytes are let go once
    replayed: a routed request relays its parsed body, and the disconnect watcher it starts at once takes
    the replay, so a request held for an instance keeps one copy of its body, not two."""
    body: bytes | None = raw
    del raw

    async def replay() -> Message:
        nonlocal body
        if body is not None:
            message = {"type": "http.request", "body": body, "more_body": False}
            body = None
            return message
        return await receive()

    return replay


class BodyMiddleware:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app, self.state = app, state
        self.metrics = state.metrics
        self.max_bytes = state.settings.limits.max_body_bytes
        self.timeout_s = state.settings.limits.body_timeout_s
        limits = state.settings.limits
        self.bounds = JsonBounds(limits.max_json_depth, limits.max_json_containers, limits.max_json_elements)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_service_path(scope) or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        if scope["path"] == FILES_PATH:
            await self._file_upload(scope, receive, send)
            return
        info = request_info(scope)
        try:
            length = self._declared(scope)
            stream = BodyStream(receive, self.max_bytes, asyncio.get_running_loop().time() + self.timeout_s)
            if (upload := await self._upload(scope, stream, length)) is not None:
                info.body, info.upload = dict(upload.form.fields), upload
                info.model = model_of(scope, info.body)
                held_as(self.state.held, len(upload.head))
                await self.app(scope, stream.replaying(upload.head), send)
                return
            raw = await read_body(receive, self.max_bytes, stream.deadline)
            body = parse_json(raw, self.bounds) if raw else None
        except ClientLeft:
            return
        except GatewayError as exc:
            reason = {413: "body_size", 408: "body_timeout"}.get(exc.status)
            if reason:
                self.metrics.rejected.labels(reason).inc()
            await send_error(send, exc, close=reason is not None)
            return
        info.body, info.model = body, model_of(scope, body)
        held_as(self.state.held, 3 * len(raw))  # the bytes, and their parsed copy (about twice their size)
        replay = replaying(raw, receive)
        del raw  # the replay's to let go of (a held request keeps its parsed body only)
        await self.app(scope, replay, send)

    async def _file_upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/files: the body streams on to the app (which writes it to the store as it comes), counted
        against the upload cap and deadline instead of the JSON body's."""
        batch = self.state.settings.batch
        cap = batch.max_file_bytes + _FORM_OVERHEAD
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            self.metrics.rejected.labels("body_size").inc()
            exc = PayloadTooLarge(f"The file is larger than {batch.max_file_bytes} bytes.")
            await send_error(send, exc, close=True)
            return
        stream = BodyStream(receive, cap, asyncio.get_running_loop().time() + batch.upload_timeout_s)
        await self.app(scope, stream.replaying(b""), send)

    def _declared(self, scope: Scope) -> int | None:
        declared = header(scope, b"content-length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        if length is not None and length > self.max_bytes:
            raise PayloadTooLarge(f"The request body is larger than {self.max_bytes} bytes.")
        return length

    async def _upload(self, scope: Scope, stream: BodyStream, length: int | None) -> Upload | None:
        """A multipart body to an upload path: read only as far as its model field."""
        content_type = header(scope, b"content-type")
        boundary = boundary_of(content_type) if content_type else None
        path = scope["path"]
        if boundary is None or content_type is None or not (path in AUDIO_PATHS or self._passed_through(path)):
            return None
        form, head = await read_form_start(stream, boundary)
        stream.watch = form.follow  # the rest is parsed as it streams on, for a second `model` field
        return Upload(stream, form, head, content_type, length)

    def _passed_through(self, path: str) -> bool:
        return any(route.passes_path(path) for route in self.state.routes())
