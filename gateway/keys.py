"""The client keys: from settings and a keys file, kept as digests, matched in constant time.

Keys come from settings (--api-keys, TOKENYARD_API_KEYS, YAML), from a keys file that is re-read
when it changes (a mounted Kubernetes Secret), and from the keys API's rows in the SQL store, which
gateway.store.keys.KeySync copies in (replace_stored) every auth.keys_refresh_s. Those stored keys are
used only while their last good read is at most auth.keys_stale_after_s old: a store down for longer
refuses them too, and a key never read is refused throughout. Only SHA-256 digests are kept; a presented key is
compared with every digest (KeyStore.match), with no early exit, so timing tells nothing about which keys exist.

Keys file: one key a line, optionally followed by space-separated `name=`, `rpm=`, `tpm=`, the token
budgets `tokens_per_day=` and `tokens_per_month=`, and the key's scope (gateway.scopes): `owner=`,
`models=` (comma-separated names or globs), `groups=` (comma-separated route groups), `expires=` (ISO 8601),
`max_priority=`, `weight=` and any number of `meta.<label>=`:

    sk-team-a-0123456789 name=team-a rpm=600 tpm=200000 tokens_per_day=2000000
    sk-embed-1234567890  name=search owner=search-team models=all-MiniLM-L6-v2 groups=inference,usage
    sk-admin-5555555555  name=ops groups=admin,lora,inference,usage expires=2027-01-01T00:00:00Z
    sk-batch-9876543210  name=batch models=gemma*,qwen* weight=3 max_priority=0 meta.cost_center=42
    # comments and blank lines are skipped
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.limit_store import KeyLimits
from gateway.scopes import DEFAULT_GROUPS, UNSCOPED, KeyScope, parse_expiry, parse_groups
from gateway.settings import ApiKey

log = logging.getLogger(__name__)

# The ASGI scope extension naming the configured key an in-process request acts as (the batch runner's, for a
# batch's owner): no client can set a scope extension from the wire.
ACTING_KEY = "tokenyard.acting_key"
_RELOAD_CHECK_S = 1.0  # stat() the keys file at most this often
_LIMIT_OPTIONS = {
    "rpm": "requests_per_minute",
    "tpm": "tokens_per_minute",
    "tokens_per_day": "tokens_per_day",
    "tokens_per_month": "tokens_per_month",
}
_SCOPE_OPTIONS = {"name", "owner", "models", "groups", "expires", "max_priority", "weight"}


@dataclass(frozen=True)
class KeyEntry:
    name: str
    digest: bytes
    limits: KeyLimits = KeyLimits()
    scope: KeyScope = UNSCOPED


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _entry(key: str, name: str | None, limits: KeyLimits = KeyLimits(), scope: KeyScope = UNSCOPED) -> KeyEntry:
    """An unnamed key is named by its digest's first 12 hex digits: its own, wherever it is configured, and the
    same across restarts and reorderings (its budget and usage follow the key, never a position)."""
    found = digest(key)
    return KeyEntry(name or f"key-{found.hex()[:12]}", found, limits, scope)


def setting_entry(k: ApiKey) -> KeyEntry:
    limits = KeyLimits(k.requests_per_minute, k.tokens_per_minute, k.tokens_per_day, k.tokens_per_month)
    scope = KeyScope(
        owner=k.owner,
        models=tuple(k.models) if k.models is not None else None,
        groups=frozenset(k.groups) if k.groups is not None else DEFAULT_GROUPS,
        expires_at=k.expires_at.timestamp() if k.expires_at is not None else None,
        max_priority=k.max_priority,
        weight=k.weight,
        metadata=dict(k.metadata),
    )
    return _entry(k.key.get_secret_value(), k.name, limits, scope)


def _file_scope(options: dict[str, str]) -> KeyScope:
    models = options.get("models")
    weight = int(options.get("weight", "1"))
    if not 1 <= weight <= 1000:
        raise ValueError("weight must be 1 to 1000")
    return KeyScope(
        owner=options.get("owner"),
        models=tuple(m for m in models.split(",") if m) if models is not None else None,
        groups=parse_groups(options["groups"].split(",")) if "groups" in options else DEFAULT_GROUPS,
        expires_at=parse_expiry(options["expires"]) if "expires" in options else None,
        max_priority=int(options["max_priority"]) if "max_priority" in options else None,
        weight=weight,
        metadata={k.removeprefix("meta."): v for k, v in options.items() if k.startswith("meta.")},
    )


def unique(entries: list[KeyEntry], where: str) -> list[KeyEntry]:
    """`entries`, refused when two keys share a name: a name is the identity that buckets, budgets and usage
    are kept under, so two keys under one would share them. The message names neither key."""
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ValueError(f"{where}: two keys are named {entry.name!r} (or are the same key)")
        seen.add(entry.name)
    return entries


def parse_keys_file(text: str) -> list[KeyEntry]:
    entries: list[KeyEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        options = dict(field.partition("=")[::2] for field in fields[1:])
        unknown = {o for o in options if not o.startswith("meta.")} - {*_SCOPE_OPTIONS, *_LIMIT_OPTIONS}
        if unknown:  # the message names the line, never its content: that holds a key
            raise ValueError(f"keys file line {number}: unknown option(s) {sorted(unknown)}")
        try:
            limits = {field: int(options[option]) for option, field in _LIMIT_OPTIONS.items() if option in options}
            scope = _file_scope(options)
        except ValueError as exc:
            raise ValueError(f"keys file line {number}: {_reason(exc)}") from None
        if any(limit < 1 for limit in limits.values()):
            raise ValueError(f"keys file line {number}: limits must be positive")
        entries.append(_entry(fields[0], options.get("name"), KeyLimits(**limits), scope))
    return unique(entries, "keys file")


def _reason(exc: ValueError) -> str:
    """int()'s own message quotes the value it read; ours name no value."""
    text = str(exc)
    return "a number is not an integer" if text.startswith("invalid literal") else text


class KeyStore:
    def __init__(
        self,
        keys: list[ApiKey],
        path: Path | None,
        clock: Callable[[], float] = time.monotonic,
        stale_after_s: float = float("inf"),
    ) -> None:
        self._static = unique([setting_entry(k) for k in keys], "api_keys")
        self._path, self._clock = path, clock
        self._stored: list[KeyEntry] = []
        self._stored_at = float("-inf")  # when the stored keys were last read (the clock's time)
        self._stale_after_s = stale_after_s
        # Until the store has been read, whether it holds keys is unknown: a store that answers at start says.
        self._minted = False
        self._from_file: list[KeyEntry] = []
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        if path is not None:
            self._load(path)  # at start, a missing or bad file stops the server: fail closed, and loudly

    @property
    def enabled(self) -> bool:
        """A configured keys file turns auth on even while it is empty: it denies rather than opens. So does a
        key ever minted through the keys API, revoked or not."""
        return bool(self._static) or self._path is not None or self._minted

    def match(self, presented: str) -> KeyEntry | None:
        self._maybe_reload()
        candidate = digest(presented)
        found = None
        for entry in self._entries():
            if secrets.compare_digest(candidate, entry.digest) and found is None:
                found = entry
        return found

    def entries(self) -> list[KeyEntry]:
        self._maybe_reload()
        return self._entries()

    def configured_names(self) -> set[str]:
        """The names of the keys from settings and the keys file: the keys API may not reuse them."""
        self._maybe_reload()
        return {entry.name for entry in self._static + self._from_file}

    def replace_stored(self, entries: list[KeyEntry], minted: bool) -> None:
        """The keys API's keys as just read from the store; one named as a configured key is left out."""
        taken = self.configured_names()
        kept = [entry for entry in entries if entry.name not in taken]
        if len(kept) < len(entries):
            log.warning("%d stored key(s) share a name with a configured key and are ignored", len(entries) - len(kept))
        self._stored, self._minted, self._stored_at = kept, minted, self._clock()

    def mark_unknown(self) -> None:
        """The store could not be read at start: ask for keys until it is (nothing fails open)."""
        self._minted = True

    def _entries(self) -> list[KeyEntry]:
        fresh = self._clock() - self._stored_at <= self._stale_after_s
        return self._static + self._from_file + (self._stored if fresh else [])

    def _maybe_reload(self) -> None:
        now = self._clock()
        if self._path is None or now - self._checked_at < _RELOAD_CHECK_S:
            return
        self._checked_at = now
        try:
            self._load(self._path)
        except (OSError, ValueError) as exc:
            log.warning("keys file unusable, keeping the keys loaded before: %s", type(exc).__name__)

    def _load(self, path: Path) -> None:
        stat = os.stat(path)  # follows the symlinks a Kubernetes Secret mount swaps on update
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        self._from_file = unique(self._static + parse_keys_file(path.read_text()), "keys file and api_keys")[
            len(self._static) :
        ]
        self._stamp = stamp
        log.info("loaded %d key(s) from the keys file", len(self._from_file))
