"""Legacy completions: one engine request per prompt, choices numbered prompt by prompt."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from engine_adapters.base import NOTHING_FORWARDED, Chunk, Forwarded, GenerateRequest, TokenLogprob
from gateway.errors import InvalidRequest
from gateway.protocol.common import Usage
from gateway.protocol.completions import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from gateway.services.chunk_streams import first_and_rest, merged
from gateway.services.metering import MeteredStream
from gateway.services.sampling import sampling_options
from gateway.services.wire import event_stream, finish_reason, new_id, prompt_logprobs_json, usage_dict
from gateway.state import AppState

ROUTE = "/v1/completions"


def _prompts(req: CompletionRequest) -> list[str | list[int]]:
    prompt = req.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequest("The prompt is empty.", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]  # checked above: every item is an int
    return list(prompt)  # type: ignore[arg-type]  # a list of strings or of token-id lists, as validated


def _validate(req: CompletionRequest) -> None:
    if req.suffix:
        raise InvalidRequest("suffix is not supported by this server.", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise InvalidRequest("best_of other than n is not supported.", param="best_of")


@dataclass
class ChoiceState:
    """Text and logprobs of one choice, grown chunk by chunk."""

    echo_text: str | None = None
    offset: int = 0
    tokens: int = 0
    reason: str | None = None
    text: list[str] = field(default_factory=list)
    prompt_logprobs: list[Any] | None = None  # vLLM's prompt_logprobs extra, as its wire shape
    logprobs: dict[str, list[Any]] = field(
        default_factory=lambda: {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    )

    def add_logprobs(self, entries: list[TokenLogprob | None]) -> dict[str, list[Any]]:
        part: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for entry in entries:
            if entry is None:
                continue
            known = not math.isnan(entry.logprob)
            part["tokens"].append(entry.token)
            part["token_logprobs"].append(entry.logprob if known else None)
            part["top_logprobs"].append(dict(entry.top) if known else None)
            part["text_offset"].append(self.offset)
            self.offset += len(entry.token)
        for key, values in part.items():
            self.logprobs[key].extend(values)
        return part


class CompletionRun:
    def __init__(
        self,
        state: AppState,
        req: CompletionRequest,
        session_id: str | None = None,
        forwarded: Forwarded = NOTHING_FORWARDED,
    ) -> None:
        _validate(req)
        self.req = req
        self.id = new_id("cmpl")
        self.prompts = _prompts(req)
        echo_logprobs = (req.logprobs or 0) if req.echo else None
        options = sampling_options(req, max_tokens=req.max_tokens, logprobs=req.logprobs, prompt_logprobs=echo_logprobs)
        adapter = state.adapter_for(req.model)
        self.metered = [
            MeteredStream(
                state,
                adapter,
                GenerateRequest(
                    f"{self.id}-{i}",
                    req.model,
                    options,
                    prompt=p,
                    routing_key=session_id or req.user,
                    stream=req.stream,
                    forwarded=forwarded,
                ),
                ROUTE,
            )
            for i, p in enumerate(self.prompts)
        ]
        self.choices: dict[int, ChoiceState] = {}
        self.prompt_tokens: dict[int, int] = {}

    def chunks(self) -> AsyncIterator[Chunk]:
        offsets = [i * self.req.n for i in range(len(self.prompts))]
        return merged([m.chunks() for m in self.metered], offsets)

    def apply(self, chunk: Chunk) -> tuple[str, dict[str, list[Any]] | None]:
        """Fold a chunk into its choice; return the text and logprobs it adds for the client."""
        choice = self.choices.setdefault(chunk.index, ChoiceState())
        self.prompt_tokens[chunk.index // self.req.n] = chunk.prompt_tokens
        choice.tokens = chunk.completion_tokens
        choice.reason = finish_reason(chunk.finish_reason) or choice.reason
        if chunk.prompt_logprobs_by_id is not None and self.req.prompt_logprobs is not None:
            choice.prompt_logprobs = prompt_logprobs_json(chunk.prompt_logprobs_by_id)
        text = chunk.text
        part = None
        if chunk.prompt_text is not None and self.req.echo:
            prompt = self.prompts[chunk.index // self.req.n]
            text = (prompt if isinstance(prompt, str) else chunk.prompt_text) + text
            if self.req.logprobs is not None:
                part = choice.add_logprobs(list(chunk.prompt_logprobs or []))
        if self.req.logprobs is not None:
            more = choice.add_logprobs(list(chunk.logprobs or []))
            part = {k: (part[k] if part else []) + v for k, v in more.items()}
        choice.text.append(text)
        return text, part

    def choices_of(self, chunk: Chunk) -> Iterator[dict[str, Any]]:
        """The streamed choice `chunk` makes, if it adds text, logprobs or the finish."""
        text, logprobs = self.apply(chunk)
        reason = finish_reason(chunk.finish_reason)
        if text or logprobs or reason:
            yield {"index": chunk.index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def usage(self) -> Usage:
        return Usage(**self.usage_now())

    def usage_now(self) -> dict[str, int]:
        """Usage so far, as a plain dict: cheap enough for every streamed chunk (continuous_usage_stats)."""
        return usage_dict(sum(self.prompt_tokens.values()), sum(c.tokens for c in self.choices.values()))

    def record(self, status: int) -> None:
        usage = self.usage()
        self.metered[0].record(status, usage.prompt_tokens, usage.completion_tokens)


async def complete(
    state: AppState, req: CompletionRequest, session_id: str | None = None, forwarded: Forwarded = NOTHING_FORWARDED
) -> Completion:
    run = CompletionRun(state, req, session_id, forwarded)
    async for chunk in run.chunks():
        run.apply(chunk)
    run.record(200)
    choices = [
        CompletionChoice(
            index=i,
            text="".join(c.text),
            logprobs=CompletionLogprobs(**c.logprobs) if req.logprobs is not None else None,
            finish_reason=c.reason or "stop",  # type: ignore[arg-type]  # the engine's finish reasons are the wire's literals
            prompt_logprobs=c.prompt_logprobs,
        )
        for i, c in sorted(run.choices.items())
    ]
    return Completion(id=run.id, created=int(time.time()), model=req.model, choices=choices, usage=run.usage())


async def stream(
    state: AppState, req: CompletionRequest, session_id: str | None = None, forwarded: Forwarded = NOTHING_FORWARDED
) -> AsyncIterator[bytes]:
    run = CompletionRun(state, req, session_id, forwarded)
    chunks = await first_and_rest(run.chunks())
    return event_stream(
        run,
        chunks,
        request_id=run.id,
        object_name="text_completion",
        model=req.model,
        stream_options=req.stream_options,
    )
