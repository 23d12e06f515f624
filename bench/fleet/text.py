"""The simulated model's tokenizer and chat template: one token a word, so prompts are cheap to make and
their lengths are exact. The router's kv policy asks an instance's /tokenize for a chat prompt's ids, and the
instance prefills the same ids, as a real vLLM does."""

from __future__ import annotations

import zlib
from typing import Any

BOS, END_OF_TURN = 1, 2
ROLES = {"system": 3, "user": 4, "assistant": 5, "tool": 6, "developer": 3}
FIRST_WORD_ID = 100
VOCAB = 32_000
OUTPUT_WORD = "ok"  # the text of every generated token


def word_id(word: str) -> int:
    return FIRST_WORD_ID + zlib.crc32(word.encode()) % (VOCAB - FIRST_WORD_ID)


OUTPUT_TOKEN = word_id(OUTPUT_WORD)


def encode(text: str) -> list[int]:
    return [word_id(word) for word in text.split()]


def content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def render_chat(messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
    """BOS, then per message its role token, its words and an end-of-turn token; then the assistant's role."""
    ids = [BOS]
    for message in messages:
        ids.append(ROLES.get(str(message.get("role")), ROLES["user"]))
        ids.extend(encode(content_text(message.get("content"))))
        ids.append(END_OF_TURN)
    if add_generation_prompt:
        ids.append(ROLES["assistant"])
    return ids


def output_text(tokens: int) -> str:
    return " ".join([OUTPUT_WORD] * tokens)
