"""Stage 3 (read) of the front door (gateway.relay): what the router reads of a routed body, and nothing more.

A router is liberal: whatever an instance accepts, a route to it passes on. So a routed body is not checked
against engine mode's wire models (gateway.protocol), which know only the part types and fields tokenyard
serves itself; it is read for what the router needs (the model, `stream`, `stream_options`, `n` and the token
limits it charges), each typed as the instance will read it, and the rest goes on as it came. A request the
instance cannot serve gets the instance's own 400.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from gateway.protocol.common import StreamOptions, WireModel


class Routed(WireModel):
    """The fields the router itself reads; every other field is kept (extra) and passed on unchanged."""

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None

    @property
    def wants_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def text_of(content: Any) -> str:
    """A message's text as a routing policy compares it: a string, or the text of its text parts (OpenAI's
    chat parts and Anthropic's blocks alike); parts of any other type count for nothing."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))


def prompt_messages(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The messages' roles and texts, for a route's policy (prefix, kv); None when the body has none."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    return [
        {"role": str(message.get("role")), "content": text_of(message.get("content"))}
        for message in messages
        if isinstance(message, dict)
    ]


def prompt_start(body: dict[str, Any]) -> str | list[int] | None:
    """A completion's (first) prompt, text or token ids, for a route's policy."""
    prompt = body.get("prompt")
    first = prompt[0] if isinstance(prompt, list) and prompt else prompt
    if isinstance(first, str):
        return first
    ids = prompt if isinstance(first, int) else first
    return [i for i in ids if isinstance(i, int)] if isinstance(ids, list) else None
