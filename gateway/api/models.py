"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import ERROR_RESPONSES, app_state, json_response
from gateway.middleware.context import request_info
from gateway.middleware.scope import may_use
from gateway.protocol.models import KvEventsCard, ModelCard, ModelList
from gateway.state import AppState

router = APIRouter()


def _card(state: AppState, model: str) -> ModelCard:
    info = state.model_info(model)
    kv_events = KvEventsCard(endpoint=info.kv_events[0], replay_endpoint=info.kv_events[1]) if info.kv_events else None
    return ModelCard(
        id=info.name,
        created=state.started_at,
        max_model_len=info.max_model_len,
        root=info.root,
        parent=info.parent,
        kv_events=kv_events,
        input_modalities=list(info.input_modalities) if info.input_modalities is not None else None,
    )


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(request: Request) -> Response:
    state = app_state(request)
    key = request_info(request.scope).key_scope
    names = [info.name for info in state.all_models() if may_use(state, key, info.name)]
    return json_response(ModelList(data=[_card(state, name) for name in names]))


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
async def retrieve_model(model_id: str, request: Request) -> Response:
    return json_response(_card(app_state(request), model_id))
