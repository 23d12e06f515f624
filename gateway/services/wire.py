"""The OpenAI wire pieces chat and completions share: request ids, SSE events, finish reasons, usage,
and prompt logprobs as JSON."""

from __future__ import annotations

import os
from typing import Any

import orjson

from engine_adapters.base import RankedLogprob

FINISH_REASONS = {"stop", "length", "content_filter", "tool_calls"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(16).hex()}"  # uuid4's randomness, without building a UUID


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def finish_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    return reason if reason in FINISH_REASONS else "stop"


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
