"""RoutedAdapter: one public model served by several OpenAI-compatible instances, behind the adapter seam.

Each request goes to one instance chosen by the route's policy among the routable ones (healthy and
breaker not open). While the route has no routable instance at all (it is starting, scaled to zero,
or every instance is down), a request is held for up to hold_timeout_s until one becomes routable, then
served, the held one by one in the admission order (gateway.routing.holding); past that it gets 503
engine_unavailable (with Retry-After). A held request whose client leaves
is cancelled with its task, and so leaves the hold at once.

A failure before anything could have reached the client is retried on another instance with backoff,
within max_attempts: for a streamed request that is before its first chunk, for a whole answer
(stream=False) any time before it is complete. After that the error propagates and the
service ends the stream with an error event.

Requests reach a route as a RouteRequest, by one of two pipelines chosen by path (docs/router.md, "Bytes or
chunks"): as bytes (`relay` for chat and completions, `forward` for the tokenizer's routes, `relay_raw` for
vLLM's other paths), or as engine-neutral chunks and vectors (`generate` for /v1/responses, `embed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from engine_adapters.base import (
    NOTHING_FORWARDED,
    Chunk,
    Forwarded,
    GenerateRequest,
    Load,
    ModelInfo,
    RawBody,
    RawHead,
    RouteRequest,
    Sink,
)
from engine_adapters.openai_http import HttpTimeouts, OpenAIHttpAdapter
from engine_adapters.polling import poll_until
from gateway.errors import EngineUnavailable, GatewayError
from gateway.fair_share import claim
from gateway.held import waiting
from gateway.observability.metrics import LoraStat, RouteStatus, UpstreamStat
from gateway.protocol.paths import RELAYED_AS_BYTES
from gateway.routing.breaker import Breaker, BreakerState
from gateway.routing.discovery import Resolver, discover, resolve, watch_dns
from gateway.routing.health import probe, watch_health
from gateway.routing.holding import HeldQueue, Place
from gateway.routing.instance import Instance, Lease
from gateway.routing.kube import EndpointSliceWatch
from gateway.routing.kv import KvRouting
from gateway.routing.lora import LoraPlacement
from gateway.routing.lora import held as held_adapters
from gateway.routing.policies import make_policy
from gateway.routing.resume import ResumeCounts, refusal, resumed, watched
from gateway.routing.route_key import RouteKey
from gateway.routing.tasks import Background
from gateway.settings import RouterSettings, RouteSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class RoutedAdapter:
    def __init__(
        self,
        route: RouteSettings,
        settings: RouterSettings,
        *,
        rng: random.Random | None = None,
        resolver: Resolver = resolve,
        connect: Callable[[str], OpenAIHttpAdapter] | None = None,
    ) -> None:
        self.route = route
        self.settings = settings
        self.names = route.names
        self.upstream_model = route.upstream_model or route.name
        self.rng = rng or random.Random()
        self.policy = make_policy(route.policy, settings, self.rng)
        self.lora = LoraPlacement(route, self.policy, recheck_s=settings.health_interval_s)
        self.instances: dict[str, Instance] = {}  # url -> instance, in config order
        self._resolver = resolver
        self._key = RouteKey(route.api_key, route.api_key_file)
        self._connect = connect or self._http_adapter
        self._leases: dict[str, Lease] = {}  # request id -> the attempt in flight
        self._background = Background()
        self._closed = False
        self.held = 0  # requests waiting now for an instance to become routable
        self.resumes = ResumeCounts()  # resume_streams: watched streams that failed mid-way, by outcome
        self._held_queue = (
            HeldQueue()
        )  # released, in the admission order, whenever an instance may have become routable
        # Policy kv: the instances' KV events, followed from start to close.
        self.kv = KvRouting(route, settings, self.rng, lambda: self._key.value) if route.policy == "kv" else None
        self._timeouts = HttpTimeouts(
            connect_s=settings.connect_timeout_s,
            first_token_s=settings.first_token_timeout_s,
            idle_s=settings.idle_timeout_s,
            total_s=settings.request_timeout_s,
            probe_s=min(max(settings.health_interval_s, 1.0), 5.0),
        )

    # -- membership ---------------------------------------------------------------

    def _http_adapter(self, url: str) -> OpenAIHttpAdapter:
        return OpenAIHttpAdapter(
            url,
            self.upstream_model,
            timeouts=self._timeouts,
            api_key=self._key.value,
            lora_names=frozenset(self.route.lora_adapters),
            max_event_bytes=self.settings.max_event_bytes,
        )

    def add_instance(self, url: str, static: bool = True) -> Instance:
        breaker = Breaker(self.settings.breaker_failures, self.settings.breaker_cooldown_s)
        instance = self.instances[url] = Instance(url, self._connect(url), breaker, static=static)
        if self.kv is not None:
            self.kv.follow(url)
        return instance

    def set_discovered(self, urls: list[str]) -> None:
        """Follow discovery: add new instances, retire those gone (their requests in flight finish)."""
        wanted = set(urls)
        for url in sorted(wanted - self.instances.keys()):
            log.info("route %s: instance %s joined", self.route.name, url)
            self._spawn(self.add_instance(url, static=False).adapter.start())
            self._wake_held()
        for url, instance in list(self.instances.items()):
            if not instance.static and url not in wanted:
                log.info("route %s: instance %s left", self.route.name, url)
                del self.instances[url]
                if self.kv is not None:
                    self.kv.unfollow(url)
                self._spawn(instance.adapter.close(self.settings.request_timeout_s))

    async def _watch_key(self) -> None:
        """Follow api_key_file: when its key changes, every instance gets a client that sends the new one."""
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            if self._key.changed():
                log.info("route %s: its instance key changed", self.route.name)
                for url, old in list(self.instances.items()):  # requests in flight finish on the old client
                    new = self.instances[url] = dataclasses.replace(old, adapter=self._connect(url), in_flight=0)
                    self._spawn(new.adapter.start())
                    self._spawn(old.adapter.close(self.settings.request_timeout_s))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._background.spawn(work)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        if self.kv is not None:
            await self.kv.start()
        for url in self.route.upstreams:
            self.add_instance(url.rstrip("/"))
        if (discovery := self.route.discovery) and discovery.mode == "kubernetes":
            slices = EndpointSliceWatch(discovery, self.set_discovered)
            self._spawn(slices.run())
            if not await slices.wait_synced(discovery.interval_s):  # then they join when the list succeeds
                log.warning(
                    "route %s: no EndpointSlice list yet; starting with no discovered instances", self.route.name
                )
        elif discovery:
            self.set_discovered(await discover(discovery, self._resolver) or [])
            self._spawn(watch_dns(discovery, self._resolver, self.set_discovered))
        # A first health check now: an instance that is down at start is not routable, so requests are held
        # instead of failing on it; the instances that answer tell their max_model_len.
        await asyncio.gather(*(probe(instance) for instance in self.instances.values()))
        self._spawn(
            watch_health(
                lambda: list(self.instances.values()),
                self.settings.health_interval_s,
                self.settings.health_failures,
                on_healthy=self._wake_held,
            )
        )
        if self._key.watched:
            self._spawn(self._watch_key())

    async def close(self, drain_deadline_s: float = 0.0) -> None:
        if self._closed:  # idempotent, as the EngineAdapter seam asks of abort and close alike
            return
        self._closed = True
        # Our own in-flight count covers streams, whole answers and embeddings alike.
        deadline = time.monotonic() + drain_deadline_s
        await poll_until(lambda: not any(i.in_flight for i in self.instances.values()), lambda: deadline)
        await self._background.cancel()
        await asyncio.gather(*(i.adapter.close() for i in self.instances.values()))
        if self.kv is not None:
            await self.kv.close()

    # -- status -------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        healthy = [i.adapter.max_model_len() for i in self.instances.values() if i.healthy]
        known = [n for n in healthy if n] or [n for i in self.instances.values() if (n := i.adapter.max_model_len())]
        max_model_len = min(known) if known else None  # any instance must be able to serve the request
        names = [self.route.name, *self.route.aliases]
        return [ModelInfo(name, max_model_len, self.route.kind, root=self.upstream_model) for name in names] + [
            ModelInfo(name, max_model_len, self.route.kind, root=path, parent=self.route.name)
            for name, path in self.route.lora_adapters.items()
        ]

    def load(self) -> Load:
        instances = self.instances.values()
        return Load(
            in_flight=sum(i.in_flight for i in instances), waiting=int(sum(i.engine.waiting for i in instances))
        )

    async def check_health(self) -> None:
        if not self.routable():
            raise EngineUnavailable(f"No healthy instance serves `{self.route.name}` now.")

    def routable(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.routable()]

    def status(self, queued: int = 0) -> RouteStatus:
        """The route now, for /ready and /metrics; `queued` are its requests waiting for an admission slot."""
        instances = list(self.instances.values())
        breakers = {state.name.lower(): sum(i.breaker.state is state for i in instances) for state in BreakerState}
        return RouteStatus(
            self.route.name,
            len(instances),
            len(self.routable()),
            self.held + queued,
            sum(i.in_flight for i in instances),
            breakers,
            self.kv.status(list(self.instances)) if self.kv is not None else None,
            dict(self.resumes),
        )

    def upstream_stats(self) -> list[UpstreamStat]:
        return [
            UpstreamStat(
                self.route.name,
                i.url,
                i.healthy and i.breaker.state is not BreakerState.OPEN,
                int(i.breaker.state),
                i.retries,
                len(held_adapters(i)) if self.route.lora_adapters else 0,
            )
            for i in self.instances.values()
        ]

    def lora_stats(self) -> list[LoraStat]:
        if not self.route.lora_adapters:
            return []
        counts = self.lora.counts
        return [LoraStat(self.route.name, counts.loads, counts.load_failures, counts.unloads, dict(counts.decisions))]

    # -- requests -----------------------------------------------------------------

    async def _lease(self, attempts: _Attempts) -> Lease:
        trace = attempts.request.forwarded.trace
        if trace is None:
            return await self._choose(attempts)
        with trace.span(
            "tokenyard.route", {"tokenyard.route.name": self.route.name, "tokenyard.route.policy": self.route.policy}
        ) as span:
            held = not self.routable()
            lease = await self._choose(attempts)
            span.set_attributes(
                {
                    "tokenyard.route.instance": lease.instance.url,
                    "tokenyard.route.held": held,
                    "tokenyard.route.candidates": 1 + sum(i.url not in attempts.tried for i in self.routable()),
                    "tokenyard.route.reason": self._why(attempts.request),
                }
            )
            return lease

    def _why(self, request: RouteRequest) -> str:
        """Why the policy chose as it did, in a few words (the route span's reason)."""
        policy = self.route.policy
        if policy == "session":
            return "the session key's instance" if request.routing_key else "no session key: least loaded"
        return {
            "prefix": "the prompt prefix's instance, unless it is too loaded",
            "round-robin": "next in turn",
            "power-of-two": "the less loaded of two picked at random",
        }.get(policy, "the least loaded")

    async def _choose(self, attempts: _Attempts) -> Lease:
        place = None
        if not self.routable():
            place = await self._hold(attempts.hold_until, attempts.hold_s)
            attempts.tried.clear()  # the instances changed while it was held
        try:
            candidates = [i for i in self.routable() if i.url not in attempts.tried]
            if not candidates:
                raise attempts.error or EngineUnavailable(f"No healthy instance serves `{attempts.request.model}` now.")
            model = attempts.request.model
            if (self.lora.serves(model) or self.kv is not None) and place is not None:
                self._held_queue.pass_on(place)  # these choices may wait (for room, for tokens): not the others
            if self.lora.serves(model):
                instance = await self.lora.choose(candidates, attempts.request, attempts.hold_until)
            elif self.kv is not None:
                instance = await self.kv.choose(candidates, attempts.request, lambda i: i.adapter)
            else:
                instance = self.policy.choose(candidates, attempts.request)
            attempts.tried.add(instance.url)
            self.lora.track(instance, model)
            return Lease(instance, on_release=lambda: self.lora.release(instance, model))
        finally:
            if place is not None:  # chosen (or failed): the next held request's turn, if not passed on yet
                self._held_queue.pass_on(place)

    def hold_timeout_s(self) -> float:
        return self.settings.hold_timeout_s if self.route.hold_timeout_s is None else self.route.hold_timeout_s

    async def _hold(self, until: float, hold_s: float) -> Place:
        """Wait for this request's turn with an instance routable, or raise at `until` (monotonic), `hold_s`
        after the request came. The held get their turns in the admission order (gateway.routing.holding) when
        an instance joins or passes a health check again, and re-check every health interval (a breaker's
        cooldown ends). The caller passes the turn on once it has chosen its instance."""
        self.held += 1
        try:
            with waiting():  # its body's bytes count against limits.max_held_bytes while it waits
                return await self._wait_routable(until, hold_s)
        finally:
            self.held -= 1

    async def _wait_routable(self, until: float, hold_s: float) -> Place:
        place = self._held_queue.join(claim())
        try:
            while True:
                if place.turn.done():
                    if self.routable():
                        return place
                    place = self._held_queue.hold_again(place)  # gone again before its turn came
                left = until - time.monotonic()
                if left <= 0:  # a client retrying soon after a long hold would be held again: say how long
                    raise EngineUnavailable(
                        f"No instance of `{self.route.name}` became ready within {hold_s:g} s."
                        if hold_s
                        else f"No healthy instance serves `{self.route.name}` now.",
                        retry_after_s=max(hold_s, self.settings.health_interval_s),
                    )
                await asyncio.wait([place.turn], timeout=min(left, self.settings.health_interval_s))
                if not place.turn.done() and self.routable():  # routable unannounced: a breaker's cooldown ended
                    self._held_queue.release()
        except BaseException:
            self._held_queue.leave(place)
            raise

    def _wake_held(self) -> None:
        self._held_queue.release()  # the held get their turns one by one, most urgent first

    async def _backoff(self, attempt: int) -> None:
        # Exponential with jitter, so retries from many requests do not arrive together.
        await asyncio.sleep(self.settings.retry_backoff_s * 2 ** (attempt - 1) * (0.5 + self.rng.random()))

    @contextlib.contextmanager
    def _holding(self, lease: Lease, request_id: str | None = None) -> Iterator[None]:
        """One attempt: abortable by request id while it runs; its outcome goes to the instance's breaker."""
        if request_id:
            self._leases[request_id] = lease
        outcome: BaseException | None = None
        try:
            yield
        except BaseException as exc:  # GeneratorExit or CancelledError when the client left: no verdict
            outcome = exc
            raise
        finally:
            if request_id:
                self._leases.pop(request_id, None)
            lease.release(outcome)

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        return self._routed(
            request.routed(),
            lambda adapter, sent: adapter.generate(
                request
                if sent.forwarded is request.forwarded
                else dataclasses.replace(request, forwarded=sent.forwarded)
            ),
        )

    def relay(
        self, request: RouteRequest, path: str, body: dict[str, Any], sink: Sink | None = None
    ) -> AsyncIterator[bytes]:
        """The client's request passed through to one instance; its SSE answer back as bytes (base.Relay).
        With resume_streams on, a streamed one may go on on another instance (gateway.routing.resume)."""
        if self.route.resume_streams and request.stream:
            return self._resumable(request, path, body, sink)
        return self._relay_once(request, path, body, sink)

    def _resumable(
        self, request: RouteRequest, path: str, body: dict[str, Any], sink: Sink | None
    ) -> AsyncIterator[bytes]:
        chat = request.messages is not None
        if refusal(chat, body) is not None:  # relayed as before, splice included; only its failures are counted
            return watched(self._relay_once(request, path, body, sink), self.resumes, self.route.name)

        def open_(sent: dict[str, Any], served: set[str]) -> AsyncIterator[bytes]:
            return self._relay_once(request, path, sent, None, served)

        return resumed(chat, body, open_, self.resumes, self.route.name, self.settings.max_attempts)

    def _relay_once(
        self,
        request: RouteRequest,
        path: str,
        body: dict[str, Any],
        sink: Sink | None,
        served: set[str] | None = None,
    ) -> AsyncIterator[bytes]:
        """One relay of `body` on the route, on an instance not in `served` (which it joins)."""
        return self._routed(request, lambda adapter, sent: adapter.relay(sent, path, body, sink), tried=served)

    def passes_path(self, path: str) -> bool:
        return path in RELAYED_AS_BYTES or path in self.route.passthrough_paths

    def relay_raw(self, request: RouteRequest, path: str, body: RawBody) -> AsyncIterator[RawHead | bytes]:
        """A request passed through as it came (base.RawRelay), retried elsewhere before its answer's head
        while its body can still be sent again (an upload streamed from the client cannot)."""
        return self._routed(
            request, lambda adapter, sent: adapter.relay_raw(sent, path, body), replayable=lambda: not body.consumed
        )

    async def forward(self, request: RouteRequest, path: str, body: dict[str, Any]) -> bytes:
        """A JSON request that generates nothing, to one instance, retried like generation; the answer's bytes."""

        async def answer(adapter: OpenAIHttpAdapter, sent: RouteRequest) -> AsyncIterator[bytes]:
            yield await adapter.forward(sent, path, body)

        async with contextlib.aclosing(self._routed(request, answer)) as answers:  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
            async for whole in answers:
                return whole
        raise EngineUnavailable(f"No instance answered for `{request.model}`.")  # _routed yields or raises

    async def _routed(
        self,
        request: RouteRequest,
        open_: Callable[[OpenAIHttpAdapter, RouteRequest], AsyncIterator[T]],
        replayable: Callable[[], bool] = lambda: True,
        tried: set[str] | None = None,
    ) -> AsyncIterator[T]:
        attempts = _Attempts(self, request, tried)
        while (lease := await attempts.next()) is not None:
            delivered = False
            try:
                with self._holding(lease, request.request_id), attempts.traced(lease) as sent:
                    async with contextlib.aclosing(open_(lease.instance.adapter, sent)) as source:  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
                        if request.stream:
                            async for chunk in source:
                                delivered = True
                                yield chunk
                        else:  # nothing reaches the client before the end, so all of it can still be retried
                            whole = [chunk async for chunk in source]
                            delivered = True
                            for chunk in whole:
                                yield chunk
                return
            except GatewayError as exc:
                if delivered or not replayable() or not attempts.retry(lease, exc):
                    self._failed(request)
                    raise
        self._failed(request)
        raise attempts.last_error()

    def _failed(self, request: RouteRequest) -> None:
        """A request that failed in the end: the prompt's token ids kept for routing it are not kept for the next
        (a client sending prompts that instances refuse pins nothing in the kv policy's cache)."""
        if self.kv is not None:
            self.kv.tokens.forget(request)

    async def abort(self, request_id: str) -> None:
        lease = self._leases.pop(request_id, None)
        if lease is None:
            return
        try:
            await lease.instance.adapter.abort(request_id)
        finally:
            lease.release(asyncio.CancelledError())

    async def embed(
        self, request_id: str, model: str, inputs: list[str] | list[list[int]], forwarded: Forwarded = NOTHING_FORWARDED
    ) -> tuple[list[list[float]], int]:
        first = inputs[0] if inputs else ""
        request = RouteRequest(request_id, model, first if isinstance(first, str) else list(first), forwarded=forwarded)
        attempts = _Attempts(self, request)
        while (lease := await attempts.next()) is not None:
            try:
                with self._holding(lease), attempts.traced(lease) as sent:
                    return await lease.instance.adapter.embed(request_id, model, inputs, sent.forwarded)
            except GatewayError as exc:
                if not attempts.retry(lease, exc):
                    raise
        raise attempts.last_error()


# How long before the client's own read timeout a held request is answered, so that our 503 reaches it first.
_READ_TIMEOUT_MARGIN_S = 1.0


def hold_budget_s(hold_timeout_s: float, read_timeout_s: float | None) -> float:
    """How long a request may be held: the route's hold, cut short to end before the client's read timeout
    (a held request sends nothing, so the client would give up at that timeout and retry blind)."""
    if read_timeout_s is None:
        return hold_timeout_s
    return max(0.0, min(hold_timeout_s, read_timeout_s - min(_READ_TIMEOUT_MARGIN_S, read_timeout_s / 2)))


class _Attempts:
    """One request's retry budget: up to max_attempts tries, each on an instance not tried yet, with backoff."""

    def __init__(self, route: RoutedAdapter, request: RouteRequest, tried: set[str] | None = None) -> None:
        self.route, self.request = route, request
        self.tried: set[str] = set() if tried is None else tried  # given: shared with the stream's continuations
        self.count = 0
        self.error: GatewayError | None = None
        self.hold_s = hold_budget_s(route.hold_timeout_s(), request.forwarded.read_timeout_s)
        self.hold_until = time.monotonic() + self.hold_s

    async def next(self) -> Lease | None:
        if self.count >= self.route.settings.max_attempts:
            return None
        if self.count:
            await self.route._backoff(self.count)
        self.count += 1
        return await self.route._lease(self)

    @contextlib.contextmanager
    def traced(self, lease: Lease) -> Iterator[RouteRequest]:
        """One attempt, as a span while tracing is on: what goes to the instance then carries that span's
        traceparent, so the instance's spans nest under it."""
        forwarded = self.request.forwarded
        if forwarded.trace is None:
            yield self.request
            return
        retry_of = self.error.message if self.error is not None else None
        with forwarded.trace.attempt(forwarded, lease.instance.url, self.count, retry_of) as sent:
            yield dataclasses.replace(self.request, forwarded=sent)

    def retry(self, lease: Lease, exc: GatewayError) -> bool:
        """May the request go on to another instance after this failure?"""
        if not exc.retryable:
            return False
        self.error = exc
        lease.instance.retries += 1
        log.warning(
            "route %s: %s failed before any output (%s); retrying",
            self.route.route.name,
            lease.instance.url,
            exc.message,
        )
        return True

    def last_error(self) -> GatewayError:
        assert self.error is not None  # the loop ends early only after a retryable failure
        return self.error
