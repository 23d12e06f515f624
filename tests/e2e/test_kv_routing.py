"""Policy kv end to end: two engine-mode tokenyard instances publishing vLLM's KV events, a router following
them. A long prompt cached on one instance is sent there, even where the `prefix` policy's ring would pick
the other."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from engine_adapters.base import GenerateRequest, SamplingOptions
from gateway.routing.policies import HashRing, prompt_prefix
from tests.conftest import TEXT_MODEL, free_port, start_server, stop_server, wait_ready

pytestmark = pytest.mark.engine

WORDS = "river stone lantern harbor copper meadow signal orbit ledger canvas thunder velvet quarry beacon".split()


@dataclass
class Setup:
    router: str
    instances: list[str]


def _engine_config(port: int, events_port: int, model: str) -> dict[str, object]:
    return {
        "port": port,
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
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from gateway.model_store import prepare_gemma

    workdir = tmp_path_factory.mktemp("kv-routing")
    model = str(prepare_gemma())
    cores = sorted(os.sched_getaffinity(0))
    procs: list[tuple[subprocess.Popen[bytes], Path, str]] = []
    try:
        for slot in range(2):
            port, events_port, log_path = free_port(), free_port(), workdir / f"engine-{slot}.log"
            config = workdir / f"engine-{slot}.yaml"
            config.write_text(yaml.safe_dump(_engine_config(port, events_port, model)))
            env = {"VLLM_CPU_OMP_THREADS_BIND": str(cores[slot % len(cores)]), "VLLM_CPU_KVCACHE_SPACE": "1"}
            procs.append((start_server(["--config", str(config)], log_path, env), log_path, f"http://127.0.0.1:{port}"))
        for proc, log_path, url in procs:
            wait_ready(url, proc, log_path, 900)
        instances = [url for _, _, url in procs]
        config = workdir / "router.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "routes": [{"name": TEXT_MODEL, "policy": "kv", "upstreams": instances}],
                    "router": {"health_interval_s": 1, "kv_discovery_interval_s": 1},
                }
            )
        )
        port, log_path = free_port(), workdir / "router.log"
        procs.append((start_server(["--config", str(config), "--port", str(port)], log_path), log_path, ""))
        router = f"http://127.0.0.1:{port}"
        wait_ready(router, procs[-1][0], log_path, 60)
        yield Setup(router, instances)
    finally:
        for proc, _, _ in procs:
            stop_server(proc)


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


def test_the_models_entry_tells_where_events_are_published(setup: Setup) -> None:
    card = httpx.get(f"{setup.instances[0]}/v1/models", timeout=10).json()["data"][0]
    assert card["kv_events"]["endpoint"].startswith("tcp://*:")
    assert card["kv_events"]["replay_endpoint"].startswith("tcp://*:")


def test_a_cached_prompt_goes_to_the_instance_holding_it(setup: Setup) -> None:
    # A long system prompt whose start the `prefix` ring gives to instance 0; we cache it on instance 1.
    ring = HashRing(sorted(setup.instances))
    for seed in range(1000):
        system = f"[{seed}] " + " ".join(WORDS[(seed + i * 7) % len(WORDS)] for i in range(400))
        messages = [{"role": "system", "content": system}, {"role": "user", "content": "Q0"}]
        request = GenerateRequest("r", TEXT_MODEL, SamplingOptions(), messages=messages)
        if ring.owner(prompt_prefix(request, 256)) == setup.instances[0]:
            break
    holder = setup.instances[1]
    chat(holder, system, "Q0")  # straight to the instance, not through the router
    deadline = time.monotonic() + 30
    while holder not in kv_routing(setup.router)["events_instances"]:  # type: ignore[operator]
        assert time.monotonic() < deadline, kv_routing(setup.router)
        time.sleep(0.5)
    assert kv_routing(setup.router)["blocks_indexed"] > 0  # type: ignore[operator]

    before = [served(url) for url in setup.instances]
    hits_before = metric(holder, "vllm:prefix_cache_hits_total")
    for turn in range(1, 4):
        chat(setup.router, system, f"Q{turn}")
    moved = [served(url) - b for url, b in zip(setup.instances, before)]
    assert moved == [0, 3], moved
    assert metric(holder, "vllm:prefix_cache_hits_total") - hits_before >= 3 * 128  # at least a block each

    metrics = httpx.get(f"{setup.router}/metrics", timeout=10).text
    assert re.search(rf'^tokenyard_route_kv_blocks\{{model="{TEXT_MODEL}"\}} [1-9]', metrics, re.M)
    assert re.search(r"^tokenyard_route_kv_events_applied_total\{.*\} [1-9]", metrics, re.M)
