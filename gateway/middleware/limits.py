"""Caps on what one request may ask for (400), and per-key token buckets for requests and tokens (429).

A request is charged its estimated tokens up front (prompt characters / 4, plus max_tokens × n for
each prompt); when the answer carries `usage`, the bucket is corrected to the real total, and a
failed request is refunded. Every response of a limited key carries OpenAI's x-ratelimit-* headers.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import InvalidRequest, RateLimited
from gateway.middleware.context import Headers, is_service_path, request_info, send_error
from gateway.settings import LimitSettings
from gateway.state import AppState

CHARS_PER_TOKEN = 4  # a rough guess before tokenizing; the answer's usage corrects it
UNKNOWN_OUTPUT_TOKENS = 256  # charged when a request names no max_tokens, until usage corrects it
_MAX_IDENTITIES = 10_000  # buckets kept; the least recently seen go first (a refilled bucket is a new one)
# OpenAI's usage, or Anthropic's (input and output tokens, no total).
_USAGE = re.compile(rb'"total_tokens":\s*(\d+)|"input_tokens":\s*(\d+),\s*"output_tokens":\s*(\d+)')
# Requests that generate nothing, besides embeddings: charged their prompt only.
_PROMPT_ONLY_PATHS = frozenset({"/tokenize", "/detokenize", "/api/v1/token_check", "/v1/messages/count_tokens",
                                "/v1/score", "/score", "/v1/rerank", "/rerank", "/v2/rerank"})
_TAIL_BYTES = 512  # usage is the last field of our answers and of the last SSE event


def _int(value: Any) -> int | None:
    """An integer as pydantic's lax mode reads one: 1e23 counts (orjson even parses huge ints as floats)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Ask:
    """What a body asks for, read leniently: the app validates the types, this only measures."""

    prompt_field: str
    prompt_chars: int
    prompt_ids: int
    prompts: int
    n: int
    stop: int
    max_tokens: tuple[str, int] | None  # (field name, value)


def _text_size(value: Any) -> tuple[int, int, int]:
    """(characters, token ids, prompts) in a prompt, an input or a message's content."""
    if isinstance(value, str):
        return len(value), 0, 1
    if not isinstance(value, list):
        return 0, 0, 0
    if all(_int(item) is not None for item in value):
        return 0, len(value), 1  # one prompt of token ids
    chars = ids = 0
    for item in value:
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, list):
            ids += sum(1 for token in item if _int(token) is not None)
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            chars += len(item["text"])  # a chat content part
        elif isinstance(item, dict):
            chars += _text_size(item.get("content"))[0]  # a Responses input message
    return chars, ids, len(value)


def measure(body: dict[str, Any]) -> Ask:
    if isinstance(body.get("messages"), list):
        field, ids, prompts = "messages", 0, 1
        chars = _text_size(body.get("system"))[0]  # Anthropic's system prompt (text or text blocks)
        for message in body["messages"]:
            chars += _text_size(message.get("content"))[0] if isinstance(message, dict) else 0
    else:  # a prompt, an input, or FastChat's messages as one string
        field = next((name for name in ("messages", "input") if name in body), "prompt")
        chars, ids, prompts = _text_size(body.get(field))
    stop = body.get("stop")
    max_tokens = next(((name, v) for name in ("max_completion_tokens", "max_tokens", "max_output_tokens")
                       if (v := _int(body.get(name))) is not None), None)
    return Ask(field, chars, ids, max(prompts, 1), _int(body.get("n")) or 1,
               len(stop) if isinstance(stop, list) else 0, max_tokens)


def check_caps(ask: Ask, limits: LimitSettings) -> None:
    if ask.max_tokens and limits.max_tokens is not None and ask.max_tokens[1] > limits.max_tokens:
        name = ask.max_tokens[0]
        raise InvalidRequest(f"{name} must be at most {limits.max_tokens} on this server.", param=name)
    if ask.n > limits.max_n:
        raise InvalidRequest(f"n must be at most {limits.max_n} on this server.", param="n")
    if ask.stop > limits.max_stop:
        raise InvalidRequest(f"At most {limits.max_stop} stop sequences are allowed.", param="stop")
    if limits.max_prompt_chars is not None and ask.prompt_chars > limits.max_prompt_chars:
        raise InvalidRequest(f"The {ask.prompt_field} must be at most {limits.max_prompt_chars} characters.",
                             param=ask.prompt_field)


def estimate_tokens(ask: Ask, embedding: bool) -> int:
    prompt = math.ceil(ask.prompt_chars / CHARS_PER_TOKEN) + ask.prompt_ids
    if embedding:
        return prompt
    output = ask.max_tokens[1] if ask.max_tokens else UNKNOWN_OUTPUT_TOKENS
    return prompt + output * ask.n * ask.prompts


class TokenBucket:
    def __init__(self, per_minute: int, now: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.level, self.updated = float(per_minute), now

    def _refill(self, now: float) -> None:
        self.level = min(float(self.per_minute), self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, cost: int, now: float) -> float:
        """Seconds until `cost` can be taken. A cost above the whole bucket waits only for a full one."""
        self._refill(now)
        need = min(cost, self.per_minute)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, cost: int, now: float) -> None:
        self._refill(now)
        self.level -= cost  # may go below zero: a big request makes its key wait longer afterwards

    def refund(self, amount: int, now: float) -> None:
        self._refill(now)
        self.level = min(float(self.per_minute), self.level + amount)

    def headers(self, kind: str, now: float) -> Headers:
        self._refill(now)
        reset_s = (self.per_minute - self.level) / self.rate
        return [(f"x-ratelimit-limit-{kind}".encode(), str(self.per_minute).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, math.floor(self.level))).encode()),
                (f"x-ratelimit-reset-{kind}".encode(), duration(reset_s).encode())]


def duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s" if minutes else f"{rest_text}s"


@dataclass
class Buckets:
    requests: TokenBucket | None
    tokens: TokenBucket | None

    def wait_s(self, cost: int, now: float) -> float:
        waits = [self.requests.wait_s(1, now) if self.requests else 0.0,
                 self.tokens.wait_s(cost, now) if self.tokens else 0.0]
        return max(waits)

    def take(self, cost: int, now: float) -> None:
        if self.requests:
            self.requests.take(1, now)
        if self.tokens:
            self.tokens.take(cost, now)

    def headers(self, now: float) -> Headers:
        pairs = (("requests", self.requests), ("tokens", self.tokens))
        return [h for kind, bucket in pairs if bucket for h in bucket.headers(kind, now)]


class RateLimiter:
    """Buckets per identity: a key's name, or the client's address when no keys are configured."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.defaults = (requests_per_minute, tokens_per_minute)
        self.clock = clock
        self._buckets: OrderedDict[str, Buckets] = OrderedDict()

    def buckets(self, identity: str, own: tuple[int | None, int | None] | None) -> Buckets | None:
        rpm, tpm = self.defaults
        if own is not None:  # the key's own limits, where it has them
            rpm, tpm = (own[0] if own[0] is not None else rpm), (own[1] if own[1] is not None else tpm)
        if rpm is None and tpm is None:
            return None
        found = self._buckets.get(identity)
        now = self.clock()
        if found is None or _per_minute(found.requests) != rpm or _per_minute(found.tokens) != tpm:
            # New, or its key's limits changed in the keys file: start it afresh.
            found = Buckets(TokenBucket(rpm, now) if rpm else None, TokenBucket(tpm, now) if tpm else None)
            self._buckets[identity] = found
        self._buckets.move_to_end(identity)
        while len(self._buckets) > _MAX_IDENTITIES:
            self._buckets.popitem(last=False)
        return found


def _per_minute(bucket: TokenBucket | None) -> int | None:
    return bucket.per_minute if bucket else None


class UsageMeter:
    """Wraps `send`: adds the rate headers to the answer, and reads the usage it reports."""

    def __init__(self, send: Send, headers: Callable[[], Headers]) -> None:
        self._send, self._headers = send, headers
        self.status = 0
        self._tail = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message = {**message, "headers": [*message.get("headers", ()), *self._headers()]}
        elif message["type"] == "http.response.body":
            self._tail = (self._tail + message.get("body", b""))[-_TAIL_BYTES:]
        await self._send(message)

    def used(self, charged: int) -> int:
        """Tokens the request really used: none when it failed, the estimate when the answer did not say."""
        if not self.status or self.status >= 400:
            return 0
        found = _USAGE.findall(self._tail)
        if not found:
            return charged
        total, input_tokens, output_tokens = found[-1]
        return int(total) if total else int(input_tokens) + int(output_tokens)


def _prompt_only(path: str) -> bool:
    """Requests that generate nothing: charged their prompt only."""
    return "embeddings" in path or path in _PROMPT_ONLY_PATHS


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.metrics = state.metrics
        self.limits = state.settings.limits
        self.limiter = RateLimiter(self.limits.requests_per_minute, self.limits.tokens_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_service_path(scope):
            await self.app(scope, receive, send)
            return
        info = request_info(scope)
        client = scope.get("client")
        identity = info.key_name or f"client:{client[0] if client else '-'}"
        buckets = self.limiter.buckets(identity, info.key_limits)
        now = self.limiter.clock()
        ask = measure(info.body) if isinstance(info.body, dict) else None
        if ask is not None:
            try:
                check_caps(ask, self.limits)
            except InvalidRequest as exc:  # refused before it is counted, yet with the key's headers
                await send_error(send, exc, buckets.headers(now) if buckets else ())
                return
        if buckets is None:
            await self.app(scope, receive, send)
            return
        cost = estimate_tokens(ask, embedding=_prompt_only(scope["path"])) if ask else 0
        wait_s = buckets.wait_s(cost, now)
        if wait_s > 0:
            self.metrics.rejected.labels("rate_limit").inc()
            retry = [(b"retry-after", str(math.ceil(wait_s)).encode()),
                     (b"retry-after-ms", str(math.ceil(wait_s * 1000)).encode())]
            await send_error(send, RateLimited("Rate limit reached for this key. Retry after the time "
                                               "in the retry-after header."), retry + buckets.headers(now))
            return
        buckets.take(cost, now)
        meter = UsageMeter(send, lambda: buckets.headers(self.limiter.clock()))
        try:
            await self.app(scope, receive, meter.send)
        finally:
            if buckets.tokens:
                buckets.tokens.refund(cost - meter.used(cost), self.limiter.clock())
