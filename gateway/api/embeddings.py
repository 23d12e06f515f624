"""POST /v1/embeddings (and the legacy per-engine path)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, app_state, json_response
from gateway.middleware.context import request_info
from gateway.protocol.embeddings import EmbeddingRequest, EmbeddingResponse
from gateway.services import embeddings

router = APIRouter()


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
async def create_embedding(body: EmbeddingRequest, request: Request) -> Response:
    return json_response(await embeddings.create(app_state(request), body, request_info(request.scope).forwarded))


@router.post("/v1/engines/{model}/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
async def create_engine_embedding(model: str, request: Request, body: dict[str, Any] = Body()) -> Response:
    # The path names the model (OpenAI's old engines API), so the body need not.
    try:
        parsed = EmbeddingRequest.model_validate({**body, "model": model})
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    return json_response(await embeddings.create(app_state(request), parsed, request_info(request.scope).forwarded))
