"""Scoring and reranking wire models: vLLM's /v1/score, and the Jina/Cohere rerank shape of /v1/rerank."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from gateway.protocol.common import WireModel


class ScoreRequest(WireModel):
    """Pairs to score: one text_1 against each text_2, or text_1[i] against text_2[i]."""

    model: str = Field(min_length=1)
    text_1: str | list[str]
    text_2: str | list[str]
    user: str | None = None


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


class RerankRequest(WireModel):
    model: str = Field(min_length=1)
    query: str
    documents: list[str] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=0)  # None or 0: every document
    return_documents: bool = True
    user: str | None = None


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
