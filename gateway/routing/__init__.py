"""Router mode: public model names served by pools of OpenAI-compatible instances."""

from __future__ import annotations

import logging

from engine_adapters.base import EngineAdapter
from gateway.routing.adapter import RoutedAdapter
from gateway.routing.reload import RouteTable
from gateway.settings import RouteSettings, Settings

__all__ = ["RouteTable", "RoutedAdapter", "route_names", "start_routes"]


def route_names(routes: list[RouteSettings]) -> dict[str, RouteSettings]:
    """Every public name (route names and aliases) -> its route; a name may be claimed once."""
    names: dict[str, RouteSettings] = {}
    for route in routes:
        for name in route.names:
            if name in names:
                raise ValueError(f"model name {name!r} is claimed by more than one route")
            names[name] = route
    return names


async def start_routes(settings: Settings, registry: dict[str, EngineAdapter]) -> RouteTable:
    """Start every route and register its names in `registry`, which then follows the config file. The
    caller holds the table and stops it (RouteTable.stop) before it closes the adapters."""
    route_names(settings.routes)  # fail on clashing names before anything starts
    # httpx logs each upstream request at INFO: on a router that is a second access log, and costly.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    table = RouteTable(settings, registry)
    await table.start(settings.routes)
    return table
