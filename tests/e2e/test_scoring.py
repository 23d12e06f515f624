"""/v1/score and /v1/rerank on the real MiniLM: cosine similarity of the engine's own embeddings."""

from __future__ import annotations

import math

import httpx
import pytest

from tests.conftest import EMBED_MODEL, TEXT_MODEL

QUERY = "How do I bake bread at home?"
RELEVANT = "Mix flour, water, yeast and salt, let the dough rise, then bake it in a hot oven."
UNRELATED = [
    "The stock market fell sharply on Tuesday.",
    "Jupiter is the largest planet in the solar system.",
    "The football match ended in a draw.",
]
DOCUMENTS = [UNRELATED[0], RELEVANT, *UNRELATED[1:]]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_score_is_the_cosine_of_the_embeddings(http: httpx.Client) -> None:
    answer = http.post("/v1/score", json={"model": EMBED_MODEL, "text_1": QUERY, "text_2": [RELEVANT, UNRELATED[0]]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list" and body["model"] == EMBED_MODEL and body["id"].startswith("score-")
    assert [d["index"] for d in body["data"]] == [0, 1] and all(d["object"] == "score" for d in body["data"])
    vectors = [
        d["embedding"]
        for d in http.post(
            "/v1/embeddings", json={"model": EMBED_MODEL, "input": [QUERY, RELEVANT, UNRELATED[0]]}
        ).json()["data"]
    ]
    expected = [cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])]
    assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=1e-4)
    assert body["data"][0]["score"] > body["data"][1]["score"]
    assert body["usage"]["prompt_tokens"] > 10


def test_score_pairs_each_text_with_its_counterpart(http: httpx.Client) -> None:
    pairwise = http.post(
        "/score", json={"model": EMBED_MODEL, "text_1": [QUERY, QUERY], "text_2": [UNRELATED[0], RELEVANT]}
    ).json()["data"]
    assert pairwise[1]["score"] > pairwise[0]["score"]
    mismatched = http.post(
        "/v1/score", json={"model": EMBED_MODEL, "text_1": [QUERY, QUERY], "text_2": [RELEVANT, RELEVANT, RELEVANT]}
    )
    assert mismatched.status_code == 400 and mismatched.json()["error"]["param"] == "text_1"


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_puts_the_relevant_document_first(http: httpx.Client, path: str) -> None:
    answer = http.post(path, json={"model": EMBED_MODEL, "query": QUERY, "documents": DOCUMENTS})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    results = body["results"]
    assert [r["index"] for r in results][0] == 1 and len(results) == len(DOCUMENTS)
    assert results[0]["document"] == {"text": RELEVANT}
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert body["model"] == EMBED_MODEL and body["usage"]["total_tokens"] > 10


def test_rerank_top_n_and_return_documents(http: httpx.Client) -> None:
    whole = http.post("/v1/rerank", json={"model": EMBED_MODEL, "query": QUERY, "documents": DOCUMENTS}).json()
    top = http.post(
        "/v1/rerank",
        json={"model": EMBED_MODEL, "query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": False},
    ).json()
    assert [r["index"] for r in top["results"]] == [r["index"] for r in whole["results"][:2]]
    assert all(r["document"] is None for r in top["results"])


def test_bad_scoring_requests_are_clear_400s_and_404s(http: httpx.Client) -> None:
    too_long = http.post(
        "/v1/rerank", json={"model": EMBED_MODEL, "query": QUERY, "documents": [RELEVANT, "bread " * 2000]}
    )
    assert too_long.status_code == 400, too_long.text
    error = too_long.json()["error"]
    assert error["code"] == "context_length_exceeded" and "maximum context length" in error["message"]
    empty = http.post("/v1/rerank", json={"model": EMBED_MODEL, "query": "", "documents": [RELEVANT]})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "query"
    on_a_generating_model = http.post("/v1/score", json={"model": TEXT_MODEL, "text_1": QUERY, "text_2": RELEVANT})
    assert on_a_generating_model.status_code == 404
    assert on_a_generating_model.json()["error"]["code"] == "model_not_found"
