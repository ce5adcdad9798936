"""API keys: created by the CLI, checked by the service; only their hashes are ever stored.

It lives here, below both ``experiments`` and ``serving``, because both need it and neither may
import the other. A key reads ``omni_<id>_<secret>``; the file keeps, per id, the SHA-256 of
the secret (a random 256-bit token needs no slow hash) and the key's scopes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

SCOPES = ("recommend", "plan", "admin")
KEYS_ENV = "OMNI_KEYS_FILE"
DEFAULT_KEYS_FILE = Path(".omni/keys.json")


def keys_file() -> Path:
    return Path(os.environ.get(KEYS_ENV, DEFAULT_KEYS_FILE))


def create_key(scopes: list[str], path: Path | None = None) -> str:
    """Make a key with these scopes, store its hash, and return the key (shown once)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(
            f"Scopes must be among {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}."
        )
    path = path or keys_file()
    store = json.loads(path.read_text()) if path.exists() else {}
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    store[key_id] = {
        "sha256": hashlib.sha256(secret.encode()).hexdigest(),
        "scopes": sorted(set(scopes)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(store, indent=2))
    path.chmod(0o600)
    return f"omni_{key_id}_{secret}"


def load_keys(path: Path | None = None) -> dict[str, dict]:
    path = path or keys_file()
    return json.loads(path.read_text()) if path.exists() else {}


def scopes_of(key: str, keys: dict[str, dict]) -> list[str] | None:
    """The scopes of a presented key, or None when it is not a valid key (constant-time check)."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "omni":
        return None
    entry = keys.get(parts[1])
    digest = hashlib.sha256(parts[2].encode()).hexdigest()
    expected = entry["sha256"] if entry else "0" * 64
    valid = hmac.compare_digest(digest, expected)
    return list(entry["scopes"]) if entry and valid else None
