"""Router mode end to end: a router in front of two engine-mode tokenyard instances on the real vLLM engine,
each in its own process, driven through the strict openai SDK."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from gateway.routing.policies import HashRing
from tests.conftest import EMBED_MODEL, TEXT_MODEL, Server
from tests.e2e.fleet import EngineFleet, engine_fleet
from tests.e2e.test_readme import code_blocks

ALIAS = "gemma"
PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, server: Server) -> Iterator[EngineFleet]:
    from gateway.model_store import prepare_gemma

    model = str(prepare_gemma())
    args = ["--model", model, "--served-model-name", TEXT_MODEL, "--max-model-len", "2048", "--dtype", "bfloat16"]
    with engine_fleet(tmp_path_factory.mktemp("router")) as started:
        instances = started.start_engines(2, lambda slot: args)
        route = {"name": TEXT_MODEL, "aliases": [ALIAS], "policy": "session", "upstreams": instances}
        # The session's engine-mode server serves the embedding model: a second model behind the router.
        embed = {"name": EMBED_MODEL, "kind": "embed", "upstreams": [server.url]}
        started.start_routers([route, embed], health_interval_s=1)
        yield started


@pytest.fixture
def sdk(router: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{router}/v1", api_key="EMPTY", max_retries=0, timeout=120, _strict_response_validation=True
    )


def served(instance: str) -> float:
    """Requests an instance answered, from its own metrics."""
    text = httpx.get(f"{instance}/metrics", timeout=10).text
    pattern = rf'^tokenyard_requests_total\{{[^}}]*model="{TEXT_MODEL}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def counts(fleet: EngineFleet) -> list[float]:
    return [served(instance) for instance in fleet.instances]


def moved(before: list[float], after: list[float]) -> list[int]:
    return [int(b - a) for a, b in zip(before, after)]


def test_models_merge_names_and_context(sdk: openai.OpenAI) -> None:
    cards = {card.id: card for card in sdk.models.list()}
    # two instances of one model: listed once, plus its alias, plus the embedding route
    assert set(cards) == {TEXT_MODEL, ALIAS, EMBED_MODEL}
    assert all(
        card.model_extra and card.model_extra["max_model_len"] == 2048 for card in (cards[TEXT_MODEL], cards[ALIAS])
    )
    assert sdk.models.retrieve(ALIAS).id == ALIAS


def test_requests_spread_across_both_instances(sdk: openai.OpenAI, fleet: EngineFleet) -> None:
    before = counts(fleet)
    with ThreadPoolExecutor(6) as pool:  # at once: least loaded (no session key) sends 3 to each
        replies = list(
            pool.map(
                lambda _: sdk.completions.create(model=TEXT_MODEL, prompt=PROMPT, max_tokens=8, temperature=0), range(6)
            )
        )
    assert all(r.choices[0].text for r in replies)
    spread = moved(before, counts(fleet))
    assert sum(spread) == 6 and min(spread) >= 2, spread


def _session_on(instance_index: int, fleet: EngineFleet) -> str:
    """A session id whose requests belong to that instance (the ring each router builds over both)."""
    ring = HashRing(fleet.instances)
    return next(f"session-{i}" for i in range(1000) if ring.owner(f"session-{i}") == fleet.instances[instance_index])


@pytest.mark.parametrize("instance_index", [0, 1])
def test_session_affinity_holds(sdk: openai.OpenAI, fleet: EngineFleet, instance_index: int) -> None:
    session = _session_on(instance_index, fleet)
    before = counts(fleet)
    for turn in range(3):
        sdk.chat.completions.create(
            model=ALIAS,
            messages=[{"role": "user", "content": f"Turn {turn}."}],
            max_tokens=4,
            extra_headers={"x-session-id": session},
        )
    expected = [0, 0]
    expected[instance_index] = 3
    assert moved(before, counts(fleet)) == expected


def test_the_user_field_is_a_session_key_too(sdk: openai.OpenAI, fleet: EngineFleet) -> None:
    before = counts(fleet)
    for _ in range(3):
        sdk.completions.create(model=TEXT_MODEL, prompt=PROMPT, max_tokens=4, user="alice")
    assert sorted(moved(before, counts(fleet))) == [0, 3]


def test_streaming_through_the_router(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=TEXT_MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert text and finish == ["length"]
    assert usage is not None and usage.completion_tokens == 12 and usage.prompt_tokens > 0


def test_router_page_example(router: str) -> None:
    """docs/router.md's example, as written, against this router (only the address changes)."""
    (example,) = [code for lang, code in code_blocks("docs/router.md") if lang == "python"]
    code = example.replace("http://localhost:8000", router)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([TEXT_MODEL, ALIAS, EMBED_MODEL])


def test_a_whole_answer_through_the_router_is_the_instances_own(sdk: openai.OpenAI, fleet: EngineFleet) -> None:
    """Non-streamed requests are streamed from the instance and folded: the same answer as asking it directly."""
    ask = {
        "model": TEXT_MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    routed = sdk.chat.completions.create(**ask)  # type: ignore[call-overload]
    direct = httpx.post(f"{fleet.instances[0]}/v1/chat/completions", json=ask, timeout=120).json()
    assert routed.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert routed.choices[0].finish_reason == direct["choices"][0]["finish_reason"]
    assert routed.usage is not None
    assert (routed.usage.prompt_tokens, routed.usage.completion_tokens) == (
        direct["usage"]["prompt_tokens"],
        direct["usage"]["completion_tokens"],
    )
    assert routed.choices[0].logprobs is not None
    assert [e.token for e in routed.choices[0].logprobs.content or []] == [
        e["token"] for e in direct["choices"][0]["logprobs"]["content"]
    ]


def test_fields_the_router_does_not_know_reach_the_instance(sdk: openai.OpenAI) -> None:
    """Completions with echo and logprobs: served by the instance itself, passed through as it answered."""
    answer = sdk.completions.create(model=ALIAS, prompt=PROMPT, max_tokens=2, temperature=0, echo=True, logprobs=1)
    choice = answer.choices[0]
    assert choice.text.startswith(PROMPT) and len(choice.text) > len(PROMPT)
    assert choice.logprobs is not None and choice.logprobs.tokens[:3] == ["The", " Eiffel", " Tower"]
    assert len(choice.logprobs.token_logprobs) == len(choice.logprobs.tokens) > 10  # prompt and output
    assert answer.model == ALIAS  # the client's name for the model, not the instance's


def test_prompt_logprobs_through_the_router(router: str, fleet: EngineFleet) -> None:
    """An instance gives prompt_logprobs only whole (streamed, they are a 400), so the router sends such a
    request as it is and passes the answer on; it matches asking the instance directly."""
    ask = {"model": TEXT_MODEL, "prompt": PROMPT, "max_tokens": 2, "temperature": 0, "prompt_logprobs": 1}
    routed = httpx.post(f"{router}/v1/completions", json=ask, timeout=120)
    direct = httpx.post(f"{fleet.instances[0]}/v1/completions", json=ask, timeout=120).json()
    assert routed.status_code == 200, routed.text
    choice = routed.json()["choices"][0]
    assert choice["prompt_logprobs"] == direct["choices"][0]["prompt_logprobs"]
    assert choice["prompt_logprobs"][0] is None and len(choice["prompt_logprobs"]) > 5
    assert choice["text"] == direct["choices"][0]["text"]


def test_a_stream_carries_usage_only_when_asked(router: str) -> None:
    body = {"model": TEXT_MODEL, "prompt": PROMPT, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{router}/v1/completions", json=body, timeout=120) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all('"choices":[]' not in event and '"usage":{' not in event for event in events[:-1])
    before = served_tokens(router)
    sdk_body = {**body, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{router}/v1/completions", json=sdk_body, timeout=120) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert '"usage":{' in events[-2] and events[-1] == "[DONE]"
    assert served_tokens(router) >= before + 3  # the router counted the tokens either way


def served_tokens(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^tokenyard_completion_tokens_total\{[^}]*\} (\S+)$", text, re.M))


def test_constrained_output_through_the_router(sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(
        model=TEXT_MODEL,
        messages=[{"role": "user", "content": "Is Paris in France?"}],
        max_tokens=4,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert answer.choices[0].message.content in ("yes", "no")


def test_tokenizer_routes_pass_through(router: str, fleet: EngineFleet) -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    for body in ({"model": TEXT_MODEL, "prompt": PROMPT}, {"model": TEXT_MODEL, "messages": messages}):
        routed = httpx.post(f"{router}/tokenize", json=body, timeout=60)
        direct = httpx.post(f"{fleet.instances[0]}/tokenize", json=body, timeout=60)
        assert routed.status_code == 200 and routed.json() == direct.json()
    tokens = httpx.post(f"{router}/tokenize", json={"model": ALIAS, "prompt": PROMPT}, timeout=60).json()["tokens"]
    text = httpx.post(f"{router}/detokenize", json={"model": ALIAS, "tokens": tokens}, timeout=60).json()
    assert text["prompt"].endswith(PROMPT)
    bad = httpx.post(f"{router}/detokenize", json={"model": TEXT_MODEL, "tokens": "x"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"  # checked by the router itself
    check = {"prompts": [{"model": TEXT_MODEL, "prompt": PROMPT, "max_tokens": 16}]}
    routed = httpx.post(f"{router}/api/v1/token_check", json=check, timeout=60)
    direct = httpx.post(f"{fleet.instances[0]}/api/v1/token_check", json=check, timeout=60)
    assert routed.status_code == 200 and routed.json() == direct.json()


def test_generation_from_an_embedding_route_is_a_404(router: str) -> None:
    answer = httpx.post(f"{router}/v1/completions", json={"model": EMBED_MODEL, "prompt": "x"}, timeout=60)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"


def test_responses_with_a_tool_and_a_continuation_through_the_router(sdk: openai.OpenAI, fleet: EngineFleet) -> None:
    """The router serves /v1/responses itself on the instances' chat path: a forced function call, then its
    output continuing the stored response, retrieved through the other router (they share one store here)."""
    weather = {
        "type": "function",
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
        },
    }
    first = sdk.responses.create(
        model=TEXT_MODEL,
        input="What is the weather in Paris?",
        tools=[weather],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=40,
        temperature=0,
    )
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    second = sdk.responses.create(
        model=TEXT_MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny."}],
        max_output_tokens=8,
        temperature=0,
    )
    assert second.output[0].type == "message" and second.output_text.strip()
    for router in fleet.routers.values():
        other = openai.OpenAI(base_url=f"{router}/v1", api_key="EMPTY", max_retries=0)
        assert other.responses.retrieve(second.id).previous_response_id == first.id
