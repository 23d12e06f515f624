"""A tiny vision-language model on disk, made locally (no hub): BLIP-2's architecture
(Blip2ForConditionalGeneration) whose language model is the embedded Gemma 3 270M, with a small random vision
tower and Q-Former.

Why BLIP-2: vLLM's CPU build runs without torchvision (PyPI's wheel needs CUDA's libraries and breaks
`import vllm` next to torch+cpu), and vLLM's Gemma 3, LLaVA and PaliGemma code import torchvision through
transformers' image processors or its SigLIP/CLIP encoder info; its BLIP-2 does not, and it takes any language
model vLLM knows. The vision tower sees 56×56 pixels in 14×14 patches; the Q-Former's 8 queries become the
image's 8 tokens, which vLLM puts at the start of the prompt. The tokenizer gains `<image>` (id 262144) and the
embedding grows to Gemma 3 4B's vocabulary size; the new rows are never read.

    python -m tests.support.vlm_fixture OUT_DIR    # build one by hand, e.g. for a dev server's config
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gateway.model_store import GEMMA3_CHAT_TEMPLATE

MODEL_NAME = "tiny-vlm"
IMAGE_SIZE = 56
TOKENS_PER_IMAGE = 8  # the Q-Former's queries
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = 262144
VOCAB_SIZE = 262208
SEED = 4321
_READY = ".tokenyard-vlm-ready"


def build_vlm(out_dir: Path, base_dir: Path | None = None) -> Path:
    """Write the model, its tokenizer and its processor to out_dir (once) and return it."""
    if (out_dir / _READY).is_file():
        return out_dir
    import torch
    from transformers import (
        AutoTokenizer,
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        Gemma3TextConfig,
    )
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
    from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM

    if base_dir is None:
        from gateway import model_store

        base_dir = model_store.prepare_gemma()
    torch.manual_seed(SEED)
    text = Gemma3ForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    text_config = Gemma3TextConfig(**{**text.config.to_dict(), "vocab_size": VOCAB_SIZE})
    text_config.architectures = ["Gemma3ForCausalLM"]
    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision = Blip2VisionConfig(**small, image_size=IMAGE_SIZE, patch_size=14)
    qformer = Blip2QFormerConfig(**small, encoder_hidden_size=64)
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=TOKENS_PER_IMAGE,
        image_token_index=IMAGE_TOKEN_ID,
    )
    config.architectures = ["Blip2ForConditionalGeneration"]
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        weights = text.state_dict()
        embed = weights["model.embed_tokens.weight"]
        grown = torch.zeros(VOCAB_SIZE, embed.shape[1])
        grown[: embed.shape[0]] = embed
        weights["model.embed_tokens.weight"] = weights["lm_head.weight"] = grown
        model.language_model.load_state_dict(weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(str(out_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), extra_special_tokens={"image_token": IMAGE_TOKEN})
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == IMAGE_TOKEN_ID
    processor = Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        num_query_tokens=TOKENS_PER_IMAGE,
        chat_template=GEMMA3_CHAT_TEMPLATE.read_text(),
    )
    processor.save_pretrained(str(out_dir))
    (out_dir / _READY).write_text(json.dumps({"model": MODEL_NAME}))
    return out_dir


if __name__ == "__main__":
    print(build_vlm(Path(sys.argv[1])))
