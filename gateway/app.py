"""create_app(settings): the whole application, built fresh; nothing happens at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from engine_adapters.base import EngineAdapter
from gateway import middleware
from gateway.api import (
    batches,
    chat,
    completions,
    embeddings,
    files,
    health,
    keys,
    lora,
    messages,
    models,
    responses,
    routed,
    scoring,
    tokenize,
    usage,
)
from gateway.api.common import json_response
from gateway.errors import (
    GatewayError,
    MethodNotAllowed,
    error_payload,
    invalid_fields,
    retry_after,
    status_error,
)
from gateway.keys import KeyStore
from gateway.lifecycle import Drain
from gateway.limit_store import LimitStore, MemoryStore
from gateway.observability.tracing import build_tracing
from gateway.relay.door import FrontDoor
from gateway.services.batch_runner import BatchRunner
from gateway.settings import LimitSettings, Settings
from gateway.state import AppState
from gateway.store import build_store
from gateway.store.batches import BatchStore
from gateway.store.files import FileStore
from gateway.store.keys import KeyRecords, KeySync

log = logging.getLogger(__name__)

AdapterFactory = Callable[[Settings], Awaitable[dict[str, EngineAdapter]]]


def _install_error_handlers(app: FastAPI) -> None:
    async def gateway_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, GatewayError) or not exc.public_message:
            log.error("unexpected error on %s", request.url.path, exc_info=exc)
        status, body = error_payload(exc, request.url.path)
        headers = {"retry-after": retry_after(exc)} if status in (429, 503) else None
        response = json_response(body, status)
        if headers:
            response.headers.update(headers)
        return response

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return await gateway_error(request, invalid_fields(list(exc.errors())))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code != 405:
            return await gateway_error(request, status_error(exc.status_code, str(exc.detail)))
        allow = (exc.headers or {}).get("Allow", "")
        if "GET" in allow.split(", "):
            allow += ", HEAD"  # served wherever GET is (gateway.middleware.canonical)
        response = await gateway_error(request, MethodNotAllowed(f"This method is not allowed here; allowed: {allow}."))
        response.headers["allow"] = allow
        return response

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, gateway_error)


def _document_validation_as_400(app: FastAPI) -> None:
    """Validation errors are answered 400 (OpenAI's way), so FastAPI's default 422 leaves the schema."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to replace the OpenAPI builder


def _limit_store(limits: LimitSettings) -> LimitStore:
    """Where rate-limit buckets and budgets live: this process, or a Redis that router replicas share."""
    if limits.backend == "redis":
        from gateway.redis_store import RedisStore

        assert limits.redis_url is not None  # the settings check it
        return RedisStore(limits.redis_url.get_secret_value(), limits.redis_timeout_s)
    return MemoryStore()


def create_app(settings: Settings, adapter_factory: AdapterFactory | None = None) -> FastAPI:
    """Build the app. `adapter_factory` starts the local engines; by default, in-process vLLM per model."""
    state = AppState(
        settings=settings,
        keys=KeyStore(settings.api_keys, settings.auth.api_keys_file, stale_after_s=settings.auth.keys_stale_after_s),
        limit_store=_limit_store(settings.limits),
        tracing=build_tracing(settings.tracing),
    )
    store = state.response_store = build_store(settings, state.metrics)
    assert state.keys is not None
    records = KeyRecords(store.db, store.ensure_schema)
    admin_key_set = settings.auth.admin_key is not None
    key_sync = state.key_sync = KeySync(records, state.keys, settings.auth.keys_refresh_s, admin_key_set)
    state.files = FileStore(store.db, settings.batch)  # the same database: one backup holds everything
    state.batches = BatchStore(store.db, state.files)
    runner = state.batch_runner = BatchRunner(
        state.batches, state.files, settings.batch, state.metrics, paused=lambda: state.draining
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from gateway.engines import start_local_engines

        await store.start()  # migrations, under the database's lock
        await key_sync.start()  # the keys API's keys, before the first request
        state.adapters = await (adapter_factory or start_local_engines)(settings)
        # Router mode: the routes join the same name -> adapter map, and follow the config file. Imported
        # only here, so that engine mode never loads the router (pyzmq, the Kubernetes discovery).
        state.route_table = None
        if settings.routes:
            from gateway.routing.reload import start_routes

            state.route_table = await start_routes(settings, state.adapters)
        # A lifespan may run again on the same app (test clients do): start undrained.
        state.draining, state.drain = False, Drain()
        store.maintain()
        state.ready = True
        runner.start(app)  # lines run through the whole app, middlewares and all
        try:
            yield
        finally:
            state.draining = True
            await runner.close()  # its running lines go back to the store, for this or another replica
            if state.route_table is not None:
                await state.route_table.stop()  # no reload may start a route while they close
            for run in state.background_runs:  # each writes itself failed: the client may retrieve it
                run.cancel()
            await asyncio.gather(*state.background_runs, return_exceptions=True)
            for adapter in state.engines():
                # What is left of the drain deadline: after a SIGTERM drain, the requests are done already.
                await adapter.close(state.drain.time_left(settings.drain_deadline_s))
            await state.limit_store.close()
            await key_sync.stop()
            await store.close()
            if state.tracing is not None:
                await state.tracing.close()  # the spans still buffered are exported

    # No redirect for a trailing slash: its Location would name the client's Host (see middleware.canonical).
    app = FastAPI(title="tokenyard", version="0.1.0", lifespan=lifespan, redirect_slashes=False)
    app.state.tokenyard = state
    _install_error_handlers(app)
    _document_validation_as_400(app)
    app.add_middleware(FrontDoor, state=state)  # innermost: routed chat and completions end there
    middleware.install(app, state)
    for module in (
        keys,
        models,
        chat,
        completions,
        embeddings,
        health,
        responses,
        tokenize,
        usage,
        messages,
        scoring,
        routed,
        files,
        batches,
    ):
        app.include_router(module.router)
    if settings.allow_runtime_lora_updating:  # as vLLM: the routes exist only when runtime updates are allowed
        app.include_router(lora.router)
    return app
