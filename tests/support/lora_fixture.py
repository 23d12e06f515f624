"""A tiny LoRA adapter for the built-in Gemma model, made locally with peft (no hub, no training).

Rank 8 on q_proj/v_proj with random, non-zero B weights: a freshly initialised LoRA has B = 0 and
changes nothing, which would let a test pass while the adapter is silently ignored.

    python -m tests.support.lora_fixture OUT_DIR    # build one by hand, e.g. for a dev server's config
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ADAPTER_NAME = "gemma-3-270m-lora-test"
RANK = 8
TARGETS = ("q_proj", "v_proj")
SEED = 1234
B_SCALE = 0.05  # big enough to move greedy output, small enough to stay fluent-ish


def build_adapter(out_dir: Path, base_dir: Path | None = None) -> Path:
    """Write adapter_config.json + adapter_model.safetensors to out_dir and return it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if base_dir is None:
        from gateway import model_store

        base_dir = model_store.prepare_gemma()
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(
        r=RANK, lora_alpha=2 * RANK, target_modules=list(TARGETS), lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, B_SCALE)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def server_env(out_dir: Path) -> dict[str, str]:
    """Env for a test server: the default models, with this adapter (built into out_dir) on the text
    model, and the runtime LoRA routes on. One engine start serves both the base and the adapter."""
    from gateway.settings import default_models

    build_adapter(out_dir)
    models = [m.model_dump(mode="json") for m in default_models()]
    text = next(m for m in models if m["kind"] == "generate")
    # Two adapters per batch: the configured one and one loaded at run time by the tests.
    text.update(lora_adapters=[{"name": ADAPTER_NAME, "path": str(out_dir)}], max_loras=2)
    return {"TOKENYARD_MODELS": json.dumps(models), "TOKENYARD_ALLOW_RUNTIME_LORA_UPDATING": "true"}


if __name__ == "__main__":
    print(build_adapter(Path(sys.argv[1])))
