"""POST /v1/chat/completions (and FastChat's /api/v1/chat/completions): parse, call the chat service, stream or
answer; /v1/edits, retired in favour of chat, is a 404 that says so."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, SSE_RESPONSE
from gateway.api.streaming import serve
from gateway.errors import NotFound
from gateway.protocol.chat import ChatCompletion, ChatCompletionRequest, FastChatChatRequest
from gateway.services import chat

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**ERROR_RESPONSES, **SSE_RESPONSE})
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    return await serve(request, body, chat.complete, chat.stream)


FASTCHAT_CHAT_ROUTE = "/api/v1/chat/completions"


@router.post(FASTCHAT_CHAT_ROUTE, response_model=ChatCompletion, responses={**ERROR_RESPONSES, **SSE_RESPONSE})
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
