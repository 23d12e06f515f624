"""Policy `kv`: send a request to the instance whose KV cache holds the longest run of its prompt's blocks.

The stages, per request: the prompt's token ids as the engine will see them (chat template applied: a local
tokenizer of the model when the route names one, else an instance's /tokenize, the instances taking turns,
reused where they can be: gateway.routing.kv_tokens); their full blocks keyed as the index keys stored blocks
(kv_index.block_keys); each instance's count of leading blocks it holds; the deepest instance, unless taking
the request would put it past the load bound (policies.LoadBound, which `prefix` uses too), then the deepest
within it, then the least loaded. A hot prefix also spreads before that: when the chosen holder is above the
mean load and the prefix it holds has had more of the recent requests than its holders could carry within
`kv_spread_load_factor` times the mean each, the request goes to the least loaded instance, which then holds
the prefix too (bounded loads on each prefix's own traffic). A prompt that no instance holds yet goes by the
`prefix` policy's ring, so concurrent requests for a new prefix meet on one instance.

An instance whose events we do not have (no endpoint found, not yet synced) is routed by `prefix` alone;
/ready lists which instances are which, and tokenyard_route_kv_instances counts them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import httpx

from engine_adapters.base import RouteRequest
from engine_adapters.openai_http import OpenAIHttpAdapter
from gateway.observability.metrics import KvStatus
from gateway.routing.kv_events import KvSubscriber, discover_endpoints, endpoint_for, new_context
from gateway.routing.kv_index import KvIndex
from gateway.routing.kv_tokens import Prompt, PromptTokens, load_tokenizer
from gateway.routing.policies import C, LoadBound, Prefix, least_loaded
from gateway.settings import RouterSettings, RouteSettings

log = logging.getLogger(__name__)


# How a request was routed: to the instance holding most of its prompt (cached), to a holder of less of it
# because the deeper ones were past the load bound (bounded), away from every holder (spread), or by `prefix`
# when no synced instance held any of it, or its tokens were not known (approximate).
DECISIONS = ("cached", "bounded", "spread", "approximate")


class PrefixTraffic:
    """Each prefix's share of the requests lately: a count per prefix that halves every `half_life_s`, beside
    the count of all requests; at most `size` prefixes are counted, the least recently seen dropped first."""

    def __init__(self, half_life_s: float = 10.0, size: int = 4096, clock: Callable[[], float] = time.monotonic):
        self.half_life_s, self.size, self.clock = half_life_s, size, clock
        self.total = (0.0, clock())
        self._counts: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # (count, when), oldest first

    def _decayed(self, entry: tuple[float, float], now: float) -> float:
        return entry[0] * 0.5 ** ((now - entry[1]) / self.half_life_s)

    def add(self, prefix: Hashable) -> tuple[float, float]:
        """Count a request for `prefix`; (its count, all requests' count) since, both decayed."""
        now = self.clock()
        total = self._decayed(self.total, now) + 1
        self.total = (total, now)
        count = self._decayed(self._counts.pop(prefix, (0.0, now)), now) + 1
        self._counts[prefix] = (count, now)
        if len(self._counts) > self.size:
            self._counts.popitem(last=False)
        return count, total


class KvPrefix:
    """The choice itself, given the prompt (None: its token ids are unknown, so `prefix` decides)."""

    def __init__(self, index: KvIndex, rng: random.Random, settings: RouterSettings) -> None:
        self.index, self.rng = index, rng
        self.bound = LoadBound.of(settings)
        self.spread_factor = settings.kv_spread_load_factor
        self.traffic = PrefixTraffic()
        self.approximate = Prefix(rng, settings.prefix_chars, self.bound)
        self.decisions = dict.fromkeys(DECISIONS, 0)

    def choose(
        self,
        candidates: Sequence[C],
        request: RouteRequest,
        prompt: Prompt | None = None,
        synced: dict[int, set[str]] | None = None,
    ) -> C:
        """`synced`: the candidates' synced instances by block size (KvIndex.by_block_size), if known.

        This runs for every routed request, over every instance, each pass costing more in memory touched
        than in instructions: each instance's key and load are read once, in one pass."""
        if synced is None:
            synced = self.index.by_block_size(c.key for c in candidates)
        held = self.held(synced, prompt) if prompt is not None else {}
        if not held:
            self.decisions["approximate"] += 1
            return self.approximate.choose(candidates, request)
        by_key: dict[str, C] = {}
        load: dict[str, float] = {}
        for c in candidates:
            by_key[key := c.key] = c
            load[key] = c.score()
        total = sum(load.values())
        mean = (total + 1) / len(candidates)  # with this request
        capacity = self.bound.capacity(total, len(candidates))
        fits = [key for key in held if load[key] + 1 <= capacity]
        if not fits:  # a hot prefix: its holders are full, so it spreads
            self.decisions["spread"] += 1
            return by_key[least_loaded(load, self.rng)]
        deepest = max(held[key] for key in fits)
        top = [key for key in fits if held[key] == deepest]
        least = min(load[key] for key in top)
        best = self.rng.choice([key for key in top if load[key] == least])  # ties drawn, never the first listed
        size = self.index.block_size(best)
        assert prompt is not None and size is not None  # `best` holds blocks of it, so it is synced
        share = self.traffic.add(prompt.keys(size)[deepest - 1])
        if least + 1 > math.ceil(mean) and self._too_few(len(candidates), held, best, share):
            self.decisions["spread"] += 1
            return by_key[least_loaded(load, self.rng)]
        self.decisions["cached" if deepest == max(held.values()) else "bounded"] += 1
        return by_key[best]

    def _too_few(self, instances: int, held: dict[str, int], best: str, share: tuple[float, float]) -> bool:
        """Whether the prefix `best` holds has more of the recent requests than its holders can carry within
        `spread_factor` times the mean each: then one more instance takes it (bounded loads on the prefix's
        own traffic), so a hot prefix reaches as many instances as its share needs."""
        count, total = share
        if total < 2 * instances:  # too few requests seen to tell a share
            return False
        holders = sum(1 for blocks in held.values() if blocks >= held[best])
        return count * instances > holders * self.spread_factor * total

    def held(self, synced: dict[int, set[str]], prompt: Prompt) -> dict[str, int]:
        """Leading blocks of the prompt each instance of `synced` holds (keyed at its block size: instances may
        differ), for those holding any."""
        depth: dict[str, int] = {}
        for size, instances in synced.items():
            if size:  # 0: nothing cached yet
                depth.update(self.index.matched(prompt.keys(size), instances, prompt.holders(size)))
        return depth


class KvRouting:
    """A route's KV index, its subscribers (one per instance) and the choice; owned by the RoutedAdapter."""

    def __init__(
        self, route: RouteSettings, settings: RouterSettings, rng: random.Random, key: Callable[[], str | None]
    ) -> None:
        self.route, self.settings = route, settings
        self.index = KvIndex(settings.kv_max_blocks)
        self.policy = KvPrefix(self.index, rng, settings)
        self.tokens = PromptTokens(settings)
        self.key = key  # the route's instance key, sent with the /v1/models that tells the endpoints
        self._context = new_context()
        self._follows: dict[str, asyncio.Task[None]] = {}
        self._asked = itertools.count()  # whose /tokenize is asked next, in turn
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=settings.connect_timeout_s))

    async def start(self) -> None:
        if self.route.kv_tokenizer:
            self.tokens.tokenizer = await asyncio.to_thread(load_tokenizer, self.route.kv_tokenizer)

    def follow(self, url: str) -> None:
        if url not in self._follows:
            self._follows[url] = asyncio.ensure_future(self._follow(url))

    def unfollow(self, url: str) -> None:
        if (task := self._follows.pop(url, None)) is not None:
            task.cancel()
        self.index.forget(url)

    async def close(self) -> None:
        for task in self._follows.values():
            task.cancel()
        await asyncio.gather(*self._follows.values(), return_exceptions=True)
        self._follows.clear()
        await self._client.aclose()
        self._context.destroy(linger=0)

    async def _endpoints(self, url: str) -> tuple[str, str | None] | None:
        pattern = self.route.kv_events
        if pattern is not None:
            replay = f"tcp://*:{pattern.replay_port}" if pattern.replay_port else None
            return endpoint_for(f"tcp://*:{pattern.port}", url), endpoint_for(replay, url) if replay else None
        headers = {"authorization": f"Bearer {key}"} if (key := self.key()) else {}
        return await discover_endpoints(self._client, url, self.route.upstream_model or self.route.name, headers)

    async def _follow(self, url: str) -> None:
        """Find the instance's endpoints, then follow its events for as long as it is in the route."""
        while True:
            endpoints = await self._endpoints(url)
            if endpoints is None:
                await asyncio.sleep(self.settings.kv_discovery_interval_s)
                continue
            log.info("route %s: following the KV events of %s at %s", self.route.name, url, endpoints[0])
            try:
                await KvSubscriber(self.index, url, *endpoints, context=self._context).run()
            except Exception as exc:  # a socket error: start over, routing by `prefix` meanwhile
                log.warning("route %s: the KV events of %s stopped (%s); starting over", self.route.name, url, exc)
            self.index.drop(url)
            await asyncio.sleep(self.settings.kv_discovery_interval_s)

    async def choose(
        self, candidates: Sequence[C], request: RouteRequest, tokenizer: Callable[[C], OpenAIHttpAdapter]
    ) -> C:
        """The instance for the request; `tokenizer` gives the instance to ask for the prompt's ids, the synced
        instances taking turns (a retry finds them in the cache)."""
        synced = self.index.by_block_size(c.key for c in candidates)
        if not synced:
            self.policy.decisions["approximate"] += 1
            return self.policy.approximate.choose(candidates, request)

        def asked() -> OpenAIHttpAdapter:  # only when /tokenize is asked: most prompts are kept
            tracked = [key for keys in synced.values() for key in keys]
            turn = tracked[next(self._asked) % len(tracked)]
            return tokenizer(next(c for c in candidates if c.key == turn))

        prompt = await self.tokens.prompt(request, asked, [size for size in synced if size])
        return self.policy.choose(candidates, request, prompt, synced)

    def status(self, urls: list[str]) -> KvStatus:
        synced = [url for url in urls if self.index.synced(url)]
        return KvStatus(
            synced,
            [url for url in urls if url not in synced],
            self.index.size,
            self.index.events_applied,
            self.index.resyncs,
            dict(self.policy.decisions),
            *self.tokens.status(),
        )
