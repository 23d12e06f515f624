"""The app over ASGI with the scripted engine: for tests of the front door's own logic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from engine_adapters.base import EngineAdapter, GenerateRequest
from gateway.app import create_app
from gateway.settings import Settings
from gateway.state import AppState
from tests.support.scripted_engine import Script, ScriptedAdapter

MODEL = "scripted"


class RecordingAdapter(ScriptedAdapter):
    """Remembers every request it was given, to check what reached the engine."""

    def __init__(self, name: str = MODEL, script: Script | None = None) -> None:
        super().__init__(name, script)
        self.requests: list[GenerateRequest] = []
        self.abort_calls: list[str] = []  # every abort, even of a request whose stream had already closed

    def generate(self, request: GenerateRequest) -> AsyncIterator[Any]:
        self.requests.append(request)
        return super().generate(request)

    async def abort(self, request_id: str) -> None:
        self.abort_calls.append(request_id)
        await super().abort(request_id)


def settings(**fields: Any) -> Settings:
    return Settings(models=[], **fields)


@asynccontextmanager
async def scripted_client(
    config: Settings, adapter: ScriptedAdapter | None = None, headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    engine = adapter or ScriptedAdapter(MODEL)

    async def factory(_: Settings) -> dict[str, EngineAdapter]:
        return {engine.name: engine}

    app = create_app(config, adapter_factory=factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers or {}, timeout=30
        ) as client:
            client.app_state = app.state.tokenyard  # type: ignore[attr-defined]
            yield client


def state_of(client: httpx.AsyncClient) -> AppState:
    state: AppState = client.app_state  # type: ignore[attr-defined]
    return state


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


def sse_data(body: bytes) -> list[bytes]:
    return [line[len(b"data: ") :] for line in body.split(b"\n\n") if line.startswith(b"data: ")]
