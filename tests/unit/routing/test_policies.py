"""Each policy's choice, the consistent-hash key movement, and the bound on prefix affinity."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from engine_adapters.base import RouteRequest
from gateway.routing.policies import (
    HashRing,
    LeastLoaded,
    LoadBound,
    PowerOfTwo,
    Prefix,
    RoundRobin,
    Session,
    make_policy,
    prompt_prefix,
)
from gateway.settings import RouterSettings


@dataclass
class Fake:
    key: str
    load: float = 0.0

    def score(self) -> float:
        return self.load


def request(prompt: str = "hello", routing_key: str | None = None) -> RouteRequest:
    return RouteRequest("r", "m", prompt, routing_key=routing_key)


def fleet(*loads: float) -> list[Fake]:
    return [Fake(f"http://10.0.0.{i}:8000", load) for i, load in enumerate(loads)]


def test_least_loaded_takes_the_minimum_and_breaks_ties_at_random() -> None:
    policy = LeastLoaded(random.Random(1))
    a, b, c = fleet(2, 0, 5)
    assert all(policy.choose([a, b, c], request()) is b for _ in range(50))
    tied = fleet(1, 1, 3)
    picks = Counter(policy.choose(tied, request()).key for _ in range(400))
    assert set(picks) == {tied[0].key, tied[1].key}
    assert 150 < picks[tied[0].key] < 250


def test_power_of_two_never_picks_the_busiest() -> None:
    policy = PowerOfTwo(random.Random(2))
    idle, mid, busy = fleet(0, 5, 10)
    picks = Counter(policy.choose([idle, mid, busy], request()).key for _ in range(900))
    assert picks[busy.key] == 0
    assert 500 < picks[idle.key] < 700  # it wins 2 of the 3 possible pairs
    assert policy.choose([mid], request()) is mid


def test_round_robin_cycles() -> None:
    policy = RoundRobin()
    members = fleet(0, 0, 0)
    assert [policy.choose(members, request()).key for _ in range(6)] == [m.key for m in members] * 2


def test_session_affinity_and_fallback() -> None:
    policy = Session(random.Random(3))
    members = fleet(0, 0, 0, 0)
    for user in ("alice", "bob", "carol"):
        owners = {policy.choose(members, request(routing_key=user)).key for _ in range(20)}
        assert len(owners) == 1
    spread = Counter(policy.choose(members, request(routing_key=f"user-{i}")).key for i in range(2000))
    assert len(spread) == 4 and min(spread.values()) > 350  # each near 500
    loaded = fleet(3, 0, 3)
    assert policy.choose(loaded, request(routing_key=None)) is loaded[1]  # no key: least loaded


@pytest.mark.parametrize("instances", [3, 4, 8])
def test_adding_an_instance_moves_about_one_in_n_plus_one_keys(instances: int) -> None:
    keys = [f"session-{i}" for i in range(20000)]
    before_ring = HashRing([f"http://10.0.0.{i}:8000" for i in range(instances)])
    newcomer = f"http://10.0.0.{instances}:8000"
    after_ring = HashRing([f"http://10.0.0.{i}:8000" for i in range(instances)] + [newcomer])
    before = {k: before_ring.owner(k) for k in keys}
    after = {k: after_ring.owner(k) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    expected = 1 / (instances + 1)
    assert abs(len(moved) / len(keys) - expected) < 0.25 * expected
    assert all(after[k] == newcomer for k in moved)  # keys only ever move to the newcomer


def test_removing_an_instance_moves_only_its_keys() -> None:
    members = fleet(0, 0, 0, 0)
    policy = Session(random.Random(4))
    keys = [f"k{i}" for i in range(3000)]
    before = {k: policy.choose(members, request(routing_key=k)).key for k in keys}
    gone = members[2]
    after = {k: policy.choose([m for m in members if m is not gone], request(routing_key=k)).key for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != gone.key)


def test_prefix_affinity_keeps_a_prompt_on_one_instance() -> None:
    policy = Prefix(random.Random(5), prefix_chars=16, bound=LoadBound(1.5))
    members = fleet(0, 0, 0)
    owner = policy.choose(members, request("The same system prompt, then question one"))
    # Same first 16 characters, different tail: same instance.
    assert policy.choose(members, request("The same system prompt, then another")) is owner
    spread = {policy.choose(members, request(f"prompt number {i} ...")).key for i in range(60)}
    assert len(spread) == 3


def test_prefix_affinity_is_bounded_by_the_load_factor() -> None:
    policy = Prefix(random.Random(6), prefix_chars=64, bound=LoadBound(1.5))
    members = fleet(0, 0, 0)
    prompt = "a long shared prefix"
    owner = policy.choose(members, request(prompt))
    others = [m for m in members if m is not owner]
    # Mean load 2 over 3 instances: capacity ceil(1.5 * (6 + 1) / 3) = 4; the owner with 3 stays below it.
    owner.load, others[0].load, others[1].load = 3, 2, 1
    assert policy.choose(members, request(prompt)) is owner
    # With 5 it would hold 6 > ceil(1.5 * (8 + 1) / 3) = 5: the request goes to the least loaded.
    owner.load = 5
    assert policy.choose(members, request(prompt)) is others[1]
    # A slack of 3 lets it hold ceil(9 / 3) + 3 = 6: it keeps the request.
    slack = Prefix(random.Random(6), prefix_chars=64, bound=LoadBound(1.5, slack=3))
    assert slack.choose(members, request(prompt)) is owner
    for member in members:  # an idle fleet keeps its affinity
        member.load = 0
    assert policy.choose(members, request(prompt)) is owner


def test_the_load_bound_is_the_larger_of_the_factor_and_the_slack() -> None:
    assert LoadBound(1.5).capacity(total=0, instances=4) == 1  # an idle fleet keeps its affinity
    assert LoadBound(1.5).capacity(total=11, instances=4) == 5  # ceil(1.5 * 12 / 4)
    assert LoadBound(1.5, slack=4).capacity(total=11, instances=4) == 7  # ceil(12 / 4) + 4
    assert LoadBound(1.5, slack=4).capacity(total=399, instances=4) == 150  # a busy fleet: the factor's
    assert LoadBound.of(RouterSettings(prefix_load_factor=2.0, prefix_load_slack=1)) == LoadBound(2.0, 1)


def test_prompt_prefix_of_messages_and_token_ids() -> None:
    chat = RouteRequest(
        "r", "m", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x" * 500}]
    )
    assert prompt_prefix(chat, 21) == "system\nBe brief.\nuser"
    ids = RouteRequest("r", "m", [1, 2, 3, 4])
    assert prompt_prefix(ids, 2) == "1,2"


def test_make_policy_names() -> None:
    settings = RouterSettings()
    kinds = {
        name: type(make_policy(name, settings)).__name__
        for name in ("least-loaded", "power-of-two", "session", "prefix", "round-robin")
    }
    assert kinds == {
        "least-loaded": "LeastLoaded",
        "power-of-two": "PowerOfTwo",
        "session": "Session",
        "prefix": "Prefix",
        "round-robin": "RoundRobin",
    }
