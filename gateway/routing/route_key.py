"""The key a route sends to its instances: fixed (`api_key`), or read from a file (`api_key_file`).

The file has the keys-file layout the server reads (gateway.middleware.auth): one key a line, comments
and blank lines skipped, options after the key ignored. The first key is the one sent, so a rotation
can go through the same Secret that instances read as their keys file: "old, new" (instances accept
both, routers send old), then "new, old" (routers send new), then "new".
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import SecretStr

log = logging.getLogger(__name__)


def first_key(text: str) -> str | None:
    for line in text.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            return fields[0]
    return None


class RouteKey:
    def __init__(self, key: SecretStr | None, path: Path | None) -> None:
        self._key = key.get_secret_value() if key else None
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        if path is not None:
            self._load(path)  # a missing or empty file at start stops the router: it fails closed

    @property
    def value(self) -> str | None:
        return self._key

    @property
    def watched(self) -> bool:
        return self._path is not None

    def changed(self) -> bool:
        """Re-read the file if it changed; True when the key it holds is new. A bad file keeps the old key."""
        if self._path is None:
            return False
        before = self._key
        try:
            self._load(self._path)
        except (OSError, ValueError) as exc:
            log.warning("route key file unusable, keeping the key loaded before: %s", type(exc).__name__)
        return self._key != before

    def _load(self, path: Path) -> None:
        stat = os.stat(path)  # follows the symlinks a Kubernetes Secret mount swaps on update
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        key = first_key(path.read_text())
        if key is None:
            raise ValueError("the route key file holds no key")
        self._key, self._stamp = key, stamp
