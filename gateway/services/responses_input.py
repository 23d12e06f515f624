"""A Responses request as the chat request that serves it: its input items (and a continued response's
history) become chat messages, its function tools and tool_choice chat's, text.format chat's response_format.

What has no chat counterpart is refused with a 400 naming it: built-in tools (web search, file search, code
interpreter...), item references, conversations and prompt templates.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.errors import InvalidRequest, invalid_fields
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.responses import (
    InputMessage,
    NamedFunctionChoice,
    OtherItem,
    OtherTool,
    ReasoningItem,
    ResponsesRequest,
)
from gateway.services.responses_output import new_id

_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
_METADATA_KEYS, _METADATA_KEY_CHARS, _METADATA_VALUE_CHARS = 16, 64, 512


def refuse_unsupported(req: ResponsesRequest) -> None:
    for tool in req.tools or []:
        if isinstance(tool, OtherTool):
            raise InvalidRequest(
                f"The built-in tool '{tool.type}' is not supported here; only function tools are.", param="tools"
            )
    choice = req.tool_choice
    if isinstance(choice, NamedFunctionChoice) and (choice.type != "function" or not choice.name):
        raise InvalidRequest(
            'tool_choice may name a function ({"type": "function", "name": ...}); built-in tools are not '
            "supported here.",
            param="tool_choice",
        )
    if req.conversation is not None:
        raise InvalidRequest(
            "Conversations are not supported here; continue a response with previous_response_id.",
            param="conversation",
        )
    if req.prompt is not None:
        raise InvalidRequest("Prompt templates are not supported; send the text in `input`.", param="prompt")
    if req.background and not req.store:
        raise InvalidRequest("A background response must be stored: background needs store true.", param="background")
    if isinstance(req.input, list) and not req.input:
        raise InvalidRequest("input must hold at least one item.", param="input")
    metadata = req.metadata or {}
    if len(metadata) > _METADATA_KEYS or any(
        len(k) > _METADATA_KEY_CHARS or len(v) > _METADATA_VALUE_CHARS for k, v in metadata.items()
    ):
        raise InvalidRequest(
            "metadata holds at most 16 pairs, keys of at most 64 and values of at most 512 characters.",
            param="metadata",
        )


def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's own input items as they are stored and listed: each with an id, text as parts."""
    if isinstance(req.input, str):
        return [_message_item("user", [{"type": "input_text", "text": req.input}])]
    items: list[dict[str, Any]] = []
    for index, item in enumerate(req.input):
        if isinstance(item, OtherItem):
            raise InvalidRequest(f"Input items of type '{item.type}' are not supported here.", param=f"input[{index}]")
        stored = item.model_dump(mode="json", exclude_none=True, by_alias=True)
        if isinstance(item, InputMessage) and isinstance(item.content, str):
            kind = "output_text" if item.role == "assistant" else "input_text"
            stored["content"] = [{"type": kind, "text": item.content}]
        if isinstance(item, InputMessage) and item.role == "assistant":  # listed as an output message is
            for part in stored["content"]:
                if part["type"] == "output_text":
                    part.setdefault("annotations", [])
        stored.setdefault("id", new_id(_ID_PREFIX[item.type]))
        if not isinstance(item, ReasoningItem):
            stored.setdefault("status", "completed")
        items.append(stored)
    return items


def _message_item(role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "message", "id": new_id("msg"), "role": role, "content": content, "status": "completed"}


def chat_part(part: dict[str, Any]) -> dict[str, Any]:
    """A Responses content part as chat's: text; image_url, file and input_audio passed on as chat names them."""
    kind = part["type"]
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image":
        if part.get("image_url"):
            return {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail", "auto")}}
        if part.get("file_id"):
            return {"type": "file", "file": {"file_id": part["file_id"]}}
        raise InvalidRequest("An input_image needs image_url or file_id.", param="input")
    if kind == "input_file":
        fields = {k: part[k] for k in ("file_id", "file_data", "filename", "file_url") if part.get(k) is not None}
        if not fields.keys() & {"file_id", "file_data", "file_url"}:
            raise InvalidRequest("An input_file needs file_id, file_data or file_url.", param="input")
        return {"type": "file", "file": fields}
    return {"type": "input_audio", "input_audio": part["input_audio"]}


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Chat content: one string when it is all text (what every chat path reads), else the parts."""
    converted = [chat_part(part) for part in parts]
    if all(part["type"] == "text" for part in converted):
        return "".join(part["text"] for part in converted)
    return converted


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored-shape items (a continued response's history, then this request's input) as chat messages."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    called: set[str] = set()
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            content = item["content"]
            messages.append(
                {"role": item["role"], "content": content if isinstance(content, str) else _content(content)}
            )
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            called.add(item["call_id"])
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # the turn's text, or its calls before this one
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if item["call_id"] not in called:
                raise InvalidRequest(
                    f"No function call found for the function_call_output with call_id '{item['call_id']}': send "
                    "the function_call item before it, or continue the response that made it (previous_response_id).",
                    param="input",
                )
            output = item["output"]
            text = output if isinstance(output, str) else "".join(chat_part(p).get("text", "") for p in output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        # reasoning items are kept in the store but not shown to the model again
    return messages


def chat_request(req: ResponsesRequest, items: list[dict[str, Any]]) -> ChatCompletionRequest:
    body: dict[str, Any] = {
        "model": req.model,
        "messages": chat_messages(req.instructions, items),
        "max_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stream": req.stream,
        "user": req.user,
        "parallel_tool_calls": req.parallel_tool_calls,
    }
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)} for tool in req.tools
        ]
    choice = req.tool_choice
    if isinstance(choice, NamedFunctionChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        body["tool_choice"] = choice
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_schema" and fmt.schema_ is None:
        raise InvalidRequest("text.format of type json_schema needs a schema.", param="text.format.schema")
    if req.tools and (choice == "required" or isinstance(choice, NamedFunctionChoice)):
        fmt = None  # the output is a call, whose own shape constrains it: text.format shapes text, and there is none
    if fmt is not None and fmt.type == "json_schema":
        schema = {"name": fmt.name or "output", "schema": fmt.schema_, "strict": fmt.strict}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt is not None:
        body["response_format"] = {"type": fmt.type}
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_fields(list(exc.errors())) from None
