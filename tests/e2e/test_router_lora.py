"""LoRA-aware placement end to end: a router in front of two engine-mode tokenyard instances on the real vLLM
engine, LoRA enabled on both with no adapter loaded, runtime loading on in the route. The first request for
the tiny test adapter (tests/support/lora_fixture.py) loads it on one instance; the next ones go there."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import TEXT_MODEL
from tests.e2e.fleet import EngineFleet, engine_fleet
from tests.support.lora_fixture import ADAPTER_NAME, build_adapter
from tests.support.waiting import wait_until

pytestmark = pytest.mark.engine

PROMPT = "The Eiffel Tower is located in the city of"
HEALTH_INTERVAL_S = 1


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineFleet]:
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
    with engine_fleet(workdir) as started:
        instances = started.start_engines(2, env=env)
        route = {
            "name": TEXT_MODEL,
            "upstreams": instances,
            "lora_adapters": {ADAPTER_NAME: str(adapter_dir)},
            "lora_runtime_load": True,
        }
        started.start_routers([route], health_interval_s=HEALTH_INTERVAL_S)
        yield started


@pytest.fixture
def unloaded(fleet: EngineFleet) -> Iterator[None]:
    """No instance holds the adapter when the test begins, nor after it (the routers run one after the
    other over the same instances), and every router has seen that in its health checks."""
    yield
    for instance in fleet.instances:
        if holds(instance):
            answer = httpx.post(f"{instance}/v1/unload_lora_adapter", json={"lora_name": ADAPTER_NAME}, timeout=60)
            assert answer.status_code == 200, answer.text
    for router in fleet.routers.values():
        wait_until(
            lambda router=router: not sum(adapters_seen(router).values()), timeout_s=30, what="routers see no adapter"
        )


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


def requests_served(instance: str) -> float:
    """Requests the instance answered: an adapter loaded at run time counts under its base model's label (no
    client-chosen name becomes a label), so this counts the base model's."""
    text = httpx.get(f"{instance}/metrics", timeout=10).text
    pattern = rf'^tokenyard_requests_total\{{[^}}]*model="{re.escape(TEXT_MODEL)}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def adapters_seen(router: str) -> dict[str, float]:
    """The adapters the router sees on each instance (tokenyard_upstream_lora_adapters)."""
    text = httpx.get(f"{router}/metrics", timeout=10).text
    pattern = r'^tokenyard_upstream_lora_adapters\{[^}]*upstream="([^"]+)"[^}]*\} (\S+)$'
    return {url: float(v) for url, v in re.findall(pattern, text, re.MULTILINE)}


def router_metric(router: str, name: str) -> float:
    text = httpx.get(f"{router}/metrics", timeout=10).text
    match = re.search(rf'^{name}\{{[^}}]*model="{TEXT_MODEL}"[^}}]*\}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} is missing"
    return float(match.group(1))


def test_the_first_request_loads_the_adapter_on_one_instance_and_the_rest_follow(
    router: str, fleet: EngineFleet, unloaded: None
) -> None:
    assert not any(holds(instance) for instance in fleet.instances)
    served_before = {instance: requests_served(instance) for instance in fleet.instances}
    cards = {card.id: card for card in sdk(router).models.list()}
    assert (cards[ADAPTER_NAME].model_extra or {})["parent"] == TEXT_MODEL

    first = greedy(router, ADAPTER_NAME)
    holders = [instance for instance in fleet.instances if holds(instance)]
    assert len(holders) == 1, "loaded on exactly one instance"
    holder = holders[0]
    answers = [greedy(router, ADAPTER_NAME) for _ in range(3)]
    # Every request went where the adapter is, and none elsewhere.
    assert {i: requests_served(i) - served_before[i] for i in fleet.instances} == {
        i: 4 if i == holder else 0 for i in fleet.instances
    }
    assert [instance for instance in fleet.instances if holds(instance)] == [holder]
    assert adapters_seen(router) == {i: 1 if i == holder else 0 for i in fleet.instances}
    assert router_metric(router, "tokenyard_route_lora_loads_total") == 1

    # The answer is the adapter's: what the holder itself answers for it, and not the base model's.
    own_text, own_lps = greedy(holder, ADAPTER_NAME)
    base_text, base_lps = greedy(router, TEXT_MODEL)
    for text, lps in [first, *answers]:
        assert text == own_text and all(abs(a - b) < 1e-3 for a, b in zip(lps, own_lps))
    assert any(abs(a - b) > 1e-2 for a, b in zip(first[1], base_lps)), (first, base_text)
