"""Chat completions: wire request -> engine request; engine chunks -> wire response or SSE."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from engine_adapters.base import Chunk, GenerateRequest, TokenLogprob
from gateway.errors import InvalidRequest
from gateway.protocol.chat import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageOut,
    ChoiceLogprobs,
)
from gateway.protocol.common import Usage
from gateway.services.generation import (
    DONE,
    MeteredStream,
    finish_reason,
    first_and_rest,
    new_id,
    sampling_options,
    sse,
    sse_error,
)
from gateway.state import AppState

ROUTE = "/v1/chat/completions"


def engine_request(req: ChatCompletionRequest, session_id: str | None = None) -> GenerateRequest:
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true.", param="top_logprobs")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    return GenerateRequest(
        request_id=new_id("chatcmpl"),
        model=req.model,
        sampling=sampling_options(req, max_tokens=req.output_budget, logprobs=logprobs),
        messages=messages,
        add_generation_prompt=req.add_generation_prompt,
        routing_key=session_id or req.user,
        stream=req.stream,
    )


def _logprob_entries(logprobs: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": list(lp.token.encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in lp.top],
        }
        for lp in logprobs
    ]


async def complete(state: AppState, req: ChatCompletionRequest, session_id: str | None = None) -> ChatCompletion:
    greq = engine_request(req, session_id)
    metered = MeteredStream(state, state.adapter_for(req.model), greq, ROUTE)
    texts: dict[int, list[str]] = {i: [] for i in range(req.n)}
    logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(req.n)}
    reasons: dict[int, str] = {}
    tokens: dict[int, int] = {}
    prompt_tokens = 0
    async for chunk in metered.chunks():
        texts[chunk.index].append(chunk.text)
        logprobs[chunk.index].extend(chunk.logprobs or ())
        prompt_tokens, tokens[chunk.index] = chunk.prompt_tokens, chunk.completion_tokens
        if chunk.finish_reason:
            reasons[chunk.index] = finish_reason(chunk.finish_reason) or "stop"
    completion_tokens = sum(tokens.values())
    metered.record(200, prompt_tokens, completion_tokens)
    choices = [
        ChatChoice(
            index=i,
            message=ChatMessageOut(content="".join(texts[i])),
            logprobs=ChoiceLogprobs.model_validate({"content": _logprob_entries(logprobs[i])}) if req.logprobs else None,
            finish_reason=reasons.get(i, "stop"),  # type: ignore[arg-type]
        )
        for i in range(req.n)
    ]
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                  total_tokens=prompt_tokens + completion_tokens)
    return ChatCompletion(id=greq.request_id, created=int(time.time()), model=req.model, choices=choices, usage=usage)


async def stream(state: AppState, req: ChatCompletionRequest, session_id: str | None = None) -> AsyncIterator[bytes]:
    """Start the engine request and wait for its first chunk; then hand back the SSE body."""
    greq = engine_request(req, session_id)
    metered = MeteredStream(state, state.adapter_for(req.model), greq, ROUTE)
    chunks = await first_and_rest(metered.chunks())
    return _events(req, greq.request_id, metered, chunks)


async def _events(req: ChatCompletionRequest, request_id: str, metered: MeteredStream,
                  chunks: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    head = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": req.model}
    extra = {"usage": None} if include_usage else {}

    def event(index: int, delta: dict[str, Any], reason: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        return sse({**head, "choices": [choice], **extra})

    tokens: dict[int, int] = {}
    prompt_tokens = 0
    started: set[int] = set()
    try:
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                if chunk.index not in started:
                    started.add(chunk.index)
                    yield event(chunk.index, {"role": "assistant", "content": ""})
                prompt_tokens, tokens[chunk.index] = chunk.prompt_tokens, chunk.completion_tokens
                if chunk.text or chunk.logprobs:
                    logprobs = {"content": _logprob_entries(chunk.logprobs)} if req.logprobs and chunk.logprobs else None
                    yield event(chunk.index, {"content": chunk.text}, None, logprobs)
                if chunk.finish_reason:
                    yield event(chunk.index, {}, finish_reason(chunk.finish_reason))
    except Exception as exc:
        metered.record(500, prompt_tokens, sum(tokens.values()))
        yield sse_error(exc)
        return
    completion_tokens = sum(tokens.values())
    metered.record(200, prompt_tokens, completion_tokens)
    if include_usage:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        yield sse({**head, "choices": [], "usage": usage})
    yield DONE
