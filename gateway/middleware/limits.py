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
    USAGE_PATH,
    Headers,
    RequestInfo,
    generates_nothing,
    is_service_path,
    request_info,
    send_error,
)
from gateway.protocol.lax import lax_int
from gateway.protocol.paths import PROMPT_ONLY_PATHS, route_group  # besides embeddings: any path with "embeddings"
from gateway.protocol.usage import TAIL_BYTES, Usage, usage_in
from gateway.settings import LimitSettings
from gateway.spend import Spent, spending
from gateway.state import AppState

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # a rough guess before tokenizing; the answer's usage corrects it
UNKNOWN_OUTPUT_TOKENS = 256  # charged when a request names no max_tokens, until usage corrects it
# OpenAI's usage, or Anthropic's (input and output tokens, no total).


def _int(value: Any) -> int | None:
    """A token id: an integer, or a float that is one (orjson even parses huge ints as floats)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Ask:
    """What a body asks for, read as the engine will read it (numbers in pydantic's lax mode: `"8"` is 8)."""

    prompt_field: str
    prompt_chars: int
    prompt_ids: int
    prompts: int
    n: int
    stop: int
    max_tokens: tuple[str, int] | None  # (field name, value)
    stop_field: str = "stop"


# Parts of a message that are not text the model reads as characters (media, references), and labels.
_NOT_TEXT = frozenset(
    {"image_url", "input_audio", "audio_url", "video_url", "source", "file", "file_data", "image_data"}
    | {"type", "role", "id", "tool_call_id", "tool_use_id", "cache_control"}
)


# Content parts whose strings the model reads as text. A part of any other type (an image, audio, a document,
# vLLM's embeds, a part type added later) counts nothing: its tokens are charged from the answer's usage, so no
# part type makes the estimate larger or smaller than the text does.
_TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal", "tool_use", "tool_result"})


def _chars(value: Any) -> int:
    """Characters of text in a message, a content part, a tool call's input or arguments, a tool's schema:
    every string in it but media and labels (the body's shape bounds keep this walk small)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    if isinstance(value, dict):
        return sum(
            _content_chars(item) if key == "content" else _chars(item)
            for key, item in value.items()
            if key not in _NOT_TEXT
        )
    return 0


def _content_chars(content: Any) -> int:
    """A message's content: its text, and the text parts of a list of parts."""
    if not isinstance(content, list):
        return _chars(content)
    return sum(_chars(part) for part in content if not isinstance(part, dict) or _is_text_part(part))


def _is_text_part(part: dict[str, Any]) -> bool:
    kind = part.get("type")
    return kind is None or (isinstance(kind, str) and kind in _TEXT_PARTS)


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
        if isinstance(item, list):
            ids += sum(1 for token in item if _int(token) is not None)
        else:
            chars += _chars(item)  # a prompt, a chat content part, a Responses input item
    return chars, ids, len(value)


def _stop_count(body: dict[str, Any]) -> tuple[str, int]:
    """Stop sequences: OpenAI's `stop` (a string or a list), Anthropic's `stop_sequences`."""
    for name in ("stop_sequences", "stop"):
        value = body.get(name)
        if isinstance(value, list) and value:
            return name, len(value)
    return "stop", 1 if isinstance(body.get("stop"), str) else 0


def measure(body: dict[str, Any]) -> Ask:
    if isinstance(body.get("messages"), list):
        field, ids, prompts = "messages", 0, 1
        chars = _chars(body["messages"])
    else:  # a prompt, an input, or FastChat's messages as one string
        field = next((name for name in ("messages", "input") if name in body), "prompt")
        chars, ids, prompts = _text_size(body.get(field))
    # What the template renders with the prompt: Anthropic's system prompt, Responses' instructions, the tools.
    chars += sum(_chars(body.get(name)) for name in ("system", "instructions", "tools", "functions"))
    max_tokens = next(
        (
            (name, v)
            for name in ("max_completion_tokens", "max_tokens", "max_output_tokens")
            if (v := lax_int(body.get(name))) is not None
        ),
        None,
    )
    stop_field, stops = _stop_count(body)
    return Ask(field, chars, ids, max(prompts, 1), lax_int(body.get("n")) or 1, stops, max_tokens, stop_field)


def check_caps(ask: Ask, limits: LimitSettings) -> None:
    if ask.max_tokens and limits.max_tokens is not None and ask.max_tokens[1] > limits.max_tokens:
        name = ask.max_tokens[0]
        raise InvalidRequest(f"{name} must be at most {limits.max_tokens} on this server.", param=name)
    if ask.n > limits.max_n:
        raise InvalidRequest(f"n must be at most {limits.max_n} on this server.", param="n")
    if ask.stop > limits.max_stop:
        raise InvalidRequest(f"At most {limits.max_stop} stop sequences are allowed.", param=ask.stop_field)
    if limits.max_prompt_chars is not None and ask.prompt_chars > limits.max_prompt_chars:
        raise InvalidRequest(
            f"The {ask.prompt_field} must be at most {limits.max_prompt_chars} characters.", param=ask.prompt_field
        )


def prompt_tokens(ask: Ask) -> int:
    return math.ceil(ask.prompt_chars / CHARS_PER_TOKEN) + ask.prompt_ids


def estimate_tokens(ask: Ask, embedding: bool) -> int:
    prompt = prompt_tokens(ask)
    if embedding:
        return prompt
    output = ask.max_tokens[1] if ask.max_tokens else UNKNOWN_OUTPUT_TOKENS
    return prompt + output * ask.n * ask.prompts


def reservation(ask: Ask, embedding: bool, max_model_len: int | None) -> int:
    """The most a request may use, held against its key's budgets while it runs: its max_tokens where it names
    one, else what the model's context leaves after the prompt (an engine generates up to there)."""
    prompt = prompt_tokens(ask)
    if embedding:
        return prompt
    if ask.max_tokens:
        output = ask.max_tokens[1]
    elif max_model_len:
        output = max(max_model_len - prompt, 1)
    else:
        output = UNKNOWN_OUTPUT_TOKENS
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
    if decision.budget_left > 0:  # some is left, but less than this request may use
        message = (
            f"This key's {adjective} token budget ({budget} tokens) has {decision.budget_left} tokens left, fewer "
            "than this request's prompt and max_tokens may use; ask for fewer max_tokens, or retry once requests "
            f"in flight end or the budget resets at {window.resets_at_text}."
        )
    else:
        message = (
            f"This key's {adjective} token budget ({budget} tokens) is used up; it resets at {window.resets_at_text}."
        )
    return QuotaExceeded(message), _retry_after((window.resets_at - utc_now()).total_seconds())


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

    def used(self, charged: int, spent: Spent, prompt: int) -> int:
        """Tokens the request really used: none when it failed; else the usage its engine or instance reported
        (gateway.spend), else the answer's; else, for an answer that ended early (the client left), the prompt
        and the pieces of output that came; else the estimate."""
        if self.failed:
            return 0
        if spent.reported:
            return spent.prompt_tokens + spent.completion_tokens
        if (usage := self.usage()) is not None:
            return usage.total_tokens
        return prompt + spent.events if spent.events else charged


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
        if not is_service_path(scope) or scope["path"] == USAGE_PATH or route_group(scope["path"]) == "admin":
            await self.app(scope, receive, send)
            return
        info = request_info(scope)
        ask = measure(info.body) if isinstance(info.body, dict) and not generates_nothing(scope["path"]) else None
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
        if decision is not None and decision.reserved is not None:
            charge = replace(charge, reserve=decision.reserved)  # what the budgets hold for it, settled at the end
        meter = UsageMeter(send, rate_headers(charge.limits, decision) if decision else [])
        with spending() as spent:
            try:
                await self.app(scope, receive, meter.send)
            finally:
                if decision is not None:
                    prompt = prompt_tokens(ask) if ask else 0
                    await self._settle(charge, charge.cost - meter.used(charge.cost, spent, prompt))
                if info.key_name is not None:
                    self._count(info, meter)

    def _charge(self, scope: Scope, info: RequestInfo, ask: Ask | None) -> Charge | None:
        """What admit is asked for, or None when nothing limits or accounts for this request."""
        limits = info.key_limits.over(self.defaults) if info.key_limits else self.defaults
        if info.key_name is None and limits.per_minute == (None, None):
            return None
        client = scope.get("client")
        identity = info.key_name or f"client:{client[0] if client else '-'}"
        embedding = _prompt_only(scope["path"])
        cost = estimate_tokens(ask, embedding) if ask else 0
        if info.key_name is None:  # budgets and usage are kept per key only
            limits = replace(limits, tokens_per_day=None, tokens_per_month=None)
        budgeted = limits.tokens_per_day is not None or limits.tokens_per_month is not None
        reserve = reservation(ask, embedding, self._max_model_len(info.model)) if ask and budgeted else None
        fill = bool(ask and not ask.max_tokens and not embedding)  # it may use all that is left: it holds that
        return Charge(identity, limits, cost, windows(utc_now()) if info.key_name else None, reserve, fill)

    def _max_model_len(self, model: str | None) -> int | None:
        try:
            return self.state.model_info(model).max_model_len if model in self.state.adapters else None
        except GatewayError:
            return None

    async def _refuse(self, send: Send, info: RequestInfo, limits: KeyLimits, decision: Decision) -> None:
        reason = "over_budget" if decision.over_budget else "rate_limited"
        self.metrics.rejected.labels(reason).inc()
        if info.key_name is not None:
            self.metrics.key_rejected.labels(info.key_name, reason).inc()
        error, headers = refusal(limits, decision)
        await send_error(send, error, headers)

    async def _settle(self, charge: Charge, refund: int) -> None:
        if refund == 0 and charge.budget_refund(refund) == 0:  # nothing to correct, no second round trip
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
        model = self.state.model_label(info.model)
        self.metrics.key_requests.labels(key, model, str(meter.status or 499)).inc()
        usage = None if meter.failed else meter.usage()
        if usage is not None:
            self.metrics.key_prompt_tokens.labels(key, model).inc(usage.prompt_tokens)
            self.metrics.key_completion_tokens.labels(key, model).inc(usage.completion_tokens)
