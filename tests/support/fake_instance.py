"""A fake instance adapter for the router's unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from engine_adapters.base import Chunk, GenerateRequest, ModelInfo
from gateway.errors import EngineUnavailable, InvalidRequest


class FakeUpstream:
    """Behaviour: "ok", "before" (fails before output), "after" (fails after one chunk), "invalid",
    "slow" (0.3 s between its two chunks), "endless" (a minute)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.behaviour = "ok"
        self.attempts = 0
        self.arrived: list[str] = []  # generation's request ids, in the order they reached this instance
        self.aborted: list[str] = []
        self.max_len: int | None = 2048
        self.lora_names: frozenset[str] = frozenset()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        self.attempts += 1
        self.arrived.append(request.request_id)
        if self.behaviour == "before":
            raise EngineUnavailable("down")
        if self.behaviour == "invalid":
            raise InvalidRequest("bad")
        yield Chunk(0, text=f"{self.url}:0")
        if self.behaviour == "after":
            raise EngineUnavailable("broke")
        if self.behaviour in ("endless", "slow"):
            await asyncio.sleep(60 if self.behaviour == "endless" else 0.3)
        yield Chunk(0, text=f"{self.url}:1", finish_reason="stop")

    async def embed(
        self, request_id: str, model: str, inputs: Any, forwarded: Any = None
    ) -> tuple[list[list[float]], int]:
        self.attempts += 1
        if self.behaviour == "before":
            raise EngineUnavailable("down")
        return [[1.0]], 1

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def max_model_len(self) -> int | None:
        return self.max_len

    def models(self) -> list[ModelInfo]:
        return []

    async def start(self) -> None:
        return None

    async def close(self, drain_deadline_s: float = 0.0) -> None:
        return None

    async def check_health(self) -> None:
        if self.behaviour == "before":
            raise EngineUnavailable("down")

    async def scrape_load(self) -> None:
        return None

    async def refresh_models(self) -> None:
        return None


class FakeLoraUpstream(FakeUpstream):
    """A FakeUpstream that serves LoRA adapters: `held` is what it lists with a parent; a load waits for
    `gate` when one is set and fails (503, or 400 for a path holding "bad") while `load_fails` is set."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.held: list[str] = []
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.load_fails = False
        self.gate: asyncio.Event | None = None

    def models(self) -> list[ModelInfo]:
        return [ModelInfo("base", 2048), *(ModelInfo(name, 2048, parent="base") for name in self.held)]

    async def load_lora(self, name: str, path: str) -> None:
        self.loads.append(name)
        if self.gate is not None:
            await self.gate.wait()
        if "bad" in path:
            raise InvalidRequest(f"Failed to load {name}")
        if self.load_fails:
            raise EngineUnavailable("down")
        self.held.append(name)

    async def unload_lora(self, name: str) -> None:
        self.unloads.append(name)
        self.held.remove(name)
