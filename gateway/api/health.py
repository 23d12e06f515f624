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
    """Ready to take requests: started, not draining, and this process's own engines answer. A routed model's
    instances do not count: a router with no instance for one model still serves the others (and holds that
    model's requests), so each routed model's state is listed in the body instead (tokenyard_route_* metrics),
    and each admission queue with its longest-waiting key (`queues`)."""
    state = app_state(request)
    if not state.ready or state.draining:
        return JSONResponse({"status": "not ready"}, status_code=503)
    routes = state.routes()
    local = [adapter for adapter in state.engines() if adapter not in routes]
    results = await asyncio.gather(*(adapter.check_health() for adapter in local), return_exceptions=True)
    models: dict[str, object] = {}
    for adapter, result in zip(local, results):
        for info in adapter.models():
            models[info.name] = {"state": "unavailable" if isinstance(result, BaseException) else "ready"}
    models.update({status.model: status.as_json() for status in state.route_statuses()})
    healthy = not any(isinstance(result, BaseException) for result in results)
    body = {"status": "ready" if healthy else "engine unhealthy", "models": models, "queues": state.queue_summaries()}
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    body = app_state(request).metrics.render(include_engine=True)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
