"""Wire models of the paths a router passes through to vLLM as they are: /pooling, /classify and the audio
uploads. The gateway reads only their `model`; these document the shapes vLLM reads and answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from gateway.protocol.common import WireModel
from gateway.protocol.paths import UPLOAD_PATHS


class PoolingRequest(WireModel):
    """Inputs to pool with the model's pooler (vLLM's /pooling); its other fields pass on as sent."""

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    truncate_prompt_tokens: int | None = None
    user: str | None = None


class PoolingData(BaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: Any


class PoolingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class PoolingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[PoolingData]
    usage: PoolingUsage


class ClassifyRequest(PoolingRequest):
    """Inputs to classify with a sequence-classification model (vLLM's /classify)."""


class ClassifyData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassifyResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassifyData]
    usage: PoolingUsage


class TranscriptionResponse(WireModel):
    """The JSON answer (`response_format` json; verbose_json adds segments). Text formats answer text/plain."""

    text: str


# The paths whose body is an upload (multipart/form-data): read only as far as its `model` field in either mode.
AUDIO_PATHS = UPLOAD_PATHS

# The multipart form of /v1/audio/transcriptions and /v1/audio/translations, as OpenAI documents it.
AUDIO_FORM: dict[str, Any] = {
    "type": "object",
    "required": ["file", "model"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "file": {"type": "string", "format": "binary"},
        "language": {"type": "string"},
        "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": ["json", "text", "srt", "verbose_json", "vtt"]},
        "temperature": {"type": "number"},
        "stream": {"type": "boolean"},
    },
}
