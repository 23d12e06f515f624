"""Scoring and reranking, as vLLM does them: on a cross-encoder (a one-label sequence classifier) each pair
is scored by the model itself, through the engine (base.PairScorer); on an embedding model each pair's
score is the cosine similarity of the engine's embeddings of its two texts, every distinct text embedded
once, in one batch."""

from __future__ import annotations

import math
import time

from engine_adapters.base import PairScorer
from gateway.errors import InvalidRequest
from gateway.protocol.scoring import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    ScoreUsage,
)
from gateway.services.embeddings import embed, record
from gateway.services.wire import new_id
from gateway.state import AppState


def cosine(a: list[float], b: list[float]) -> float:
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norms if norms else 0.0


def pairs(req: ScoreRequest) -> list[tuple[str, str]]:
    """vLLM's pairing: one against one, one against each, or each against its counterpart."""
    firsts = [req.text_1] if isinstance(req.text_1, str) else req.text_1
    seconds = [req.text_2] if isinstance(req.text_2, str) else req.text_2
    if not firsts or not seconds:
        raise InvalidRequest("text_1 and text_2 must each hold at least one text.", param="text_1")
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    if len(firsts) != len(seconds):
        raise InvalidRequest("text_1 must be one text, or as many texts as text_2.", param="text_1")
    return list(zip(firsts, seconds, strict=True))


async def _scores(
    state: AppState, model: str, text_pairs: list[tuple[str, str]], route: str, params: tuple[str, str]
) -> tuple[list[float], int]:
    """Each pair's score, and the prompt tokens read. `params`: the fields the pairs' sides came from."""
    for side, param in enumerate(params):
        if any(not pair[side] for pair in text_pairs):
            raise InvalidRequest(f"{param} must not hold an empty text.", param=param)
    adapter = state.adapter_for(model, kind="embed")
    if isinstance(adapter, PairScorer) and adapter.scores_pairs(model):
        started = time.perf_counter()
        scores, prompt_tokens = await adapter.score_pairs(new_id("score"), model, text_pairs)
        record(state, model, route, started, prompt_tokens)
        return scores, prompt_tokens
    texts = list(dict.fromkeys(text for pair in text_pairs for text in pair))
    vectors, prompt_tokens = await embed(state, model, texts, route)
    by_text = dict(zip(texts, vectors, strict=True))
    return [cosine(by_text[a], by_text[b]) for a, b in text_pairs], prompt_tokens


async def score(state: AppState, req: ScoreRequest, route: str) -> ScoreResponse:
    state.adapter_for(req.model, kind="embed")  # 404 for an unknown model before the request's own faults
    scores, tokens = await _scores(state, req.model, pairs(req), route, ("text_1", "text_2"))
    return ScoreResponse(
        id=new_id("score"),
        created=int(time.time()),
        model=req.model,
        data=[ScoreData(index=i, score=s) for i, s in enumerate(scores)],
        usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


async def rerank(state: AppState, req: RerankRequest, route: str) -> RerankResponse:
    """The documents, most relevant first: the top_n of them (all when top_n is 0 or absent)."""
    state.adapter_for(req.model, kind="embed")
    scores, tokens = await _scores(
        state, req.model, [(req.query, doc) for doc in req.documents], route, ("query", "documents")
    )
    ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[: req.top_n or None]
    results = [
        RerankResult(
            index=i,
            relevance_score=scores[i],
            document=RerankDocument(text=req.documents[i]) if req.return_documents else None,
        )
        for i in ranked
    ]
    return RerankResponse(id=new_id("rerank"), model=req.model, results=results, usage=RerankUsage(total_tokens=tokens))
