"""AppState: everything one app instance owns, handed around explicitly."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from engine_adapters.base import EngineAdapter, LocalEngine, ModelInfo, RawRelay
from gateway.errors import EngineUnavailable, ModelNotFound
from gateway.held import HeldBytes
from gateway.keys import KeyStore
from gateway.lifecycle import Drain
from gateway.limit_store import LimitStore, MemoryStore
from gateway.observability.metrics import UNKNOWN_MODEL, LoraStat, Metrics, RouteStatus, UpstreamStat
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.observability.otel import Tracing
    from gateway.routing.reload import RouteTable
    from gateway.services.batch_runner import BatchRunner
    from gateway.store import ResponseStore
    from gateway.store.batches import BatchStore
    from gateway.store.files import FileStore
    from gateway.store.keys import KeySync


@runtime_checkable
class RoutedModel(RawRelay, Protocol):
    """A routed model's adapter, as the state and the front door see it (gateway.routing.adapter.RoutedAdapter):
    a protocol, so that an engine-mode process never imports the router's modules (pyzmq, Kubernetes)."""

    names: list[str]  # the route's name first, then its aliases and its LoRA adapters

    def status(self, queued: int = 0) -> RouteStatus: ...

    def lora_stats(self) -> list[LoraStat]: ...


class WaitQueue(Protocol):
    """A model's admission queue, as the state reads it (gateway.middleware.admission.Admission)."""

    @property
    def depth(self) -> int: ...

    def longest_waiting(self) -> tuple[str, float] | None: ...


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    adapters: dict[str, EngineAdapter] = field(default_factory=dict)  # served model name -> adapter
    started_at: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False
    draining: bool = False
    drain: Drain = field(default_factory=Drain)  # in-flight requests and the SIGTERM deadline
    unknown_fields_seen: set[str] = field(default_factory=set)  # request field names already logged once
    queues: dict[str, WaitQueue] = field(default_factory=dict)  # route or engine (queue_name) -> its admission queue
    keys: KeyStore | None = None  # the client keys, when create_app built the app
    limit_store: LimitStore = field(default_factory=MemoryStore)  # rate-limit buckets and budgets
    route_table: RouteTable | None = None  # router mode: the routes, following the config file
    tracing: Tracing | None = None  # OpenTelemetry, while tracing is on (gateway.observability.tracing)
    runtime_loras: dict[str, str] = field(default_factory=dict)  # adapter loaded at run time -> its base model
    response_store: ResponseStore | None = None  # stored responses (gateway.store), when create_app built the app
    key_sync: KeySync | None = None  # the keys API's keys in the store, copied into `keys` (gateway.store.keys)
    files: FileStore | None = None  # the Batch API's files (gateway.store.files), when create_app built the app
    batches: BatchStore | None = None  # the Batch API's batches and their lines (gateway.store.batches)
    batch_runner: BatchRunner | None = None  # runs batches' lines here, sharing them with the other replicas
    background_runs: set[asyncio.Task[None]] = field(default_factory=set)  # background responses running here
    held: HeldBytes = field(init=False)  # bytes of the requests waiting for a slot or an instance

    def __post_init__(self) -> None:
        self.held = HeldBytes(self.settings.limits.max_held_bytes)
        self.metrics.watch_upstreams(self.upstream_stats)
        self.metrics.watch_routes(self.route_statuses)
        self.metrics.watch_queues(self.longest_waits)
        self.metrics.watch_loras(lambda: [stat for route in self.routes() for stat in route.lora_stats()])

    def engines(self) -> list[EngineAdapter]:
        """Each adapter once: a route is registered under its name and every alias."""
        return list({id(adapter): adapter for adapter in self.adapters.values()}.values())

    def routes(self) -> list[RoutedModel]:
        """Router mode: each routed model's adapter once."""
        return [adapter for adapter in self.engines() if isinstance(adapter, RoutedModel)]

    def route_statuses(self) -> list[RouteStatus]:
        """Each routed model now; its waiting requests are those held by the route and those queued for a slot
        under any of its names."""
        return [
            route.status(queued=queue.depth if (queue := self.queues.get(route.names[0])) else 0)
            for route in self.routes()
        ]

    def queue_summaries(self) -> dict[str, dict[str, object]]:
        """Each admission queue now: how many wait, and the key (its name) whose request has waited longest."""
        summaries: dict[str, dict[str, object]] = {}
        for name, queue in self.queues.items():
            longest = queue.longest_waiting()
            summaries[name] = {
                "waiting": queue.depth,
                "longest_waiting_key": longest[0] if longest else None,
                "longest_wait_s": round(longest[1], 3) if longest else None,
            }
        return summaries

    def longest_waits(self) -> list[tuple[str, str, float]]:
        """(model, key name, seconds) of each queue's request waiting longest, where one waits."""
        return [(name, found[0], found[1]) for name, queue in self.queues.items() if (found := queue.longest_waiting())]

    def engine_deaths(self) -> dict[str, str]:
        """The in-process engines that have died: model name -> cause. Remote instances never count:
        the router routes around them, and a restart of this process would not bring them back."""
        return {
            adapter.models()[0].name: cause
            for adapter in self.engines()
            if isinstance(adapter, LocalEngine) and (cause := adapter.death_cause()) is not None
        }

    def upstream_stats(self) -> list[UpstreamStat]:
        """Router mode: per-instance state of every routed model."""
        return [stat for adapter in self.engines() for stat in getattr(adapter, "upstream_stats", list)()]

    def adapter_for(self, model: str, kind: str = "generate") -> EngineAdapter:
        adapter = self.adapters.get(model)
        if adapter is None or self.model_info(model).kind != kind:
            raise ModelNotFound(model)
        if not self.ready or self.draining:
            raise EngineUnavailable("The server is not ready to serve requests.")
        return adapter

    def model_label(self, model: object) -> str:
        """The `model` label for a requested name: the name itself only when it is served and configured (an
        adapter loaded at run time counts under its base model), else one bucket, so that no client can add
        series to /metrics by naming models or loading adapters."""
        if not isinstance(model, str) or model not in self.adapters:
            return UNKNOWN_MODEL
        return self.runtime_loras.get(model, model)

    def queue_name(self, model: str) -> str:
        """Whose admission queue a served name's requests wait in: its route's or its engine's first name, so that
        aliases, LoRA adapters and adapters loaded at run time share their model's slots, not multiply them."""
        adapter = self.adapters[model]
        if isinstance(adapter, RoutedModel):
            return adapter.names[0]
        names = adapter.models()
        return names[0].name if names else model

    def model_info(self, model: str) -> ModelInfo:
        adapter = self.adapters.get(model)
        for info in adapter.models() if adapter else []:
            if info.name == model:
                return info
        raise ModelNotFound(model)

    def only_model(self) -> str | None:
        """The one model served, when there is exactly one (vLLM's default where a request names none)."""
        names = {info.name for info in self.all_models()}
        return names.pop() if len(names) == 1 else None

    def all_models(self) -> list[ModelInfo]:
        seen: dict[str, ModelInfo] = {}
        for adapter in self.adapters.values():
            for info in adapter.models():
                seen.setdefault(info.name, info)
        return list(seen.values())
