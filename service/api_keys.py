"""API keys as the service holds them: SHA-256 hashes only, from DFS_API_KEYS and DFS_API_KEYS_FILE.

Below the web layer (``service/config.py`` hashes the env keys as it reads them; the middleware in
``service/api/auth.py`` checks requests), so it imports nothing of the app. A key file lists one key
or one ``sha256:HEX`` hash of a key per line, so a deployment can keep even the keys' plain text
out of the machine and hand the service hashes it made elsewhere
(``printf %s "$KEY" | sha256sum``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from service.pipeline.failures import DfsInputError

HASH_PREFIX = "sha256:"
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


class ApiKeyFileError(DfsInputError):
    """DFS_API_KEYS_FILE cannot be used; the service must not start open in its place."""


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def is_hash_entry(entry: str) -> bool:
    return entry.startswith(HASH_PREFIX) and _HEX_DIGEST.fullmatch(entry[len(HASH_PREFIX) :]) is not None


def parse_entry(entry: str) -> bytes:
    """A ``sha256:HEX`` entry is a key's hash as it stands; anything else is a key, hashed here."""
    return bytes.fromhex(entry[len(HASH_PREFIX) :]) if is_hash_entry(entry) else hash_key(entry)


def hash_entries(keys: Iterable[str]) -> list[str]:
    """``sha256:HEX`` for each key (an entry already in that form is kept), the settings' stored form."""
    return [HASH_PREFIX + parse_entry(key).hex() for key in keys]


def read_key_file(path: Path) -> list[bytes]:
    """Hashes of the keys in ``path``: one key or ``sha256:HEX`` per line; blank lines and ``#`` comments skipped.

    Fails (and so does start-up) when the file is unreadable, holds no key, or has a malformed
    ``sha256:`` line: a deployment that meant to set keys must not come up open. Messages give the
    line number, never the line.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ApiKeyFileError(f"DFS_API_KEYS_FILE cannot be read: {exc.strerror or exc}") from exc
    hashes = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry.startswith(HASH_PREFIX) and not is_hash_entry(entry):
            raise ApiKeyFileError(f"DFS_API_KEYS_FILE line {number}: a sha256: entry needs 64 hex digits")
        hashes.append(parse_entry(entry))
    if not hashes:
        raise ApiKeyFileError("DFS_API_KEYS_FILE holds no key (one key or sha256:HEX per line)")
    return hashes
