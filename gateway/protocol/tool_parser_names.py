"""The names of the tool-call parsers (gateway.services.tool_parsers holds the parsers), down here so that the
settings can check a model's `tool_parser` without importing the serving layer."""

from __future__ import annotations

TOOL_PARSER_NAMES: tuple[str, ...] = ("json", "hermes", "llama3_json", "pythonic")
DEFAULT_TOOL_PARSER = "json"
