"""/v1/chat/completions wire models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from gateway.protocol.common import FinishReason, PromptLogprobs, SamplingFields, Usage, WireModel, type_tag


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImageURL(WireModel):
    url: str  # http(s), a data: URL, or file:// where the model allows a local media directory
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(WireModel):
    data: str  # base64
    format: str  # "wav", "mp3", ...


class AudioPart(WireModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class MediaURL(WireModel):
    url: str


class AudioURLPart(WireModel):
    """vLLM's extra: audio by URL."""

    type: Literal["audio_url"]
    audio_url: MediaURL


class VideoPart(WireModel):
    """vLLM's extra: video by URL."""

    type: Literal["video_url"]
    video_url: MediaURL


class FilePart(WireModel):
    type: Literal["file"]
    file: dict[str, Any]  # file_data (base64), file_id, filename


class RefusalPart(WireModel):
    """An assistant message's refusal, as the model gave it."""

    type: Literal["refusal"]
    refusal: str


class EmbedsPart(WireModel):
    """vLLM's extras: precomputed embeddings (image_embeds, audio_embeds, video_embeds), base64 tensors."""

    type: Literal["image_embeds", "audio_embeds", "video_embeds"]


class OtherPart(WireModel):
    """A part type this server does not know: refused with a 400 that names it (gateway.services.media)."""

    type: str


def _part_tag(part: Any) -> str:
    return type_tag(part, _PART_TAGS)


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[ImagePart, Tag("image_url")]
    | Annotated[AudioPart, Tag("input_audio")]
    | Annotated[AudioURLPart, Tag("audio_url")]
    | Annotated[VideoPart, Tag("video_url")]
    | Annotated[FilePart, Tag("file")]
    | Annotated[RefusalPart, Tag("refusal")]
    | Annotated[EmbedsPart, Tag("image_embeds")]
    | Annotated[EmbedsPart, Tag("audio_embeds")]
    | Annotated[EmbedsPart, Tag("video_embeds")]
    | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_tag),
]
_PART_TAGS = frozenset(
    {
        "text",
        "image_url",
        "input_audio",
        "audio_url",
        "video_url",
        "file",
        "refusal",
        "image_embeds",
        "audio_embeds",
        "video_embeds",
    }
)


class FunctionCall(WireModel):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageIn(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant: the calls it made
    tool_call_id: str | None = None  # tool: the call this message answers

    def text(self) -> str:
        """The message's text: its text parts (and an assistant's refusal), joined; media count for nothing."""
        if isinstance(self.content, list):
            return "".join(
                part.text if isinstance(part, TextPart) else part.refusal if isinstance(part, RefusalPart) else ""
                for part in self.content
            )
        return self.content or ""

    def media(self) -> bool:
        """Whether the content holds anything but text."""
        return isinstance(self.content, list) and any(
            not isinstance(part, TextPart | RefusalPart) for part in self.content
        )


# apply_chat_template's own arguments: a template variable of these names would clash with them.
_RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation",
        "messages",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    }
)


class ChatTemplateFields(WireModel):
    """How messages become a prompt (vLLM's extras): chat requests and /tokenize share them."""

    add_generation_prompt: bool = True
    # Leave the last message open (no end of turn), so the model continues it instead of answering it.
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _template_options(self) -> ChatTemplateFields:
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to true.")
        clash = sorted(_RESERVED_TEMPLATE_KWARGS & set(self.chat_template_kwargs or {}))
        if clash:
            raise ValueError(f"chat_template_kwargs may not set {', '.join(clash)}.")
        return self


class FunctionDefinition(WireModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None


class Tool(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields, ChatTemplateFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # vLLM's extra: the answer starts with the last message's text when that message is the one answered.
    echo: bool = False

    @property
    def output_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason
    stop_reason: str | None = None  # vLLM's extra: the stop string that ended the choice


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: PromptLogprobs | None = None  # vLLM's extra, only when asked for


class FastChatChatRequest(ChatCompletionRequest):
    """FastChat's /api/v1/chat/completions: OpenAI's request (FastChat's extras top_k and repetition_penalty are
    ours too), whose `messages` may also be one string, the user's turn."""

    messages: list[ChatMessageIn] | str = Field(min_length=1)  # type: ignore[assignment]  # FastChat widens OpenAI's messages to also accept one string

    @model_validator(mode="after")
    def _one_user_turn(self) -> FastChatChatRequest:
        if isinstance(self.messages, str):
            self.messages = [ChatMessageIn(role="user", content=self.messages)]
        return self
