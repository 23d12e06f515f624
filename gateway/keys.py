"""The client keys: from settings and a keys file, kept as digests, matched in constant time.

Keys come from settings (--api-keys, TOKENYARD_API_KEYS, YAML) and from a keys file that is re-read
when it changes (a mounted Kubernetes Secret). Only SHA-256 digests are kept; a presented key is
compared with every digest (KeyStore.match), with no early exit, so timing tells nothing about which keys exist.

Keys file: one key a line, optionally followed by space-separated `name=`, `rpm=`, `tpm=` and the token
budgets `tokens_per_day=` and `tokens_per_month=`:

    sk-team-a-0123456789 name=team-a rpm=600 tpm=200000 tokens_per_day=2000000
    sk-batch-9876543210  name=batch
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


@dataclass(frozen=True)
class KeyEntry:
    name: str
    digest: bytes
    limits: KeyLimits = KeyLimits()


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _entry(key: str, name: str | None, limits: KeyLimits = KeyLimits()) -> KeyEntry:
    """An unnamed key is named by its digest's first 12 hex digits: its own, wherever it is configured, and the
    same across restarts and reorderings (its budget and usage follow the key, never a position)."""
    found = digest(key)
    return KeyEntry(name or f"key-{found.hex()[:12]}", found, limits)


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
        unknown = set(options) - {"name", *_LIMIT_OPTIONS}
        if unknown:  # the message names the line, never its content: that holds a key
            raise ValueError(f"keys file line {number}: unknown option(s) {sorted(unknown)}")
        limits = {field: int(options[option]) for option, field in _LIMIT_OPTIONS.items() if option in options}
        if any(limit < 1 for limit in limits.values()):
            raise ValueError(f"keys file line {number}: limits must be positive")
        entries.append(_entry(fields[0], options.get("name"), KeyLimits(**limits)))
    return unique(entries, "keys file")


class KeyStore:
    def __init__(self, keys: list[ApiKey], path: Path | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._static = unique(
            [
                _entry(
                    k.key.get_secret_value(),
                    k.name,
                    KeyLimits(k.requests_per_minute, k.tokens_per_minute, k.tokens_per_day, k.tokens_per_month),
                )
                for k in keys
            ],
            "api_keys",
        )
        self._path, self._clock = path, clock
        self._from_file: list[KeyEntry] = []
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        if path is not None:
            self._load(path)  # at start, a missing or bad file stops the server: fail closed, and loudly

    @property
    def enabled(self) -> bool:
        """A configured keys file turns auth on even while it is empty: it denies rather than opens."""
        return bool(self._static) or self._path is not None

    def match(self, presented: str) -> KeyEntry | None:
        self._maybe_reload()
        candidate = digest(presented)
        found = None
        for entry in self._static + self._from_file:
            if secrets.compare_digest(candidate, entry.digest) and found is None:
                found = entry
        return found

    def entries(self) -> list[KeyEntry]:
        self._maybe_reload()
        return self._static + self._from_file

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
