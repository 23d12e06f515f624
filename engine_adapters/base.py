"""The seam between the gateway and whatever runs the model.

An adapter starts and closes, lists its models, generates engine-neutral
chunks for a request id the gateway chooses, aborts by that id, raises when it
is unhealthy and reports its load without I/O. Optional abilities (embeddings)
are separate protocols. Nothing here imports vLLM, FastAPI or httpx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from engine_adapters.splice import Sink


@dataclass(frozen=True)
class ModelInfo:
    name: str
    max_model_len: int | None
    kind: str = "generate"  # "generate" or "embed"
    root: str | None = None
    parent: str | None = None  # a LoRA adapter: the base model it runs on
    kv_events: tuple[str, str | None] | None = None  # where its engine publishes KV events: (endpoint, replay)
    # What the model takes as input ("text", "image", "audio", "video"); None where unknown (a route: its
    # instances decide, and a router passes every part on).
    input_modalities: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Forwarded:
    """What an engine is told about the client's request besides the request itself: the request id the
    gateway logged and the W3C trace context (traceparent, tracestate), so that its logs and spans join the
    gateway's; and the scheduling priority the gateway's admission gave it (lower runs sooner).
    Never a credential: no header of the client's is passed on but these, checked.
    `trace` is the request's live trace while tracing is on (gateway.observability.otel), else None."""

    request_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    priority: int = 0  # from x-priority or the body's `priority` (gateway.middleware.admission)
    # The client's own read timeout (x-stainless-read-timeout, sent by the openai and anthropic SDKs): a
    # router holds the request no longer, so the client gets its 503 rather than its own timeout. Not sent on.
    read_timeout_s: float | None = None
    trace: Any = field(default=None, compare=False, repr=False)  # a gateway.observability.otel.RequestTrace

    def headers(self) -> dict[str, str]:
        """The HTTP headers that carry these to an instance."""
        pairs = (("x-request-id", self.request_id), ("traceparent", self.traceparent), ("tracestate", self.tracestate))
        return {name: value for name, value in pairs if value}

    def trace_headers(self) -> dict[str, str] | None:
        """What vLLM's AsyncLLM continues its own trace from (its `trace_headers`); None without a traceparent."""
        if not self.traceparent:
            return None
        return {"traceparent": self.traceparent, **({"tracestate": self.tracestate} if self.tracestate else {})}


NOTHING_FORWARDED = Forwarded()


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the shape of the output, for engines that can decode under one.

    kind is "json" (spec: a JSON schema, dict), "json_object" (spec: None, any JSON object),
    "regex" (spec: the pattern), "choice" (spec: a tuple of the allowed strings) or
    "grammar" (spec: an EBNF/Lark grammar text).
    """

    kind: Literal["json", "json_object", "regex", "choice", "grammar"]
    spec: Any = None


@dataclass(frozen=True)
class SamplingOptions:
    """Engine-neutral sampling; None means the engine's default."""

    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None  # top-k alternatives per sampled token; 0 = the sampled token only
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    tokens_as_ids: bool = False  # logprob tokens written "token_id:123" (vLLM's return_tokens_as_token_ids)
    beam_search: bool = False  # n is the beam width; the n best beams are the choices
    length_penalty: float = 1.0  # beam search: the score is the cumulative logprob / length ** length_penalty
    structured: StructuredOutput | None = None  # constrained decoding (response_format, forced tool calls)


@dataclass
class GenerateRequest:
    request_id: str
    model: str
    sampling: SamplingOptions
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None  # chat: the adapter applies the template
    # chat: OpenAI-shaped tool definitions, for the template to show the model (the gateway parses the calls).
    tools: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    # chat: end the prompt inside the last message (no closing turn), so the model continues it.
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None  # chat: extra variables the template can read
    add_special_tokens: bool | None = None  # None: the chat template writes them, a text prompt gets them
    # Router mode: session affinity key (the x-session-id header, else the `user` field).
    routing_key: str | None = None
    # False when the caller sends nothing to the client until the output is complete, so a
    # router may retry a failure at any point rather than only before the first chunk.
    stream: bool = True
    forwarded: Forwarded = NOTHING_FORWARDED  # the request id, trace context and priority passed on to the engine

    @property
    def priority(self) -> int:
        """vLLM's scheduling priority (lower runs sooner), as the gateway's admission gave it."""
        return self.forwarded.priority

    def routed(self) -> RouteRequest:
        """The request as a route sees it."""
        return RouteRequest(
            self.request_id, self.model, self.prompt, self.messages, self.routing_key, self.stream, self.forwarded
        )


@dataclass(frozen=True)
class RouteRequest:
    """A request as a router sees it: what its policy places it by (the prompt's start, the session key),
    whether anything reaches the client before the answer is complete (`stream`: a failure after that is
    not retried), and what goes on to the instance besides the body. Generation, the bytes passed through
    (Relay, RawRelay) and the tokenizer's JSON routes all reach a route as one of these."""

    request_id: str
    model: str
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    routing_key: str | None = None  # the session affinity key (the x-session-id header, else the `user` field)
    stream: bool = True
    forwarded: Forwarded = NOTHING_FORWARDED  # the request id, trace context and priority passed on


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class RankedLogprob:
    logprob: float
    rank: int | None
    decoded_token: str | None


@dataclass
class Chunk:
    """What one engine step adds to one choice."""

    index: int
    text: str = ""
    token_ids: Sequence[int] = ()
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_sequence: str | None = None  # the stop string that ended the choice, when one did
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative for this choice
    # Only on a choice's first chunk, and only when asked for:
    prompt_text: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # The same, as vLLM returns them: per prompt position (the first has none), token id -> logprob.
    prompt_logprobs_by_id: list[dict[int, RankedLogprob] | None] | None = None


@dataclass(frozen=True)
class Load:
    in_flight: int = 0
    waiting: int = 0
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class EngineAdapter(Protocol):
    async def start(self) -> None: ...

    async def close(self, drain_deadline_s: float = 0.0) -> None: ...

    def models(self) -> list[ModelInfo]: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None: ...

    def load(self) -> Load: ...


@runtime_checkable
class LoraLoader(Protocol):
    """Adapters that serve LoRA adapters as extra model names can load and unload them at run time."""

    async def load_lora(self, name: str, path: str) -> None: ...

    async def unload_lora(self, name: str) -> None: ...


@runtime_checkable
class LocalEngine(Protocol):
    """Adapters whose engine runs in this process's care (vLLM's EngineCore). Such an engine, once dead,
    comes back only with a restart of the process; a remote instance being down never counts."""

    def death_cause(self) -> str | None:
        """Why the engine has died; None while it runs, and before its start or after its close. Cheap: no I/O."""
        ...


@runtime_checkable
class Embedder(Protocol):
    async def embed(
        self, request_id: str, model: str, inputs: list[str] | list[list[int]], forwarded: Forwarded = NOTHING_FORWARDED
    ) -> tuple[list[list[float]], int]:
        """Return one vector per input and the number of prompt tokens."""
        ...


@runtime_checkable
class PairScorer(Protocol):
    """Adapters that score text pairs with a cross-encoder model, where one serves it (/v1/score, /v1/rerank)."""

    def scores_pairs(self, model: str) -> bool:
        """Whether `model` is a cross-encoder here; otherwise its pairs are scored by embedding cosine."""
        ...

    async def score_pairs(
        self, request_id: str, model: str, pairs: list[tuple[str, str]], forwarded: Forwarded = NOTHING_FORWARDED
    ) -> tuple[list[float], int]:
        """Return one score per pair and the number of prompt tokens."""
        ...


@runtime_checkable
class Tokenizer(Protocol):
    """Adapters that can show how they tokenize: /tokenize, /detokenize and the token check."""

    async def tokenize(self, request: GenerateRequest) -> list[int]:
        """The prompt ids `request` would generate from (its prompt, or its messages rendered)."""
        ...

    async def detokenize(self, model: str, token_ids: list[int]) -> str: ...

    async def token_strings(self, model: str, token_ids: list[int]) -> list[str]:
        """Each id's token as the vocabulary spells it (byte-level markers included)."""
        ...


@runtime_checkable
class Relay(Protocol):
    """Router mode: an OpenAI-shaped request passed through to an upstream as it is, so every field the
    upstream knows works; the answer comes back as the upstream's SSE bytes, cut at complete events (or, for
    a request answered whole, openai_wire.answered_whole, as that one answer). One instance
    (engine_adapters.openai_http) and a route over several (gateway.routing.adapter) both relay."""

    def relay(
        self, request: RouteRequest, path: str, body: dict[str, Any], sink: Sink | None = None
    ) -> AsyncIterator[bytes]:
        """With a `sink`, the answer's later events may go to it instead (engine_adapters.splice)."""
        ...

    async def forward(self, request: RouteRequest, path: str, body: dict[str, Any]) -> bytes:
        """A JSON request that generates nothing (the tokenizer routes), passed through the same way."""
        ...


@dataclass
class RawBody:
    """A request body passed through as it came (router mode's other paths: Anthropic Messages, rerank, audio
    uploads...). `head` is what has been read: the whole body, or the start of a multipart upload whose
    `rest` is still streaming in from the client. `json` is the parsed body, when it is JSON; `model_span` is
    where the `model` field's value lies in `head`, for a multipart body; either lets the model be renamed."""

    content_type: bytes
    head: bytes
    rest: AsyncIterator[bytes] | None = None
    length: int | None = None  # the whole body's, when the client declared it
    json: dict[str, Any] | None = None
    model_span: tuple[int, int] | None = None
    streams: bool = False  # the answer is asked for as a stream
    consumed: bool = False  # some of `rest` has been sent, so the body cannot be sent again


@dataclass(frozen=True)
class RawHead:
    """The start of an answer passed through as it came: its status and content type; the bytes follow."""

    status: int
    content_type: bytes


@runtime_checkable
class RawRelay(Protocol):
    """Router mode: requests to a path besides chat and completions passed through to an instance as bytes;
    the answer comes back as a RawHead and then its body's bytes, whatever the instance answered."""

    def passes_path(self, path: str) -> bool:
        """Whether requests to `path` are passed through (vLLM's other paths, and the route's own list)."""
        ...

    def relay_raw(self, request: RouteRequest, path: str, body: RawBody) -> AsyncIterator[RawHead | bytes]: ...
