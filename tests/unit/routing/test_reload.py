"""The route table follows the config file: routes come, change and go; requests in flight finish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from engine_adapters.base import EngineAdapter, GenerateRequest, SamplingOptions
from gateway.routing.reload import RouteTable
from gateway.settings import Settings
from tests.support.fake_instance import FakeUpstream
from tests.support.waiting import until

ROUTER = {"reload_interval_s": 0.02, "health_interval_s": 3600}


def write(path: Path, routes: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump({"routes": routes, "router": ROUTER}))


async def test_routes_follow_the_config_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "router.yaml"
    write(config, [{"name": "a", "aliases": ["a2"], "upstreams": ["http://one:1"]}])
    fakes: dict[str, FakeUpstream] = {}
    registry: dict[str, EngineAdapter] = {}
    settings = Settings(config=config)
    table = RouteTable(settings, registry, connect=lambda url: fakes.setdefault(url, FakeUpstream(url)))  # type: ignore[arg-type, return-value]
    await table.start(settings.routes)
    first = registry["a"]
    assert registry["a2"] is first
    fakes["http://one:1"].behaviour = "slow"
    in_flight = first.generate(GenerateRequest("r", "a", SamplingOptions(), prompt="p"))
    assert (await anext(in_flight)).text == "http://one:1:0"

    write(config, [{"name": "a", "upstreams": ["http://two:1"]}, {"name": "b", "upstreams": ["http://one:1"]}])
    await until(lambda: "b" in registry, 5, "route b added", in_thread=False)
    assert registry["a"] is not first and "a2" not in registry and "b" in registry
    assert [chunk.text async for chunk in in_flight] == ["http://one:1:1"]  # finished where it began
    replies = [c.text async for c in registry["a"].generate(GenerateRequest("s", "a", SamplingOptions(), prompt="p"))]
    assert replies[0].startswith("http://two:1")

    config.write_text("routes: [this is not: valid")  # a broken file keeps what we have
    await until(lambda: "not reloaded" in caplog.text, 5, "the broken file read", in_thread=False)
    assert set(registry) == {"a", "b"}

    write(config, [{"name": "b", "upstreams": ["http://one:1"]}])
    await until(lambda: "a" not in registry, 5, "route a removed", in_thread=False)
    assert set(registry) == {"b"}
    await table.stop()  # as the app's lifespan does, before it closes the routes
    await registry["b"].close()
    assert not table._background  # the watcher stopped
