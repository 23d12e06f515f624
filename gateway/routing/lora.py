"""LoRA-aware placement: a request that names one of a route's LoRA adapters goes to an instance holding it.

What an instance holds is what its /v1/models lists with a `parent` (refreshed at every health check on
a LoRA route, and at once after the router loads or unloads there); which of those are in use, and how
many fit, is its vllm:lora_requests_info gauge (running_lora_adapters, waiting_lora_adapters, max_lora),
with the route's max_loras where the gauge is missing. Each request is one of three placements:

    hit       some candidate holds the adapter: the route's policy chooses among those
    loaded    none does, and lora_runtime_load is on: the adapter is loaded on the least-loaded
              candidate with room, or, where every one is full, on the one whose least recently used
              idle adapter (no request of ours, none running or waiting there) is the coldest, which is
              unloaded first
    fallback  none does, and the router may not load it: the route's policy chooses among all of them

A load is single-flight: concurrent first requests for an adapter wait for the one load and go where it
went. A load that fails goes on to the next instance; when none could load it, the request gets 503.
When every instance is full and no adapter is idle (or the gauges, scraped each health interval, still
say so), the request waits, re-checking each interval, for up to the route's hold timeout, then gets 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine_adapters.base import RouteRequest
from gateway.errors import EngineUnavailable, GatewayError
from gateway.routing.instance import Instance
from gateway.routing.policies import Policy
from gateway.settings import RouteSettings

log = logging.getLogger(__name__)

DECISIONS = ("hit", "loaded", "fallback")


@dataclass
class LoraCounts:
    """What the placement did, for /metrics (read at scrape time)."""

    loads: int = 0
    load_failures: int = 0
    unloads: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DECISIONS, 0))


def held(instance: Instance) -> set[str]:
    """The LoRA adapters the instance lists in its /v1/models (as of its last refresh)."""
    return {info.name for info in instance.adapter.models() if info.parent is not None}


class NoRoom(EngineUnavailable):
    """Every instance holds as many adapters as it can, all in use."""


class LoraPlacement:
    def __init__(self, route: RouteSettings, policy: Policy, recheck_s: float) -> None:
        self.route_name = route.name
        self.paths = route.lora_adapters
        self.runtime_load = route.lora_runtime_load
        self.max_loras = route.max_loras
        self.policy = policy
        self.recheck_s = recheck_s
        self.counts = LoraCounts()
        self._loading: dict[str, asyncio.Task[Instance]] = {}  # adapter -> its load in progress
        self._last_used: dict[tuple[str, str], float] = {}  # (instance url, adapter) -> monotonic time
        self._in_flight: Counter[tuple[str, str]] = Counter()  # (instance url, adapter) -> our requests there

    def serves(self, model: str) -> bool:
        return model in self.paths

    async def choose(self, candidates: Sequence[Instance], request: RouteRequest, until: float) -> Instance:
        """The instance for a request naming one of the route's adapters, loading it there if need be;
        while there is no room for it, wait until `until` (monotonic) for some."""
        while True:
            try:
                return await self._choose(candidates, request)
            except NoRoom:
                left = until - time.monotonic()
                if left <= 0:
                    raise
                await asyncio.sleep(min(left, self.recheck_s))

    async def _choose(self, candidates: Sequence[Instance], request: RouteRequest) -> Instance:
        name = request.model
        holders = [c for c in candidates if name in held(c)]
        if holders:
            return self._placed(self.policy.choose(holders, request), name, "hit")
        if not self.runtime_load:
            return self._placed(self.policy.choose(candidates, request), name, "fallback")
        task = self._loading.get(name)
        if task is None:
            task = self._loading[name] = asyncio.ensure_future(self._load(name, list(candidates)))
            task.add_done_callback(lambda _: self._loading.pop(name, None))
        # Shielded: a client that leaves while it waits must not cancel the load the others wait for.
        instance = await asyncio.shield(task)
        return self._placed(instance, name, "loaded")

    def track(self, instance: Instance, name: str) -> None:
        """One of our requests for the adapter is on the instance until `release` (Lease.on_release)."""
        self._in_flight[(instance.url, name)] += 1

    def release(self, instance: Instance, name: str) -> None:
        key = (instance.url, name)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]

    def _placed(self, instance: Instance, name: str, decision: str) -> Instance:
        self.counts.decisions[decision] += 1
        self._last_used[(instance.url, name)] = time.monotonic()
        return instance

    # -- loading ------------------------------------------------------------------

    def capacity(self, instance: Instance) -> int | None:
        gauge = instance.engine.lora
        return gauge.max_loras if gauge is not None and gauge.max_loras else self.max_loras

    def has_room(self, instance: Instance) -> bool:
        limit = self.capacity(instance)
        return limit is None or len(held(instance)) < limit

    def last_used(self, instance: Instance, name: str | None) -> float:
        return self._last_used.get((instance.url, name or ""), 0.0)

    def idle_adapter(self, instance: Instance) -> str | None:
        """The least recently used adapter on the instance with no request running or waiting, if any."""
        gauge = instance.engine.lora
        busy = gauge.busy if gauge is not None else frozenset()
        idle = [
            a
            for a in held(instance)
            if a not in busy and not self._in_flight[(instance.url, a)] and a not in self._loading
        ]
        return min(idle, key=lambda a: self.last_used(instance, a), default=None)

    async def _load(self, name: str, candidates: list[Instance]) -> Instance:
        # The least loaded with room; else where the adapter to unload is the coldest of all.
        by_load = sorted(candidates, key=lambda c: c.score())
        full = [(c, victim) for c in by_load if not self.has_room(c) and (victim := self.idle_adapter(c))]
        targets = [c for c in by_load if self.has_room(c)] + [
            c for c, victim in sorted(full, key=lambda pair: self.last_used(*pair))
        ]
        if not targets:
            raise NoRoom(
                f"Every instance of `{self.route_name}` holds as many LoRA adapters as it can, "
                f"all in use; `{name}` cannot be loaded now."
            )
        for instance in targets:
            try:
                await self._make_room(instance)
                await instance.adapter.load_lora(name, self.paths[name])
            except GatewayError as exc:
                self.counts.load_failures += 1
                log.warning(
                    "route %s: loading LoRA adapter %s on %s failed: %s",
                    self.route_name,
                    name,
                    instance.url,
                    exc.message,
                )
                continue
            self.counts.loads += 1
            log.info("route %s: loaded LoRA adapter %s on %s", self.route_name, name, instance.url)
            await _refresh(instance)
            return instance
        raise EngineUnavailable(
            f"The LoRA adapter `{name}` could not be loaded on any instance of `{self.route_name}`."
        )

    async def _make_room(self, instance: Instance) -> None:
        if self.has_room(instance):
            return
        victim = self.idle_adapter(instance)
        if victim is None:  # it filled up, or its adapters got busy, while other loads ran
            raise EngineUnavailable(f"{instance.url} has no room for another LoRA adapter.")
        await instance.adapter.unload_lora(victim)
        self.counts.unloads += 1
        self._last_used.pop((instance.url, victim), None)
        log.info("route %s: unloaded LoRA adapter %s from %s", self.route_name, victim, instance.url)
        await _refresh(instance)


async def _refresh(instance: Instance) -> None:
    """What the instance holds now, so the next requests see it without waiting for a health check."""
    try:
        await instance.adapter.refresh_models()
    except GatewayError:
        log.warning("%s did not list its models after a LoRA change", instance.url)
