"""LoRA-aware placement (gateway.routing.lora) through RoutedAdapter, over fake instances and their gauges."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from engine_adapters.base import GenerateRequest, SamplingOptions
from engine_adapters.openai_wire import EngineLoad, LoraGauge, parse_load
from gateway.errors import EngineUnavailable
from gateway.routing import route_names
from gateway.routing.adapter import RoutedAdapter
from gateway.settings import RouterSettings, RouteSettings
from tests.support.fake_instance import FakeLoraUpstream

A, B, C = URLS = ["http://a:1", "http://b:1", "http://c:1"]
PATHS = {"x": "/loras/x", "y": "/loras/y", "z": "/loras/z", "broken": "/loras/bad"}


def routed(
    policy: str = "least-loaded", health_interval_s: float = 3600, **route: Any
) -> tuple[RoutedAdapter, dict[str, FakeLoraUpstream]]:
    fakes: dict[str, FakeLoraUpstream] = {}

    def connect(url: str) -> Any:
        return fakes.setdefault(url, FakeLoraUpstream(url))

    settings = RouteSettings(
        name="base",
        policy=policy,
        upstreams=URLS,  # type: ignore[arg-type]
        lora_adapters=PATHS,
        **route,
    )
    adapter = RoutedAdapter(
        settings,
        RouterSettings(retry_backoff_s=0.0, health_interval_s=health_interval_s),
        rng=random.Random(0),
        connect=connect,
    )
    for url in URLS:
        adapter.add_instance(url)
    return adapter, fakes


def request(model: str, request_id: str = "r1") -> GenerateRequest:
    return GenerateRequest(request_id, model, SamplingOptions(), prompt="p", stream=True)


async def served_by(adapter: RoutedAdapter, model: str) -> str:
    chunks = [chunk.text async for chunk in adapter.generate(request(model))]
    return chunks[0].rsplit(":", 1)[0]


def gauge(
    adapter: RoutedAdapter, url: str, running: float = 0.0, busy: tuple[str, ...] = (), max_loras: int | None = None
) -> None:
    adapter.instances[url].engine = EngineLoad(running=running, lora=LoraGauge(frozenset(busy), frozenset(), max_loras))


async def test_a_request_goes_to_the_instance_that_holds_its_adapter() -> None:
    adapter, fakes = routed(lora_runtime_load=True)
    fakes[B].held = ["x"]
    gauge(adapter, B, running=9)  # the busiest, but the only one holding it
    assert [await served_by(adapter, "x") for _ in range(3)] == [B] * 3
    assert adapter.lora.counts.decisions == {"hit": 3, "loaded": 0, "fallback": 0}
    assert not any(f.loads for f in fakes.values())


async def test_the_routes_policy_chooses_among_the_holders() -> None:
    adapter, fakes = routed(policy="round-robin")
    fakes[A].held = fakes[C].held = ["x"]
    assert {await served_by(adapter, "x") for _ in range(4)} == {A, C}


async def test_the_base_model_is_routed_as_before() -> None:
    adapter, _ = routed(policy="round-robin", lora_runtime_load=True)
    assert [await served_by(adapter, "base") for _ in range(3)] == URLS
    assert sum(adapter.lora.counts.decisions.values()) == 0


async def test_without_runtime_loading_an_adapter_nobody_holds_falls_back_to_the_policy() -> None:
    adapter, fakes = routed()
    gauge(adapter, A, running=5)
    gauge(adapter, C, running=5)
    assert await served_by(adapter, "x") == B
    assert adapter.lora.counts.decisions["fallback"] == 1 and not any(f.loads for f in fakes.values())


async def test_an_adapter_nobody_holds_is_loaded_on_the_least_loaded_instance_then_hit() -> None:
    adapter, fakes = routed(lora_runtime_load=True)
    gauge(adapter, A, running=3)
    gauge(adapter, B, running=1)
    gauge(adapter, C, running=2)
    assert await served_by(adapter, "x") == B
    assert fakes[B].loads == ["x"] and adapter.lora.counts.loads == 1
    gauge(adapter, B, running=8)  # busier now, but it holds the adapter
    assert await served_by(adapter, "x") == B
    assert adapter.lora.counts.decisions == {"hit": 1, "loaded": 1, "fallback": 0}


async def test_concurrent_first_requests_trigger_one_load() -> None:
    adapter, fakes = routed(lora_runtime_load=True)
    gate = asyncio.Event()
    for fake in fakes.values():
        fake.gate = gate
    waiting = [asyncio.ensure_future(served_by(adapter, "x")) for _ in range(6)]
    await asyncio.sleep(0.01)
    gate.set()
    placed = await asyncio.gather(*waiting)
    assert sum(len(f.loads) for f in fakes.values()) == 1
    assert len(set(placed)) == 1 and adapter.lora.counts.decisions["loaded"] == 6


async def test_a_client_leaving_during_the_load_does_not_cancel_it() -> None:
    adapter, fakes = routed(lora_runtime_load=True)
    gate = asyncio.Event()
    fakes[A].gate = gate
    gauge(adapter, B, running=1)
    gauge(adapter, C, running=1)
    first = asyncio.ensure_future(served_by(adapter, "x"))
    await asyncio.sleep(0.01)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    second = asyncio.ensure_future(served_by(adapter, "x"))
    await asyncio.sleep(0.01)
    gate.set()
    assert await second == A and fakes[A].loads == ["x"]


async def test_a_full_instance_is_passed_over_for_one_with_room() -> None:
    adapter, fakes = routed(lora_runtime_load=True)
    fakes[A].held = ["y"]
    gauge(adapter, A, running=0, max_loras=1)
    gauge(adapter, B, running=4, max_loras=2)
    gauge(adapter, C, running=6, max_loras=2)
    assert await served_by(adapter, "x") == B
    assert fakes[A].unloads == [] and adapter.lora.counts.unloads == 0


async def test_the_route_max_loras_applies_where_the_gauge_is_missing() -> None:
    adapter, fakes = routed(lora_runtime_load=True, max_loras=1)
    fakes[A].held, fakes[B].held = ["y"], ["z"]
    adapter.instances[C].engine = EngineLoad(running=5)
    assert await served_by(adapter, "x") == C


async def test_when_all_are_full_the_least_recently_used_idle_adapter_is_unloaded() -> None:
    adapter, fakes = routed(lora_runtime_load=True, max_loras=2)
    fakes[A].held, fakes[B].held, fakes[C].held = ["y", "z"], ["y", "z"], ["y", "z"]
    gauge(adapter, A, running=1, busy=("y", "z"))  # the least loaded, but both run there: never unloaded
    gauge(adapter, B, running=2)
    gauge(adapter, C, running=3)
    fakes[A].held = []  # for this one request, so that y goes to B and is the recent one there
    assert await served_by(adapter, "y") == B
    fakes[A].held = ["y", "z"]
    assert await served_by(adapter, "x") == B
    assert fakes[B].unloads == ["z"] and fakes[B].held == ["y", "x"] and not fakes[A].unloads
    assert adapter.lora.counts.unloads == 1 and adapter.lora.counts.loads == 1


async def test_an_adapter_with_our_requests_in_flight_is_not_unloaded() -> None:
    adapter, fakes = routed(policy="round-robin", lora_runtime_load=True, max_loras=1, hold_timeout_s=0)
    for url in URLS:
        fakes[url].held = ["y"]  # idle as far as the gauges say
    fakes[A].behaviour = fakes[B].behaviour = fakes[C].behaviour = "endless"
    streams = [adapter.generate(request("y", f"r{i}")) for i in range(3)]
    for stream in streams:  # one request on each instance
        await anext(stream)  # type: ignore[call-overload]
    assert all(i.in_flight == 1 for i in adapter.instances.values())
    with pytest.raises(EngineUnavailable, match="cannot be loaded now"):
        await served_by(adapter, "x")
    assert not any(f.unloads or f.loads for f in fakes.values())
    for stream in streams:
        await stream.aclose()  # type: ignore[attr-defined]
    fakes[A].behaviour = fakes[B].behaviour = fakes[C].behaviour = "ok"
    assert await served_by(adapter, "x") in URLS and adapter.lora.counts.unloads == 1


async def test_a_request_with_no_room_waits_for_an_adapter_to_become_idle() -> None:
    adapter, fakes = routed(policy="round-robin", health_interval_s=0.01, lora_runtime_load=True, max_loras=1)
    for url in URLS:
        fakes[url].held = ["y"]
        gauge(adapter, url, busy=("y",))  # in use by requests of another router
    waiting = asyncio.ensure_future(served_by(adapter, "x"))
    await asyncio.sleep(0.05)
    assert not waiting.done() and not any(f.loads for f in fakes.values())
    gauge(adapter, B)  # its next scrape: idle now
    assert await waiting == B and fakes[B].unloads == ["y"] and fakes[B].held == ["x"]


async def test_a_failed_load_goes_on_to_the_next_instance() -> None:
    adapter, fakes = routed(lora_runtime_load=True)
    fakes[A].load_fails = True
    gauge(adapter, B, running=1)
    gauge(adapter, C, running=2)
    assert await served_by(adapter, "x") == B
    assert fakes[A].loads == ["x"] and adapter.lora.counts.load_failures == 1


async def test_an_adapter_no_instance_can_load_is_a_clear_503_and_the_next_request_tries_again() -> None:
    adapter, fakes = routed(lora_runtime_load=True)
    with pytest.raises(EngineUnavailable, match="`broken` could not be loaded on any instance of `base`"):
        await served_by(adapter, "broken")
    assert all(f.loads == ["broken"] for f in fakes.values()) and adapter.lora.counts.load_failures == 3
    assert all(i.in_flight == 0 for i in adapter.instances.values())
    with pytest.raises(EngineUnavailable):
        await served_by(adapter, "broken")
    assert all(f.loads == ["broken"] * 2 for f in fakes.values())


async def test_adapters_are_model_names_of_the_route_with_their_parent() -> None:
    adapter, _ = routed()
    cards = {info.name: info for info in adapter.models()}
    assert cards["x"].parent == "base" and cards["x"].root == "/loras/x" and cards["base"].parent is None
    assert adapter.lora_stats()[0].decisions == {"hit": 0, "loaded": 0, "fallback": 0}
    fakes_of_plain_route = RoutedAdapter(RouteSettings(name="plain", upstreams=[A]), RouterSettings())
    assert fakes_of_plain_route.lora_stats() == []


def test_an_adapter_name_may_not_clash_with_another_routes_name() -> None:
    with pytest.raises(ValueError, match="'x' is claimed by more than one route"):
        route_names([RouteSettings(name="base", lora_adapters={"x": "/p"}), RouteSettings(name="x")])
    with pytest.raises(ValueError, match="need a generate route"):
        RouteSettings(name="e", kind="embed", lora_adapters={"x": "/p"})


def test_the_lora_gauge_is_read_from_the_newest_sample() -> None:
    text = (
        b'vllm:num_requests_running{model_name="m"} 2\n'
        b'vllm:lora_requests_info{max_lora="2",running_lora_adapters="x",waiting_lora_adapters=""} 1.7e+09\n'
        b'vllm:lora_requests_info{max_lora="2",running_lora_adapters="x,y",waiting_lora_adapters="z"} 1.8e+09\n'
        b'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 1.6e+09\n'
    )
    load = parse_load(text, "m")
    assert load.running == 2 and load.lora == LoraGauge(frozenset({"x", "y"}), frozenset({"z"}), 2)
    assert parse_load(b'vllm:num_requests_running{model_name="m"} 2\n', "m").lora is None
