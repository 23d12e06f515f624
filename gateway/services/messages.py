"""Anthropic's Messages API on the chat path: a Messages request becomes a chat request (tools and
tool results included), and the chat path's answer becomes a Message, or Anthropic's stream of events:

    message_start, ping,
    per content block: content_block_start, content_block_delta…, content_block_stop
        (text first, as it comes: text_delta; then each tool call whole: input_json_delta),
    message_delta (stop_reason, stop_sequence, usage), message_stop
    or, once the stream has begun, an `error` event.

Tool calls are found by the chat path's own machinery (gateway.services.tool_calls), so a tool
choice behaves here as it does on /v1/chat/completions.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import ValidationError

from engine_adapters.base import NOTHING_FORWARDED, Chunk, Forwarded
from gateway.errors import InvalidRequest, error_payload, invalid_fields
from gateway.protocol.chat import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageIn,
    ContentPart,
    FunctionCall,
    FunctionDefinition,
    ImagePart,
    ImageURL,
    NamedFunction,
    NamedToolChoice,
    TextPart,
    Tool,
    ToolCall,
)
from gateway.protocol.messages import (
    CountTokensRequest,
    ImageBlock,
    Message,
    MessageParam,
    MessagesRequest,
    MessageUsage,
    StopReason,
    TextBlock,
    TextOut,
    TokenCount,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseOut,
)
from gateway.protocol.tokenize import TokenizeRequest
from gateway.services import chat, tokenize
from gateway.services.chunk_streams import first_and_rest
from gateway.services.metering import MeteredStream
from gateway.services.tool_calls import ChoiceCalls, ToolPlan
from gateway.state import AppState

ROUTE = "/v1/messages"


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def tool_use_id(call_id: str) -> str:
    """Anthropic's ids for calls are toolu_…; the chat path's are call_…"""
    return "toolu_" + call_id.removeprefix("call_")


# Messages -> chat


def _system(system: str | list[TextBlock] | None) -> str:
    return "".join(block.text for block in system) if isinstance(system, list) else system or ""


def _turns(message: MessageParam) -> list[ChatMessageIn]:
    """One Anthropic turn as chat messages: its tool results (each a `tool` message) first, then its text and calls."""
    if isinstance(message.content, str):
        return [ChatMessageIn(role=message.role, content=message.content)]
    results: list[ChatMessageIn] = []
    parts: list[ContentPart] = []
    calls: list[ToolCall] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock) and message.role == "user":
            results.append(ChatMessageIn(role="tool", tool_call_id=block.tool_use_id, content=block.text()))
        elif isinstance(block, ToolUseBlock) and message.role == "assistant":
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(ToolCall(id=block.id, function=FunctionCall(name=block.name, arguments=arguments)))
        elif isinstance(block, TextBlock):
            parts.append(TextPart(type="text", text=block.text))
        elif isinstance(block, ImageBlock) and message.role == "user":
            parts.append(ImagePart(type="image_url", image_url=ImageURL(url=block.url())))
        else:
            where = f"in a {message.role} turn " if block.type in ("tool_use", "tool_result") else ""
            raise InvalidRequest(
                f"Content blocks of type '{block.type}' are not supported {where}by this server.", param="messages"
            )
    if parts or calls or not results:
        images = any(isinstance(part, ImagePart) for part in parts)
        content = parts if images else "".join(part.text for part in parts if isinstance(part, TextPart))
        results.append(ChatMessageIn(role=message.role, content=content, tool_calls=calls or None))
    return results


def _tool_choice(choice: ToolChoice | None) -> str | NamedToolChoice | None:
    if choice is None or choice.type in ("auto", "none"):
        return choice.type if choice else None
    if choice.type == "any":
        return "required"
    if not choice.name:
        raise InvalidRequest("tool_choice of type 'tool' needs the tool's name.", param="tool_choice")
    return NamedToolChoice(type="function", function=NamedFunction(name=choice.name))


def chat_request(req: CountTokensRequest) -> ChatCompletionRequest:
    """The chat request that serves `req` (a count_tokens request: the same prompt, nothing sampled)."""
    messages = [ChatMessageIn(role="system", content=system)] if (system := _system(req.system)) else []
    for message in req.messages:
        messages.extend(_turns(message))
    fields: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "tool_choice": _tool_choice(req.tool_choice),
        "tools": [
            Tool(
                type="function",
                function=FunctionDefinition(name=tool.name, description=tool.description, parameters=tool.input_schema),
            )
            for tool in req.tools
        ]
        if req.tools
        else None,
    }
    if req.tool_choice is not None and req.tool_choice.disable_parallel_tool_use:
        fields["parallel_tool_calls"] = False
    if isinstance(req, MessagesRequest):
        fields.update(
            max_tokens=req.max_tokens,
            stop=req.stop_sequences,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            stream=req.stream,
            user=req.metadata.user_id if req.metadata else None,
        )
    try:
        return ChatCompletionRequest(**fields)
    except ValidationError as exc:
        raise invalid_fields(list(exc.errors())) from None


# chat -> Messages


def stop_reason(finish_reason: str | None, stop_sequence: str | None) -> StopReason:
    if finish_reason == "tool_calls":
        return "tool_use"
    if finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


def _input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def message_from(completion: ChatCompletion, message_id: str) -> Message:
    choice = completion.choices[0]
    content: list[TextOut | ToolUseOut] = [TextOut(text=choice.message.content)] if choice.message.content else []
    content.extend(
        ToolUseOut(id=tool_use_id(call.id), name=call.function.name, input=_input(call.function.arguments))
        for call in choice.message.tool_calls or ()
    )
    reason = stop_reason(choice.finish_reason, choice.stop_reason)
    return Message(
        id=message_id,
        model=completion.model,
        content=content,
        stop_reason=reason,
        stop_sequence=choice.stop_reason if reason == "stop_sequence" else None,
        usage=MessageUsage(
            input_tokens=completion.usage.prompt_tokens, output_tokens=completion.usage.completion_tokens
        ),
    )


async def create(
    state: AppState, req: MessagesRequest, session_id: str | None = None, forwarded: Forwarded = NOTHING_FORWARDED
) -> Message:
    completion = await chat.complete(state, chat_request(req), session_id, route=ROUTE, forwarded=forwarded)
    return message_from(completion, new_message_id())


async def count_tokens(state: AppState, req: CountTokensRequest) -> TokenCount:
    """The prompt's tokens as /v1/messages would render it: the chat template over the same messages and tools."""
    chat_req = chat_request(req)
    state.adapter_for(req.model)  # a generating model (404 otherwise), and the server ready
    counted = await tokenize.tokenize(
        state, TokenizeRequest(model=req.model, messages=chat_req.messages, tools=chat_req.tools)
    )
    return TokenCount(input_tokens=counted.count)


async def stream(
    state: AppState, req: MessagesRequest, session_id: str | None = None, forwarded: Forwarded = NOTHING_FORWARDED
) -> AsyncIterator[bytes]:
    """Start the engine request and wait for its first chunk (errors before it are plain HTTP errors)."""
    chat_req = chat_request(req)
    tool_plan = chat.tool_plan_for(state, chat_req)
    greq = chat.engine_request(chat_req, session_id, tool_plan, forwarded)
    metered = MeteredStream(state, state.adapter_for(req.model), greq, ROUTE)
    chunks = await first_and_rest(metered.chunks())
    return _events(req.model, metered, chunks, tool_plan)


def event(kind: str, **payload: Any) -> bytes:
    """Anthropic's framing: an `event:` line naming the type, and the data, which names it too."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


class _Blocks:
    """The content blocks of a streamed message, numbered as they open."""

    def __init__(self) -> None:
        self.count = 0
        self.text_open = False

    def text(self, text: str) -> list[bytes]:
        events = []
        if not self.text_open:
            events.append(event("content_block_start", index=self.count, content_block={"type": "text", "text": ""}))
            self.text_open = True
        events.append(event("content_block_delta", index=self.count, delta={"type": "text_delta", "text": text}))
        return events

    def close_text(self) -> list[bytes]:
        if not self.text_open:
            return []
        self.text_open = False
        self.count += 1
        return [event("content_block_stop", index=self.count - 1)]

    def tool_use(self, call: dict[str, Any]) -> list[bytes]:
        index, function = self.count, call["function"]
        self.count += 1
        block = {"type": "tool_use", "id": tool_use_id(call["id"]), "name": function["name"], "input": {}}
        partial = json.dumps(_input(function["arguments"]), ensure_ascii=False)
        return [
            event("content_block_start", index=index, content_block=block),
            event("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": partial}),
            event("content_block_stop", index=index),
        ]


async def _events(
    model: str, metered: MeteredStream, chunks: AsyncIterator[Chunk], tool_plan: ToolPlan | None
) -> AsyncIterator[bytes]:
    calls = ChoiceCalls(tool_plan) if tool_plan is not None else None
    blocks = _Blocks()
    prompt_tokens = output_tokens = 0
    reason: str | None = None
    stop_sequence: str | None = None
    found: list[dict[str, Any]] = []
    started = False
    try:
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
            async for chunk in chunks:
                prompt_tokens, output_tokens = chunk.prompt_tokens, chunk.completion_tokens
                if not started:
                    started = True
                    yield event(
                        "message_start",
                        message={
                            "id": new_message_id(),
                            "type": "message",
                            "role": "assistant",
                            "model": model,
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
                        },
                    )
                    yield event("ping")
                text = calls.feed(chunk.text) if calls is not None and chunk.text else chunk.text
                if text:
                    for data in blocks.text(text):
                        yield data
                if chunk.finish_reason:
                    reason, stop_sequence = chunk.finish_reason, chunk.stop_sequence
                    if calls is not None:
                        rest, found = calls.finish()
                        for data in blocks.text(rest) if rest else ():
                            yield data
    except Exception as exc:
        metered.record(500, prompt_tokens, output_tokens)
        yield event("error", error=error_payload(exc, ROUTE)[1]["error"])
        return
    metered.record(200, prompt_tokens, output_tokens)
    if not blocks.text_open and not found:  # an empty answer is still one (empty) text block
        yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        blocks.text_open = True
    for data in blocks.close_text():
        yield data
    for call in found:
        for data in blocks.tool_use(call):
            yield data
    final = stop_reason("tool_calls" if found else reason, stop_sequence)
    yield event(
        "message_delta",
        delta={"stop_reason": final, "stop_sequence": stop_sequence if final == "stop_sequence" else None},
        usage={"input_tokens": prompt_tokens, "output_tokens": output_tokens},
    )
    yield event("message_stop")
