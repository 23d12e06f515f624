"""Which models run in this process once routes are set, and the shipped router example."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.engines import local_models
from gateway.routing import route_names
from gateway.settings import ModelSettings, RouteSettings, Settings

EXAMPLE = Path(__file__).resolve().parents[3] / "configs" / "router.example.yaml"


def test_the_example_serves_two_models_over_several_instances() -> None:
    settings = Settings(config=EXAMPLE)
    names = route_names(settings.routes)
    assert set(names) == {"gemma-3-270m", "gemma", "all-MiniLM-L6-v2"}
    assert len(names["gemma"].upstreams) == 2 and names["all-MiniLM-L6-v2"].kind == "embed"
    assert local_models(settings) == []  # a router runs no engine of its own by default


def test_explicit_models_run_beside_routes_unless_routed() -> None:
    routes = [RouteSettings(name="a", upstreams=["http://x:1"])]
    local = [ModelSettings(name="a", model="/m/a"), ModelSettings(name="b", model="/m/b")]
    assert [m.name for m in local_models(Settings(routes=routes, models=local))] == ["b"]
    assert len(local_models(Settings())) == 2  # engine mode: unchanged


def test_a_name_may_be_claimed_once() -> None:
    with pytest.raises(ValueError, match="claimed"):
        route_names([RouteSettings(name="a"), RouteSettings(name="b", aliases=["a"])])
