"""/v1/models wire models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class KvEventsCard(BaseModel):
    endpoint: str  # vLLM's ZMQ PUB address; a wildcard host (tcp://*:5557) means this server's host
    replay_endpoint: str | None = None  # its ROUTER address, which re-sends missed batches


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tokenyard"
    max_model_len: int | None = None
    root: str | None = None
    parent: str | None = None
    kv_events: KvEventsCard | None = None  # where the engine publishes KV-cache events, for a router's policy kv
    input_modalities: list[str] | None = None  # what the model takes: text, image, audio, video (engine mode)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
