"""LoRA adapters as model names over the real vLLM engine, through the openai SDK.

The session's server serves the tiny adapter of tests/support/lora_fixture.py (rank 8, random non-zero B) on
the text model, and has the runtime routes on (see tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import TEXT_MODEL
from tests.support.lora_fixture import ADAPTER_NAME

PROMPT = "The Eiffel Tower is located in the city of"
RUNTIME_NAME = "runtime-lora"


@pytest.fixture(scope="module")
def adapter_path(client: openai.OpenAI) -> str:
    cards = {card.id: card for card in client.models.list()}
    if ADAPTER_NAME not in cards:
        pytest.skip("this server was started without the test LoRA adapter (TOKENYARD_TEST_URL)")
    root = (cards[ADAPTER_NAME].model_extra or {})["root"]
    assert isinstance(root, str)
    return root


def greedy(client: openai.OpenAI, model: str) -> tuple[str, list[float]]:
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=1)
    choice = out.choices[0]
    assert out.model == model and choice.logprobs and choice.logprobs.token_logprobs
    return choice.text, [float(lp) for lp in choice.logprobs.token_logprobs if lp is not None]


def differs(a: list[float], b: list[float], at_least: float = 1e-2) -> bool:
    return any(abs(x - y) > at_least for x, y in zip(a, b))


def test_adapter_is_listed_with_its_parent(client: openai.OpenAI, adapter_path: str) -> None:
    card = client.models.retrieve(ADAPTER_NAME)
    assert card.id == ADAPTER_NAME and card.object == "model"
    extra = card.model_extra or {}
    assert extra["parent"] == TEXT_MODEL
    assert (Path(adapter_path) / "adapter_config.json").is_file()
    assert (client.models.retrieve(TEXT_MODEL).model_extra or {})["parent"] is None


def test_adapter_changes_the_output_and_leaves_the_base_alone(client: openai.OpenAI, adapter_path: str) -> None:
    base_text, base_lps = greedy(client, TEXT_MODEL)
    lora_text, lora_lps = greedy(client, ADAPTER_NAME)
    again_text, again_lps = greedy(client, TEXT_MODEL)
    assert "Paris" in base_text
    # The adapter's B weights are not zero: the same prompt gets different token probabilities.
    assert differs(base_lps, lora_lps), (base_text, lora_text, base_lps, lora_lps)
    # ...and serving it did not change the base model (vLLM's LoRA is per request, not merged in).
    assert again_text == base_text and not differs(base_lps, again_lps, at_least=1e-3)


def test_adapter_chat_and_stream(client: openai.OpenAI, loose_client: openai.OpenAI, adapter_path: str) -> None:
    chat = client.chat.completions.create(
        model=ADAPTER_NAME, max_tokens=8, temperature=0, messages=[{"role": "user", "content": "Say hello."}]
    )
    assert chat.model == ADAPTER_NAME and chat.choices[0].message.content
    whole = client.completions.create(model=ADAPTER_NAME, prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
    events = list(
        loose_client.completions.create(model=ADAPTER_NAME, prompt=PROMPT, max_tokens=8, temperature=0, stream=True)
    )
    assert all(event.model == ADAPTER_NAME for event in events)
    assert "".join(c.text for event in events for c in event.choices) == whole


def test_unknown_adapter_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model=f"{ADAPTER_NAME}-missing", prompt=PROMPT, max_tokens=2)
    assert err.value.code == "model_not_found"


def test_runtime_load_and_unload(client: openai.OpenAI, http: httpx.Client, adapter_path: str) -> None:
    loaded = http.post("/v1/load_lora_adapter", json={"lora_name": RUNTIME_NAME, "lora_path": adapter_path})
    assert loaded.status_code == 200, loaded.text
    try:
        card = client.models.retrieve(RUNTIME_NAME)
        assert (card.model_extra or {})["parent"] == TEXT_MODEL
        assert (card.model_extra or {})["root"] == adapter_path
        # The same weights under a second name: the same output as the configured adapter, not the base's.
        _, runtime_lps = greedy(client, RUNTIME_NAME)
        _, static_lps = greedy(client, ADAPTER_NAME)
        _, base_lps = greedy(client, TEXT_MODEL)
        assert not differs(runtime_lps, static_lps, at_least=1e-3) and differs(runtime_lps, base_lps)
        again = http.post("/v1/load_lora_adapter", json={"lora_name": RUNTIME_NAME, "lora_path": adapter_path})
        assert again.status_code == 400 and again.json()["error"]["param"] == "lora_name"
    finally:
        unloaded = http.post("/v1/unload_lora_adapter", json={"lora_name": RUNTIME_NAME})
    assert unloaded.status_code == 200, unloaded.text
    assert RUNTIME_NAME not in {card.id for card in client.models.list()}
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=RUNTIME_NAME, prompt=PROMPT, max_tokens=2)


def test_runtime_route_errors(http: httpx.Client, tmp_path: Path, adapter_path: str) -> None:
    bad = http.post("/v1/load_lora_adapter", json={"lora_name": "broken-lora", "lora_path": str(tmp_path)})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "lora_path", bad.text
    assert http.get("/v1/models/broken-lora").status_code == 404
    taken = http.post("/v1/load_lora_adapter", json={"lora_name": TEXT_MODEL, "lora_path": adapter_path})
    assert taken.status_code == 400 and taken.json()["error"]["param"] == "lora_name"
    missing = http.post("/v1/unload_lora_adapter", json={"lora_name": "no-such-lora"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "lora_name"
    base = http.post("/v1/unload_lora_adapter", json={"lora_name": TEXT_MODEL})
    assert base.status_code == 404  # a base model is not an adapter
    incomplete = http.post("/v1/load_lora_adapter", json={"lora_name": "x"})
    assert incomplete.status_code == 400 and incomplete.json()["error"]["param"] == "lora_path"
