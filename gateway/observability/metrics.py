"""The gateway's own metrics, in a private registry so apps (and tests) never share state.

/metrics shows two families: ours (prefix tokenyard_, checked by promtool) and,
in engine mode, vLLM's own engine metrics under vLLM's names, which vLLM keeps
in prometheus_client's global registry.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_GAP_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5)
REJECT_REASONS = (
    "auth",
    "rate_limited",
    "over_budget",
    "limit_store",
    "admission",
    "body_size",
    "body_timeout",
    "scope",
)
KEY_REJECT_REASONS = ("rate_limited", "over_budget")
# Label values are configured names (served models, routes, key names) or fixed buckets such as this one:
# never a string a client sent (AppState.model_label maps a requested model name).
UNKNOWN_MODEL = "unknown"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tokenyard_requests",
            "Requests answered, by model, route and HTTP status.",
            ["model", "route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "tokenyard_request_duration_seconds",
            "Time from request to the last byte.",
            ["model", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "tokenyard_time_to_first_token_seconds",
            "Time from request to the first generated token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = TalliedHistogram(
            "tokenyard_inter_token_latency_seconds",
            "Time between streamed chunks.",
            "model",
            _TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "tokenyard_prompt_tokens",
            "Prompt tokens processed.",
            ["model"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "tokenyard_completion_tokens",
            "Completion tokens generated.",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge(
            "tokenyard_requests_in_flight",
            "Requests being served now.",
            ["model"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "tokenyard_client_disconnects",
            "Requests whose client left before the answer was complete.",
            ["model"],
            registry=r,
        )
        # Requests refused at the front door, and requests waiting for an admission slot.
        self.rejected = Counter(
            "tokenyard_rejected",
            "Requests refused before reaching an engine, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)  # present at 0, so dashboards and alerts see the series
        # Per key *name* (a configured name or key-<digest prefix>, so bounded by the keys configured; never the key).
        self.key_requests = Counter(
            "tokenyard_key_requests",
            "Requests of a key that passed its limits, by model and HTTP status.",
            ["key", "model", "status"],
            registry=r,
        )
        self.key_prompt_tokens = Counter(
            "tokenyard_key_prompt_tokens",
            "Prompt tokens of a key's requests, as their answers reported.",
            ["key", "model"],
            registry=r,
        )
        self.key_completion_tokens = Counter(
            "tokenyard_key_completion_tokens",
            "Completion tokens of a key's requests, as their answers reported.",
            ["key", "model"],
            registry=r,
        )
        self.key_rejected = Counter(
            "tokenyard_key_rejected",
            "A key's requests refused by its rate limits or token budgets.",
            ["key", "reason"],
            registry=r,
        )
        # A model's admission queue per key name (gateway.middleware.admission's fair share).
        self.key_waiting = Gauge(
            "tokenyard_key_waiting", "A key's requests waiting for an admission slot.", ["model", "key"], registry=r
        )
        self.key_served = Counter(
            "tokenyard_key_admitted", "A key's requests given an admission slot.", ["model", "key"], registry=r
        )
        self.key_shed = Counter(
            "tokenyard_key_shed",
            "A key's requests refused by admission: queue full, wait timed out, or their place taken.",
            ["model", "key"],
            registry=r,
        )
        self.limit_store_errors = Counter(
            "tokenyard_limit_store_errors",
            "Calls to the shared limit store (Redis) that failed.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "tokenyard_queue_depth",
            "Requests waiting for an admission slot.",
            ["model"],
            registry=r,
        )
        self.store_duration = Histogram(
            "tokenyard_store_duration_seconds",
            "Response store operations, by operation and outcome (ok or error).",
            ["operation", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stored_responses = Gauge(
            "tokenyard_stored_responses",
            "Stored responses by status, as last counted by the store's maintenance loop.",
            ["status"],
            registry=r,
        )
        self.batches = Gauge(
            "tokenyard_batches",
            "Batches by status, as last counted by the batch runner.",
            ["status"],
            registry=r,
        )
        self.batch_requests = Counter(
            "tokenyard_batch_requests_total",
            "Batch lines run by this process, by outcome (completed, failed, retried).",
            ["outcome"],
            registry=r,
        )

        self._children: dict[tuple[object, ...], Any] = {}

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once: labels() builds a key and takes a lock on every call,
        and the hot path asks for the same few children on every request."""
        key = (id(metric), *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def observe_store(self, operation: str, seconds: float, failed: bool) -> None:
        self.child(self.store_duration, operation, "error" if failed else "ok").observe(seconds)

    def watch_upstreams(self, source: Callable[[], Iterable[UpstreamStat]]) -> None:
        """Router mode's per-instance metrics, read from the router's own state at scrape time."""
        self.registry.register(_UpstreamCollector(source))

    def watch_loras(self, source: Callable[[], Iterable[LoraStat]]) -> None:
        """Router mode's LoRA placement per route (loads, unloads, decisions), read at scrape time."""
        self.registry.register(_LoraCollector(source))

    def watch_routes(self, source: Callable[[], Iterable[RouteStatus]]) -> None:
        """Router mode's per-model metrics (ready instances, waiting requests), read at scrape time."""
        self.registry.register(_RouteCollector(source))

    def watch_queues(self, source: Callable[[], Iterable[tuple[str, str, float]]]) -> None:
        """Each admission queue's longest-waiting key (model, key name, seconds), read at scrape time."""
        self.registry.register(_LongestWaitCollector(source))

    def render(self, include_engine: bool) -> bytes:
        body = prometheus_client.generate_latest(self.registry)
        if include_engine:
            body += prometheus_client.generate_latest(prometheus_client.REGISTRY)
        return body


class Tally:
    """One label value's histogram as plain numbers: observations per bucket (not cumulative) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class TalliedHistogram:
    """A histogram for what is observed once per streamed chunk. prometheus_client's Histogram takes a lock
    twice per observation, a few percent of the router's CPU per streamed request (32 chunks); here `observe`
    adds to plain numbers (the event loop is the only writer, and /metrics is rendered on it too) and
    the family is built from them at scrape time. One label; the same samples as a Histogram but `_created`."""

    def __init__(
        self, name: str, documentation: str, label: str, buckets: tuple[float, ...], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = tuple(float(b) for b in buckets)
        self.children: dict[str, Tally] = {}
        registry.register(self)

    def labels(self, value: str) -> Tally:
        tally = self.children.get(value)
        if tally is None:
            tally = self.children[value] = Tally(self.bounds)
        return tally

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=[self.label])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        names = [floatToGoString(b) for b in (*self.bounds, float("inf"))]
        for value, tally in self.children.items():
            family.add_metric([value], list(zip(names, accumulate(tally.counts))), tally.total)
        yield family


@dataclass(frozen=True)
class UpstreamStat:
    model: str
    upstream: str
    healthy: bool
    breaker_state: int  # 0 closed, 1 half-open, 2 open
    retries: int
    lora_adapters: int = 0  # the LoRA adapters it lists, as of the router's last look (LoRA routes only)


@dataclass(frozen=True)
class KvStatus:
    events: list[str]  # instances routed by their KV events
    fallback: list[str]  # instances routed by `prefix` alone, for want of events
    blocks: int
    events_applied: int
    resyncs: int
    decisions: dict[str, int]  # how requests were routed: cached, bounded, spread, approximate
    tokenize_cache_entries: int = 0  # prompts whose token ids are kept for routing
    tokenize_cache_bytes: int = 0  # what they cost, as counted against kv_tokenize_cache_bytes

    def as_json(self) -> dict[str, object]:
        return {
            "policy": "kv",
            "events_instances": self.events,
            "fallback_instances": self.fallback,
            "blocks_indexed": self.blocks,
            "decisions": self.decisions,
            "tokenize_cache": {"entries": self.tokenize_cache_entries, "bytes": self.tokenize_cache_bytes},
        }


@dataclass(frozen=True)
class RouteStatus:
    """One routed model now: its instances, how many are routable, and the requests waiting for it."""

    model: str
    instances: int
    ready_instances: int
    waiting: int  # held for an instance to become ready, plus queued for an admission slot
    in_flight: int  # on an instance now
    breakers: dict[str, int]  # breaker state name -> instances in it
    kv: KvStatus | None = None  # policy kv only
    resumes: dict[str, int] = field(default_factory=dict)  # resume_streams: failed streams by outcome

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "state": "ready" if self.ready_instances else "unavailable",
            "instances": self.instances,
            "ready_instances": self.ready_instances,
            "waiting_requests": self.waiting,
            "in_flight_requests": self.in_flight,
            "breakers": self.breakers,
        }
        if self.kv is not None:
            body["kv_routing"] = self.kv.as_json()
        return body


@dataclass(frozen=True)
class LoraStat:
    """One route's LoRA placement so far (gateway.routing.lora)."""

    model: str
    loads: int
    load_failures: int
    unloads: int
    decisions: dict[str, int]  # hit, loaded, fallback -> requests placed so


class _LongestWaitCollector:
    def __init__(self, source: Callable[[], Iterable[tuple[str, str, float]]]) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # queues appear with their models' first requests

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "tokenyard_queue_longest_wait_seconds",
            "How long the request waiting longest for an admission slot has waited, by model and its key's name.",
            labels=["model", "key"],
        )
        for model, key, seconds in self.source():
            family.add_metric([model, key], seconds)
        yield family


class _LoraCollector:
    def __init__(self, source: Callable[[], Iterable[LoraStat]]) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # the routes are not known until they start, and follow the config file

    def collect(self) -> Iterator[Metric]:
        loads = CounterMetricFamily(
            "tokenyard_route_lora_loads", "LoRA adapters the router loaded on the route's instances.", labels=["model"]
        )
        failures = CounterMetricFamily(
            "tokenyard_route_lora_load_failures",
            "LoRA adapter loads on the route's instances that failed.",
            labels=["model"],
        )
        unloads = CounterMetricFamily(
            "tokenyard_route_lora_unloads", "LoRA adapters the router unloaded to make room.", labels=["model"]
        )
        placements = CounterMetricFamily(
            "tokenyard_route_lora_placements",
            "Requests for a LoRA adapter by placement: hit (an instance held it), loaded (the router loaded it "
            "first), fallback (none held it; the route's policy chose).",
            labels=["model", "decision"],
        )
        for stat in self.source():
            loads.add_metric([stat.model], float(stat.loads))
            failures.add_metric([stat.model], float(stat.load_failures))
            unloads.add_metric([stat.model], float(stat.unloads))
            for decision, count in stat.decisions.items():
                placements.add_metric([stat.model, decision], float(count))
        yield from (loads, failures, unloads, placements)


class _RouteCollector:
    def __init__(self, source: Callable[[], Iterable[RouteStatus]]) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # the routes are not known until they start, and follow the config file

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "tokenyard_route_ready_instances",
            "Instances of the model that can take requests now (healthy, breaker not open).",
            labels=["model"],
        )
        total = GaugeMetricFamily(
            "tokenyard_route_instances", "Instances of the model known to the router.", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "tokenyard_route_waiting_requests",
            "Requests for the model waiting for a ready instance or an admission slot.",
            labels=["model"],
        )
        in_flight = GaugeMetricFamily(
            "tokenyard_route_in_flight_requests",
            "Requests for the model on one of its instances now.",
            labels=["model"],
        )
        resumed = CounterMetricFamily(
            "tokenyard_route_resumed_streams",
            "Streams of a route with resume_streams on whose instance failed mid-way, by outcome: resumed (it "
            "went on on another instance to its end), failed (no continuation finished it), refused (it could "
            "not be continued faithfully).",
            labels=["model", "outcome"],
        )
        statuses = list(self.source())
        for status in statuses:
            for outcome, count in status.resumes.items():
                resumed.add_metric([status.model, outcome], float(count))
            ready.add_metric([status.model], float(status.ready_instances))
            total.add_metric([status.model], float(status.instances))
            waiting.add_metric([status.model], float(status.waiting))
            in_flight.add_metric([status.model], float(status.in_flight))
        yield from (ready, total, waiting, in_flight, resumed)
        yield from _kv_metrics([status for status in statuses if status.kv is not None])


def _kv_metrics(statuses: list[RouteStatus]) -> Iterator[Metric]:
    """Policy kv: the index's size and work, and how many instances are routed by their events."""
    instances = GaugeMetricFamily(
        "tokenyard_route_kv_instances",
        "Instances routed by their KV events (source "
        "events) or, lacking them, by the approximate prefix policy (source fallback).",
        labels=["model", "source"],
    )
    blocks = GaugeMetricFamily(
        "tokenyard_route_kv_blocks", "KV-cache blocks in the router's index, over all instances.", labels=["model"]
    )
    events = CounterMetricFamily(
        "tokenyard_route_kv_events_applied", "KV events applied to the index.", labels=["model"]
    )
    resyncs = CounterMetricFamily(
        "tokenyard_route_kv_resyncs",
        "Re-syncs of an instance's KV events after a gap in their sequence or a restart.",
        labels=["model"],
    )
    decisions = CounterMetricFamily(
        "tokenyard_route_kv_decisions",
        "Requests routed to the instance holding most of the prompt (cached), to a holder of less of it "
        "because the deeper ones were past the load bound (bounded), away from every holder (spread), or "
        "by the approximate prefix policy (approximate).",
        labels=["model", "decision"],
    )
    for status in statuses:
        kv = status.kv
        assert kv is not None
        instances.add_metric([status.model, "events"], float(len(kv.events)))
        instances.add_metric([status.model, "fallback"], float(len(kv.fallback)))
        blocks.add_metric([status.model], float(kv.blocks))
        events.add_metric([status.model], float(kv.events_applied))
        resyncs.add_metric([status.model], float(kv.resyncs))
        for decision, count in kv.decisions.items():
            decisions.add_metric([status.model, decision], float(count))
    if statuses:
        yield from (instances, blocks, events, resyncs, decisions)


class _UpstreamCollector:
    """Pulled at scrape time, so the request path updates plain ints and never a labelled metric."""

    def __init__(self, source: Callable[[], Iterable[UpstreamStat]]) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # the instances are not known until the routes start

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "upstream"]
        healthy = GaugeMetricFamily(
            "tokenyard_upstream_healthy",
            "1 while the instance passes health checks and its breaker is not open.",
            labels=labels,
        )
        retries = CounterMetricFamily(
            "tokenyard_upstream_retries",
            "Attempts on the instance that failed before the first chunk and were retried.",
            labels=labels,
        )
        breaker = GaugeMetricFamily(
            "tokenyard_breaker_state", "Circuit breaker per instance: 0 closed, 1 half-open, 2 open.", labels=labels
        )
        adapters = GaugeMetricFamily(
            "tokenyard_upstream_lora_adapters",
            "LoRA adapters the instance lists, as of the router's last look (routes with LoRA adapters).",
            labels=labels,
        )
        for stat in self.source():
            key = [stat.model, stat.upstream]
            healthy.add_metric(key, float(stat.healthy))
            retries.add_metric(key, float(stat.retries))
            breaker.add_metric(key, float(stat.breaker_state))
            adapters.add_metric(key, float(stat.lora_adapters))
        yield from (healthy, retries, breaker, adapters)
