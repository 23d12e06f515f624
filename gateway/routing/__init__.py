"""Router mode: public model names served by pools of OpenAI-compatible instances.

This package's own module imports nothing of the router (an engine-mode process imports it to check model
names): the routes start in gateway.routing.reload.start_routes, their adapter is gateway.routing.adapter."""

from __future__ import annotations

from gateway.settings import RouteSettings

__all__ = ["route_names"]


def route_names(routes: list[RouteSettings]) -> dict[str, RouteSettings]:
    """Every public name (route names and aliases) -> its route; a name may be claimed once."""
    names: dict[str, RouteSettings] = {}
    for route in routes:
        for name in route.names:
            if name in names:
                raise ValueError(f"model name {name!r} is claimed by more than one route")
            names[name] = route
    return names
