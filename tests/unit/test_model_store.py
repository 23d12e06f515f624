"""Tests for gateway.model_store against the real packaged models.

The first prepare_gemma() call converts the GGUF (a couple of minutes on a small CPU);
later calls, and later runs, hit the cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway import model_store
from gateway.model_store import (
    GEMMA3_CHAT_TEMPLATE,
    GEMMA3_STOP_TOKEN_IDS,
    default_cache_dir,
    minilm_model_dir,
    prepare_gemma,
)

BOS_ID = 2
END_OF_TURN_ID = 106


@pytest.fixture(scope="module")
def gemma_dir() -> Path:
    return prepare_gemma()


@pytest.fixture(scope="module")
def tokenizer(gemma_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma_dir, local_files_only=True)


def test_prepared_dir_has_bf16_safetensors_and_config(gemma_dir: Path) -> None:
    assert gemma_dir.name.startswith("gemma3-270m-")
    assert (gemma_dir / "model.safetensors").is_file()
    assert (gemma_dir / "tokenizer.json").is_file()
    config = json.loads((gemma_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["dtype"] == "bfloat16"
    assert "quantization_config" not in config


def test_tokenizer_config_keeps_bos(gemma_dir: Path, tokenizer: Any) -> None:
    tok_config = json.loads((gemma_dir / "tokenizer_config.json").read_text())
    assert tok_config["add_bos_token"] is True
    # transformers 5 ignores that flag when tokenizer.json exists, so check the behaviour too.
    ids = tokenizer("The capital of France is").input_ids
    assert ids[0] == BOS_ID
    assert ids.count(BOS_ID) == 1


def test_saved_chat_template_is_ours(tokenizer: Any) -> None:
    assert tokenizer.chat_template == GEMMA3_CHAT_TEMPLATE.read_text()


def test_chat_template_renders_gemma_turns(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Name a color."}]},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nName a color.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_chat_template_without_generation_prompt(tokenizer: Any) -> None:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert rendered == "<bos><start_of_turn>user\nHi<end_of_turn>\n"


def test_chat_template_rejects_unknown_role(tokenizer: Any) -> None:
    with pytest.raises(Exception, match="role"):
        tokenizer.apply_chat_template([{"role": "critic", "content": "42"}], tokenize=False)  # "tool" is a known role


def test_rendered_chat_prompt_has_exactly_one_bos(tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids[0] == BOS_ID
    assert ids.count(BOS_ID) == 1
    assert END_OF_TURN_ID in ids


def test_end_of_turn_is_a_stop_token(gemma_dir: Path, tokenizer: Any) -> None:
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") == END_OF_TURN_ID
    assert END_OF_TURN_ID in GEMMA3_STOP_TOKEN_IDS
    assert tokenizer.eos_token_id in GEMMA3_STOP_TOKEN_IDS
    gen_config = json.loads((gemma_dir / "generation_config.json").read_text())
    assert END_OF_TURN_ID in gen_config["eos_token_id"]
    assert sorted(gen_config["eos_token_id"]) == sorted(GEMMA3_STOP_TOKEN_IDS)


def test_second_call_is_idempotent(gemma_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (gemma_dir / model_store.READY_MARKER).is_file()

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("a prepared cache must not be rebuilt")

    monkeypatch.setattr(model_store, "_build", no_rebuild)
    assert prepare_gemma() == gemma_dir
    assert prepare_gemma(gemma_dir.parent) == gemma_dir


def test_default_cache_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENYARD_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("TOKENYARD_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "tokenyard"


def test_minilm_model_dir_is_the_packaged_model() -> None:
    path = minilm_model_dir()
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file()
