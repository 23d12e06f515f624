"""/v1/score and /v1/rerank on a cross-encoder through the real engine: the tiny one-label classifier of
tests/support/cross_encoder_fixture.py, configured as a pooling model. Each pair is scored by the model
(what transformers computes for it), not by the cosine of embeddings."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import START_TIMEOUT_S, free_port, start_server, stop_server, wait_ready
from tests.support.cross_encoder_fixture import build_cross_encoder, reference_scores

MODEL = "tiny-cross-encoder"
QUERY = "How do I bake bread at home?"
DOCUMENTS = [
    "The stock market fell sharply on Tuesday.",
    "Mix flour, water, yeast and salt, let the dough rise, then bake it in a hot oven.",
    "Jupiter is the largest planet in the solar system.",
]

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    model_dir = build_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))
    port, log_path = free_port(), tmp_path_factory.mktemp("server") / "server.log"
    models = f'[{{"name": "{MODEL}", "model": "{model_dir}", "kind": "embed", "dtype": "float32"}}]'
    proc = start_server(["--port", str(port)], log_path, {"TOKENYARD_MODELS": models})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log_path, START_TIMEOUT_S)
        with httpx.Client(base_url=url, timeout=60) as http:
            yield http, model_dir
    finally:
        stop_server(proc)


def test_score_and_rerank_come_from_the_cross_encoder(served: tuple[httpx.Client, Path]) -> None:
    http, model_dir = served
    expected = reference_scores(model_dir, [(QUERY, doc) for doc in DOCUMENTS])
    scored = http.post("/v1/score", json={"model": MODEL, "text_1": QUERY, "text_2": DOCUMENTS})
    assert scored.status_code == 200, scored.text
    body = scored.json()
    assert body["model"] == MODEL and body["usage"]["prompt_tokens"] > 20
    assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=1e-3)
    assert all(0 < s < 1 for s in expected) and max(expected) - min(expected) > 1e-3  # a sigmoid, spread out
    # Not cosine of anything: a cosine of a text with itself is 1, the cross-encoder's score is not.
    same = http.post("/score", json={"model": MODEL, "text_1": QUERY, "text_2": QUERY}).json()["data"][0]["score"]
    assert not math.isclose(same, 1.0, abs_tol=1e-3)
    assert same == pytest.approx(reference_scores(model_dir, [(QUERY, QUERY)])[0], abs=1e-3)
    ranked = http.post("/v1/rerank", json={"model": MODEL, "query": QUERY, "documents": DOCUMENTS}).json()
    order = sorted(range(len(DOCUMENTS)), key=lambda i: expected[i], reverse=True)
    assert [r["index"] for r in ranked["results"]] == order
    assert [r["relevance_score"] for r in ranked["results"]] == pytest.approx([expected[i] for i in order], abs=1e-3)
