"""POST /v1/embeddings (and the legacy per-engine path)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, app_state, json_response
from gateway.protocol.embeddings import EmbeddingRequest, EmbeddingResponse
from gateway.services import embeddings

router = APIRouter()


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
async def create_embedding(body: EmbeddingRequest, request: Request) -> Response:
    return json_response(await embeddings.create(app_state(request), body))


@router.post("/v1/engines/{model}/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
async def create_engine_embedding(model: str, body: EmbeddingRequest, request: Request) -> Response:
    # The path names the model; it wins over the body's, as in OpenAI's old engines API.
    body = body.model_copy(update={"model": model})
    return json_response(await embeddings.create(app_state(request), body))
