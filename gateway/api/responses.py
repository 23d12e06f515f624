"""/v1/responses: create (on the chat path), retrieve, delete, list input items, cancel a background response."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, app_state, json_response
from gateway.api.streaming import EventStreamResponse, answer_unless_gone
from gateway.middleware.context import request_info
from gateway.protocol.responses import DeletedResponse, InputItemList, ResponsesRequest
from gateway.protocol.responses import Response as ResponseObject
from gateway.services import responses
from gateway.services.responses_background import resume, start_background
from gateway.store import ResponseStore

router = APIRouter()

_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE events when stream is true"}
}


def _owner(request: Request) -> str:
    return responses.owner_of(request_info(request.scope).key_digest)


def _store(request: Request) -> ResponseStore:
    return responses.store_of(app_state(request))


@router.post("/v1/responses", response_model=ResponseObject, responses={**ERROR_RESPONSES, **_SSE_DOC})
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    state = app_state(request)
    session_id = request.headers.get(state.settings.router.session_header)  # router mode's affinity key
    forwarded = request_info(request.scope).forwarded

    async def answer() -> Any:
        call = await responses.prepare(state, body, _owner(request), session_id, forwarded)
        return await (start_background if body.background else responses.answer)(state, call)

    work: Awaitable[Any] = answer()
    return await answer_unless_gone(request, work, stream=body.stream, model=body.model)


@router.get("/v1/responses/{response_id}", response_model=ResponseObject, responses={**ERROR_RESPONSES, **_SSE_DOC})
async def retrieve_response(
    response_id: str,
    request: Request,
    stream: bool = False,
    starting_after: int | None = Query(default=None, ge=-1),
) -> Response:
    if stream:
        events = await resume(
            _store(request), _owner(request), response_id, -1 if starting_after is None else starting_after
        )
        return EventStreamResponse(events)
    stored = await _store(request).get(_owner(request), response_id)
    return json_response(stored.body)


@router.delete("/v1/responses/{response_id}", response_model=DeletedResponse, responses=ERROR_RESPONSES)
async def delete_response(response_id: str, request: Request) -> Response:
    await _store(request).delete(_owner(request), response_id)
    return json_response(DeletedResponse(id=response_id).model_dump())


@router.post("/v1/responses/{response_id}/cancel", response_model=ResponseObject, responses=ERROR_RESPONSES)
async def cancel_response(response_id: str, request: Request) -> Response:
    stored = await _store(request).cancel(_owner(request), response_id)
    return json_response(stored.body)


@router.get("/v1/responses/{response_id}/input_items", response_model=InputItemList, responses=ERROR_RESPONSES)
async def list_input_items(
    response_id: str,
    request: Request,
    after: str | None = None,
    limit: int = Query(default=20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
) -> Response:
    stored = await _store(request).get(_owner(request), response_id)
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    listing = InputItemList(
        data=page,
        first_id=page[0].get("id") if page else None,
        last_id=page[-1].get("id") if page else None,
        has_more=len(items) > limit,
    )
    return json_response(listing.model_dump())
