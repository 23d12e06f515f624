"""Typed settings. Precedence: CLI (init kwargs) > env (TOKENYARD_*) > YAML (--config) > defaults."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    IPvAnyNetwork,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from gateway.protocol.paths import RouteGroup
from gateway.protocol.tool_parser_names import DEFAULT_TOOL_PARSER, TOOL_PARSER_NAMES

# Built-in models ship as PyPI packages and are prepared into the cache at start.
BUILTIN_GEMMA = "builtin:gemma3-270m"
BUILTIN_MINILM = "builtin:all-minilm-l6-v2"


class LoraAdapterSettings(BaseModel):
    """A LoRA adapter served as its own model name over a base model's engine."""

    name: str = Field(min_length=1, description="The name clients send as `model`.")
    path: str = Field(min_length=1, description="A local directory with adapter_config.json and the weights.")


class MediaSettings(BaseModel):
    """What media a multimodal model may be given, and from where (engine_adapters.media walks each rule)."""

    allowed_domains: list[str] = Field(
        default_factory=list,
        description="Hosts media may be fetched from over http(s) (`*.example.com` for subdomains); "
        "none: only data: URLs (as vLLM's --allowed-media-domains).",
    )
    allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Addresses an allowed host may resolve to besides public ones (CIDRs, e.g. 10.0.0.0/8); "
        "loopback, link-local, private and reserved addresses are refused otherwise.",
    )
    local_dir: Path | None = Field(
        default=None, description="file:// URLs under this directory are read (vLLM's --allowed-local-media-path)."
    )
    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Bytes an item, fetched or sent inline.")
    max_pixels: int = Field(default=25_000_000, ge=1, description="Pixels an image (width × height).")
    max_items: int = Field(default=16, ge=1, description="Media items a request.")
    fetch_timeout_s: float = Field(default=10.0, gt=0, description="Seconds a fetch may take, redirects included.")
    max_redirects: int = Field(default=3, ge=0, description="Redirects a fetch follows, each hop checked again.")


class ModelSettings(BaseModel):
    name: str = Field(min_length=1, description="The name clients send as `model`.")
    model: str = Field(
        min_length=1,
        description="A local path, builtin:*, or a Hugging Face hub id "
        "(downloaded as `vllm serve` does; HF_TOKEN from the environment).",
    )
    kind: Literal["generate", "embed"] = Field(default="generate", description="Text generation, or embeddings.")
    dtype: str = Field(default="auto", description="The weights' dtype, as `vllm serve --dtype`.")
    max_model_len: int | None = Field(default=None, ge=16, description="The context length; default: the model's.")
    chat_template: Path | None = Field(default=None, description="A Jinja chat template file; default: the model's.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to vLLM's AsyncEngineArgs as they are; they win over every default tokenyard sets.",
    )
    tool_parser: str | None = Field(
        default=None,
        description="How tool calls are read from the model's text "
        f"(tool_choice auto): one of {', '.join(TOOL_PARSER_NAMES)}; default {DEFAULT_TOOL_PARSER}.",
    )
    # LoRA (vLLM's enable_lora, max_loras, max_lora_rank): on when adapters are listed or enable_lora is set.
    lora_adapters: list[LoraAdapterSettings] = Field(default_factory=list, description="Adapters served as models.")
    enable_lora: bool = Field(default=False, description="Enable LoRA with no static adapters (runtime loading).")
    max_lora_rank: int | None = Field(default=None, ge=1, description="vLLM's max_lora_rank; default: vLLM's.")
    max_loras: int | None = Field(default=None, ge=1, description="Adapters in one batch; default: the listed count.")
    # vLLM's KV-cache events (kv_events_config), for a router's policy `kv`; listed in /v1/models as `kv_events`.
    kv_events_endpoint: str | None = Field(
        default=None,
        pattern=r"^tcp://",
        description="Publish KV-cache events on this ZMQ address (e.g. tcp://*:5557); off when unset.",
    )
    kv_events_replay_endpoint: str | None = Field(
        default=None, pattern=r"^tcp://", description="Where a router re-syncs missed events (e.g. tcp://*:5558)."
    )
    # A multimodal model (a vision-language model): vLLM's own settings for its inputs, and where media come from.
    limit_mm_per_prompt: dict[str, int] | None = Field(
        default=None, description="Items per prompt by modality, e.g. {image: 4, video: 0} (vLLM's; 0 turns one off)."
    )
    mm_processor_kwargs: dict[str, Any] | None = Field(
        default=None, description="Arguments for the model's multimodal processor (vLLM's mm_processor_kwargs)."
    )
    media: MediaSettings = Field(default_factory=MediaSettings, description="What media the model may be given.")

    @field_validator("tool_parser")
    @classmethod
    def _known_tool_parser(cls, value: str | None) -> str | None:
        if value is not None and value not in TOOL_PARSER_NAMES:
            raise ValueError(f"unknown tool_parser {value!r}; known: {', '.join(TOOL_PARSER_NAMES)}")
        return value

    @property
    def lora_enabled(self) -> bool:
        return self.enable_lora or bool(self.lora_adapters)

    @model_validator(mode="after")
    def _lora_names(self) -> ModelSettings:
        names = [self.name, *(adapter.name for adapter in self.lora_adapters)]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name!r}: LoRA adapter names must be unique and differ from the model's")
        if self.lora_enabled and self.kind != "generate":
            raise ValueError(f"model {self.name!r}: LoRA adapters need a generate model")
        if self.kv_events_replay_endpoint and not self.kv_events_endpoint:
            raise ValueError(f"model {self.name!r}: kv_events_replay_endpoint needs kv_events_endpoint")
        return self


SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _no_credentials(hint: str) -> AfterValidator:
    """A URL refused when it carries user:password@: the password would show in /metrics (an instance's
    label), in the settings logged at start and in the Host header. The error shows the URL without it."""

    def check(url: str) -> str:
        parts = urlsplit(url)
        if "@" in parts.netloc:
            shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
            raise ValueError(f"{shown}: a URL must not carry credentials (user:password@host); {hint}")
        return url

    return AfterValidator(check)


UpstreamUrl = Annotated[str, _no_credentials("give the instance's key as the route's api_key (a bearer token)")]
KubeApiUrl = Annotated[str, _no_credentials("the API's token is read from token_file")]


# A request path from the root, without a query.
PassthroughPath = Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$", max_length=256)]


class DiscoverySettings(BaseModel):
    """Find a route's instances: mode dns re-resolves a (headless Service) DNS name every interval_s;
    mode kubernetes watches the Service's EndpointSlices through the Kubernetes API (Ready endpoints)."""

    mode: Literal["dns", "kubernetes"] = Field(default="dns", description="dns, or kubernetes (EndpointSlices).")
    dns_name: str | None = Field(default=None, min_length=1, description="dns: the (headless Service) name.")
    port: int = Field(default=8000, ge=1, le=65535, description="kubernetes: only when the slice gives none.")
    scheme: Literal["http", "https"] = Field(default="http", description="How the instances found are spoken to.")
    interval_s: float = Field(default=5.0, gt=0, description="dns: the period; kubernetes: the longest retry backoff.")
    # Mode kubernetes. Left None, namespace and api_url come from the pod (service-account file, env).
    service: str | None = Field(default=None, min_length=1, description="kubernetes: the Service to watch.")
    namespace: str | None = Field(default=None, min_length=1, description="kubernetes: default the pod's own.")
    port_name: str | None = Field(default=None, description="The EndpointSlice port to use; else the first.")
    api_url: KubeApiUrl | None = Field(default=None, description="Default https://$KUBERNETES_SERVICE_HOST:$..._PORT.")
    token_file: Path = Field(
        default=SERVICE_ACCOUNT_DIR / "token",
        description="kubernetes: the API token, re-read on every (re)connect as it rotates.",
    )
    ca_file: Path = Field(default=SERVICE_ACCOUNT_DIR / "ca.crt", description="kubernetes: the API server's CA.")

    @model_validator(mode="after")
    def _target_for_mode(self) -> DiscoverySettings:
        if self.mode == "dns" and not self.dns_name:
            raise ValueError("discovery mode dns needs dns_name")
        if self.mode == "kubernetes" and not self.service:
            raise ValueError("discovery mode kubernetes needs service")
        return self


class KvEventsPorts(BaseModel):
    """Policy kv: where every instance of the route publishes its KV events, on the instance's own host."""

    port: int = Field(ge=1, le=65535, description="The ZMQ port of the instances' KV-event publisher.")
    replay_port: int | None = Field(default=None, ge=1, le=65535, description="Their replay port, for re-sync.")


class RouteSettings(BaseModel):
    """Router mode: one public model name served by remote OpenAI-compatible instances."""

    name: str = Field(min_length=1, description="The public model name clients send as `model`.")
    aliases: list[str] = Field(default_factory=list, description="More public names for the same model.")
    policy: Literal["least-loaded", "power-of-two", "session", "prefix", "round-robin", "kv"] = Field(
        default="least-loaded", description="How an instance is chosen for each request."
    )
    upstreams: list[UpstreamUrl] = Field(default_factory=list, description="Static instance base URLs.")
    upstream_model: str | None = Field(default=None, description="The model name the instances serve, if different.")
    kind: Literal["generate", "embed"] = Field(default="generate", description="Text generation, or embeddings.")
    api_key: SecretStr | None = Field(default=None, description="Sent as a bearer token to every instance.")
    api_key_file: Path | None = Field(
        default=None, description="Instead of api_key: a keys file whose first key is sent; re-read when it changes."
    )
    discovery: DiscoverySettings | None = Field(default=None, description="Find instances by DNS or Kubernetes.")
    hold_timeout_s: float | None = Field(default=None, ge=0, description="This route's hold; default router's.")
    passthrough_paths: list[PassthroughPath] = Field(
        default_factory=list,
        description="More POST paths passed through to the instances as bytes, routed by the body's `model`, "
        "besides vLLM's own (/v1/messages, /v1/rerank, /v1/audio/transcriptions, ...).",
    )
    # LoRA-aware placement (gateway.routing.lora): each adapter is a model name of this route.
    lora_adapters: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict, description="LoRA adapters the instances serve: name -> its path on the instances."
    )
    lora_runtime_load: bool = Field(
        default=False,
        description="Load an adapter that no instance holds (POST /v1/load_lora_adapter) on the least-loaded instance.",
    )
    max_loras: int | None = Field(
        default=None,
        ge=1,
        description="Adapters one instance holds, where its "
        "metrics do not say (vllm:lora_requests_info max_lora); default no limit.",
    )
    kv_events: KvEventsPorts | None = Field(
        default=None,
        description="Policy kv: the instances' KV-event ports; unset, each instance's /v1/models "
        "entry tells (`kv_events`), and an instance that tells none is routed as by `prefix`.",
    )
    resume_streams: bool = Field(
        default=False,
        description="A stream whose instance fails mid-way goes on on another instance, from the text sent so far, "
        "instead of ending with an error event (docs: resume-streams); its events then pass through Python, "
        "never the splice.",
    )
    kv_tokenizer: str | None = Field(
        default=None,
        description="Policy kv: the model's tokenizer (a local directory or hub id, read with "
        "transformers) to count the prompt's tokens here; unset, the instances' /tokenize does.",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> RouteSettings:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set api_key or api_key_file, not both")
        if self.lora_adapters and self.kind != "generate":
            raise ValueError(f"route {self.name!r}: LoRA adapters need a generate route")
        return self

    @property
    def names(self) -> list[str]:
        """Every model name the route serves: its name, its aliases and its LoRA adapters."""
        return [self.name, *self.aliases, *self.lora_adapters]


class RouterSettings(BaseModel):
    connect_timeout_s: float = Field(default=2.0, gt=0, description="The TCP connect to an instance.")
    first_token_timeout_s: float = Field(default=60.0, gt=0, description="From sending a request to its first chunk.")
    idle_timeout_s: float = Field(default=30.0, gt=0, description="Between two chunks; a stalled instance is cut off.")
    request_timeout_s: float = Field(default=600.0, gt=0, description="The whole upstream request.")
    max_attempts: int = Field(default=3, ge=1, description="Tries on different instances, before any output.")
    retry_backoff_s: float = Field(default=0.05, ge=0, description="The first retry's backoff; doubles, with jitter.")
    health_interval_s: float = Field(default=2.0, gt=0, description="GET /health and /metrics on every instance.")
    health_failures: int = Field(
        default=2,
        ge=1,
        description="Health checks failed in a row that take a healthy instance out (the first check decides at once).",
    )
    breaker_failures: int = Field(default=3, ge=1, description="Consecutive failures that open an instance's breaker.")
    breaker_cooldown_s: float = Field(default=5.0, gt=0, description="Open this long, then one probe request.")
    prefix_chars: int = Field(default=256, ge=1, description="Policy prefix: how much of the prompt is hashed.")
    prefix_load_factor: float = Field(
        default=1.5,
        ge=1.0,
        description="Policies prefix and kv: the preferred instance keeps "
        "a request while its load stays within this times the mean.",
    )
    prefix_load_slack: int = Field(
        default=4,
        ge=0,
        description="Policies prefix and kv: ... or within this many requests above the mean, whichever is more "
        "(a GPU engine runs a few more requests at little cost; 0 for engines that slow with each one).",
    )
    session_header: str = Field(
        default="x-session-id", description="Policy session: the header with the key (else the body's `user`)."
    )
    splice: bool = Field(
        default=True,
        description="Write a relayed stream's events from the instance's socket straight to the client's, "
        "past ASGI send (engine_adapters.splice); false sends every byte through ASGI.",
    )
    # Policy kv (gateway/routing/kv.py).
    max_event_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="One SSE event an instance may send; past it the stream ends with an error event.",
    )
    kv_spread_load_factor: float = Field(
        default=1.0,
        ge=1.0,
        description="Policy kv: a prefix with more of the recent requests than its holders can carry within "
        "this times the mean load each goes to one more instance (the least loaded) once its holder is above the mean.",
    )
    kv_max_blocks: int = Field(default=500_000, ge=1, description="Blocks the KV index holds over all instances.")
    kv_tokenize_timeout_s: float = Field(default=2.0, gt=0, description="An instance's /tokenize, for routing.")
    kv_tokenize_cache_size: int = Field(default=1024, ge=0, description="Prompts whose tokens are kept for routing.")
    kv_tokenize_cache_ttl_s: float = Field(default=30.0, ge=0, description="How long kept tokens stay.")
    kv_tokenize_reuse_turns: bool = Field(
        default=True,
        description="Policy kv: a chat's next turn is routed on the token ids kept for its previous turn (the "
        "start of its own) instead of asking /tokenize; every other turn still asks.",
    )
    kv_tokenize_shared_starts: bool = Field(
        default=True,
        description="Policy kv: chats that differ only in their last message are routed on the token ids of what "
        "they share, asked of /tokenize once, when those begin an earlier chat's ids (gateway.routing.kv_tokens).",
    )
    kv_tokenize_cache_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="Bytes of prompts kept for routing (8 a token id, 8 a block key and a reference to its holders, "
        "400 an entry).",
    )
    kv_discovery_interval_s: float = Field(
        default=5.0, gt=0, description="How often an instance without KV events is asked again."
    )
    reload_interval_s: float = Field(
        default=2.0, gt=0, description="How often the --config file is checked for changes."
    )
    hold_timeout_s: float = Field(
        default=300.0,
        ge=0,
        description="How long a request for a model with no ready instance waits for one (a cold start on a GPU "
        "node: scale from zero, model load) before 503 engine_unavailable; 0 answers 503 at once.",
    )


# --- Security, limits and lifecycle: keys, rate limits, admission, caps, CORS, TLS ---------
def _split_keys(value: Any) -> Any:
    """`k1,k2` (the --api-keys flag, TOKENYARD_API_KEYS) or a YAML list of keys or {key, name, ...}."""
    if isinstance(value, (str, SecretStr)):
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        value = [part.strip() for part in raw.split(",") if part.strip()]
    if isinstance(value, list):
        return [{"key": item} if isinstance(item, (str, SecretStr)) else item for item in value]
    return value


class ApiKey(BaseModel):
    """One client key. Only its SHA-256 digest is kept once the app starts; limits left None use `limits`."""

    key: Annotated[SecretStr, Field(min_length=1, description="The key clients send as a bearer token.")]
    name: str | None = Field(
        default=None, description="Names the key in logs, metrics and usage; default key-<digest prefix>."
    )
    requests_per_minute: int | None = Field(default=None, gt=0, description="This key's request rate limit.")
    tokens_per_minute: int | None = Field(default=None, gt=0, description="This key's token rate limit.")
    tokens_per_day: int | None = Field(default=None, gt=0, description="Token budget per UTC day.")
    tokens_per_month: int | None = Field(default=None, gt=0, description="Token budget per UTC month.")
    owner: str | None = Field(default=None, description="The team or person holding the key (a label).")
    models: list[str] | None = Field(
        default=None, description="Models the key may use: names or globs (`qwen*`); None: every model."
    )
    groups: list[RouteGroup] | None = Field(
        default=None,
        description="Route groups the key may use; None: inference, files_batches and usage (never admin or lora).",
    )
    expires_at: datetime | None = Field(default=None, description="After this time the key is refused (401).")
    max_priority: int | None = Field(
        default=None, description="The most urgent priority the key may ask for (lower is sooner); None: any."
    )
    weight: int = Field(default=1, ge=1, le=1000, description="The key's fair share of a model's queue.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Free labels kept with the key.")


def _stripped(value: Any) -> Any:
    """A key read from a file or a Secret may end in a newline; a key holds no whitespace."""
    return value.strip() if isinstance(value, str) else value


class AuthSettings(BaseModel):
    api_keys_file: Path | None = Field(default=None, description="One key a line, re-read when it changes.")
    guard_metrics: bool = Field(default=False, description="Ask for a key on /metrics too.")
    admin_key: Annotated[SecretStr | None, BeforeValidator(_stripped)] = Field(
        default=None,
        min_length=1,
        description="Opens GET /admin/usage (every key's usage) and, where keys are set, the runtime LoRA routes.",
    )
    keys_refresh_s: float = Field(
        default=2.0,
        gt=0,
        description="How often each replica reads the keys API's keys from the store: a key created, changed or "
        "revoked through any replica takes effect everywhere within this (plus one store round trip).",
    )
    keys_stale_after_s: float = Field(
        default=300.0,
        gt=0,
        description="While the store cannot be read, keys read from it before keep working this long after the "
        "last good read, then are refused; a key never read is refused throughout.",
    )


class LimitSettings(BaseModel):
    # Per key (per client address when no keys are configured); None: no limit.
    requests_per_minute: int | None = Field(default=None, gt=0, description="Requests a minute per key.")
    tokens_per_minute: int | None = Field(default=None, gt=0, description="Tokens a minute per key.")
    # Token budgets of every key (a key's own override them); keys only, never client addresses.
    tokens_per_day: int | None = Field(default=None, gt=0, description="Token budget per UTC day, per key.")
    tokens_per_month: int | None = Field(default=None, gt=0, description="Token budget per UTC month, per key.")
    # Where buckets and budgets live: this process (memory), or a Redis shared by every router replica.
    backend: Literal["memory", "redis"] = Field(default="memory", description="Where buckets and budgets live.")
    redis_url: SecretStr | None = Field(default=None, description="redis://[:password@]host:port/db or rediss://")
    redis_timeout_s: float = Field(default=0.25, gt=0, description="Connect and reply timeout of one call.")
    redis_failure: Literal["open", "closed"] = Field(
        default="open", description="Redis unreachable: serve unlimited (open) or answer 503 (closed)."
    )
    # Admission, per model: requests running, requests waiting, and how long one may wait.
    max_in_flight: int = Field(default=256, ge=1, description="Requests running per route or engine.")
    max_queue: int = Field(default=512, ge=0, description="Requests waiting per route or engine; past it, 429.")
    queue_timeout_s: float = Field(default=30.0, gt=0, description="How long a request may wait; then 429.")
    # Request size and slow clients.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="The request line and headers; past it, 431.")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Past it, 413.")
    # The JSON body's shape, checked before it is parsed; past a bound, 400.
    max_json_depth: int = Field(default=64, ge=2, description="Nesting of the body's arrays and objects.")
    max_json_containers: int = Field(default=20_000, ge=1, description="Arrays and objects in the body.")
    max_json_elements: int = Field(
        default=250_000,
        ge=1,
        description="Values in the body's arrays and objects, "
        "counted by their commas (commas inside strings count too).",
    )
    body_timeout_s: float = Field(default=30.0, gt=0, description="For the whole body to arrive; then 408.")
    header_timeout_s: float = Field(default=10.0, gt=0, description="For the headers; then the connection closes.")
    keep_alive_timeout_s: int = Field(default=5, ge=1, description="An idle keep-alive connection closes.")
    # Caps on what one request may ask for; past them, 400.
    max_tokens: int | None = Field(default=None, ge=1, description="The most max_tokens a request may ask.")
    max_n: int = Field(default=16, ge=1, description="The most choices (n) a request may ask.")
    max_stop: int = Field(default=16, ge=0, description="The most stop strings in a request.")
    max_prompt_chars: int | None = Field(default=1_000_000, ge=1, description="Characters in a prompt.")
    max_held_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="Bytes of request bodies waiting for an admission slot or an instance; past it 503.",
    )

    @model_validator(mode="after")
    def _redis_needs_url(self) -> LimitSettings:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("limits backend redis needs redis_url")
        return self


class CorsSettings(BaseModel):
    """Off while allowed_origins is empty."""

    allowed_origins: list[str] = Field(default_factory=list, description="Origins allowed; CORS is off when empty.")
    allowed_methods: list[str] = Field(default_factory=lambda: ["GET", "POST"], description="Methods allowed.")
    allowed_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type", "x-request-id", "x-priority"],
        description="Request headers allowed.",
    )
    allow_credentials: bool = Field(default=False, description="Allow cookies and credentials.")


class TlsSettings(BaseModel):
    ssl_keyfile: Path | None = Field(default=None, description="The TLS private key (PEM); with ssl_certfile.")
    ssl_certfile: Path | None = Field(default=None, description="The TLS certificate chain (PEM); with ssl_keyfile.")

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsSettings:
        if (self.ssl_keyfile is None) != (self.ssl_certfile is None):
            raise ValueError("TLS needs both ssl_keyfile and ssl_certfile")
        return self


class TracingSettings(BaseModel):
    """OpenTelemetry traces (the `tokenyard[otel]` extra). Where spans go and how many are kept is set by
    OpenTelemetry's own variables: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER..."""

    enabled: bool = Field(default=False, description="Export a trace of each request over OTLP/HTTP.")


class StoreSettings(BaseModel):
    """Durable records (stored responses): SQLite in data_dir by default; PostgreSQL for replicas that share."""

    url: SecretStr | None = Field(
        default=None,
        description="postgresql://user:password@host:port/db (or sqlite:///path); default SQLite in data_dir.",
    )
    retention_days: float = Field(default=30.0, gt=0, description="Stored responses are purged this much later.")
    timeout_s: float = Field(default=5.0, gt=0, description="One store operation's limit; past it, 503.")
    heartbeat_s: float = Field(
        default=2.0, gt=0, description="How often running responses are marked alive, cancels read and purges run."
    )
    stale_after_s: float = Field(
        default=30.0, gt=0, description="A running response not marked alive this long (its process died) fails."
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql", "postgres:", "sqlite")):
            raise ValueError("store url must be postgresql://... or sqlite:///...")
        return value


class BatchSettings(BaseModel):
    """The Batch API (/v1/files, /v1/batches): uploaded files, and the runner that serves batches' lines at the
    lowest priority. max_concurrency is per process; max_concurrency_per_batch counts every replica's lines."""

    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024, description="The largest upload; past it, 413.")
    files_dir: Path | None = Field(
        default=None,
        description="Keep files' bytes in this directory (a volume the replicas share) instead of the SQL store.",
    )
    upload_timeout_s: float = Field(default=600.0, gt=0, description="For a whole upload to arrive; then 408.")
    max_concurrency: int = Field(default=16, ge=1, description="Batch lines running at once in this process.")
    max_concurrency_per_batch: int = Field(
        default=8, ge=1, description="Lines of one batch running at once, over every replica."
    )
    poll_s: float = Field(default=0.5, gt=0, description="How often the runner looks for work.")
    lease_s: float = Field(
        default=30.0, gt=0, description="A claimed line not marked alive this long (its process died) is run again."
    )
    completion_window_s: float = Field(
        default=86400.0,
        gt=0,
        description='How long a batch\'s completion_window ("24h") lasts; past it, unfinished lines expire.',
    )
    retry_s: float = Field(
        default=2.0, gt=0, description="A line refused for load (429, 503) waits this long before it is tried again."
    )


ApiKeys = Annotated[list[ApiKey], NoDecode, BeforeValidator(_split_keys)]
# --- end of the security and limits settings ---------------------------------------------------


def _null_word(value: Any) -> Any:
    """`null` (or `none`) reads as None: an environment variable cannot hold YAML's null."""
    return None if isinstance(value, str) and value.strip().lower() in ("null", "none") else value


def default_models() -> list[ModelSettings]:
    return [
        ModelSettings(name="gemma-3-270m", model=BUILTIN_GEMMA, dtype="bfloat16", max_model_len=2048),
        ModelSettings(name="all-MiniLM-L6-v2", model=BUILTIN_MINILM, kind="embed", dtype="float32"),
    ]


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value (a key, a URL with a password) is never printed back.
    model_config = SettingsConfigDict(
        env_prefix="TOKENYARD_", env_nested_delimiter="__", extra="forbid", hide_input_in_errors=True
    )

    config: Path | None = Field(default=None, description="The YAML settings file (also --config).")
    host: str = Field(default="127.0.0.1", description="The address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="The port to listen on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="JSON logs on stderr.")
    models: list[ModelSettings] = Field(default_factory=default_models, description="Models run in this process.")
    cache_dir: Path | None = Field(
        default=None, description="Where builtin models are prepared; default ~/.cache/tokenyard."
    )
    data_dir: Path | None = Field(
        default=None, description="Where durable records live (the SQLite store); default ~/.local/share/tokenyard."
    )
    drain_deadline_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long requests in flight may run on before they are cut off."
    )
    # When an in-process engine dies: drain for this long, then exit non-zero so the process is restarted
    # (as `vllm serve` exits). None: stay up (for debugging); /health answers 503 either way.
    engine_dead_exit_s: Annotated[float | None, BeforeValidator(_null_word)] = Field(
        default=5.0, ge=0, description="After an engine dies, exit 1 this much later; null stays up."
    )
    # Router mode: when routes are set, those model names are served by remote instances.
    routes: list[RouteSettings] = Field(default_factory=list, description="Models served by remote instances.")
    router: RouterSettings = Field(default_factory=RouterSettings)
    # Security and limits; api_keys also reads TOKENYARD_API_KEYS=k1,k2.
    api_keys: ApiKeys = Field(default_factory=list, description="Client keys; with any key set, requests need one.")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    # vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING: POST /v1/load_lora_adapter and /v1/unload_lora_adapter.
    allow_runtime_lora_updating: bool = Field(
        default=False, description="Serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter."
    )
    lora_dir: Path | None = Field(
        default=None,
        description="Runtime-loaded LoRA adapters must lie under this directory; needed where API keys are set.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = getattr(init_settings, "init_kwargs", {}).get("config") or env_settings().get("config")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config:
            if not Path(config).is_file():
                raise FileNotFoundError(f"config file not found: {config}")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=Path(config)))
        return tuple(sources)
