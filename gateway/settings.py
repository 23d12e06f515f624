"""Typed settings. Precedence: CLI (init kwargs) > env (TOKENYARD_*) > YAML (--config) > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

# Built-in models ship as PyPI packages and are prepared into the cache at start.
BUILTIN_GEMMA = "builtin:gemma3-270m"
BUILTIN_MINILM = "builtin:all-minilm-l6-v2"


class ModelSettings(BaseModel):
    name: str = Field(min_length=1, description="The name clients send as `model`.")
    model: str = Field(min_length=1, description="A local path, a hub name already on disk, or builtin:*.")
    kind: Literal["generate", "embed"] = "generate"
    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    chat_template: Path | None = None
    engine_args: dict[str, Any] = Field(default_factory=dict)


def default_models() -> list[ModelSettings]:
    return [
        ModelSettings(name="gemma-3-270m", model=BUILTIN_GEMMA, dtype="bfloat16", max_model_len=2048),
        ModelSettings(name="all-MiniLM-L6-v2", model=BUILTIN_MINILM, kind="embed", dtype="float32"),
    ]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENYARD_", env_nested_delimiter="__", extra="forbid")

    config: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    models: list[ModelSettings] = Field(default_factory=default_models)
    cache_dir: Path | None = None
    drain_deadline_s: float = Field(default=30.0, ge=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = getattr(init_settings, "init_kwargs", {}).get("config") or env_settings().get("config")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config:
            if not Path(config).is_file():
                raise FileNotFoundError(f"config file not found: {config}")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=Path(config)))
        return tuple(sources)
