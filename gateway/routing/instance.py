"""One upstream instance as the router sees it: its adapter, breaker, health and load."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine_adapters.openai_http import EngineLoad, OpenAIHttpAdapter
from gateway.errors import EngineUnavailable, GatewayError, RateLimited
from gateway.routing.breaker import Breaker

# How much the engine's own gauges weigh against one request of ours in flight. Waiting requests are
# queued work ahead of ours; a full KV cache means preemption is near.
WAITING_WEIGHT = 2.0
KV_CACHE_WEIGHT = 4.0


@dataclass(slots=True)  # read for every candidate of every routed request
class Instance:
    url: str
    adapter: OpenAIHttpAdapter
    breaker: Breaker
    healthy: bool = True  # optimistic until the first health check: passive signals catch a dead one
    failed_checks: int = 0  # health checks failed in a row
    in_flight: int = 0  # our own count, exact and fresh
    engine: EngineLoad = field(default_factory=EngineLoad)  # scraped every health interval, so stale
    retries: int = 0  # attempts here that failed before the first chunk and were retried
    static: bool = True  # from the config (kept) or from discovery (comes and goes)

    @property
    def key(self) -> str:
        return self.url

    def routable(self) -> bool:
        return self.healthy and self.breaker.available()

    def score(self) -> float:
        # `running` includes our own requests, so the larger of the two, not the sum.
        engine, in_flight = self.engine, self.in_flight
        busy = in_flight if in_flight > engine.running else engine.running
        return busy + WAITING_WEIGHT * engine.waiting + KV_CACHE_WEIGHT * engine.kv_cache_usage

    def report(self, exc: BaseException | None) -> None:
        """Feed the breaker one outcome: None is a success; a 429, a 500 or a client's leaving is no verdict."""
        if exc is None:
            self.breaker.success()
        elif is_instance_failure(exc):
            self.breaker.failure()
        elif isinstance(exc, GatewayError) and exc.status < 500 and not isinstance(exc, RateLimited):
            self.breaker.success()  # a 4xx answer proves the instance works
        else:
            self.breaker.release()


def is_instance_failure(exc: BaseException) -> bool:
    """What says the instance is unwell, all EngineUnavailable: connect errors, timeouts, broken streams,
    502/503/504 and a dead engine. A plain 500 is not: it may be one request's content (a poison prompt),
    and counting it would let one client open the breaker for everyone."""
    return isinstance(exc, EngineUnavailable)


class Lease:
    """One attempt's hold on an instance; released exactly once, by whichever comes first."""

    def __init__(self, instance: Instance, on_release: Callable[[], None] | None = None) -> None:
        self.instance = instance
        self.released = False
        self.on_release = on_release  # the LoRA placement's count of the adapter's requests here
        instance.in_flight += 1
        instance.breaker.acquire()

    def release(self, exc: BaseException | None) -> None:
        if not self.released:
            self.released = True
            self.instance.in_flight -= 1
            self.instance.report(exc)
            if self.on_release is not None:
                self.on_release()
