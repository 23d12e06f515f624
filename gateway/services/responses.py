"""The Responses API on the chat path: a response request becomes a chat engine request, whose
chunks become a `response` object or the Responses stream's events.

Text in, text out. Nothing is stored, so what needs a stored response (previous_response_id,
background, conversations) is refused with a 400, as are tools (offered on /v1/chat/completions).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import orjson

from engine_adapters.base import NOTHING_FORWARDED, Chunk, Forwarded, GenerateRequest
from gateway.errors import GatewayError, InvalidRequest, error_payload
from gateway.protocol.chat import ChatCompletionRequest, ChatMessageIn
from gateway.protocol.responses import (
    IncompleteDetails,
    OutputMessage,
    OutputText,
    Response,
    ResponsesRequest,
    ResponseUsage,
)
from gateway.services import chat
from gateway.services.chunk_streams import first_and_rest
from gateway.services.metering import MeteredStream
from gateway.state import AppState

log = logging.getLogger(__name__)

ROUTE = "/v1/responses"
_NO_STORAGE = "Responses are not stored by this server"


def new_object_id(prefix: str) -> str:
    """OpenAI's Responses ids: resp_…, msg_…"""
    return f"{prefix}_{uuid.uuid4().hex}"


def refuse_unsupported(req: ResponsesRequest) -> None:
    refusals: list[tuple[object, str, str]] = [
        (req.tools, "tools", "Tools are not supported on /v1/responses here; use /v1/chat/completions."),
        (
            req.tool_choice not in (None, "auto", "none"),
            "tool_choice",
            "tool_choice needs tools, which are not supported on /v1/responses here.",
        ),
        (
            req.previous_response_id,
            "previous_response_id",
            f"{_NO_STORAGE}: send the whole conversation in `input` instead of previous_response_id.",
        ),
        (req.conversation, "conversation", f"{_NO_STORAGE}: conversations are not supported."),
        (req.background, "background", f"{_NO_STORAGE}: background responses are not supported."),
        (req.prompt, "prompt", "Prompt templates are not supported; send the text in `input`."),
    ]
    for used, param, message in refusals:
        if used:
            raise InvalidRequest(message, param=param)


def chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request that serves `req`: instructions lead as a system message."""
    if isinstance(req.input, list) and not req.input:
        raise InvalidRequest("input must hold at least one message.", param="input")
    messages: list[ChatMessageIn] = []
    if req.instructions:
        messages.append(ChatMessageIn(role="system", content=req.instructions))
    if isinstance(req.input, str):
        messages.append(ChatMessageIn(role="user", content=req.input))
    else:
        messages.extend(ChatMessageIn(role=item.role, content=item.text()) for item in req.input)
    return ChatCompletionRequest(
        model=req.model,
        messages=messages,
        max_tokens=req.max_output_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stream=req.stream,
        user=req.user,
    )


def _engine_request(req: ResponsesRequest, session_id: str | None, forwarded: Forwarded) -> GenerateRequest:
    refuse_unsupported(req)
    greq = chat.engine_request(chat_request(req), session_id, forwarded=forwarded)
    greq.request_id = new_object_id("resp")  # the response's id is the engine request's
    return greq


def build_response(
    req: ResponsesRequest,
    response_id: str,
    created_at: int,
    *,
    message_id: str | None = None,
    text: str = "",
    finish_reason: str | None = None,
    usage: tuple[int, int] | None = None,
) -> Response:
    """The response object; with no message_id, the one a stream opens with (in progress, no output)."""
    status: Literal["in_progress", "completed", "incomplete"] = "in_progress"
    output: list[OutputMessage] = []
    incomplete: IncompleteDetails | None = None
    if message_id is not None:
        length_limited = finish_reason == "length"
        status = "incomplete" if length_limited else "completed"
        incomplete = IncompleteDetails(reason="max_output_tokens") if length_limited else None
        output = [OutputMessage(id=message_id, status=status, content=[OutputText(text=text)])]
    return Response(
        id=response_id,
        created_at=created_at,
        status=status,
        incomplete_details=incomplete,
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        model=req.model,
        output=output,
        temperature=req.temperature,
        top_p=req.top_p,
        user=req.user,
        metadata=req.metadata or {},
        parallel_tool_calls=req.parallel_tool_calls is not False,
        truncation=req.truncation or "disabled",
        tool_choice="none" if req.tool_choice == "none" else "auto",
        usage=ResponseUsage(input_tokens=usage[0], output_tokens=usage[1], total_tokens=sum(usage)) if usage else None,
    )


async def complete(
    state: AppState, req: ResponsesRequest, session_id: str | None = None, forwarded: Forwarded = NOTHING_FORWARDED
) -> Response:
    greq = _engine_request(req, session_id, forwarded)
    metered = MeteredStream(state, state.adapter_for(req.model), greq, ROUTE)
    created_at = int(time.time())
    texts: list[str] = []
    prompt_tokens = output_tokens = 0
    reason: str | None = None
    async for chunk in metered.chunks():
        texts.append(chunk.text)
        prompt_tokens, output_tokens = chunk.prompt_tokens, chunk.completion_tokens
        reason = chunk.finish_reason or reason
    metered.record(200, prompt_tokens, output_tokens)
    return build_response(
        req,
        greq.request_id,
        created_at,
        message_id=new_object_id("msg"),
        text="".join(texts),
        finish_reason=reason,
        usage=(prompt_tokens, output_tokens),
    )


async def stream(
    state: AppState, req: ResponsesRequest, session_id: str | None = None, forwarded: Forwarded = NOTHING_FORWARDED
) -> AsyncIterator[bytes]:
    """Start the engine request and wait for its first chunk (errors before it are plain HTTP errors)."""
    greq = _engine_request(req, session_id, forwarded)
    metered = MeteredStream(state, state.adapter_for(req.model), greq, ROUTE)
    chunks = await first_and_rest(metered.chunks())
    return _events(req, greq.request_id, metered, chunks)


def _numbered_events() -> Callable[..., bytes]:
    """OpenAI's framing: an `event:` line naming the type, and the data with a growing sequence_number."""
    numbers = itertools.count()

    def event(kind: str, **payload: Any) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": next(numbers), **payload})
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    return event


async def _events(
    req: ResponsesRequest, response_id: str, metered: MeteredStream, chunks: AsyncIterator[Chunk]
) -> AsyncIterator[bytes]:
    event = _numbered_events()
    created_at = int(time.time())
    message_id = new_object_id("msg")
    opening = build_response(req, response_id, created_at).model_dump(mode="json")
    yield event("response.created", response=opening)
    yield event("response.in_progress", response=opening)
    yield event(
        "response.output_item.added",
        output_index=0,
        item={"type": "message", "id": message_id, "status": "in_progress", "role": "assistant", "content": []},
    )
    where = {"item_id": message_id, "output_index": 0, "content_index": 0}
    yield event("response.content_part.added", **where, part={"type": "output_text", "text": "", "annotations": []})
    texts: list[str] = []
    prompt_tokens = output_tokens = 0
    reason: str | None = None
    try:
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
            async for chunk in chunks:
                prompt_tokens, output_tokens = chunk.prompt_tokens, chunk.completion_tokens
                reason = chunk.finish_reason or reason
                if chunk.text:
                    texts.append(chunk.text)
                    yield event("response.output_text.delta", **where, delta=chunk.text, logprobs=[])
    except Exception as exc:
        metered.record(500, prompt_tokens, output_tokens)
        yield _error_event(event, exc)
        return
    metered.record(200, prompt_tokens, output_tokens)
    text = "".join(texts)
    final = build_response(
        req,
        response_id,
        created_at,
        message_id=message_id,
        text=text,
        finish_reason=reason,
        usage=(prompt_tokens, output_tokens),
    ).model_dump(mode="json")
    yield event("response.output_text.done", **where, text=text, logprobs=[])
    yield event("response.content_part.done", **where, part=final["output"][0]["content"][0])
    yield event("response.output_item.done", output_index=0, item=final["output"][0])
    yield event("response.completed" if final["status"] == "completed" else "response.incomplete", response=final)


def _error_event(event: Callable[..., bytes], exc: BaseException) -> bytes:
    if not isinstance(exc, GatewayError):
        log.error("responses stream failed after it began", exc_info=exc)
    detail = error_payload(exc)[1]["error"]
    return event("error", code=detail["code"], message=detail["message"], param=detail["param"])
