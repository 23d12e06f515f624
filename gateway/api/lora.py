"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter, as vLLM serves them.

Mounted only when settings.allow_runtime_lora_updating is on (vLLM: VLLM_ALLOW_RUNTIME_LORA_UPDATING). Where
API keys are set, they are admin routes: they need auth.admin_key (a client key could otherwise load any path
the server can read, or unload the operator's adapters), and an adapter's path must lie under `lora_dir`
(resolved, symlinks followed). A loaded adapter is a model name served by its base model's engine, listed in
/v1/models with `parent`, until it is unloaded; its metrics count under its base model's name, so no load adds
a label to /metrics.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from engine_adapters.base import EngineAdapter, LoraLoader
from gateway.api.common import ERROR_RESPONSES, app_state, require_admin
from gateway.errors import InvalidRequest, NotFound
from gateway.protocol.lora import LoadLoraAdapterRequest, UnloadLoraAdapterRequest
from gateway.state import AppState

router = APIRouter()


def _lora_base(state: AppState, wanted: str | None) -> tuple[str, EngineAdapter]:
    """The base model a new adapter runs on: the one named, else the only one with LoRA enabled."""
    bases = [m.name for m in state.settings.models if m.lora_enabled and m.name in state.adapters]
    if wanted is not None:
        if wanted not in bases:
            raise InvalidRequest(f"The model {wanted!r} does not serve LoRA adapters.", param="base_model_name")
        bases = [wanted]
    if len(bases) != 1:
        reason = "No model has LoRA enabled" if not bases else "Several models have LoRA enabled; set base_model_name"
        raise InvalidRequest(f"{reason}.", param="base_model_name")
    return bases[0], state.adapters[bases[0]]


def _authorize(request: Request) -> AppState:
    state = app_state(request)
    if state.keys is not None and state.keys.enabled:  # on an open server every route is open
        require_admin(request, "lora")
    return state


def _confined(state: AppState, path: str) -> str:
    """The adapter's path, resolved, when it lies under lora_dir; a 400 otherwise."""
    root = state.settings.lora_dir
    if root is None:
        if state.keys is not None and state.keys.enabled:
            raise InvalidRequest("Runtime LoRA loading needs lora_dir on a server with API keys.", param="lora_path")
        return path
    base = root.resolve()
    found = (base / path).resolve()  # an absolute path stays itself; `..` and symlinks are followed
    if not found.is_relative_to(base):
        raise InvalidRequest("lora_path must lie under the server's lora_dir.", param="lora_path")
    return str(found)


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse, responses=ERROR_RESPONSES)
async def load_lora_adapter(body: LoadLoraAdapterRequest, request: Request) -> Response:
    state = _authorize(request)
    lora_path = _confined(state, body.lora_path)
    if body.lora_name in state.adapters:
        raise InvalidRequest(f"The model {body.lora_name!r} is already served.", param="lora_name")
    base, adapter = _lora_base(state, body.base_model_name)
    if not isinstance(adapter, LoraLoader):
        raise InvalidRequest(f"The model {base!r} cannot load LoRA adapters.", param="base_model_name")
    await adapter.load_lora(body.lora_name, lora_path)
    state.adapters[body.lora_name] = adapter
    state.runtime_loras[body.lora_name] = base
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, responses=ERROR_RESPONSES)
async def unload_lora_adapter(body: UnloadLoraAdapterRequest, request: Request) -> Response:
    state = _authorize(request)
    adapter = state.adapters.get(body.lora_name)
    if adapter is None or state.model_info(body.lora_name).parent is None or not isinstance(adapter, LoraLoader):
        raise NotFound(f"The LoRA adapter '{body.lora_name}' cannot be found.", param="lora_name")
    # Out of the registry first: new requests get 404 while the engine lets the adapter go.
    del state.adapters[body.lora_name]
    state.runtime_loras.pop(body.lora_name, None)
    await adapter.unload_lora(body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
