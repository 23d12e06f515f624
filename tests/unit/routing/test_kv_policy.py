"""Policy kv's choice: the deepest holder of the prompt's blocks, bounded by load; `prefix` where it cannot tell."""

from __future__ import annotations

import random
from collections import Counter

from engine_adapters.base import GenerateRequest, RouteRequest, SamplingOptions
from gateway.routing.kv import KvPrefix, PrefixTraffic
from gateway.routing.kv_index import KvIndex, Stored
from gateway.routing.kv_tokens import Prompt, PromptTokens
from gateway.routing.policies import LoadBound, Prefix
from gateway.settings import RouterSettings
from tests.unit.routing.test_kv_tokens import ids
from tests.unit.routing.test_policies import Fake

SIZE = 4
IDS = list(range(1, 33))  # eight blocks


def request(text: str = "a long system prompt") -> RouteRequest:
    return RouteRequest("r", "m", text)


def fleet(*loads: float) -> list[Fake]:
    return [Fake(f"http://10.0.0.{i}:8000", load) for i, load in enumerate(loads)]


def holding(index: KvIndex, instance: Fake, blocks: int) -> None:
    index.apply(
        instance.key,
        index.next_seq(instance.key),
        1.0,
        [Stored(list(range(blocks)), None, IDS[: blocks * SIZE], SIZE)],
    )


def policy(index: KvIndex, load_factor: float = 1.5, load_slack: int = 0) -> KvPrefix:
    settings = RouterSettings(prefix_load_factor=load_factor, prefix_load_slack=load_slack)
    return KvPrefix(index, random.Random(3), settings)


def test_the_deepest_holder_wins_whatever_the_prefix_ring_says() -> None:
    index = KvIndex(1000)
    a, b, c = fleet(0, 0, 0)
    ring_pick = Prefix(random.Random(0), 256, LoadBound(1.5)).choose([a, b, c], request())
    deep, shallow = [x for x in (a, b, c) if x is not ring_pick][:2]
    holding(index, shallow, 2)
    holding(index, deep, 6)
    holding(index, ring_pick, 0)  # synced, holds nothing
    assert policy(index).choose([a, b, c], request(), Prompt(IDS)) is deep


def test_a_hot_prefix_spreads_once_its_holder_is_past_the_bound() -> None:
    index = KvIndex(1000)
    a, b = fleet(0, 0)
    holding(index, a, 8)
    kv = policy(index, load_factor=1.5)
    assert kv.choose([a, b], request(), Prompt(IDS)) is a
    a.load, b.load = 3, 0  # capacity ceil(1.5 * 4 / 2) = 3: a would go to 4
    assert kv.choose([a, b], request(), Prompt(IDS)) is b
    a.load = 2
    assert kv.choose([a, b], request(), Prompt(IDS)) is a


def test_a_shallower_holder_within_the_bound_is_counted_bounded() -> None:
    index = KvIndex(1000)
    a, b, c = fleet(3, 0, 0)  # capacity ceil(1.5 * 4 / 3) = 2: a, the deepest holder, would go to 4
    holding(index, a, 8)
    holding(index, b, 2)
    holding(index, c, 0)
    kv = policy(index)
    assert kv.choose([a, b, c], request(), Prompt(IDS)) is b
    assert kv.decisions == {"cached": 0, "bounded": 1, "spread": 0, "approximate": 0}


def test_the_deepest_holder_keeps_a_request_within_the_slack() -> None:
    index = KvIndex(1000)
    a, b, c = fleet(3, 0, 0)  # as above, but a slack of 2: capacity ceil(4 / 3) + 2 = 4, and a goes to 4
    holding(index, a, 8)
    holding(index, b, 2)
    holding(index, c, 0)
    kv = policy(index, load_slack=2)
    assert kv.choose([a, b, c], request(), Prompt(IDS)) is a
    assert kv.decisions["cached"] == 1


def test_a_prefix_with_more_traffic_than_its_holders_carry_spreads_past_the_mean() -> None:
    index = KvIndex(1000)
    a, b, c, d = fleet(1, 1, 0, 0)  # the mean with this request: 3 / 4; a would be above it, within ceil(1.5 * 3 / 4)
    holding(index, a, 8)
    for other in (b, c, d):
        holding(index, other, 0)
    kv = policy(index)
    other = Prompt([9] * 32)  # a prompt that no one holds: routed by `prefix`, and counted by no prefix
    for _ in range(7):  # every request so far for a's prefix: its share needs all 4 instances, it has 1
        assert kv.choose([a, b, c, d], request(), Prompt(IDS)) is a  # too few seen to tell a share (fewer than 8)
    loose = KvPrefix(index, random.Random(3), RouterSettings(kv_spread_load_factor=4.0))
    loose.traffic = kv.traffic  # the same share, but 4 times the mean on its one holder is within the bound
    assert loose.choose([a, b, c, d], request(), Prompt(IDS)) is a
    assert kv.choose([a, b, c, d], request(), Prompt(IDS)) in (c, d)  # the least loaded takes it
    assert kv.decisions["spread"] == 1
    a.load = 0
    assert kv.choose([a, b, c, d], request(), Prompt(IDS)) is a  # within the mean: it stays
    assert kv.choose([a, b, c, d], request(), other) is not None


def test_a_prefix_with_a_small_share_stays_on_its_holder_above_the_mean() -> None:
    index = KvIndex(1000)
    a, b = fleet(0, 0)
    holding(index, a, 8)
    holding(index, b, 0)
    tick = [0.0]
    kv = KvPrefix(index, random.Random(3), RouterSettings())
    kv.traffic = PrefixTraffic(half_life_s=10.0, clock=lambda: tick[0])
    for _ in range(30):  # other prefixes' requests: a's prefix will have 1 in 31 of them
        kv.traffic.add(b"another prefix")
    a.load = 1  # a would be above the mean, (1 + 1) / 2, and within the usual bound, ceil(1.5 * 1)
    assert kv.choose([a, b], request(), Prompt(IDS)) is a
    assert kv.decisions == {"cached": 1, "bounded": 0, "spread": 0, "approximate": 0}


def test_prefix_traffic_halves_every_half_life() -> None:
    tick = [0.0]
    traffic = PrefixTraffic(half_life_s=10.0, size=2, clock=lambda: tick[0])
    assert traffic.add(b"x") == (1.0, 1.0)
    tick[0] = 10.0
    assert traffic.add(b"x") == (1.5, 1.5)
    assert traffic.add(b"y") == (1.0, 2.5)
    traffic.add(b"z")  # past `size`: x, the least recently seen, is dropped
    assert traffic.add(b"x") == (1.0, 4.5)


def test_without_tokens_or_holders_it_routes_as_prefix_does() -> None:
    index = KvIndex(1000)
    candidates = fleet(0, 0, 0)
    approximate = Prefix(random.Random(0), 256, LoadBound(1.5))
    kv = policy(index)
    for text in ("alpha", "beta", "gamma", "delta"):
        assert kv.choose(candidates, request(text), None) is approximate.choose(candidates, request(text))
        assert kv.choose(candidates, request(text), Prompt(IDS)) is approximate.choose(candidates, request(text))


def test_an_unsynced_instance_is_not_scored_from_stale_blocks() -> None:
    index = KvIndex(1000)
    a, b = fleet(0, 0)
    holding(index, a, 8)
    index.drop(a.key)  # a re-sync in progress: what it held is unknown
    picks = Counter(policy(index).choose([a, b], request(t), Prompt(IDS)).key for t in map(str, range(50)))
    assert set(picks) == {a.key, b.key}  # the ring, not a


class FakeTokenizer:
    def __init__(self) -> None:
        self.calls = 0

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + ("<model>" if add_generation_prompt else "")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.calls += 1
        return ([2] if add_special_tokens else []) + [ord(ch) for ch in text]


async def test_prompt_tokens_render_the_chat_template_and_keep_recent_answers() -> None:
    tokenizer = FakeTokenizer()
    tokens = PromptTokens(RouterSettings(kv_tokenize_cache_size=1), tokenizer)
    chat = RouteRequest("r", "m", messages=[{"role": "user", "content": "hi"}])
    first = await ids(tokens, chat)
    assert first == [ord(ch) for ch in "<user>hi<model>"]  # no second BOS: the template writes its own
    assert await ids(tokens, chat) == first and tokenizer.calls == 1
    assert await ids(tokens, request("x")) == [2, ord("x")]
    await ids(tokens, chat)
    assert tokenizer.calls == 3  # the cache holds one answer
    token_prompt = RouteRequest("r", "m", [5, 6, 7])
    assert await ids(tokens, token_prompt) == [5, 6, 7]


class GemmaLikeTokenizer(FakeTokenizer):
    """An answer opens as the generation prompt does (<model>), as in Gemma's, Llama's and ChatML templates."""

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        turns = "".join(f"<{'model' if m['role'] == 'assistant' else m['role']}>{m['content']}" for m in messages)
        return turns + ("<model>" if add_generation_prompt else "")


async def test_a_chats_next_turn_is_routed_on_its_previous_turns_ids_one_turn_behind_at_most() -> None:
    tokenizer = GemmaLikeTokenizer()
    tokens = PromptTokens(RouterSettings(), tokenizer)
    turn1 = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    turn2 = [*turn1, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "more"}]
    turn3 = [*turn2, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}]
    first = await ids(tokens, RouteRequest("r", "m", messages=turn1))
    assert first is not None and tokenizer.calls == 1
    second = await ids(tokens, RouteRequest("r", "m", messages=turn2))
    assert second == first and tokenizer.calls == 1  # the previous turn's ids, asked of no one
    whole = tokenizer.encode(tokenizer.apply_chat_template(turn2, False, True), add_special_tokens=False)
    assert whole[: len(first)] == first  # the start of the turn's own ids
    await ids(tokens, RouteRequest("r", "m", messages=turn3))
    assert tokenizer.calls == 3  # turn 2's ids were not kept: turn 3 is tokenized itself
    plain = PromptTokens(RouterSettings(kv_tokenize_reuse_turns=False), tokenizer)
    await ids(plain, RouteRequest("r", "m", messages=turn1))
    await ids(plain, RouteRequest("r", "m", messages=turn2))
    assert tokenizer.calls == 5


class TokenizingInstance:
    """An instance's /tokenize answer, as bytes (OpenAIHttpAdapter.forward's shape)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.asked = 0

    async def forward(self, request: RouteRequest, path: str, body: dict[str, object]) -> bytes:
        assert path == "/tokenize" and body["add_generation_prompt"] is True
        self.asked += 1
        return self.answer


async def test_the_synced_instances_take_turns_answering_tokenize() -> None:
    from gateway.routing.kv import KvRouting
    from gateway.settings import RouteSettings

    instances = fleet(0, 0, 0)
    route = RouteSettings(name="m", policy="kv", upstreams=[c.key for c in instances])
    routing = KvRouting(route, RouterSettings(), random.Random(0), lambda: None)
    try:
        for c in instances[:2]:
            holding(routing.index, c, 0)  # the third has sent no events: it is not asked
        answers = {c.key: TokenizingInstance(b'{"tokens": [1, 2, 3]}') for c in instances}
        for n in range(6):
            chat = RouteRequest(f"r{n}", "m", messages=[{"role": "user", "content": f"question {n}"}])
            await routing.choose(instances, chat, lambda c: answers[c.key])  # type: ignore[arg-type,return-value]
        assert [answers[c.key].asked for c in instances] == [3, 3, 0]
    finally:
        await routing.close()


async def test_an_instances_token_ids_are_taken_only_when_they_are_all_integers() -> None:
    chat = RouteRequest("r", "m", messages=[{"role": "user", "content": "hi"}])
    cases = [(b'{"tokens": [1, 2, 3]}', [1, 2, 3]), (b'{"tokens": [1, "2"]}', None), (b'{"tokens": [1.5]}', None)]
    cases += [(b'{"tokens": [true, 99999999999999999999]}', None), (b'{"count": 3}', None)]
    for answer, expected in cases:
        tokens = PromptTokens(RouterSettings())
        assert await ids(tokens, chat, TokenizingInstance(answer)) == expected, answer


async def test_a_route_with_policy_kv_follows_the_index_and_says_which_instances_fall_back() -> None:
    from gateway.routing.adapter import RoutedAdapter
    from gateway.settings import RouteSettings
    from tests.support.fake_instance import FakeUpstream

    urls = ["http://a:1", "http://b:1"]
    route = RouteSettings(name="m", policy="kv", upstreams=urls)
    adapter = RoutedAdapter(
        route,
        RouterSettings(health_interval_s=3600, kv_discovery_interval_s=3600),
        rng=random.Random(0),
        connect=FakeUpstream,
    )  # type: ignore[arg-type]
    for url in urls:
        adapter.add_instance(url)  # neither tells a KV events endpoint (no /v1/models here)
    try:
        status = adapter.status().as_json()["kv_routing"]
        assert status == {
            "policy": "kv",
            "events_instances": [],
            "fallback_instances": urls,
            "blocks_indexed": 0,
            "decisions": {"cached": 0, "bounded": 0, "spread": 0, "approximate": 0},
            "tokenize_cache": {"entries": 0, "bytes": 0},
        }
        # b's events say it holds the prompt's first two blocks; a is synced and holds nothing.
        adapter.kv.index.apply("http://b:1", 0, 1.0, [Stored([1, 2], None, IDS[:8], SIZE)])  # type: ignore[union-attr]
        adapter.kv.index.apply("http://a:1", 0, 1.0, [])  # type: ignore[union-attr]
        for n in range(3):
            prompt = GenerateRequest(f"r{n}", "m", SamplingOptions(), prompt=[*IDS[:8], 90 + n])
            assert [c.text async for c in adapter.generate(prompt)] == ["http://b:1:0", "http://b:1:1"]
        status = adapter.status().as_json()["kv_routing"]
        assert status["events_instances"] == urls and status["fallback_instances"] == []
        assert status["decisions"]["cached"] == 3 and status["blocks_indexed"] == 2
    finally:
        await adapter.close()


def test_equal_holders_equally_loaded_share_the_requests() -> None:
    index = KvIndex(1000)
    candidates = fleet(0, 0, 0)
    for c in candidates:
        holding(index, c, 8)
    kv = policy(index)
    picks = Counter(kv.choose(candidates, request(), Prompt(IDS)).key for _ in range(300))
    assert set(picks) == {c.key for c in candidates} and min(picks.values()) > 60
