"""A tiny cross-encoder made locally (no hub, no training): BertForSequenceClassification with one label,
on all-MiniLM-L6-v2's config, encoder weights and tokenizer, and a seeded random classifier head. Its
scores are neither the embedding model's cosine similarities nor anyone else's, so a test can tell them apart.

    python -m tests.support.cross_encoder_fixture OUT_DIR    # build one by hand
"""

from __future__ import annotations

import sys
from pathlib import Path

SEED = 4321


def build_cross_encoder(out_dir: Path) -> Path:
    """Write the model (config, safetensors) and the tokenizer to out_dir and return it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from gateway import model_store

    minilm = model_store.minilm_model_dir()
    config = BertConfig.from_pretrained(str(minilm), num_labels=1, architectures=["BertForSequenceClassification"])
    torch.manual_seed(SEED)
    model = BertForSequenceClassification.from_pretrained(str(minilm), config=config, dtype=torch.float32)
    with torch.no_grad():  # a head that spreads the scores out (from_pretrained leaves it random but small)
        model.classifier.weight.normal_(0.0, 0.5)
        model.classifier.bias.fill_(0.1)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(str(out_dir))
    return out_dir


def reference_scores(model_dir: Path, pairs: list[tuple[str, str]]) -> list[float]:
    """What transformers computes for the pairs: the one logit, through a sigmoid (as vLLM and
    sentence-transformers' CrossEncoder score a one-label model)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = BertForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[:, 0]
    return [float(x) for x in torch.sigmoid(logits)]


if __name__ == "__main__":
    print(build_cross_encoder(Path(sys.argv[1])))
