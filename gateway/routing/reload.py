"""The app's routes, kept in step with the config file, without a restart and without dropping requests.

Every reload_interval_s the --config file's modification time is checked. On a change the file is read
again: a new route is started and its names registered; a changed route is replaced by a fresh adapter
(new requests go to it at once); a removed route's names are unregistered. A replaced or removed adapter
is closed only after its requests in flight have finished (or request_timeout_s has passed). A file that
does not load keeps the routes we have.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from engine_adapters.base import EngineAdapter
from engine_adapters.openai_http import OpenAIHttpAdapter
from gateway.routing import route_names
from gateway.routing.adapter import RoutedAdapter
from gateway.routing.tasks import Background
from gateway.settings import RouterSettings, RouteSettings, Settings

log = logging.getLogger(__name__)


class RouteTable:
    def __init__(
        self,
        settings: Settings,
        registry: dict[str, EngineAdapter],
        connect: Callable[[str], OpenAIHttpAdapter] | None = None,
    ) -> None:
        self.path = settings.config
        self.router = settings.router
        self.registry = registry  # the app's model name -> adapter map, shared with engine-mode models
        self.routes: dict[str, RoutedAdapter] = {}  # route name -> adapter
        self._connect = connect
        self._version = self._stamp()
        self._background = Background()
        self._stopped = False

    async def start(self, routes: list[RouteSettings]) -> None:
        for adapter in await asyncio.gather(*(self._build(route, self.router) for route in routes)):
            self._register(adapter)
        if self.path is not None:
            self._spawn(self._watch())

    async def stop(self) -> None:
        """The app is shutting down (its lifespan calls this before closing the routes): stop following the
        config file, and stop waiting for retired routes to finish."""
        if self._stopped:
            return
        self._stopped = True
        await self._background.cancel()

    async def reload(self) -> None:
        assert self.path is not None
        try:
            fresh = Settings(config=self.path)
        except Exception as exc:  # a half-written or invalid file: keep serving what we have
            log.error("config %s not reloaded: %s", self.path, exc)
            return
        wanted = {route.name: route for route in fresh.routes}
        for name in [n for n in self.routes if n not in wanted]:
            log.info("route %s removed", name)
            self._retire(self.routes.pop(name))
        for route in wanted.values():
            current = self.routes.get(route.name)
            if current is not None and current.route == route and current.settings == fresh.router:
                continue
            log.info("route %s %s", route.name, "changed" if current else "added")
            adapter = await self._build(route, fresh.router)
            if current is not None:
                self._retire(current)
            self._register(adapter)
        self.router = fresh.router

    async def _build(self, route: RouteSettings, router: RouterSettings) -> RoutedAdapter:
        adapter = RoutedAdapter(route, router, connect=self._connect)
        await adapter.start()
        return adapter

    def _register(self, adapter: RoutedAdapter) -> None:
        for name in adapter.names:
            taken = self.registry.get(name)
            if taken is not None and not isinstance(taken, RoutedAdapter):
                log.error("route name %s is served by a local engine; not routed", name)
                continue
            self.registry[name] = adapter
        self.routes[adapter.route.name] = adapter

    def _retire(self, adapter: RoutedAdapter) -> None:
        for name in adapter.names:
            if self.registry.get(name) is adapter:
                del self.registry[name]
        self._spawn(adapter.close(adapter.settings.request_timeout_s))

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = Path(self.path).stat() if self.path else None
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size) if stat else None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.router.reload_interval_s)
            stamp = self._stamp()
            if stamp is not None and stamp != self._version:
                self._version = stamp
                await self.reload()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._background.spawn(work)


async def start_routes(settings: Settings, registry: dict[str, EngineAdapter]) -> RouteTable:
    """Start every route and register its names in `registry`, which then follows the config file. The
    caller holds the table and stops it (RouteTable.stop) before it closes the adapters."""
    route_names(settings.routes)  # fail on clashing names before anything starts
    # httpx logs each upstream request at INFO: on a router that is a second access log, and costly.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    table = RouteTable(settings, registry)
    await table.start(settings.routes)
    return table
