"""Read tool calls out of a model's text, for tool_choice "auto".

Models announce calls in their own formats; a model's `tool_parser` setting names the one it uses:

- `json` (the default, and what tokenyard's Gemma template asks for): the whole reply is one JSON
  object {"name": ..., "arguments": {...}} or a list of them, bare or in a ```json / ```tool_code
  fence (a tool_code fence may also hold Python-style calls, as Gemma's own prompts teach);
- `hermes`: <tool_call>{"name": ..., "arguments": {...}}</tool_call>, after optional text;
- `llama3_json`: {"name": ..., "parameters": {...}}, optionally after <|python_tag|>, several
  separated by ";";
- `pythonic`: [get_weather(city="Paris"), get_time()], literal keyword arguments only.

A parser either finds calls in the text, or leaves all of it as content: text that looks like a call
but is not well-formed is the model's answer, not a failed call. Pure functions; no engine imports.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.protocol.tool_parser_names import DEFAULT_TOOL_PARSER


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # a JSON object, as text


@dataclass(frozen=True)
class ParseResult:
    content: str | None
    calls: tuple[ParsedCall, ...] = ()


@dataclass(frozen=True)
class ToolParser:
    name: str
    parse: Callable[[str], ParseResult]
    # Where a call can begin: a streamed reply is held back from the first marker on, and parsed at its end.
    markers: tuple[str, ...]
    # False: a call is the whole reply, so a marker counts only at its start (after whitespace).
    anywhere: bool = False


def _as_content(text: str) -> ParseResult:
    return ParseResult(content=text or None)


def _call(value: Any) -> ParsedCall | None:
    """One call from a decoded JSON object: name plus arguments (or parameters), an object or its JSON text."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # OpenAI's own shape, {"type": "function", "function": {...}}
        value = value["function"]
    name = value.get("name")
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return ParsedCall(name, json.dumps(arguments, ensure_ascii=False))


def _calls(value: Any) -> tuple[ParsedCall, ...] | None:
    """A call or a non-empty list of calls; None when any part is not a call."""
    items = value if isinstance(value, list) else [value]
    calls = [_call(item) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return tuple(call for call in calls if call is not None)


def _json_values(text: str, separators: str = "") -> list[Any] | None:
    """Every JSON value in text, one after another (whitespace and `separators` between); None if other text."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    while True:
        while position < len(text) and (text[position].isspace() or text[position] in separators):
            position += 1
        if position == len(text):
            return values
        try:
            value, position = decoder.raw_decode(text, position)
        except ValueError:
            return None
        values.append(value)


# -- json (Gemma's default) -------------------------------------------------------------------

_FENCE = re.compile(r"\A```([A-Za-z_]*)[ \t]*\n?(.*?)\n?```\Z", re.DOTALL)


def parse_json(text: str) -> ParseResult:
    body = text.strip()
    language = ""
    fenced = _FENCE.match(body)
    if fenced:
        language, body = fenced.group(1).lower(), fenced.group(2).strip()
    values = _json_values(body)
    calls = _calls(values[0] if len(values) == 1 else values) if values else None
    if calls is None and language in ("tool_code", "python"):
        calls = _python_calls(body)
    return ParseResult(None, calls) if calls else _as_content(text)


# -- hermes ---------------------------------------------------------------------------------

_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


def parse_hermes(text: str) -> ParseResult:
    start = text.find("<tool_call>")
    if start < 0:
        return _as_content(text)
    calls: list[ParsedCall] = []
    for match in _HERMES.finditer(text, start):
        values = _json_values(match.group(1))
        found = _calls(values[0]) if values and len(values) == 1 else None
        if found is None:
            return _as_content(text)
        calls.extend(found)
    return ParseResult(text[:start].strip() or None, tuple(calls))


# -- llama3_json ----------------------------------------------------------------------------


def parse_llama3_json(text: str) -> ParseResult:
    body = text.strip().removeprefix("<|python_tag|>")
    values = _json_values(body, separators=";")
    calls = _calls(values) if values else None
    return ParseResult(None, calls) if calls else _as_content(text)


# -- pythonic -------------------------------------------------------------------------------


def _python_calls(text: str) -> tuple[ParsedCall, ...] | None:
    """[f(a=1), g()] or a bare f(a=1), possibly wrapped in print(...); literal keyword arguments only."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return None
    if (
        isinstance(tree, ast.Call)
        and isinstance(tree.func, ast.Name)
        and tree.func.id == "print"
        and len(tree.args) == 1
    ):
        tree = tree.args[0]
    nodes = tree.elts if isinstance(tree, ast.List) else [tree]
    calls = [_python_call(node) for node in nodes]
    if not calls or any(call is None for call in calls):
        return None
    return tuple(call for call in calls if call is not None)


def _python_call(node: ast.expr) -> ParsedCall | None:
    if not isinstance(node, ast.Call) or node.args or any(k.arg is None for k in node.keywords):
        return None
    name = _dotted_name(node.func)
    if name is None:
        return None
    try:
        arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        return ParsedCall(name, json.dumps(arguments, ensure_ascii=False))
    except (ValueError, TypeError, SyntaxError):  # not a literal, or not JSON-able (a set, bytes)
        return None


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def parse_pythonic(text: str) -> ParseResult:
    body = text.strip().removeprefix("<|python_start|>").removesuffix("<|python_end|>").strip()
    calls = _python_calls(body) if body.startswith("[") else None
    return ParseResult(None, calls) if calls else _as_content(text)


PARSERS: Mapping[str, ToolParser] = MappingProxyType(
    {
        "json": ToolParser("json", parse_json, markers=("{", "[", "```")),
        "hermes": ToolParser("hermes", parse_hermes, markers=("<tool_call>",), anywhere=True),
        "llama3_json": ToolParser("llama3_json", parse_llama3_json, markers=("{", "<|python_tag|>")),
        "pythonic": ToolParser("pythonic", parse_pythonic, markers=("[", "<|python_start|>")),
    }
)
DEFAULT_PARSER = DEFAULT_TOOL_PARSER


def parser_for(name: str | None) -> ToolParser:
    return PARSERS[name or DEFAULT_PARSER]
