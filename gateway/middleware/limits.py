"""Caps on what one request may ask for (400), per-key token buckets for requests and tokens (429
rate_limit_exceeded), and per-key token budgets per day and month (429 insufficient_quota).

A request is charged its estimated tokens up front (prompt characters / 4, plus max_tokens × n for
each prompt), to its token bucket and its budgets alike; when the answer carries `usage`, the charge is
corrected to the real total, and a failed request is refunded. Every response of a limited key carries
OpenAI's x-ratelimit-* headers. The buckets and budgets live in the limit store (gateway.limit_store).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import EngineUnavailable, GatewayError, InvalidRequest, QuotaExceeded, RateLimited
from gateway.limit_store import (
    Charge,
    Decision,
    KeyLimits,
    StoreUnavailable,
    default_limits,
    floor_level,
    reset_s,
    utc_now,
    windows,
)
from gateway.middleware.context import (
    ADMIN_USAGE_PATH,
    USAGE_PATH,
    Headers,
    RequestInfo,
    is_service_path,
    request_info,
    send_error,
)
from gateway.protocol.paths import PROMPT_ONLY_PATHS  # besides embeddings: any path with "embeddings"
from gateway.settings import LimitSettings
from gateway.state import AppState

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # a rough guess before tokenizing; the answer's usage corrects it
UNKNOWN_OUTPUT_TOKENS = 256  # charged when a request names no max_tokens, until usage corrects it
# OpenAI's usage, or Anthropic's (input and output tokens, no total).
_USAGE = {
    name: re.compile(rb'"' + name.encode() + rb'":\s*(\d+)')
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens")
}
TAIL_BYTES = 512  # usage is the last field of our answers and of the last SSE event


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
    max_tokens = next(
        (
            (name, v)
            for name in ("max_completion_tokens", "max_tokens", "max_output_tokens")
            if (v := _int(body.get(name))) is not None
        ),
        None,
    )
    return Ask(
        field,
        chars,
        ids,
        max(prompts, 1),
        _int(body.get("n")) or 1,
        len(stop) if isinstance(stop, list) else 0,
        max_tokens,
    )


def check_caps(ask: Ask, limits: LimitSettings) -> None:
    if ask.max_tokens and limits.max_tokens is not None and ask.max_tokens[1] > limits.max_tokens:
        name = ask.max_tokens[0]
        raise InvalidRequest(f"{name} must be at most {limits.max_tokens} on this server.", param=name)
    if ask.n > limits.max_n:
        raise InvalidRequest(f"n must be at most {limits.max_n} on this server.", param="n")
    if ask.stop > limits.max_stop:
        raise InvalidRequest(f"At most {limits.max_stop} stop sequences are allowed.", param="stop")
    if limits.max_prompt_chars is not None and ask.prompt_chars > limits.max_prompt_chars:
        raise InvalidRequest(
            f"The {ask.prompt_field} must be at most {limits.max_prompt_chars} characters.", param=ask.prompt_field
        )


def estimate_tokens(ask: Ask, embedding: bool) -> int:
    prompt = math.ceil(ask.prompt_chars / CHARS_PER_TOKEN) + ask.prompt_ids
    if embedding:
        return prompt
    output = ask.max_tokens[1] if ask.max_tokens else UNKNOWN_OUTPUT_TOKENS
    return prompt + output * ask.n * ask.prompts


def duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s" if minutes else f"{rest_text}s"


def rate_headers(limits: KeyLimits, decision: Decision) -> Headers:
    """OpenAI's x-ratelimit-* headers from the buckets' levels that admit saw."""
    found: Headers = []
    for kind, limit, level in (
        ("requests", limits.requests_per_minute, decision.requests_left),
        ("tokens", limits.tokens_per_minute, decision.tokens_left),
    ):
        if limit and level is not None:
            found += [
                (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(floor_level(level)).encode()),
                (f"x-ratelimit-reset-{kind}".encode(), duration(reset_s(limit, level)).encode()),
            ]
    return found


def _retry_after(seconds: float) -> Headers:
    return [
        (b"retry-after", str(math.ceil(seconds)).encode()),
        (b"retry-after-ms", str(math.ceil(seconds * 1000)).encode()),
    ]


def refusal(limits: KeyLimits, decision: Decision) -> tuple[GatewayError, Headers]:
    """The 429 for a refused request, with its headers."""
    window = decision.over_budget
    if window is None:
        return (
            RateLimited("Rate limit reached for this key. Retry after the time in the retry-after header."),
            _retry_after(decision.wait_s) + rate_headers(limits, decision),
        )
    budget = limits.budget(window.period)
    adjective = {"day": "daily", "month": "monthly"}[window.period]
    message = f"This key's {adjective} token budget ({budget} tokens) is used up; it resets at {window.resets_at_text}."
    return QuotaExceeded(message), _retry_after((window.resets_at - utc_now()).total_seconds())


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def usage_in(tail: bytes) -> Usage | None:
    """The last `usage` in an answer's last bytes (TAIL_BYTES): OpenAI's, or Anthropic's; JSON or SSE."""
    found = {name: int(values[-1]) for name, pattern in _USAGE.items() if (values := pattern.findall(tail))}
    if "total_tokens" in found:
        return Usage(found.get("prompt_tokens", 0), found.get("completion_tokens", 0), found["total_tokens"])
    if "input_tokens" in found and "output_tokens" in found:  # Anthropic's: no total
        inputs, outputs = found["input_tokens"], found["output_tokens"]
        return Usage(inputs, outputs, inputs + outputs)
    return None


class UsageMeter:
    """Wraps `send`: adds the rate headers to the answer, and reads the usage it reports."""

    def __init__(self, send: Send, headers: Headers) -> None:
        self._send, self._headers = send, headers
        self.status = 0
        self._tail = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message = {**message, "headers": [*message.get("headers", ()), *self._headers]}
        elif message["type"] == "http.response.body":
            self._tail = (self._tail + message.get("body", b""))[-TAIL_BYTES:]
        await self._send(message)

    @property
    def failed(self) -> bool:
        return not self.status or self.status >= 400

    def usage(self) -> Usage | None:
        """The answer's last `usage`, when it has one."""
        return usage_in(self._tail)

    def used(self, charged: int) -> int:
        """Tokens the request really used: none when it failed, the estimate when the answer did not say."""
        if self.failed:
            return 0
        usage = self.usage()
        return usage.total_tokens if usage else charged


def _prompt_only(path: str) -> bool:
    """Requests that generate nothing: charged their prompt only."""
    return "embeddings" in path or path in PROMPT_ONLY_PATHS


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state, self.metrics, self.store = state, state.metrics, state.limit_store
        self.limits = state.settings.limits
        self.defaults = default_limits(self.limits)
        self._store_down = False  # logged once per outage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_service_path(scope) or scope["path"] in (USAGE_PATH, ADMIN_USAGE_PATH):
            await self.app(scope, receive, send)
            return
        info = request_info(scope)
        ask = measure(info.body) if isinstance(info.body, dict) else None
        charge = self._charge(scope, info, ask)
        if ask is not None:
            try:
                check_caps(ask, self.limits)
            except InvalidRequest as exc:  # refused before it is counted
                await send_error(send, exc)
                return
        if charge is None:
            await self.app(scope, receive, send)
            return
        try:
            decision: Decision | None = await self.store.admit(charge)
            self._store_up()
        except StoreUnavailable as exc:
            decision = None
            if self._store_failed(exc):
                await send_error(
                    send,
                    EngineUnavailable("The rate-limit store is unreachable; retry shortly.", code="limits_unavailable"),
                )
                return
        if decision is not None and not decision.allowed:
            await self._refuse(send, info, charge.limits, decision)
            return
        meter = UsageMeter(send, rate_headers(charge.limits, decision) if decision else [])
        try:
            await self.app(scope, receive, meter.send)
        finally:
            if decision is not None:
                await self._settle(charge, charge.cost - meter.used(charge.cost))
            if info.key_name is not None:
                self._count(info, meter)

    def _charge(self, scope: Scope, info: RequestInfo, ask: Ask | None) -> Charge | None:
        """What admit is asked for, or None when nothing limits or accounts for this request."""
        limits = info.key_limits.over(self.defaults) if info.key_limits else self.defaults
        if info.key_name is None and limits.per_minute == (None, None):
            return None
        client = scope.get("client")
        identity = info.key_name or f"client:{client[0] if client else '-'}"
        cost = estimate_tokens(ask, embedding=_prompt_only(scope["path"])) if ask else 0
        if info.key_name is None:  # budgets and usage are kept per key only
            limits = replace(limits, tokens_per_day=None, tokens_per_month=None)
        return Charge(identity, limits, cost, windows(utc_now()) if info.key_name else None)

    async def _refuse(self, send: Send, info: RequestInfo, limits: KeyLimits, decision: Decision) -> None:
        reason = "over_budget" if decision.over_budget else "rate_limited"
        self.metrics.rejected.labels(reason).inc()
        if info.key_name is not None:
            self.metrics.key_rejected.labels(info.key_name, reason).inc()
        error, headers = refusal(limits, decision)
        await send_error(send, error, headers)

    async def _settle(self, charge: Charge, refund: int) -> None:
        if refund == 0:  # the estimate was right: nothing to correct, no second round trip
            return
        try:
            await self.store.settle(charge, refund)
        except StoreUnavailable as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: StoreUnavailable) -> bool:
        """Count and log (once per outage) a store failure; True when the request must be refused."""
        self.metrics.limit_store_errors.inc()
        if not self._store_down:
            self._store_down = True
            log.warning(
                "limit store unreachable (%s): requests are %s until it is back",
                exc,
                "served without limits" if self.limits.redis_failure == "open" else "refused",
            )
        closed = self.limits.redis_failure == "closed"
        if closed:
            self.metrics.rejected.labels("limit_store").inc()
        return closed

    def _store_up(self) -> None:
        if self._store_down:
            self._store_down = False
            log.warning("limit store reachable again")

    def _count(self, info: RequestInfo, meter: UsageMeter) -> None:
        key = info.key_name or ""
        model = info.model if info.model in self.state.adapters else "unknown"
        self.metrics.key_requests.labels(key, model, str(meter.status or 499)).inc()
        usage = None if meter.failed else meter.usage()
        if usage is not None:
            self.metrics.key_prompt_tokens.labels(key, model).inc(usage.prompt_tokens)
            self.metrics.key_completion_tokens.labels(key, model).inc(usage.completion_tokens)
