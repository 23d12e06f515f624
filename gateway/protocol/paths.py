"""The one table of the API's paths: for each, how a route passes it on, what a request to it is charged,
the operation its trace span names, and whether engine mode serves it too. Adding a vLLM path is one line.

How a route passes a request on (`relay`):
- "events": chat and completions; the body goes as it came and the instance's SSE events come back as
  they are (gateway.relay), a whole answer folded from them.
- "json": the tokenizer's routes; the instance's JSON answer is passed on.
- "bytes": vLLM's other paths; body and answer as bytes, status and all (gateway.relay.raw).
- "chunks": /v1/responses; tokenyard serves it itself on the instance's chat path.
- "vectors": /v1/embeddings; the instance's vectors, encoded and checked as in engine mode.
- "app": tokenyard answers it itself in both modes, from what the model's adapter gives.
- "configured": vLLM's path that a route passes on only when its passthrough_paths names it.

Each path belongs to a route group, what a key's scope grants (gateway.scopes): `inference` (the table's
paths, /v1/models, /v1/responses/*), `files_batches` (/v1/files*, /v1/batches*), `usage` (/v1/usage),
`admin` (/admin/*) and `lora` (runtime LoRA loading). `route_group(path)` answers for any path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

RouteGroup = Literal["inference", "files_batches", "usage", "admin", "lora"]
ROUTE_GROUPS: tuple[RouteGroup, ...] = ("inference", "files_batches", "usage", "admin", "lora")


@dataclass(frozen=True)
class PathFacts:
    relay: Literal["events", "json", "bytes", "chunks", "vectors", "app", "configured"]
    prompt_only: bool = False  # it generates nothing: charged its prompt only
    operation: str | None = None  # the GenAI operation its span names (gen_ai.operation.name)
    engine: bool = True  # engine mode serves it as well (FastAPI); False: only a route passes it on
    upload: bool = False  # a multipart upload, read only as far as its `model` field
    group: RouteGroup = "inference"  # the route group a key's scope must grant (gateway.scopes)


PATHS: dict[str, PathFacts] = {
    CHAT: PathFacts("events", operation="chat"),
    COMPLETIONS: PathFacts("events", operation="text_completion"),
    "/tokenize": PathFacts("json", prompt_only=True),
    "/detokenize": PathFacts("json", prompt_only=True),
    "/v1/responses": PathFacts("chunks", operation="chat"),
    "/v1/embeddings": PathFacts("vectors", operation="embeddings"),  # prompt only: any path with "embeddings"
    "/v1/chat/completions/render": PathFacts("configured", operation="chat", engine=False),
    "/api/v1/token_check": PathFacts("app", prompt_only=True),
    "/v1/messages": PathFacts("bytes", operation="chat"),
    "/v1/messages/count_tokens": PathFacts("bytes", prompt_only=True),
    "/v1/rerank": PathFacts("bytes", prompt_only=True),
    "/rerank": PathFacts("bytes", prompt_only=True),
    "/v2/rerank": PathFacts("bytes", prompt_only=True),
    "/v1/score": PathFacts("bytes", prompt_only=True),
    "/score": PathFacts("bytes", prompt_only=True),
    "/pooling": PathFacts("bytes", prompt_only=True, engine=False),
    "/classify": PathFacts("bytes", prompt_only=True, engine=False),
    "/v1/audio/transcriptions": PathFacts("bytes", engine=False, upload=True),
    "/v1/audio/translations": PathFacts("bytes", engine=False, upload=True),
}

# Paths outside the table, by prefix: the first that matches names the group; anything else is inference.
_GROUP_PREFIXES: tuple[tuple[str, RouteGroup], ...] = (
    ("/v1/files", "files_batches"),
    ("/v1/batches", "files_batches"),
    ("/v1/usage", "usage"),
    ("/admin", "admin"),
    ("/v1/load_lora_adapter", "lora"),
    ("/v1/unload_lora_adapter", "lora"),
)


def route_group(path: str) -> RouteGroup:
    facts = PATHS.get(path)
    if facts is not None:
        return facts.group
    for prefix, group in _GROUP_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return group
    return "inference"


def paths(relay: str | None = None, **facts: bool) -> frozenset[str]:
    """The paths with these facts, e.g. paths("bytes", engine=True)."""
    return frozenset(
        path
        for path, fact in PATHS.items()
        if (relay is None or fact.relay == relay) and all(getattr(fact, k) == v for k, v in facts.items())
    )


OPERATIONS = {path: fact.operation for path, fact in PATHS.items() if fact.operation is not None}
PROMPT_ONLY_PATHS = paths(prompt_only=True)
RELAYED_AS_BYTES = paths("bytes")  # vLLM's other paths a route passes on; a route's passthrough_paths adds more
UPLOAD_PATHS = paths(upload=True)
