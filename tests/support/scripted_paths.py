"""The scripted server's other paths, as vLLM serves them: Anthropic's Messages (whole or streamed),
rerank, score, pooling, classify, the audio uploads (multipart, read as they come), and one custom path.

The faults apply as they do to generation: 503 and 429 answer with that status, hang never answers, and a
Messages stream breaks after STALL_AFTER deltas on reset (a TCP reset) or error (vLLM's error event); a
streamed transcription breaks on reset after its first event.
An audio upload is read as it arrives, and Stats.upload_bytes counts what has come so far, so a test can
see the upload reach the server before its client has finished sending it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

# tests.support.scripted_upstream's Exchange, HttpRequest and ScriptedServer (that module imports this one).
Exchange = HttpRequest = ScriptedServer = Any

STALL_AFTER = 3  # chunks sent before a stall, a reset or an error
UPLOAD_PATHS = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
JSON_PATHS = frozenset(
    {
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/rerank",
        "/rerank",
        "/v2/rerank",
        "/v1/score",
        "/score",
        "/pooling",
        "/classify",
        "/v1/custom/echo",
    }
)


async def body_pieces(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """A request body as it arrives: content-length framed, or chunked."""
    if "chunked" in headers.get("transfer-encoding", ""):
        while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
            yield await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
        return
    left = int(headers.get("content-length", "0") or 0)
    while left:
        piece = await reader.read(min(left, 1 << 16))
        if not piece:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(piece)
        yield piece


def form_fields(body: bytes, content_type: str) -> dict[str, bytes]:
    """A multipart/form-data body's parts by name (a test double's parse: no nesting, no encodings)."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    fields = {}
    for part in body.split(b"--" + boundary)[1:-1]:
        head, _, value = part.partition(b"\r\n\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        fields[name] = value[:-2]  # the CRLF before the next boundary
    return fields


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(item) for item in value)
    if isinstance(value, dict):
        return sum(_words(item) for item in value.values())
    return 0


def _prompt_words(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    return max(
        1, _words([m.get("content") for m in messages if isinstance(m, dict)] if isinstance(messages, list) else [])
    )


async def serve_path(server: ScriptedServer, request: HttpRequest, exchange: Exchange) -> None:
    script = server.script
    server.stats.requests += 1
    if script.fault in ("503", "429"):
        await exchange.json(
            int(script.fault),
            {"error": {"message": f"scripted {script.fault}", "type": "scripted", "param": None, "code": None}},
        )
        return
    if script.fault == "hang":
        await asyncio.Event().wait()
    if request.path in UPLOAD_PATHS:
        await _audio(server, request, exchange)
        return
    body = request.json()
    if request.path == "/v1/messages":
        await (_message_stream(server, body, exchange) if body.get("stream") else _message(server, body, exchange))
        return
    tokens = max(1, _words(body))
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    answers = {
        "/v1/messages/count_tokens": {"input_tokens": tokens},
        "/pooling": {
            "object": "list",
            "model": body.get("model"),
            "data": [{"index": 0, "object": "pooling", "data": [0.5]}],
            "usage": usage,
        },
        "/classify": {
            "object": "list",
            "model": body.get("model"),
            "data": [{"index": 0, "label": "positive", "probs": [0.9, 0.1]}],
            "usage": usage,
        },
        "/v1/custom/echo": {"echo": body, "usage": usage},
    }
    documents = body.get("documents") or []
    ranked = {
        "id": "rerank-1",
        "model": body.get("model"),
        "usage": usage,
        "results": [
            {"index": i, "relevance_score": 1 / (i + 1), "document": {"text": d}} for i, d in enumerate(documents)
        ],
    }
    scored = {
        "object": "list",
        "model": body.get("model"),
        "usage": usage,
        "data": [{"index": 0, "object": "score", "score": 0.5}],
    }
    answer = answers.get(request.path) or (ranked if "rerank" in request.path else scored)
    await exchange.json(200, answer)
    server.stats.completed += 1


async def _message(server: ScriptedServer, body: dict[str, Any], exchange: Exchange) -> None:
    count = min(int(body.get("max_tokens") or server.script.tokens), server.script.tokens)
    text = "".join(f"t{step} " for step in range(count))
    await exchange.json(
        200,
        {
            "id": "msg_scripted",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": _prompt_words(body), "output_tokens": count},
        },
    )
    server.stats.completed += 1


async def _message_stream(server: ScriptedServer, body: dict[str, Any], exchange: Exchange) -> None:
    script = server.script
    count = min(int(body.get("max_tokens") or script.tokens), script.tokens)
    inputs = _prompt_words(body)

    async def event(kind: str, data: dict[str, Any]) -> None:
        payload = b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps({"type": kind, **data}))
        exchange.writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        await exchange.writer.drain()

    await exchange.start_stream()
    await event(
        "message_start",
        {
            "message": {
                "id": "msg_scripted",
                "type": "message",
                "role": "assistant",
                "model": body.get("model"),
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": inputs, "output_tokens": 0},
            }
        },
    )
    await event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    for step in range(count):
        await asyncio.sleep(script.delay_ms / 1000)
        if step == STALL_AFTER and script.fault == "reset":
            exchange.reset()
            return
        if step == STALL_AFTER and script.fault == "error":
            await event("error", {"error": {"type": "overloaded_error", "message": "scripted error mid-stream"}})
            await exchange.end_stream()
            return
        await event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f"t{step} "}})
    await event("content_block_stop", {"index": 0})
    await event(
        "message_delta",
        {
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"input_tokens": inputs, "output_tokens": count},
        },
    )
    await event("message_stop", {})
    await exchange.end_stream()
    server.stats.completed += 1


async def _audio(server: ScriptedServer, request: HttpRequest, exchange: Exchange) -> None:
    pieces = []
    async for piece in body_pieces(exchange.reader, request.headers):
        server.stats.upload_bytes += len(piece)
        pieces.append(piece)
    fields = form_fields(b"".join(pieces), request.headers.get("content-type", ""))
    audio = fields.get("file", b"")
    answer: dict[str, Any] = {
        "text": f"heard {len(audio)} bytes",
        "model": fields.get("model", b"").decode(),
        "sha256": hashlib.sha256(audio).hexdigest(),
        "usage": {"type": "duration", "seconds": 1},
    }
    if fields.get("stream", b"") != b"true":
        await exchange.json(200, answer)
    else:
        await exchange.start_stream()
        for word in answer["text"].split():
            await exchange.event({"object": "transcription.chunk", "choices": [{"delta": {"content": word + " "}}]})
            if server.script.fault == "reset":
                exchange.reset()
                return
        await exchange.event(
            {
                "object": "transcription.chunk",
                "choices": [],
                "sha256": answer["sha256"],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            }
        )
        await exchange.event(b"[DONE]")
        await exchange.end_stream()
    server.stats.completed += 1
