"""What a key may do: its models, its route groups, its expiry, its priority ceiling and fair-share weight.

A key with no scope set may do what every key could before scopes: every model, and the route groups
`inference`, `files_batches` and `usage`. The groups `admin` (the keys API, /admin/*) and `lora` (runtime
LoRA loading) are given only by naming them: an old key never becomes an administrator.

Models are names or glob patterns (fnmatch: `*`, `?`, `[...]`), compared case-sensitively; a request names
a model by any of its names (an alias, a LoRA adapter), and it is allowed when the pattern matches the name
asked for or the model's own (first) name, so that granting a model grants its aliases.

Priority follows vLLM's convention (lower runs sooner): `max_priority` is the most urgent value the key may
ask for; a request asking for more urgency is refused (403), in both modes alike: a router passes the body on
as it came, so the ceiling cannot be met by rewriting it.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.protocol.paths import ROUTE_GROUPS as GROUPS

DEFAULT_GROUPS = frozenset({"inference", "files_batches", "usage"})


@dataclass(frozen=True)
class KeyScope:
    owner: str | None = None  # the team or person that holds the key (a label: logs, the keys API)
    models: tuple[str, ...] | None = None  # names or globs; None: every model
    groups: frozenset[str] = DEFAULT_GROUPS
    expires_at: float | None = None  # Unix seconds; None: never
    max_priority: int | None = None  # the most urgent priority the key may ask for (lower is sooner)
    weight: int = 1  # its share of a model's queue against other keys at the same priority
    metadata: Mapping[str, str] = field(default_factory=dict)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def allows_group(self, group: str) -> bool:
        return group in self.groups

    def allows_model(self, names: Iterable[str]) -> bool:
        """Whether any of a model's names (the one asked for, its canonical one) matches the key's patterns."""
        if self.models is None:
            return True
        return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in self.models)

    def allows_priority(self, asked: int) -> bool:
        return self.max_priority is None or asked >= self.max_priority


UNSCOPED = KeyScope()


def parse_groups(values: Iterable[str]) -> frozenset[str]:
    groups = frozenset(value.strip() for value in values if value.strip())
    unknown = groups - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown route group(s) {sorted(unknown)}; known: {', '.join(GROUPS)}")
    return groups


def parse_expiry(value: str) -> float:
    """An ISO 8601 time (`2027-01-01T00:00:00Z`); one without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("expiry must be an ISO 8601 time such as 2027-01-01T00:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
