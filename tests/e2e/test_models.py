"""/v1/models through the real server and the openai SDK."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import EMBED_MODEL, TEXT_MODEL


def test_list_models(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {TEXT_MODEL, EMBED_MODEL} <= set(models)
    card = models[TEXT_MODEL]
    assert card.object == "model" and card.owned_by and card.created > 0
    assert card.model_extra and card.model_extra["max_model_len"] == 2048


def test_retrieve_model(client: openai.OpenAI) -> None:
    card = client.models.retrieve(TEXT_MODEL)
    assert card.id == TEXT_MODEL and card.object == "model"


def test_unknown_model_is_404(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    body = http.get("/v1/models/no-such-model").json()
    assert body["error"]["code"] == "model_not_found"


def test_health_ready_metrics(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    assert http.get("/ready").status_code == 200
    text = http.get("/metrics").text
    assert "vllm:num_requests_running" in text and "vllm:num_requests_waiting" in text
    assert "tokenyard_requests_total" in text
