"""Router mode: chat and completions pass through to an instance as bytes.

The instance (tokenyard in engine mode, `vllm serve`) does the work, so every field it knows works
through the router (tools, response_format, echo, ...). The router chooses the instance, retries before
anything has reached the client, and reads only what accounting needs: the usage event at the end,
which it asks for and drops again when the client did not. A whole answer (stream false) is streamed
from the instance too, so that a stall is noticed at the idle timeout, and folded into one body here,
except what instances give only whole (openai_wire.answered_whole): that answer is passed on as it came.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from engine_adapters.base import NOTHING_FORWARDED, Forwarded, Relay, RouteRequest
from engine_adapters.openai_wire import DONE, answered_whole, holds_usage
from engine_adapters.splice import CountingSink, Sink
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.common import SamplingFields
from gateway.protocol.completions import CompletionRequest
from gateway.services.metering import MeteredStream
from gateway.services.wire import new_id
from gateway.state import AppState

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
# Keys whose string values are set once, not grown delta by delta.
_SET_ONCE = frozenset({"index", "id", "type", "role", "finish_reason", "stop_reason", "object"})


def routing_request(
    req: SamplingFields, session_id: str | None, forwarded: Forwarded = NOTHING_FORWARDED
) -> RouteRequest:
    """What the route's policy looks at: the prompt's start, the session key, whether it streams; and
    what goes on to the instance besides the body (the request id, the trace context)."""
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    if isinstance(req, ChatCompletionRequest):
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    elif isinstance(req, CompletionRequest):
        first = req.prompt[0] if isinstance(req.prompt, list) and req.prompt else req.prompt
        ids = req.prompt if isinstance(first, int) else first or []
        prompt = first if isinstance(first, str) else [int(i) for i in ids if isinstance(i, int)]
    return RouteRequest(new_id("relay"), req.model, prompt, messages, session_id or req.user, req.stream, forwarded)


class RelayCall:
    """One client request, relayed: metered like any engine request, usage read from the last event.
    Given the client's socket (`to_client`, a streamed answer on uvicorn with the splice on), the events
    between the first and the last may go there from the instance's socket (engine_adapters.splice)."""

    def __init__(
        self,
        state: AppState,
        adapter: Relay,
        req: SamplingFields,
        body: dict[str, Any],
        session_id: str | None,
        path: str,
        to_client: Sink | None = None,
        forwarded: Forwarded = NOTHING_FORWARDED,
    ) -> None:
        self.req, self.path = req, path
        self.request = routing_request(req, session_id, forwarded)
        self.trace = forwarded.trace  # while tracing is on: it sees the events this Sink passes on
        self.metered = MeteredStream(state, adapter, self.request, path)  # type: ignore[arg-type]  # a RoutedAdapter is an EngineAdapter by shape (structural)
        # The splice's sink: each event written there counts for the metrics, as the yielded ones do. It is
        # given no usage event (engine_adapters.splice), so what it writes needs no pass_on.
        sink = CountingSink(to_client, self._written) if to_client is not None and req.stream else None
        self.whole = answered_whole(body)  # the instance answers whole, and that answer is passed on as it is
        self.source = self.metered.pieces(adapter.relay(self.request, path, body, sink))
        options = req.stream_options
        self.want_usage = bool(options and options.include_usage)
        self.usage: dict[str, Any] = {}

    def pass_on(self, piece: bytes) -> bytes:
        """The bytes for the client: as they came, less the usage event when the client did not ask."""
        if not holds_usage(piece):
            return piece
        kept = []
        for event in piece.split(b"\n\n"):
            if event.startswith(b"data:") and holds_usage(event):
                data = orjson.loads(event[5:])
                self.usage = data.get("usage") or self.usage
                if not self.want_usage and not data.get("choices"):
                    continue
            kept.append(event)
        return b"\n\n".join(kept)

    def _written(self, events: bytes) -> None:
        # What the splice wrote: no pass_on, a Sink is given no usage event (engine_adapters.splice).
        self.metered.observe()
        if self.trace is not None:
            self.trace.watch(events)

    def record(self, status: int) -> None:
        self.metered.record(
            status, int(self.usage.get("prompt_tokens") or 0), int(self.usage.get("completion_tokens") or 0)
        )


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
