"""The app the fuzzers attack: create_app with scripted engines and the whole front door switched on."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from engine_adapters.base import EngineAdapter, ModelInfo
from gateway.app import create_app
from gateway.settings import Settings
from tests.support.scripted_engine import ScriptedAdapter

MODEL = "scripted"
EMBED_MODEL = "scripted-embed"
KEY = "sk-fuzz-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}
# Caps low enough that "huge" values meet a cap, and a body limit the fuzzers can reach.
LIMITS = {"max_tokens": 512, "max_n": 8, "max_stop": 4, "max_prompt_chars": 20_000, "max_body_bytes": 64 * 1024}


class ScriptedEmbedder(ScriptedAdapter):
    """Four zeros per input: enough for the embeddings route to run its own logic."""

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(self.name, self.max_model_len, kind="embed")]

    async def embed(
        self, request_id: str, model: str, inputs: list[str] | list[list[int]], forwarded: Any = None
    ) -> tuple[list[list[float]], int]:
        return [[0.0] * 4 for _ in inputs], len(inputs)


def fuzz_app() -> FastAPI:
    adapters: dict[str, EngineAdapter] = {MODEL: ScriptedAdapter(MODEL), EMBED_MODEL: ScriptedEmbedder(EMBED_MODEL)}

    async def factory(_: Settings) -> dict[str, EngineAdapter]:
        return adapters

    return create_app(Settings(models=[], api_keys=KEY, limits=LIMITS), adapter_factory=factory)
