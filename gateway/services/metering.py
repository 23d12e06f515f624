"""One engine request metered (in flight, time to first token, between tokens, totals) and aborted when
left unfinished (the stream helpers the generating services read it through: gateway.services.chunk_streams)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TypeVar

from engine_adapters.base import Chunk, EngineAdapter, GenerateRequest, RouteRequest
from gateway.spend import current
from gateway.state import AppState

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        self.spent = current()  # what the limits middleware charges this request from (gateway.spend)

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
                self.observe(piece.count(b"data:") if isinstance(piece, bytes) else 1)
                yield piece
            self.finished = True
        finally:
            in_flight.dec()
            if not self.finished:
                await self._abort()

    def observe(self, events: int = 1) -> None:
        """One more piece has come (of about `events` tokens): the time to the first one, or since the last."""
        if self.spent is not None:
            self.spent.events += events
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
        if self.spent is not None:
            self.spent.report(prompt_tokens, completion_tokens)
        metrics, model = self.state.metrics, self.label
        metrics.child(metrics.requests, model, self.route, str(status)).inc()
        metrics.child(metrics.request_duration, model, self.route).observe(time.perf_counter() - self.started)
        metrics.child(metrics.prompt_tokens, model).inc(prompt_tokens)
        metrics.child(metrics.completion_tokens, model).inc(completion_tokens)
