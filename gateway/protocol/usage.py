"""Reading an answer's token usage from its last bytes, without parsing the answer: the one reader that the
limits (what a request is charged), the side door's metrics and the trace spans share.

`usage` is the last field of our answers and of the last SSE event, OpenAI's (`prompt_tokens`,
`completion_tokens`, `total_tokens`) or Anthropic's (`input_tokens`, `output_tokens`), however the JSON is spaced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TAIL_BYTES = 512  # how much of an answer's end to keep: the usage is in it
_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens")
_PATTERNS = {name: re.compile(rb'"' + name.encode() + rb'":\s*(\d+)') for name in _FIELDS}


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def usage_fields(tail: bytes) -> dict[str, int]:
    """Each usage field found in an answer's last bytes, its last value."""
    return {name: int(values[-1]) for name, pattern in _PATTERNS.items() if (values := pattern.findall(tail))}


def usage_in(tail: bytes) -> Usage | None:
    """The last whole `usage` in an answer's last bytes (TAIL_BYTES): OpenAI's, or Anthropic's; JSON or SSE."""
    found = usage_fields(tail)
    if "total_tokens" in found:
        return Usage(found.get("prompt_tokens", 0), found.get("completion_tokens", 0), found["total_tokens"])
    if "input_tokens" in found and "output_tokens" in found:  # Anthropic's: no total
        inputs, outputs = found["input_tokens"], found["output_tokens"]
        return Usage(inputs, outputs, inputs + outputs)
    return None
