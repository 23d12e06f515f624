"""/tokenize and /detokenize (vLLM's server) and /api/v1/token_check (FastChat's) wire models."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from gateway.protocol.chat import ChatMessageIn, ChatTemplateFields, Tool
from gateway.protocol.common import WireModel


class TokenizeRequest(ChatTemplateFields):
    """Either a text `prompt` or chat `messages` (rendered by the chat template, as a chat request would be)."""

    model: str | None = None  # vLLM's default: the one model served
    prompt: str | None = None
    messages: list[ChatMessageIn] | None = Field(default=None, min_length=1)
    tools: list[Tool] | None = None  # chat: shown to the model by the template, as in a chat request
    # None: a text prompt gets the special tokens (BOS), a chat's template writes its own.
    add_special_tokens: bool | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("Give either `prompt` or `messages`.")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(WireModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenCheckItem(WireModel):
    model: str = Field(min_length=1)
    prompt: str
    max_tokens: int = Field(ge=0)


class TokenCheckRequest(WireModel):
    prompts: list[TokenCheckItem] = Field(min_length=1)


class TokenCheckResult(BaseModel):
    # FastChat's field names (camelCase), which its clients read.
    fits: bool
    tokenCount: int  # noqa: N815
    contextLength: int  # noqa: N815


class TokenCheckResponse(BaseModel):
    prompts: list[TokenCheckResult]
