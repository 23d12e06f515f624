"""The gateway's own metrics, in a private registry so apps (and tests) never share state.

/metrics shows two families: ours (prefix tokenyard_, checked by promtool) and,
in engine mode, vLLM's own engine metrics under vLLM's names, which vLLM keeps
in prometheus_client's global registry.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_GAP_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tokenyard_requests", "Requests answered, by model, route and HTTP status.",
            ["model", "route", "status"], registry=r,
        )
        self.request_duration = Histogram(
            "tokenyard_request_duration_seconds", "Time from request to the last byte.",
            ["model", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.time_to_first_token = Histogram(
            "tokenyard_time_to_first_token_seconds", "Time from request to the first generated token.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inter_token_latency = Histogram(
            "tokenyard_inter_token_latency_seconds", "Time between streamed chunks.",
            ["model"], buckets=_TOKEN_GAP_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter(
            "tokenyard_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r,
        )
        self.completion_tokens = Counter(
            "tokenyard_completion_tokens", "Completion tokens generated.", ["model"], registry=r,
        )
        self.in_flight = Gauge(
            "tokenyard_requests_in_flight", "Requests being served now.", ["model"], registry=r,
        )
        self.client_disconnects = Counter(
            "tokenyard_client_disconnects", "Requests whose client left before the answer was complete.",
            ["model"], registry=r,
        )

    def render(self, include_engine: bool) -> bytes:
        body = prometheus_client.generate_latest(self.registry)
        if include_engine:
            body += prometheus_client.generate_latest(prometheus_client.REGISTRY)
        return body
