"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from gateway.api.common import app_state

router = APIRouter()


@router.get("/health", include_in_schema=False)
async def health(request: Request) -> Response:
    """Liveness: 503 once an in-process engine has died, which only a restart mends (router routes never count)."""
    if dead := app_state(request).engine_deaths():
        return JSONResponse({"status": "engine dead", "models": sorted(dead)}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready", include_in_schema=False)
async def ready(request: Request) -> Response:
    state = app_state(request)
    if not state.ready or state.draining:
        return JSONResponse({"status": "not ready"}, status_code=503)
    try:
        await asyncio.gather(*(adapter.check_health() for adapter in state.engines()))
    except Exception:
        return JSONResponse({"status": "engine unhealthy"}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    body = app_state(request).metrics.render(include_engine=True)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
