"""Engine mode's check of a request's content parts against what the model takes: a text-only model given an
image is a 400 that names the part (in the client's own shape: `messages[0].content[1]`, `input[0].content[1]`)
and says so, before any work (the adapter fetches and reads the media itself: engine_adapters.media). A routed
model's parts are its instances' to judge, so none is checked here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from engine_adapters.media import MODALITY_OF_PART, TEXT_PARTS, text_only_message
from gateway.errors import InvalidRequest
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.responses import ResponsesRequest
from gateway.state import AppState

# Responses' part types -> chat's, which name the modality (engine_adapters.media.MODALITY_OF_PART).
_RESPONSES_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal", "input_image": "image_url"}
_RESPONSES_PARTS |= {"input_file": "file", "input_audio": "input_audio"}


def check_modalities(state: AppState, model: str, parts: Iterable[tuple[str, str]]) -> None:
    """Each (param, chat part type) against what `model` takes."""
    modalities = state.model_info(model).input_modalities
    if modalities is None:
        return
    for param, kind in parts:
        if kind in TEXT_PARTS:
            continue
        if kind not in MODALITY_OF_PART:
            raise InvalidRequest(f"Unknown content part type {kind!r}.", param=param)
        if MODALITY_OF_PART[kind] not in modalities:
            raise InvalidRequest(text_only_message(model, {"type": kind}, modalities), param=param)


def check_parts(state: AppState, req: ChatCompletionRequest) -> None:
    check_modalities(state, req.model, _chat_parts(req))


def check_input(state: AppState, req: ResponsesRequest) -> None:
    """A Responses request's own input parts (a stored history was checked when it was the input)."""
    check_modalities(state, req.model, _input_parts(req))


def _chat_parts(req: ChatCompletionRequest) -> Iterator[tuple[str, str]]:
    for i, message in enumerate(req.messages):
        if message.media() and isinstance(message.content, list):
            for j, part in enumerate(message.content):
                yield f"messages[{i}].content[{j}]", part.type


def _input_parts(req: ResponsesRequest) -> Iterator[tuple[str, str]]:
    if isinstance(req.input, str):
        return
    for i, item in enumerate(req.input):
        content = getattr(item, "content", None)
        for j, part in enumerate(content if isinstance(content, list) else ()):
            kind = str(getattr(part, "type", None) or (part.get("type") if isinstance(part, dict) else ""))
            yield f"input[{i}].content[{j}]", _RESPONSES_PARTS.get(kind, kind)
