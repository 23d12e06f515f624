"""The OpenAI wire pieces chat and completions share: request ids, SSE events, finish reasons, usage,
prompt logprobs as JSON, and the skeleton of a streamed answer."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import orjson

from engine_adapters.base import Chunk, RankedLogprob
from engine_adapters.openai_wire import DONE
from gateway.errors import sse_error
from gateway.protocol.common import StreamOptions

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


class StreamedChoices(Protocol):
    """What one API brings to `event_stream`: its choices, its usage and its metrics."""

    def choices_of(self, chunk: Chunk) -> Iterator[dict[str, Any]]:
        """Fold `chunk` in, then give the choice of each event it makes (none, one or several)."""
        ...

    def usage_now(self) -> dict[str, int]:
        """The usage so far, as usage_dict gives it."""
        ...

    def record(self, status: int) -> None:
        """Count the request in the metrics, as answered with `status`."""
        ...


async def event_stream(
    answer: StreamedChoices,
    chunks: AsyncIterator[Chunk],
    *,
    request_id: str,
    object_name: str,
    model: str,
    stream_options: StreamOptions | None,
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed chat or completion: an event per choice, the usage event when asked
    for, then [DONE]; or, when the stream breaks after it began, an error event in OpenAI's shape."""
    include_usage = bool(stream_options and stream_options.include_usage)
    # vLLM's continuous_usage_stats (with include_usage): every chunk carries the usage so far.
    continuous = include_usage and bool(stream_options and stream_options.continuous_usage_stats)
    fields = {"id": request_id, "object": object_name, "created": int(time.time()), "model": model}
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    try:
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
            async for chunk in chunks:
                for choice in answer.choices_of(chunk):
                    if continuous:
                        extra["usage"] = answer.usage_now()
                    yield sse({**fields, "choices": [choice], **extra})
    except Exception as exc:
        answer.record(500)
        yield sse_error(exc)
        return
    answer.record(200)
    if include_usage:
        yield sse({**fields, "choices": [], "usage": answer.usage_now()})
    yield DONE
