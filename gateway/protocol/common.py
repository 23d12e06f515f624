"""Wire models shared by several resources."""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def type_tag(value: Any, known: Collection[str], missing: str | None = None) -> str:
    """The tag of a typed part, block, item or tool for a discriminated union: its `type` when known, else
    "other" (the member that refuses it by name). Read from a dict (validating) or a model (serialising);
    `missing` is the type of one that names none."""
    kind = value.get("type", missing) if isinstance(value, dict) else getattr(value, "type", missing)
    return kind if isinstance(kind, str) and kind in known else "other"


class WireModel(BaseModel):
    # Unknown request fields are accepted (clients send vendor extras), and ignored.
    model_config = ConfigDict(extra="allow")


class StreamOptions(WireModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class PromptLogprob(BaseModel):
    """vLLM's prompt_logprobs entry (keyed by token id): not part of OpenAI's API."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# Per prompt position (the first has none): token id -> its logprob.
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class JsonSchemaFormat(WireModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")  # `schema` would shadow BaseModel's
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsIn(WireModel):
    """vLLM's `structured_outputs` extra: exactly one constraint."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")  # `json` would shadow BaseModel's
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingFields(WireModel):
    """Sampling fields that chat and completions share, OpenAI's and vLLM's extras."""

    model: str = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Probability | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Accepted and ignored: one service tier here, and nothing is stored for metadata to tag.
    service_tier: str | None = None
    metadata: dict[str, str] | None = None
    # vLLM's extras
    prompt_logprobs: int | None = Field(default=None, ge=0, le=20)
    return_tokens_as_token_ids: bool = False
    use_beam_search: bool = False
    length_penalty: float = 1.0
    top_k: int | None = Field(default=None, ge=-1)
    min_p: Probability | None = None
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # Constrained decoding: OpenAI's response_format, or vLLM's structured_outputs.
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsIn | None = None


FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]
