"""Router mode: public model names served by pools of OpenAI-compatible instances."""

from __future__ import annotations

import logging

from engine_adapters.base import EngineAdapter
from gateway.routing.adapter import RoutedAdapter
from gateway.routing.reload import RouteTable
from gateway.settings import ModelSettings, RouteSettings, Settings

__all__ = ["RouteTable", "RoutedAdapter", "local_models", "route_names", "start_routes"]


def route_names(routes: list[RouteSettings]) -> dict[str, RouteSettings]:
    """Every public name (route names and aliases) -> its route; a name may be claimed once."""
    names: dict[str, RouteSettings] = {}
    for route in routes:
        for name in route.names:
            if name in names:
                raise ValueError(f"model name {name!r} is claimed by more than one route")
            names[name] = route
    return names


def local_models(settings: Settings) -> list[ModelSettings]:
    """The models to run in this process. With routes, the default model list does not apply (a router
    runs no engine unless `models` is set), and a routed name is never also run locally."""
    if not settings.routes:
        return list(settings.models)
    if "models" not in settings.model_fields_set:
        return []
    routed = route_names(settings.routes)
    return [model for model in settings.models if model.name not in routed]


async def start_routes(settings: Settings, registry: dict[str, EngineAdapter]) -> RouteTable:
    """Start every route and register its names in `registry`, which then follows the config file."""
    route_names(settings.routes)  # fail on clashing names before anything starts
    # httpx logs each upstream request at INFO: on a router that is a second access log, and costly.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    table = RouteTable(settings, registry)
    await table.start(settings.routes)
    return table
