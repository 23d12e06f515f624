"""Embeddings: every input in one engine batch, vectors back in input order."""

from __future__ import annotations

import base64
import sys
import time
from array import array

from engine_adapters.base import Embedder
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.protocol.embeddings import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from gateway.services.generation import new_id
from gateway.state import AppState

ROUTE = "/v1/embeddings"


def _inputs(req: EmbeddingRequest) -> list[str] | list[list[int]]:
    data = req.input
    if isinstance(data, str):
        return [data]
    if not data:
        raise InvalidRequest("input must not be empty.", param="input")
    if all(isinstance(item, int) for item in data):
        return [list(data)]  # type: ignore[return-value]
    if any(isinstance(item, str) and not item for item in data):
        raise InvalidRequest("input must not contain empty strings.", param="input")
    return list(data)  # type: ignore[return-value]


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        packed = array("f", vector)
        if sys.byteorder == "big":  # OpenAI's base64 is little-endian float32
            packed.byteswap()
        return base64.b64encode(packed.tobytes()).decode()
    return vector


async def create(state: AppState, req: EmbeddingRequest) -> EmbeddingResponse:
    adapter = state.adapter_for(req.model, kind="embed")
    if not isinstance(adapter, Embedder):
        raise ModelNotFound(req.model)
    if req.dimensions is not None:
        raise InvalidRequest("dimensions is not supported for this model.", param="dimensions")
    started = time.perf_counter()
    inputs = _inputs(req)
    vectors, prompt_tokens = await adapter.embed(new_id("embd"), req.model, inputs)
    metrics, model = state.metrics, state.model_label(req.model)
    metrics.child(metrics.requests, model, ROUTE, "200").inc()
    metrics.child(metrics.request_duration, model, ROUTE).observe(time.perf_counter() - started)
    metrics.child(metrics.prompt_tokens, model).inc(prompt_tokens)
    data = [Embedding(index=i, embedding=_encode(v, req.encoding_format)) for i, v in enumerate(vectors)]
    usage = EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)
    return EmbeddingResponse(data=data, model=req.model, usage=usage)
