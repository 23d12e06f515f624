"""A tiny vision-language model on disk, made locally (no hub): Gemma 3's multimodal architecture
(Gemma3ForConditionalGeneration) whose language model is the embedded Gemma 3 270M, with a small random
SigLIP vision tower and projector.

The 270M tokenizer knows `<start_of_image>` and `<end_of_image>` but not the image's soft token, so it is
added (id 262144, as in Gemma 3 4B) and the embedding grows to Gemma 3 4B's vocabulary size; the new rows are
never read (the image's soft tokens are replaced by the vision tower's embeddings). The vision tower sees
224×224 pixels in 14×14 patches (16×16 of them), pooled to 4×4: 16 tokens an image.

    python -m tests.support.vlm_fixture OUT_DIR    # build one by hand, e.g. for a dev server's config
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gateway.model_store import GEMMA3_CHAT_TEMPLATE

MODEL_NAME = "tiny-gemma-vlm"
IMAGE_SIZE = 56
PATCH_SIZE = 14
TOKENS_PER_IMAGE = 16  # (56 / 14) ** 2 patches, each one token
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = 262144
VOCAB_SIZE = 262208  # Gemma 3 4B's: room for the image's soft token
SEED = 4321
_READY = ".tokenyard-vlm-ready"


def build_vlm(out_dir: Path, base_dir: Path | None = None) -> Path:
    """Write the model, its tokenizer and its processor to out_dir (once) and return it."""
    if (out_dir / _READY).is_file():
        return out_dir
    import torch
    from transformers import (
        AutoTokenizer,
        Gemma3TextConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    if base_dir is None:
        from gateway import model_store

        base_dir = model_store.prepare_gemma()
    torch.manual_seed(SEED)
    text = Gemma3ForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    text_config = Gemma3TextConfig(**{**text.config.to_dict(), "vocab_size": VOCAB_SIZE})
    text_config.architectures = ["Gemma3ForCausalLM"]
    vision_config = SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        vision_use_head=False,
    )
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=IMAGE_TOKEN_ID,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_seq_length=TOKENS_PER_IMAGE,
        tie_word_embeddings=True,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    model = LlavaForConditionalGeneration(config).to(torch.float32)
    with torch.no_grad():
        weights = text.model.state_dict()
        embed = weights.pop("embed_tokens.weight")
        grown = torch.zeros(VOCAB_SIZE, embed.shape[1])
        grown[: embed.shape[0]] = embed
        model.model.language_model.load_state_dict({**weights, "embed_tokens.weight": grown})
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(str(out_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), extra_special_tokens={"image_token": IMAGE_TOKEN})
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == IMAGE_TOKEN_ID
    images = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        image_token=IMAGE_TOKEN,
        chat_template=GEMMA3_CHAT_TEMPLATE.read_text().replace("<start_of_image>", IMAGE_TOKEN),
    )
    processor.save_pretrained(str(out_dir))
    (out_dir / _READY).write_text(json.dumps({"model": MODEL_NAME}))
    return out_dir


if __name__ == "__main__":
    print(build_vlm(Path(sys.argv[1])))
