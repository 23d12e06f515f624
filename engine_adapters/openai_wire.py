"""The OpenAI wire as the HTTP adapter reads and writes it: an engine request as an upstream JSON body,
the upstream's SSE events as engine-neutral chunks, its error bodies as the gateway's errors, and vLLM's
load gauges from its /metrics. No I/O here; engine_adapters.openai_http does that."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from engine_adapters.base import Chunk, GenerateRequest, StructuredOutput, TokenLogprob
from engine_adapters.errors import (
    ContextLengthExceeded,
    EngineUnavailable,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    status_error,
)

log = logging.getLogger(__name__)

# Error codes that servers put in a streamed `data: {"error": ...}` event, as the status they stand for.
_CODE_STATUS = {
    "engine_unavailable": 503,
    "rate_limit_exceeded": 429,
    "context_length_exceeded": 400,
    "model_not_found": 404,
}
_LOAD_GAUGES = (b"vllm:num_requests_waiting", b"vllm:num_requests_running", b"vllm:kv_cache_usage_perc")
_LORA_GAUGE = b"vllm:lora_requests_info{"
_LABEL = re.compile(rb'(\w+)="([^"]*)"')
# How vLLM's 500 begins when its engine has died (EngineDeadError): unlike a 500 about one request's
# content, it says the instance is unwell.
_ENGINE_DEAD = "EngineCore encountered an issue"


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What an instance's own /metrics says (vLLM's gauges), summed over its engines."""

    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
    lora: LoraGauge | None = None  # vllm:lora_requests_info, where LoRA is enabled


@dataclass(frozen=True, slots=True)
class LoraGauge:
    """vLLM's vllm:lora_requests_info: the adapters with requests running or waiting, and max_lora."""

    running: frozenset[str] = frozenset()
    waiting: frozenset[str] = frozenset()
    max_loras: int | None = None

    @property
    def busy(self) -> frozenset[str]:
        return self.running | self.waiting


class ChunkReader:
    """SSE events in, chunks out. A choice's finish is held back until the usage event, which carries
    the exact token counts, has arrived (it follows at once)."""

    def __init__(self, request: GenerateRequest) -> None:
        self.chat = request.messages is not None
        self.want_logprobs = request.sampling.logprobs is not None
        self.echo = request.sampling.prompt_logprobs is not None
        self._tokens: dict[int, int] = {}  # per choice, counted until usage says exactly
        self._finished: dict[int, str] = {}
        self._usage: dict[str, int] | None = None

    def feed(self, events: bytes) -> list[Chunk]:
        """Whole events, as stream_raw cuts them; it has already raised on an error event."""
        chunks: list[Chunk] = []
        for line in events.split(b"\n"):
            payload = line[5:].strip() if line.startswith(b"data:") else b""
            if payload and payload != b"[DONE]":
                chunks.extend(self._event(orjson.loads(payload)))
        return chunks

    def _event(self, event: dict[str, Any]) -> list[Chunk]:
        if event.get("usage"):
            self._usage = event["usage"]
        return [chunk for choice in event.get("choices") or () if (chunk := self._choice(choice))]

    def _choice(self, choice: dict[str, Any]) -> Chunk | None:
        index = int(choice.get("index") or 0)
        first = index not in self._tokens
        text = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
        logprobs = _logprobs(choice.get("logprobs"), self.chat) if self.want_logprobs else None
        count = len(logprobs) if logprobs else (1 if text else 0)
        self._tokens[index] = self._tokens.get(index, 0) + count
        if choice.get("finish_reason"):
            self._finished[index] = choice["finish_reason"]
        if not (text or logprobs or first):
            return None
        chunk = Chunk(index=index, text=text or "", logprobs=logprobs, completion_tokens=self._tokens[index])
        if first and self.echo:
            chunk.prompt_text = ""  # the service echoes the prompt it holds
        return chunk

    def finish(self) -> list[Chunk]:
        if not self._finished:
            raise EngineUnavailable("The upstream ended the stream before it finished.")
        usage = self._usage or {}
        counts = dict(self._tokens)
        if "completion_tokens" in usage:  # exact total; choices other than the first keep their count
            counts[0] = int(usage["completion_tokens"]) - sum(v for k, v in counts.items() if k != 0)
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        return [
            Chunk(index=i, finish_reason=reason, prompt_tokens=prompt_tokens, completion_tokens=counts.get(i, 0))
            for i, reason in sorted(self._finished.items())
        ]


def _logprobs(raw: Any, chat: bool) -> list[TokenLogprob] | None:
    if not raw:
        return None
    if chat:
        return [
            TokenLogprob(
                e["token"], e["logprob"], tuple((t["token"], t["logprob"]) for t in e.get("top_logprobs") or ())
            )
            for e in raw.get("content") or ()
        ]
    tops = raw.get("top_logprobs") or [None] * len(raw.get("tokens") or ())
    return [
        TokenLogprob(token, logprob if logprob is not None else float("nan"), tuple((top or {}).items()))
        for token, logprob, top in zip(raw.get("tokens") or (), raw.get("token_logprobs") or (), tops)
    ]


def request_payload(request: GenerateRequest, model: str) -> tuple[str, dict[str, Any]]:
    """The upstream path and JSON body for an engine request."""
    s = request.sampling
    optional = {
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "seed": s.seed,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "repetition_penalty": s.repetition_penalty,
        "stop": list(s.stop) or None,
        "stop_token_ids": list(s.stop_token_ids) or None,
        "include_stop_str_in_output": s.include_stop_str_in_output or None,
        "ignore_eos": s.ignore_eos or None,
        "min_tokens": s.min_tokens or None,
        "logit_bias": {str(k): v for k, v in s.logit_bias.items()} if s.logit_bias else None,
        "skip_special_tokens": None if s.skip_special_tokens else False,
    }
    body: dict[str, Any] = {"model": model, "n": s.n, "stream": True, "stream_options": {"include_usage": True}}
    body.update({key: value for key, value in optional.items() if value is not None})
    if s.structured is not None:
        body["structured_outputs"] = _structured_body(s.structured)
    if request.messages is not None:
        body["messages"] = request.messages
        if request.tools:
            # The upstream shows the tools to the model; the gateway reads the calls from its text.
            body.update(tools=request.tools, tool_choice="none")
        if not request.add_generation_prompt:
            body["add_generation_prompt"] = False
        if request.continue_final_message:
            body["continue_final_message"] = True
        if request.chat_template_kwargs:
            body["chat_template_kwargs"] = request.chat_template_kwargs
        if s.logprobs is not None:
            body.update(logprobs=True, top_logprobs=s.logprobs)
        return "/v1/chat/completions", body
    if s.prompt_logprobs is not None and (s.logprobs is not None or not isinstance(request.prompt, str)):
        # The upstream's echoed prompt cannot be told apart from its output in a stream.
        raise InvalidRequest("echo with logprobs or token ids is not supported for routed models.", param="echo")
    body["prompt"] = request.prompt
    if s.logprobs is not None:
        body["logprobs"] = s.logprobs
    return "/v1/completions", body


def _structured_body(structured: StructuredOutput) -> dict[str, Any]:
    """vLLM's `structured_outputs` field (tokenyard accepts it too)."""
    if structured.kind == "json_object":
        return {"json_object": True}
    return {structured.kind: list(structured.spec) if structured.kind == "choice" else structured.spec}


# The events the router acts on, found whatever the upstream's spacing (json.dumps writes `"usage": {`, and
# SSE allows `data:` with or without a space): one search each, as cheap as the `in` of a fixed literal.
# An event carrying usage: the router reads and may drop it, and never splices it.
USAGE_EVENT = re.compile(rb'"usage"\s*:\s*\{')
DONE_EVENT = re.compile(rb"data:[ \t]*\[DONE\]")
ERROR_EVENT = re.compile(rb'data:[ \t]*\{\s*"error"\s*:')
DONE = b"data: [DONE]\n\n"  # the end of a stream as tokenyard writes it, and passes an upstream's on


MAX_EVENT_BYTES = 16 * 1024 * 1024  # one SSE event an instance may send, by default (router.max_event_bytes)


def holds_usage(data: bytes) -> bool:
    """Whether `data` holds a usage event; the search only behind the literal every spelling holds."""
    return b'"usage"' in data and USAGE_EVENT.search(data) is not None


class ModelRename:
    """An upstream's `"model": "<its name>"` written back as the route's public name, whatever the spacing."""

    def __init__(self, upstream: str, public: str) -> None:
        self.pattern = re.compile(rb'"model"\s*:\s*' + re.escape(orjson.dumps(upstream)))
        self.to = b'"model":' + orjson.dumps(public)

    def __call__(self, data: bytes) -> bytes:
        return self.pattern.sub(lambda _: self.to, data)  # a function: `to` may hold backslashes

    @classmethod
    def between(cls, upstream: str, public: str) -> ModelRename | None:
        """The rename an answer needs, or None where the two names agree (the bytes pass untouched)."""
        return cls(upstream, public) if upstream != public else None


async def public_model_answer(
    pieces: AsyncIterator[bytes],
    content_type: bytes,
    rename: ModelRename | None,
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> AsyncIterator[bytes]:
    """A passed-through answer's bytes with the upstream's model name written back as the public one, where
    an answer names it: a JSON answer's `model` (Messages, rerank, score, pooling, classify), read whole to
    rewrite it, and the first event of a stream (Anthropic's `message_start` names it in `message.model`),
    after which the stream passes on untouched. Without a rename (the names agree) every piece passes as it
    comes; so do other content types."""
    if rename is None or not content_type.startswith((b"application/json", b"text/event-stream")):
        async for piece in pieces:
            yield piece
        return
    if content_type.startswith(b"application/json"):
        yield rename(b"".join([piece async for piece in pieces]))
        return
    first: list[bytes] = []  # the first event's pieces so far, each scanned once as it comes
    size = 0
    async for piece in pieces:
        if rename is None:
            yield piece
            continue
        across = bool(first) and first[-1].endswith(b"\n") and piece[:1] == b"\n"  # the blank line spans two
        end = 0 if across else piece.find(b"\n\n")
        if end == -1:
            first.append(piece)
            size += len(piece)
            if size > max_event_bytes:
                raise EngineUnavailable(f"The upstream sent an event longer than {max_event_bytes} bytes.")
            continue
        head = b"".join([*first, piece[: end + (1 if across else 2)]])
        yield rename(head) + piece[end + (1 if across else 2) :]
        first, rename = [], None
    if first:
        yield rename(b"".join(first)) if rename else b"".join(first)


def answered_whole(body: dict[str, Any]) -> bool:
    """Whether a non-streamed request asks for what an instance gives only in a whole answer: vLLM and
    tokenyard refuse `prompt_logprobs` when streaming, so such a request cannot be streamed and folded."""
    return not body.get("stream") and body.get("prompt_logprobs") is not None


def upstream_error(status: int, body: bytes, public_model: str) -> GatewayError:
    """The error of our tree for an upstream's error answer; its message reaches the client only for 4xx."""
    try:
        detail = orjson.loads(body).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        detail = {}
    if not isinstance(detail, dict):
        detail = {"message": str(detail)}
    message = str(detail.get("message") or f"The upstream answered {status}.")
    param = detail.get("param") if isinstance(detail.get("param"), str) else None
    if detail.get("code") == "context_length_exceeded":
        return ContextLengthExceeded(message, param=param)
    if status == 404:
        return ModelNotFound(public_model)
    if status in (401, 403):  # the router's own credentials for the instance, not the client's: unusable
        log.error("an upstream refused the router's credentials (%d)", status)
        return EngineUnavailable("The upstream instance refused the router's credentials.")
    if status in (502, 503, 504):
        return EngineUnavailable("The upstream instance is unavailable.")
    if status == 500 and message.startswith(_ENGINE_DEAD):
        return EngineUnavailable("The upstream instance's engine has stopped.")
    return status_error(status, message, param=param)


def event_error(detail: Any, public_model: str) -> GatewayError:
    detail = detail if isinstance(detail, dict) else {"message": str(detail)}
    code = detail.get("code")
    status = code if isinstance(code, int) else _CODE_STATUS.get(str(code), 500)
    return upstream_error(status, orjson.dumps({"error": detail}), public_model)


def parse_load(text: bytes, model: str) -> EngineLoad:
    """Sum vLLM's load gauges; only this model's lines when the instance labels them by model."""
    sums = {name: 0.0 for name in _LOAD_GAUGES}
    mine = {name: 0.0 for name in _LOAD_GAUGES}
    labelled = False
    label = f'model_name="{model}"'.encode()
    lora: tuple[float, bytes] | None = None
    for line in text.splitlines():
        if not line.startswith(b"vllm:"):
            continue
        if line.startswith(_LORA_GAUGE):
            lora = _latest(lora, line)
            continue
        name, _, rest = line.partition(b"{")
        if name not in sums:
            name = line.split(b" ", 1)[0]
            if name not in sums:
                continue
        try:
            value = float(line.rsplit(b" ", 1)[1])
        except (IndexError, ValueError):
            continue
        sums[name] += value
        if label in rest:
            labelled = True
            mine[name] += value
    values = mine if labelled else sums
    waiting, running, kv_cache_usage = (values[name] for name in _LOAD_GAUGES)
    return EngineLoad(waiting, running, kv_cache_usage, lora=_lora_gauge(lora[1]) if lora else None)


def _latest(best: tuple[float, bytes] | None, line: bytes) -> tuple[float, bytes] | None:
    """The gauge keeps one sample per label set it has had, valued at the time it was set: the newest is now."""
    try:
        stamp = float(line.rsplit(b" ", 1)[1])
    except (IndexError, ValueError):
        return best
    return (stamp, line) if best is None or stamp >= best[0] else best


def _lora_gauge(line: bytes) -> LoraGauge:
    labels = {key.decode(): value.decode() for key, value in _LABEL.findall(line)}
    names = {
        key: frozenset(n for n in labels.get(key, "").split(",") if n)
        for key in ("running_lora_adapters", "waiting_lora_adapters")
    }
    max_lora = labels.get("max_lora", "")
    return LoraGauge(
        names["running_lora_adapters"],
        names["waiting_lora_adapters"],
        int(max_lora) if max_lora.isdigit() and int(max_lora) > 0 else None,
    )
