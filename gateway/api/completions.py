"""POST /v1/completions: parse, call the completions service, stream or answer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, SSE_RESPONSE
from gateway.api.streaming import serve
from gateway.protocol.completions import Completion, CompletionRequest
from gateway.services import completions

router = APIRouter()


@router.post("/v1/completions", response_model=Completion, responses={**ERROR_RESPONSES, **SSE_RESPONSE})
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    return await serve(request, body, completions.complete, completions.stream)
