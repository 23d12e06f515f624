"""Runtime LoRA routes' wire models, as vLLM serves them (/v1/load_lora_adapter, /v1/unload_lora_adapter)."""

from __future__ import annotations

from pydantic import Field

from gateway.protocol.common import WireModel


class LoadLoraAdapterRequest(WireModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    # Ours: which base model serves it; needed only when several models have LoRA enabled.
    base_model_name: str | None = None


class UnloadLoraAdapterRequest(WireModel):
    lora_name: str = Field(min_length=1)
