"""RoutedAdapter over fake instances: retries, breakers, the fast 503, aborts, models, discovery."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from engine_adapters.base import GenerateRequest, SamplingOptions
from gateway.errors import EngineUnavailable, InvalidRequest
from gateway.fair_share import Claim, claim_as
from gateway.routing.adapter import RoutedAdapter
from gateway.routing.breaker import BreakerState
from gateway.routing.health import probe
from gateway.settings import DiscoverySettings, RouterSettings, RouteSettings
from tests.support.fake_instance import FakeUpstream
from tests.support.waiting import until

URLS = ["http://a:1", "http://b:1", "http://c:1"]


def routed(
    policy: str = "round-robin", urls: list[str] = URLS, **settings: Any
) -> tuple[RoutedAdapter, dict[str, FakeUpstream]]:
    fakes: dict[str, FakeUpstream] = {}

    def connect(url: str) -> Any:
        return fakes.setdefault(url, FakeUpstream(url))

    route = RouteSettings(name="m", aliases=["m-alias"], policy=policy, upstreams=urls)  # type: ignore[arg-type]
    router = RouterSettings(**{"retry_backoff_s": 0.0, "health_interval_s": 3600, **settings})
    adapter = RoutedAdapter(route, router, rng=random.Random(0), connect=connect)
    for url in urls:
        adapter.add_instance(url)
    return adapter, fakes


def request(stream: bool = True, request_id: str = "r1") -> GenerateRequest:
    return GenerateRequest(request_id, "m", SamplingOptions(), prompt="p", stream=stream)


async def texts(adapter: RoutedAdapter, req: GenerateRequest) -> list[str]:
    return [chunk.text async for chunk in adapter.generate(req)]


async def test_a_failure_before_output_is_retried_elsewhere() -> None:
    adapter, fakes = routed()
    fakes[URLS[0]].behaviour = "before"
    assert await texts(adapter, request()) == [f"{URLS[2]}:0", f"{URLS[2]}:1"]  # round-robin's next turn
    assert adapter.instances[URLS[0]].retries == 1
    assert all(i.in_flight == 0 for i in adapter.instances.values())


async def test_a_stream_that_broke_after_output_is_not_retried() -> None:
    adapter, fakes = routed()
    fakes[URLS[0]].behaviour = "after"
    seen: list[str] = []
    with pytest.raises(EngineUnavailable):
        async for chunk in adapter.generate(request()):
            seen.append(chunk.text)
    assert seen == [f"{URLS[0]}:0"] and fakes[URLS[1]].attempts == 0


async def test_a_whole_answer_is_retried_even_after_output() -> None:
    adapter, fakes = routed()
    fakes[URLS[0]].behaviour = "after"
    assert await texts(adapter, request(stream=False)) == [f"{URLS[2]}:0", f"{URLS[2]}:1"]


async def test_client_errors_are_not_retried_and_do_not_trip_the_breaker() -> None:
    adapter, fakes = routed(breaker_failures=1)
    fakes[URLS[0]].behaviour = "invalid"
    with pytest.raises(InvalidRequest):
        await texts(adapter, request())
    assert sum(f.attempts for f in fakes.values()) == 1
    assert adapter.instances[URLS[0]].breaker.state is BreakerState.CLOSED


async def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    adapter, fakes = routed(max_attempts=2)
    for fake in fakes.values():
        fake.behaviour = "before"
    with pytest.raises(EngineUnavailable):
        await texts(adapter, request())
    assert sum(f.attempts for f in fakes.values()) == 2


async def test_the_breaker_opens_and_takes_the_instance_out() -> None:
    adapter, fakes = routed(breaker_failures=3, breaker_cooldown_s=60)
    fakes[URLS[0]].behaviour = "before"
    for i in range(12):
        await texts(adapter, request(request_id=f"r{i}"))
    assert fakes[URLS[0]].attempts == 3
    assert adapter.instances[URLS[0]].breaker.state is BreakerState.OPEN
    stats = {s.upstream: s for s in adapter.upstream_stats()}
    assert stats[URLS[0]].breaker_state == 2 and not stats[URLS[0]].healthy and stats[URLS[0]].retries == 3


async def test_no_healthy_instance_and_no_hold_is_a_503_at_once() -> None:
    adapter, _ = routed(hold_timeout_s=0)
    for instance in adapter.instances.values():
        instance.healthy = False
    with pytest.raises(EngineUnavailable, match="No healthy instance serves `m` now"):
        await texts(adapter, request())
    with pytest.raises(EngineUnavailable):
        await adapter.check_health()
    assert adapter.status().as_json() == {
        "state": "unavailable",
        "instances": 3,
        "ready_instances": 0,
        "waiting_requests": 0,
        "in_flight_requests": 0,
        "breakers": {"closed": 3, "half_open": 0, "open": 0},
    }


async def test_a_request_is_held_until_an_instance_comes_back() -> None:
    adapter, fakes = routed()
    for instance in adapter.instances.values():
        instance.healthy = False
    held = asyncio.create_task(texts(adapter, request()))
    while adapter.held == 0:
        await asyncio.sleep(0)
    assert adapter.status(queued=2).waiting == 3 and not held.done()
    adapter.instances[URLS[1]].healthy = True
    adapter._wake_held()  # as the health check does when an instance passes again
    assert await held == [f"{URLS[1]}:0", f"{URLS[1]}:1"]
    assert adapter.held == 0 and adapter.status().ready_instances == 1


@pytest.mark.parametrize(
    ("sent", "order"),
    [
        # Key a floods 6, key b sends 2, then one urgent request of key a: the urgent first, then a and b in turn.
        (
            [("a0", "a", 1, 0), *[(f"a{i}", "a", 1, 0) for i in range(1, 6)], ("b0", "b", 1, 0), ("b1", "b", 1, 0)]
            + [("urgent", "a", 1, -1)],
            ["urgent", "a0", "b0", "a1", "b1", "a2", "a3", "a4", "a5"],
        ),
        # Weights 1:3: b's three go for each of a's one; a client that left gives up its place.
        (
            [
                *[(f"a{i}", "a", 1, 0) for i in range(4)],
                *[(f"b{i}", "b", 3, 0) for i in range(6)],
                ("gone", "b", 3, -5),
            ],
            ["a0", "b0", "b1", "b2", "a1", "b3", "b4", "b5", "a2", "a3"],
        ),
    ],
)
async def test_held_requests_reach_the_instance_in_the_admission_order(
    sent: list[tuple[str, str, int, int]], order: list[str]
) -> None:
    adapter, fakes = routed(urls=URLS[:1])
    adapter.instances[URLS[0]].healthy = False

    async def held(request_id: str, key: str, weight: int, priority: int) -> list[str]:
        claim_as(Claim(priority, key, weight))  # as the admission middleware does, in this request's context
        return await texts(adapter, request(request_id=request_id))

    tasks = {}
    for request_id, key, weight, priority in sent:  # each held before the next comes: arrival is this order
        tasks[request_id] = asyncio.create_task(held(request_id, key, weight, priority))
        await until(lambda: adapter.held == len(tasks), 5, f"{request_id} held", in_thread=False)
    if "gone" in tasks:
        tasks.pop("gone").cancel()
        await until(lambda: adapter.held == len(tasks), 5, "the cancelled one left", in_thread=False)
    adapter.instances[URLS[0]].healthy = True
    adapter._wake_held()  # as the health check does when the instance passes
    await asyncio.gather(*tasks.values())
    assert fakes[URLS[0]].arrived == order
    assert adapter.held == 0 and len(adapter._held_queue) == 0


async def test_a_hold_ends_in_503_at_its_timeout_and_a_cancelled_one_leaves_at_once() -> None:
    adapter, _ = routed(hold_timeout_s=0.2)
    for instance in adapter.instances.values():
        instance.healthy = False
    with pytest.raises(EngineUnavailable, match="No instance of `m` became ready within 0.2 s"):
        await texts(adapter, request())
    adapter.route = adapter.route.model_copy(update={"hold_timeout_s": 60.0})  # a route's own hold wins
    held = asyncio.create_task(texts(adapter, request()))
    while adapter.held == 0:
        await asyncio.sleep(0)
    held.cancel()  # the client left
    with pytest.raises(asyncio.CancelledError):
        await held
    assert adapter.held == 0


async def test_abort_reaches_the_instance_and_frees_its_slot() -> None:
    adapter, fakes = routed()
    fakes[URLS[0]].behaviour = "endless"
    stream = adapter.generate(request())
    await anext(stream)
    assert adapter.instances[URLS[0]].in_flight == 1
    await adapter.abort("r1")
    assert fakes[URLS[0]].aborted == ["r1"]
    assert adapter.instances[URLS[0]].in_flight == 0
    await stream.aclose()  # type: ignore[attr-defined]
    assert adapter.instances[URLS[0]].in_flight == 0  # released once, not twice
    await adapter.abort("r1")  # idempotent


async def test_models_list_every_name_with_the_smallest_context() -> None:
    adapter, fakes = routed()
    fakes[URLS[1]].max_len = 1024
    fakes[URLS[2]].max_len = None
    assert [(m.name, m.max_model_len, m.kind) for m in adapter.models()] == [
        ("m", 1024, "generate"),
        ("m-alias", 1024, "generate"),
    ]
    adapter.instances[URLS[1]].healthy = False  # only healthy instances count, while there are some
    assert adapter.models()[0].max_model_len == 2048


async def test_embeddings_retry_too() -> None:
    adapter, fakes = routed()
    fakes[URLS[0]].behaviour = "before"
    assert await adapter.embed("e1", "m", ["x"]) == ([[1.0]], 1)


async def test_discovery_follows_the_dns_answer() -> None:
    answers = [["10.0.0.1", "10.0.0.2"], ["10.0.0.2", "fd00::3"]]

    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("engines.default.svc", 8001)
        return answers.pop(0) if answers else ["10.0.0.2", "fd00::3"]

    route = RouteSettings(
        name="m", discovery=DiscoverySettings(dns_name="engines.default.svc", port=8001, interval_s=0.05)
    )
    adapter = RoutedAdapter(route, RouterSettings(health_interval_s=3600), resolver=resolver, connect=FakeUpstream)  # type: ignore[arg-type]
    await adapter.start()
    try:
        assert list(adapter.instances) == ["http://10.0.0.1:8001", "http://10.0.0.2:8001"]
        wanted = ["http://10.0.0.2:8001", "http://[fd00::3]:8001"]
        await until(lambda: sorted(adapter.instances) == wanted, 5, "the next DNS answer", in_thread=False)
    finally:
        await adapter.close()
        await adapter.close()  # once per alias: idempotent


async def test_health_checks_take_a_dead_instance_out_and_bring_it_back() -> None:
    adapter, fakes = routed(health_interval_s=0.05)
    await adapter.start()
    try:
        fakes[URLS[0]].behaviour = "before"
        await until(lambda: not adapter.instances[URLS[0]].healthy, 5, "taken out", in_thread=False)
        fakes[URLS[0]].behaviour = "ok"
        await until(lambda: adapter.instances[URLS[0]].healthy, 5, "brought back", in_thread=False)
    finally:
        await adapter.close()


def test_one_instance_and_a_route_relay_with_the_same_signatures() -> None:
    """`relay`, `forward` and `relay_raw` name one concept each: an instance's adapter and a route over several
    take the same RouteRequest-first arguments, so either can stand where a Relay is read."""
    import inspect

    from engine_adapters.base import Relay
    from engine_adapters.openai_http import OpenAIHttpAdapter

    for name in ("relay", "forward", "relay_raw"):
        route, instance = (
            inspect.signature(getattr(RoutedAdapter, name)),
            inspect.signature(getattr(OpenAIHttpAdapter, name)),
        )
        assert list(route.parameters) == list(instance.parameters), name
        assert str(route.parameters["request"].annotation) == "RouteRequest", name
    http = OpenAIHttpAdapter("http://127.0.0.1:9", "m")
    assert isinstance(http, Relay)


async def test_a_healthy_instance_is_taken_out_only_after_its_failed_checks_in_a_row() -> None:
    """router.health_failures: one slow or failed check of a busy instance does not move its traffic; the
    first check at start decides at once (an instance down at start takes nothing)."""
    adapter, fakes = routed(health_failures=3)
    instance = adapter.instances[URLS[0]]
    fakes[URLS[0]].behaviour = "before"
    for _ in range(2):
        assert await probe(instance, 3) is False
        assert instance.healthy
    fakes[URLS[0]].behaviour = "ok"
    assert await probe(instance, 3) is False and instance.failed_checks == 0  # a pass resets the count
    fakes[URLS[0]].behaviour = "before"
    for _ in range(3):
        await probe(instance, 3)
    assert not instance.healthy
    fakes[URLS[0]].behaviour = "ok"
    assert await probe(instance, 3) is True and instance.healthy  # it came back

    at_start = adapter.instances[URLS[1]]
    fakes[URLS[1]].behaviour = "before"
    await probe(at_start)
    assert not at_start.healthy
