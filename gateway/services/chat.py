"""Chat completions: wire request -> engine request; engine chunks -> wire response or SSE."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

from engine_adapters.base import NOTHING_FORWARDED, Chunk, Forwarded, GenerateRequest, TokenLogprob
from gateway.errors import InvalidRequest
from gateway.protocol.chat import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageOut,
    ChoiceLogprobs,
)
from gateway.protocol.common import Usage
from gateway.services.chunk_streams import first_and_rest
from gateway.services.media import check_parts
from gateway.services.metering import MeteredStream
from gateway.services.sampling import sampling_options
from gateway.services.tool_calls import ChoiceCalls, ToolPlan, template_messages
from gateway.services.tool_calls import plan as plan_tools
from gateway.services.wire import event_stream, finish_reason, new_id, prompt_logprobs_json, usage_dict
from gateway.state import AppState

ROUTE = "/v1/chat/completions"


def engine_request(
    req: ChatCompletionRequest,
    session_id: str | None = None,
    tool_plan: ToolPlan | None = None,
    forwarded: Forwarded = NOTHING_FORWARDED,
) -> GenerateRequest:
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true.", param="top_logprobs")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    sampling = sampling_options(req, max_tokens=req.output_budget, logprobs=logprobs)
    if tool_plan is not None and tool_plan.structured is not None:
        sampling = replace(sampling, structured=tool_plan.structured)
    return GenerateRequest(
        request_id=new_id("chatcmpl"),
        model=req.model,
        sampling=sampling,
        messages=template_messages(req.messages),
        # Under tool_choice "none" too, as vLLM does: the model knows its tools but its text is not parsed.
        tools=[tool.model_dump(exclude_none=True) for tool in req.tools] if req.tools else None,
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
        chat_template_kwargs=req.chat_template_kwargs,
        routing_key=session_id or req.user,
        stream=req.stream,
        forwarded=forwarded,
    )


def echo_prefix(req: ChatCompletionRequest) -> str:
    """vLLM's chat echo: the last message's text, when that message is the turn being answered
    (an assistant message, or any message when no new turn is opened)."""
    if not req.echo:
        return ""
    last = req.messages[-1]
    answered = "assistant" if req.add_generation_prompt else last.role
    return last.text() if last.role == answered else ""


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


def tool_plan_for(state: AppState, req: ChatCompletionRequest) -> ToolPlan | None:
    """How the model's output is read for tool calls (None: as plain content)."""
    parser = next((m.tool_parser for m in state.settings.models if m.name == req.model), None)
    return plan_tools(req, parser)


def _message(content: str, tool_plan: ToolPlan | None) -> tuple[ChatMessageOut, bool]:
    """The choice's message, and whether it holds tool calls."""
    if tool_plan is None:
        return ChatMessageOut(content=content), False
    calls = ChoiceCalls(tool_plan)
    sent = calls.feed(content)
    rest, found = calls.finish()
    if not found:
        return ChatMessageOut(content=sent + rest), False
    return ChatMessageOut(content=(sent + rest) or None, tool_calls=found), True  # type: ignore[arg-type]  # the parser's tool calls are the wire model's shape


async def complete(
    state: AppState,
    req: ChatCompletionRequest,
    session_id: str | None = None,
    route: str = ROUTE,
    forwarded: Forwarded = NOTHING_FORWARDED,
) -> ChatCompletion:
    """`route`: the path whose metrics the request counts in (other APIs answer on the chat path too)."""
    check_parts(state, req)
    tool_plan = tool_plan_for(state, req)
    greq = engine_request(req, session_id, tool_plan, forwarded)
    metered = MeteredStream(state, state.adapter_for(req.model), greq, route)
    texts: dict[int, list[str]] = {i: [] for i in range(req.n)}
    logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(req.n)}
    reasons: dict[int, str] = {}
    stop_strings: dict[int, str] = {}
    tokens: dict[int, int] = {}
    prompt_tokens = 0
    prompt_logprobs = None  # vLLM's extra: the prompt's logprobs, once per response
    async for chunk in metered.chunks():
        if chunk.prompt_logprobs_by_id is not None and req.prompt_logprobs is not None:
            prompt_logprobs = prompt_logprobs_json(chunk.prompt_logprobs_by_id)
        texts[chunk.index].append(chunk.text)
        logprobs[chunk.index].extend(chunk.logprobs or ())
        prompt_tokens, tokens[chunk.index] = chunk.prompt_tokens, chunk.completion_tokens
        if chunk.finish_reason:
            reasons[chunk.index] = finish_reason(chunk.finish_reason) or "stop"
            if chunk.stop_sequence is not None:
                stop_strings[chunk.index] = chunk.stop_sequence
    completion_tokens = sum(tokens.values())
    metered.record(200, prompt_tokens, completion_tokens)
    choices = []
    for i in range(req.n):
        message, called = _message(echo_prefix(req) + "".join(texts[i]), tool_plan)
        choices.append(
            ChatChoice(
                index=i,
                message=message,
                logprobs=ChoiceLogprobs.model_validate({"content": _logprob_entries(logprobs[i])})
                if req.logprobs
                else None,
                finish_reason="tool_calls" if called else reasons.get(i, "stop"),  # type: ignore[arg-type]  # the engine's finish reasons are the wire's literals
                stop_reason=stop_strings.get(i),
            )
        )
    usage = Usage(**usage_dict(prompt_tokens, completion_tokens))
    return ChatCompletion(
        id=greq.request_id,
        created=int(time.time()),
        model=req.model,
        choices=choices,
        usage=usage,
        prompt_logprobs=prompt_logprobs,
    )


async def stream(
    state: AppState,
    req: ChatCompletionRequest,
    session_id: str | None = None,
    route: str = ROUTE,
    forwarded: Forwarded = NOTHING_FORWARDED,
) -> AsyncIterator[bytes]:
    """Start the engine request and wait for its first chunk; then hand back the SSE body."""
    check_parts(state, req)
    tool_plan = tool_plan_for(state, req)
    greq = engine_request(req, session_id, tool_plan, forwarded)
    metered = MeteredStream(state, state.adapter_for(req.model), greq, route)
    chunks = await first_and_rest(metered.chunks())
    return event_stream(
        _StreamedChat(req, metered, tool_plan),
        chunks,
        request_id=greq.request_id,
        object_name="chat.completion.chunk",
        model=req.model,
        stream_options=req.stream_options,
    )


def _call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's stream of a call: id, type and name with empty arguments first, then the arguments."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        function = call["function"]
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": function["name"], "arguments": ""},
                    }
                ]
            }
        )
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": function["arguments"]}}]})
    return deltas


class _StreamedChat:
    """A streamed chat's choices: the role (and echo) first, then content and logprobs, tool calls at the end."""

    def __init__(self, req: ChatCompletionRequest, metered: MeteredStream, tool_plan: ToolPlan | None) -> None:
        self.req, self.metered, self.tool_plan = req, metered, tool_plan
        self.tokens: dict[int, int] = {}
        self.prompt_tokens = 0
        self.started: set[int] = set()
        self.echoed = echo_prefix(req)
        self.calls: dict[int, ChoiceCalls] = {}  # per choice, only under a tool plan

    def choices_of(self, chunk: Chunk) -> Iterator[dict[str, Any]]:
        self.prompt_tokens, self.tokens[chunk.index] = chunk.prompt_tokens, chunk.completion_tokens
        if chunk.index not in self.started:
            self.started.add(chunk.index)
            yield _choice(chunk.index, {"role": "assistant", "content": ""})
            if self.echoed:
                yield _choice(chunk.index, {"content": self.echoed})
        text = chunk.text
        if self.tool_plan is not None and text:
            text = self.calls.setdefault(chunk.index, ChoiceCalls(self.tool_plan)).feed(text)
        if text or chunk.logprobs:
            logprobs = {"content": _logprob_entries(chunk.logprobs)} if self.req.logprobs and chunk.logprobs else None
            yield _choice(chunk.index, {"content": text}, None, logprobs)
        if chunk.finish_reason:
            reason = finish_reason(chunk.finish_reason)
            if chunk.index in self.calls:
                rest, found = self.calls.pop(chunk.index).finish()
                if rest:
                    yield _choice(chunk.index, {"content": rest})
                for delta in _call_deltas(found):
                    yield _choice(chunk.index, delta)
                reason = "tool_calls" if found else reason
            yield _choice(chunk.index, {}, reason)

    def usage_now(self) -> dict[str, int]:
        return usage_dict(self.prompt_tokens, sum(self.tokens.values()))

    def record(self, status: int) -> None:
        self.metered.record(status, self.prompt_tokens, sum(self.tokens.values()))


def _choice(index: int, delta: dict[str, Any], reason: str | None = None, logprobs: Any = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
