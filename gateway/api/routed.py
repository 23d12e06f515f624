"""POST /pooling, /classify, /v1/audio/transcriptions, /v1/audio/translations: paths that only a route's
instances serve. gateway.relay.raw passes a routed model's request through before it reaches these; they
are declared here so that the OpenAPI schema lists them and other methods get 405, and what reaches them
(engine mode, or a model that no route serves) gets a 404."""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import APIRouter, Request

from gateway.api.common import ERROR_RESPONSES, app_state
from gateway.errors import ModelNotFound, NotFound
from gateway.middleware.context import request_info
from gateway.protocol.pooling import (
    AUDIO_FORM,
    ClassifyRequest,
    ClassifyResponse,
    PoolingRequest,
    PoolingResponse,
    TranscriptionResponse,
)

router = APIRouter()


def _body(schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    """The request body's schema, documented without the app reading it (the route's instance does)."""
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


def _not_here(request: Request) -> NoReturn:
    body = request_info(request.scope).body
    model = body.get("model") if isinstance(body, dict) else None
    if isinstance(model, str) and model and model not in app_state(request).adapters:
        raise ModelNotFound(model)
    raise NotFound(f"`{request.url.path}` is served only for a routed model whose instances serve it.")


@router.post(
    "/pooling",
    response_model=PoolingResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_body(PoolingRequest.model_json_schema()),
)
async def create_pooling(request: Request) -> NoReturn:
    _not_here(request)


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_body(ClassifyRequest.model_json_schema()),
)
async def create_classification(request: Request) -> NoReturn:
    _not_here(request)


_AUDIO_ANSWERS: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    200: {"content": {"text/plain": {}, "text/event-stream": {}}, "description": "The text, whole or streamed"},
}


@router.post(
    "/v1/audio/transcriptions",
    response_model=TranscriptionResponse,
    responses=_AUDIO_ANSWERS,
    openapi_extra=_body(AUDIO_FORM, "multipart/form-data"),
)
@router.post(
    "/v1/audio/translations",
    response_model=TranscriptionResponse,
    responses=_AUDIO_ANSWERS,
    openapi_extra=_body(AUDIO_FORM, "multipart/form-data"),
)
async def create_transcription(request: Request) -> NoReturn:
    _not_here(request)
