"""Constrained decoding: OpenAI's `response_format` and vLLM's `structured_outputs` -> StructuredOutput.

Only the request's shape is checked here; whether the engine's grammar backend can compile a schema,
a regex or a grammar is for the engine to say, and the adapter turns its refusal into a 400.
"""

from __future__ import annotations

import json
from typing import Any

from engine_adapters.base import StructuredOutput
from gateway.errors import InvalidRequest
from gateway.protocol.common import ResponseFormat, SamplingFields, StructuredOutputsIn


def requested(req: SamplingFields) -> StructuredOutput | None:
    """The constraint a request asks for, if any."""
    fmt, extra = req.response_format, req.structured_outputs
    if extra is not None and fmt is not None and fmt.type != "text":
        raise InvalidRequest("Send either response_format or structured_outputs, not both.", param="structured_outputs")
    if extra is not None:
        return _from_structured_outputs(extra)
    return _from_response_format(fmt) if fmt is not None else None


def _from_response_format(fmt: ResponseFormat) -> StructuredOutput | None:
    if fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutput("json_object")
    if fmt.json_schema is None:
        raise InvalidRequest("response_format of type json_schema needs a json_schema object.", param="response_format")
    # OpenAI's strict mode and ours agree: the output always matches the schema.
    return StructuredOutput("json", _schema(fmt.json_schema.schema_ or {}, "response_format"))


def _from_structured_outputs(extra: StructuredOutputsIn) -> StructuredOutput:
    given: dict[str, Any] = {
        "json": extra.json_,
        "json_object": extra.json_object,
        "regex": extra.regex,
        "choice": extra.choice,
        "grammar": extra.grammar,
    }
    kinds = [kind for kind, value in given.items() if value is not None]
    if len(kinds) != 1:
        raise InvalidRequest(
            "structured_outputs needs exactly one of json, json_object, regex, choice, grammar.",
            param="structured_outputs",
        )
    kind = kinds[0]
    value = given[kind]
    if kind == "json":
        return StructuredOutput("json", _schema(value, "structured_outputs"))
    if kind == "json_object":
        if value is not True:
            raise InvalidRequest("structured_outputs.json_object must be true.", param="structured_outputs")
        return StructuredOutput("json_object")
    if kind == "choice":
        if not value:
            raise InvalidRequest("structured_outputs.choice must not be empty.", param="structured_outputs")
        return StructuredOutput("choice", tuple(value))
    if kind == "grammar" and not value.strip():
        raise InvalidRequest("structured_outputs.grammar must not be empty.", param="structured_outputs")
    return StructuredOutput(kind, value)  # type: ignore[arg-type]  # kind is one of the literals, checked by the wire model


def _schema(value: Any, param: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidRequest("The JSON schema is not valid JSON.", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest("The JSON schema must be a JSON object.", param=param)
    return value
