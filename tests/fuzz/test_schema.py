"""schemathesis against the app's own OpenAPI schema, in-process over ASGI, with the scripted engine.

Every generated request, valid or not, must get a status the schema documents, never one of 500 or
more, with the documented content type and body shape. Each case runs twice: as generated, and with
its model set to the served one, so the serving paths are reached and not only the 404.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.app import AUTH, EMBED_MODEL, MODEL, fuzz_app

SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app(), headers=AUTH)
SCHEMA.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True, database="none"
)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _with_served_model(case: Any) -> bool:
    on_embeddings = any(word in case.operation.path for word in ("embeddings", "score", "rerank"))
    model = EMBED_MODEL if on_embeddings else MODEL
    if isinstance(case.path_parameters, dict) and "model" in case.path_parameters:
        case.path_parameters = {**case.path_parameters, "model": model}
        return True
    if isinstance(case.body, dict) and "model" in case.body:
        case.body = {**case.body, "model": model}
        return True
    return False


@SCHEMA.parametrize()
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_below_500(case: Any) -> None:
    case.call_and_validate(headers=AUTH, checks=CHECKS)
    if _with_served_model(case):
        case.call_and_validate(headers=AUTH, checks=CHECKS)


def test_the_schema_documents_400_not_422() -> None:
    paths = SCHEMA.raw_schema["paths"]
    codes = {code for operations in paths.values() for op in operations.values() for code in op["responses"]}
    assert "422" not in codes and {"400", "401", "413", "429", "503"} <= codes
    assert "HTTPValidationError" not in SCHEMA.raw_schema.get("components", {}).get("schemas", {})


def test_the_schema_lists_the_anthropic_scoring_and_fastchat_routes() -> None:
    paths = SCHEMA.raw_schema["paths"]
    for path in (
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/score",
        "/score",
        "/v1/rerank",
        "/rerank",
        "/v2/rerank",
        "/api/v1/chat/completions",
        "/pooling",
        "/classify",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    ):
        assert "post" in paths[path], path
    audio = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert audio["properties"]["file"] == {"type": "string", "format": "binary"} and "model" in audio["required"]
    pooling = paths["/pooling"]["post"]
    assert "input" in pooling["requestBody"]["content"]["application/json"]["schema"]["required"]
    assert pooling["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PoolingResponse")
    anthropic_error = paths["/v1/messages"]["post"]["responses"]["401"]["content"]["application/json"]["schema"]
    assert anthropic_error["$ref"].endswith("/AnthropicError")
