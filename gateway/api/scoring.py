"""POST /v1/score (and /score), /v1/rerank (and /rerank, /v2/rerank): vLLM's paths, on an embedding model."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, app_state, json_response
from gateway.protocol.scoring import RerankRequest, RerankResponse, ScoreRequest, ScoreResponse
from gateway.services import scoring

router = APIRouter()


@router.post("/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
@router.post("/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
async def create_score(body: ScoreRequest, request: Request) -> Response:
    return json_response(await scoring.score(app_state(request), body, request.url.path))


@router.post("/v1/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
@router.post("/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
@router.post("/v2/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
async def create_rerank(body: RerankRequest, request: Request) -> Response:
    return json_response(await scoring.rerank(app_state(request), body, request.url.path))
