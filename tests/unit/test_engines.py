"""Hub access: offline only when no model needs the hub, never over the operator's choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.engines import from_hub, hub_env_defaults
from gateway.settings import BUILTIN_GEMMA, BUILTIN_MINILM, ModelSettings

ROOT = Path(__file__).resolve().parents[2]


def model(source: str) -> ModelSettings:
    return ModelSettings(name="m", model=source)


def test_builtin_and_local_models_are_served_offline(tmp_path: Path) -> None:
    models = [model(BUILTIN_GEMMA), model(BUILTIN_MINILM), model(str(tmp_path))]
    assert not any(from_hub(m) for m in models)
    assert hub_env_defaults(models) == {"HF_HUB_OFFLINE": "1"}


def test_a_hub_id_leaves_hub_access_to_the_operator(tmp_path: Path) -> None:
    hub = model("Qwen/Qwen2.5-7B-Instruct")
    assert from_hub(hub)
    assert hub_env_defaults([model(BUILTIN_GEMMA), hub]) == {}


def test_importing_the_model_store_leaves_the_environment_alone() -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    probe = "import os, gateway.model_store; print(os.environ.get('HF_HUB_OFFLINE'))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "None"
