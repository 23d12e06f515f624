"""/v1/batches: create, retrieve, list, cancel. The lines run in the batch runner (gateway.services.batch_runner);
a batch belongs to the key that created it, and another key's batch is a 404."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, app_state, json_response, list_page
from gateway.api.files import owner_of
from gateway.errors import InvalidRequest, NotFound, StoreUnavailable
from gateway.protocol.batches import BatchCreate, BatchList, BatchObject
from gateway.store.batches import BatchStore

router = APIRouter()
log = logging.getLogger(__name__)


def _batches(request: Request) -> BatchStore:
    batches = app_state(request).batches
    if batches is None:
        raise StoreUnavailable("The batch store is not configured.")
    return batches


@router.post("/v1/batches", response_model=BatchObject, responses=ERROR_RESPONSES)
async def create_batch(body: BatchCreate, request: Request) -> Response:
    state = app_state(request)
    owner = owner_of(request)
    assert state.files is not None
    try:
        stored = await state.files.get(owner, body.input_file_id)
    except NotFound:
        raise NotFound(f"No such File object: {body.input_file_id}", param="input_file_id") from None
    if stored.purpose != "batch":
        raise InvalidRequest("The input file must be uploaded with purpose 'batch'.", param="input_file_id")
    batch = await _batches(request).create(
        owner,
        body.input_file_id,
        body.endpoint,
        state.settings.batch.completion_window_s,
        body.completion_window,
        body.metadata,
    )
    log.info("batch %s: created (validating) for %s", batch["id"], body.endpoint)
    return json_response(batch)


@router.get("/v1/batches/{batch_id}", response_model=BatchObject, responses=ERROR_RESPONSES)
async def retrieve_batch(batch_id: str, request: Request) -> Response:
    return json_response(await _batches(request).get(owner_of(request), batch_id))


@router.get("/v1/batches", response_model=BatchList, responses=ERROR_RESPONSES)
async def list_batches(
    request: Request, limit: int = Query(default=20, ge=1, le=100), after: str | None = None
) -> Response:
    page, more = await _batches(request).page(owner_of(request), limit, after)
    return json_response(list_page(page, more))


@router.post("/v1/batches/{batch_id}/cancel", response_model=BatchObject, responses=ERROR_RESPONSES)
async def cancel_batch(batch_id: str, request: Request) -> Response:
    batch, changed = await _batches(request).cancel(owner_of(request), batch_id)
    if changed:
        log.info("batch %s: -> cancelling", batch_id)
    return json_response(batch)
