"""A paced, fault-injectable engine for testing the gateway's own logic (never as proof of serving)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from engine_adapters.base import Chunk, GenerateRequest, Load, ModelInfo
from engine_adapters.errors import EngineUnavailable, GatewayError


@dataclass
class Script:
    tokens: int = 8
    delay_s: float = 0.0
    fail_before: GatewayError | Exception | None = None  # raised before the first chunk
    fail_after: int | None = None  # raise after this many chunks
    fail_with: Exception | None = None
    texts: tuple[str, ...] | None = None  # the output's pieces, one a chunk (default: "t0 ", "t1 ", ...)


class ScriptedAdapter:
    def __init__(self, name: str = "scripted", script: Script | None = None, max_model_len: int = 4096) -> None:
        self.name = name
        self.script = script or Script()
        self.max_model_len = max_model_len
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.healthy = True

    async def start(self) -> None:
        return None

    async def close(self, drain_deadline_s: float = 0.0) -> None:
        return None

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(self.name, self.max_model_len)]

    def load(self) -> Load:
        return Load(in_flight=len(self.running))

    async def check_health(self) -> None:
        if not self.healthy:
            raise EngineUnavailable("scripted engine marked unhealthy")

    async def abort(self, request_id: str) -> None:
        if request_id in self.running:
            self.running.discard(request_id)
            self.aborted.append(request_id)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        script = self.script
        if script.fail_before is not None:
            raise script.fail_before
        self.running.add(request.request_id)
        try:
            tokens = len(script.texts) if script.texts is not None else script.tokens
            total = request.sampling.max_tokens or tokens
            count = min(total, tokens)
            for i in range(count):
                if script.fail_after is not None and i >= script.fail_after:
                    raise script.fail_with or RuntimeError("scripted failure")
                await asyncio.sleep(script.delay_s)
                last = i == count - 1
                reason = ("length" if count == total else "stop") if last else None
                for index in range(request.sampling.n):
                    yield Chunk(
                        index=index,
                        text=script.texts[i] if script.texts is not None else f"t{i} ",
                        token_ids=(i,),
                        finish_reason=reason,
                        prompt_tokens=3,
                        completion_tokens=i + 1,
                    )
        finally:
            self.running.discard(request.request_id)
