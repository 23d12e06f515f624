"""Embeddings: every input in one engine batch, vectors back in input order."""

from __future__ import annotations

import base64
import sys
import time
from array import array

from engine_adapters.base import NOTHING_FORWARDED, Embedder, Forwarded
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.protocol.embeddings import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from gateway.services.wire import new_id
from gateway.state import AppState

ROUTE = "/v1/embeddings"


def _inputs(req: EmbeddingRequest) -> list[str] | list[list[int]]:
    data = req.input
    if isinstance(data, str):
        return [data]
    if not data:
        raise InvalidRequest("input must not be empty.", param="input")
    if all(isinstance(item, int) for item in data):
        return [list(data)]  # type: ignore[return-value]  # checked above: every item is an int
    if any(isinstance(item, str) and not item for item in data):
        raise InvalidRequest("input must not contain empty strings.", param="input")
    return list(data)  # type: ignore[return-value]  # strings or token-id lists, as validated


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        packed = array("f", vector)
        if sys.byteorder == "big":  # OpenAI's base64 is little-endian float32
            packed.byteswap()
        return base64.b64encode(packed.tobytes()).decode()
    return vector


async def embed(
    state: AppState,
    model: str,
    inputs: list[str] | list[list[int]],
    route: str,
    forwarded: Forwarded = NOTHING_FORWARDED,
) -> tuple[list[list[float]], int]:
    """One vector per input from the model's engine, and the prompt tokens; counted in `route`'s metrics."""
    adapter = state.adapter_for(model, kind="embed")
    if not isinstance(adapter, Embedder):
        raise ModelNotFound(model)
    started = time.perf_counter()
    vectors, prompt_tokens = await adapter.embed(new_id("embd"), model, inputs, forwarded)
    record(state, model, route, started, prompt_tokens)
    return vectors, prompt_tokens


def record(state: AppState, model: str, route: str, started: float, prompt_tokens: int) -> None:
    """A served pooling request in `route`'s metrics: its count, its duration since `started`, its tokens."""
    metrics, label = state.metrics, state.model_label(model)
    metrics.child(metrics.requests, label, route, "200").inc()
    metrics.child(metrics.request_duration, label, route).observe(time.perf_counter() - started)
    metrics.child(metrics.prompt_tokens, label).inc(prompt_tokens)


async def create(state: AppState, req: EmbeddingRequest, forwarded: Forwarded = NOTHING_FORWARDED) -> EmbeddingResponse:
    state.adapter_for(req.model, kind="embed")  # 404 for an unknown model before the request's own faults
    if req.dimensions is not None:
        raise InvalidRequest("dimensions is not supported for this model.", param="dimensions")
    vectors, prompt_tokens = await embed(state, req.model, _inputs(req), ROUTE, forwarded)
    data = [Embedding(index=i, embedding=_encode(v, req.encoding_format)) for i, v in enumerate(vectors)]
    usage = EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)
    return EmbeddingResponse(data=data, model=req.model, usage=usage)
