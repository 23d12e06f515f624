"""Tool calling for chat: what the request asks for, and the calls in each choice's output.

tool_choice "auto" lets the model choose; its text is read by the model's tool parser. "required"
and a named function constrain decoding to a JSON shape built from the tools' parameter schemas,
so even a small model answers with a well-formed call, which is read directly:
- "required": a JSON list of {"name", "arguments"} objects (one at most unless parallel_tool_calls);
- a named function: the arguments object alone.
"none", or no tools, leaves the output as plain content.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from engine_adapters.base import StructuredOutput
from gateway.errors import InvalidRequest
from gateway.protocol.chat import ChatCompletionRequest, ChatMessageIn, NamedToolChoice
from gateway.services.tool_parsers import ParsedCall, ToolParser, parser_for


@dataclass(frozen=True)
class ToolPlan:
    mode: Literal["auto", "required", "named"]
    names: frozenset[str]
    parser: ToolParser
    forced_name: str | None = None
    structured: StructuredOutput | None = None


def plan(req: ChatCompletionRequest, parser_name: str | None) -> ToolPlan | None:
    """None when the output is plain content (no tools, or tool_choice "none")."""
    choice = req.tool_choice
    if not req.tools:
        if choice == "required" or isinstance(choice, NamedToolChoice):
            raise InvalidRequest("tool_choice needs tools.", param="tool_choice")
        return None
    names = [tool.function.name for tool in req.tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("Tool names must be unique.", param="tools")
    if choice == "none":
        return None
    forced = isinstance(choice, NamedToolChoice) or choice == "required"
    if (
        forced
        and req.structured_outputs is not None
        or forced
        and req.response_format
        and req.response_format.type != "text"
    ):
        raise InvalidRequest(
            "A forced tool_choice cannot be combined with response_format or structured_outputs.", param="tool_choice"
        )
    parser = parser_for(parser_name)
    parameters = {
        tool.function.name: tool.function.parameters or {"type": "object", "properties": {}} for tool in req.tools
    }
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in parameters:
            raise InvalidRequest(
                f"tool_choice names the function {name!r}, which is not in tools.", param="tool_choice"
            )
        return ToolPlan("named", frozenset(names), parser, name, StructuredOutput("json", parameters[name]))
    if choice == "required":
        schema = _calls_schema(parameters, parallel=req.parallel_tool_calls is not False)
        return ToolPlan("required", frozenset(names), parser, structured=StructuredOutput("json", schema))
    return ToolPlan("auto", frozenset(names), parser)


def _calls_schema(parameters: dict[str, dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """A call {"name", "arguments"}, or a list of calls when parallel calls are allowed: the shapes the
    prompt teaches. (A list alone invites a small model to loop on the whitespace JSON allows after "[".)"""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": schema},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, schema in parameters.items()
    ]
    one: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]} if parallel else one


def template_messages(messages: list[ChatMessageIn]) -> list[dict[str, Any]]:
    """OpenAI-shaped messages for the engine; a tool result gains the name of the call it answers.
    As OpenAI does, a tool message must answer a call of an earlier assistant message."""
    called: dict[str, str] = {}
    result: list[dict[str, Any]] = []
    for message in messages:
        # Media parts go on as parts (the engine reads them); a text-only message as its text.
        parts = message.content if isinstance(message.content, list) and message.media() else None
        content = [part.model_dump(exclude_none=True) for part in parts] if parts else message.text()
        turn: dict[str, Any] = {"role": message.role, "content": content}
        if message.tool_calls:
            turn["tool_calls"] = [call.model_dump(include={"id", "type", "function"}) for call in message.tool_calls]
            called.update({call.id: call.function.name for call in message.tool_calls})
        if message.role == "tool":
            if message.tool_call_id not in called:
                raise InvalidRequest(
                    "A message with role 'tool' must answer a preceding assistant message's "
                    "tool_calls, by its tool_call_id.",
                    param="messages",
                )
            turn["tool_call_id"] = message.tool_call_id
            turn["name"] = message.name or called[message.tool_call_id]
        result.append(turn)
    return result


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def wire_calls(calls: tuple[ParsedCall, ...]) -> list[dict[str, Any]]:
    return [
        {"id": new_call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
    ]


class ChoiceCalls:
    """One choice's output under a plan: content goes out as it comes unless it may be a call,
    which is held back and read when the choice ends (a call is sent whole, never in pieces)."""

    def __init__(self, tool_plan: ToolPlan) -> None:
        self.plan = tool_plan
        self.held = ""  # text not sent yet: a possible call, or the start of one
        self.capturing = tool_plan.mode != "auto"  # forced calls: all of the output is the call
        self.plain = False  # auto: the reply is known to be plain content

    def feed(self, text: str) -> str:
        """The content that can be sent now."""
        if self.plain:
            return text
        self.held += text
        if self.capturing:
            return ""
        if self.plan.parser.anywhere:
            return self._release_before_marker()
        start = self.held.lstrip()
        if any(start.startswith(m) for m in self.plan.parser.markers):
            self.capturing = True
            return ""
        if not start or any(m.startswith(start) for m in self.plan.parser.markers):
            return ""  # too little text yet to tell
        self.plain, text, self.held = True, self.held, ""
        return text

    def _release_before_marker(self) -> str:
        found = [i for i in (self.held.find(m) for m in self.plan.parser.markers) if i >= 0]
        if found:
            cut = min(found)
            self.capturing = True
        else:  # keep a tail that may be the start of a marker
            cut = len(self.held) - max(
                (k for m in self.plan.parser.markers for k in range(1, len(m)) if self.held.endswith(m[:k])), default=0
            )
        text, self.held = self.held[:cut], self.held[cut:]
        return text

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """Content still to send, and the calls found."""
        text, self.held = self.held, ""
        if not self.capturing:
            return text, []
        calls = self._calls(text)
        if calls is None:
            return text, []
        content, found = calls
        return content, wire_calls(found)

    def _calls(self, text: str) -> tuple[str, tuple[ParsedCall, ...]] | None:
        if self.plan.mode == "named":
            try:
                arguments = json.loads(text)
            except ValueError:
                return None  # cut short (max_tokens): the text goes out as content
            return "", (ParsedCall(self.plan.forced_name or "", json.dumps(arguments, ensure_ascii=False)),)
        if self.plan.mode == "required":
            try:
                value = json.loads(text)
                items = value if isinstance(value, list) else [value]
                return "", tuple(ParsedCall(i["name"], json.dumps(i["arguments"], ensure_ascii=False)) for i in items)
            except (ValueError, TypeError, KeyError):  # cut short, or not the shape asked for
                return None
        parsed = self.plan.parser.parse(text)
        if not parsed.calls or any(call.name not in self.plan.names for call in parsed.calls):
            return None  # a call to a function the client does not have is not a call it can serve
        return parsed.content or "", parsed.calls
