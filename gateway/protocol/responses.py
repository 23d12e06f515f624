"""/v1/responses wire models (OpenAI's Responses API): input items, function tools, the response object."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from gateway.protocol.common import Probability, WireModel, type_tag


class InputText(WireModel):
    # An assistant turn given back as input carries output_text parts.
    type: Literal["input_text", "output_text"]
    text: str


class Refusal(WireModel):
    type: Literal["refusal"]
    refusal: str


class InputImage(WireModel):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["low", "high", "auto"] = "auto"


class InputFile(WireModel):
    type: Literal["input_file"]
    file_id: str | None = None
    file_data: str | None = None
    filename: str | None = None
    file_url: str | None = None


class AudioData(WireModel):
    data: str
    format: str


class InputAudio(WireModel):
    type: Literal["input_audio"]
    input_audio: AudioData


ContentPart = Annotated[InputText | Refusal | InputImage | InputFile | InputAudio, Field(discriminator="type")]


class InputMessage(WireModel):
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    status: str | None = None


class FunctionCallItem(WireModel):
    """A call the model made, given back as input (the turn it continues)."""

    type: Literal["function_call"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    status: str | None = None


class FunctionCallOutputItem(WireModel):
    """The client's result of a call: continues the turn."""

    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    output: str | list[ContentPart]
    status: str | None = None


class ReasoningItem(WireModel):
    """Reasoning given back as input: kept in the stored items, not shown to the model again."""

    type: Literal["reasoning"]
    id: str | None = None


class OtherItem(WireModel):
    """Any other item type (item_reference, built-in tool calls...): refused by name."""

    type: str


def _item_type(value: Any) -> str:
    return type_tag(value, ("message", "function_call", "function_call_output", "reasoning"), missing="message")


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_type),
]


class FunctionTool(WireModel):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(WireModel):
    """Built-in tools (web_search, file_search, code_interpreter, ...): refused by name."""

    type: str


def _tool_type(value: Any) -> str:
    return type_tag(value, ("function",))


ToolIn = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[OtherTool, Tag("other")], Discriminator(_tool_type)
]


class NamedFunctionChoice(WireModel):
    type: str  # "function"; any other (a built-in tool) is refused by name
    name: str | None = None


class TextFormat(WireModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(default=None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")  # `schema` would shadow BaseModel's
    strict: bool | None = None


class TextConfig(WireModel):
    format: TextFormat | None = None


class ResponsesRequest(WireModel):
    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Probability | None = None
    stream: bool = False
    user: str | None = None
    metadata: dict[str, str] | None = None
    text: TextConfig | None = None
    store: bool = True  # OpenAI's default: the response is kept, and can be retrieved and continued
    previous_response_id: str | None = None
    background: bool = False
    parallel_tool_calls: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    # Refused (400) when used: see services/responses_input.py.
    conversation: Any = None
    prompt: Any = None


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


ResponseStatus = Literal["completed", "incomplete", "in_progress", "failed", "queued", "cancelled"]


class Response(BaseModel):
    """The response object. `output` holds message and function_call items (see services/responses_output)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    background: bool = False
    error: dict[str, Any] | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[dict[str, Any]]
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Any = "auto"
    tools: list[Any] = Field(default_factory=list)
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    # Last: the limits middleware reads an answer's usage from its last bytes (gateway.middleware.limits).
    usage: ResponseUsage | None = None


class InputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
