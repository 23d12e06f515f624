"""The Responses API on the chat path: a response request becomes a chat engine request (its tools and
structured output through chat's machinery), whose chunks become a response object or the Responses
stream's events (gateway.services.responses_output). With `store` (the default) the response is kept in
the response store: written before the engine is asked, and again, whole, before its last event is sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from engine_adapters.base import NOTHING_FORWARDED, Chunk, Forwarded
from gateway.errors import ContextLengthExceeded, GatewayError, StoreUnavailable, error_payload
from gateway.protocol.chat import ChatCompletionRequest, ChatMessageIn
from gateway.protocol.responses import NamedFunctionChoice, Response, ResponsesRequest
from gateway.services import chat
from gateway.services.chunk_streams import first_and_rest
from gateway.services.media import check_input
from gateway.services.metering import MeteredStream
from gateway.services.responses_input import chat_request, input_items, refuse_unsupported
from gateway.services.responses_output import Event, OutputBuilder, new_id
from gateway.services.tool_calls import ToolPlan
from gateway.state import AppState
from gateway.store import ResponseStore

log = logging.getLogger(__name__)

ROUTE = "/v1/responses"


def owner_of(key_digest: bytes | None) -> str:
    """Who owns a stored response: a digest of the key's digest (never the key, nor what auth compares);
    with no keys configured, everyone is one owner."""
    return hashlib.sha256(b"tokenyard-response-owner:" + key_digest).hexdigest() if key_digest else ""


def sse(event: Event) -> bytes:
    """OpenAI's framing: an `event:` line naming the type, then the data."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def opening_response(req: ResponsesRequest, response_id: str, status: str = "in_progress") -> dict[str, Any]:
    """The response object before any output: the request's settings as OpenAI echoes them."""
    choice: Any = req.tool_choice
    if isinstance(choice, NamedFunctionChoice):
        choice = {"type": "function", "name": choice.name}
    fmt = req.text.format if req.text and req.text.format else None
    return Response(
        id=response_id,
        created_at=int(time.time()),
        status=status,  # type: ignore[arg-type]  # one of the response statuses, chosen by the caller
        background=req.background,
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        model=req.model,
        output=[],
        parallel_tool_calls=req.parallel_tool_calls is not False,
        previous_response_id=req.previous_response_id,
        store=req.store,
        temperature=req.temperature,
        top_p=req.top_p,
        text={"format": fmt.model_dump(mode="json", exclude_none=True, by_alias=True) if fmt else {"type": "text"}},
        tool_choice=choice or "auto",
        tools=[tool.model_dump(mode="json", exclude_none=True) for tool in req.tools or []],
        truncation=req.truncation or "disabled",
        user=req.user,
        metadata=req.metadata or {},
    ).model_dump(mode="json")


@dataclass
class Prepared:
    """One POST /v1/responses, checked and turned into its chat request."""

    req: ResponsesRequest
    owner: str
    response_id: str
    items: list[dict[str, Any]]  # the request's own input items, as stored
    chat_req: ChatCompletionRequest
    session_id: str | None = None
    forwarded: Forwarded = NOTHING_FORWARDED


async def prepare(
    state: AppState,
    req: ResponsesRequest,
    owner: str,
    session_id: str | None = None,
    forwarded: Forwarded = NOTHING_FORWARDED,
) -> Prepared:
    refuse_unsupported(req)
    state.adapter_for(req.model)  # an unknown model is a 404 before the store is asked
    check_input(state, req)  # media a text-only model cannot read: a 400 at the part
    history = await store_of(state).history(owner, req.previous_response_id) if req.previous_response_id else []
    items = input_items(req)
    chat_req = chat_request(req, history + items)
    chat.tool_plan_for(state, chat_req)  # a bad tool_choice is a 400 before anything runs
    return Prepared(req, owner, new_id("resp"), items, chat_req, session_id, forwarded)


def store_of(state: AppState) -> ResponseStore:
    assert state.response_store is not None, "create_app builds the response store"
    return state.response_store


@dataclass
class Keeper:
    """What `store: true` adds to a response's run: its row, marked alive while it runs, written whole
    before its last event; a run left unfinished is written failed. With store false it keeps nothing."""

    store: ResponseStore | None
    owner: str
    items: list[dict[str, Any]]
    background: bool = False
    streamed: bool = False
    done: bool = False
    write_failed_on_release: bool = True  # a background run writes its own end

    async def open(self, response: dict[str, Any], stop: Any = None) -> None:
        if self.store is not None:
            await self.store.create(
                self.owner, response, self.items, background=self.background, streamed=self.streamed
            )
            self.store.running[response["id"]] = stop or (lambda: None)

    async def save(self, response: dict[str, Any]) -> None:
        if self.store is not None:
            await self.store.save(response)

    async def discard(self, response: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.running.pop(response["id"], None)
            self.done = True
            with contextlib.suppress(GatewayError):
                await self.store.delete(self.owner, response["id"])

    def release(self, builder: OutputBuilder) -> None:
        """The run has ended, one way or another; one that did not finish is written failed."""
        if self.store is None:
            return
        self.store.running.pop(builder.response["id"], None)
        if self.write_failed_on_release and not self.done and builder.response["status"] in ("queued", "in_progress"):
            failed = builder.interrupted("server_error", "The response was interrupted.")
            self.store.save_later(failed)  # from a finally that may be a cancellation: not awaited here


async def start_engine(state: AppState, call: Prepared) -> tuple[MeteredStream, AsyncIterator[Chunk], ToolPlan | None]:
    """The engine request, started and its first chunk awaited (errors before it are plain HTTP errors).
    truncation "auto": while the prompt is past the context, the oldest input items are dropped."""
    chat_req = call.chat_req
    while True:
        plan = chat.tool_plan_for(state, chat_req)
        greq = chat.engine_request(chat_req, call.session_id, plan, call.forwarded)
        greq.request_id = call.response_id  # the response's id is the engine request's
        metered = MeteredStream(state, state.adapter_for(chat_req.model), greq, ROUTE)
        try:
            return metered, await first_and_rest(metered.chunks()), plan
        except ContextLengthExceeded:
            shorter = without_oldest(chat_req.messages) if call.req.truncation == "auto" else None
            if shorter is None:
                raise
            chat_req = chat_req.model_copy(update={"messages": shorter})


def without_oldest(messages: list[ChatMessageIn]) -> list[ChatMessageIn] | None:
    """The messages less the oldest turn after the leading instructions (with the tool results that answered
    it); None when only the last turn is left."""
    lead = 0
    while lead < len(messages) and messages[lead].role in ("system", "developer"):
        lead += 1
    rest = messages[lead + 1 :]
    while rest and rest[0].role == "tool":
        rest = rest[1:]
    if not rest:
        return None
    return messages[:lead] + rest


async def run_events(
    builder: OutputBuilder, keeper: Keeper, metered: MeteredStream, chunks: AsyncIterator[Chunk], *, whole: bool
) -> AsyncIterator[Event]:
    """A started response's events, to its stored end. A failure after the start ends a stream with an error
    event and response.failed; a whole answer raises it."""
    try:
        for event in builder.opening():
            yield event
        try:
            async with contextlib.aclosing(chunks):  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
                async for chunk in chunks:
                    for event in builder.feed(chunk):
                        yield event
            closing = builder.finish()
        except Exception as exc:
            metered.record(500, builder.prompt_tokens, builder.output_tokens)
            if not isinstance(exc, GatewayError):
                log.error("response failed after it began", exc_info=exc)
            failed = builder.failed(error_payload(exc)[1]["error"])
            with contextlib.suppress(GatewayError):
                await keeper.save(builder.response)
            keeper.done = True
            if whole:
                raise
            for event in failed:
                yield event
            return
        metered.record(200, builder.prompt_tokens, builder.output_tokens)
        for event in closing:
            yield event
        await keeper.save(builder.response)  # stored before the client is told it is complete
        keeper.done = True
        yield builder.terminal()
    finally:
        keeper.release(builder)


async def _sse_of(events: AsyncIterator[Event], builder: OutputBuilder) -> AsyncIterator[bytes]:
    try:
        async with contextlib.aclosing(events):  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
            async for event in events:
                yield sse(event)
    except StoreUnavailable as exc:  # the last write failed: never a silent non-store
        detail = error_payload(exc)[1]["error"]
        yield sse(builder.event("error", code=detail["code"], message=detail["message"], param=None))


async def answer(state: AppState, call: Prepared) -> dict[str, Any] | AsyncIterator[bytes]:
    """A foreground response: the response object (a whole answer), or the SSE body of a stream."""
    req = call.req
    keeper = Keeper(store_of(state) if req.store else None, call.owner, call.items)
    response = opening_response(req, call.response_id)
    await keeper.open(response)  # the store is down: 503 before the engine is asked
    try:
        metered, chunks, plan = await start_engine(state, call)
    except BaseException:
        await keeper.discard(response)  # refused before any output (a 400, a 503): nothing to keep
        raise
    builder = OutputBuilder(response, plan)
    events = run_events(builder, keeper, metered, chunks, whole=not req.stream)
    if req.stream:
        return _sse_of(events, builder)
    async with contextlib.aclosing(events):  # type: ignore[type-var]  # an async generator, typed as the AsyncIterator it is read as (no aclose there)
        async for _ in events:
            pass
    return builder.response
