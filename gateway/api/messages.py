"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API (errors in Anthropic's shape)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import app_state, error_responses, json_response
from gateway.api.streaming import serve
from gateway.protocol.messages import AnthropicError, CountTokensRequest, Message, MessagesRequest, TokenCount
from gateway.services import messages

router = APIRouter()

_ERRORS = error_responses(AnthropicError)  # gateway.errors writes Anthropic's shape on these paths
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or Anthropic's SSE events when stream is true"}
}


@router.post("/v1/messages", response_model=Message, responses={**_ERRORS, **_SSE_DOC})
async def create_message(body: MessagesRequest, request: Request) -> Response:
    return await serve(request, body, messages.create, messages.stream)


@router.post("/v1/messages/count_tokens", response_model=TokenCount, responses=_ERRORS)
async def count_message_tokens(body: CountTokensRequest, request: Request) -> Response:
    return json_response(await messages.count_tokens(app_state(request), body))
