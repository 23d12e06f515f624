"""Stage 5 (answer) of the front door (gateway.relay): the instance's answer, passed on to the client. A failure before
its first bytes is a plain HTTP error, one after them an SSE error event; a whole answer (stream false) is
folded from the events (gateway.relay.fold), or passed on as the instance gave it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import orjson
from starlette.types import Send

from engine_adapters.openai_wire import DONE
from gateway.errors import GatewayError, error_payload, sse_error
from gateway.middleware.context import send_error
from gateway.protocol.paths import CHAT
from gateway.relay.call import RelayCall
from gateway.relay.fold import fold

_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_END = {"type": "http.response.body", "body": b"", "more_body": False}


async def relayed(call: RelayCall, send: Send) -> None:
    """The relayed request's answer, as the client asked for it (streamed or whole)."""
    async with contextlib.aclosing(call.source) as source:  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
        try:
            first = await anext(source)
            if not call.read.stream:
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
        raw = orjson.dumps(fold(events, chat=call.path == CHAT, model=call.read.model, usage=call.usage))
    call.record(200)
    await send_json(send, raw)


def _usage(raw: bytes) -> dict[str, Any]:
    try:
        usage = orjson.loads(raw).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return usage if isinstance(usage, dict) else {}


async def forwarded(answer: Awaitable[bytes], send: Send) -> None:
    """A tokenizer route's JSON answer from the instance."""
    try:
        raw = await answer
    except GatewayError as exc:
        await send_error(send, exc)
        return
    await send_json(send, raw)


async def send_json(send: Send, raw: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": raw, "more_body": False})
