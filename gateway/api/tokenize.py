"""POST /tokenize and /detokenize (vLLM's server) and /api/v1/token_check (FastChat's)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, app_state, json_response
from gateway.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenCheckRequest,
    TokenCheckResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from gateway.services import tokenize as service

router = APIRouter()


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    return json_response(await service.tokenize(app_state(request), body))


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    return json_response(await service.detokenize(app_state(request), body))


@router.post("/api/v1/token_check", response_model=TokenCheckResponse, responses=ERROR_RESPONSES)
async def token_check(body: TokenCheckRequest, request: Request) -> Response:
    return json_response(await service.token_check(app_state(request), body))
