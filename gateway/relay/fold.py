"""Stage 5 (answer) of the front door (gateway.relay), for a whole answer: the events an instance streamed, folded into
the one body OpenAI sends when `stream` is false."""

from __future__ import annotations

import time
from typing import Any

import orjson

from engine_adapters.openai_wire import DONE

# Keys whose string values are set once, not grown delta by delta.
_SET_ONCE = frozenset({"index", "id", "type", "role", "finish_reason", "stop_reason", "object"})


def fold(body: bytes, *, chat: bool, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    """The one answer that a stream of chunks adds up to, as OpenAI sends it when stream is false."""
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for event in body.split(b"\n\n"):
        if not event.startswith(b"data:") or event == DONE.rstrip():
            continue
        data = orjson.loads(event[5:])
        head = head or {k: v for k, v in data.items() if k not in ("choices", "usage")}
        for choice in data.get("choices") or ():
            _merge(choices.setdefault(int(choice.get("index") or 0), {}), choice)
    answer = {
        **head,
        "object": "chat.completion" if chat else "text_completion",
        "model": model,
        "created": head.get("created") or int(time.time()),
    }
    answer["choices"] = [_whole_choice(_joined(choices[i]), chat) for i in sorted(choices)]
    answer["usage"] = usage or None
    return answer


def _whole_choice(choice: dict[str, Any], chat: bool) -> dict[str, Any]:
    whole = {
        "index": choice.get("index", 0),
        "logprobs": choice.get("logprobs"),
        "finish_reason": choice.get("finish_reason") or "stop",
    }
    if not chat:
        return {**choice, **whole, "text": choice.get("text") or ""}
    message = {"role": "assistant", "content": None, **choice.get("delta", {})}
    if calls := message.get("tool_calls"):
        message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in calls]
        message["content"] = message.get("content") or None
    extra = {k: v for k, v in choice.items() if k not in ("delta", *whole)}
    return {**extra, **whole, "message": message}


class _Text(list[str]):
    """The pieces of one text field as it grows, joined once at the end: a str grown by + is copied whole
    on every delta, which is quadratic on a long answer."""


def _joined(value: Any) -> Any:
    """`value` with every _Text in it joined into its str."""
    if isinstance(value, _Text):
        return "".join(value)
    if isinstance(value, dict):
        return {key: _joined(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_joined(item) for item in value]
    return value


def _merge(into: dict[str, Any], delta: dict[str, Any]) -> None:
    """Grow `into` by one delta: text is appended, lists of indexed items merge by index, others extend."""
    for key, value in delta.items():
        old = into.get(key)
        if isinstance(value, str) and isinstance(old, str | _Text) and key not in _SET_ONCE:
            if isinstance(old, _Text):
                old.append(value)
            else:
                into[key] = _Text([old, value])
        elif value is None or old is None:
            into[key] = old if value is None else value
        elif isinstance(value, dict) and isinstance(old, dict):
            _merge(old, value)
        elif isinstance(value, list) and isinstance(old, list) and not isinstance(old, _Text):
            _merge_list(old, value)
        else:
            into[key] = value


def _merge_list(into: list[Any], items: list[Any]) -> None:
    if not all(isinstance(item, dict) and "index" in item for item in items):
        into.extend(items)
        return
    by_index = {item.get("index"): item for item in into if isinstance(item, dict)}
    for item in items:
        if (old := by_index.get(item["index"])) is not None:
            _merge(old, item)
        else:
            into.append(item)
            by_index[item["index"]] = item
