"""The seam between the gateway and whatever runs the model.

An adapter starts and closes, lists its models, generates engine-neutral
chunks for a request id the gateway chooses, aborts by that id, raises when it
is unhealthy and reports its load without I/O. Optional abilities (embeddings)
are separate protocols. Nothing here imports vLLM, FastAPI or httpx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


# The priority of the request being served. The admission middleware sets it from x-priority or the
# body's `priority`, so the services need not thread it through to every GenerateRequest they build.
REQUEST_PRIORITY: ContextVar[int] = ContextVar("tokenyard_request_priority", default=0)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    max_model_len: int | None
    kind: str = "generate"  # "generate" or "embed"
    root: str | None = None


@dataclass(frozen=True)
class SamplingOptions:
    """Engine-neutral sampling; None means the engine's default."""

    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None  # top-k alternatives per sampled token; 0 = the sampled token only
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True


@dataclass
class GenerateRequest:
    request_id: str
    model: str
    sampling: SamplingOptions
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None  # chat: the adapter applies the template
    add_generation_prompt: bool = True
    # vLLM's scheduling priority (lower runs sooner); set per request by the gateway's admission control.
    priority: int = field(default_factory=lambda: REQUEST_PRIORITY.get())
    # Router mode: session affinity key (the x-session-id header, else the `user` field).
    routing_key: str | None = None
    # False when the caller sends nothing to the client until the output is complete, so a
    # router may retry a failure at any point rather than only before the first chunk.
    stream: bool = True


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class Chunk:
    """What one engine step adds to one choice."""

    index: int
    text: str = ""
    token_ids: Sequence[int] = ()
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative for this choice
    # Only on a choice's first chunk, and only when asked for:
    prompt_text: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass(frozen=True)
class Load:
    in_flight: int = 0
    waiting: int = 0
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class EngineAdapter(Protocol):
    async def start(self) -> None: ...

    async def close(self, drain_deadline_s: float = 0.0) -> None: ...

    def models(self) -> list[ModelInfo]: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None: ...

    def load(self) -> Load: ...


@runtime_checkable
class Embedder(Protocol):
    async def embed(self, request_id: str, model: str, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        """Return one vector per input and the number of prompt tokens."""
        ...
