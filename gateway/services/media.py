"""Engine mode's check of a chat's content parts against what the model takes: a text-only model given an
image is a 400 that names the part and says so, before any work (the adapter fetches and reads the media
itself: engine_adapters.media). A routed model's parts are its instances' to judge, so none is checked here."""

from __future__ import annotations

from engine_adapters.media import MODALITY_OF_PART, TEXT_PARTS, text_only_message
from gateway.errors import InvalidRequest
from gateway.protocol.chat import ChatCompletionRequest
from gateway.state import AppState


def check_parts(state: AppState, req: ChatCompletionRequest) -> None:
    modalities = state.model_info(req.model).input_modalities
    if modalities is None:
        return
    for i, message in enumerate(req.messages):
        if not message.media():
            continue
        for j, part in enumerate(message.content or ()):
            kind = getattr(part, "type", "text")
            if kind in TEXT_PARTS:
                continue
            param = f"messages[{i}].content[{j}]"
            if kind not in MODALITY_OF_PART:
                raise InvalidRequest(f"Unknown content part type {kind!r}.", param=param)
            if MODALITY_OF_PART[kind] not in modalities:
                raise InvalidRequest(text_only_message(req.model, {"type": kind}, modalities), param=param)
