"""Any OpenAI-compatible server over HTTP: JSON out, SSE in, engine-neutral chunks (or the bytes) out.

The upstream can be tokenyard in engine mode, `vllm serve`, or any OpenAI-compatible endpoint; its URL
is the server root (where /health and /metrics live). Generation always streams from the upstream, so
the first chunk is known the moment it exists. Upstream failures become the gateway's error classes;
the retryable ones (EngineUnavailable, RateLimited) are raised before the first chunk, or later only
when the stream breaks, which a router must then not retry for a streamed request.

What the JSON and SSE mean is in engine_adapters.openai_wire; this module does the I/O.
Two clients: generation and the tokenizer routes go over engine_adapters.h1, a small keep-alive HTTP/1.1
client on httptools, because the relay's CPU per request is the router's cost (httpx took 3.2-4.1 ms per
streamed request, aiohttp about a third of the whole router's; README, Performance); the control plane
(probes, model lists, embeddings) stays on httpx, the project's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from engine_adapters.base import (
    NOTHING_FORWARDED,
    Chunk,
    Forwarded,
    GenerateRequest,
    Load,
    ModelInfo,
    RawBody,
    RawHead,
    RouteRequest,
)
from engine_adapters.errors import EngineUnavailable, GatewayError, UnexpectedAnswer
from engine_adapters.h1 import ConnectFailed, Connection, Pool, header_lines
from engine_adapters.openai_wire import (
    DONE,
    DONE_EVENT,
    ERROR_EVENT,
    MAX_EVENT_BYTES,
    ChunkReader,
    EngineLoad,
    ModelRename,
    answered_whole,
    event_error,
    parse_load,
    public_model_answer,
    request_payload,
    upstream_error,
)
from engine_adapters.polling import poll_until
from engine_adapters.splice import Sink, Splice

log = logging.getLogger(__name__)

_JSON = {"content-type": "application/json"}
# Answers that say "try another instance": raised before anything is passed on, so the router can retry.
_TRY_ELSEWHERE = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class HttpTimeouts:
    connect_s: float = 2.0
    first_token_s: float = 60.0  # from sending the request to the first chunk
    idle_s: float = 30.0  # between two reads once the stream is flowing
    total_s: float = 600.0  # the whole upstream request, so no proxied request lives forever
    probe_s: float = 2.0  # /health, /metrics, /v1/models


class OpenAIHttpAdapter:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        timeouts: HttpTimeouts | None = None,
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
        lora_names: frozenset[str] = frozenset(),
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_event_bytes = max_event_bytes  # one SSE event's bound (_Events)
        self.model = model  # the name the upstream serves, which may differ from the public one
        self.lora_names = lora_names  # LoRA adapters: sent upstream under their own name
        self.timeouts = timeouts or HttpTimeouts()
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # One pooled client per instance: connections are reused across requests.
        self._client = client or httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(self.timeouts.total_s, connect=self.timeouts.connect_s),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=128),
        )
        self._pool = Pool(self.base_url, headers, connect_s=self.timeouts.connect_s)  # generation's connections
        self._open: dict[str, Connection] = {}  # request id -> upstream response being read
        self._models: list[ModelInfo] = []
        self._models_asked = 0  # refreshes started; the list kept is from the latest one started
        self._models_from = 0

    # -- lifecycle and status ----------------------------------------------------

    async def start(self) -> None:
        try:
            await self.refresh_models()
        except GatewayError:
            log.warning("%s did not list its models at start", self.base_url)

    async def close(self, drain_deadline_s: float = 0.0) -> None:
        deadline = time.monotonic() + drain_deadline_s
        await poll_until(lambda: not self._open, lambda: deadline)
        for request_id in list(self._open):
            await self.abort(request_id)
        await self._client.aclose()
        self._pool.close()

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
        """Ask the instance what it serves. Refreshes may overlap (a health check's, and one right after
        a LoRA load); an answer to an older request never replaces a newer one's."""
        self._models_asked += 1
        asked = self._models_asked
        response = await self._probe("/v1/models")
        if response.status_code != 200:
            raise upstream_error(response.status_code, response.content, self.model)
        try:
            cards = orjson.loads(response.content).get("data") or []
            models = [
                ModelInfo(c["id"], c.get("max_model_len"), root=c.get("root"), parent=c.get("parent")) for c in cards
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EngineUnavailable("The upstream's model list is not OpenAI's shape.") from exc
        if asked > self._models_from:
            self._models, self._models_from = models, asked

    async def scrape_load(self) -> EngineLoad | None:
        """vLLM's load gauges from /metrics; None when the upstream does not publish them."""
        response = await self._probe("/metrics")
        if response.status_code != 200:
            return None
        return parse_load(response.content, self.model)

    async def _probe(self, path: str) -> httpx.Response:
        try:
            return await self._client.get(
                path, timeout=httpx.Timeout(self.timeouts.probe_s, connect=self.timeouts.connect_s)
            )
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"The upstream did not answer {path}.") from exc

    async def abort(self, request_id: str) -> None:
        # Closing the response closes its connection, which is how an HTTP upstream learns to stop.
        conn = self._open.pop(request_id, None)
        if conn is not None:
            conn.close()

    # -- generation ---------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        path, payload = request_payload(request, self.upstream_name(request.model))
        reader = ChunkReader(request)
        raw_stream = self.stream_raw(path, payload, request.request_id, request.model, forwarded=request.forwarded)
        async with contextlib.aclosing(raw_stream) as raw:
            async for data in raw:
                for chunk in reader.feed(data):
                    yield chunk
        for chunk in reader.finish():
            yield chunk

    def relay(
        self, request: RouteRequest, path: str, body: dict[str, Any], sink: Sink | None = None
    ) -> AsyncIterator[bytes]:
        """Pass an OpenAI-shaped request through as it is (base.Relay; under the upstream's model name,
        streamed, with usage); answer its SSE body in complete events, each `"model"` renamed back to the public
        name. With a `sink`, the events after the first go to it from the socket's callback where they can
        (engine_adapters.splice walks the whole path)."""
        public_model, forwarded = request.model, request.forwarded
        model = self.upstream_name(public_model)
        rename = ModelRename.between(model, public_model)
        if answered_whole(body):
            return self._whole(path, {**body, "model": model}, request.request_id, public_model, rename, forwarded)
        payload = {
            **body,
            "model": model,
            "stream": True,
            "stream_options": {**(body.get("stream_options") or {}), "include_usage": True},
        }
        return self.stream_raw(path, payload, request.request_id, public_model, rename, sink, forwarded)

    async def _whole(
        self,
        path: str,
        payload: dict[str, Any],
        request_id: str,
        public_model: str,
        rename: ModelRename | None,
        forwarded: Forwarded,
    ) -> AsyncGenerator[bytes, None]:
        """A non-streamed request sent as it is (openai_wire.answered_whole): the upstream's JSON answer, as
        one piece. Nothing comes before the answer is complete, so only the total time limit applies."""
        answer = await self._answer(path, payload, public_model, request_id, whole=True, forwarded=forwarded)
        yield rename(answer) if rename is not None else answer

    async def stream_raw(
        self,
        path: str,
        payload: dict[str, Any],
        request_id: str,
        public_model: str,
        rename: ModelRename | None = None,
        sink: Sink | None = None,
        forwarded: Forwarded = NOTHING_FORWARDED,
    ) -> AsyncGenerator[bytes, None]:
        """POST `payload` and yield the SSE body cut at event boundaries. A failure raises: before the
        first bytes as the upstream's answer says; after them as EngineUnavailable (the stream broke or
        stalled) or as the error event the upstream sent."""
        conn, watchdog = await self._post(path, orjson.dumps(payload), public_model, forwarded=forwarded)
        if not (conn.content_type or b"").startswith(b"text/event-stream"):
            watchdog.cancel()
            conn.close()
            kind = (conn.content_type or b"no content type").decode("latin-1")[:100]
            raise UnexpectedAnswer(f"The upstream answered a streamed request with {kind}, not an event stream.")
        self._open[request_id] = conn
        events = _Events(public_model, rename, self.max_event_bytes)
        splice = Splice(conn, events, watchdog.touch, sink) if sink is not None else None
        yielded = ended = False
        try:
            while True:
                # Only while waiting here: a piece yielded is still on its way to the client.
                conn.on_data = splice.take if splice is not None and yielded else None
                try:
                    data = await conn.read()
                except (TimeoutError, OSError) as exc:
                    if events.done:  # after [DONE] only the body's end was missing: nothing lost
                        break
                    raise _stream_error(exc) from exc
                conn.on_data = None
                if not data:
                    ended = True
                    break
                watchdog.touch()
                if complete := events.feed(data):
                    yielded = True
                    yield complete
                if events.error is not None:
                    raise events.error
            events.finish()
        finally:
            conn.on_data = None
            watchdog.cancel()
            self._open.pop(request_id, None)
            # Read to the end, the connection goes back to the pool; left early, it is closed (an abort).
            self._pool.release(conn) if ended else conn.close()

    async def forward(self, request: RouteRequest, path: str, body: dict[str, Any]) -> bytes:
        """POST a JSON request that generates nothing (the tokenizer routes) under the upstream's model name;
        the upstream's JSON answer, as bytes."""
        model = request.model
        return await self._answer(
            path, {**body, "model": self.upstream_name(model)}, model, forwarded=request.forwarded
        )

    def upstream_name(self, public_model: str) -> str:
        """The model name the upstream serves for a public one: a LoRA adapter keeps its own."""
        return public_model if public_model in self.lora_names else self.model

    # -- LoRA adapters (vLLM's runtime routes) -----------------------------------

    async def load_lora(self, name: str, path: str) -> None:
        await self._control("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, name)

    async def unload_lora(self, name: str) -> None:
        await self._control("/v1/unload_lora_adapter", {"lora_name": name}, name)

    async def _control(self, path: str, payload: dict[str, Any], public_model: str) -> None:
        try:
            response = await self._client.post(
                path, content=orjson.dumps(payload), headers=_JSON, timeout=self.timeouts.first_token_s
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if response.status_code != 200:
            raise upstream_error(response.status_code, response.content, public_model)

    async def _answer(
        self,
        path: str,
        payload: dict[str, Any],
        public_model: str,
        request_id: str | None = None,
        whole: bool = False,
        forwarded: Forwarded = NOTHING_FORWARDED,
    ) -> bytes:
        """POST `payload` and read the upstream's one JSON answer (abortable by `request_id` when given)."""
        conn, watchdog = await self._post(path, orjson.dumps(payload), public_model, whole, forwarded)
        if request_id is not None:
            self._open[request_id] = conn
        watchdog.touch()  # the answer's whole body within the idle limit, once its head is in
        try:
            return await conn.read_all()
        except (TimeoutError, OSError) as exc:
            raise _stream_error(exc) from exc
        finally:
            watchdog.cancel()
            if request_id is not None:
                self._open.pop(request_id, None)
            self._pool.release(conn)  # kept when read to its end; closed otherwise (an abort, a failure)

    async def _post(
        self,
        path: str,
        payload: bytes,
        public_model: str,
        whole: bool = False,
        forwarded: Forwarded = NOTHING_FORWARDED,
    ) -> tuple[Connection, _Watchdog]:
        """The connection with the upstream's 200 answer, and the timer that now watches it (until the head
        comes: the first-token limit, or for a `whole` answer only the total limit). `forwarded`: the request
        id and trace context sent along (base.Forwarded)."""
        watchdog = _Watchdog(self.timeouts, first_s=self.timeouts.total_s if whole else None)
        with _sending(watchdog):
            conn = await self._pool.post(path, payload, watchdog.watch, header_lines(forwarded.headers()))
            if conn.status != 200:
                try:
                    body = await conn.read_all()
                finally:
                    self._pool.release(conn)
                raise upstream_error(conn.status, body, public_model)
        return conn, watchdog

    async def relay_raw(self, request: RouteRequest, path: str, body: RawBody) -> AsyncGenerator[RawHead | bytes, None]:
        """Pass a request through as it came (base.RawRelay), under the upstream's model name: the answer's
        head, then its body's bytes as they come, whatever its status, except one that says to try another
        instance (_TRY_ELSEWHERE), which raises. Until the head comes, the first-token limit applies to a JSON
        request's answer asked for as a stream, the total limit to a whole one and to an upload's."""
        public_model, request_id = request.model, request.request_id
        upstream_model = self.upstream_name(public_model)  # a LoRA adapter keeps its own name
        head, length = _renamed(body, upstream_model, public_model)
        extra = header_lines(request.forwarded.headers())  # the request id and trace context; no header of the client's
        json = body.content_type == b"application/json"  # else an upload: its own connection, never kept
        # An upload's wait for the head includes the client's sending it: only the total limit fits that.
        watchdog = _Watchdog(self.timeouts, first_s=None if body.streams and json else self.timeouts.total_s)

        def sent(conn: Connection) -> None:
            body.consumed = body.rest is not None  # from here on, the client's upload is being read
            watchdog.watch(conn)

        with _sending(watchdog):
            if json:
                conn = await self._pool.post(path, head, sent, extra)
            else:
                conn = await self._pool.stream(path, body.content_type, head, body.rest, length, sent, extra)
        self._open[request_id] = conn
        ended = False
        try:
            if conn.status in _TRY_ELSEWHERE:
                raise upstream_error(conn.status, await conn.read_all(), public_model)
            content_type = conn.content_type or b"application/octet-stream"
            yield RawHead(conn.status, content_type)
            watchdog.touch()

            async def reads() -> AsyncIterator[bytes]:
                while data := await conn.read():
                    watchdog.touch()
                    yield data

            rename = ModelRename.between(upstream_model, public_model)
            async for data in public_model_answer(reads(), content_type, rename, self.max_event_bytes):
                yield data
            ended = True
        except (TimeoutError, OSError) as exc:
            raise _stream_error(exc) from exc
        finally:
            watchdog.cancel()
            self._open.pop(request_id, None)
            # A streamed upload's connection is not kept: the upstream may have answered before reading it all.
            self._pool.release(conn) if ended and json else conn.close()

    # -- embeddings ---------------------------------------------------------------

    async def embed(
        self, request_id: str, model: str, inputs: list[str] | list[list[int]], forwarded: Forwarded = NOTHING_FORWARDED
    ) -> tuple[list[list[float]], int]:
        payload = {"model": self.model, "input": inputs}
        try:
            async with asyncio.timeout(self.timeouts.first_token_s):
                response = await self._client.post(
                    "/v1/embeddings", content=orjson.dumps(payload), headers={**_JSON, **forwarded.headers()}
                )
        except TimeoutError as exc:
            raise EngineUnavailable("The upstream did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if response.status_code != 200:
            raise upstream_error(response.status_code, response.content, model)
        body = orjson.loads(response.content)
        items = sorted(body["data"], key=lambda item: item["index"])
        return [item["embedding"] for item in items], int((body.get("usage") or {}).get("prompt_tokens", 0))


class _Watchdog:
    """A request's time limits (to the first bytes, between reads, in all), checked lazily: one timer per
    request that re-arms itself when it finds the stream moved, rather than a timeout around every read.
    The clock starts when the request is sent; when a limit passes, the pending read fails with TimeoutError."""

    def __init__(self, timeouts: HttpTimeouts, first_s: float | None = None) -> None:
        self.timeouts, self.idle_s = timeouts, timeouts.idle_s
        self.first_s = timeouts.first_token_s if first_s is None else first_s
        self.conn: Connection | None = None
        self.handle: asyncio.TimerHandle | None = None

    def watch(self, conn: Connection) -> None:
        """The connection the request went out on (a second one when a kept one had gone stale)."""
        self.conn = conn
        if self.handle is None:
            self.loop = conn.loop
            self.last = self.loop.time()
            self.end_at, self.limit = self.last + self.timeouts.total_s, self.first_s
            self.handle = self.loop.call_at(self._due(), self._check)

    def touch(self) -> None:
        self.last, self.limit = self.loop.time(), self.idle_s

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def _due(self) -> float:
        return min(self.last + self.limit, self.end_at)

    def _check(self) -> None:
        if self.loop.time() >= self._due():
            assert self.conn is not None
            self.conn.fail(TimeoutError())
        else:
            self.handle = self.loop.call_at(self._due(), self._check)


class _Events:
    """Cuts an SSE body at event boundaries, so that what is passed on or parsed is complete events;
    notices [DONE], and turns an error event into the gateway's error (after passing on what came first).
    Each read's bytes are scanned once: an unended event's pieces wait in a list, and an event that grows past
    `max_event_bytes` ends the stream (an instance's failure), so no upstream can make the router buffer or
    re-scan without bound."""

    def __init__(self, public_model: str, rename: ModelRename | None, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.public_model, self.rename = public_model, rename
        self.max_event_bytes = max_event_bytes
        self.done = False
        self.error: GatewayError | None = None
        self._rest: list[bytes] = []  # the unended event's pieces so far
        self._rest_size = 0

    def feed(self, data: bytes) -> bytes:
        if (at := data.rfind(b"\n\n")) != -1:
            end = at + 2
        elif data[:1] == b"\n" and self._rest and self._rest[-1].endswith(b"\n"):
            end = 1  # the blank line lies across the two reads
        else:
            self._rest.append(data)
            self._rest_size += len(data)
            if self._rest_size > self.max_event_bytes:
                raise EngineUnavailable(
                    f"The upstream sent an event longer than {self.max_event_bytes} bytes (router.max_event_bytes)."
                )
            return b""
        complete = b"".join([*self._rest, data[:end]]) if self._rest else data[:end]
        tail = data[end:]
        self._rest, self._rest_size = ([tail], len(tail)) if tail else ([], 0)
        # Each search behind the `in` of a literal that every spelling holds: most pieces hold neither.
        if b'"error"' in complete and (error := ERROR_EVENT.search(complete)) is not None:
            complete = self._cut_error(complete, error.start())
        if b"[DONE]" in complete and (done := DONE_EVENT.search(complete)) is not None:
            self.done = True
            complete = complete[: done.start()] + DONE  # in the one spelling that the relay looks for
        if self.rename is not None:
            complete = self.rename(complete)
        return complete

    def _cut_error(self, complete: bytes, at: int) -> bytes:
        event = complete[at:].split(b"\n\n", 1)[0]
        try:
            detail = orjson.loads(event[5:]).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            detail = None
        self.error = event_error(detail, self.public_model)
        return complete[:at]

    def finish(self) -> None:
        if not self.done:
            raise EngineUnavailable("The upstream ended the stream before it finished.")


def _renamed(body: RawBody, upstream: str, public: str) -> tuple[bytes, int | None]:
    """The body's head, and its whole length, with the public model name replaced by the upstream's."""
    if upstream == public:
        return body.head, body.length
    if body.json is not None:
        head = orjson.dumps({**body.json, "model": upstream})
        return head, len(head)
    if body.model_span is None:
        return body.head, body.length
    start, end = body.model_span
    head = body.head[:start] + upstream.encode() + body.head[end:]
    return head, None if body.length is None else body.length + len(head) - len(body.head)


@contextlib.contextmanager
def _sending(watchdog: _Watchdog) -> Iterator[None]:
    """Until the upstream's answer head is in: any failure stops the request's timer, and a timeout or a
    socket error becomes EngineUnavailable (the one place these are translated for a sent request)."""
    try:
        yield
    except BaseException as exc:
        watchdog.cancel()
        if isinstance(exc, TimeoutError):
            raise EngineUnavailable("The upstream did not answer in time.") from exc
        if isinstance(exc, OSError):
            raise _transport_error(exc) from exc
        raise


def _transport_error(exc: Exception) -> EngineUnavailable:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, ConnectFailed)):
        return EngineUnavailable("Cannot connect to the upstream instance.")
    return EngineUnavailable("The connection to the upstream instance failed.")


def _stream_error(exc: Exception) -> EngineUnavailable:
    if isinstance(exc, TimeoutError):
        return EngineUnavailable("The upstream stalled; the request was cut off.")
    return _transport_error(exc)
