"""What chat and completions share: sampling options, the metered engine stream, SSE framing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from engine_adapters.base import Chunk, EngineAdapter, GenerateRequest, RankedLogprob, RouteRequest, SamplingOptions
from gateway.errors import InvalidRequest
from gateway.observability.logging import FIELDS_ATTR
from gateway.protocol.common import SamplingFields
from gateway.services import structured
from gateway.state import AppState

log = logging.getLogger(__name__)
T = TypeVar("T")

FINISH_REASONS = {"stop", "length", "content_filter", "tool_calls"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(16).hex()}"  # uuid4's randomness, without building a UUID


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def finish_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    return reason if reason in FINISH_REASONS else "stop"


def sampling_options(
    req: SamplingFields, *, max_tokens: int | None, logprobs: int | None, prompt_logprobs: int | None = None
) -> SamplingOptions:
    """`prompt_logprobs`: what the service needs (echo); the request's own vLLM extra is added here."""
    _check_unsupported(req)
    if req.prompt_logprobs is not None:
        prompt_logprobs = max(prompt_logprobs or 0, req.prompt_logprobs)
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return SamplingOptions(
        n=req.n,
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p if req.top_p else (None if req.top_p is None else 1e-9),
        top_k=req.top_k,
        min_p=req.min_p,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        stop=stop,
        stop_token_ids=tuple(req.stop_token_ids or ()),
        include_stop_str_in_output=req.include_stop_str_in_output,
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
        logit_bias=_logit_bias(req.logit_bias),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        skip_special_tokens=req.skip_special_tokens,
        structured=structured.requested(req),
        tokens_as_ids=req.return_tokens_as_token_ids,
        beam_search=req.use_beam_search,
        length_penalty=req.length_penalty,
    )


def prompt_logprobs_json(positions: list[dict[int, RankedLogprob] | None] | None) -> list[Any] | None:
    """vLLM's wire shape: a list per prompt position of {token id: {logprob, rank, decoded_token}}."""
    if positions is None:
        return None
    return [
        {
            str(tid): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
            for tid, lp in position.items()
        }
        if position
        else None
        for position in positions
    ]


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


MAX_LOGGED_FIELD_NAMES = 256  # a client sending ever new names cannot grow the set or the log without bound


def log_unknown_fields(state: AppState, req: BaseModel) -> None:
    """Unknown request fields are accepted and ignored. Each one's NAME (never its value, which may hold
    anything) is logged once per process, so operators learn what clients expect that we do not do."""
    seen = state.unknown_fields_seen
    for name in req.model_extra or ():
        if name not in seen and len(seen) < MAX_LOGGED_FIELD_NAMES:
            seen.add(name)
            log.info("ignored an unknown request field", extra={FIELDS_ATTR: {"field": name[:100]}})


def _check_unsupported(req: SamplingFields) -> None:
    if req.use_beam_search and (req.stop or req.stop_token_ids):
        # vLLM's beam search stops at EOS or max_tokens only.
        raise InvalidRequest("stop and stop_token_ids are not supported with beam search.", param="stop")
    if req.prompt_logprobs is not None and req.stream:
        # As vLLM: prompt logprobs come with the whole answer only.
        raise InvalidRequest("prompt_logprobs are not available when stream is true.", param="prompt_logprobs")


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    try:
        return {int(token): value for token, value in bias.items()}
    except ValueError:
        raise InvalidRequest("logit_bias keys must be token ids.", param="logit_bias") from None


class MeteredStream:
    """One engine request: metrics around it, and an abort when it is left unfinished. A request relayed
    in router mode is metered the same way, as the RouteRequest the route places (its pieces, not chunks)."""

    def __init__(
        self, state: AppState, adapter: EngineAdapter, request: GenerateRequest | RouteRequest, route: str
    ) -> None:
        self.state, self.adapter, self.request, self.route = state, adapter, request, route
        self.started = time.perf_counter()
        self.finished = False
        self._last_chunk_at: float | None = None
        self.label = state.model_label(request.model)
        self._inter_token = state.metrics.child(state.metrics.inter_token_latency, self.label)

    def chunks(self) -> AsyncIterator[Chunk]:
        assert isinstance(self.request, GenerateRequest)
        return self.pieces(self.adapter.generate(self.request))

    async def pieces(self, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """`source` metered: in flight, time to first piece, time between pieces; aborted if left early."""
        metrics = self.state.metrics
        in_flight = metrics.child(metrics.in_flight, self.label)
        in_flight.inc()
        try:
            async for piece in source:
                self.observe()
                yield piece
            self.finished = True
        finally:
            in_flight.dec()
            if not self.finished:
                await self._abort()

    def observe(self) -> None:
        """One more piece has come: the time to the first one, or since the last."""
        now = time.perf_counter()
        if self._last_chunk_at is None:
            metrics = self.state.metrics
            metrics.child(metrics.time_to_first_token, self.label).observe(now - self.started)
        else:
            self._inter_token.observe(now - self._last_chunk_at)
        self._last_chunk_at = now

    async def _abort(self) -> None:
        # Shielded: this runs while the task is being cancelled by a client disconnect.
        try:
            await asyncio.shield(self.adapter.abort(self.request.request_id))
        except Exception:
            log.warning("abort failed for %s", self.request.request_id, exc_info=True)

    def record(self, status: int, prompt_tokens: int, completion_tokens: int) -> None:
        metrics, model = self.state.metrics, self.label
        metrics.child(metrics.requests, model, self.route, str(status)).inc()
        metrics.child(metrics.request_duration, model, self.route).observe(time.perf_counter() - self.started)
        metrics.child(metrics.prompt_tokens, model).inc(prompt_tokens)
        metrics.child(metrics.completion_tokens, model).inc(completion_tokens)


async def merged(streams: list[AsyncIterator[Chunk]], index_offsets: list[int]) -> AsyncIterator[Chunk]:
    """Interleave several prompts' streams; choice indices are shifted so they stay unique."""
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield chunk
        return
    queue: asyncio.Queue[tuple[int, Chunk | BaseException | None]] = asyncio.Queue()

    async def pump(slot: int, stream: AsyncIterator[Chunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((slot, chunk))
            await queue.put((slot, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put((slot, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            slot, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                item.index += index_offsets[slot]
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def first_and_rest(stream: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """Pull the first chunk now, so errors before any output become a plain HTTP error."""
    first = await anext(stream)

    async def rest() -> AsyncIterator[Chunk]:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
            yield first
            async for chunk in stream:
                yield chunk

    return rest()
