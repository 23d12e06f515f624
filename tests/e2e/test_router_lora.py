"""LoRA-aware placement end to end: a router in front of two engine-mode tokenyard instances on the real vLLM
engine, LoRA enabled on both with no adapter loaded, runtime loading on in the route. The first request for
the tiny test adapter (tests/support/lora_fixture.py) loads it on one instance; the next ones go there."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import TEXT_MODEL, free_port, start_server, stop_server, wait_ready
from tests.e2e.test_router import _engine_env
from tests.support.lora_fixture import ADAPTER_NAME, build_adapter

pytestmark = pytest.mark.engine

PROMPT = "The Eiffel Tower is located in the city of"


@dataclass
class Setup:
    router: str
    instances: list[str]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from gateway.model_store import prepare_gemma

    workdir = tmp_path_factory.mktemp("router-lora")
    adapter_dir = build_adapter(workdir / "adapter")
    model = {
        "name": TEXT_MODEL,
        "model": str(prepare_gemma()),
        "dtype": "bfloat16",
        "max_model_len": 256,
        "enable_lora": True,
        "max_loras": 1,
        "max_lora_rank": 8,
    }
    env = {"TOKENYARD_MODELS": json.dumps([model]), "TOKENYARD_ALLOW_RUNTIME_LORA_UPDATING": "true"}
    procs: list[tuple[subprocess.Popen[bytes], Path, str]] = []
    try:
        for slot in range(2):  # both engines start at once
            port, log_path = free_port(), workdir / f"engine-{slot}.log"
            procs.append(
                (
                    start_server(["--port", str(port)], log_path, {**env, **_engine_env(slot)}),
                    log_path,
                    f"http://127.0.0.1:{port}",
                )
            )
        for proc, log_path, url in procs:
            wait_ready(url, proc, log_path, 900)
        instances = [url for _, _, url in procs]
        route = {
            "name": TEXT_MODEL,
            "upstreams": instances,
            "lora_adapters": {ADAPTER_NAME: str(adapter_dir)},
            "lora_runtime_load": True,
        }
        config = workdir / "router.yaml"
        config.write_text(yaml.safe_dump({"routes": [route], "router": {"health_interval_s": 1}}))
        port, log_path = free_port(), workdir / "router.log"
        procs.append((start_server(["--config", str(config), "--port", str(port)], log_path), log_path, ""))
        router = f"http://127.0.0.1:{port}"
        wait_ready(router, procs[-1][0], log_path, 60)
        yield Setup(router, instances)
    finally:
        for proc, _, _ in procs:
            stop_server(proc)


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=120, _strict_response_validation=True
    )


def greedy(url: str, model: str) -> tuple[str, list[float]]:
    out = sdk(url).completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=1)
    choice = out.choices[0]
    assert out.model == model and choice.logprobs and choice.logprobs.token_logprobs
    return choice.text, [float(lp) for lp in choice.logprobs.token_logprobs if lp is not None]


def holds(instance: str) -> bool:
    return ADAPTER_NAME in {card.id for card in sdk(instance).models.list()}


def adapter_requests(instance: str) -> float:
    text = httpx.get(f"{instance}/metrics", timeout=10).text
    pattern = rf'^tokenyard_requests_total\{{[^}}]*model="{re.escape(ADAPTER_NAME)}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def router_metric(router: str, name: str) -> float:
    text = httpx.get(f"{router}/metrics", timeout=10).text
    match = re.search(rf'^{name}\{{[^}}]*model="{TEXT_MODEL}"[^}}]*\}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} is missing"
    return float(match.group(1))


def test_the_first_request_loads_the_adapter_on_one_instance_and_the_rest_follow(setup: Setup) -> None:
    assert not any(holds(instance) for instance in setup.instances)
    cards = {card.id: card for card in sdk(setup.router).models.list()}
    assert (cards[ADAPTER_NAME].model_extra or {})["parent"] == TEXT_MODEL

    first = greedy(setup.router, ADAPTER_NAME)
    holders = [instance for instance in setup.instances if holds(instance)]
    assert len(holders) == 1, "loaded on exactly one instance"
    holder = holders[0]
    answers = [greedy(setup.router, ADAPTER_NAME) for _ in range(3)]
    assert adapter_requests(holder) == 4  # every request went where the adapter is
    assert [instance for instance in setup.instances if holds(instance)] == [holder]
    assert router_metric(setup.router, "tokenyard_route_lora_loads_total") == 1

    # The answer is the adapter's: what the holder itself answers for it, and not the base model's.
    own_text, own_lps = greedy(holder, ADAPTER_NAME)
    base_text, base_lps = greedy(setup.router, TEXT_MODEL)
    for text, lps in [first, *answers]:
        assert text == own_text and all(abs(a - b) < 1e-3 for a, b in zip(lps, own_lps))
    assert any(abs(a - b) > 1e-2 for a, b in zip(first[1], base_lps)), (first, base_text)
