"""Start-up, top down: the settings become the models this process serves.

1. local_models: which models run here. Engine mode runs every `models` entry; a router runs only the
   `models` it is told to run, and never one whose name a route claims.
2. start_local_engines: each becomes an in-process vLLM adapter (a builtin:* model is prepared from its
   PyPI package first), registered under its name and its LoRA adapters' names.
3. Router mode: gateway.routing.reload.start_routes adds a RoutedAdapter per route to the same
   name -> adapter map and returns the RouteTable that follows the config file.
The app's lifespan (gateway.app) calls 2 and 3, holds what they return on AppState, and stops them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

from engine_adapters.base import EngineAdapter
from engine_adapters.media import MediaPolicy
from engine_adapters.vllm_local import LocalModelSpec, VllmLocalAdapter, set_env_defaults
from gateway.routing import route_names
from gateway.settings import BUILTIN_GEMMA, BUILTIN_MINILM, ModelSettings, Settings

log = logging.getLogger(__name__)


def resolve_path(model: ModelSettings, cache_dir: Path | None) -> str:
    """A builtin:* model is prepared from its PyPI package (once, then cached)."""
    if not model.model.startswith("builtin:"):
        return model.model
    from gateway import model_store

    if model.model == BUILTIN_GEMMA:
        return str(model_store.prepare_gemma(cache_dir))
    if model.model == BUILTIN_MINILM:
        return str(model_store.minilm_model_dir())
    raise ValueError(f"unknown builtin model {model.model!r}")


def from_hub(model: ModelSettings) -> bool:
    """Whether the model is a hub id, to download as `vllm serve` does, rather than builtin:* or a local path."""
    return not model.model.startswith("builtin:") and not Path(model.model).exists()


def hub_env_defaults(models: Iterable[ModelSettings]) -> dict[str, str]:
    """Offline when no model comes from the hub: then no library's look-up can wait on a network that is
    not there. Otherwise hub access is as the operator set it (HF_HUB_OFFLINE, HF_TOKEN, HF_ENDPOINT)."""
    return {} if any(from_hub(model) for model in models) else {"HF_HUB_OFFLINE": "1"}


def local_spec(model: ModelSettings, path: str, publish_metrics: bool) -> LocalModelSpec:
    template = model.chat_template.read_text() if model.chat_template else None
    return LocalModelSpec(
        name=model.name,
        path=path,
        kind=model.kind,
        dtype=model.dtype,
        max_model_len=model.max_model_len,
        chat_template=template,
        engine_args={**lora_engine_args(model), **media_engine_args(model), **model.engine_args},
        publish_metrics=publish_metrics,
        lora_adapters={adapter.name: adapter.path for adapter in model.lora_adapters},
        kv_events=(model.kv_events_endpoint, model.kv_events_replay_endpoint) if model.kv_events_endpoint else None,
        media=media_policy(model),
    )


def media_engine_args(model: ModelSettings) -> dict[str, object]:
    """vLLM's multimodal engine args, where the model sets them; engine_args set by hand win."""
    args = {"limit_mm_per_prompt": model.limit_mm_per_prompt, "mm_processor_kwargs": model.mm_processor_kwargs}
    return {key: value for key, value in args.items() if value is not None}


def media_policy(model: ModelSettings) -> MediaPolicy:
    media = model.media
    return MediaPolicy(
        allowed_domains=tuple(media.allowed_domains),
        allowed_networks=tuple(str(network) for network in media.allowed_networks),
        local_dir=str(media.local_dir) if media.local_dir is not None else None,
        max_bytes=media.max_bytes,
        max_pixels=media.max_pixels,
        max_items=media.max_items,
        timeout_s=media.fetch_timeout_s,
        max_redirects=media.max_redirects,
    )


def lora_engine_args(model: ModelSettings) -> dict[str, object]:
    """vLLM's LoRA engine args; engine_args set by hand win."""
    if not model.lora_enabled:
        return {}
    args: dict[str, object] = {"enable_lora": True, "max_loras": model.max_loras or max(1, len(model.lora_adapters))}
    if model.max_lora_rank is not None:
        args["max_lora_rank"] = model.max_lora_rank
    return args


def local_models(settings: Settings) -> list[ModelSettings]:
    """The models to run in this process. With routes, the default model list does not apply (a router
    runs no engine unless `models` is set), and a routed name is never also run locally."""
    if not settings.routes:
        return list(settings.models)
    if "models" not in settings.model_fields_set:
        return []
    routed = route_names(settings.routes)
    return [model for model in settings.models if model.name not in routed]


async def start_local_engines(settings: Settings) -> dict[str, EngineAdapter]:
    """The in-process engines, started: served model name -> adapter."""
    adapters: dict[str, EngineAdapter] = {}
    local = local_models(settings)  # router mode runs only the models it is told to run here
    # vLLM keeps its Prometheus metrics in a global registry, so only the first text engine publishes.
    publisher = next((m.name for m in local if m.kind == "generate"), None)
    # Before anything imports huggingface_hub, which reads HF_HUB_OFFLINE once, at import.
    set_env_defaults(hub_env_defaults(local))
    for model in local:
        path = await asyncio.to_thread(resolve_path, model, settings.cache_dir)
        adapter = VllmLocalAdapter(local_spec(model, path, publish_metrics=model.name == publisher))
        log.info("starting engine for %s from %s", model.name, path)
        await adapter.start()
        adapters[model.name] = adapter
        for lora in model.lora_adapters:  # each LoRA adapter is a model name served by its base engine
            adapters[lora.name] = adapter
    return adapters
