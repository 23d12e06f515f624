"""How a route picks one of its instances for a request.

Every policy chooses among the candidates it is given: the routable instances not yet tried for this
request. Affinity policies hash onto a ring of the candidates, so an instance that is excluded (or
leaves) moves only its own keys, to their next instance on the ring.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from engine_adapters.base import RouteRequest
from gateway.settings import RouterSettings

VIRTUAL_NODES = 160  # per instance: enough that each holds close to 1/N of the keys


class Candidate(Protocol):
    @property
    def key(self) -> str: ...

    def score(self) -> float: ...


C = TypeVar("C", bound=Candidate)
K = TypeVar("K")


class Policy(Protocol):
    def choose(self, candidates: Sequence[C], request: RouteRequest) -> C: ...


def _hash(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing with virtual nodes."""

    def __init__(self, keys: Sequence[str], virtual_nodes: int = VIRTUAL_NODES) -> None:
        points = sorted((_hash(f"{key}#{i}"), key) for key in keys for i in range(virtual_nodes))
        self._hashes = [h for h, _ in points]
        self._owners = [key for _, key in points]

    def owner(self, routing_key: str) -> str:
        slot = bisect.bisect(self._hashes, _hash(routing_key)) % len(self._hashes)
        return self._owners[slot]


class _Rings:
    """Rings cached by membership: building one costs N x VIRTUAL_NODES hashes, a lookup one."""

    def __init__(self) -> None:
        self._rings: dict[tuple[str, ...], HashRing] = {}

    def owner(self, candidates: Sequence[C], routing_key: str) -> C:
        members = tuple(sorted(c.key for c in candidates))
        ring = self._rings.get(members)
        if ring is None:
            if len(self._rings) >= 32:  # membership churn (discovery, breakers): keep it bounded
                self._rings.clear()
            ring = self._rings[members] = HashRing(members)
        owner = ring.owner(routing_key)
        return next(c for c in candidates if c.key == owner)


class LeastLoaded:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, candidates: Sequence[C], request: RouteRequest) -> C:
        return candidates[least_loaded({at: c.score() for at, c in enumerate(candidates)}, self.rng)]


def least_loaded(scores: Mapping[K, float], rng: random.Random) -> K:
    """The key of the lowest score; ties drawn."""
    best = min(scores.values())
    ties = [key for key, score in scores.items() if score == best]
    return ties[0] if len(ties) == 1 else rng.choice(ties)


class PowerOfTwo:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, candidates: Sequence[C], request: RouteRequest) -> C:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self.rng.sample(list(candidates), 2)
        return second if second.score() < first.score() else first


class RoundRobin:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[C], request: RouteRequest) -> C:
        return candidates[next(self._turn) % len(candidates)]


class Session:
    """Affinity on the routing key (x-session-id, else `user`); requests without one go least-loaded."""

    def __init__(self, rng: random.Random) -> None:
        self.rings = _Rings()
        self.fallback = LeastLoaded(rng)

    def choose(self, candidates: Sequence[C], request: RouteRequest) -> C:
        if not request.routing_key:
            return self.fallback.choose(candidates, request)
        return self.rings.owner(candidates, request.routing_key)


@dataclass(frozen=True)
class LoadBound:
    """How loaded an instance may be and still keep a request its cache favours (policies prefix and kv):
    within `factor` times the mean load with the request, or within `slack` requests above that mean,
    whichever is more (consistent hashing with bounded loads; the slack keeps a small fleet-wide load from
    making a relative bound of one or two requests)."""

    factor: float
    slack: int = 0

    @classmethod
    def of(cls, settings: RouterSettings) -> LoadBound:
        return cls(settings.prefix_load_factor, settings.prefix_load_slack)

    def capacity(self, total: float, instances: int) -> int:
        """The most requests an instance may have with this one, given the fleet's `total` load without it.
        Rounded up, and at least 1, so an idle fleet keeps its affinity."""
        mean = (total + 1) / instances
        return max(1, math.ceil(self.factor * mean), math.ceil(mean) + self.slack)


class Prefix:
    """Affinity on the prompt's first characters, so the instance holding that prefix in its cache
    serves it; bounded: an instance that would go past the load bound after taking the request sends it to
    the least loaded instead."""

    def __init__(self, rng: random.Random, prefix_chars: int, bound: LoadBound) -> None:
        self.rings = _Rings()
        self.fallback = LeastLoaded(rng)
        self.prefix_chars = prefix_chars
        self.bound = bound

    def choose(self, candidates: Sequence[C], request: RouteRequest) -> C:
        preferred = self.rings.owner(candidates, prompt_prefix(request, self.prefix_chars))
        capacity = self.bound.capacity(sum(c.score() for c in candidates), len(candidates))
        if preferred.score() + 1 > capacity:
            return self.fallback.choose(candidates, request)
        return preferred


def prompt_prefix(request: RouteRequest, limit: int) -> str:
    """The start of the prompt as the engine will see it (roles and contents in order, for chat)."""
    if request.messages is not None:
        parts: list[str] = []
        size = 0
        for message in request.messages:
            part = f"{message.get('role')}\n{message.get('content') or ''}\n"
            parts.append(part)
            size += len(part)
            if size >= limit:
                break
        return "".join(parts)[:limit]
    if isinstance(request.prompt, str):
        return request.prompt[:limit]
    return ",".join(map(str, (request.prompt or [])[:limit]))


def make_policy(name: str, settings: RouterSettings, rng: random.Random | None = None) -> Policy:
    rng = rng or random.Random()
    if name == "power-of-two":
        return PowerOfTwo(rng)
    if name == "round-robin":
        return RoundRobin()
    if name == "session":
        return Session(rng)
    if name in ("prefix", "kv"):  # kv: the approximation it falls back to (gateway.routing.kv chooses)
        return Prefix(rng, settings.prefix_chars, LoadBound.of(settings))
    return LeastLoaded(rng)
