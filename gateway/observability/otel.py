"""OpenTelemetry traces of requests; imported only when tracing is on (gateway.observability.tracing).

A request's spans, as a trace viewer draws them:

    POST /v1/chat/completions      server span; its parent is the client's traceparent, when one came
      tokenyard.admission          the wait for a slot under the model's in-flight cap
      tokenyard.route              router mode: the instance the route's policy chose, and why
      tokenyard.attempt            one per try on an instance; the traceparent sent there is this span's,
      tokenyard.attempt              so the instance's own spans (vLLM's llm_request) nest under it
    events on the server span: tokenyard.first_token (the answer's first bytes), tokenyard.stream_end

Engine mode has no route or attempt: vLLM is handed the server span's traceparent (AsyncLLM's
trace_headers). The server span carries OpenTelemetry's GenAI attributes (gen_ai.operation.name,
gen_ai.request.model, gen_ai.usage.input_tokens and output_tokens, gen_ai.response.finish_reasons),
read from the request body and from the answer's bytes as they pass: usage from its tail, finish reasons
from the events. The spans are our own TracerProvider's, never the global one (vLLM sets that one), and
the context is passed explicitly (base.Forwarded.trace), never through OpenTelemetry's current context.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engine_adapters.base import Forwarded
from gateway.errors import GatewayError
from gateway.protocol.paths import OPERATIONS
from gateway.protocol.usage import TAIL_BYTES, usage_fields

_PROPAGATOR = TraceContextTextMapPropagator()
SYSTEM = "vllm"  # gen_ai.provider.name (gen_ai.system before semantic conventions 1.37)
# Sampling fields of the body -> their GenAI attribute.
_REQUEST_FIELDS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "n": "gen_ai.request.choice.count",
}
_FINISH = re.compile(rb'"(?:finish_reason|stop_reason)":\s*"([a-z_]{1,32})"')
_MAX_SPAN_PATH = 64


class Tracing:
    """The app's tracer and its exporter: built once in create_app, flushed in the lifespan's end."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("tokenyard")

    @classmethod
    def from_environment(cls) -> Tracing:
        """Exporter, sampler and resource as the OTEL_* variables say; the service is `tokenyard` unless
        OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) names it."""
        named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "tokenyard"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    def start(self, method: str, path: str, given: Forwarded, request_id: str) -> RequestTrace:
        """The server span of a request; the client's traceparent (already checked) is its parent."""
        carrier = {"traceparent": given.traceparent or "", "tracestate": given.tracestate or ""}
        parent = _PROPAGATOR.extract(carrier) if given.traceparent else None
        name = f"{method} {path}" if len(path) <= _MAX_SPAN_PATH else method
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path[:1024],
                "tokenyard.request_id": request_id,
            },
        )
        return RequestTrace(self.tracer, span)

    async def close(self) -> None:
        """Export what is still buffered (the exporter's HTTP call blocks: off the event loop)."""
        await asyncio.to_thread(self.provider.shutdown)


class RequestTrace:
    """One request's server span and its children."""

    def __init__(self, tracer: Tracer, span: Span) -> None:
        self.tracer, self.server = tracer, span
        self.context = set_span_in_context(span)
        self.started = time.perf_counter()
        self.status = 0
        self.first_token_at: float | None = None
        self.finish_reasons: dict[str, None] = {}  # in the order seen, once each
        self.tail = b""
        self.stream_error = False

    def forwarded(self, given: Forwarded) -> Forwarded:
        """What goes on to the engine: the client's request id and tracestate, this span's traceparent."""
        return _with_span(given, self.server, self)

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, Any]) -> Iterator[Span]:
        """A child of the server span around a stage of the request; a failure in it is recorded."""
        span = self.tracer.start_span(name, context=self.context, attributes=attributes)
        try:
            yield span
        except Exception as exc:
            _failed(span, exc)
            raise
        finally:
            span.end()

    @contextlib.contextmanager
    def attempt(self, given: Forwarded, instance: str, number: int, retry_of: str | None) -> Iterator[Forwarded]:
        """One try on an instance, as a client span; yields what to send there (this span's traceparent)."""
        attributes: dict[str, Any] = {"tokenyard.instance": instance, "tokenyard.attempt": number}
        if retry_of is not None:
            attributes["tokenyard.retry_reason"] = retry_of
        span = self.tracer.start_span(
            "tokenyard.attempt", context=self.context, kind=SpanKind.CLIENT, attributes=attributes
        )
        try:
            yield _with_span(given, span, self)
            span.set_attribute("http.response.status_code", 200)
        except (GeneratorExit, asyncio.CancelledError):
            span.set_attribute("tokenyard.attempt.cancelled", True)  # the client left: no verdict on the instance
            raise
        except Exception as exc:
            _failed(span, exc)
            raise
        finally:
            span.end()

    # -- the answer, as it passes ---------------------------------------------------

    def watch(self, body: bytes) -> None:
        """Bytes of the answer on their way to the client: the first token, finish reasons, usage at the end."""
        if not body:
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self.server.add_event(
                "tokenyard.first_token",
                {"tokenyard.time_to_first_token_s": round(self.first_token_at - self.started, 6)},
            )
        if b"_reason" in body:
            self.finish_reasons.update(dict.fromkeys(m.decode() for m in _FINISH.findall(body)))
        if b'{"error"' in body:
            self.stream_error = True
        self.tail = (self.tail + body)[-TAIL_BYTES:]

    def fail(self, exc: BaseException) -> None:
        """The request itself failed (not an answer with an error status): recorded on the server span."""
        self.status = self.status or 500
        _failed(self.server, exc)

    def finish(self, model: str | None, body: Any, path: str) -> None:
        """End the server span, with what the request and its answer said."""
        span = self.server
        attributes: dict[str, Any] = {"http.response.status_code": self.status}
        if model is not None:
            attributes["gen_ai.request.model"] = model[:256]
        if (operation := OPERATIONS.get(path)) is not None:
            attributes.update(
                {
                    "gen_ai.operation.name": operation,
                    "gen_ai.provider.name": SYSTEM,
                    "gen_ai.system": SYSTEM,
                    **_request_attributes(body),
                }
            )
        if self.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = list(self.finish_reasons)
        attributes.update(_usage(self.tail))
        span.set_attributes(attributes)
        if self.first_token_at is not None:
            span.add_event("tokenyard.stream_end")
        if self.status >= 500 or self.stream_error:
            span.set_status(StatusCode.ERROR)
            span.set_attribute("error.type", str(self.status) if self.status >= 500 else "stream_error")
        span.end()


def _with_span(given: Forwarded, span: Span, trace: RequestTrace) -> Forwarded:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
    tracestate = carrier.get("tracestate") or given.tracestate
    return dataclasses.replace(given, traceparent=carrier.get("traceparent"), tracestate=tracestate, trace=trace)


def _failed(span: Span, exc: BaseException) -> None:
    if isinstance(exc, GatewayError):
        span.set_attributes(
            {
                "http.response.status_code": exc.status,
                "error.type": exc.code or type(exc).__name__,
                "tokenyard.retryable": exc.retryable,
            }
        )
        span.set_status(StatusCode.ERROR, exc.message)
    else:
        span.set_attribute("error.type", type(exc).__qualname__)
        span.set_status(StatusCode.ERROR)


def _request_attributes(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        return {}
    return {
        attribute: value
        for field, attribute in _REQUEST_FIELDS.items()
        if isinstance(value := body.get(field), int | float) and not isinstance(value, bool)
    }


def _usage(tail: bytes) -> dict[str, int]:
    found = usage_fields(tail)
    inputs = found.get("prompt_tokens", found.get("input_tokens"))
    outputs = found.get("completion_tokens", found.get("output_tokens"))
    usage = {}
    if inputs is not None:
        usage["gen_ai.usage.input_tokens"] = inputs
    if outputs is not None:
        usage["gen_ai.usage.output_tokens"] = outputs
    return usage
