"""Policy kv end to end: two engine-mode tokenyard instances publishing vLLM's KV events, a router following
them. A long prompt cached on one instance is sent there, even where the `prefix` policy's ring would pick
the other."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from engine_adapters.base import RouteRequest
from gateway.routing.policies import HashRing, prompt_prefix
from tests.conftest import TEXT_MODEL, free_port
from tests.e2e.fleet import EngineFleet, engine_fleet
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine

WORDS = "river stone lantern harbor copper meadow signal orbit ledger canvas thunder velvet quarry beacon".split()
HEALTH_INTERVAL_S = 1.0


def _engine_config(events_port: int, model: str) -> dict[str, object]:
    return {
        "log_level": "warning",
        "models": [
            {
                "name": TEXT_MODEL,
                "model": model,
                "dtype": "bfloat16",
                "max_model_len": 1024,
                "kv_events_endpoint": f"tcp://*:{events_port}",
                "kv_events_replay_endpoint": f"tcp://*:{events_port + 1}",
                "engine_args": {"enable_prefix_caching": True},
            }
        ],
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineFleet]:
    from gateway.model_store import prepare_gemma

    workdir = tmp_path_factory.mktemp("kv-routing")
    model = str(prepare_gemma())

    def engine_args(slot: int) -> list[str]:
        config = workdir / f"engine-{slot}.yaml"
        config.write_text(yaml.safe_dump(_engine_config(free_port(), model)))
        return ["--config", str(config)]

    with engine_fleet(workdir) as started:
        instances = started.start_engines(2, engine_args)
        route = {"name": TEXT_MODEL, "policy": "kv", "upstreams": instances}
        started.start_routers([route], health_interval_s=HEALTH_INTERVAL_S, kv_discovery_interval_s=1)
        yield started


def metric(instance: str, name: str) -> float:
    text = httpx.get(f"{instance}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def served(instance: str) -> float:
    return metric(instance, "tokenyard_requests_total")


def kv_routing(router: str) -> dict[str, object]:
    return httpx.get(f"{router}/ready", timeout=10).json()["models"][TEXT_MODEL]["kv_routing"]


def chat(url: str, system: str, question: str) -> None:
    body = {
        "model": TEXT_MODEL,
        "max_tokens": 2,
        "temperature": 0,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text


def test_the_models_entry_tells_where_events_are_published(fleet: EngineFleet) -> None:
    card = httpx.get(f"{fleet.instances[0]}/v1/models", timeout=10).json()["data"][0]
    assert card["kv_events"]["endpoint"].startswith("tcp://*:")
    assert card["kv_events"]["replay_endpoint"].startswith("tcp://*:")


def test_a_cached_prompt_goes_to_the_instance_holding_it(router: str, fleet: EngineFleet) -> None:
    # A long system prompt whose start the `prefix` ring gives to instance 0; we cache it on instance 1.
    # Each router gets a prompt of its own, so the second is not helped by what the first one cached.
    ring = HashRing(sorted(fleet.instances))
    for seed in range(1000):
        system = f"[{router} {seed}] " + " ".join(WORDS[(seed + i * 7) % len(WORDS)] for i in range(400))
        messages = [{"role": "system", "content": system}, {"role": "user", "content": "Q0"}]
        request = RouteRequest("r", TEXT_MODEL, messages=messages)
        if ring.owner(prompt_prefix(request, 256)) == fleet.instances[0]:
            break
    holder = fleet.instances[1]
    # The other router's run may have indexed blocks already: wait for this prompt's own to be indexed.
    indexed_before = kv_routing(router)["blocks_indexed"]
    chat(holder, system, "Q0")  # straight to the instance, not through the router

    def indexed() -> bool:
        status = kv_routing(router)
        return holder in status["events_instances"] and status["blocks_indexed"] > indexed_before  # type: ignore[operator]

    wait_until(indexed, 30, "the holder's blocks indexed", interval_s=0.5)

    before = [served(url) for url in fleet.instances]
    hits_before = metric(holder, "vllm:prefix_cache_hits_total")
    for turn in range(1, 4):
        # The router's health checks scrape each instance's load every second: two intervals on, its view of
        # the holder no longer counts the turn before as running, so this one is not spread away from a holder
        # seen busy (nothing exposes the scraped load to wait on).
        time.sleep(2 * HEALTH_INTERVAL_S + 0.5)
        chat(router, system, f"Q{turn}")
    moved = [served(url) - b for url, b in zip(fleet.instances, before)]
    assert moved == [0, 3], (moved, kv_routing(router)["decisions"])
    assert metric(holder, "vllm:prefix_cache_hits_total") - hits_before >= 3 * 128  # at least a block each

    metrics = httpx.get(f"{router}/metrics", timeout=10).text
    assert re.search(rf'^tokenyard_route_kv_blocks\{{model="{TEXT_MODEL}"\}} [1-9]', metrics, re.M)
    assert re.search(r"^tokenyard_route_kv_events_applied_total\{.*\} [1-9]", metrics, re.M)
