"""The keys API's wire models (gateway.api.keys): small JSON of our own, shaped like OpenAI's admin API keys
where those have a field (`object`, `id`, `name`, `redacted_value`, `created_at`, `value` once on create)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.protocol.paths import RouteGroup

Count = int | None


class KeyFields(BaseModel):
    """What an administrator sets on a key; on update, only the fields sent change (null clears one)."""

    model_config = ConfigDict(extra="forbid")

    owner: str | None = Field(default=None, max_length=128)
    models: list[str] | None = None  # names or globs; null: every model
    groups: list[RouteGroup] | None = None  # null: inference, files_batches and usage
    expires_at: datetime | int | None = None  # ISO 8601 or Unix seconds; null: never
    max_priority: int | None = None
    weight: int = Field(default=1, ge=1, le=1000)
    metadata: dict[str, str] = Field(default_factory=dict)
    requests_per_minute: Count = Field(default=None, gt=0)
    tokens_per_minute: Count = Field(default=None, gt=0)
    tokens_per_day: Count = Field(default=None, gt=0)
    tokens_per_month: Count = Field(default=None, gt=0)


class KeyCreate(KeyFields):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")


class KeyUpdate(KeyFields):
    name: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")


class KeyObject(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    redacted_value: str
    owner: str | None
    models: list[str] | None
    groups: list[str]
    expires_at: int | None
    max_priority: int | None
    weight: int
    metadata: dict[str, str]
    limits: dict[str, int | None]
    created_at: int
    updated_at: int
    revoked_at: int | None
    created_by: str
    value: str | None = None  # the secret: only in the answer to create and rotate


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyObject]


class KeyDeleted(BaseModel):
    object: Literal["api_key.deleted"] = "api_key.deleted"
    id: str
    deleted: bool = True


def limits_of(fields: dict[str, Any]) -> dict[str, int | None]:
    names = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "tokens_per_month")
    return {name: fields.get(name) for name in names}
