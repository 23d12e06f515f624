"""A dead in-process engine: /health turns 503 and the server exits non-zero; remote routes never count."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
import uvicorn

from engine_adapters.base import EngineAdapter
from gateway.app import create_app
from gateway.lifecycle import ENGINE_DEAD_EXIT_CODE
from gateway.server import uvicorn_options
from gateway.settings import RouteSettings, Settings
from gateway.state import AppState
from gateway.uvicorn_coupling import DrainingServer
from tests.support.scripted_app import MODEL, chat, scripted_client, settings
from tests.support.scripted_engine import ScriptedAdapter

CAUSE = "EngineCore was killed by SIGKILL"


class MortalAdapter(ScriptedAdapter):
    """An in-process engine (a LocalEngine) that dies when told to."""

    def __init__(self, name: str = MODEL) -> None:
        super().__init__(name)
        self.cause: str | None = None

    def death_cause(self) -> str | None:
        return self.cause


def test_only_in_process_engines_count_as_dead() -> None:
    local, remote = MortalAdapter("local"), ScriptedAdapter("remote")
    remote.healthy = False  # down, but not this process's to restart
    state = AppState(settings=settings(), adapters={"local": local, "alias": local, "remote": remote})
    assert state.engine_deaths() == {}
    local.cause = CAUSE
    assert state.engine_deaths() == {"local": CAUSE}


async def test_health_turns_503_when_the_engine_dies() -> None:
    adapter = MortalAdapter()
    async with scripted_client(settings(), adapter) as client:
        assert (await client.get("/health")).status_code == 200
        adapter.cause = CAUSE
        response = await client.get("/health")
        assert response.status_code == 503 and response.json() == {"status": "engine dead", "models": [MODEL]}


async def test_a_router_whose_upstream_is_down_stays_live() -> None:
    route = RouteSettings(name="routed", upstreams=["http://127.0.0.1:9"])  # nothing listens there
    # No hold: the first health check finds the instance down, and a held request would wait out the default.
    config = settings(routes=[route], router={"max_attempts": 1, "connect_timeout_s": 0.5, "hold_timeout_s": 0})
    app = create_app(config)  # the real router adapters, no engine
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            failed = await client.post("/v1/chat/completions", json={**chat(), "model": "routed"})
            assert failed.status_code in (502, 503)
            assert (await client.get("/health")).status_code == 200


class RunningServer:
    """The real server (uvicorn with our subclass) on a free port, over `adapter`."""

    def __init__(self, config: Settings, adapter: EngineAdapter) -> None:
        async def factory(_: Settings) -> dict[str, EngineAdapter]:
            return {MODEL: adapter}

        app = create_app(config, adapter_factory=factory)
        self.state: AppState = app.state.tokenyard
        self.server: Any = DrainingServer(uvicorn.Config(app, **uvicorn_options(config)), self.state)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningServer:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        if not self.task.done():
            self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)


async def error_logged(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    while True:
        records = [r for r in caplog.records if r.name == "gateway.lifecycle" and r.levelno == logging.ERROR]
        if records:
            return records[0]
        await asyncio.sleep(0.01)


async def test_the_server_logs_why_then_exits_non_zero(caplog: pytest.LogCaptureFixture) -> None:
    adapter = MortalAdapter()
    async with RunningServer(settings(port=0, engine_dead_exit_s=1.0), adapter) as running:
        adapter.cause = CAUSE
        record = await asyncio.wait_for(error_logged(caplog), 10)
        assert record.getMessage() == f"engine for model {MODEL} died: {CAUSE}; exiting in 1 s"
        assert record.fields == {"model": MODEL, "cause": CAUSE}  # type: ignore[attr-defined]
        async with httpx.AsyncClient(base_url=running.url) as client:  # the exit waits: probes see 503
            assert (await client.get("/health")).status_code == 503
        assert running.task is not None
        await asyncio.wait_for(running.task, 10)
    assert running.server.exit_code == ENGINE_DEAD_EXIT_CODE != 0


async def test_with_no_exit_delay_the_server_stays_up(caplog: pytest.LogCaptureFixture) -> None:
    adapter = MortalAdapter()
    async with RunningServer(settings(port=0, engine_dead_exit_s=None), adapter) as running:
        adapter.cause = CAUSE
        record = await asyncio.wait_for(error_logged(caplog), 10)
        assert record.getMessage().endswith("staying up (engine_dead_exit_s null)")
        # The decision is taken as the line is logged: nothing drains, nothing exits.
        assert not running.server.should_exit and not running.state.draining
        async with httpx.AsyncClient(base_url=running.url) as client:
            assert (await client.get("/health")).status_code == 503
    assert running.server.exit_code == 0
