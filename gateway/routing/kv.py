"""Policy `kv`: send a request to the instance whose KV cache holds the longest run of its prompt's blocks.

The stages, per request: the prompt's token ids as the engine will see them (chat template applied: a local
tokenizer of the model when the route names one, else an instance's /tokenize, the instances taking turns,
cached briefly); their full blocks keyed as the index keys stored blocks (kv_index.block_keys); each
instance's count of leading blocks it holds; the deepest instance, unless taking the request would put it
past the load bound (policies.LoadBound, which `prefix` uses too), then the deepest within it, then the
least loaded. A hot prefix also spreads before that: when
the chosen holder is above the mean load and the prefix it holds has had more of the recent requests than
its holders could carry within `kv_spread_load_factor` times the mean each, the request goes to the least
loaded instance, which then holds the prefix too (bounded loads on each prefix's own traffic). A prompt that
no instance holds yet goes by the `prefix` policy's ring, so concurrent requests for a new prefix meet on one
instance.

An instance whose events we do not have (no endpoint found, not yet synced) is routed by `prefix` alone;
/ready lists which instances are which, and tokenyard_route_kv_instances counts them.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import random
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import httpx
import orjson

from engine_adapters.base import RouteRequest
from engine_adapters.openai_http import OpenAIHttpAdapter
from gateway.errors import GatewayError
from gateway.observability.metrics import KvStatus
from gateway.routing.kv_events import KvSubscriber, discover_endpoints, endpoint_for, new_context
from gateway.routing.kv_index import Key, KvIndex, block_keys
from gateway.routing.policies import C, LeastLoaded, LoadBound, Prefix
from gateway.settings import RouterSettings, RouteSettings

log = logging.getLogger(__name__)


_ENTRY_BYTES = 160  # an entry's own cost besides its ids: its key, its tuple, its place in the dict


def _entry_bytes(ids: array[int]) -> int:
    return _ENTRY_BYTES + ids.itemsize * len(ids)


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
    """The choice itself, given the prompt's token ids (None: unknown, so `prefix` decides)."""

    def __init__(self, index: KvIndex, rng: random.Random, settings: RouterSettings) -> None:
        self.index, self.rng = index, rng
        self.bound = LoadBound.of(settings)
        self.spread_factor = settings.kv_spread_load_factor
        self.traffic = PrefixTraffic()
        self.approximate = Prefix(rng, settings.prefix_chars, self.bound)
        self.least_loaded = LeastLoaded(rng)
        self.decisions = dict.fromkeys(DECISIONS, 0)

    def choose(self, candidates: Sequence[C], request: RouteRequest, tokens: list[int] | None = None) -> C:
        by_key = {c.key: c for c in candidates}  # each instance's key read once: this runs per request
        depth, keys = self.depths(by_key, tokens) if tokens else ({}, {})
        held = {key: blocks for key, blocks in depth.items() if blocks}
        if not held:
            self.decisions["approximate"] += 1
            return self.approximate.choose(candidates, request)
        load = {key: c.score() for key, c in by_key.items()}  # read once: each reads the instance's counters
        total = sum(load.values())
        mean = (total + 1) / len(candidates)  # with this request
        capacity = self.bound.capacity(total, len(candidates))
        fits = [key for key in held if load[key] + 1 <= capacity]
        if not fits:  # a hot prefix: its holders are full, so it spreads
            self.decisions["spread"] += 1
            return self.least_loaded.choose(candidates, request)
        deepest = max(held[key] for key in fits)
        top = [key for key in fits if held[key] == deepest]
        least = min(load[key] for key in top)
        best = self.rng.choice([key for key in top if load[key] == least])  # ties drawn, never the first listed
        share = self.traffic.add(keys[best][deepest - 1])
        if least + 1 > math.ceil(mean) and self._too_few(len(candidates), held, best, share):
            self.decisions["spread"] += 1
            return self.least_loaded.choose(candidates, request)
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

    def depths(self, instances: Iterable[str], tokens: list[int]) -> tuple[dict[str, int], dict[str, list[Key]]]:
        """Leading blocks of the prompt each synced instance of `instances` holds (instances may differ in
        block size), and the prompt's block keys at each instance's block size."""
        depth: dict[str, int] = {}
        keys: dict[str, list[Key]] = {}
        for size, synced in self.index.by_block_size(instances).items():
            sized = block_keys(tokens, size)
            depth.update(self.index.matched(sized, synced))
            keys.update(dict.fromkeys(synced, sized))
        return depth, keys


class PromptTokens:
    """A prompt's token ids, from a local tokenizer or an instance's /tokenize; recent answers are kept.

    The cache is bounded three ways, all settings: entries (kv_tokenize_cache_size), bytes of token ids
    (kv_tokenize_cache_bytes: 8 a token, plus _ENTRY_BYTES an entry) and age (kv_tokenize_cache_ttl_s: entries
    are dropped oldest first on every call, looked up or not). An entry is keyed by a digest of the prompt,
    never the prompt itself, and is dropped again when the request it was made for fails (`forget`): a client
    sending prompts an instance refuses pins nothing here."""

    def __init__(self, settings: RouterSettings, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self.timeout_s = settings.kv_tokenize_timeout_s
        self.ttl_s = settings.kv_tokenize_cache_ttl_s
        self.size = settings.kv_tokenize_cache_size
        self.max_bytes = settings.kv_tokenize_cache_bytes
        self.reuse_turns = settings.kv_tokenize_reuse_turns
        self.bytes = 0  # what the cache holds now, as counted against max_bytes
        self._cache: OrderedDict[bytes, tuple[float, array[int]]] = OrderedDict()  # oldest first

    @staticmethod
    def _body_of(messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {"messages": messages, "add_generation_prompt": True}

    @classmethod
    def _body(cls, request: RouteRequest) -> dict[str, Any]:
        return cls._body_of(request.messages) if request.messages is not None else {"prompt": request.prompt}

    @classmethod
    def _key(cls, request: RouteRequest) -> bytes:
        return hashlib.sha256(orjson.dumps(cls._body(request))).digest()

    async def ids(self, request: RouteRequest, instance: OpenAIHttpAdapter) -> list[int] | None:
        if request.messages is None and not isinstance(request.prompt, str):
            return list(request.prompt) if request.prompt else None  # already token ids
        self._expire(time.monotonic())
        key = self._key(request)
        if (hit := self._cache.get(key)) is not None:
            return hit[1].tolist()
        if self.reuse_turns and (earlier := self._previous_turn(request)) is not None:
            return earlier
        body = self._body(request)
        ids = self._local(request) if self.tokenizer is not None else await self._remote(body, request, instance)
        if ids is not None:
            self._keep(key, ids)
        return ids

    def _previous_turn(self, request: RouteRequest) -> list[int] | None:
        """A chat's next turn (its messages so far, an answer, a new question) routed on the ids kept for the
        turn before: with the generation prompt, those are the start of this turn's own ids in the usual
        chat templates, and they reach past everything an instance may hold of the session but the last
        answer. Not kept under this turn's key, so the turn after asks again and the ids never fall more
        than one turn behind."""
        messages = request.messages
        if not messages or len(messages) < 3 or messages[-2].get("role") != "assistant":
            return None
        earlier = self._cache.get(hashlib.sha256(orjson.dumps(self._body_of(messages[:-2]))).digest())
        return earlier[1].tolist() if earlier is not None else None

    def forget(self, request: RouteRequest) -> None:
        """The request these ids were for failed: they are not kept for the next."""
        if self._cache and (request.messages is not None or isinstance(request.prompt, str)):
            self._drop(self._key(request))

    def _keep(self, key: bytes, ids: list[int]) -> None:
        try:
            packed = array("q", ids)
        except OverflowError:  # not ids an engine makes: used once, never kept
            return
        cost = _entry_bytes(packed)
        if self.size == 0 or cost > self.max_bytes:
            return
        self._drop(key)
        self._cache[key] = (time.monotonic(), packed)
        self.bytes += cost
        while len(self._cache) > self.size or self.bytes > self.max_bytes:
            self._drop(next(iter(self._cache)))

    def _drop(self, key: bytes) -> None:
        if (entry := self._cache.pop(key, None)) is not None:
            self.bytes -= _entry_bytes(entry[1])

    def _expire(self, now: float) -> None:
        while self._cache:
            oldest = next(iter(self._cache))
            if now - self._cache[oldest][0] < self.ttl_s:
                return
            self._drop(oldest)

    def status(self) -> tuple[int, int]:
        """(entries, bytes) kept now."""
        return len(self._cache), self.bytes

    def _local(self, request: RouteRequest) -> list[int] | None:
        """As the engine renders it (engine_adapters.vllm_local.prompt_ids): the template writes BOS itself."""
        try:
            if request.messages is not None:
                text = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
                return list(self.tokenizer.encode(text, add_special_tokens=False))
            return list(self.tokenizer.encode(request.prompt))
        except Exception as exc:  # a template that cannot render these messages: the instance will say so
            log.debug("local tokenizer failed: %s", exc)
            return None

    async def _remote(
        self, body: dict[str, Any], request: RouteRequest, instance: OpenAIHttpAdapter
    ) -> list[int] | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                # Under the request's model name only: the routing's own call, not the client's request.
                answer = await instance.forward(RouteRequest(request.request_id, request.model), "/tokenize", body)
            tokens = orjson.loads(answer).get("tokens")
        except (GatewayError, TimeoutError, ValueError, AttributeError) as exc:
            log.debug("/tokenize for routing failed: %s", exc)
            return None
        if not isinstance(tokens, list):
            return None
        try:
            array("q", tokens)  # token ids are ints (checked at C speed: this runs on every routed request)
        except (TypeError, OverflowError):
            return None
        return tokens


def load_tokenizer(path: str) -> Any:
    """The model's tokenizer, with transformers when it is installed; None otherwise."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        log.warning("kv_tokenizer %s: transformers is not installed; tokenizing on the instances", path)
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        log.warning("kv_tokenizer %s cannot be loaded (%s); tokenizing on the instances", path, exc)
        return None


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
        tracked = [c for c in candidates if self.index.synced(c.key)]
        if not tracked:
            self.policy.decisions["approximate"] += 1
            return self.policy.approximate.choose(candidates, request)
        asked = tracked[next(self._asked) % len(tracked)]
        return self.policy.choose(candidates, request, await self.tokens.ids(request, tokenizer(asked)))

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
