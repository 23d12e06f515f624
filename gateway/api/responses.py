"""POST /v1/responses (text in, text out, on the chat path) and GET /v1/responses/{id} (nothing is stored)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, app_state
from gateway.api.streaming import answer_unless_gone
from gateway.errors import NotFound
from gateway.middleware.context import request_info
from gateway.protocol.responses import Response as ResponseObject
from gateway.protocol.responses import ResponsesRequest
from gateway.services import responses

router = APIRouter()

_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE events when stream is true"}
}


@router.post("/v1/responses", response_model=ResponseObject, responses={**ERROR_RESPONSES, **_SSE_DOC})
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    state = app_state(request)
    session_id = request.headers.get(state.settings.router.session_header)  # router mode's affinity key
    forwarded = request_info(request.scope).forwarded
    answer: Awaitable[Any] = (responses.stream if body.stream else responses.complete)(
        state, body, session_id, forwarded
    )
    return await answer_unless_gone(request, answer, stream=body.stream, model=body.model)


@router.get("/v1/responses/{response_id}", response_model=ResponseObject, responses=ERROR_RESPONSES)
async def retrieve_response(response_id: str) -> Response:
    raise NotFound(
        f"Responses are not stored by this server, so `{response_id}` cannot be retrieved.", param="response_id"
    )
