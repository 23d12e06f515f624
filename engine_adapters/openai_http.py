"""Any OpenAI-compatible server over HTTP: JSON out, SSE in, engine-neutral chunks out.

The upstream can be tokenyard in engine mode, `vllm serve`, or any OpenAI-compatible endpoint; its URL
is the server root (where /health and /metrics live). Generation always streams from the upstream, so
the first chunk is known the moment it exists. Upstream failures become the gateway's error classes;
the retryable ones (EngineUnavailable, RateLimited) are raised before the first chunk, or later only
when the stream breaks, which a router must then not retry for a streamed request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from engine_adapters.base import Chunk, GenerateRequest, Load, ModelInfo, TokenLogprob
from gateway.errors import (
    ContextLengthExceeded,
    EngineUnavailable,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    status_error,
)

log = logging.getLogger(__name__)

_JSON = {"content-type": "application/json"}
# Error codes that servers put in a streamed `data: {"error": ...}` event, as the status they stand for.
_CODE_STATUS = {"engine_unavailable": 503, "rate_limit_exceeded": 429, "context_length_exceeded": 400,
                "model_not_found": 404}
_LOAD_GAUGES = (b"vllm:num_requests_waiting", b"vllm:num_requests_running", b"vllm:kv_cache_usage_perc")


@dataclass(frozen=True)
class HttpTimeouts:
    connect_s: float = 2.0
    first_token_s: float = 60.0  # from sending the request to the first chunk
    idle_s: float = 30.0  # between two reads once the stream is flowing
    total_s: float = 600.0  # the whole upstream request, so no proxied request lives forever
    probe_s: float = 2.0  # /health, /metrics, /v1/models


@dataclass(frozen=True)
class EngineLoad:
    """What an instance's own /metrics says (vLLM's gauges), summed over its engines."""

    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0


class OpenAIHttpAdapter:
    def __init__(self, base_url: str, model: str, *, timeouts: HttpTimeouts | None = None,
                 api_key: str | None = None, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model  # the name the upstream serves, which may differ from the public one
        self.timeouts = timeouts or HttpTimeouts()
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # One pooled client per instance: connections are reused across requests.
        self._client = client or httpx.AsyncClient(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(self.timeouts.total_s, connect=self.timeouts.connect_s),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=128),
        )
        self._open: dict[str, httpx.Response] = {}  # request id -> upstream response being read
        self._models: list[ModelInfo] = []

    # -- lifecycle and status ----------------------------------------------------

    async def start(self) -> None:
        try:
            await self.refresh_models()
        except GatewayError:
            log.warning("%s did not list its models at start", self.base_url)

    async def close(self, drain_deadline_s: float = 0.0) -> None:
        deadline = time.monotonic() + drain_deadline_s
        while self._open and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for request_id in list(self._open):
            await self.abort(request_id)
        await self._client.aclose()

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    def max_model_len(self) -> int | None:
        return next((m.max_model_len for m in self._models if m.name == self.model), None)

    def load(self) -> Load:
        return Load(in_flight=len(self._open))

    async def check_health(self) -> None:
        response = await self._probe("/health")
        if response.status_code != 200:
            raise EngineUnavailable(f"The upstream answered /health with {response.status_code}.")

    async def refresh_models(self) -> None:
        response = await self._probe("/v1/models")
        if response.status_code != 200:
            raise upstream_error(response.status_code, response.content, self.model)
        try:
            cards = orjson.loads(response.content).get("data") or []
            self._models = [ModelInfo(c["id"], c.get("max_model_len"), root=c.get("root")) for c in cards]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EngineUnavailable("The upstream's model list is not OpenAI's shape.") from exc

    async def scrape_load(self) -> EngineLoad | None:
        """vLLM's load gauges from /metrics; None when the upstream does not publish them."""
        response = await self._probe("/metrics")
        if response.status_code != 200:
            return None
        return parse_load(response.content, self.model)

    async def _probe(self, path: str) -> httpx.Response:
        try:
            return await self._client.get(path, timeout=httpx.Timeout(self.timeouts.probe_s,
                                                                      connect=self.timeouts.connect_s))
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"The upstream did not answer {path}.") from exc

    async def abort(self, request_id: str) -> None:
        # Closing the response closes its connection, which is how an HTTP upstream learns to stop.
        response = self._open.pop(request_id, None)
        if response is not None:
            await response.aclose()

    # -- generation ---------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        path, payload = request_payload(request, self.model)
        started = time.monotonic()
        response = await self._send(path, payload, request.model)
        self._open[request.request_id] = response
        try:
            reader = _StreamReader(request)
            try:
                async for data in self._read(response, started):
                    for chunk in reader.feed(data):
                        yield chunk
            except EngineUnavailable:
                if not reader.done:  # after [DONE] only the body's end was missing: nothing lost
                    raise
            for chunk in reader.finish():
                yield chunk
        finally:
            self._open.pop(request.request_id, None)
            await response.aclose()

    async def _send(self, path: str, payload: dict[str, Any], public_model: str) -> httpx.Response:
        request = self._client.build_request("POST", path, content=orjson.dumps(payload), headers=_JSON)
        try:
            async with asyncio.timeout(self.timeouts.first_token_s):
                response = await self._client.send(request, stream=True)
                if response.status_code != 200:
                    body = await response.aread()
                    await response.aclose()
                    raise upstream_error(response.status_code, body, public_model)
        except TimeoutError as exc:
            raise EngineUnavailable("The upstream did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        return response

    async def _read(self, response: httpx.Response, started: float) -> AsyncIterator[bytes]:
        """The raw body, cut off when the first bytes or the next bytes are late."""
        pieces = response.aiter_bytes()
        limit = self.timeouts.first_token_s - (time.monotonic() - started)
        while True:
            limit = min(limit, self.timeouts.total_s - (time.monotonic() - started))
            try:
                async with asyncio.timeout(max(limit, 0.0)):
                    data = await anext(pieces, None)
            except TimeoutError as exc:
                raise EngineUnavailable("The upstream stalled; the request was cut off.") from exc
            except (httpx.HTTPError, httpx.StreamError) as exc:
                raise _transport_error(exc) from exc
            if data is None:
                return
            yield data
            limit = self.timeouts.idle_s

    # -- embeddings ---------------------------------------------------------------

    async def embed(self, request_id: str, model: str, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        payload = {"model": self.model, "input": inputs}
        try:
            async with asyncio.timeout(self.timeouts.first_token_s):
                response = await self._client.post("/v1/embeddings", content=orjson.dumps(payload), headers=_JSON)
        except TimeoutError as exc:
            raise EngineUnavailable("The upstream did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if response.status_code != 200:
            raise upstream_error(response.status_code, response.content, model)
        body = orjson.loads(response.content)
        items = sorted(body["data"], key=lambda item: item["index"])
        return [item["embedding"] for item in items], int((body.get("usage") or {}).get("prompt_tokens", 0))


class _StreamReader:
    """SSE bytes in, chunks out. A choice's finish is held back until the usage event, which carries
    the exact token counts, has arrived (it follows at once)."""

    def __init__(self, request: GenerateRequest) -> None:
        self.chat = request.messages is not None
        self.model = request.model
        self.want_logprobs = request.sampling.logprobs is not None
        self.echo = request.sampling.prompt_logprobs is not None
        self.done = False
        self._buffer = b""
        self._tokens: dict[int, int] = {}  # per choice, counted until usage says exactly
        self._finished: dict[int, str] = {}
        self._usage: dict[str, int] | None = None

    def feed(self, data: bytes) -> list[Chunk]:
        if self.done:  # the body's end, read so that the connection goes back to the pool
            return []
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        chunks: list[Chunk] = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                break
            chunks.extend(self._event(orjson.loads(payload)))
        return chunks

    def _event(self, event: dict[str, Any]) -> list[Chunk]:
        if "error" in event:
            raise _event_error(event["error"], self.model)
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
        return [Chunk(index=i, finish_reason=reason, prompt_tokens=prompt_tokens, completion_tokens=counts.get(i, 0))
                for i, reason in sorted(self._finished.items())]


def _logprobs(raw: Any, chat: bool) -> list[TokenLogprob] | None:
    if not raw:
        return None
    if chat:
        return [TokenLogprob(e["token"], e["logprob"], tuple((t["token"], t["logprob"]) for t in e.get("top_logprobs") or ()))
                for e in raw.get("content") or ()]
    tops = raw.get("top_logprobs") or [None] * len(raw.get("tokens") or ())
    return [TokenLogprob(token, logprob if logprob is not None else float("nan"), tuple((top or {}).items()))
            for token, logprob, top in zip(raw.get("tokens") or (), raw.get("token_logprobs") or (), tops)]


def request_payload(request: GenerateRequest, model: str) -> tuple[str, dict[str, Any]]:
    """The upstream path and JSON body for an engine request."""
    s = request.sampling
    optional = {
        "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
        "min_p": s.min_p, "seed": s.seed, "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty, "repetition_penalty": s.repetition_penalty,
        "stop": list(s.stop) or None, "stop_token_ids": list(s.stop_token_ids) or None,
        "include_stop_str_in_output": s.include_stop_str_in_output or None, "ignore_eos": s.ignore_eos or None,
        "min_tokens": s.min_tokens or None,
        "logit_bias": {str(k): v for k, v in s.logit_bias.items()} if s.logit_bias else None,
        "skip_special_tokens": None if s.skip_special_tokens else False,
    }
    body: dict[str, Any] = {"model": model, "n": s.n, "stream": True, "stream_options": {"include_usage": True}}
    body.update({key: value for key, value in optional.items() if value is not None})
    if request.messages is not None:
        body["messages"] = request.messages
        if not request.add_generation_prompt:
            body["add_generation_prompt"] = False
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
    return status_error(status, message, param=param)


def _event_error(detail: Any, public_model: str) -> GatewayError:
    detail = detail if isinstance(detail, dict) else {"message": str(detail)}
    code = detail.get("code")
    status = code if isinstance(code, int) else _CODE_STATUS.get(str(code), 500)
    return upstream_error(status, orjson.dumps({"error": detail}), public_model)


def _transport_error(exc: Exception) -> EngineUnavailable:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return EngineUnavailable("Cannot connect to the upstream instance.")
    return EngineUnavailable("The connection to the upstream instance failed.")


def parse_load(text: bytes, model: str) -> EngineLoad:
    """Sum vLLM's load gauges; only this model's lines when the instance labels them by model."""
    sums = {name: 0.0 for name in _LOAD_GAUGES}
    mine = {name: 0.0 for name in _LOAD_GAUGES}
    labelled = False
    label = f'model_name="{model}"'.encode()
    for line in text.splitlines():
        if not line.startswith(b"vllm:"):
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
    return EngineLoad(*(values[name] for name in _LOAD_GAUGES))
