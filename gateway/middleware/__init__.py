"""The front door: pure ASGI middlewares, outermost first.

    RequestLogMiddleware   request id in and out, JSON access log, a 500 with its id
    TracingMiddleware      only while tracing is on: the server span (gateway.middleware.tracing)
    CanonicalRequestMiddleware  HEAD as GET without a body; a path's trailing slash dropped
    CORSMiddleware         only when allowed_origins is set (deny by default); outside auth, so
                           preflights and 401s carry CORS headers
    DrainMiddleware        503 while draining; tracks in-flight requests for the drain deadline
    AuthMiddleware         401 without a valid key, 400 for more than one Authorization header
    BodyMiddleware         413 / 408 as the bytes arrive, 400 for a costly JSON shape, one JSON parse,
                           400 for bad JSON
    ScopeMiddleware        a key's scope: 403 for a route group it lacks, 404 for a model it may not use
    LimitsMiddleware       caps (400), per-key rate limits (429) and x-ratelimit-* headers
    AdmissionMiddleware    per-model in-flight cap and priority queue (429 / 503)

Inside them all, create_app puts gateway.relay.door.FrontDoor, which answers router mode's
chat and completions itself; everything else goes on to FastAPI.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from gateway.middleware.admission import AdmissionMiddleware
from gateway.middleware.auth import AuthMiddleware
from gateway.middleware.body import BodyMiddleware
from gateway.middleware.canonical import CanonicalRequestMiddleware
from gateway.middleware.drain import DrainMiddleware
from gateway.middleware.limits import LimitsMiddleware
from gateway.middleware.request_log import RequestLogMiddleware
from gateway.middleware.scope import ScopeMiddleware
from gateway.state import AppState

# What a browser client may read from an answer besides the simple headers.
_EXPOSED = ["x-request-id", "retry-after", "retry-after-ms"] + [
    f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset") for kind in ("requests", "tokens")
]


def install(app: FastAPI, state: AppState) -> None:
    # add_middleware wraps what is there already, so the innermost goes first.
    for middleware in (
        AdmissionMiddleware,
        LimitsMiddleware,
        ScopeMiddleware,
        BodyMiddleware,
        AuthMiddleware,
        DrainMiddleware,
    ):
        app.add_middleware(middleware, state=state)
    cors = state.settings.cors
    if cors.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors.allowed_origins,
            allow_methods=cors.allowed_methods,
            allow_headers=cors.allowed_headers,
            allow_credentials=cors.allow_credentials,
            expose_headers=_EXPOSED,
        )
    app.add_middleware(CanonicalRequestMiddleware)
    if state.tracing is not None:  # off, not even a pass-through layer: tracing costs nothing
        from gateway.middleware.tracing import TracingMiddleware

        app.add_middleware(TracingMiddleware, tracing=state.tracing)
    app.add_middleware(RequestLogMiddleware)
