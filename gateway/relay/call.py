"""Stages 4 (choose and relay) and 6 (meter) of the front door (gateway.relay): one request, relayed.

The instance (tokenyard in engine mode, `vllm serve`) does the work, so every field it knows works
through the router (tools, response_format, echo, ...). The router chooses the instance, retries before
anything has reached the client, and reads only what accounting needs: the usage event at the end,
which it asks for and drops again when the client did not. A whole answer (stream false) is streamed
from the instance too, so that a stall is noticed at the idle timeout, and folded into one body here,
except what instances give only whole (openai_wire.answered_whole): that answer is passed on as it came.
"""

from __future__ import annotations

from typing import Any

import orjson

from engine_adapters.base import NOTHING_FORWARDED, Forwarded, Relay, RouteRequest
from engine_adapters.openai_wire import answered_whole, holds_usage
from engine_adapters.splice import CountingSink, Sink
from gateway.relay.read import Routed, prompt_messages, prompt_start
from gateway.services.metering import MeteredStream
from gateway.services.wire import new_id
from gateway.state import AppState


def routing_request(
    body: dict[str, Any], read: Routed, session_id: str | None, forwarded: Forwarded = NOTHING_FORWARDED
) -> RouteRequest:
    """What the route's policy looks at: the prompt's start, the session key, whether it streams; and
    what goes on to the instance besides the body (the request id, the trace context)."""
    messages = prompt_messages(body)
    prompt = None if messages is not None else prompt_start(body)
    user = body.get("user")
    session = session_id or (user if isinstance(user, str) else None)
    return RouteRequest(new_id("relay"), read.model, prompt, messages, session, read.stream, forwarded)


class RelayCall:
    """One client request, relayed: metered like any engine request, usage read from the last event.
    Given the client's socket (`to_client`, a streamed answer on uvicorn with the splice on), the events
    between the first and the last may go there from the instance's socket (engine_adapters.splice)."""

    def __init__(
        self,
        state: AppState,
        adapter: Relay,
        read: Routed,
        body: dict[str, Any],
        session_id: str | None,
        path: str,
        to_client: Sink | None = None,
        forwarded: Forwarded = NOTHING_FORWARDED,
    ) -> None:
        self.read, self.path = read, path
        self.request = routing_request(body, read, session_id, forwarded)
        self.trace = forwarded.trace  # while tracing is on: it sees the events this Sink passes on
        self.metered = MeteredStream(state, adapter, self.request, path)  # type: ignore[arg-type]  # a RoutedAdapter is an EngineAdapter by shape (structural)
        # The splice's sink: each event written there counts for the metrics, as the yielded ones do. It is
        # given no usage event (engine_adapters.splice), so what it writes needs no pass_on.
        sink = CountingSink(to_client, self._written) if to_client is not None and read.stream else None
        self.whole = answered_whole(body)  # the instance answers whole, and that answer is passed on as it is
        self.source = self.metered.pieces(adapter.relay(self.request, path, body, sink))
        self.want_usage = read.wants_usage
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
