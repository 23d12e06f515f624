"""POST /v1/chat/completions and /v1/completions: parse, call the service, stream or answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, app_state
from gateway.api.streaming import answer_unless_gone
from gateway.errors import NotFound
from gateway.middleware.context import request_info
from gateway.protocol.chat import ChatCompletion, ChatCompletionRequest, FastChatChatRequest
from gateway.protocol.common import SamplingFields
from gateway.protocol.completions import Completion, CompletionRequest
from gateway.protocol.messages import MessagesRequest
from gateway.services import chat, completions
from gateway.services.unknown_fields import log_unknown_fields

router = APIRouter()

_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream is true"}
}


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


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**ERROR_RESPONSES, **_SSE_DOC})
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    return await serve(request, body, chat.complete, chat.stream)


@router.post("/v1/completions", response_model=Completion, responses={**ERROR_RESPONSES, **_SSE_DOC})
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    return await serve(request, body, completions.complete, completions.stream)


FASTCHAT_CHAT_ROUTE = "/api/v1/chat/completions"


@router.post(FASTCHAT_CHAT_ROUTE, response_model=ChatCompletion, responses={**ERROR_RESPONSES, **_SSE_DOC})
async def create_fastchat_chat_completion(body: FastChatChatRequest, request: Request) -> Response:
    """FastChat's chat route, behind the same keys and limits as /v1 (FastChat leaves it open)."""
    return await serve(
        request,
        body,
        partial(chat.complete, route=FASTCHAT_CHAT_ROUTE),
        partial(chat.stream, route=FASTCHAT_CHAT_ROUTE),
    )


@router.post("/v1/edits", include_in_schema=False)
async def retired_edits() -> Response:
    raise NotFound("The Edits API (/v1/edits) is retired: use /v1/chat/completions instead.")
